#!/usr/bin/env bash
# What mirroring every request to a shadow model costs the primary, with nginx's `mirror`
# as the reference:
#
#  - the gateway (local pool breast-cancer/1) with no shadow, then with a local shadow
#    (breast-cancer/3) at 100%: max requests/s and CPU per request with wrk (closed loop,
#    5 runs each), then p50/p99 at half the no-shadow maximum with loadgen (open loop), the
#    two gateways side by side taking turns (medians: this machine's noise comes in bursts); how
#    many copies were compared and how many dropped, from the gateway's own metrics; how much
#    of the server core that rate leaves, found by an idle-priority spinner beside each
#    gateway (loadtests/spare_cpu.py); then the same turns at 3/8 of the maximum, and how
#    busy each gateway kept the server core in its turns (at half load on some hosts the
#    plain gateway alone keeps it about 80% busy: docs/performance.md);
#  - nginx proxying to an inference-server, without and with `mirror` at 100% to a second
#    inference-server, measured the same way.
#
#   loadtests/bench_shadow.sh            15 s per measurement
#   loadtests/bench_shadow.sh --short    3 s per measurement
#   loadtests/bench_shadow.sh --quick    1 s per measurement (proves the harness works)
#   loadtests/bench_shadow.sh --strict   exit 1 when a target is missed
#
# Targets (gateway): at half the no-shadow maximum, ≥ 95% of copies compared and p99 with 100%
# mirroring ≤ 1.15× without; at the maximum, requests/s loss ≤ 20% (its compared share is
# reported). A failed request fails every target it feeds, and --strict fails on any.
# Cores: the gateway or nginx on core 0; wrk, loadgen and nginx's upstreams on core 1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_bench_args "$@"
peer_bench_setup shadow-bench wrk nginx curl

P_GW=18543; P_ADMIN=18902; P_NGINX=18544; P_UP=18301; P_SHADOW=18302
P_GW_M=18545; P_ADMIN_M=18903 # the mirrored gateway, when both run side by side
# max_in_flight 4,096, as in proxy/tests/shadow_isolation.rs: the copies wait for the CPU the
# client path leaves (an I/O thread's quiet turns here: one I/O thread on one core; idle
# priority elsewhere), and at 28,000 copies/s the default 64 (256 before) covers 2 ms (9 ms) of the
# client path keeping the core busy, which its bursts outlast; the CPU budget, not this cap,
# is what sheds copies here (docs/limits.md).
gw_config() { # file shadows-yaml store
  cat > "$1" <<EOF
$(gateway_config_head)
shadow: {max_in_flight: 4096, store: $3}
pools:
  v1: {local: {model: breast-cancer, version: 1, instances: 1, max_batch: 32}}
  v3: {local: {model: breast-cancer, version: 3, instances: 1, max_batch: 32}}
routes:
  - model: breast-cancer
    stable: v1
$2
EOF
}
gw_config "$WORK/plain.yaml" "" plain.sqlite3
# The mirrored gateway listens elsewhere, so that both can run side by side.
(P_GW=$P_GW_M P_ADMIN=$P_ADMIN_M; gw_config "$WORK/mirrored.yaml" "    shadows: [{pool: v3, percent: 100}]" shadows.sqlite3)
KEY="$("$BIN/gateway" keys add --tenant bench --keys-file "$WORK/api-keys.yaml" 2>/dev/null)"
URL_GW="https://127.0.0.1:$P_GW/v2/models/breast-cancer/infer"
URL_GW_M="https://127.0.0.1:$P_GW_M/v2/models/breast-cancer/infer"

