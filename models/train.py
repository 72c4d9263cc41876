#!/usr/bin/env python3
"""Train the bundled models, export them to ONNX and record how good they are.

Everything here is deterministic: the data ships inside scikit-learn (no download), the
split and every estimator take a fixed seed, and BLAS runs on one thread so that float
sums happen in the same order on every machine. Re-running this script on the same machine rewrites the same
`.onnx` files byte for byte. `--check` re-trains into a temporary folder and fails unless
every committed file is reproduced: byte for byte, or, where another CPU rounds float64
sums differently, with weights and outputs equal within float32 rounding (bounds below).

Outputs, per model version `models/<name>/<version>/`:
  model.onnx       tensor outputs `label` (int64) and `probabilities` (float32), no ZipMap
  metadata.json    algorithm, hyper-parameters, split, seed, held-out accuracy
  profile.json     the training data's reference profile, which the gateway's input drift is
                   measured against: per feature its decile bin edges and the training rows'
                   share in each bin, and the training labels' class shares
And `models/testdata/<name>-<version>.json`: held-out rows with the outputs Python's
onnxruntime gives for them, which the Rust tests compare against (tolerance 1e-5); and
`models/testdata/<dataset>-heldout.json`: every held-out row with its true label, which the
drift and feedback tests and the quality demonstration send.
"""

import os

# Must be set before numpy loads BLAS: one thread means one summation order.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import filecmp
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import skl2onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 20261122
TEST_SIZE = 0.25
# The ONNX opset is pinned so that a newer skl2onnx cannot silently change the graph.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# Rows per test-vector file: enough to cover both classes and several batch shapes.
TEST_VECTOR_ROWS = 24
# Reference profile bins per feature: deciles, the usual choice for the population stability
# index (fewer hide shifts in the tails, more make a window of a few hundred rows noisy).
PROFILE_BINS = 10


def profile(name, version, x_train, y_train, feature_names):
    """The training data's profile, computed on the float32 values the model is served.

    A value v falls in bin `searchsorted(edges, v, side="right")`: the number of edges <= v.
    The gateway bins live values with the same rule (`partition_point(|e| e <= v)`). Edges
    that coincide (a feature with many equal values, such as a pixel that is nearly always
    0) are kept once, so such a feature has fewer bins."""
    x32 = x_train.astype(np.float32)
    features = []
    for i in range(x32.shape[1]):
        col = x32[:, i]
        qs = np.quantile(col.astype(np.float64), np.arange(1, PROFILE_BINS) / PROFILE_BINS)
        edges = np.unique(qs.astype(np.float32))
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
        features.append(
            {
                "name": str(feature_names[i]),
                "edges": [float(e) for e in edges],
                "shares": [round(float(c) / len(col), 6) for c in counts],
            }
        )
    labels, counts = np.unique(y_train, return_counts=True)
    return {
        "model": name,
        "version": version,
        "rows": int(x32.shape[0]),
        "bins": PROFILE_BINS,
        "input": "input",
        "features": features,
        "classes": [int(c) for c in labels],
        "class_shares": [round(float(c) / len(y_train), 6) for c in counts],
    }


def datasets():
    cancer = load_breast_cancer()
    digits = load_digits()
    return {
        "breast-cancer": (cancer.data, cancer.target, "load_breast_cancer", list(cancer.feature_names)),
        "digits": (digits.data, digits.target, "load_digits", list(digits.feature_names)),
    }


# (model name, version, role, estimator factory, human description)
MODELS = [
    (
        "breast-cancer",
        1,
        "stable",
        lambda: make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(32, 16), alpha=1e-3, max_iter=600, random_state=SEED),
        ),
        "StandardScaler + MLP (32, 16), relu, adam, alpha=1e-3",
    ),
    (
        "breast-cancer",
        2,
        "canary",
        lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000)),
        "StandardScaler + logistic regression, C=0.5",
    ),
    (
        "breast-cancer",
        3,
        "shadow candidate",
        lambda: RandomForestClassifier(n_estimators=60, max_depth=6, random_state=SEED),
        "random forest, 60 trees, max_depth=6",
    ),
    (
        "digits",
        1,
        "stable",
        lambda: make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=600, random_state=SEED),
        ),
        "StandardScaler + MLP (64), relu, adam, alpha=1e-3",
    ),
    # A model whose inference costs more than the gateway's own path (some 30 µs a row under
    # onnxruntime, far more than the MLPs above; docs/inference-server.md): what a prediction
    # cache is for, and what `loadtests/bench_cache.sh` measures it on beside breast-cancer/1.
    (
        "digits",
        2,
        "candidate",
        lambda: GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=SEED),
        "gradient boosting, 100 rounds x 10 classes, max_depth=3",
    ),
]


def final_step(estimator):
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator


