#!/usr/bin/env bash
# Runs the gateway on the default routes.yaml (bundled models; a development certificate and
# API key are made on the first run and the key is printed once), after doing whatever
# set-up the machine lacks. Extra arguments go to `gateway run` (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
echo "[run] building the gateway (release; the first build takes several minutes)" >&2
cargo build --release --workspace --bins
exec target/release/gateway run --config routes.yaml "$@"