# Sum of a metric's series on the mirrored gateway's admin listener.
metric() {
  { curl -s "http://127.0.0.1:$P_ADMIN_M/metrics" || true; } | awk -v name="$1" 'index($0, name) == 1 { s += $NF } END { printf "%d", s }'
}
# COMPARED ANSWERED: the share compared, in % (0 when nothing was answered).
share() { awk -v c="$1" -v n="$2" 'BEGIN { printf "%.1f", (n > 0 ? 100 * c / n : 0) }'; }
median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)) }'; }
# Copies compared (the shadow answered and the answers were compared) and requests the
# mirrored gateway answered itself (not the shadows' own lines), from its counters.
compared() { echo $(( $(metric gateway_shadow_agreement_total) + $(metric gateway_shadow_disagreement_total) )); }
primaries() {
  { curl -s "http://127.0.0.1:$P_ADMIN_M/metrics" || true; } \
    | awk 'index($0, "gateway_requests_total{") == 1 && $0 !~ /variant="shadow"/ { s += $NF } END { printf "%d", s }'
}
# Copies dropped so far by reason ("in_flight_cap=12 queue_full=3"), for the report.
drop_reasons() {
  { curl -s "http://127.0.0.1:$P_ADMIN_M/metrics" || true; } | awk 'index($0, "gateway_shadow_dropped_total{") == 1 {
    match($0, /reason="[^"]*"/); r = substr($0, RSTART + 8, RLENGTH - 9); n[r] += $NF }
    END { for (r in n) printf "%s=%d ", r, n[r] }'
}
# A gauge of the mirrored gateway, as written (a float).
gauge() {
  { curl -s "http://127.0.0.1:$P_ADMIN_M/metrics" || true; } | awk -v name="$1" 'index($0, name " ") == 1 { v = $NF } END { printf "%s", (v == "" ? 0 : v) }'
}

