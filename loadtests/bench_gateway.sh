#!/usr/bin/env bash
# The gateway's cost, measured side by side:
#
#  (a) the gateway's full path over HTTPS (TLS, API key, rate limit, split, in-process
#      inference) against inference-server over plain HTTP, same model, same single core;
#  (b) the gateway as a proxy in front of a remote inference-server, against nginx and
#      HAProxy doing the same proxying (TLS at the front, kept-alive upstream connections,
#      one worker each), all pinned to the same core: max requests/s and CPU µs per request
#      with wrk (closed loop), then p50/p99 at one fixed rate with loadgen (open loop):
#      a quarter of the slowest maximum, in three times as many rounds a third as long.
#
#   loadtests/bench_gateway.sh            15 s per measurement, 5 rounds
#   loadtests/bench_gateway.sh --short    3 s per measurement, 5 rounds
#   loadtests/bench_gateway.sh --quick    1 s per measurement, 1 round (proves the harness works)
#   loadtests/bench_gateway.sh --strict   exit 1 when a target is missed
#   ROUNDS=9 loadtests/bench_gateway.sh   more rounds
#   BASELINE=DIR loadtests/bench_gateway.sh   also runs DIR/gateway (another build) in every
#                                             round of (a) and of (b)'s maximum, and reports
#                                             this build's CPU per request against it
#
# Cores: the server under test on core 0; wrk, loadgen and (b)'s upstream on core 1.
# Rounds: the servers compared take turns, once each per round, and the report gives each
# one's median over the rounds; each round starts with a different server. On a shared host the CPU's speed drifts over minutes; a
# ratio of two measurements made one after the other, minutes apart, moves with it, while
# the median of turns taken side by side moves less.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_bench_args "$@"
peer_bench_setup gateway-bench wrk nginx haproxy

# --- configs: one certificate and key for every TLS server ---
P_BARE=18200; P_UP=18201; P_GW=18443; P_ADMIN=18901; P_NGINX=18444; P_HAPROXY=18445
gw_config() { # file pool-yaml
  cat > "$1" <<EOF
$(gateway_config_head)
$2
EOF
}
gw_config "$WORK/local.yaml" "pools:
  v1: {local: {model: breast-cancer, version: 1, instances: 1, max_batch: 32}}
  v2: {local: {model: breast-cancer, version: 2}}
routes:
  - {model: breast-cancer, stable: v1, canary: {pool: v2, weight: 0}, sticky: api_key}"
