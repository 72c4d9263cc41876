#!/usr/bin/env bash
# What reloading the config costs traffic, with `nginx -s reload` as the reference:
#
#  - the gateway (local pools breast-cancer/1 and /2, canary weight moving) under the same
#    closed-loop load (wrk, kept-alive connections): runs without reloads and runs with 100
#    reloads spread over the run (each an edit of the weight in the config file, applied at
#    once with POST /admin/reload; the file watcher would apply it ~0.1 s later anyway),
#    taking turns for ROUNDS rounds, either first in turn; medians of requests/s and p99,
#    failures summed (socket errors on the kept-alive connections + non-2xx). One run of
#    each drew a loss from the host's drift between two runs (−10.5% and 15.8% in two
#    full runs on one host, 2026-12-06);
#  - nginx proxying to an inference-server under the same load: without reloads, then with
#    20 `nginx -s reload`, one run each (a reference).
#
#   loadtests/bench_reload.sh            15 s per measurement, 5 rounds
#   loadtests/bench_reload.sh --short    6 s per measurement
#   loadtests/bench_reload.sh --quick    3 s per measurement, 2 rounds (proves the harness works)
#   loadtests/bench_reload.sh --strict   exit 1 when a target is missed
#   ROUNDS=9 loadtests/bench_reload.sh   more rounds
#
# Targets (gateway): 0 failures in the runs with reloads (each must apply its 100); the median
# requests/s with reloads within 10% of the median without.
# Cores: the gateway or nginx on core 0; wrk and nginx's upstream on core 1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_bench_args "$@"
# 100 reloads need a little more room than the other benchmarks' short runs.
if [ "$QUICK" = 1 ]; then DURATION=3; elif [ "$DURATION" -lt 6 ]; then DURATION=6; fi
ROUNDS="${ROUNDS:-5}"; [ "$QUICK" = 1 ] && ROUNDS=2
peer_bench_setup reload-bench wrk nginx curl

P_GW=18643; P_ADMIN=18903; P_NGINX=18644; P_UP=18401
CONFIG="$WORK/routes.yaml"
cat > "$CONFIG" <<EOF
$(gateway_config_head)
pools:
  v1: {local: {model: breast-cancer, version: 1, instances: 1, max_batch: 32}}
  v2: {local: {model: breast-cancer, version: 2, instances: 1, max_batch: 32}}
routes:
  - model: breast-cancer
    stable: v1
    canary: {pool: v2, weight: 10}
EOF
KEY="$("$BIN/gateway" keys add --tenant bench --keys-file "$WORK/api-keys.yaml" 2>/dev/null)"
URL_GW="https://127.0.0.1:$P_GW/v2/models/breast-cancer/infer"
generation() { curl -s "http://127.0.0.1:$P_ADMIN/admin/config" | sed -n 's/.*"generation":\([0-9]*\).*/\1/p'; }

# gateway_burst COUNT SECONDS: COUNT weight edits of the config, each applied at once with
# POST /admin/reload, evenly over SECONDS (back to back when slower), starting a tenth into
# the measured run (after the warm-up). One Python process does them all, so that the
# driver's own process start-ups do not take the cores being measured.
gateway_burst() {
  sleep "$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%.2f", w + d / 10 }')"
  python3 - "$CONFIG" "$P_ADMIN" "$1" "$2" <<'PY'
import http.client, os, re, sys, time
config, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
text = open(config).read()
start = time.monotonic()
for i in range(1, count + 1):
    new = re.sub(r"weight: \d+", f"weight: {30 if i % 2 else 10}", text)
    with open(config + ".tmp", "w") as f:
        f.write(new)
    os.replace(config + ".tmp", config)
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("POST", "/admin/reload")
    c.getresponse().read()
    c.close()
    time.sleep(max(0.0, start + i * seconds / count - time.monotonic()))
PY
}
# nginx_burst COUNT SECONDS: COUNT `nginx -s reload`, the same way.
nginx_burst() {
  sleep "$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%.2f", w + d / 10 }')"
  local gap; gap="$(awk -v s="$2" -v n="$1" 'BEGIN { printf "%.3f", s / n }')"
  for _ in $(seq "$1"); do nginx -c "$WORK/nginx.conf" -s reload 2>/dev/null; sleep "$gap"; done
}
SPREAD="$(awk -v d="$DURATION" 'BEGIN { printf "%.2f", d * 0.6 }')"

