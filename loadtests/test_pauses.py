"""loadtests/pauses.py on fake clocks: a stop is reported once, with its start and length, by
the clock that saw it; scheduling noise is not. scripts/test.sh runs it:

    python3 -m unittest discover -s loadtests -p 'test_*.py'
"""

import io
import pathlib
import sys
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import pauses  # noqa: E402


class FakeClocks:
    """Both clocks advance by each sleep plus what `extra` says for that sleep (the wall
    clock only, when `wall_only`)."""

    def __init__(self, extra, wall_only=False):
        self.extra, self.wall_only = list(extra), wall_only
        self.mono, self.now = 100.0, 1_796_651_718.0  # 2026-12-07T13:55:18Z

    def sleep(self, seconds):
        late = self.extra.pop(0) if self.extra else 0.0
        self.now += seconds + late
        self.mono += seconds + (0.0 if self.wall_only else late)

    def monotonic(self):
        return self.mono

    def wall(self):
        return self.now


def run(clocks, ticks):
    out = io.StringIO()
    pauses.watch(out, sleep=clocks.sleep, monotonic=clocks.monotonic, wall=clocks.wall, ticks=ticks)
    return out.getvalue().splitlines()


class Pauses(unittest.TestCase):
    def test_a_stop_is_reported_once_with_its_start_and_length(self):
        lines = run(FakeClocks([0.0, 0.02, 7.9, 0.0]), ticks=4)
        self.assertEqual(lines, ["2026-12-07T13:55:18.320Z 7.9 wall+monotonic"])

    def test_noise_under_the_threshold_is_not_a_stop(self):
        self.assertEqual(run(FakeClocks([0.049, 0.3, pauses.THRESHOLD - 0.01]), ticks=3), [])

    def test_a_jump_of_the_wall_clock_alone_is_named(self):
        lines = run(FakeClocks([0.0, 2.5], wall_only=True), ticks=2)
        self.assertEqual(lines, ["2026-12-07T13:55:18.200Z 2.5 wall"])

    def test_it_stops_when_its_parent_is_gone(self):
        clocks, calls = FakeClocks([]), []
        out = io.StringIO()
        pauses.watch(out, sleep=clocks.sleep, monotonic=clocks.monotonic, wall=clocks.wall,
                     alive=lambda: calls.append(1) or len(calls) <= 3)
        # Three ticks slept, then the fourth check found the parent gone.
        self.assertEqual(len(calls), 4)
        self.assertAlmostEqual(clocks.mono, 100.0 + 3 * pauses.TICK)


if __name__ == "__main__":
    unittest.main()
