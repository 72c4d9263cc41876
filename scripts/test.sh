#!/usr/bin/env bash
# The project's test command (README, and CI through .ci/run): set-up, lint, every test, the
# standard-client check, the models' reproducibility, and the benchmarks' short mode.
#
#   scripts/test.sh           everything
#   scripts/test.sh --quick   skip the short benchmarks (no release build)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

step() { printf '\n=== %s\n' "$*"; }

step "set-up (ONNX Runtime, cmake, Python virtualenv)"
scripts/setup.sh --python

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test"
cargo test --workspace

step "standard clients against inference-server (tritonclient.http, curl)"
cargo build --quiet -p inference --bin inference-server
scripts/client_compat.sh

step "models/train.py reproduces the committed models"
.venv/bin/python models/train.py --check

if [ "$QUICK" = 0 ]; then
  step "benchmarks, short mode (figures are reported, not asserted: CI machines are noisy)"
  loadtests/bench_inference.sh --short
fi
step "all checks passed"
