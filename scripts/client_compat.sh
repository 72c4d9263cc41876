#!/usr/bin/env bash
# Standard clients, unchanged, against a real inference-server: tritonclient.http (binary
# extension and JSON) and plain curl. Called by scripts/test.sh; needs scripts/setup.sh --python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/target/debug/inference-server}"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
LOG="$(mktemp)"
"$BIN" --models "$ROOT/models" --listen "127.0.0.1:$PORT" >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f "$LOG"' EXIT
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
