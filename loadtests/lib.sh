# Shared by the load-test scripts: pinning, wrk runs, CPU accounting, waiting for ports.
# Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="$ROOT/loadtests/results"
mkdir -p "$RESULTS"

say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# Server on core 0, load generator on core 1: they never compete for the same core, and
# every server measured gets exactly one core.
SERVER_CPU=0
CLIENT_CPU=1
if [ "$(nproc)" -lt 2 ]; then
  say "warning: only $(nproc) core; server and load generator will share it"
  CLIENT_CPU=0
fi

ensure_tools() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 && continue
    local pkg="$tool"
    [ "$tool" = h2load ] && pkg=nghttp2-client
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing $pkg"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; } \
        || die "could not install $pkg"
    else
      die "$tool is missing: install it (Debian: apt-get install $pkg)"
    fi
  done
}

# wait_port HOST:PORT [seconds]: until a TCP connect succeeds.
wait_port() {
  local addr="$1" limit="${2:-30}" i=0
  while ! (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; do
    i=$((i + 1)); [ "$i" -gt $((limit * 10)) ] && return 1
    sleep 0.1
  done
}

# CPU time (user + system) of a process and its threads, in clock ticks.
cpu_ticks() {
  awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

CLK_TCK="$(getconf CLK_TCK)"

# The wrk script reports exact figures from wrk's own histogram.
WRK_LUA="$RESULTS/.report.lua"
cat > "$WRK_LUA" <<'LUA'
local body_file = os.getenv("WRK_BODY")
if body_file then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
local key = os.getenv("WRK_API_KEY")
if key then wrk.headers["x-api-key"] = key end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p75_us=%d p90_us=%d p95_us=%d p99_us=%d p999_us=%d socket_errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
LUA

# wrk_figures NAME TICKS: reads wrk's output on stdin; prints "rps p50_us p99_us
# cpu_us_per_request errors" (TICKS: the server's CPU clock ticks during the run) and, when
# NAME is set, adds a row to $BENCH_CSV for the combined report (loadtests/report.py).
BENCH_CSV=""
CSV_HEADER="bench,name,kind,rps,p50_us,p75_us,p90_us,p95_us,p99_us,p999_us,cpu_us,errors"
wrk_figures() {
  local name="$1" ticks="$2"
  grep '^RESULT' | sed 's/RESULT //' | awk -v ticks="$ticks" -v hz="$CLK_TCK" -v name="$name" -v csv="$BENCH_CSV" \
    -v bench="$(basename "${BENCH_CSV%.csv}")" '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    rps = v["requests"] / (v["duration_us"] / 1e6)
    cpu = ticks * 1e6 / hz / (v["requests"] > 0 ? v["requests"] : 1)
    err = v["socket_errors"] + v["non2xx"]
    printf "%.0f %d %d %.1f %d\n", rps, v["p50_us"], v["p99_us"], cpu, err
    if (name != "" && csv != "")
      printf "%s,\"%s\",max,%.0f,%d,%d,%d,%d,%d,%d,%.1f,%d\n", bench, name, rps, v["p50_us"], v["p75_us"], v["p90_us"],
        v["p95_us"], v["p99_us"], v["p999_us"], cpu, err >> csv
  }' | failures_of "$name" 5
}

# failures_of NAME FIELD: passes a figures line through, noting its failed requests (field
# FIELD) for finish_bench. Warm-ups (NAME empty) count too: a failure is a failure.
FAILURES="$(mktemp "${TMPDIR:-/tmp}/bench-failures.XXXXXX")"
failures_of() {
  local line n
  while IFS= read -r line; do
    echo "$line"
    n="$(echo "$line" | awk -v f="$2" '{ print $f + 0 }')"
    if [ "$n" -gt 0 ]; then echo "${1:-warm-up}: $n failed" >> "$FAILURES"; fi
  done
}

# watch_pauses: from here to the benchmark's end, loadtests/pauses.py notes each stop of the
# whole machine (a virtual machine paused by its host stops the load generator too, and wrk
# counts each request in flight across a stop of over 2 s as failed); finish_bench reports
# them beside the failed requests. The failures still count: this only says when. Not in
# PIDS (which a benchmark may stop between phases): the watcher ends when this script does.
PAUSES=""
watch_pauses() {
  PAUSES="$(mktemp "${TMPDIR:-/tmp}/bench-pauses.XXXXXX")"
  python3 "$ROOT/loadtests/pauses.py" "$PAUSES" &
}

# finish_bench TARGET...: the end of every benchmark. Lists the failed requests of every
# measurement; with --strict, exits 1 when a target is not "met" or when any request failed
# (a non-2xx answer or a socket error, in any measurement, ours or a peer's).
finish_bench() {
  local t missed=0
  if [ -s "$FAILURES" ]; then
    say "failed requests:"; sed 's/^/[bench]   /' "$FAILURES" >&2
  fi
  if [ -n "$PAUSES" ] && [ -s "$PAUSES" ]; then
    local stops report="${OUT:-${REPORT:-}}"
    stops="$(awk '{ sub(/T/, " ", $1); sub(/Z$/, "", $1); printf "%s%s UTC for %s s (%s clock)", (NR > 1 ? "; " : ""), $1, $2, $3 }' "$PAUSES")"
    say "the machine was stopped while this benchmark ran (loadtests/pauses.py): $stops"
    # The benchmark's own report says it too, beside its figures.
    if [ -n "$report" ] && [ -f "$report" ]; then
      printf '\n- the machine was stopped while this benchmark ran, its load generators with it (loadtests/pauses.py: a process sleeping 100 ms at a time saw its clocks jump): %s. Requests in flight across a stop count as they ended: wrk counts each one older than its 2 s timeout as failed\n' "$stops" >> "$report"
    fi
  fi
  [ -z "$PAUSES" ] || rm -f "$PAUSES"
  for t in "$@"; do [ "$t" = met ] || missed=1; done
  if [ "$STRICT" = 1 ]; then
    [ "$missed" = 0 ] || die "a target was missed (see above)"
    [ ! -s "$FAILURES" ] || die "requests failed (see above): --strict accepts none"
  fi
  rm -f "$FAILURES"
}

# bench_csv NAME: start $RESULTS/NAME.csv for this benchmark's rows.
bench_csv() {
  BENCH_CSV="$RESULTS/$1.csv"
  echo "$CSV_HEADER" > "$BENCH_CSV"
}

# run_wrk NAME PID URL BODY_FILE DURATION CONNECTIONS [extra wrk args...]
# Prints: rps p50_us p99_us cpu_us_per_request errors (NAME empty: a warm-up, not recorded)
run_wrk() {
  local name="$1" pid="$2" url="$3" body="$4" duration="$5" conns="$6"; shift 6
  local before after out
  before="$(cpu_ticks "$pid")"
  out="$(WRK_BODY="$body" taskset -c "$CLIENT_CPU" wrk -t1 -c"$conns" -d"$duration" -s "$WRK_LUA" "$@" "$url")"
  after="$(cpu_ticks "$pid")"
  echo "$out" | wrk_figures "$name" "$((after - before))"
}

# stop_pid PID: TERM, then KILL if it lingers.
stop_pid() {
  local pid="$1"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# parse_bench_args "$@": --short (3-second measurements), --quick (1-second measurements and
# warm-ups: proves the harness works, what CI runs), --strict (exit 1 on a missed target),
# --help (the calling script's header comment). Sets DURATION, WARMUP, QUICK and STRICT.
DURATION=15
WARMUP=2
QUICK=0
STRICT=0
parse_bench_args() {
  for a in "$@"; do
    case "$a" in
      --short) DURATION=3 ;;
      --quick) DURATION=1; WARMUP=1; QUICK=1 ;;
      --strict) STRICT=1 ;;
      -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
      *) die "unknown argument $a (see --help)" ;;
    esac
  done
}

