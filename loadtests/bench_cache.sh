#!/usr/bin/env bash
# The prediction cache: what a hit costs against a miss, against no cache and against
# inference-server answering the same request, and what it does for a Zipf workload. One
# gateway (TLS, an API key, one I/O thread) pinned to core 0, loadgen on core 1, and two models,
# each behind three routes on the same local pool:
#
#   digits/2         gradient-boosted trees, some 30 µs a row under onnxruntime: a model that
#                    costs more than the gateway's own path, the case a cache is for. The
#                    targets are counted on it.
#   breast-cancer/1  a small MLP, a few µs of a batched request at most: the model is a
#                    small part of a request, so a cache can gain little; measured beside it
#                    as the bound (its figures and what the targets would say are reported,
#                    not counted).
#
#   cached-*     cache: {ttl: 300s, max_bytes: 64MiB}
#   evicting-*   cache: {ttl: 300s, max_bytes: 64KiB}   (room for some 100 answers: a miss,
#                its insert and an eviction on nearly every request of a spread workload)
#   uncached-*   no cache
#
#   loadtests/bench_cache.sh            15 s per measurement, 3 rounds
#   loadtests/bench_cache.sh --short    3 s per measurement
#   loadtests/bench_cache.sh --quick    1 s, one round (proves the harness works)
#   loadtests/bench_cache.sh --strict   exit 1 when a counted target is missed or a request failed
#
# Measured per model, in turns, medians of the rounds, at a fixed 2,000 requests/s: the
# gateway's CPU µs per request and p50/p99 for (1) hits: one row sent again and again to
# `cached-*`; (2) misses: rows drawn evenly from 50,000 distinct ones, sent to `evicting-*`;
# (3) the same rows to `uncached-*`; (4) inference-server answering the same one-row request,
# REST, same core. Then the Zipf workload: 10,000 distinct rows (the default size), rank k
# drawn with weight 1/k, driven by wrk (64 connections, as fast as they go), to `cached-*` and
# to `uncached-*` (and one row, all hits: the bound of what a cache can gain; and the spread
# rows to `evicting-*`, all misses): requests/s, CPU µs per request, the hit ratio the gateway
# counted, and how busy each core was. Targets: a hit at most half of a miss's CPU per request,
# counted at 2,000/s; the Zipf workload at least 1.5× the requests/s without a cache. A failed
# request, with either model, fails the targets. Why the hit/miss ratio is also shown with the
# core busy: at 2,000/s (a tenth to a fifth of the core) the thread sleeps and is woken for
# nearly every request, and those wake-ups (its own and, over loopback, the client's) are much
# of a request's CPU whether it hits or misses; with the core busy they are shared by many.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_bench_args "$@"
ARGS="$*"
ROUNDS=3
[ "$QUICK" = 1 ] && ROUNDS=1
peer_bench_setup cache-bench wrk curl
CONNS=32
RATE=2000
ZIPF_ROWS=10000
SPREAD_ROWS=50000

# The models, in the order they are measured: "tag dataset version". The targets are counted
# on the first.
MODELS=("digits digits 2" "cancer breast-cancer 1")
COUNTED=digits

