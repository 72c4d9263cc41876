#!/usr/bin/env bash
# Runs the server on the bundled models after doing whatever set-up the machine lacks.
# Extra arguments go to the server (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
cargo build --release -p inference --bin inference-server
exec target/release/inference-server --models models --listen 127.0.0.1:8000 "$@"
