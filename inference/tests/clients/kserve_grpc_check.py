#!/usr/bin/env python3
"""KServe's own gRPC client (`kserve.InferenceGRPCClient`), unchanged, against our servers,
checked against Python onnxruntime's outputs (the test vectors `models/train.py` wrote).

    python kserve_grpc_check.py 127.0.0.1:8001                                  # inference-server
    python kserve_grpc_check.py localhost:8443 --ca certs/ca.crt --key KEY      # the gateway
"""

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

ROOT = Path(__file__).resolve().parents[3]


# The client logs every failed call with its traceback; the refusals below are expected.
logging.getLogger("kserve").setLevel(logging.CRITICAL)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--model", default="breast-cancer")
    ap.add_argument("--version", default="1")
    ap.add_argument("--ca", help="CA certificate: TLS (the gateway)")
    ap.add_argument("--key", help="API key, sent as x-api-key metadata (the gateway)")
    args = ap.parse_args()

    tls = {"use_ssl": True, "root_certificates": args.ca} if args.ca else {}
    headers = (("x-api-key", args.key),) if args.key else None
    where = "through the gateway" if args.key else "inference-server"
    async with InferenceGRPCClient(args.url, **tls) as client:
        assert await client.is_server_live(headers=headers), "server live"
        assert await client.is_server_ready(headers=headers), "server ready"
        assert await client.is_model_ready(args.model, headers=headers), "model ready"

        vectors = json.loads((ROOT / f"models/testdata/{args.model}-{args.version}.json").read_text())
        x = np.array(vectors["input"]["data"], dtype=np.float32)
        want_label = np.array(vectors["expected"]["label"])
        want_proba = np.array(vectors["expected"]["probabilities"], dtype=np.float32)
        tol = vectors["tolerance"]

        inp = InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        version = None if args.key else args.version  # the gateway's split picks the version
        request = InferRequest(args.model, [inp], request_id="kserve-compat-1", model_version=version)
        response = await client.infer(request, headers=headers)
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        assert (outputs["label"] == want_label).all(), "labels differ"
        err = float(np.abs(outputs["probabilities"] - want_proba).max())
        assert err <= tol, f"probabilities differ by {err}"
        assert response.id == "kserve-compat-1", response.id
        print(f"ok: kserve.InferenceGRPCClient infer {where} (max |Δp| = {err:.2e})")

        try:
            await client.infer(InferRequest("no-such-model", [inp]), headers=headers)
            sys.exit("an unknown model must fail")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND and "unknown model" in e.details(), e
            print(f"ok: unknown model -> {e.code()} {e.details()}")


if __name__ == "__main__":
    asyncio.run(main())