gw=$(start_gateway_on "$CONFIG" "127.0.0.1:$P_GW"); PIDS+=("$gw")
: >"$WORK/plain.txt"; : >"$WORK/reloads.txt"; : >"$WORK/applied.txt"
plain_run() { measure "gateway, no reload (round $round)" "$gw" "$URL_GW" >>"$WORK/plain.txt"; }
reload_run() {
  local gen0 burst; gen0="$(generation)"
  gateway_burst 100 "$SPREAD" & burst=$!
  measure "gateway, 100 reloads (round $round)" "$gw" "$URL_GW" >>"$WORK/reloads.txt"
  # Counted when the measurement ends: reloads that landed after it do not count.
  echo $(( $(generation) - gen0 )) >>"$WORK/applied.txt"
  wait "$burst"
}
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then plain_run; reload_run; else reload_run; plain_run; fi
done
stop_pid "$gw"
# Medians of the rounds, errors summed (lib.sh, round_figures).
read -r G0_RPS _ G0_P99 _ G0_ERR < <(round_figures "$WORK/plain.txt")
read -r G1_RPS _ G1_P99 _ G1_ERR < <(round_figures "$WORK/reloads.txt")
# Every run with reloads must have applied its 100 within the measurement.
G_RELOADS="$(sort -n "$WORK/applied.txt" | head -1)"

# --- nginx: proxy to an inference-server on core 1 ---
taskset -c "$CLIENT_CPU" "$BIN/inference-server" --models "$ROOT/models" --listen "127.0.0.1:$P_UP" --threads 1 >"$WORK/up.log" 2>&1 &
PIDS+=("$!")
wait_port "127.0.0.1:$P_UP" || die "inference-server did not start"
nginx_proxy_conf "$WORK/nginx.conf" "$P_NGINX" "upstream infer { server 127.0.0.1:$P_UP; keepalive 128; }"
taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" >"$WORK/nginx.log" 2>&1 &
ng=$!; PIDS+=("$ng")
wait_port "127.0.0.1:$P_NGINX" || die "nginx did not start: $(cat "$WORK/nginx.err" 2>/dev/null)"
URL_NG="https://127.0.0.1:$P_NGINX/v2/models/breast-cancer/versions/1/infer"
read -r N0_RPS _ N0_P99 _ N0_ERR < <(measure "nginx, no reload" "$ng" "$URL_NG")
nginx_burst 20 "$SPREAD" & BURST=$!
read -r N1_RPS _ N1_P99 _ N1_ERR < <(measure "nginx, 20 reloads" "$ng" "$URL_NG")
wait "$BURST"
stop_pid "$ng"

loss() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b > 0 ? (1 - a / b) * 100 : 0) }'; }
G_LOSS="$(loss "$G1_RPS" "$G0_RPS")"; N_LOSS="$(loss "$N1_RPS" "$N0_RPS")"
T_ERR="$(check "$G1_ERR" '<=' 0)"; T_LOSS="$(check "$G_LOSS" '<=' 10)"
[ "$G_RELOADS" -ge 100 ] || T_ERR="MISSED (a run applied only $G_RELOADS reloads)"

REPORT="$RESULTS/reload.md"
{
  echo "# Reloads under load ($(date -u +%Y-%m-%dT%H:%MZ), $(host_line), ${DURATION} s per run, $CONNS kept-alive connections, wrk)"
  echo
  echo "| server | reloads | requests/s | p99 | failures |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  echo "| gateway ¹ | 0 | $G0_RPS | $(ms "$G0_P99") | $G0_ERR |"
  echo "| gateway ¹ | 100 a run | $G1_RPS | $(ms "$G1_P99") | $G1_ERR |"
  echo "| nginx | 0 | $N0_RPS | $(ms "$N0_P99") | $N0_ERR |"
  echo "| nginx | 20 | $N1_RPS | $(ms "$N1_P99") | $N1_ERR |"
  echo
  echo "¹ Medians of $ROUNDS runs each (failures: their sum), the two kinds of run taking turns, either first in turn; requests/s per run: no reloads $(round_list "$WORK/plain.txt" ", "), with reloads $(round_list "$WORK/reloads.txt" ", "); reloads applied within each run: $(round_list "$WORK/applied.txt" ", "). nginx's figures are one run each (a reference)."
  echo
  echo "- gateway: failures during $ROUNDS × 100 reloads: $G1_ERR (target 0: $T_ERR); requests/s loss $G_LOSS% (target ≤ 10%: $T_LOSS); p99 $(ratio "$G1_P99" "$G0_P99")× of no reloads"
  echo "- nginx: failures during 20 reloads: $N1_ERR; requests/s loss $N_LOSS%; p99 $(ratio "$N1_P99" "$N0_P99")×"
} > "$REPORT"
cat "$REPORT"
finish_bench "$T_ERR" "$T_LOSS"
