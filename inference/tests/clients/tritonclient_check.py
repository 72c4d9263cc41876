#!/usr/bin/env python3
"""A standard client, unchanged, against our server: `tritonclient.http`, with its default
binary tensor extension and with plain JSON, checked against Python onnxruntime's outputs.

    python tritonclient_check.py 127.0.0.1:8000 [--model breast-cancer --version 1]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--model", default="breast-cancer")
    ap.add_argument("--version", default="1")
    args = ap.parse_args()

    client = httpclient.InferenceServerClient(args.url)
    assert client.is_server_live(), "server live"
    assert client.is_server_ready(), "server ready"
    assert client.is_model_ready(args.model, args.version), "model ready"
    meta = client.get_model_metadata(args.model, args.version)
    assert meta["inputs"][0]["name"] == "input", meta
    config = client.get_model_config(args.model, args.version)
    assert config["max_batch_size"] > 0, config

    vectors = json.loads((ROOT / f"models/testdata/{args.model}-{args.version}.json").read_text())
    x = np.array(vectors["input"]["data"], dtype=np.float32)
    want_label = np.array(vectors["expected"]["label"])
    want_proba = np.array(vectors["expected"]["probabilities"], dtype=np.float32)
    tol = vectors["tolerance"]

    def check(result, how):
        label = result.as_numpy("label")
        proba = result.as_numpy("probabilities")
        assert (label == want_label).all(), f"{how}: labels differ"
        err = float(np.abs(proba - want_proba).max())
        assert err <= tol, f"{how}: probabilities differ by {err}"
        print(f"ok: {how} (max |Δp| = {err:.2e})")

    for binary in (True, False):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        check(client.infer(args.model, [inp], model_version=args.version, outputs=outs),
              f"infer with binary_data={binary}")

    # No outputs named: the client asks for all of them in binary (its default).
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    check(client.infer(args.model, [inp], model_version=args.version, request_id="compat-1"),
          "infer with the client's defaults")

    # Errors reach the client as exceptions carrying the server's message.
    try:
        client.infer("no-such-model", [inp])
        sys.exit("an unknown model must fail")
    except InferenceServerException as e:
        assert "unknown model" in str(e), e
        print(f"ok: unknown model -> {e}")
    bad = httpclient.InferInput("input", [1, 29], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 29), dtype=np.float32))
    try:
        client.infer(args.model, [bad], model_version=args.version)
        sys.exit("a wrong shape must fail")
    except InferenceServerException as e:
        assert "expects [-1, 30]" in str(e), e
        print(f"ok: wrong shape -> {e}")


if __name__ == "__main__":
    main()
