#!/usr/bin/env bash
# Every side-by-side benchmark, one command, one report:
#
#  - inference-server vs FastAPI + uvicorn + onnxruntime (bench_inference.sh)
#  - the gateway's full path vs the bare inference-server, and the gateway as a TLS proxy vs
#    nginx and HAProxy (bench_gateway.sh)
#  - shadow traffic 0% vs 100%, nginx mirror as the reference (bench_shadow.sh)
#  - 100 reloads vs none, nginx -s reload as the reference (bench_reload.sh)
#
# then loadtests/report.py writes loadtests/results/report/REPORT.md: each benchmark's
# figures, ratios and targets, with PNG charts of throughput and latency distributions, and
# the commit measured. A full run (no --short or --quick) also copies it to
# loadtests/results/bench_all-<commit>.md, the one file of results/ that is committed.
# Servers run on core 0, load generators on core 1 (lib.sh).
#
#   loadtests/bench_all.sh            15 s per measurement (the gateway's part in 5 rounds)
#   loadtests/bench_all.sh --short    3 s per measurement
#   loadtests/bench_all.sh --quick    1 s per measurement: proves the harness works, in under
#                                     2 minutes once built (what CI runs)
#   loadtests/bench_all.sh --strict   exit 1 when a benchmark misses a target
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_bench_args "$@"
MODE=full
[ "$DURATION" = 3 ] && MODE=short
[ "$QUICK" = 1 ] && MODE=quick

"$ROOT/scripts/setup.sh" --python
# Results of an earlier run must not slip into this report.
for bench in inference gateway shadow reload; do rm -f "$RESULTS/$bench.csv" "$RESULTS/$bench.md"; done
rm -rf "$RESULTS/report"
START="$(date +%s)"
FAILED=()
for bench in inference gateway shadow reload; do
  say "=== bench_$bench.sh $*"
  # A missed target under --strict fails the run, after the other benchmarks have run.
  "$ROOT/loadtests/bench_$bench.sh" "$@" || FAILED+=("$bench")
done
"$ROOT/.venv/bin/python" "$ROOT/loadtests/report.py" --mode "$MODE" --seconds "$(($(date +%s) - START))" --host "$(host_line)"
if [ "$MODE" = full ]; then
  KEEP="$RESULTS/bench_all-$(git -C "$ROOT" rev-parse --short HEAD).md"
  sed "/^!\[/d" "$RESULTS/report/REPORT.md" > "$KEEP" # the charts stay beside REPORT.md
  say "kept as ${KEEP#"$ROOT"/}, without the charts (commit it, with the table that"
  say "python3 loadtests/runs.py prints pasted into docs/performance.md: scripts/test.sh checks it)"
fi
say "took $(($(date +%s) - START)) s"
[ "${#FAILED[@]}" = 0 ] || die "failed: ${FAILED[*]}"
