"""ONNX Runtime against OpenVINO on each model of the repository, in the same run: the same
fp32 files, the same random input, one batch size and thread count. Prints ms per call,
the ratio and the largest output difference; this is where `portrait.backends.runtimes`'
default table comes from.

`--int8` adds OpenVINO on each model quantized by NNCF (post-training, calibrated on the
random batch: enough to time it, not to judge its accuracy; the `quantize` extra). An int8
model would have to be faster before its accuracy on the dev data is worth measuring; the
copies the service runs are calibrated on real inputs (`portrait.modelrepo.int8`).

    python benchmarks/bench_runtimes.py [--batch 8] [--threads 1] [--repeats 20] [--int8]
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

# The detector's input as the pipeline uses it on a 3:2 landscape clip.
SHAPES = {"yunet": (3, 224, 320)}


class _Int8:
    """OpenVINO on NNCF-quantized copies of the repository's models, behind the backend's
    `infer` so that it is timed like the others."""

    def __init__(self, repository, models: list[str], batches: dict[str, np.ndarray], threads: int) -> None:
        import nncf
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        self.requests = {}
        for model in models:
            source = core.read_model(str(repository / model / "1" / "model.onnx"))
            rows = [batches[model][i : i + 1] for i in range(len(batches[model]))]
            quantized = nncf.quantize(source, nncf.Dataset(rows), subset_size=len(rows))
            self.requests[model] = core.compile_model(quantized, "CPU", config).create_infer_request()

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        request = self.requests[model]
        request.infer({0: batch})
        return {str(i): request.get_output_tensor(i).data for i in range(len(request.model_outputs))}


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
    parser.add_argument("--int8", action="store_true", help="also time OpenVINO on NNCF int8 copies (needs nncf)")
    args = parser.parse_args()
    repository = Settings().model_repository
    rng = np.random.default_rng(0)
    batches = {model: rng.uniform(0, 1 if model in ("facemesh", "iris_landmark") else 255,
                                  (args.batch, *SHAPES.get(model, BY_NAME[model].input.dims))).astype(np.float32)
               for model in args.models}
    runtimes = {"onnxruntime": OnnxRuntimeBackend(repository, args.models, threads=args.threads),
                "openvino": OpenVinoBackend(repository, args.models, threads=args.threads)}
    report = {}
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.repeats}")
    int8 = _Int8(repository, args.models, batches, args.threads) if args.int8 else None
    print(f"{'model':<17}{'onnxruntime ms':>15}{'openvino ms':>13}{'speed-up':>10}{'max |diff|':>12}"
          + (f"{'openvino int8 ms':>18}{'int8 speed-up':>15}" if int8 else ""))
    for model in args.models:
        batch = batches[model]
        outputs = {name: r.infer(model, batch) for name, r in runtimes.items()}
        diff = max(float(np.abs(outputs["onnxruntime"][k] - outputs["openvino"][k]).max()) for k in outputs["onnxruntime"])
        ms = _time(runtimes, model, batch, args.repeats)
        report[model] = {**{k: round(v, 2) for k, v in ms.items()},
                         "speedup": round(ms["onnxruntime"] / ms["openvino"], 2), "max_abs_diff": diff}
        line = f"{model:<17}{ms['onnxruntime']:>15.2f}{ms['openvino']:>13.2f}{report[model]['speedup']:>9.2f}x{diff:>12.2e}"
        if int8 is not None:
            quantized = _time({"openvino_int8": int8}, model, batch, args.repeats)["openvino_int8"]
            report[model].update(openvino_int8=round(quantized, 2), int8_speedup=round(ms["openvino"] / quantized, 2))
            line += f"{quantized:>18.2f}{report[model]['int8_speedup']:>14.2f}x"
        print(line)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
