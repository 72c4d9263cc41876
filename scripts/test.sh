#!/usr/bin/env bash
# The project's test command (README, and CI through .ci/run): set-up, lint, every test, the
# shipped configs, standard clients, the models' reproducibility, and every benchmark in its
# quick mode (loadtests/bench_all.sh --quick: the harness works end to end).
#
#   scripts/test.sh           everything
#   scripts/test.sh --quick   skip the benchmarks
#
# Tests run in release mode: the benchmarks need release binaries anyway, so one build of
# pingora serves both (a debug build would double the compile time on 2 cores). Every build
# here (and in loadtests/) is `cargo test --workspace --release` or `cargo bench`, which
# resolve features alike, so dependencies compile once; `cargo test` builds the binaries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

step "set-up (ONNX Runtime, cmake, promtool, redis-server; the Python virtualenv meanwhile)"
scripts/setup.sh
# The virtualenv is made while cargo builds: pip is one process (1 min 6 s, 59 s of CPU, in a
# fresh clone here), and the build leaves a core idle at times. CI took 1,003 s with this and
# 1,206 s without (one run each; its build step varies by a minute from run to run). Nothing
# before the deploy/ check uses the virtualenv, and that step waits for it.
VENV_LOG="$(mktemp)"
scripts/setup.sh --python-only > "$VENV_LOG" 2>&1 &
VENV_PID=$!
trap '[ -n "${VENV_PID:-}" ] && kill "$VENV_PID" 2>/dev/null; rm -f "$VENV_LOG"' EXIT
python_ready() {
  [ -n "${VENV_PID:-}" ] || return 0
  local rc=0
  wait "$VENV_PID" || rc=$?
  VENV_PID=""
  cat "$VENV_LOG" >&2
  [ "$rc" = 0 ] || { echo "the Python virtualenv could not be made (above): scripts/setup.sh --python-only" >&2; exit "$rc"; }
}

step "cargo fmt --check"
cargo fmt --all --check

step "module layers: no import cycle, no module using one above it (scripts/module_cycles.py)"
for crate in proxy/src inference/src; do
  python3 scripts/module_cycles.py "$crate" 1 --layers
  python3 scripts/module_cycles.py "$crate" 2
done

step "every integration test file is a test target or a module of one (scripts/test_files_run.py)"
python3 scripts/test_files_run.py proxy inference

step "the fuzz crate patches the crates the workspace patches (scripts/patches_match.py)"
python3 scripts/patches_match.py

step "build every target with clippy's lints (-D warnings)"
# `cargo clippy` would compile every dependency a second time, in check mode (5 minutes on
# 2 cores). Instead clippy-driver (a full rustc with clippy's lints) compiles the workspace's
# own crates in the one release build that the tests and benchmarks use; dependencies are
# built by plain rustc as usual. CLIPPY_ARGS is how cargo-clippy hands clippy-driver its
# arguments. Every cargo command below runs with the same settings, so none rebuilds.
CLIPPY_DRIVER="$(command -v clippy-driver || true)"
if [ -z "$CLIPPY_DRIVER" ] && [ -x "$(rustc --print sysroot)/bin/clippy-driver" ]; then
  CLIPPY_DRIVER="$(rustc --print sysroot)/bin/clippy-driver"
fi
if [ -n "$CLIPPY_DRIVER" ]; then
  export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
  cargo test --workspace --release --all-targets --no-run --quiet
else
  echo "clippy-driver not found: falling back to cargo clippy, which compiles the dependencies once more (if it is missing too: rustup component add clippy)" >&2
  cargo clippy --workspace --all-targets --release --quiet -- -D warnings
fi

step "cargo test"
cargo test --workspace --release

step "gateway check on every config in the repository"
configs=$(git ls-files '*.yaml' '*.yml' | grep -v -E '^(certs|models|deploy|loadtests/peers)/' | xargs -r grep -l '^routes:' || true)
[ -n "$configs" ] || { echo "no gateway configs found" >&2; exit 1; }
# shellcheck disable=SC2086
target/release/gateway check $configs

python_ready
step "deploy/ validates offline (Dockerfile, compose, Kubernetes manifests and their configs)"
.venv/bin/python deploy/validate.py

step "docs/performance.md quotes every committed full benchmark run as its report states it (loadtests/runs.py); the benchmarks' pause watcher (loadtests/pauses.py)"
python3 -m unittest discover -s loadtests -p 'test_*.py'
python3 loadtests/runs.py --check docs/performance.md

step "standard clients against inference-server and the gateway (tritonclient.http, tritonclient.grpc, KServe gRPC, curl)"
scripts/client_compat.sh target/release/inference-server

step "models/train.py reproduces the committed models"
.venv/bin/python models/train.py --check

if [ "$QUICK" = 0 ]; then
  step "benchmarks, quick mode: the harness works end to end (figures are reported, not asserted: CI machines are noisy)"
  loadtests/bench_all.sh --quick
  step "gRPC against REST, quick mode (loadtests/bench_grpc.sh)"
  loadtests/bench_grpc.sh --quick
  step "the prediction cache, quick mode (loadtests/bench_cache.sh)"
  loadtests/bench_cache.sh --quick
fi
step "all checks passed"
