#!/usr/bin/env bash
# inference-server against the peer most ML teams start with (FastAPI + uvicorn +
# onnxruntime), same model, same single core, same load; a lone request with adaptive and with
# fixed-delay batching; then the pool on its own with dynamic batching off and on.
#
#   loadtests/bench_inference.sh            15 s per measurement
#   loadtests/bench_inference.sh --short    3 s per measurement
#   loadtests/bench_inference.sh --quick    1 s per measurement (proves the harness works)
#   loadtests/bench_inference.sh --strict   exit 1 when a target is missed
#
# Each server runs pinned to core 0 with one thread for request handling; wrk runs on core 1
# with 64 connections. CPU µs/request comes from the server's /proc/<pid>/stat, which is
# steadier than requests/s on a shared machine. Figures go to stdout and
# loadtests/results/inference-<time>.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_bench_args "$@"
CONNS=64
MODEL=breast-cancer
VERSION=1
BODY="$ROOT/models/example.json"

"$ROOT/scripts/setup.sh" --python
ensure_tools wrk
say "building inference-server (release)"
# `cargo test --no-run` builds the binaries with the same features as the test suite, so
# running after scripts/test.sh compiles nothing again.
(cd "$ROOT" && cargo test --release --quiet --workspace --no-run && cargo bench --quiet --workspace --bench pool_batching --no-run)
ROUNDS=5
[ "$QUICK" = 1 ] && ROUNDS=1

bench_csv inference
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done; }
trap cleanup EXIT
watch_pauses

measure() { # name pid url
  local name="$1" pid="$2" url="$3"
  say "$name: warm-up"
  run_wrk "" "$pid" "$url" "$BODY" "${WARMUP}s" "$CONNS" >/dev/null
  say "$name: measuring for ${DURATION}s at $CONNS connections"
  run_wrk "$name" "$pid" "$url" "$BODY" "${DURATION}s" "$CONNS"
}

# --- ours: one I/O thread, one pool worker, both on core 0 ---
PORT_OURS=18000
taskset -c "$SERVER_CPU" "$ROOT/target/release/inference-server" --models "$ROOT/models" \
  --listen "127.0.0.1:$PORT_OURS" --threads 1 --instances 1 --max-batch 32 >"$RESULTS/.ours.log" 2>&1 &
OURS=$!; PIDS+=("$OURS")
wait_port "127.0.0.1:$PORT_OURS" || die "inference-server did not start: $(cat "$RESULTS/.ours.log")"
read -r O_RPS O_P50 O_P99 O_CPU O_ERR < <(measure inference-server "$OURS" "http://127.0.0.1:$PORT_OURS/v2/models/$MODEL/versions/$VERSION/infer")
stop_pid "$OURS"

# --- a lone request: adaptive against fixed-delay batching (--batching fixed: every request
# that finds the pool idle waits --max-delay-us, 250 µs, for company), at a quarter of the
# maximum rate measured above, evenly spaced (loadgen's open loop), the two servers taking
# turns; p50 and p99 are medians of the rounds, failed requests counted.
LONE_RATE=$(( ${O_RPS%.*} / 4 ))
PORT_ADAPTIVE=18010; PORT_FIXED=18011
for mode in adaptive fixed; do
  port=$PORT_ADAPTIVE; [ "$mode" = fixed ] && port=$PORT_FIXED
  taskset -c "$SERVER_CPU" "$ROOT/target/release/inference-server" --models "$ROOT/models" \
    --listen "127.0.0.1:$port" --threads 1 --instances 1 --max-batch 32 --batching "$mode" >"$RESULTS/.lone-$mode.log" 2>&1 &
  PIDS+=("$!")
  wait_port "127.0.0.1:$port" || die "inference-server --batching $mode did not start"
done
: > "$RESULTS/.lone-adaptive.txt"; : > "$RESULTS/.lone-fixed.txt"
for r in $(seq "$ROUNDS"); do
  for mode in adaptive fixed; do
    port=$PORT_ADAPTIVE; [ "$mode" = fixed ] && port=$PORT_FIXED
    say "lone requests, $mode batching: ${LONE_RATE}/s for ${DURATION}s (round $r of $ROUNDS)"
    taskset -c "$CLIENT_CPU" "$ROOT/target/release/loadgen" --url "http://127.0.0.1:$port/v2/models/$MODEL/versions/$VERSION/infer" \
      --rate "$LONE_RATE" --connections "$CONNS" --duration "$DURATION" --warmup "$WARMUP" --body "$BODY" \
      --header "content-type: application/json" | grep '^RESULT' | sed 's/RESULT //' \
      | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } print v["p50_us"], v["p99_us"], v["errors"] }' \
      | failures_of "lone requests, $mode batching ($r)" 3 >>"$RESULTS/.lone-$mode.txt"
  done
done
L_A50="$(awk '{ print $1 }' "$RESULTS/.lone-adaptive.txt" | median)"; L_F50="$(awk '{ print $1 }' "$RESULTS/.lone-fixed.txt" | median)"
L_A99="$(awk '{ print $2 }' "$RESULTS/.lone-adaptive.txt" | median)"; L_F99="$(awk '{ print $2 }' "$RESULTS/.lone-fixed.txt" | median)"
L_ERR="$(cat "$RESULTS/.lone-adaptive.txt" "$RESULTS/.lone-fixed.txt" | awk '{ s += $3 } END { print s + 0 }')"
LONE_CUT="$(awk -v a="$L_A50" -v f="$L_F50" 'BEGIN { printf "%.2f", (f > 0 ? 1 - a / f : 0) }')"
T4="$(unless_errors "$(check "$LONE_CUT" '>=' 0.30)" "$L_ERR")"
for p in "${PIDS[@]}"; do stop_pid "$p"; done
PIDS=()