gw_config "$WORK/remote.yaml" "pools:
  up: {http: {endpoints: [\"127.0.0.1:$P_UP\"], model: breast-cancer, version: 1, timeout_ms: 2000}}
routes:
  - {model: breast-cancer, stable: up}"
# With a baseline build, its own `keys add` makes the key: older builds read only their own
# (shorter) key ids, and this build reads those too.
KEYGEN="$BIN/gateway"; [ -n "${BASELINE:-}" ] && KEYGEN="$BASELINE/gateway"
[ -z "${BASELINE:-}" ] || [ -x "$BASELINE/gateway" ] || die "BASELINE=$BASELINE has no gateway binary"
KEY="$("$KEYGEN" keys add --tenant bench --keys-file "$WORK/api-keys.yaml" 2>/dev/null)"

start_gateway() { start_gateway_on "$1" "127.0.0.1:$P_GW"; }

ROUNDS="${ROUNDS:-5}"; [ "$QUICK" = 1 ] && ROUNDS=1
MAX="$WORK/max.txt"; FIXED="$WORK/fixed.txt"; BUSY="$WORK/busy.txt"; : >"$MAX"; : >"$FIXED"; : >"$BUSY"
# round_name NAME ROUND: the name a measurement's CSV row carries (charts show the median).
round_name() {
  local label
  case "$1" in
    bare) label="inference-server (http)" ;;
    local) label="gateway, local pool (https)" ;;
    gateway) label="gateway, remote pool" ;;
    local-base) label="baseline gateway, local pool (https)" ;;
    gateway-base) label="baseline gateway, remote pool" ;;
    *) label="$1" ;;
  esac
  if [ "$ROUNDS" = 1 ]; then echo "$label"; else echo "$label (round $2)"; fi
}
# median NAME FIELD FILE: the median of one field over NAME's rows (tab-separated).
median() {
  awk -F'\t' -v n="$1" -v f="$2" '$1 == n { print $f }' "$3" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# per_round NAME_A NAME_B FIELD FILE: A/B of one field, round by round.
per_round() {
  paste <(awk -F'\t' -v n="$1" -v f="$3" '$1 == n { print $f }' "$4") \
    <(awk -F'\t' -v n="$2" -v f="$3" '$1 == n { print $f }' "$4") |
    awk '{ printf "%s%.2f", (NR > 1 ? ", " : ""), ($2 > 0 ? $1 / $2 : 0) }'
}
# max_row NAME ROUND PID URL: one closed-loop measurement, appended to $MAX.
max_row() {
  local name="$1" round="$2" rps p50 p99 cpu err; shift 2
  read -r rps p50 p99 cpu err < <(CORES_TSV="$WORK/cores.tsv" measure "$(round_name "$name" "$round")" "$@")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rps" "$p50" "$p99" "$cpu" "$err" >>"$MAX"
  # How busy each core was (server, client, steal): the last row measure added.
  tail -1 "$WORK/cores.tsv" | awk -F'\t' -v n="$name" '{ printf "%s\t%s\t%s\t%s\n", n, $2, $3, $4 }' >>"$BUSY"
}
# fixed_row NAME ROUND URL RATE: one open-loop measurement, appended to $FIXED.
fixed_row() {
  local name="$1" round="$2" p50 p99 err
  read -r p50 p99 err < <(fixed_rate "$(round_name "$name" "$round")" "$3" "$4" "$WORK/ca.crt")
  printf '%s\t%s\t%s\t%s\n' "$name" "$p50" "$p99" "$err" >>"$FIXED"
}
start_bare() {
  taskset -c "$SERVER_CPU" "$BIN/inference-server" --models "$ROOT/models" --listen "127.0.0.1:$P_BARE" --threads 1 >"$WORK/bare.log" 2>&1 &
  local pid=$!
  wait_port "127.0.0.1:$P_BARE" || die "inference-server did not start"
  echo "$pid"
}
start_nginx() {
  taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" >"$WORK/nginx.log" 2>&1 &
  local pid=$!
  wait_port "127.0.0.1:$P_NGINX" || die "nginx did not start: $(cat "$WORK/nginx.err" 2>/dev/null)"
  echo "$pid"
}
start_haproxy() {
  taskset -c "$SERVER_CPU" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  local pid=$!
  wait_port "127.0.0.1:$P_HAPROXY" || die "haproxy did not start: $(cat "$WORK/haproxy.log")"
  echo "$pid"
}

# === (a) full path over HTTPS vs the bare server over HTTP ===
for r in $(seq "$ROUNDS"); do
  say "(a) round $r of $ROUNDS"
  BARE=$(start_bare); PIDS+=("$BARE")
  max_row bare "$r" "$BARE" "http://127.0.0.1:$P_BARE/v2/models/breast-cancer/versions/1/infer"
  stop_pid "$BARE"
  GW=$(start_gateway "$WORK/local.yaml"); PIDS+=("$GW")
  max_row local "$r" "$GW" "https://127.0.0.1:$P_GW/v2/models/breast-cancer/infer"
  stop_pid "$GW"
  if [ -n "${BASELINE:-}" ]; then
    GW=$(GATEWAY_BIN="$BASELINE/gateway" start_gateway "$WORK/local.yaml"); PIDS+=("$GW")
    max_row local-base "$r" "$GW" "https://127.0.0.1:$P_GW/v2/models/breast-cancer/infer"
    stop_pid "$GW"
  fi
done

# === (b) proxies in front of a remote inference-server ===
taskset -c "$CLIENT_CPU" "$BIN/inference-server" --models "$ROOT/models" --listen "127.0.0.1:$P_UP" --threads 1 >"$WORK/upstream.log" 2>&1 &
UP=$!; PIDS+=("$UP")
wait_port "127.0.0.1:$P_UP" || die "the upstream inference-server did not start"
PATH_B="/v2/models/breast-cancer/versions/1/infer"
# The gateway's route has one variant, pool `up` (breast-cancer/1 on the upstream): the same
# work as PATH_B there. Its versioned path would pin a variant, which only keys allowed to
# choose one may do (403 for the bench's key).
PATH_GW="/v2/models/breast-cancer/infer"

nginx_proxy_conf "$WORK/nginx.conf" "$P_NGINX" "upstream infer { server 127.0.0.1:$P_UP; keepalive 128; }"
cat "$WORK/server.crt" "$WORK/server.key" > "$WORK/combined.pem"
cat > "$WORK/haproxy.cfg" <<EOF
# One thread, TLS at the front, kept-alive upstream connections reused across clients.
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY ssl crt $WORK/combined.pem alpn http/1.1 ssl-min-ver TLSv1.2
  default_backend be
backend be
  server up 127.0.0.1:$P_UP
EOF

# turn NAME ROUND KIND: one of (b)'s servers started, measured (KIND max or fixed) and stopped.
turn() {
  local pid port path=$PATH_B
  case "$1" in
    gateway) pid=$(start_gateway "$WORK/remote.yaml"); port=$P_GW; path=$PATH_GW ;;
    gateway-base) pid=$(GATEWAY_BIN="$BASELINE/gateway" start_gateway "$WORK/remote.yaml"); port=$P_GW; path=$PATH_GW ;;
    nginx) pid=$(start_nginx); port=$P_NGINX ;;
    haproxy) pid=$(start_haproxy); port=$P_HAPROXY ;;
  esac
  PIDS+=("$pid")
  if [ "$3" = max ]; then
    max_row "$1" "$2" "$pid" "https://127.0.0.1:$port$path"
  else
    fixed_row "$1" "$2" "https://127.0.0.1:$port$path" "$RATE"
  fi
  stop_pid "$pid"
}
# in_turns ROUND: the three proxies, starting with a different one each round (no server
# always runs first, or right after the same other one).
in_turns() {
  local names=(gateway nginx haproxy) i
  for i in 0 1 2; do echo "${names[$(((i + $1 - 1) % 3))]}"; done
}
for r in $(seq "$ROUNDS"); do
  say "(b) round $r of $ROUNDS"
  for n in $(in_turns "$r"); do turn "$n" "$r" max; done
  [ -z "${BASELINE:-}" ] || turn gateway-base "$r" max
