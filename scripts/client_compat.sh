#!/usr/bin/env bash
# Standard clients, unchanged, against a real inference-server: tritonclient.http (binary
# extension and JSON), tritonclient.grpc, KServe's InferenceGRPCClient and plain curl; then
# both gRPC clients through a real gateway (TLS, an API key). Called by scripts/test.sh; needs scripts/setup.sh --python.
#   scripts/client_compat.sh [path/to/inference-server [path/to/gateway]]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/target/debug/inference-server}"
GATEWAY="${2:-$(dirname "$BIN")/gateway}"
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="$(port)"
GRPC_PORT="$(port)"
WORK="$(mktemp -d)"
LOG="$WORK/inference-server.log"
"$BIN" --models "$ROOT/models" --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$GRPC_PORT" >"$LOG" 2>&1 &
PID=$!
GW_PID=""
trap 'kill $PID $GW_PID 2>/dev/null; wait $PID $GW_PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null || { cat "$LOG"; echo "inference-server did not start" >&2; exit 1; }

echo "[compat] tritonclient.http"
"$ROOT/.venv/bin/python" "$ROOT/inference/tests/clients/tritonclient_check.py" "127.0.0.1:$PORT"

echo "[compat] curl"
out="$(curl -sf "http://127.0.0.1:$PORT/v2/models/breast-cancer/versions/1/infer" -d @"$ROOT/models/example.json")"
echo "$out" | grep -q '"name":"probabilities"' || { echo "unexpected curl answer: $out" >&2; exit 1; }
echo "ok: curl -d @models/example.json -> $out"
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v2/models/breast-cancer/infer" -d '{"inputs": []}')"
[ "$code" = 400 ] || { echo "expected 400 for an empty request, got $code" >&2; exit 1; }
echo "ok: curl with no inputs -> 400"

echo "[compat] tritonclient.grpc and kserve.InferenceGRPCClient against inference-server"
"$ROOT/.venv/bin/python" "$ROOT/inference/tests/clients/tritonclient_grpc_check.py" "127.0.0.1:$GRPC_PORT"
"$ROOT/.venv/bin/python" "$ROOT/inference/tests/clients/kserve_grpc_check.py" "127.0.0.1:$GRPC_PORT"

echo "[compat] tritonclient.grpc and kserve.InferenceGRPCClient through the gateway (TLS, API key)"
HTTPS_PORT="$(port)"
ADMIN_PORT="$(port)"
cat > "$WORK/routes.yaml" <<YAML
listen: {https: "127.0.0.1:$HTTPS_PORT", admin: "127.0.0.1:$ADMIN_PORT"}
tls: {cert: certs/server.crt, key: certs/server.key, generate_dev_cert: true}
auth: {keys_file: certs/api-keys.yaml, create_dev_key: false}
shadow: {store: data/shadows.sqlite3}
models_dir: $ROOT/models
pools:
  cancer-v1: {local: {model: breast-cancer, version: 1}}
  cancer-v2: {local: {model: breast-cancer, version: 2}}
routes:
  - model: breast-cancer
    stable: cancer-v1
    shadows: [{pool: cancer-v2, percent: 100}]
YAML
mkdir -p "$WORK/certs" "$WORK/data"
KEY="$("$GATEWAY" keys add --tenant compat --config "$WORK/routes.yaml" 2>/dev/null | head -1)"
"$GATEWAY" run --config "$WORK/routes.yaml" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 150); do
  grep -q "^serving" "$WORK/gateway.log" && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/gateway.log" >&2; exit 1; }
  sleep 0.2
done
grep -q "^serving" "$WORK/gateway.log" || { cat "$WORK/gateway.log" >&2; echo "the gateway did not start" >&2; exit 1; }
"$ROOT/.venv/bin/python" "$ROOT/inference/tests/clients/tritonclient_grpc_check.py" "localhost:$HTTPS_PORT" \
  --ca "$WORK/certs/ca.crt" --key "$KEY"
"$ROOT/.venv/bin/python" "$ROOT/inference/tests/clients/kserve_grpc_check.py" "localhost:$HTTPS_PORT" \
  --ca "$WORK/certs/ca.crt" --key "$KEY"
