#!/usr/bin/env python3
"""The client side of scripts/quality_demo.sh: labelled traffic with a drift episode.

Standard library only: TLS to the gateway with its development CA, one keep-alive
connection, feedback after each answer."""

import argparse
import http.client
import json
import ssl
import subprocess
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# quality.drift.threshold's default, which the demo's config keeps.
THRESHOLD = 0.25


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--https", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--per-phase", type=int, default=700)
    a = ap.parse_args()
    held = json.loads((ROOT / "models/testdata/breast-cancer-heldout.json").read_text())
    rows, labels = held["rows"], held["labels"]
    ctx = ssl.create_default_context(cafile=a.ca)
    host, port = a.https.rsplit(":", 1)
    conn = http.client.HTTPSConnection("localhost", int(port), context=ctx)
    headers = {"x-api-key": a.key, "content-type": "application/json"}

    def post(path, body):
        conn.request("POST", path, json.dumps(body), headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), json.loads(r.read() or b"{}")

    def quality():
        c = http.client.HTTPConnection(a.admin)
        c.request("GET", "/admin/quality")
        return json.loads(c.getresponse().read())["routes"].get("breast-cancer", {})

    def status_line(phase, sent):
        q = quality()
        drift = q.get("drift", {})
        psi = {v: d.get("input_psi") for v, d in drift.items()}
        top = {v: (d.get("features") or [{}])[0].get("name") for v, d in drift.items()}
        acc = {t["predicted_by"]: t["accuracy"] for t in q.get("accuracy", [])}
        fmt = lambda x: "-" if x is None else f"{x:.3f}"
        print(
            f"{phase:<22} {sent:>5} requests | input drift PSI stable {fmt(psi.get('stable'))}"
            f" canary {fmt(psi.get('canary'))} (top feature: {top.get('stable') or '-'})"
            f" | accuracy stable {fmt(acc.get('stable'))} canary {fmt(acc.get('canary'))}",
            flush=True,
        )

    phases = [("in-distribution", 1.0), ("drift: features x1.3", 1.3), ("back to normal", 1.0)]
    sent, joined, detected = 0, 0, None
    calm = []  # the stable window's PSI read during the in-distribution phase
    for name, scale in phases:
        for i in range(a.per_phase):
            j = (sent + i) % len(rows)
            row = [x * scale for x in rows[j]]
            body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row}]}
            status, h, _ = post("/v2/models/breast-cancer/infer", body)
            if status != 200:
                raise SystemExit(f"inference answered {status}")
            fb = {"request_id": h["x-request-id"], "labels": [labels[j]]}
            status, _, answer = post("/v2/models/breast-cancer/feedback", fb)
            joined += answer.get("joined", 0)
            if (i + 1) % 100 == 0:
                time.sleep(1.1)  # the drift figures are computed every second here
                status_line(name, i + 1)
                psi = quality().get("drift", {}).get("stable", {}).get("input_psi")
                if scale != 1.0 and detected is None and psi is not None and psi > THRESHOLD:
                    detected = i + 1
                if name == "in-distribution" and psi is not None:
                    calm.append(psi)
        sent += a.per_phase
    time.sleep(1.5)
    print(f"\n{sent} predictions, {joined} labels joined.")
    if calm:
        over = sum(p > THRESHOLD for p in calm)
        print(textwrap.fill(
            f"In distribution, the stable window's PSI read {min(calm):.3f} to {max(calm):.3f}"
            f" ({over} of {len(calm)} readings over the threshold, {THRESHOLD}): its 143 held-out rows"
            " differ by chance from its 426 training rows, and this demo's windows (500 rows to move"
            " quickly, read from 100) are noisier than the default's 1000 (loadtests/bench_quality.sh"
            " measures the noise; docs/quality.md).", 95))
    if detected:
        print(f"The drift episode was over the threshold ({THRESHOLD}) within {detected} requests of it starting.")
    else:
        print(f"The drift episode did not cross the threshold ({THRESHOLD}) in this run.")
    report = subprocess.run(
        [a.gateway, "report", "--quality", "--admin", a.admin], capture_output=True, text=True, check=True
    )
    print("\n" + report.stdout)
    print(
        "Where to look:\n"
        f"  http://{a.admin}/admin/shadow/report.html   the report page: verdict, accuracy per minute, drift per feature\n"
        f"  http://{a.admin}/admin/quality              the same as JSON\n"
        f"  gateway report --quality --admin {a.admin}   the same in a terminal\n"
        f"  http://{a.admin}/metrics                    gateway_input_drift_psi, gateway_model_accuracy, gateway_feedback_labels_total\n"
        "  docs/quality.md                                what each figure means"
    )


if __name__ == "__main__":
    main()
