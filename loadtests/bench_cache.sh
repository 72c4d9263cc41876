#!/usr/bin/env bash
# The prediction cache: what a hit costs against a miss, against no cache and against
# inference-server answering the same request, and what it does for a Zipf workload. One
# gateway (TLS, an API key, one I/O thread) pinned to core 0, loadgen on core 1, breast-cancer/1
# behind three routes on the same local pool:
#
#   cached     cache: {ttl: 300s, max_bytes: 64MiB}
#   evicting   cache: {ttl: 300s, max_bytes: 64KiB}   (room for some 100 answers: a miss,
#              its insert and an eviction on nearly every request of a spread workload)
#   uncached   no cache
#
#   loadtests/bench_cache.sh            15 s per measurement, 3 rounds
#   loadtests/bench_cache.sh --short    3 s per measurement
#   loadtests/bench_cache.sh --quick    1 s, one round (proves the harness works)
#   loadtests/bench_cache.sh --strict   exit 1 when a target is missed or a request failed
#
# Measured, in turns, medians of the rounds, at a fixed 2,000 requests/s: the gateway's CPU µs
# per request and p50/p99 for (1) hits: one row sent again and again to `cached`; (2) misses:
# rows drawn evenly from 50,000 distinct ones, sent to `evicting`; (3) the same rows to
# `uncached`; (4) inference-server answering the same one-row request, REST, same core. Then
# the Zipf workload: 10,000 distinct rows (the default size), rank k drawn with weight 1/k,
# driven by wrk (64 connections, as fast as they go), to `cached` and to `uncached` (and one
# row, all hits: the bound of what a cache can gain): requests/s, the hit ratio the gateway
# counted, and how busy each core was. Targets: a hit at most half of a miss's CPU per
# request; the Zipf workload at least 1.5× the requests/s without a cache. A failed request
# fails the target it is part of.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_bench_args "$@"
ROUNDS=3
[ "$QUICK" = 1 ] && ROUNDS=1
peer_bench_setup cache-bench wrk curl
CONNS=32
RATE=2000
ZIPF_ROWS=10000
SPREAD_ROWS=50000