# --- used by the benchmarks that compare the gateway with its peers ---
# They set BIN (release binaries), WORK (scratch folder), CONNS, BODY and KEY (an API key).

# peer_bench_setup NAME TOOL...: what every peer benchmark starts with — set-up, the tools,
# the binaries, a fresh $WORK ($RESULTS/NAME), and every pid in PIDS stopped on exit.
# Measurements use the `dist` profile (whole-program LTO, what deploy/Dockerfile ships);
# --quick, which only proves the harness, uses the `release` build the tests made.
peer_bench_setup() {
  local name="$1"; shift
  CONNS=64
  BODY="$ROOT/models/example.json"
  "$ROOT/scripts/setup.sh"
  ensure_tools "$@"
  if [ "$QUICK" = 1 ]; then
    PROFILE=release
    say "building gateway, inference-server and loadgen (release)"
    # `cargo test --no-run` builds the binaries with the same features as the test suite, so
    # running after scripts/test.sh compiles nothing again.
    (cd "$ROOT" && cargo test --release --quiet --workspace --no-run)
  else
    PROFILE=dist
    say "building gateway, inference-server and loadgen (profile dist: the first build takes several minutes)"
    (cd "$ROOT" && cargo build --profile dist --quiet --workspace --bins)
  fi
  BIN="$ROOT/target/$PROFILE"
  WORK="$RESULTS/$name"
  rm -rf "$WORK"; mkdir -p "$WORK"
  bench_csv "${name%-bench}"
  PIDS=()
  trap 'for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done' EXIT
  watch_pauses
}

