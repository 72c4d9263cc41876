"""Every committed full benchmark run side by side: one row per
loadtests/results/bench_all-<commit>.md, each target's figure as that report states it.

    python3 loadtests/runs.py            # prints the Markdown table
    python3 loadtests/runs.py --check docs/performance.md

`--check` fails when the table between the file's `<!-- runs:begin -->` and
`<!-- runs:end -->` markers is not what this prints (scripts/test.sh runs it), so the page
cannot quote a run other than as its committed report does. Nothing here is measured: a
figure a report does not state is shown as "—". loadtests/test_runs.py tests the reading.
"""

import argparse
import pathlib
import re
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BEGIN, END = "<!-- runs:begin -->", "<!-- runs:end -->"

# (column, pattern): the pattern's groups are the figure(s) and, last, "met" or "MISSED".
TARGETS = [
    ("vs FastAPI, requests/s (≥ 10×)",
     r"requests/s: ([\d.]+)× the peer \(target ≥ 10×: (met|MISSED)", "{}×"),
    ("vs FastAPI, p99 (≤ 0.2)",
     r"p99: ([\d.]+) of the peer's \(target ≤ 0\.2: (met|MISSED)", "{}"),
    ("lone request's p50 (≥ 30% lower)",
     r"p50 (\d+)% lower than fixed-delay batching \(target ≥ 30%: (met|MISSED)", "{}% lower"),
    ("batching (≥ 3×)",
     r"batching speed-up: ([\d.]+)× \(target ≥ 3×: (met|MISSED)", "{}×"),
    ("full path (≥ 0.70)",
     r"keeps ([\d.]+) of the bare server's requests/s \(target ≥ 0\.70: (met|MISSED)", "{}"),
    ("proxy vs nginx, requests/s (≥ 1.0×)",
     r"requests/s: ([\d.]+)× nginx \(target ≥ 1\.0: (met|MISSED)", "{}×"),
    ("proxy vs HAProxy, requests/s (≥ 0.9×)",
     r"([\d.]+)× HAProxy \(target ≥ 0\.9: (met|MISSED)", "{}×"),
    ("proxy CPU µs a request, ours / nginx's (≤)",
     r"gateway ([\d.]+) vs nginx ([\d.]+) \(target ≤ nginx: (met|MISSED)", "{} / {}"),
    ("proxy p99 at a quarter of the rate (≤ 1.2×)",
     r"p99 at \d+ requests/s: ([\d.]+)× the best peer's \(target ≤ 1\.2: (met|MISSED)", "{}×"),
    ("copies compared at half load (≥ 95%)",
     r"copies at (\d+)/s: ([\d.]+)% of the \d+ requests compared \(target ≥ 95%: (met|MISSED)",
     "{1}% at {0}/s"),
    ("primary's p99 there (≤ 1.15×)",
     r"p99 at \d+/s ([\d.]+)× without \(target ≤ 1\.15: (met|MISSED)", "{}×"),
    ("lost to mirroring at the maximum (≤ 20%)",
     r"loss with 100% mirroring (-?[\d.]+)% \(target ≤ 20%: (met|MISSED)", "{}%"),
    ("reloads: failed (0)",
     r"failures during (?:\d+ × )?100 reloads: (\d+) \(target 0: (met|MISSED)", "{}"),
    ("reloads: requests/s lost (≤ 10%)",
     r"reloads: \d+ \(target 0: \w+\); requests/s loss (-?[\d.]+)% \(target ≤ 10%: (met|MISSED)",
     "{}%"),
]


# The table's columns: the run's own, then one per target.
COLUMNS = ["run (UTC, end)", "commit", "host", "no-shadow maximum", "failed (ours)"] + [t[0] for t in TARGETS]


def host(header):
    """The CPU model the report's header names, shortened."""
    m = re.search(r"(AMD EPYC|Intel\(R\) Xeon\(R\) Processor(?: @ [\d.]+GHz)?)", header)
    if not m:
        return "—"
    return m.group(1).replace("(R)", "").replace(" Processor", "")


def failed(text):
    """Requests to the gateway or inference-server that failed, summed over the report: its
    tables' `errors…` and `failures` columns in the rows of those servers, and the "N failed"
    its bullet lines state (the lone request's rounds, the quarter-rate shadow run)."""
    total, columns = 0, None  # the current table's error columns; None until its header row
    for line in text.splitlines():
        if not line.startswith("|"):
            columns = None
            if line.startswith("- "):
                total += sum(int(n) for n in re.findall(r"\b(\d+) failed\b", line))
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if columns is None:
            columns = [i for i, c in enumerate(cells) if c.startswith(("errors", "failures"))]
        elif cells[0].startswith(("gateway", "inference-server")):
            total += sum(int(cells[i].split()[0]) for i in columns if cells[i][:1].isdigit())
    return total


def row(path):
    text = path.read_text()
    header = text.splitlines()[2]
    when = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d) UTC", header)
    commit = re.search(r"commit ([0-9a-f]{7})", header)
    dirty = "with uncommitted changes" in header
    maximum = re.search(r"^\| gateway, no shadow \| (\d+)", text, re.M)
    cells = [
        when.group(1) if when else "—",
        f"[{commit.group(1)}{'*' if dirty else ''}](../loadtests/results/{path.name})" if commit else path.name,
        host(header),
        f"{int(maximum.group(1)):,}/s" if maximum else "—",
        str(failed(text)),
    ]
    for _, pattern, shape in TARGETS:
        m = re.search(pattern, text)
        if not m:
            cells.append("—")
            continue
        *figures, status = m.groups()
        figures = [f"{int(f):,}" if f.isdigit() and len(f) > 3 else f for f in figures]
        cell = shape.format(*figures)
        cells.append(f"**{cell} MISSED**" if status == "MISSED" else cell)
    return (when.group(1) if when else "", cells)


def table():
    rows = sorted(row(p) for p in RESULTS.glob("bench_all-*.md"))
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join(["---"] * len(COLUMNS)) + " |"]
    lines += ["| " + " | ".join(cells) + " |" for _, cells in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=pathlib.Path, help="fail unless FILE holds the table as printed")
    args = parser.parse_args()
    current = table()
    if not args.check:
        print(current)
        return
    text = args.check.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{args.check}: no {BEGIN} … {END} markers")
    quoted = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    if quoted != current:
        sys.exit(f"{args.check}: the runs table is not what loadtests/runs.py prints; "
                 "paste its output between the markers")
    print(f"{args.check}: the runs table matches the {current.count(chr(10)) - 1} committed reports")


if __name__ == "__main__":
    main()
