#!/usr/bin/env python3
"""Notes when the whole machine was stopped during a benchmark, so its report can say so.

    pauses.py OUT            appends one line per stop to OUT until its parent (the benchmark
                             script that started it) exits, or SIGTERM

It sleeps 100 ms at a time and reads the monotonic and the wall clock around each sleep; a
sleep that took half a second or more longer than asked is a stop of the machine, not of a
process: nothing on these 2-core benchmarks holds a normal-priority process off both cores
for that long. Each line: the UTC time the stop began, its length in seconds, and the clock
that saw it (`wall`, `monotonic` or both). Why: a virtual machine paused by its host (once
for 7.9 s during a `bench_reload.sh` run: docs/performance.md, the 20ab90c run's note) stops
the load generator too, and wrk counts every connection's request older than its 2 s timeout
as failed when its check runs after the stop; the failures still count against the targets,
and the report says beside them when the machine was stopped.
"""

import datetime
import os
import signal
import sys
import time

TICK = 0.1
# A stop shorter than this is not reported: the host's scheduling noise on these machines
# reaches tens of milliseconds (docs/performance.md, "A busy core's tail").
THRESHOLD = 0.5


def watch(out, sleep=time.sleep, monotonic=time.monotonic, wall=time.time, ticks=None, alive=lambda: True):
    """Sleeps TICK at a time and writes a line to `out` (a file) for each stop, while `alive()`;
    `ticks` bounds the loop (None: no bound). The clocks are parameters for the tests."""
    n = 0
    while (ticks is None or n < ticks) and alive():
        n += 1
        m0, w0 = monotonic(), wall()
        sleep(TICK)
        late_m, late_w = monotonic() - m0 - TICK, wall() - w0 - TICK
        clocks = [name for name, late in (("wall", late_w), ("monotonic", late_m)) if late >= THRESHOLD]
        if clocks:
            began = datetime.datetime.fromtimestamp(w0 + TICK, datetime.timezone.utc)
            out.write(f"{began:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + f"Z {max(late_m, late_w):.1f} {'+'.join(clocks)}\n")
            out.flush()


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ends with the script that started it, whatever that script stops on its way (a
    # benchmark may stop all its helpers between phases): no watcher outlives its benchmark.
    parent = os.getppid()
    with open(sys.argv[1], "a", encoding="utf-8") as out:
        watch(out, alive=lambda: os.getppid() == parent)


if __name__ == "__main__":
    main()