# CPU ticks of a process and its children (nginx: master + workers): the live ones' own, and
# those of the children it has reaped (in its stat's cutime and cstime), since nginx's reloads
# replace its workers during a run. A child that exits between the listing and the read
# counts 0 here (its ticks join the parent's count once reaped): before, its missing stat
# file made the sum a syntax error and stopped bench_reload.sh (CI, 2026-12-06).
tree_ticks() {
  local total p t
  total="$(awk '{ sub(/.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat" 2>/dev/null || true)"
  total="${total:-0}"
  for p in $(pgrep -P "$1" || true); do
    t="$(cpu_ticks "$p" 2>/dev/null || true)"
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
# core_jiffies: "busy steal total" of the server core, then of the client core (/proc/stat).
core_jiffies() {
  awk -v s="cpu$SERVER_CPU" -v c="cpu$CLIENT_CPU" '$1 == s || $1 == c {
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    total = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9
    line[$1] = sprintf("%d %d %d", total - $5 - $6 - $9, $9, total)
  } END { print line[s], line[c] }' /proc/stat
}
# core_busy BEFORE AFTER: "server% client% steal%" between two core_jiffies readings (steal:
# time the hypervisor gave to someone else, both cores, a measure of the host's noise).
core_busy() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
    server = (y[3] - x[3]) > 0 ? (y[3] - x[3]) : 1; client = (y[6] - x[6]) > 0 ? (y[6] - x[6]) : 1
    printf "%.0f %.0f %.1f", 100 * (y[1] - x[1]) / server, 100 * (y[4] - x[4]) / client, 100 * (y[2] - x[2] + y[5] - x[5]) / (server + client) }'
}
# run_wrk with whole-tree CPU accounting. When CORES_TSV is set, a row "name server% client%
# steal%" is added to it: how busy each core was, which says which side was the bottleneck.
measure() { # name pid url [wrk args...]
  local name="$1" pid="$2" url="$3"; shift 3
  say "$name: warm-up"
  WRK_BODY="$BODY" WRK_API_KEY="$KEY" taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$WRK_LUA" "$url" >/dev/null 2>&1 || true
  say "$name: measuring for ${DURATION}s at $CONNS connections"
  local before after out cores_before cores
  before="$(tree_ticks "$pid")"; cores_before="$(core_jiffies)"
  out="$(WRK_BODY="$BODY" WRK_API_KEY="$KEY" taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$WRK_LUA" "$url")"
  after="$(tree_ticks "$pid")"; cores="$(core_busy "$cores_before" "$(core_jiffies)")"
  if [ -n "${CORES_TSV:-}" ]; then printf '%s\t%s\n' "$name" "${cores// /$'\t'}" >>"$CORES_TSV"; fi
  echo "$out" | wrk_figures "$name" "$((after - before))"
}

# gateway_config_head: the part of a benchmark gateway config every benchmark shares —
# listeners on $P_GW/$P_ADMIN, a development certificate, keys in api-keys.yaml (relative to
# the config), no effective rate limit, one I/O thread, no access log, the bundled models.
gateway_config_head() {
  cat <<EOF
listen: {https: "127.0.0.1:$P_GW", admin: "127.0.0.1:$P_ADMIN"}
tls: {cert: server.crt, key: server.key, generate_dev_cert: true}
auth: {keys_file: api-keys.yaml}
rate_limits: {default: {per_second: 100000000, burst: 100000000}}
server: {threads: 1, access_log: false}
models_dir: $ROOT/models
EOF
}

# median: the median of the numbers on stdin, one per line.
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
# round_figures FILE: FILE holds measure's "rps p50 p99 cpu errors", one line per round;
# prints the medians of the first four (requests/s whole, CPU with its decimal) and the sum of
# the errors, on one line.
round_figures() {
  local f
  printf '%.0f' "$(awk '{ print $1 }' "$1" | median)"
  for f in 2 3 4; do printf ' %s' "$(awk -v f="$f" '{ print $f }' "$1" | median)"; done
  awk '{ s += $5 } END { print " " s + 0 }' "$1"
}
# round_list FILE SEPARATOR: the first field of each line (each round's requests/s), in order.
round_list() { awk -v sep="$2" '{ printf "%s%d", (NR > 1 ? sep : ""), $1 }' "$1"; }

