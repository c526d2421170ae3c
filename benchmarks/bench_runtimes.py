"""ONNX Runtime against OpenVINO on each model of the repository, in the same run: the same
fp32 files, the same random input, one batch size and thread count. Prints ms per call,
the ratio and the largest output difference; this is where `portrait.backends.runtimes`'
default table comes from.

    python benchmarks/bench_runtimes.py [--batch 8] [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from portrait.backends.onnxruntime import OnnxRuntimeBackend
from portrait.backends.openvino import OpenVinoBackend
from portrait.modelrepo.specs import BY_NAME
from portrait.settings import Settings

# The detector's input side as the pipeline uses it (video frames).
SHAPES = {"yunet": (3, 320, 320)}


def _time(runtimes: dict, model: str, batch: np.ndarray, repeats: int) -> dict[str, float]:
    """Median ms per call of each runtime, calls interleaved so that a change of load on a
    shared machine falls on both alike."""
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(repeats):
        for name, backend in runtimes.items():
            start = time.perf_counter()
            backend.infer(model, batch)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) * 1000 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=list(BY_NAME))
    args = parser.parse_args()
    repository = Settings().model_repository
    runtimes = {"onnxruntime": OnnxRuntimeBackend(repository, args.models, threads=args.threads),
                "openvino": OpenVinoBackend(repository, args.models, threads=args.threads)}
    rng = np.random.default_rng(0)
    report = {}
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'model':<17}{'onnxruntime ms':>15}{'openvino ms':>13}{'speed-up':>10}{'max |diff|':>12}")
    for model in args.models:
        spec = BY_NAME[model]
        shape = SHAPES.get(model, spec.input.dims)
        batch = rng.uniform(0, 1 if model in ("facemesh", "iris_landmark") else 255,
                            (args.batch, *shape)).astype(np.float32)
        outputs = {name: r.infer(model, batch) for name, r in runtimes.items()}
        diff = max(float(np.abs(outputs["onnxruntime"][k] - outputs["openvino"][k]).max()) for k in outputs["onnxruntime"])
        ms = _time(runtimes, model, batch, args.repeats)
        report[model] = {**{k: round(v, 2) for k, v in ms.items()},
                         "speedup": round(ms["onnxruntime"] / ms["openvino"], 2), "max_abs_diff": diff}
        print(f"{model:<17}{ms['onnxruntime']:>15.2f}{ms['openvino']:>13.2f}"
              f"{report[model]['speedup']:>9.2f}x{diff:>12.2e}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
