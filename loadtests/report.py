"""One report for every side-by-side benchmark: loadtests/results/report/REPORT.md, with PNG
charts of throughput and latency distributions next to it.

Run by loadtests/bench_all.sh after the benchmarks. It reads what they wrote in
loadtests/results/: each benchmark's Markdown report (figures, ratios, targets met or
missed) and its CSV rows (one per measurement, written by lib.sh: requests/s, latency
percentiles, CPU per request, errors). Nothing here is measured or invented: a benchmark
that did not run is reported as missing.
"""

import argparse
import csv
import datetime
import os
import pathlib
import platform
import re
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BENCHES = [
    ("inference", "inference-server vs FastAPI + uvicorn + onnxruntime"),
    ("gateway", "The gateway: full path vs bare inference-server; as a proxy vs nginx and HAProxy"),
    ("shadow", "Shadow traffic: no shadow vs 100% mirrored (nginx mirror as reference)"),
    ("reload", "Reloads under load: 100 reloads vs none (nginx -s reload as reference)"),
]
PERCENTILES = [("p50_us", "p50"), ("p75_us", "p75"), ("p90_us", "p90"), ("p95_us", "p95"),
               ("p99_us", "p99"), ("p999_us", "p99.9")]


def read_rows(bench):
    path = RESULTS / f"{bench}.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def save(fig, path):
    """Writes a chart; returns its file name, as REPORT.md links it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


ROUND = re.compile(r" \(round \d+\)")


def median_rounds(rows, kind, key):
    """One row per server: a benchmark that measures in rounds ("name (round 2)") is shown
    by its median round on `key` (what its report's table gives), under the plain name."""
    groups = {}
    for r in rows:
        if r["kind"] == kind:
            groups.setdefault(ROUND.sub("", r["name"]), []).append(r)
    out = []
    for name, group in groups.items():
        group = sorted(group, key=lambda r: float(r[key] or 0))
        row = dict(group[(len(group) - 1) // 2])
        row["name"] = name if len(group) == 1 else f"{name} (median of {len(group)})"
        out.append(row)
    return out


def throughput_chart(bench, rows, out):
    rows = median_rounds(rows, "max", "rps")
    if not rows:
        return None
    names = [r["name"] for r in rows]
    rps = [float(r["rps"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    bars = ax.barh(names[::-1], rps[::-1], color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in rps[::-1]], padding=3, fontsize=8)
    ax.set_xlabel("requests/s (closed loop, wrk)")
    ax.set_title(f"{bench}: throughput")
    ax.margins(x=0.15)
    return save(fig, out / f"{bench}-throughput.png")


def latency_chart(bench, rows, kind, title, out):
    rows = median_rounds(rows, kind, "p99_us" if kind == "fixed" else "rps")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for r in rows:
        points = [(label, float(r[key]) / 1000) for key, label in PERCENTILES if r.get(key)]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=r["name"])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    low, high = ax.get_ylim()
    # Within one decade the minor ticks are the only labels; across several they crowd.
    minor = "%g" if high / low < 10 else ""
    ax.yaxis.set_minor_formatter(
        matplotlib.ticker.FormatStrFormatter(minor) if minor else matplotlib.ticker.NullFormatter()
    )
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_xlabel("percentile")
    ax.set_title(f"{bench}: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, out / f"{bench}-latency-{kind}.png")


def commit():
    """The commit measured, marked when the checkout had changes of its own."""
    root = RESULTS.parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown (not a git checkout)"
    return f"commit {rev}" + (" with uncommitted changes" if dirty else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="full", help="how long each measurement ran (for the header)")
    parser.add_argument("--seconds", type=float, default=0, help="how long the whole run took")
    parser.add_argument("--host", default=f"{os.cpu_count()} cores", help="the machine (lib.sh, host_line)")
    args = parser.parse_args()
    out = RESULTS / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmark report",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, mode `{args.mode}`, "
        f"{args.host}, {platform.system()} {platform.release()}, {commit()}."
        + (f" The whole run took {args.seconds:.0f} s." if args.seconds else ""),
        "Servers pinned to core 0, load generators to core 1. Closed-loop figures come from wrk "
        "(64 connections); fixed-rate ones from loadgen, which measures from each request's "
        "intended send time.",
        "",
    ]
    missing = []
    for bench, title in BENCHES:
        lines += [f"## {title}", ""]
        md = RESULTS / f"{bench}.md"
        rows = read_rows(bench)
        if not md.exists() or not rows:
            missing.append(bench)
            lines += [f"_Not run: no {md.name} or {bench}.csv in loadtests/results/._", ""]
            continue
        # The benchmark's own report, its headings moved one level down.
        for line in md.read_text().splitlines():
            lines.append("#" + line if line.startswith("#") else line)
        lines.append("")
        charts = [
            throughput_chart(bench, rows, out),
            latency_chart(bench, rows, "max", "latency distribution at maximum throughput", out),
            latency_chart(bench, rows, "fixed", "latency distribution at a fixed rate (open loop)", out),
        ]
        for chart in filter(None, charts):
            lines += [f"![{chart}]({chart})", ""]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    print(f"report: {out / 'REPORT.md'}")
    if missing:
        raise SystemExit(f"benchmarks without results: {', '.join(missing)}")


if __name__ == "__main__":
    main()