# Distinct rows: the held-out rows, each copy scaled by its own factor (close to 1, so the
# rows stay in distribution), one Open Inference Protocol body per line.
rows() {
  "$ROOT/.venv/bin/python" - "$ROOT/models/testdata/breast-cancer-heldout.json" "$1" "$2" <<'PY'
import json, sys
held = json.load(open(sys.argv[1]))
rows = held["rows"] if "rows" in held else held["input"]["data"]
n = int(sys.argv[2])
with open(sys.argv[3], "w") as out:
    for i in range(n):
        scale = 1.0 + (i // len(rows)) * 1e-4
        row = [round(v * scale, 6) for v in rows[i % len(rows)]]
        out.write(json.dumps({"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}) + "\n")
PY
}
rows "$ZIPF_ROWS" "$WORK/zipf.jsonl"
rows "$SPREAD_ROWS" "$WORK/spread.jsonl"

# one NAME PID URL RATE [loadgen args...]: "requests/s cpu_us p50_us p99_us errors hits ok"
one() {
  local name="$1" pid="$2" url="$3" rate="$4"; shift 4
  loadgen_cpu "$name" "$pid" "$url" "$rate" --header "content-type: application/json" "$@"
}

# --- inference-server: the same one-row request, REST, one I/O thread, one pool worker ---
P_IS=18200
taskset -c "$SERVER_CPU" "$BIN/inference-server" --models "$ROOT/models" --listen "127.0.0.1:$P_IS" \
  --threads 1 --instances 1 >"$WORK/inference-server.log" 2>&1 &
SERVER=$!; PIDS+=("$SERVER")
wait_port "127.0.0.1:$P_IS" 60 || die "inference-server did not start: $(cat "$WORK/inference-server.log")"

# --- the gateway ---
P_GW=18443; P_ADMIN=19443
{ gateway_config_head; cat <<YAML
pools:
  cancer-v1: {local: {model: breast-cancer, version: 1}}
routes:
  - model: cached
    stable: cancer-v1
    cache: {ttl: 300s, max_bytes: 64MiB}
  - model: evicting
    stable: cancer-v1
    cache: {ttl: 300s, max_bytes: 64KiB}
  - model: uncached
    stable: cancer-v1
YAML
} >"$WORK/routes.yaml"
KEY="$("$BIN/gateway" keys add --tenant bench --config "$WORK/routes.yaml" 2>/dev/null | head -1)"
GW="$(start_gateway_on "$WORK/routes.yaml" "127.0.0.1:$P_GW")"; PIDS+=("$GW")
TLS=(--cacert "$WORK/ca.crt" --header "x-api-key: $KEY")
url() { echo "https://localhost:$P_GW/v2/models/$1/infer"; }

declare -A FILES=([hit]="$WORK/hit.txt" [miss]="$WORK/miss.txt" [none]="$WORK/none.txt" [server]="$WORK/server.txt")
for f in "${FILES[@]}"; do : > "$f"; done
for r in $(seq "$ROUNDS"); do
  say "round $r of $ROUNDS: ${RATE}/s for ${DURATION}s each (hits, misses, no cache, inference-server)"
  one "hits" "$GW" "$(url cached)" "$RATE" --body "$ROOT/models/example.json" "${TLS[@]}" >>"${FILES[hit]}"
  one "misses" "$GW" "$(url evicting)" "$RATE" --bodies "$WORK/spread.jsonl" --zipf 0 "${TLS[@]}" >>"${FILES[miss]}"
  one "no cache" "$GW" "$(url uncached)" "$RATE" --bodies "$WORK/spread.jsonl" --zipf 0 "${TLS[@]}" >>"${FILES[none]}"
  one "inference-server" "$SERVER" "http://127.0.0.1:$P_IS/v2/models/breast-cancer/versions/1/infer" "$RATE" \
    --body "$ROOT/models/example.json" >>"${FILES[server]}"
done

declare -A M
for k in hit miss none server; do
  for f in 2 3 4; do M[$k$f]="$(awk -v f="$f" '{ print $f }' "${FILES[$k]}" | median)"; done
  M[${k}e]="$(awk '{ s += $5 } END { print s + 0 }' "${FILES[$k]}")"
  M[${k}h]="$(awk '{ h += $6; ok += $7 } END { printf "%.1f%%", (ok > 0 ? 100 * h / ok : 0) }' "${FILES[$k]}")"
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
# thru NAME ROUTE BODIES_FILE: "requests/s p50 p99 cpu_us errors server% client% hits misses"
thru() {
  local name="$1" route="$2" bodies="$3" before_h before_c out ticks
  WRK_BODIES="$bodies" WRK_ZIPF=1 WRK_API_KEY="$KEY" taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"${WARMUP}s" \
    -s "$WORK/zipf.lua" "$(url "$route")" >/dev/null 2>&1 || true
  before_h="$(hits_of "$route")"; before_c="$(core_jiffies)"; ticks="$(cpu_ticks "$GW")"
  out="$(WRK_BODIES="$bodies" WRK_ZIPF=1 WRK_API_KEY="$KEY" taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"${DURATION}s" \
    -s "$WORK/zipf.lua" "$(url "$route")")"
  ticks=$(( $(cpu_ticks "$GW") - ticks ))
  echo "$(echo "$out" | wrk_figures "$name" "$ticks" | awk '{ print $1, $2, $3, $4, $5 }') $(core_busy "$before_c" "$(core_jiffies)" | awk '{ print $1, $2 }') $(paste -d' ' <(echo "$before_h") <(hits_of "$route") | awk '{ print $3 - $1, $4 - $2 }')"
}
"$ROOT/.venv/bin/python" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$ROOT/models/example.json" > "$WORK/one.jsonl"
for k in zipf-cached zipf-uncached all-hits; do : > "$WORK/$k.txt"; done
for r in $(seq "$ROUNDS"); do
  say "throughput with wrk, ${DURATION}s each: Zipf cached, Zipf uncached, all hits (round $r of $ROUNDS)"
  thru "Zipf, cached" cached "$WORK/zipf.jsonl" >>"$WORK/zipf-cached.txt"
  thru "Zipf, uncached" uncached "$WORK/zipf.jsonl" >>"$WORK/zipf-uncached.txt"
  thru "one row, all hits" cached "$WORK/one.jsonl" >>"$WORK/all-hits.txt"
done
declare -A T
for k in zipf-cached zipf-uncached all-hits; do
  for f in 1 4 6 7; do T[$k$f]="$(awk -v f="$f" '{ print $f }' "$WORK/$k.txt" | median)"; done
  T[${k}e]="$(awk '{ s += $5 } END { print s + 0 }' "$WORK/$k.txt")"
  T[${k}h]="$(awk '{ h += $8; m += $9 } END { printf (h + m > 0 ? "%.1f%%" : "-"), (h + m > 0 ? 100 * h / (h + m) : 0) }' "$WORK/$k.txt")"
done
Z_C="${T[zipf-cached1]}"; Z_U="${T[zipf-uncached1]}"
Z_CE="${T[zipf-cachede]}"; Z_UE="${T[zipf-uncachede]}"
SCRAPE="$(curl -s "http://127.0.0.1:$P_ADMIN/metrics" | grep -E '^gateway_cache_(bytes|entries|evictions_total)\{' || true)"
stop_pid "$GW"; stop_pid "$SERVER"

HIT_RATIO="$(ratio "${M[hit2]}" "${M[miss2]}")"
T_HIT="$(unless_errors "$(check "$HIT_RATIO" "<=" 0.5)" "${M[hite]}" "${M[misse]}")"
Z_RATIO="$(ratio "$Z_C" "$Z_U")"
T_ZIPF="$(unless_errors "$(check "$Z_RATIO" ">=" 1.5)" "$Z_CE" "$Z_UE")"

OUT="$RESULTS/cache-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "# The prediction cache ($(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%F), profile $PROFILE)"
  echo
  echo "Command: \`loadtests/bench_cache.sh $*\`. breast-cancer/1, one row per request; server on core $SERVER_CPU, loadgen on core $CLIENT_CPU, $CONNS connections, HTTP/1.1 over TLS with a key."
  echo "CPU µs/request, p50, p99: medians of $ROUNDS rounds of ${DURATION} s at ${RATE}/s, the four settings in turns. Hits: answers with \`x-cache: hit\`, as loadgen counted them."
  echo
  echo "| setting | CPU µs/request | p50 | p99 | hits | failed |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  echo "| gateway, hits (one row again and again, \`cached\`) | ${M[hit2]} | $(ms "${M[hit3]}") | $(ms "${M[hit4]}") | ${M[hith]} | ${M[hite]} |"
  echo "| gateway, misses ($SPREAD_ROWS rows drawn evenly, \`evicting\`) | ${M[miss2]} | $(ms "${M[miss3]}") | $(ms "${M[miss4]}") | ${M[missh]} | ${M[misse]} |"
  echo "| gateway, no cache (the same rows, \`uncached\`) | ${M[none2]} | $(ms "${M[none3]}") | $(ms "${M[none4]}") | - | ${M[nonee]} |"
  echo "| inference-server (REST, the one row) | ${M[server2]} | $(ms "${M[server3]}") | $(ms "${M[server4]}") | - | ${M[servere]} |"
  echo
  echo "A hit costs $HIT_RATIO× a miss's CPU (target ≤ 0.5): **$T_HIT**. A miss costs $(ratio "${M[miss2]}" "${M[none2]}")× no cache (lookup, insert, eviction); a hit $(ratio "${M[hit2]}" "${M[server2]}")× inference-server's whole answer."
  echo
  echo "Throughput: wrk, 64 connections, as many requests as they carry, medians of $ROUNDS rounds of ${DURATION} s in turns (after ${WARMUP} s of warm-up each). Zipf workload: $ZIPF_ROWS distinct rows, rank k drawn with weight 1/k. Hit ratio: the gateway's own counts over the measurement. Busy: the server's and the client's core (the server's near 100%: the gateway was the limit)."
  echo
  echo "| workload | route | requests/s | CPU µs/request | hit ratio | server core | client core | failed |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  echo "| Zipf | cached | $Z_C | ${T[zipf-cached4]} | ${T[zipf-cachedh]} | ${T[zipf-cached6]}% | ${T[zipf-cached7]}% | $Z_CE |"
  echo "| Zipf | uncached | $Z_U | ${T[zipf-uncached4]} | - | ${T[zipf-uncached6]}% | ${T[zipf-uncached7]}% | $Z_UE |"
  echo "| one row, all hits | cached | ${T[all-hits1]} | ${T[all-hits4]} | ${T[all-hitsh]} | ${T[all-hits6]}% | ${T[all-hits7]}% | ${T[all-hitse]} |"
  echo
  echo "With the cache: $Z_RATIO× the requests/s on the Zipf workload (target ≥ 1.5): **$T_ZIPF**. At a 100% hit ratio the gain is bounded by what the model's part of a request costs: all hits answer $(ratio "${T[all-hits1]}" "$Z_U")× the uncached Zipf rate."
  echo
  echo "The gateway's cache series at the end:"
  echo
  echo '```'
  echo "$SCRAPE"
  echo '```'
} | tee "$OUT"
say "report: $OUT"
finish_bench "$T_HIT" "$T_ZIPF"