done

# --- p50/p99 at one fixed rate, the same for all three: a quarter of the slowest proxy's
# median maximum. Not half: loadgen sends each request when it is due (not in millisecond
# bursts), which costs the client core more per request, and that core also runs the
# upstream. At half the maximum it was 96% busy (/proc, 8 s at 8,862 requests/s on the AMD
# host), and every proxy's p50 and p99 measured the client core's queue rather than the proxy.
# At a quarter it is about half busy and the p50s are 0.6 ms instead of 2 to 3 ms.
# A p99 here moves by 2x between runs of the same server minutes apart (bursts of host
# noise), so the fixed-rate part takes three times the rounds, each a third as long.
RATE=$(for n in gateway nginx haproxy; do median "$n" 2 "$MAX"; done | sort -g | head -1 | awk '{ printf "%d", $1 / 4 }')
FIXED_ROUNDS=$((ROUNDS * 3)); [ "$QUICK" = 1 ] && FIXED_ROUNDS=1
FULL_DURATION=$DURATION; DURATION=$(((DURATION + 2) / 3))
for r in $(seq "$FIXED_ROUNDS"); do
  say "(b) fixed rate, round $r of $FIXED_ROUNDS"
  for n in $(in_turns "$r"); do ROUNDS=$FIXED_ROUNDS turn "$n" "$r" fixed; done