# loadgen_cpu NAME PID URL RATE [loadgen args...]: one loadgen run ($CONNS connections,
# $DURATION s after $WARMUP s) on the client core, with the server PID's CPU over it.
# Prints "answered_per_s cpu_us_per_request p50_us p99_us errors hits ok"; failures are
# listed for finish_bench under NAME.
loadgen_cpu() {
  local name="$1" pid="$2" url="$3" rate="$4"; shift 4
  local before after out
  before="$(cpu_ticks "$pid")"
  out="$(taskset -c "$CLIENT_CPU" "$BIN/loadgen" --url "$url" --rate "$rate" --connections "$CONNS" \
    --duration "$DURATION" --warmup "$WARMUP" "$@" | grep '^RESULT')"
  after="$(cpu_ticks "$pid")"
  # The warm-up's CPU is in the ticks too: counted over the warm-up's requests as well.
  echo "$out" | sed 's/RESULT //' | awk -v ticks="$((after - before))" -v hz="$CLK_TCK" -v d="$DURATION" -v w="$WARMUP" '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    answered = v["ok"] * (d + w) / d
    printf "%.0f %.1f %d %d %d %d %d\n", v["answered_per_s"], (answered > 0 ? ticks * 1e6 / hz / answered : 0), v["p50_us"], v["p99_us"], v["errors"], v["hits"] + 0, v["ok"]
  }' | failures_of "$name" 5
}

# host_line: the machine for a report's header: cores, CPU model and, on a virtual machine,
# the hypervisor and the guest's halt polling (how long an idle vCPU polls before it halts).
# On a guest that halts at once, a vCPU loses its caches while idle, and fixed-rate figures
# have moved with the setting: docs/performance.md, "the host's idle".
host_line() {
  local model hv poll
  model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  hv="$(lscpu 2>/dev/null | awk -F: '/Hypervisor vendor/ { gsub(/ /, "", $2); print $2 }')"
  if [ -z "$hv" ]; then echo "$(nproc) cores: $model"; return; fi
  poll="$(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns 2>/dev/null || echo unknown)"
  echo "$(nproc) cores: $model, a $hv guest, guest halt polling ${poll} ns"
}

# Ratios, target checks and milliseconds for the reports.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
check() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == ">=" ? v >= t : v <= t); print (ok ? "met" : "MISSED") }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f ms", us / 1000 }'; }
# unless_errors TARGET ERRORS...: TARGET, or MISSED with the errors' sum when there are any. A
# failed request costs a server less than an answered one: a figure measured over failures
# compares nothing, and a target met with them is not met.
unless_errors() {
  local t=$1 n=0 e; shift
  for e in "$@"; do n=$((n + ${e:-0})); done
  if [ "$n" -gt 0 ]; then echo "MISSED ($n errors)"; else echo "$t"; fi
}

# fixed_rate NAME URL RATE CACERT: p50_us p99_us errors at RATE requests/s (open loop); a
# row in $BENCH_CSV too. The percentiles count failed requests as the slowest (loadgen).
fixed_rate() {
  local name="$1" url="$2" rate="$3" ca="$4"
  say "$name: ${rate} requests/s for ${DURATION}s (open loop)"
  taskset -c "$CLIENT_CPU" "$BIN/loadgen" --url "$url" --rate "$rate" --connections "$CONNS" --duration "$DURATION" --warmup "$WARMUP" \
    --body "$BODY" --header "x-api-key: $KEY" --header "content-type: application/json" --cacert "$ca" \
    | grep '^RESULT' | sed 's/RESULT //' | awk -v name="$name @ $rate/s" -v csv="$BENCH_CSV" -v bench="$(basename "${BENCH_CSV%.csv}")" '{
      for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      print v["p50_us"], v["p99_us"], v["errors"]
      if (csv != "")
        printf "%s,\"%s\",fixed,%.0f,%d,,%d,,%d,%d,,%d\n", bench, name, v["rate"], v["p50_us"], v["p90_us"], v["p99_us"],
          v["p999_us"], v["errors"] >> csv
    }' | failures_of "$name @ $rate/s" 3
}

# start_gateway_on CONFIG HOST:PORT: runs the gateway on the server core; prints its pid.
start_gateway_on() {
  # A port someone else holds would pass wait_port, and the figures would be that process's.
  if (exec 3<>"/dev/tcp/${2%:*}/${2##*:}") 2>/dev/null; then
    die "$2 is already in use by another process (a gateway left running?): stop it first"
  fi
  taskset -c "$SERVER_CPU" "${GATEWAY_BIN:-$BIN/gateway}" run --config "$1" >"$WORK/gateway.log" 2>&1 &
  local pid=$!
  wait_port "$2" 60 || die "the gateway did not start: $(tail -5 "$WORK/gateway.log")"
  echo "$pid"
}

# nginx_proxy_conf FILE PORT UPSTREAMS [LOCATION_EXTRA] [SERVER_EXTRA]: one worker, TLS at the
# front ($WORK/server.crt, .key), kept-alive connections to the upstream named "infer" — the
# nginx fast path (proxy_http_version 1.1, Connection "", keepalive).
nginx_proxy_conf() {
  cat > "$1" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  $3
  server {
    listen 127.0.0.1:$2 ssl;
    ssl_certificate $WORK/server.crt;
    ssl_certificate_key $WORK/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    location / {
      ${4:-}
      proxy_pass http://infer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    ${5:-}
  }
}
NGINX
}