def export(estimator, n_features):
    # zipmap=False gives plain tensors (`label`, `probabilities`) instead of a list of maps,
    # which is what the Open Inference Protocol can carry.
    onx = to_onnx(
        estimator,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options={type(final_step(estimator)): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # skl2onnx names the graph and outputs from Python object ids in some versions; pin
    # everything that could vary between runs.
    onx.graph.name = "model"
    # skl2onnx lists the opset imports in an order that varies from one process to the
    # next (seen here: about one run in ten swapped "" and "ai.onnx.ml"), some twice; sort
    # them and list each once.
    imports = sorted({(o.domain, o.version) for o in onx.opset_import})
    del onx.opset_import[:]
    onx.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in imports)
    onx.producer_name = "models/train.py"
    onx.producer_version = f"skl2onnx {skl2onnx.__version__}, scikit-learn {sklearn.__version__}"
    outputs = [o.name for o in onx.graph.output]
    if outputs != ["label", "probabilities"]:
        raise SystemExit(f"unexpected ONNX outputs {outputs}; expected ['label', 'probabilities']")
    return onx


def train_all(out: Path):
    data = datasets()
    summary = []
    for name, version, role, factory, description in MODELS:
        x, y, loader, feature_names = data[name]
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
        )
        est = factory().fit(x_train, y_train)
        onx = export(est, x.shape[1])
        vdir = out / name / str(version)
        vdir.mkdir(parents=True, exist_ok=True)
        (vdir / "model.onnx").write_bytes(onx.SerializeToString())

        # Accuracy is measured on what will actually be served: the ONNX graph under
        # onnxruntime, not the scikit-learn object.
        sess = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
        x_test32 = x_test.astype(np.float32)
        label, proba = sess.run(None, {"input": x_test32})
        onnx_acc = float((label == y_test).mean())
        sk_acc = float(est.score(x_test, y_test))
        agree = float((label == est.predict(x_test)).mean())
        meta = {
            "name": name,
            "version": version,
            "role": role,
            "algorithm": description,
            "dataset": f"sklearn.datasets.{loader}() ({x.shape[0]} rows, {x.shape[1]} features, "
            f"{len(np.unique(y))} classes)",
            "split": f"train_test_split(test_size={TEST_SIZE}, random_state={SEED}, stratify=y)",
            "train_rows": int(x_train.shape[0]),
            "test_rows": int(x_test.shape[0]),
            "seed": SEED,
            "heldout_accuracy_onnx": round(onnx_acc, 4),
            "heldout_accuracy_sklearn": round(sk_acc, 4),
            "onnx_sklearn_label_agreement": round(agree, 4),
            "input": {"name": "input", "datatype": "FP32", "shape": [-1, int(x.shape[1])]},
            "outputs": ["label (INT64, [-1])", f"probabilities (FP32, [-1, {proba.shape[1]}])"],
            "versions": {
                "scikit-learn": sklearn.__version__,
                "skl2onnx": skl2onnx.__version__,
                "onnxruntime": ort.__version__,
                "numpy": np.__version__,
            },
        }
        (vdir / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        prof = profile(name, version, x_train, y_train, feature_names)
        (vdir / "profile.json").write_text(json.dumps(prof) + "\n")

        rows = x_test32[:TEST_VECTOR_ROWS]
        t_label, t_proba = sess.run(None, {"input": rows})
        vectors = {
            "model": name,
            "version": version,
            "input": {"name": "input", "shape": list(rows.shape), "data": rows.tolist()},
            "expected": {"label": t_label.tolist(), "probabilities": t_proba.tolist()},
            "tolerance": 1e-5,
        }
        tdir = out / "testdata"
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / f"{name}-{version}.json").write_text(json.dumps(vectors) + "\n")
        summary.append(meta)
        print(f"{name}/{version} ({role}): {description}: held-out accuracy {onnx_acc:.4f}")

    # Every held-out row with its true label, per dataset (drift and feedback tests, demo).
    for name, (x, y, _, feature_names) in data.items():
        _, x_test, _, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
        heldout = {
            "dataset": name,
            "features": [str(f) for f in feature_names],
            "rows": x_test.astype(np.float32).tolist(),
            "labels": [int(v) for v in y_test],
        }
        (out / "testdata" / f"{name}-heldout.json").write_text(json.dumps(heldout) + "\n")

    # The example request used in README.md and by curl: one held-out breast-cancer row.
    x, y, _, _ = data["breast-cancer"]
    _, x_test, _, _ = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    row = x_test[0].astype(np.float32)
    example = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": row.tolist()}]}
    (out / "example.json").write_text(json.dumps(example) + "\n")
    write_table(out, summary)