done
FIXED_DURATION=$DURATION; DURATION=$FULL_DURATION
stop_pid "$UP"

# Medians over the rounds (requests/s, p50, p99, CPU µs/request); errors summed.
for n in bare local gateway nginx haproxy local-base gateway-base; do
  v="${n//-/_}"
  for f in 2 3 4 5; do printf -v "M_${v}_$f" '%s' "$(median "$n" "$f" "$MAX")"; done
  printf -v "E_$v" '%s' "$(awk -F'\t' -v n="$n" '$1 == n { s += $6 } END { print s + 0 }' "$MAX")"
done
for n in gateway nginx haproxy; do
  for f in 2 3; do printf -v "F_${n}_$f" '%s' "$(median "$n" "$f" "$FIXED")"; done
  printf -v "FE_$n" '%s' "$(awk -F'\t' -v n="$n" '$1 == n { s += $4 } END { print s + 0 }' "$FIXED")"
done
A_BARE_RPS=$M_bare_2; A_GW_RPS=$M_local_2; B_GW_RPS=$M_gateway_2; B_NG_RPS=$M_nginx_2; B_HA_RPS=$M_haproxy_2
B_GW_CPU=$M_gateway_5; B_NG_CPU=$M_nginx_5; F_GW_P99=$F_gateway_3; F_NG_P99=$F_nginx_3; F_HA_P99=$F_haproxy_3

KEEP="$(ratio "$A_GW_RPS" "$A_BARE_RPS")"
R_NG="$(ratio "$B_GW_RPS" "$B_NG_RPS")"; R_HA="$(ratio "$B_GW_RPS" "$B_HA_RPS")"
BEST_P99=$(printf '%s\n' "$F_NG_P99" "$F_HA_P99" | sort -g | head -1)
R_P99="$(ratio "$F_GW_P99" "$BEST_P99")"
T_KEEP="$(check "$KEEP" '>=' 0.70)"; T_NG="$(check "$R_NG" '>=' 1.0)"; T_HA="$(check "$R_HA" '>=' 0.9)"
T_CPU="$(check "$B_GW_CPU" '<=' "$B_NG_CPU")"; T_P99="$(check "$R_P99" '<=' 1.2)"
# Errors on our side count against the targets (lib.sh, unless_errors).
T_KEEP="$(unless_errors "$T_KEEP" "$E_local" "$E_bare")"
T_NG="$(unless_errors "$T_NG" "$E_gateway")"; T_HA="$(unless_errors "$T_HA" "$E_gateway")"
T_CPU="$(unless_errors "$T_CPU" "$E_gateway")"; T_P99="$(unless_errors "$T_P99" "$FE_gateway")"
busy() { # name label: "label: server core N%, client core M%, steal S%" (medians of the rounds)
  printf '%s: server core %s%%, client core %s%%, steal %s%%' "$2" "$(median "$1" 2 "$BUSY")" "$(median "$1" 3 "$BUSY")" "$(median "$1" 4 "$BUSY")"
}
row() { # label name: one table row of medians
  local r="M_$2_2" p50="M_$2_3" p99="M_$2_4" cpu="M_$2_5" err="E_$2"
  printf '| %s | %.0f | %s | %s | %.1f | %s |' "$1" "${!r}" "$(ms "${!p50}")" "$(ms "${!p99}")" "${!cpu}" "${!err}"
}
frow() { # name: the fixed-rate columns
  local p50="F_$1_2" p99="F_$1_3" err="FE_$1"
  printf ' %s | %s | %s |' "$(ms "${!p50}")" "$(ms "${!p99}")" "${!err}"
}

