"""The peer most ML teams start with: FastAPI + uvicorn + onnxruntime, doing the same job as
`inference-server` for one model (Open Inference Protocol JSON in, JSON out).

Tuned to be a fair peer: an `async def` endpoint (no thread-pool hop), uvicorn[standard]
(uvloop + httptools), one worker, onnxruntime with one intra-op thread, the body parsed with
the stdlib json module straight from bytes (cheaper than a pydantic model), no batching —
which is what such a server does unless someone writes a batcher.

`POST /noop` does nothing with the same stack (it reads the body and answers `{}`): measured in
the same run, it shows what FastAPI + uvicorn cost on their own here, so a reader can judge
that the peer's figure is the framework's and not a slow setup (loadtests/bench_inference.sh).

    python fastapi_server.py --model ../../models/breast-cancer/1/model.onnx --port 8001
"""

import argparse
import json

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
NAMES = {np.dtype(v).name: k for k, v in DTYPES.items()}


def build_app(model_path: str, model_name: str) -> FastAPI:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    output_names = [o.name for o in sess.get_outputs()]
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.post("/noop")
    async def noop(request: Request):
        await request.body()
        return Response(b"{}", media_type="application/json")

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: Request, version: str = "1"):
        if model != model_name:
            raise HTTPException(404, f"unknown model {model!r}")
        try:
            body = json.loads(await request.body())
            inp = body["inputs"][0]
            x = np.asarray(inp["data"], dtype=DTYPES[inp["datatype"]]).reshape(inp["shape"])
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise HTTPException(400, f"bad request: {e}")
        outs = sess.run(output_names, {input_name: x})
        result = {
            "model_name": model,
            "model_version": version,
            "id": body.get("id", ""),
            "outputs": [
                {"name": n, "datatype": NAMES[o.dtype.name], "shape": list(o.shape), "data": o.ravel().tolist()}
                for n, o in zip(output_names, outs)
            ],
        }
        return Response(json.dumps(result), media_type="application/json")

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", default="breast-cancer")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    uvicorn.run(build_app(args.model, args.name), host="127.0.0.1", port=args.port, workers=1,
                loop="uvloop", http="httptools", log_level="warning", access_log=False)