# --- the peer: FastAPI + uvicorn[standard], 1 worker, onnxruntime with 1 intra-op thread ---
PORT_PEER=18001
# Started as its docstring says (the model's path relative to loadtests/peers).
(cd "$ROOT/loadtests/peers" && exec taskset -c "$SERVER_CPU" "$ROOT/.venv/bin/python" fastapi_server.py \
  --model "../../models/$MODEL/$VERSION/model.onnx" --name "$MODEL" --port "$PORT_PEER") >"$RESULTS/.peer.log" 2>&1 &
PEER=$!; PIDS+=("$PEER")
wait_port "127.0.0.1:$PORT_PEER" 60 || die "the FastAPI peer did not start: $(cat "$RESULTS/.peer.log")"
read -r P_RPS P_P50 P_P99 P_CPU P_ERR < <(measure fastapi "$PEER" "http://127.0.0.1:$PORT_PEER/v2/models/$MODEL/versions/$VERSION/infer")
# The same stack doing nothing (POST /noop reads the body and answers {}): the framework's own
# ceiling on this core, beside the peer's figure, so that the peer can be seen to be fair.
read -r Z_RPS Z_P50 Z_P99 Z_CPU Z_ERR < <(measure "fastapi, do-nothing endpoint" "$PEER" "http://127.0.0.1:$PORT_PEER/noop")
stop_pid "$PEER"

# --- the pool alone: max_batch 1 vs 32 at 64 requests in flight, on core 0 ---
say "pool benchmark (max_batch 1 vs 32)"
POOL_OUT="$(cd "$ROOT" && taskset -c "$SERVER_CPU" cargo bench --quiet --workspace --bench pool_batching -- --seconds "$DURATION" --concurrency 64)"
SPEEDUP="$(echo "$POOL_OUT" | awk '/^BATCHING_SPEEDUP/ {print $2}')"

RPS_RATIO="$(ratio "$O_RPS" "$P_RPS")"
P99_RATIO="$(awk -v a="$O_P99" -v b="$P_P99" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')"
CPU_RATIO="$(ratio "$P_CPU" "$O_CPU")"
T1="$(unless_errors "$(check "$RPS_RATIO" '>=' 10)" "$O_ERR")"
T2="$(unless_errors "$(check "$P99_RATIO" '<=' 0.2)" "$O_ERR")"
T3="$(check "${SPEEDUP:-0}" '>=' 3)"

REPORT="$RESULTS/inference.md"
{
  echo "## inference-server vs FastAPI + uvicorn + onnxruntime"
  echo
  echo "Model $MODEL/$VERSION, one JSON row per request, $CONNS connections, ${DURATION} s, server on core $SERVER_CPU, wrk on core $CLIENT_CPU ($(date -u +%F), $(host_line))."
  echo
  echo "| server | requests/s | p50 | p99 | CPU µs/request | errors |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  printf '| inference-server | %s | %.2f ms | %.2f ms | %s | %s |\n' "$O_RPS" "$(ratio "$O_P50" 1000)" "$(ratio "$O_P99" 1000)" "$O_CPU" "$O_ERR"
  printf '| FastAPI + uvicorn | %s | %.2f ms | %.2f ms | %s | %s |\n' "$P_RPS" "$(ratio "$P_P50" 1000)" "$(ratio "$P_P99" 1000)" "$P_CPU" "$P_ERR"
  printf '| FastAPI + uvicorn, do-nothing endpoint | %s | %.2f ms | %.2f ms | %s | %s |\n' "$Z_RPS" "$(ratio "$Z_P50" 1000)" "$(ratio "$Z_P99" 1000)" "$Z_CPU" "$Z_ERR"
  echo
  echo "- requests/s: ${RPS_RATIO}× the peer (target ≥ 10×: $T1)"
  echo "- p99: ${P99_RATIO} of the peer's (target ≤ 0.2: $T2)"
  echo "- CPU per request: the peer spends ${CPU_RATIO}× ours"
  echo "- the peer's own stack doing nothing (POST /noop, same process, same run): $Z_RPS requests/s, $Z_CPU CPU µs/request — the peer's inference work brings it to $P_RPS"
  echo
  echo "## A lone request: adaptive against fixed-delay batching"
  echo
  echo "inference-server --max-batch 32, --batching adaptive and fixed (250 µs), ${LONE_RATE} requests/s (a quarter of the maximum above), $CONNS connections, medians of $ROUNDS rounds of ${DURATION} s taking turns."
  echo
  echo "| batching | p50 | p99 |"
  echo "| --- | ---: | ---: |"
  printf '| adaptive | %.3f ms | %.3f ms |\n' "$(ratio "$L_A50" 1000)" "$(ratio "$L_A99" 1000)"
  printf '| fixed | %.3f ms | %.3f ms |\n' "$(ratio "$L_F50" 1000)" "$(ratio "$L_F99" 1000)"
  echo
  echo "- p50 $(awk -v c="$LONE_CUT" 'BEGIN { printf "%.0f", c * 100 }')% lower than fixed-delay batching (target ≥ 30%: $T4); $L_ERR failed"
  echo
  echo "## Pool alone: dynamic batching"
  echo
  echo '```'
  echo "$POOL_OUT"
  echo '```'
  echo
  echo "- batching speed-up: ${SPEEDUP}× (target ≥ 3×: $T3)"
} | tee "$REPORT"
say "report written to ${REPORT#"$ROOT"/}"

finish_bench "$T1" "$T2" "$T3" "$T4"
