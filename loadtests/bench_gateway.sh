#!/usr/bin/env bash
# The gateway's cost, measured side by side:
#
#  (a) the gateway's full path over HTTPS (TLS, API key, rate limit, split, in-process
#      inference) against inference-server over plain HTTP, same model, same single core;
#  (b) the gateway as a proxy in front of a remote inference-server, against nginx and
#      HAProxy doing the same proxying (TLS at the front, kept-alive upstream connections,
#      one worker each), all pinned to the same core: max requests/s and CPU µs per request
#      with wrk (closed loop), then p50/p99 at one fixed rate with loadgen (open loop).
#
#   loadtests/bench_gateway.sh            15 s per measurement
#   loadtests/bench_gateway.sh --short    3 s per measurement
#   loadtests/bench_gateway.sh --quick    1 s per measurement (proves the harness works)
#   loadtests/bench_gateway.sh --strict   exit 1 when a target is missed
#
# Cores: the server under test on core 0; wrk, loadgen and (b)'s upstream on core 1.
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
KEY="$("$BIN/gateway" keys add --tenant bench --keys-file "$WORK/api-keys.yaml" 2>/dev/null)"

start_gateway() { start_gateway_on "$1" "127.0.0.1:$P_GW"; }

# === (a) full path over HTTPS vs the bare server over HTTP ===
taskset -c "$SERVER_CPU" "$BIN/inference-server" --models "$ROOT/models" --listen "127.0.0.1:$P_BARE" --threads 1 >"$WORK/bare.log" 2>&1 &
BARE=$!; PIDS+=("$BARE")
wait_port "127.0.0.1:$P_BARE" || die "inference-server did not start"
read -r A_BARE_RPS A_BARE_P50 A_BARE_P99 A_BARE_CPU A_BARE_ERR < <(measure "inference-server (http)" "$BARE" "http://127.0.0.1:$P_BARE/v2/models/breast-cancer/versions/1/infer")
stop_pid "$BARE"

GW=$(start_gateway "$WORK/local.yaml"); PIDS+=("$GW")
read -r A_GW_RPS A_GW_P50 A_GW_P99 A_GW_CPU A_GW_ERR < <(measure "gateway, local pool (https)" "$GW" "https://127.0.0.1:$P_GW/v2/models/breast-cancer/infer")
stop_pid "$GW"

# === (b) proxies in front of a remote inference-server ===
taskset -c "$CLIENT_CPU" "$BIN/inference-server" --models "$ROOT/models" --listen "127.0.0.1:$P_UP" --threads 1 >"$WORK/upstream.log" 2>&1 &
UP=$!; PIDS+=("$UP")
wait_port "127.0.0.1:$P_UP" || die "the upstream inference-server did not start"
PATH_B="/v2/models/breast-cancer/versions/1/infer"

nginx_proxy_conf "$WORK/nginx.conf" "$P_NGINX" "upstream infer { server 127.0.0.1:$P_UP; keepalive 128; }"
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

GW=$(start_gateway "$WORK/remote.yaml"); PIDS+=("$GW")
cat "$WORK/server.crt" "$WORK/server.key" > "$WORK/combined.pem"
read -r B_GW_RPS B_GW_P50 B_GW_P99 B_GW_CPU B_GW_ERR < <(measure "gateway, remote pool" "$GW" "https://127.0.0.1:$P_GW$PATH_B")
stop_pid "$GW"

taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" >"$WORK/nginx.log" 2>&1 &
NGINX=$!; PIDS+=("$NGINX")
wait_port "127.0.0.1:$P_NGINX" || die "nginx did not start: $(cat "$WORK/nginx.err" 2>/dev/null)"
read -r B_NG_RPS B_NG_P50 B_NG_P99 B_NG_CPU B_NG_ERR < <(measure "nginx" "$NGINX" "https://127.0.0.1:$P_NGINX$PATH_B")
stop_pid "$NGINX"

taskset -c "$SERVER_CPU" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HAP=$!; PIDS+=("$HAP")
wait_port "127.0.0.1:$P_HAPROXY" || die "haproxy did not start: $(cat "$WORK/haproxy.log")"
read -r B_HA_RPS B_HA_P50 B_HA_P99 B_HA_CPU B_HA_ERR < <(measure "haproxy" "$HAP" "https://127.0.0.1:$P_HAPROXY$PATH_B")
stop_pid "$HAP"