def write_table(out: Path, summary):
    lines = [
        "| model | version | role | algorithm | held-out accuracy (ONNX) | test rows |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in summary:
        lines.append(
            f"| {m['name']} | {m['version']} | {m['role']} | {m['algorithm']} | "
            f"{m['heldout_accuracy_onnx']:.4f} | {m['test_rows']} |"
        )
    (out / "ACCURACY.md").write_text(
        "# Held-out accuracy of the bundled models\n\n"
        "Generated by `models/train.py`; do not edit by hand. Split: "
        f"`train_test_split(test_size={TEST_SIZE}, random_state={SEED}, stratify=y)`.\n\n"
        + "\n".join(lines)
        + "\n"
    )


# How far a re-trained file may differ from the committed one and still count as the same
# model. Training here is well conditioned (a 1e-15 relative nudge to the inputs moves the
# weights by about 1e-14), but another CPU's BLAS kernels or libm may round float64 sums
# differently; after the cast to float32 that can flip the last bit of a weight. Such a
# flip is far below these bounds; a real change in data, split or hyper-parameters is not.
WEIGHT_RTOL = 1e-5
OUTPUT_ATOL = 1e-5


def numeric_difference(name: str, ours: Path, theirs: Path):
    """Compare two versions of a generated file that are not byte-identical.

    Returns (problem, detail): problem is False when they differ only by float rounding."""
    if name.endswith("model.onnx"):
        return onnx_difference(ours, theirs)
    if name.endswith("-heldout.json"):
        return True, "held-out rows or labels differ"
    if name.startswith("testdata/"):
        a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
        if a["input"] != b["input"] or a["expected"]["label"] != b["expected"]["label"]:
            return True, "inputs or labels differ"
        dp = float(np.abs(np.array(a["expected"]["probabilities"]) - np.array(b["expected"]["probabilities"])).max())
        return dp > OUTPUT_ATOL, f"max |Δp| {dp:.1e} (bound {OUTPUT_ATOL:.0e})"
    if name.endswith("profile.json"):
        a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
        if a["classes"] != b["classes"] or a["class_shares"] != b["class_shares"]:
            return True, "class shares differ"
        # Decile edges are training values: a float32 rounding flip may move one by an ulp.
        for fa, fb in zip(a["features"], b["features"]):
            if len(fa["edges"]) != len(fb["edges"]) or not np.allclose(fa["edges"], fb["edges"], rtol=1e-6, atol=0):
                return True, f"edges of {fa['name']} differ"
            if np.abs(np.array(fa["shares"]) - np.array(fb["shares"])).max() > 2.0 / a["rows"]:
                return True, f"bin shares of {fa['name']} differ by more than two rows"
        return False, "edges within float32 rounding"
    # metadata.json, ACCURACY.md and example.json hold rounded figures and inputs only:
    # any change there is a real change.
    return True, "content differs"


def onnx_difference(ours: Path, theirs: Path):
    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(ours)), onnx.load(str(theirs))
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    if wa.keys() != wb.keys() or any(wa[k].shape != wb[k].shape or wa[k].dtype != wb[k].dtype for k in wa):
        return True, "initializers differ in name, shape or type"
    for g in (a.graph, b.graph):
        del g.initializer[:]
    if a.SerializeToString() != b.SerializeToString():
        return True, "graphs differ"
    worst = 0.0
    for k in wa:
        if wa[k].dtype.kind != "f":
            if not np.array_equal(wa[k], wb[k]):
                return True, f"initializer {k} differs"
            continue
        scale = max(float(np.abs(wa[k]).max()), 1e-30)
        worst = max(worst, float(np.abs(wa[k] - wb[k]).max()) / scale)
    if worst > WEIGHT_RTOL:
        return True, f"weights differ by {worst:.1e} of their scale (bound {WEIGHT_RTOL:.0e})"
    return False, f"max weight change {worst:.1e} of scale (bound {WEIGHT_RTOL:.0e}); outputs checked in testdata"


GENERATED = ["ACCURACY.md", "example.json"]


def generated_files(root: Path):
    files = list(GENERATED) + [f"testdata/{name}-heldout.json" for name in ("breast-cancer", "digits")]
    for name, version, *_ in MODELS:
        files += [
            f"{name}/{version}/model.onnx",
            f"{name}/{version}/metadata.json",
            f"{name}/{version}/profile.json",
            f"testdata/{name}-{version}.json",
        ]
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="model repository to write")
    ap.add_argument("--check", action="store_true", help="re-train into a temp folder and compare with --out")
    args = ap.parse_args()
    if not args.check:
        train_all(args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        train_all(Path(tmp))
        exact, close, differ = [], [], []
        for f in generated_files(args.out):
            ours, theirs = args.out / f, Path(tmp) / f
            if not ours.exists():
                differ.append(f"{f}: not committed")
            elif filecmp.cmp(ours, theirs, shallow=False):
                exact.append(f)
            else:
                problem, detail = numeric_difference(f, ours, theirs)
                (differ if problem else close).append(f"{f}: {detail}")
        print(f"re-training reproduces {len(exact)} of {len(exact) + len(close) + len(differ)} files byte for byte")
        for line in close:
            print(f"  equal within float rounding: {line}")
        if differ:
            print("re-training does not reproduce:\n  " + "\n  ".join(differ), file=sys.stderr)
            sys.exit(1)
        print("re-training reproduces every committed model")

if __name__ == "__main__":
    main()
