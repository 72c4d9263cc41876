#!/usr/bin/env python3
"""A standard gRPC client, unchanged, against our servers: `tritonclient.grpc`, checked
against Python onnxruntime's outputs (the test vectors `models/train.py` wrote).

    python tritonclient_grpc_check.py 127.0.0.1:8001                  # inference-server
    python tritonclient_grpc_check.py localhost:8443 --ca certs/ca.crt --key KEY  # gateway
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--model", default="breast-cancer")
    ap.add_argument("--version", default="1")
    ap.add_argument("--ca", help="CA certificate: TLS (the gateway)")
    ap.add_argument("--key", help="API key, sent as x-api-key metadata (the gateway)")
    args = ap.parse_args()

    tls = {}
    if args.ca:
        tls = {"ssl": True, "root_certificates": args.ca}
    headers = {"x-api-key": args.key} if args.key else None
    client = grpcclient.InferenceServerClient(args.url, **tls)
    where = "through the gateway" if args.key else "inference-server"
    assert client.is_server_live(headers=headers), "server live"
    assert client.is_server_ready(headers=headers), "server ready"
    assert client.is_model_ready(args.model, args.version, headers=headers), "model ready"
    meta = client.get_model_metadata(args.model, args.version, headers=headers)
    assert meta.inputs[0].name == "input", meta
    assert list(meta.inputs[0].shape) == [-1, 30] or args.model != "breast-cancer", meta

    vectors = json.loads((ROOT / f"models/testdata/{args.model}-{args.version}.json").read_text())
    x = np.array(vectors["input"]["data"], dtype=np.float32)
    want_label = np.array(vectors["expected"]["label"])
    want_proba = np.array(vectors["expected"]["probabilities"], dtype=np.float32)
    tol = vectors["tolerance"]

    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outs = [grpcclient.InferRequestedOutput(n) for n in ("label", "probabilities")]
    version = "" if args.key else args.version  # the gateway's split picks the version
    result = client.infer(args.model, [inp], model_version=version, outputs=outs,
                          request_id="grpc-compat-1", headers=headers)
    label = result.as_numpy("label")
    proba = result.as_numpy("probabilities")
    assert (label == want_label).all(), "labels differ"
    err = float(np.abs(proba - want_proba).max())
    assert err <= tol, f"probabilities differ by {err}"
    response = result.get_response()
    assert response.id == "grpc-compat-1", response.id
    print(f"ok: tritonclient.grpc infer {where} (max |Δp| = {err:.2e}, version {response.model_version})")

    # Errors reach the client as exceptions carrying the server's status and message.
    try:
        client.infer("no-such-model", [inp], headers=headers)
        sys.exit("an unknown model must fail")
    except InferenceServerException as e:
        assert "NOT_FOUND" in str(e.status()) and "unknown model" in str(e), e
        print(f"ok: unknown model -> {e.status()} {e.message()}")
    bad = grpcclient.InferInput("input", [1, 29], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 29), dtype=np.float32))
    try:
        client.infer(args.model, [bad], model_version=version, headers=headers)
        sys.exit("a wrong shape must fail")
    except InferenceServerException as e:
        assert "INVALID_ARGUMENT" in str(e.status()) and "expects [-1, 30]" in str(e), e
        print(f"ok: wrong shape -> {e.status()} {e.message()}")
    if args.key:
        try:
            client.infer(args.model, [inp], headers={"x-api-key": "not-a-key"})
            sys.exit("an unknown key must fail")
        except InferenceServerException as e:
            assert "UNAUTHENTICATED" in str(e.status()) and "invalid API key" in str(e), e
            print(f"ok: unknown key -> {e.status()} {e.message()}")


if __name__ == "__main__":
    main()
