#!/usr/bin/env bash
# The model-quality figures (docs/quality.md quotes them): the request path's cost of
# recording an input for drift and a prediction for feedback, the memory per route variant,
# the drift threshold's false-alarm rate on in-distribution rows over many windows, and the
# requests needed to detect stated shifts. Measured on the gateway's own code
# (proxy/benches/quality.rs) with the bundled models' profiles and held-out rows.
#
#   loadtests/bench_quality.sh            1000 windows per figure
#   loadtests/bench_quality.sh --short    300 windows
#   loadtests/bench_quality.sh --quick    50 windows (proves the harness works)
#   loadtests/bench_quality.sh --strict   exit 1 when recording an input costs more than
#                                         300 ns per request (the issue's "a few hundred")
#
# Runs pinned to core 0. Figures go to stdout and loadtests/results/quality-<time>.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_bench_args "$@"
TRIALS=1000
[ "$DURATION" = 3 ] && TRIALS=300
[ "$QUICK" = 1 ] && TRIALS=50

say "building the quality benchmark (release)"
(cd "$ROOT" && cargo bench --quiet -p proxy --bench quality --no-run)
OUT="$RESULTS/quality-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "# Model quality figures, $(date -u +%Y-%m-%d), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "Command: \`loadtests/bench_quality.sh $*\` (pinned to core $SERVER_CPU)."
  echo
  (cd "$ROOT" && taskset -c "$SERVER_CPU" cargo bench --quiet -p proxy --bench quality -- --trials "$TRIALS" | sed '/^## /d')
} | tee "$OUT"
say "written to $OUT"
if [ "$STRICT" = 1 ]; then
  cost="$(awk -F'|' '/every request sampled/ { gsub(/ /, "", $3); print $3 }' "$OUT")"
  [ "${cost:-99999}" -le 300 ] || die "recording an input costs $cost ns per request (target: at most 300)"
  say "target met: recording an input costs $cost ns per request (at most 300)"
fi