# rows DATASET N FILE: distinct rows, the held-out rows of DATASET, each copy scaled by its own
# factor (close to 1, so the rows stay in distribution), one Open Inference Protocol body per
# line.
rows() {
  "$ROOT/.venv/bin/python" - "$ROOT/models/testdata/$1-heldout.json" "$2" "$3" <<'PY'
import json, sys
held = json.load(open(sys.argv[1]))
rows = held["rows"]
n = int(sys.argv[2])
with open(sys.argv[3], "w") as out:
    for i in range(n):
        scale = 1.0 + (i // len(rows)) * 1e-4
        row = [round(v * scale, 6) for v in rows[i % len(rows)]]
        out.write(json.dumps({"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}) + "\n")
PY
}
for m in "${MODELS[@]}"; do
  set -- $m
  rows "$2" "$ZIPF_ROWS" "$WORK/zipf-$1.jsonl"
  rows "$2" "$SPREAD_ROWS" "$WORK/spread-$1.jsonl"
  # The one row: loadgen's --body and wrk's body list (one line) read the same file.
  head -1 "$WORK/zipf-$1.jsonl" > "$WORK/one-$1.json"
done

# one NAME PID URL RATE [loadgen args...]: "requests/s cpu_us p50_us p99_us errors hits ok"
one() {
  local name="$1" pid="$2" url="$3" rate="$4"; shift 4
  loadgen_cpu "$name" "$pid" "$url" "$rate" --header "content-type: application/json" "$@"
}

# --- inference-server: the same one-row requests, REST, one I/O thread, one pool worker ---
P_IS=18200
taskset -c "$SERVER_CPU" "$BIN/inference-server" --models "$ROOT/models" --listen "127.0.0.1:$P_IS" \
  --threads 1 --instances 1 >"$WORK/inference-server.log" 2>&1 &
SERVER=$!; PIDS+=("$SERVER")
wait_port "127.0.0.1:$P_IS" 60 || die "inference-server did not start: $(cat "$WORK/inference-server.log")"

# --- the gateway ---
P_GW=18443; P_ADMIN=19443
{ gateway_config_head
  echo "pools:"
  for m in "${MODELS[@]}"; do set -- $m; echo "  $1: {local: {model: $2, version: $3}}"; done
  echo "routes:"
  for m in "${MODELS[@]}"; do set -- $m; cat <<YAML
  - model: cached-$1
    stable: $1
    cache: {ttl: 300s, max_bytes: 64MiB}
  - model: evicting-$1
    stable: $1
    cache: {ttl: 300s, max_bytes: 64KiB}
  - model: uncached-$1
    stable: $1
YAML
  done
} >"$WORK/routes.yaml"
KEY="$("$BIN/gateway" keys add --tenant bench --config "$WORK/routes.yaml" 2>/dev/null | head -1)"
GW="$(start_gateway_on "$WORK/routes.yaml" "127.0.0.1:$P_GW")"; PIDS+=("$GW")
TLS=(--cacert "$WORK/ca.crt" --header "x-api-key: $KEY")
url() { echo "https://localhost:$P_GW/v2/models/$1/infer"; }

# --- at a fixed rate: hits, misses, no cache, inference-server, per model, in turns ---
for m in "${MODELS[@]}"; do set -- $m; for k in hit miss none server; do : > "$WORK/$k-$1.txt"; done; done
for r in $(seq "$ROUNDS"); do
  for m in "${MODELS[@]}"; do
    set -- $m
    say "round $r of $ROUNDS, $2/$3: ${RATE}/s for ${DURATION}s each (hits, misses, no cache, inference-server)"
    one "hits $1" "$GW" "$(url "cached-$1")" "$RATE" --body "$WORK/one-$1.json" "${TLS[@]}" >>"$WORK/hit-$1.txt"
    one "misses $1" "$GW" "$(url "evicting-$1")" "$RATE" --bodies "$WORK/spread-$1.jsonl" --zipf 0 "${TLS[@]}" >>"$WORK/miss-$1.txt"
    one "no cache $1" "$GW" "$(url "uncached-$1")" "$RATE" --bodies "$WORK/spread-$1.jsonl" --zipf 0 "${TLS[@]}" >>"$WORK/none-$1.txt"
    one "inference-server $1" "$SERVER" "http://127.0.0.1:$P_IS/v2/models/$2/versions/$3/infer" "$RATE" \
      --body "$WORK/one-$1.json" >>"$WORK/server-$1.txt"
  done
done

declare -A M
for m in "${MODELS[@]}"; do
  set -- $m
  for k in hit miss none server; do
    f="$WORK/$k-$1.txt"
    for c in 2 3 4; do M[$1$k$c]="$(awk -v c="$c" '{ print $c }' "$f" | median)"; done
    M[$1${k}e]="$(awk '{ s += $5 } END { print s + 0 }' "$f")"
    M[$1${k}h]="$(awk '{ h += $6; ok += $7 } END { printf "%.1f%%", (ok > 0 ? 100 * h / ok : 0) }' "$f")"
  done
done

# --- throughput: wrk, as many requests as 64 connections carry; which core was the limit ---
# (loadgen, which paces every request, costs its core more than wrk does: with it the client
# core, not the gateway's, set the figure.) The Zipf draw happens in wrk's request(), from
# the same lines; hits are the gateway's own counts, from /metrics before and after.
cat > "$WORK/zipf.lua" <<'LUA'
local bodies, cdf, total = {}, {}, 0
for line in io.lines(os.getenv("WRK_BODIES")) do
  if #line > 0 then bodies[#bodies + 1] = line end
end
local s = tonumber(os.getenv("WRK_ZIPF"))
for k = 1, #bodies do total = total + k ^ (-s); cdf[k] = total end
for k = 1, #bodies do cdf[k] = cdf[k] / total end
local headers = {["Content-Type"] = "application/json", ["x-api-key"] = os.getenv("WRK_API_KEY")}
math.randomseed(1)
request = function()
  local u, lo, hi = math.random(), 1, #bodies
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("POST", nil, headers, bodies[lo])
end
LUA
sed -n '/^done = function/,$p' "$WRK_LUA" >> "$WORK/zipf.lua"
hits_of() { curl -s "http://127.0.0.1:$P_ADMIN/metrics" | awk -v r="$1" '
  index($0, "gateway_cache_requests_total{result=\"hit\",route=\"" r "\"}") == 1 { h = $2 }
  index($0, "gateway_cache_requests_total{result=\"miss\",route=\"" r "\"}") == 1 { m = $2 }
  END { printf "%d %d\n", h, m }'; }
# thru NAME ROUTE BODIES_FILE [ZIPF_EXPONENT]: "requests/s p50 p99 cpu_us errors server% client%
# hits misses" (exponent 1 by default; 0 draws the rows evenly)
thru() {
  local name="$1" route="$2" bodies="$3" zipf="${4:-1}" before_h before_c out ticks
  WRK_BODIES="$bodies" WRK_ZIPF="$zipf" WRK_API_KEY="$KEY" taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"${WARMUP}s" \
    -s "$WORK/zipf.lua" "$(url "$route")" >/dev/null 2>&1 || true
  before_h="$(hits_of "$route")"; before_c="$(core_jiffies)"; ticks="$(cpu_ticks "$GW")"
  out="$(WRK_BODIES="$bodies" WRK_ZIPF="$zipf" WRK_API_KEY="$KEY" taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"${DURATION}s" \
    -s "$WORK/zipf.lua" "$(url "$route")")"
  ticks=$(( $(cpu_ticks "$GW") - ticks ))
  echo "$(echo "$out" | wrk_figures "$name" "$ticks" | awk '{ print $1, $2, $3, $4, $5 }') $(core_busy "$before_c" "$(core_jiffies)" | awk '{ print $1, $2 }') $(paste -d' ' <(echo "$before_h") <(hits_of "$route") | awk '{ print $3 - $1, $4 - $2 }')"
}
THRU=(zipf-cached zipf-uncached all-hits all-misses)
for m in "${MODELS[@]}"; do set -- $m; for k in "${THRU[@]}"; do : > "$WORK/$k-$1.txt"; done; done
for r in $(seq "$ROUNDS"); do
  for m in "${MODELS[@]}"; do
    set -- $m
    say "throughput with wrk, $2/$3, ${DURATION}s each: Zipf cached, Zipf uncached, all hits, all misses (round $r of $ROUNDS)"
    thru "Zipf, cached, $1" "cached-$1" "$WORK/zipf-$1.jsonl" >>"$WORK/zipf-cached-$1.txt"
    thru "Zipf, uncached, $1" "uncached-$1" "$WORK/zipf-$1.jsonl" >>"$WORK/zipf-uncached-$1.txt"
    thru "one row, all hits, $1" "cached-$1" "$WORK/one-$1.json" >>"$WORK/all-hits-$1.txt"
    thru "spread rows, all misses, $1" "evicting-$1" "$WORK/spread-$1.jsonl" 0 >>"$WORK/all-misses-$1.txt"
  done
done
declare -A T
for m in "${MODELS[@]}"; do
  set -- $m
  for k in "${THRU[@]}"; do
    f="$WORK/$k-$1.txt"
    for c in 1 4 6 7; do T[$1$k$c]="$(awk -v c="$c" '{ print $c }' "$f" | median)"; done
    T[$1${k}e]="$(awk '{ s += $5 } END { print s + 0 }' "$f")"
    T[$1${k}h]="$(awk '{ h += $8; m += $9 } END { printf (h + m > 0 ? "%.1f%%" : "-"), (h + m > 0 ? 100 * h / (h + m) : 0) }' "$f")"
  done
done
SCRAPE="$(curl -s "http://127.0.0.1:$P_ADMIN/metrics" | grep -E '^gateway_cache_(bytes|entries|evictions_total)\{' || true)"
stop_pid "$GW"; stop_pid "$SERVER"

# Verdicts per model; the counted ones are the first model's. Any failed request, with
# either model, fails them.
ALL_ERRORS=0
for m in "${MODELS[@]}"; do
  set -- $m
  for k in hit miss none server; do ALL_ERRORS=$((ALL_ERRORS + ${M[$1${k}e]:-0})); done
  for k in "${THRU[@]}"; do ALL_ERRORS=$((ALL_ERRORS + ${T[$1${k}e]:-0})); done
done
declare -A V
for m in "${MODELS[@]}"; do
  set -- $m
  V[$1hit]="$(ratio "${M[$1hit2]}" "${M[$1miss2]}")"
  V[$1hitv]="$(unless_errors "$(check "${V[$1hit]}" "<=" 0.5)" "$ALL_ERRORS")"
  V[$1zipf]="$(ratio "${T[$1zipf-cached1]}" "${T[$1zipf-uncached1]}")"
  V[$1zipfv]="$(unless_errors "$(check "${V[$1zipf]}" ">=" 1.5)" "$ALL_ERRORS")"
done
T_HIT="${V[${COUNTED}hitv]}"; T_ZIPF="${V[${COUNTED}zipfv]}"
# what a reference model's verdict is called in the report
said() { if [ "$1" = "$COUNTED" ]; then echo "**$2**"; else echo "$2 (reference, not counted)"; fi; }

OUT="$RESULTS/cache-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "# The prediction cache ($(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%F), $(host_line), profile $PROFILE)"
  echo
  echo "Command: \`loadtests/bench_cache.sh $ARGS\`. One row per request; server on core $SERVER_CPU, loadgen on core $CLIENT_CPU, $CONNS connections, HTTP/1.1 over TLS with a key. Two models: digits/2 (gradient-boosted trees, some 30 µs a row: the targets are counted on it) and breast-cancer/1 (a small MLP, a few µs of a batched request at most: a reference that shows the bound, not counted)."
  echo "CPU µs/request, p50, p99: medians of $ROUNDS rounds of ${DURATION} s at ${RATE}/s, the settings in turns. Hits: answers with \`x-cache: hit\`, as loadgen counted them."
  for m in "${MODELS[@]}"; do
    set -- $m
    echo
    echo "## $2/$3 at ${RATE} requests/s"
    echo
    echo "| setting | CPU µs/request | p50 | p99 | hits | failed |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    echo "| gateway, hits (one row again and again, \`cached-$1\`) | ${M[$1hit2]} | $(ms "${M[$1hit3]}") | $(ms "${M[$1hit4]}") | ${M[$1hith]} | ${M[$1hite]} |"
    echo "| gateway, misses ($SPREAD_ROWS rows drawn evenly, \`evicting-$1\`) | ${M[$1miss2]} | $(ms "${M[$1miss3]}") | $(ms "${M[$1miss4]}") | ${M[$1missh]} | ${M[$1misse]} |"
    echo "| gateway, no cache (the same rows, \`uncached-$1\`) | ${M[$1none2]} | $(ms "${M[$1none3]}") | $(ms "${M[$1none4]}") | - | ${M[$1nonee]} |"
    echo "| inference-server (REST, the one row) | ${M[$1server2]} | $(ms "${M[$1server3]}") | $(ms "${M[$1server4]}") | - | ${M[$1servere]} |"
    echo
    echo "A hit costs ${V[$1hit]}× a miss's CPU (target ≤ 0.5): $(said "$1" "${V[$1hitv]}"). A miss costs $(ratio "${M[$1miss2]}" "${M[$1none2]}")× no cache (lookup, insert, eviction); a hit $(ratio "${M[$1hit2]}" "${M[$1server2]}")× inference-server's whole answer."
  done
  echo
  echo "## Throughput"
  echo
  echo "wrk, 64 connections, as many requests as they carry, medians of $ROUNDS rounds of ${DURATION} s in turns (after ${WARMUP} s of warm-up each). Zipf workload: $ZIPF_ROWS distinct rows, rank k drawn with weight 1/k. Hit ratio: the gateway's own counts over the measurement. Busy: the server's and the client's core (the server's near 100%: the gateway was the limit)."
  echo
  echo "| model | workload | route | requests/s | CPU µs/request | hit ratio | server core | client core | failed |"
  echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  for m in "${MODELS[@]}"; do
    set -- $m
    echo "| $2/$3 | Zipf | cached-$1 | ${T[$1zipf-cached1]} | ${T[$1zipf-cached4]} | ${T[$1zipf-cachedh]} | ${T[$1zipf-cached6]}% | ${T[$1zipf-cached7]}% | ${T[$1zipf-cachede]} |"
    echo "| $2/$3 | Zipf | uncached-$1 | ${T[$1zipf-uncached1]} | ${T[$1zipf-uncached4]} | - | ${T[$1zipf-uncached6]}% | ${T[$1zipf-uncached7]}% | ${T[$1zipf-uncachede]} |"
    echo "| $2/$3 | one row, all hits | cached-$1 | ${T[$1all-hits1]} | ${T[$1all-hits4]} | ${T[$1all-hitsh]} | ${T[$1all-hits6]}% | ${T[$1all-hits7]}% | ${T[$1all-hitse]} |"
    echo "| $2/$3 | $SPREAD_ROWS rows drawn evenly, all misses | evicting-$1 | ${T[$1all-misses1]} | ${T[$1all-misses4]} | ${T[$1all-missesh]} | ${T[$1all-misses6]}% | ${T[$1all-misses7]}% | ${T[$1all-missese]} |"
  done
  for m in "${MODELS[@]}"; do
    set -- $m
    echo
    echo "$2/$3 with the cache: ${V[$1zipf]}× the requests/s on the Zipf workload (target ≥ 1.5): $(said "$1" "${V[$1zipfv]}"). All hits (the bound of what a cache can gain with this model) answer $(ratio "${T[$1all-hits1]}" "${T[$1zipf-uncached1]}")× the uncached Zipf rate. With the gateway's core busy, a hit costs $(ratio "${T[$1all-hits4]}" "${T[$1all-misses4]}")× a miss's CPU (all hits against all misses; not counted: the target is counted at ${RATE}/s above, the rate bench_grpc.sh measures CPU per request at too)."
  done
  echo
  echo "The gateway's cache series at the end:"
  echo
  echo '```'
  echo "$SCRAPE"
  echo '```'
} | tee "$OUT"
say "report: $OUT"
finish_bench "$T_HIT" "$T_ZIPF"
