"""How loadtests/runs.py reads a report: a made-up one, so that the figures it must find (and
the ones it must leave out) are known. scripts/test.sh runs it:

    python3 -m unittest discover -s loadtests -p 'test_*.py'
"""

import pathlib
import sys
import tempfile
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import runs  # noqa: E402

REPORT = """# Benchmark report

2026-12-06 08:13 UTC, mode `full`, 2 cores: Intel(R) Xeon(R) Processor @ 2.80GHz, a KVM guest, \
commit 0123456789abcdef0123456789abcdef01234567 with uncommitted changes. The whole run took 9 s.

| server | requests/s | p50 | p99 | CPU µs/request | errors |
| --- | ---: | ---: | ---: | ---: | ---: |
| inference-server | 57159 | 1.01 ms | 1.96 ms | 17.4 | 2 |
| FastAPI + uvicorn | 2949 | 21.16 ms | 29.56 ms | 339.2 | 7 |

- requests/s: 19.38× the peer (target ≥ 10×: met)
- p50 67% lower than fixed-delay batching (target ≥ 30%: MISSED); 3 failed

| server | max requests/s | p99 | CPU µs/request | errors | fixed rate | p50 | p99 | errors |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| gateway, no shadow | 45266 ² | 2.57 ms | 21.8 | 0 | 22633/s ¹ | 0.19 ms | 3.48 ms | 4 |
| nginx, no mirror | 32416 | 3.58 ms | 25.8 | 9 | 16208/s | 0.56 ms | 3.85 ms | 0 |

- gateway copies at 22633/s: 46.3% of the 950592 requests compared (target ≥ 95%: MISSED), 1 dropped
"""


class ReadsAReport(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = pathlib.Path(self.dir.name) / "bench_all-0123456.md"
        self.path.write_text(REPORT)
        self.cells = dict(zip(runs.COLUMNS, runs.row(self.path)[1]))

    def tearDown(self):
        self.dir.cleanup()

    def test_failed_requests_are_ours_only(self):
        # 2 (inference-server) + 3 (a bullet) + 4 (the gateway's fixed rate); not FastAPI's 7
        # nor nginx's 9.
        self.assertEqual(runs.failed(REPORT), 9)
        self.assertEqual(self.cells["failed (ours)"], "9")

    def test_the_header_and_the_host(self):
        self.assertEqual(self.cells["run (UTC, end)"], "2026-12-06 08:13")
        self.assertTrue(self.cells["commit"].startswith("[0123456*]"))
        self.assertEqual(self.cells["host"], "Intel Xeon @ 2.80GHz")
        self.assertEqual(self.cells["no-shadow maximum"], "45,266/s")

    def test_targets_met_missed_and_absent(self):
        self.assertEqual(self.cells["vs FastAPI, requests/s (≥ 10×)"], "19.38×")
        self.assertEqual(self.cells["lone request's p50 (≥ 30% lower)"], "**67% lower MISSED**")
        self.assertEqual(self.cells["copies compared at half load (≥ 95%)"],
                         "**46.3% at 22,633/s MISSED**")
        self.assertEqual(self.cells["batching (≥ 3×)"], "—")


if __name__ == "__main__":
    unittest.main()