# --- p99 at one fixed rate: half the slowest proxy's maximum, the same for all three ---
RATE=$(printf '%s\n' "$B_GW_RPS" "$B_NG_RPS" "$B_HA_RPS" | sort -n | head -1 | awk '{ printf "%d", $1 / 2 }')
fixed() { fixed_rate "$1" "$2" "$RATE" "$WORK/ca.crt"; }
GW=$(start_gateway "$WORK/remote.yaml"); PIDS+=("$GW")
read -r F_GW_P50 F_GW_P99 F_GW_ERR < <(fixed gateway "https://127.0.0.1:$P_GW$PATH_B"); stop_pid "$GW"
taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" >"$WORK/nginx.log" 2>&1 & NGINX=$!; PIDS+=("$NGINX")
wait_port "127.0.0.1:$P_NGINX"
read -r F_NG_P50 F_NG_P99 F_NG_ERR < <(fixed nginx "https://127.0.0.1:$P_NGINX$PATH_B"); stop_pid "$NGINX"
taskset -c "$SERVER_CPU" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & HAP=$!; PIDS+=("$HAP")
wait_port "127.0.0.1:$P_HAPROXY"
read -r F_HA_P50 F_HA_P99 F_HA_ERR < <(fixed haproxy "https://127.0.0.1:$P_HAPROXY$PATH_B"); stop_pid "$HAP"
stop_pid "$UP"

KEEP="$(ratio "$A_GW_RPS" "$A_BARE_RPS")"
R_NG="$(ratio "$B_GW_RPS" "$B_NG_RPS")"; R_HA="$(ratio "$B_GW_RPS" "$B_HA_RPS")"
BEST_P99=$(printf '%s\n' "$F_NG_P99" "$F_HA_P99" | sort -n | head -1)
R_P99="$(ratio "$F_GW_P99" "$BEST_P99")"
T_KEEP="$(check "$KEEP" '>=' 0.70)"; T_NG="$(check "$R_NG" '>=' 1.0)"; T_HA="$(check "$R_HA" '>=' 0.9)"
T_CPU="$(check "$B_GW_CPU" '<=' "$B_NG_CPU")"; T_P99="$(check "$R_P99" '<=' 1.2)"

REPORT="$RESULTS/gateway.md"
{
  echo "## (a) gateway full path (HTTPS) vs inference-server (HTTP)"
  echo
  echo "breast-cancer/1, one JSON row per request, $CONNS connections, ${DURATION} s, server on core $SERVER_CPU (1 I/O thread + 1 pool worker), wrk on core $CLIENT_CPU, binaries of cargo profile $PROFILE ($(date -u +%F), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))."
  echo
  echo "| server | requests/s | p50 | p99 | CPU µs/request | errors |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  echo "| inference-server, HTTP | $A_BARE_RPS | $(ms "$A_BARE_P50") | $(ms "$A_BARE_P99") | $A_BARE_CPU | $A_BARE_ERR |"
  echo "| gateway, HTTPS + key + limit + split + local pool | $A_GW_RPS | $(ms "$A_GW_P50") | $(ms "$A_GW_P99") | $A_GW_CPU | $A_GW_ERR |"
  echo
  echo "- the gateway keeps ${KEEP} of the bare server's requests/s (target ≥ 0.70: $T_KEEP)"
  echo
  echo "## (b) proxying to a remote inference-server (TLS at the front, one worker each)"
  echo
  echo "| proxy | max requests/s | p50 | p99 | CPU µs/request | errors | p50 @ ${RATE}/s | p99 @ ${RATE}/s | errors @ ${RATE}/s |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  echo "| gateway | $B_GW_RPS | $(ms "$B_GW_P50") | $(ms "$B_GW_P99") | $B_GW_CPU | $B_GW_ERR | $(ms "$F_GW_P50") | $(ms "$F_GW_P99") | $F_GW_ERR |"
  echo "| nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') | $B_NG_RPS | $(ms "$B_NG_P50") | $(ms "$B_NG_P99") | $B_NG_CPU | $B_NG_ERR | $(ms "$F_NG_P50") | $(ms "$F_NG_P99") | $F_NG_ERR |"
  echo "| HAProxy $(haproxy -v 2>&1 | head -1 | awk '{print $3}') | $B_HA_RPS | $(ms "$B_HA_P50") | $(ms "$B_HA_P99") | $B_HA_CPU | $B_HA_ERR | $(ms "$F_HA_P50") | $(ms "$F_HA_P99") | $F_HA_ERR |"
  echo
  echo "- requests/s: ${R_NG}× nginx (target ≥ 1.0: $T_NG), ${R_HA}× HAProxy (target ≥ 0.9: $T_HA)"
  echo "- CPU µs/request: gateway $B_GW_CPU vs nginx $B_NG_CPU (target ≤ nginx: $T_CPU), HAProxy $B_HA_CPU"
  echo "- p99 at ${RATE} requests/s: ${R_P99}× the best peer's (target ≤ 1.2: $T_P99)"
  echo "- the upstream inference-server shares core $CLIENT_CPU with the load generator"
} | tee "$REPORT"
say "report written to ${REPORT#"$ROOT"/}"
if [ "$STRICT" = 1 ]; then
  for t in "$T_KEEP" "$T_NG" "$T_HA" "$T_CPU" "$T_P99"; do [ "$t" = met ] || die "a target was missed (see above)"; done
fi
