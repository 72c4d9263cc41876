#!/usr/bin/env python3
"""How much work an idle-priority spinner gets done on one core: the CPU a server there leaves.

    spare_cpu.py --cpu 0 --delay 2.2 --seconds 4   ->   iterations per second of wall time

The spinner waits `--delay` seconds (at normal priority, so that starting up does not wait for
a busy core), then runs at SCHED_IDLE on `--cpu` for `--seconds` and prints how many loop
iterations it did per second. Its figure beside a server against its figure alone is the share
of the core the server left: a measure of work done, not of CPU time accounted, because on
some virtual machines the CPU time accounted to a server at a fixed rate has been far above
what the spinner found missing (docs/performance.md).
"""

import argparse
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--seconds", type=float, required=True)
    a = p.parse_args()
    os.sched_setaffinity(0, {a.cpu})
    time.sleep(a.delay)
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    start = time.monotonic()
    end, n = start + a.seconds, 0
    while time.monotonic() < end:
        for _ in range(10_000):
            n += 1
    print(int(n / (time.monotonic() - start)))


if __name__ == "__main__":
    main()