REPORT="$RESULTS/gateway.md"
{
  echo "## (a) gateway full path (HTTPS) vs inference-server (HTTP)"
  echo
  echo "breast-cancer/1, one JSON row per request, $CONNS connections, ${DURATION} s per measurement, medians of $ROUNDS round(s) taken in turns, server on core $SERVER_CPU (1 I/O thread + 1 pool worker), wrk on core $CLIENT_CPU, binaries of cargo profile $PROFILE ($(date -u +%F), $(host_line))."
  echo
  echo "| server | requests/s | p50 | p99 | CPU µs/request | errors |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  row "inference-server, HTTP" bare; echo
  row "gateway, HTTPS + key + limit + split + local pool" local; echo
  echo
  echo "- the gateway keeps ${KEEP} of the bare server's requests/s (target ≥ 0.70: $T_KEEP; per round: $(per_round local bare 2 "$MAX"))"
  echo "- cores busy (medians): $(busy bare inference-server), $(busy local gateway)"
  echo
  echo "## (b) proxying to a remote inference-server (TLS at the front, one worker each)"
  echo
  echo "| proxy | max requests/s | p50 | p99 | CPU µs/request | errors | p50 @ ${RATE}/s | p99 @ ${RATE}/s | errors @ ${RATE}/s |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  row gateway gateway; frow gateway; echo
  row "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')" nginx; frow nginx; echo
  row "HAProxy $(haproxy -v 2>&1 | head -1 | awk '{print $3}')" haproxy; frow haproxy; echo
  echo
  echo "- requests/s: ${R_NG}× nginx (target ≥ 1.0: $T_NG; per round: $(per_round gateway nginx 2 "$MAX")), ${R_HA}× HAProxy (target ≥ 0.9: $T_HA; per round: $(per_round gateway haproxy 2 "$MAX"))"
  echo "- CPU µs/request: gateway $B_GW_CPU vs nginx $B_NG_CPU (target ≤ nginx: $T_CPU; gateway/nginx per round: $(per_round gateway nginx 5 "$MAX")), HAProxy $M_haproxy_5"
  echo "- fixed rate: ${RATE} requests/s (a quarter of the slowest maximum) with loadgen, open loop, latency from each request's due time; medians of $FIXED_ROUNDS runs of ${FIXED_DURATION} s, the three taking turns"
  echo "- p99 at ${RATE} requests/s: ${R_P99}× the best peer's (target ≤ 1.2: $T_P99; gateway/nginx per round: $(per_round gateway nginx 3 "$FIXED"), gateway/HAProxy: $(per_round gateway haproxy 3 "$FIXED"))"
  echo "- the upstream inference-server shares core $CLIENT_CPU with the load generator; cores busy during the maximum runs (medians): $(busy gateway gateway), $(busy nginx nginx), $(busy haproxy HAProxy). Where the client core is the busier one, it (wrk + the upstream) sets the maximum, not the proxy: the proxies' requests/s then tie within this host's noise, and CPU µs per request is the figure that tells them apart."
  if [ -n "${BASELINE:-}" ]; then
    echo
    echo "## This build against the baseline ($BASELINE), in the same rounds"
    echo
    echo "- (a) CPU µs/request: $M_local_5 vs $M_local_base_5 ($(ratio "$M_local_5" "$M_local_base_5")×; per round: $(per_round local local-base 5 "$MAX")); requests/s $(printf '%.0f' "$M_local_2") vs $(printf '%.0f' "$M_local_base_2")"
    echo "- (b) CPU µs/request: $M_gateway_5 vs $M_gateway_base_5 ($(ratio "$M_gateway_5" "$M_gateway_base_5")×; per round: $(per_round gateway gateway-base 5 "$MAX")); requests/s $(printf '%.0f' "$M_gateway_2") vs $(printf '%.0f' "$M_gateway_base_2")"
    echo "- errors: (a) $E_local vs $E_local_base, (b) $E_gateway vs $E_gateway_base (a ratio over failed requests compares nothing)"
  fi
} | tee "$REPORT"
say "report written to ${REPORT#"$ROOT"/}"
finish_bench "$T_KEEP" "$T_NG" "$T_HA" "$T_CPU" "$T_P99"