# --- maximum requests/s: both gateways side by side, one loaded at a time, taking turns
# (ABBA), MAX_ROUNDS runs each; requests/s, p50, p99 and CPU are medians, errors and the
# copies compared and dropped are sums over the mirrored runs (from its counters). One run of
# each cannot tell this machine's bursts of noise from a difference: single runs a minute
# apart have differed by 25% on the same binary. ---
MAX_ROUNDS=5
[ "$QUICK" = 1 ] && MAX_ROUNDS=1
gw0=$(start_gateway_on "$WORK/plain.yaml" "127.0.0.1:$P_GW"); PIDS+=("$gw0")
gw1=$(start_gateway_on "$WORK/mirrored.yaml" "127.0.0.1:$P_GW_M"); PIDS+=("$gw1")
c=$(compared); d=$(metric gateway_shadow_dropped_total); r=$(primaries)
: > "$WORK/max-plain.txt"; : > "$WORK/max-mirrored.txt"
plain_max() { measure "gateway, no shadow ($round/$MAX_ROUNDS)" "$gw0" "$URL_GW" >>"$WORK/max-plain.txt"; }
mirrored_max() {
  measure "gateway, 100% to a local shadow ($round/$MAX_ROUNDS)" "$gw1" "$URL_GW_M" >>"$WORK/max-mirrored.txt"
  sleep 1 # copies still in flight finish (or time out) before the next run or the counters
}
for round in $(seq "$MAX_ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then plain_max; mirrored_max; else mirrored_max; plain_max; fi
done
# Medians of the rounds, errors summed (lib.sh, round_figures).
read -r G0_RPS G0_P50 G0_P99 G0_CPU G0_ERR < <(round_figures "$WORK/max-plain.txt")
read -r G1_RPS G1_P50 G1_P99 G1_CPU G1_ERR < <(round_figures "$WORK/max-mirrored.txt")
G0_RUNS="$(round_list "$WORK/max-plain.txt" " ")"; G1_RUNS="$(round_list "$WORK/max-mirrored.txt" " ")"
G1_CMP=$(( $(compared) - c )); G1_DROP=$(( $(metric gateway_shadow_dropped_total) - d )); G1_ANS=$(( $(primaries) - r ))
# The shadow store right after the maximum-rate runs: how old the oldest record of its last
# commit was (what a crash then would have lost), and records it had to drop.
G1_LAG="$(gauge gateway_shadow_store_lag_seconds | awk '{ printf "%.3f", $1 }')"; G1_LOST="$(metric gateway_shadow_records_lost_total)"
stop_pid "$gw0"; stop_pid "$gw1"
G1_SHARE="$(share "$G1_CMP" "$G1_ANS")"

# --- p50/p99 at half the no-shadow maximum (open loop). This machine's noise comes in
# bursts, which one run of each cannot tell from a difference: both gateways run side by side
# (one receives load at a time) and take turns, ROUNDS runs each; the figures are medians. ---
RATE=$((G0_RPS / 2))
FIXED=$(( DURATION / 3 > 1 ? DURATION / 3 : 1 )); ROUNDS=6
[ "$DURATION" -le 3 ] && ROUNDS=4
[ "$QUICK" = 1 ] && ROUNDS=2
gw0=$(start_gateway_on "$WORK/plain.yaml" "127.0.0.1:$P_GW"); PIDS+=("$gw0")
gw1=$(start_gateway_on "$WORK/mirrored.yaml" "127.0.0.1:$P_GW_M"); PIDS+=("$gw1")
# The copies' CPU: both gateways get the same requests at the same rate, so what the mirrored
# one spends beyond the plain one over the whole phase is the shadows' work.
c0=$(compared); d0=$(metric gateway_shadow_dropped_total); r0=$(primaries)
k0=$(tree_ticks "$gw0"); k1=$(tree_ticks "$gw1"); s0=$(gauge gateway_shadow_cpu_seconds_total)
plain_turn() { DURATION=$FIXED BENCH_CSV="" fixed_rate "gateway, no shadow ($round/$ROUNDS)" "$URL_GW" "$TURN_RATE" "$WORK/ca.crt"; }
mirrored_turn() { DURATION=$FIXED BENCH_CSV="" fixed_rate "gateway, 100% to a local shadow ($round/$ROUNDS)" "$URL_GW_M" "$TURN_RATE" "$WORK/ca.crt"; }
# A mirrored turn, and the share of its requests whose copies were compared by its end (a
# copy still queued then counts in the next turn): the host's slow spells show per turn.
mirrored_counted() {
  local tc tr
  tc=$(compared); tr=$(primaries)
  read -r b50 b99 berr < <(mirrored_turn)
  TURN_SHARES+=("$(share $(( $(compared) - tc )) $(( $(primaries) - tr )))")
  say "gateway, 100% to a local shadow ($round/$ROUNDS): ${TURN_SHARES[-1]}% of the turn's requests compared"
}
# busy SINCE: the server core's busy share since a core_jiffies reading (lib.sh), in %: how
# busy a turn kept that core, warm-up included.
busy() { core_busy "$1" "$(core_jiffies)" | awk '{ print $1 }'; }
# alternate RATE: ROUNDS turns of each gateway at RATE, either first in turn (ABBA, so that
# neither always follows the other); fills P50S0 P99S0 BUSY0 (plain), P50S1 P99S1 BUSY1
# (mirrored), ROUND_RATIOS, TURN_SHARES and the failed requests G0_FERR, G1_FERR. It sets
# TURN_RATE, the rate of plain_turn and mirrored_turn: the spinner's turns below run at the
# half-load rate because they come before the turns at 3/8.
alternate() {
  TURN_RATE="$1"
  P50S0=(); P99S0=(); P50S1=(); P99S1=(); BUSY0=(); BUSY1=(); G0_FERR=0; G1_FERR=0; ROUND_RATIOS=(); TURN_SHARES=()
  local since turn
  for round in $(seq "$ROUNDS"); do
    for turn in $( [ $((round % 2)) = 1 ] && echo plain mirrored || echo mirrored plain ); do
      since=$(core_jiffies)
      if [ "$turn" = plain ]; then
        read -r a50 a99 aerr < <(plain_turn); BUSY0+=("$(busy "$since")")
      else
        mirrored_counted; BUSY1+=("$(busy "$since")")
      fi
    done
    P50S0+=("$a50"); P99S0+=("$a99"); P50S1+=("$b50"); P99S1+=("$b99")
    G0_FERR=$((G0_FERR + aerr)); G1_FERR=$((G1_FERR + berr))
    ROUND_RATIOS+=("$(ratio "$b99" "$a99")")
  done
}
alternate "$RATE"
sleep 1 # copies still in flight finish (or time out) before the counters are read
G1_FCMP=$(( $(compared) - c0 )); G1_FDROP=$(( $(metric gateway_shadow_dropped_total) - d0 )); G1_FANS=$(( $(primaries) - r0 ))
K_PLAIN=$(( $(tree_ticks "$gw0") - k0 )); K_MIRR=$(( $(tree_ticks "$gw1") - k1 ))
G0_F50=$(echo "${P50S0[*]}" | median); G0_F99=$(echo "${P99S0[*]}" | median)
G1_F50=$(echo "${P50S1[*]}" | median); G1_F99=$(echo "${P99S1[*]}" | median)
G0_BUSY=$(echo "${BUSY0[*]}" | median); G1_BUSY=$(echo "${BUSY1[*]}" | median)
HALF_RATIOS="${ROUND_RATIOS[*]}"; HALF_SHARES="${TURN_SHARES[*]}"; H0_FERR=$G0_FERR; H1_FERR=$G1_FERR
REASONS="$(drop_reasons)"
# What one copy costs as the gateway's own admission measures shadow work: its CPU over the
# phase per copy compared then (gateway_shadow_cpu_seconds_total), and the admission's own
# estimate at the end (a gauge smoothed over its last few windows: one moment's figure). Then
# the share compared at a quarter of the maximum: where the client path leaves room.
MEAN_COPY="$(awk -v a="$s0" -v b="$(gauge gateway_shadow_cpu_seconds_total)" -v n="$G1_FCMP" 'BEGIN { printf "%.1f", (n > 0 ? (b - a) * 1e6 / n : 0) }')"
GAUGE_COPY="$(awk -v s="$(gauge gateway_shadow_copy_cpu_seconds)" 'BEGIN { printf "%.1f", s * 1e6 }')"
QRATE=$((RATE / 2))
c1=$(compared); r1=$(primaries)
read -r Q50 Q99 QERR < <(DURATION=$((FIXED * 2)) fixed_rate "gateway, 100% to a local shadow, a quarter of the maximum" "$URL_GW_M" "$QRATE" "$WORK/ca.crt")
sleep 1
Q_CMP=$(( $(compared) - c1 )); Q_ANS=$(( $(primaries) - r1 ))
Q_SHARE="$(share "$Q_CMP" "$Q_ANS")"
# The room half load leaves: an idle-priority spinner on the server core, alone and during a
# turn of each gateway (not counted above), its work beside a gateway against alone. A
# figure of work done, where CPU time accounted can mislead (loadtests/spare_cpu.py).
# Within the turn's measured seconds: from 0.25 s after its warm-up to 0.8 of the way.
SPIN_S="$(awk -v f="$FIXED" 'BEGIN { printf "%.2f", 0.8 * f - 0.25 }')"
# spin DELAY [SECONDS]: the spinner's loops per second (SECONDS: SPIN_S unless given).
spin() { python3 "$ROOT/loadtests/spare_cpu.py" --cpu "$SERVER_CPU" --delay "$1" --seconds "${2:-$SPIN_S}"; }
spin_beside() { # turn-function: the spinner's work per second during that turn
  spin "$WARMUP.25" &
  "$1" >/dev/null
  wait "$!"
}
# Alone before and after (the host's speed drifts; both are reported), beside each gateway
# between them.
SPIN_ALONE1="$(spin 0)"; round=room
SPIN_PLAIN="$(spin_beside plain_turn)"; SPIN_MIRR="$(spin_beside mirrored_turn)"
SPIN_ALONE2="$(spin 0)"
spare() { awk -v a="$1" -v b="$SPIN_ALONE1" -v c="$SPIN_ALONE2" 'BEGIN { printf "%.0f", (b + c > 0 ? 200 * a / (b + c) : 0) }'; }
SPARE_PLAIN="$(spare "$SPIN_PLAIN")"; SPARE_MIRR="$(spare "$SPIN_MIRR")"
# The host's own tail with the core kept busy (not a target): turns of the plain gateway with
# an idle-priority spinner on its core taking whatever it leaves, against plain turns, either
# first in turn. The spinner yields the core to the gateway at once (SCHED_IDLE), so what it
# adds to the p99 is not work the gateway waits behind in the guest: on a virtual machine whose
# idle core halts, it is what a core that never idles costs there, and copies that fill the
# idle time pay it whatever their priority (docs/performance.md, "A busy core's tail").
spun_turn() {
  spin "$WARMUP" "$FIXED" >/dev/null &
  local s=$!
  DURATION=$FIXED BENCH_CSV="" fixed_rate "gateway, no shadow, an idle-priority spinner beside it ($round/$ROUNDS)" "$URL_GW" "$TURN_RATE" "$WORK/ca.crt"
  wait "$s"
}
TURN_RATE="$RATE"; P99_ALONE=(); P99_SPUN=(); SPUN_RATIOS=()
for round in $(seq "$ROUNDS"); do
  for turn in $( [ $((round % 2)) = 1 ] && echo plain spun || echo spun plain ); do
    if [ "$turn" = plain ]; then read -r _ x99 _ < <(plain_turn); else read -r _ s99 _ < <(spun_turn); fi
  done
  P99_ALONE+=("$x99"); P99_SPUN+=("$s99"); SPUN_RATIOS+=("$(ratio "$s99" "$x99")")
done
SPUN_P99_0=$(echo "${P99_ALONE[*]}" | median); SPUN_P99_1=$(echo "${P99_SPUN[*]}" | median)
SPUN_RATIO="$(ratio "$SPUN_P99_1" "$SPUN_P99_0")"
# The same turns at 3/8 of the maximum, where the plain gateway leaves the copies more room:
# how the primary's p99 with the copies depends on how busy they keep the core (not a target).
R38=$((G0_RPS * 3 / 8))
c2=$(compared); r2=$(primaries)
alternate "$R38"
sleep 1
R38_SHARE="$(share $(( $(compared) - c2 )) $(( $(primaries) - r2 )))"
R38_P99_0=$(echo "${P99S0[*]}" | median); R38_P99_1=$(echo "${P99S1[*]}" | median)
R38_BUSY0=$(echo "${BUSY0[*]}" | median); R38_BUSY1=$(echo "${BUSY1[*]}" | median)
R38_RATIO="$(ratio "$R38_P99_1" "$R38_P99_0")"; R38_RATIOS="${ROUND_RATIOS[*]}"; R38_FERR=$((G0_FERR + G1_FERR))
G0_FERR=$H0_FERR; G1_FERR=$H1_FERR # the half-load turns' failures feed the targets
stop_pid "$gw0"; stop_pid "$gw1"
# Per request of the plain gateway, per compared copy of the mirrored one's extra CPU.
CPU_REQ="$(awk -v k="$K_PLAIN" -v n="$G1_FANS" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? k * 1e6 / hz / n : 0) }')"
CPU_COPY="$(awk -v k="$((K_MIRR - K_PLAIN))" -v n="$G1_FCMP" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? k * 1e6 / hz / n : 0) }')"
G1_FSHARE="$(share "$G1_FCMP" "$G1_FANS")"
for row in "gateway, no shadow|$G0_F50|$G0_F99|$G0_FERR" "gateway, 100% to a local shadow|$G1_F50|$G1_F99|$G1_FERR"; do
  IFS='|' read -r n f50 f99 ferr <<<"$row"
  echo "shadow,\"$n @ $RATE/s (median of $ROUNDS runs)\",fixed,$RATE,$f50,,,,$f99,,,$ferr" >> "$BENCH_CSV"
done

# --- nginx: primary and mirror are inference-servers on core 1 ---
for port in "$P_UP" "$P_SHADOW"; do
  taskset -c "$CLIENT_CPU" "$BIN/inference-server" --models "$ROOT/models" --listen "127.0.0.1:$port" --threads 1 >"$WORK/up-$port.log" 2>&1 &
  PIDS+=("$!")
  wait_port "127.0.0.1:$port" || die "inference-server on $port did not start"
done
UPSTREAMS="upstream infer { server 127.0.0.1:$P_UP; keepalive 128; }
  upstream shadow { server 127.0.0.1:$P_SHADOW; keepalive 128; }"
MIRROR_LOCATION="location = /mirror {
      internal;
      proxy_pass http://shadow/v2/models/breast-cancer/versions/3/infer;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }"
nginx_proxy_conf "$WORK/nginx-plain.conf" "$P_NGINX" "$UPSTREAMS" "" "$MIRROR_LOCATION"
nginx_proxy_conf "$WORK/nginx-mirror.conf" "$P_NGINX" "$UPSTREAMS" "mirror /mirror; mirror_request_body on;" "$MIRROR_LOCATION"
URL_NG="https://127.0.0.1:$P_NGINX/v2/models/breast-cancer/versions/1/infer"
nginx_run() { # name conf rate-or-empty: rps p50 p99 cpu err f50 f99 ferr
  local name="$1" ng rps p50 p99 cpu err rate f50 f99 ferr
  taskset -c "$SERVER_CPU" nginx -c "$2" >"$WORK/nginx.log" 2>&1 &
  ng=$!; PIDS+=("$ng")
  wait_port "127.0.0.1:$P_NGINX" || die "nginx did not start: $(cat "$WORK/nginx.err" 2>/dev/null)"
  read -r rps p50 p99 cpu err < <(measure "$name" "$ng" "$URL_NG")
  rate="${3:-$((rps / 2))}"
  read -r f50 f99 ferr < <(fixed_rate "$name" "$URL_NG" "$rate" "$WORK/ca.crt")
  echo "$rps $p50 $p99 $cpu $err $f50 $f99 $ferr $rate"
  stop_pid "$ng"
}
read -r N0_RPS N0_P50 N0_P99 N0_CPU N0_ERR N0_F50 N0_F99 N0_FERR N_RATE < <(nginx_run "nginx, no mirror" "$WORK/nginx-plain.conf")
read -r N1_RPS N1_P50 N1_P99 N1_CPU N1_ERR N1_F50 N1_F99 N1_FERR _ < <(nginx_run "nginx, mirror 100%" "$WORK/nginx-mirror.conf" "$N_RATE")

loss() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b > 0 ? (1 - a / b) * 100 : 0) }'; }
G_LOSS="$(loss "$G1_RPS" "$G0_RPS")"; N_LOSS="$(loss "$N1_RPS" "$N0_RPS")"
G_P99="$(ratio "$G1_F99" "$G0_F99")"; N_P99="$(ratio "$N1_F99" "$N0_F99")"
T_LOSS="$(unless_errors "$(check "$G_LOSS" '<=' 20)" "$G1_ERR")"
T_P99="$(unless_errors "$(check "$G_P99" '<=' 1.15)" "$G1_FERR")"
T_SHARE="$(unless_errors "$(check "$G1_FSHARE" '>=' 95)" "$G1_FERR")"

