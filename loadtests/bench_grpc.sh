#!/usr/bin/env bash
# gRPC against REST on the same server and the same core: inference-server directly (REST on
# one port, gRPC on another, one process), then through the gateway's HTTPS port (TLS, a key).
# One-row and 64-row requests of breast-cancer/1, the same tensors in both protocols (REST
# sends the JSON body, gRPC the ModelInferRequest with raw contents that tritonclient.grpc
# sends). loadgen drives both (open loop, HTTP/1.1 for REST, HTTP/2 for gRPC, one request in
# flight per connection), on core 1; the server is pinned to core 0. loadgen writes a gRPC
# call's HEADERS and DATA in one write, as tritonclient.grpc and perf_analyzer (gRPC's C core)
# do; hyper's client, which it used before 2026-12-04, wrote them in two (docs/grpc.md).
#
#   loadtests/bench_grpc.sh            15 s per measurement, 3 rounds
#   loadtests/bench_grpc.sh --short    3 s per measurement
#   loadtests/bench_grpc.sh --quick    1 s, one round (proves the harness works)
#   loadtests/bench_grpc.sh --strict   exit 1 when a target is missed
#
# Per setting: CPU µs per request of the server process (from /proc/<pid>/stat, over the
# requests answered), p50/p99 at a fixed rate (REST and gRPC take turns; medians of the
# rounds), and requests/s when offered far more than it can answer. Targets: gRPC's CPU per
# request at most 1.2× REST's for one row, and below REST's for 64 rows. Any failed call
# (non-2xx, grpc-status other than 0, a socket error) fails the target it is part of.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_bench_args "$@"
ROUNDS=3
[ "$QUICK" = 1 ] && ROUNDS=1
peer_bench_setup grpc-bench
CONNS=32
ROW1="$ROOT/models/example.json"
ROW64="$WORK/rows64.json"
"$ROOT/.venv/bin/python" - "$ROOT/models/testdata/breast-cancer-heldout.json" "$ROW64" <<'PY'
import json, sys
held = json.load(open(sys.argv[1]))
rows = held["rows"][:64] if "rows" in held else held["input"]["data"][:64]
json.dump({"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                       "data": [v for r in rows for v in r]}]}, open(sys.argv[2], "w"))
PY

# one NAME PID URL BODY RATE [loadgen args...]: "rate_ok cpu_us p50_us p99_us errors …"
one() {
  local name="$1" pid="$2" url="$3" body="$4" rate="$5"; shift 5
  loadgen_cpu "$name" "$pid" "$url" "$rate" --body "$body" "$@"
}

# compare SETTING PID REST_URL GRPC_URL RATE1 RATE64 [loadgen args...]: rows of the report.
REPORT="$WORK/report.md"
: > "$REPORT"
VERDICTS=()
compare() {
  local setting="$1" pid="$2" rest="$3" grpc="$4" rate1="$5" rate64="$6"; shift 6
  local rows body rate proto r f
  for rows in 1 64; do
    if [ "$rows" = 1 ]; then body="$ROW1"; rate="$rate1"; else body="$ROW64"; rate="$rate64"; fi
    : > "$WORK/rest.txt"; : > "$WORK/grpc.txt"
    for r in $(seq "$ROUNDS"); do
      for proto in rest grpc; do
        say "$setting, $rows row(s), $proto: ${rate}/s for ${DURATION}s (round $r of $ROUNDS)"
        if [ "$proto" = rest ]; then
          one "$setting" "$pid" "$rest" "$body" "$rate" --header "content-type: application/json" "$@" >>"$WORK/rest.txt"
        else
          one "$setting" "$pid" "$grpc" "$body" "$rate" --grpc breast-cancer "$@" >>"$WORK/grpc.txt"
        fi
      done
    done
    # Offered far more than a core answers: what it does answer is its throughput.
    say "$setting, $rows row(s): throughput (offered $((rate * 20))/s)"
    local max_rest max_grpc
    max_rest="$(one "$setting" "$pid" "$rest" "$body" "$((rate * 20))" --header "content-type: application/json" "$@")"
    max_grpc="$(one "$setting" "$pid" "$grpc" "$body" "$((rate * 20))" --grpc breast-cancer "$@")"
    # REST over HTTP/2 as well, through the gateway (gRPC is HTTP/2 by definition; REST
    # clients mostly use HTTP/1.1): which part of the difference is the HTTP version.
    local h2_line=""
    if [ "$rows" = 1 ] && [ "$#" -gt 0 ]; then
      local h2
      h2="$(for r in $(seq "$ROUNDS"); do
        say "$setting, $rows row(s), REST over HTTP/2 (round $r of $ROUNDS)" 
        one "$setting" "$pid" "$rest" "$body" "$rate" --http2 --header "content-type: application/json" "$@"
      done)"
      h2_line="$(printf '| %s | %s | REST, HTTP/2 | | %s | %s | %s | %s | gRPC is %s× this |' "$setting" "$rows" \
        "$(echo "$h2" | awk '{ print $2 }' | median)" "$(ms "$(echo "$h2" | awk '{ print $3 }' | median)")" \
        "$(ms "$(echo "$h2" | awk '{ print $4 }' | median)")" "$(echo "$h2" | awk '{ s += $5 } END { print s + 0 }')" \
        "$(ratio "$(awk '{ print $2 }' "$WORK/grpc.txt" | median)" "$(echo "$h2" | awk '{ print $2 }' | median)")")"
    fi
    declare -A m
    for proto in rest grpc; do
      for f in 2 3 4; do m[$proto$f]="$(awk -v f="$f" '{ print $f }' "$WORK/$proto.txt" | median)"; done
      m[${proto}e]="$(awk '{ s += $5 } END { print s + 0 }' "$WORK/$proto.txt")"
    done
    local rps_rest rps_grpc err_max
    # Answered all that was offered: the figure is a lower bound.
    local offered=$((rate * 20))
    kept() { awk -v a="$1" -v o="$offered" 'BEGIN { printf (a >= 0.99 * o ? "≥ %d (all offered)" : "%d"), a }'; }
    rps_rest="$(kept "$(echo "$max_rest" | awk '{ print $1 }')")"; rps_grpc="$(kept "$(echo "$max_grpc" | awk '{ print $1 }')")"
    err_max=$(( $(echo "$max_rest" | awk '{ print $5 }') + $(echo "$max_grpc" | awk '{ print $5 }') ))
    local ratio_cpu target verdict
    ratio_cpu="$(ratio "${m[grpc2]}" "${m[rest2]}")"
    if [ "$rows" = 1 ]; then target="<= 1.20"; verdict="$(check "$ratio_cpu" "<=" 1.20)"
    else target="< 1.00"; verdict="$(awk -v r="$ratio_cpu" 'BEGIN { print (r < 1.0 ? "met" : "MISSED") }')"; fi
    verdict="$(unless_errors "$verdict" "${m[reste]}" "${m[grpce]}")"
    VERDICTS+=("$verdict")
    printf '| %s | %s | REST | %s | %s | %s | %s | %s | |\n' "$setting" "$rows" "$rps_rest" "${m[rest2]}" "$(ms "${m[rest3]}")" "$(ms "${m[rest4]}")" "${m[reste]}" >>"$REPORT"
    printf '| %s | %s | gRPC | %s | %s | %s | %s | %s | %s× REST (target %s): **%s** |\n' "$setting" "$rows" "$rps_grpc" "${m[grpc2]}" "$(ms "${m[grpc3]}")" "$(ms "${m[grpc4]}")" "${m[grpce]}" "$ratio_cpu" "$target" "$verdict" >>"$REPORT"
    [ -n "$h2_line" ] && echo "$h2_line" >>"$REPORT"
    [ "$err_max" -gt 0 ] && echo "| $setting | $rows | | | | | | $err_max failed in the throughput runs | |" >>"$REPORT"
    unset m
  done
}

# --- inference-server: REST and gRPC in one process, one I/O thread, one pool worker ---
P_REST=18100; P_GRPC=18101
taskset -c "$SERVER_CPU" "$BIN/inference-server" --models "$ROOT/models" --listen "127.0.0.1:$P_REST" \
  --grpc-listen "127.0.0.1:$P_GRPC" --threads 1 --instances 1 >"$WORK/inference-server.log" 2>&1 &
SERVER=$!; PIDS+=("$SERVER")
wait_port "127.0.0.1:$P_GRPC" 60 || die "inference-server did not start: $(cat "$WORK/inference-server.log")"
compare "inference-server" "$SERVER" "http://127.0.0.1:$P_REST/v2/models/breast-cancer/versions/1/infer" \
  "http://127.0.0.1:$P_GRPC" 2000 400
stop_pid "$SERVER"

# --- the gateway: the same port for both, TLS, an API key, a local pool ---
P_GW=18443; P_ADMIN=19443
{ gateway_config_head; cat <<YAML
pools:
  cancer-v1: {local: {model: breast-cancer, version: 1}}
routes:
  - model: breast-cancer
    stable: cancer-v1
YAML
} >"$WORK/routes.yaml"
KEY="$("$BIN/gateway" keys add --tenant bench --config "$WORK/routes.yaml" 2>/dev/null | head -1)"
GW="$(start_gateway_on "$WORK/routes.yaml" "127.0.0.1:$P_GW")"; PIDS+=("$GW")
compare "gateway (TLS, key)" "$GW" "https://localhost:$P_GW/v2/models/breast-cancer/infer" \
  "https://localhost:$P_GW" 2000 400 --cacert "$WORK/ca.crt" --header "x-api-key: $KEY"
stop_pid "$GW"

OUT="$RESULTS/grpc-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "# gRPC against REST ($(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%F), $(host_line), profile $PROFILE)"
  echo
  echo "Command: \`loadtests/bench_grpc.sh $*\`. breast-cancer/1; server on core $SERVER_CPU, loadgen on core $CLIENT_CPU, $CONNS connections."
  echo "CPU µs/request, p50 and p99: medians of $ROUNDS rounds of ${DURATION} s at a fixed rate (2,000/s for one row, 400/s for 64), REST and gRPC taking turns."
  echo "Requests/s: answered when offered 20× that rate."
  echo
  echo "| setting | rows | protocol | requests/s | CPU µs/request | p50 | p99 | failed | verdict |"
  echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"
  cat "$REPORT"
} | tee "$OUT"
say "report: $OUT"
finish_bench "${VERDICTS[@]}"
