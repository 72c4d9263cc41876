#!/usr/bin/env bash
# Model quality in one command: starts a gateway of its own (ports 18443 and 19901, a scratch
# folder, the bundled breast-cancer models with stable v1, canary v2 at 30% and shadow v3),
# sends labelled traffic (held-out rows the models never saw, then a drift episode of the
# same rows with every feature 30% larger, then normal rows again), sends each answer's true
# label back as feedback, and prints the drift and accuracy as they move and, at the end,
# the A/B verdict and where to look.
#
#   scripts/quality_demo.sh              about a minute and a half once built
#   scripts/quality_demo.sh --keep       leave the gateway running afterwards (Ctrl-C stops it)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1
scripts/setup.sh --python
echo "[demo] building the gateway (release; the first build takes several minutes)" >&2
cargo build --release --quiet -p proxy --bin gateway
WORK="$(mktemp -d /tmp/quality-demo.XXXXXX)"
mkdir -p "$WORK/certs" "$WORK/data"
cat > "$WORK/routes.yaml" <<YAML
listen: {https: "127.0.0.1:18443", admin: "127.0.0.1:19901"}
tls: {cert: certs/server.crt, key: certs/server.key, generate_dev_cert: true}
auth: {keys_file: certs/api-keys.yaml, create_dev_key: false}
server: {access_log: false}
shadow: {store: data/shadows.sqlite3}
quality:
  drift: {window: 500, min_rows: 100, interval_ms: 1000}
models_dir: $ROOT/models
pools:
  cancer-v1: {local: {model: breast-cancer, version: 1}}
  cancer-v2: {local: {model: breast-cancer, version: 2}}
  cancer-v3: {local: {model: breast-cancer, version: 3}}
routes:
  - model: breast-cancer
    stable: cancer-v1
    canary: {pool: cancer-v2, weight: 30}
    sticky: none
    shadows: [{pool: cancer-v3, percent: 100}]
YAML
KEY="$(target/release/gateway keys add --tenant demo --config "$WORK/routes.yaml" 2>/dev/null | head -1)"
target/release/gateway run --config "$WORK/routes.yaml" >"$WORK/gateway.log" 2>&1 &
PID=$!
trap '[ "$KEEP" = 1 ] || kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "^serving" "$WORK/gateway.log" && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/gateway.log" >&2; exit 1; }
  sleep 0.2
done
echo "[demo] gateway running (log: $WORK/gateway.log)" >&2
.venv/bin/python scripts/quality_demo.py --key "$KEY" --ca "$WORK/certs/ca.crt" \
  --https 127.0.0.1:18443 --admin 127.0.0.1:19901 --gateway "$ROOT/target/release/gateway"
if [ "$KEEP" = 1 ]; then
  echo "[demo] the gateway keeps running (pid $PID); Ctrl-C stops it" >&2
  wait "$PID"
fi