REPORT="$RESULTS/shadow.md"
{
  echo "## Mirroring 100% of requests to a shadow: the primary's cost"
  echo
  echo "breast-cancer/1 answers, breast-cancer/3 is the shadow (shadow.max_in_flight 4096); one JSON row per request, $CONNS connections, ${DURATION} s, server on core $SERVER_CPU, wrk/loadgen on core $CLIENT_CPU, binaries of cargo profile $PROFILE ($(date -u +%F), $(host_line))."
  echo
  echo "| server | max requests/s | p99 | CPU µs/request | errors | fixed rate | p50 | p99 | errors |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  echo "| gateway, no shadow | $G0_RPS ² | $(ms "$G0_P99") | $G0_CPU | $G0_ERR | $RATE/s ¹ | $(ms "$G0_F50") | $(ms "$G0_F99") | $G0_FERR |"
  echo "| gateway, local shadow 100% | $G1_RPS ² | $(ms "$G1_P99") | $G1_CPU | $G1_ERR | $RATE/s ¹ | $(ms "$G1_F50") | $(ms "$G1_F99") | $G1_FERR |"
  echo "| nginx, no mirror | $N0_RPS | $(ms "$N0_P99") | $N0_CPU | $N0_ERR | $N_RATE/s | $(ms "$N0_F50") | $(ms "$N0_F99") | $N0_FERR |"
  echo "| nginx, mirror 100% | $N1_RPS | $(ms "$N1_P99") | $N1_CPU | $N1_ERR | $N_RATE/s | $(ms "$N1_F50") | $(ms "$N1_F99") | $N1_FERR |"
  echo
  echo "¹ The gateway's fixed-rate figures are medians of $ROUNDS runs of ${FIXED} s each, the two gateways taking turns (side by side, one loaded at a time, either first in turn); p99 ratio per turn: ${HALF_RATIOS}; share of the mirrored turn's requests compared by its end, per turn: ${HALF_SHARES} (%). nginx's are one run each (a reference)."
  echo
  echo "² The gateway's maximum-rate figures are medians of $MAX_ROUNDS runs of ${DURATION} s each (wrk, $CONNS connections, after ${WARMUP} s of warm-up), the two gateways taking turns the same way; requests/s per run: no shadow $G0_RUNS, mirrored $G1_RUNS."
  echo
  echo "- gateway: requests/s loss with 100% mirroring ${G_LOSS}% (target ≤ 20%: $T_LOSS); p99 at $RATE/s ${G_P99}× without (target ≤ 1.15: $T_P99)"
  echo "- gateway copies at $RATE/s: ${G1_FSHARE}% of the $G1_FANS requests compared (target ≥ 95%: $T_SHARE), $G1_FDROP dropped (${REASONS:-none}); at the maximum rate: ${G1_SHARE}% of $G1_ANS compared, $G1_DROP dropped. Shadows run after the client path (here in the I/O thread's quiet turns, elsewhere at idle CPU priority): on a saturated core they wait and copies are shed (counted by reason) instead of slowing the primary."
  echo "- CPU at $RATE/s, over the whole phase: $CPU_REQ µs per request for the plain gateway; the mirrored one spent $CPU_COPY µs more per compared copy (a difference of two measurements: noise when few copies were compared); one copy cost $MEAN_COPY µs on average over the phase as the gateway's admission measures shadow work (gateway_shadow_cpu_seconds_total per compared copy; its estimate at the end, gateway_shadow_copy_cpu_seconds, $GAUGE_COPY µs)"
  echo "- core $SERVER_CPU busy at $RATE/s (/proc/stat over each gateway's turns, warm-up included; medians): ${G0_BUSY}% with the plain gateway, ${G1_BUSY}% with the mirrored one"
  echo "- at 3/8 of the maximum ($R38/s; $ROUNDS turns of each, as at half; not a target): primary p99 $(ms "$R38_P99_1") with the copies, $(ms "$R38_P99_0") without (${R38_RATIO}×; per turn: $R38_RATIOS); core $SERVER_CPU busy ${R38_BUSY0}% plain, ${R38_BUSY1}% mirrored; ${R38_SHARE}% of the mirrored turns' requests compared; $R38_FERR failed"
  echo "- room at $RATE/s on core $SERVER_CPU (an idle-priority spinner's work there during one more ${FIXED} s turn of each gateway, against the mean of the spinner alone before and after, $SPIN_ALONE1 and $SPIN_ALONE2 loops/s: loadtests/spare_cpu.py): ${SPARE_PLAIN}% of the core beside the plain gateway, ${SPARE_MIRR}% beside the mirrored one. The copies fit in what the plain gateway leaves only where that exceeds what they cost (a copy's µs above times the rate)"
  echo "- the host's tail with the core kept busy ($RATE/s; $ROUNDS turns of each, in turns; not a target): the plain gateway's p99 $(ms "$SPUN_P99_1") with an idle-priority spinner on core $SERVER_CPU taking what it leaves, $(ms "$SPUN_P99_0") without (${SPUN_RATIO}×; per turn: ${SPUN_RATIOS[*]}). The spinner yields the core at once, so the ratio is what a core that never idles costs the tail on this host, not work the gateway waits behind: the copies fill the same idle time"
  echo "- at a quarter of the maximum ($QRATE/s, one run of $((FIXED * 2)) s, mirrored gateway): ${Q_SHARE}% of $Q_ANS requests compared; primary p50 $(ms "$Q50"), p99 $(ms "$Q99"), $QERR failed"
  echo "- shadow store after the maximum-rate run: the oldest record of its last commit was ${G1_LAG} s old (what a crash then would have lost; shadow.flush_ms + 50 ms while the writer keeps up), $G1_LOST records lost to its bounded backlog"
  echo "- nginx mirror: requests/s loss ${N_LOSS}%; p99 at $N_RATE/s ${N_P99}× without (its mirror upstream runs on core $CLIENT_CPU)"
} | tee "$REPORT"
say "report written to ${REPORT#"$ROOT"/}"
finish_bench "$T_LOSS" "$T_P99" "$T_SHARE"
