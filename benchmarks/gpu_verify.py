"""The whole verification on a GPU beside the CPU path, in one run: the standard workload
(`portrait bench`'s ID photo and clip) at concurrency 1 and 64 on each path.

    python benchmarks/gpu_verify.py --models model_repository --id-image ID.jpg --video clip.mp4
    python benchmarks/gpu_verify.py ... --cpu   # smoke test: the GPU path's code on the CPU

GPU path (`gpu` rows): the clip decoded on NVDEC through DALI's live pool
(`portrait.media.dali_gpu`, overflow to PyAV as the service does) where DALI and NVDEC are
there, else by PyAV; the pixel work as the Triton-lang kernels (`TorchFrames`, model inputs
kept on the device); the models as PyTorch modules converted from the repository's ONNX
files (`onnx_torch.py`, FP16 but YuNet, as the Triton GPU configs; all FP32 with --fp32). Neither TensorRT nor Triton server can be
installed on the GPU machine this project is lent, so none is used; the header says what
was missing. CPU path (`in_process` rows): the service's default (embedded runtimes, OpenCV,
PyAV). Both run behind the service's cross-request batcher, one thread per client.

Prints `portrait bench`'s table (verifications/s, p50/p95/p99, CPU seconds, rows per model
call, decisions) and its per-stage means, then one verification's answer on each path side
by side, and a JSON line. Asserts nothing.

Needs, besides PyTorch with CUDA and Triton-lang: the project's dependencies (numpy<2,
OpenCV, PyAV, pydantic-settings, onnx, onnxruntime); `benchmarks/gpu_carry.sh` makes the
wheels and the parts to carry them to a machine without network.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnx_torch import OnnxModule  # noqa: E402
from portrait import bench  # noqa: E402
from portrait.frames import TorchFrames  # noqa: E402
from portrait.media import Decoder, VideoLimits, decode_image, decoder  # noqa: E402
from portrait.modelrepo import specs  # noqa: E402
from portrait.settings import Settings  # noqa: E402


class TorchModels:
    """Every model of the repository as a PyTorch module on one device: the GPU path's
    models where neither TensorRT nor ONNX Runtime's CUDA build is installed. Takes host
    arrays or device tensors; returns host arrays, as every backend does."""

    name = "torch"

    def __init__(self, repository: Path, device: torch.device, half: bool) -> None:
        """half: each model in the precision the GPU path gives it (FP16 unless its spec says
        `gpu_fp16=False`); else every model in FP32."""
        self.device = device
        self.dtypes = {spec.name: torch.float16 if half and spec.gpu_fp16 else torch.float32 for spec in specs.MODELS}
        self.modules = {name: OnnxModule(repository / name / "1" / "model.onnx").to(device, dtype).eval()
                        for name, dtype in self.dtypes.items()}

    def infer(self, model: str, batch) -> dict[str, np.ndarray]:
        module = self.modules[model]
        with torch.inference_mode():
            outputs = module(torch.as_tensor(batch).to(self.device, self.dtypes[model]))
        return {name: out.float().cpu().numpy() for name, out in zip(module.output_names, outputs)}

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self.modules.clear()


class CountingDecoder:
    """The service's GPU decoder (a live DALI pool, PyAV when every pipeline is busy), counting
    which path decoded each clip."""

    def __init__(self, pool_size: int) -> None:
        from portrait.media.dali_gpu import GpuVideoDecoder

        self.pool = GpuVideoDecoder(max_clips_in_flight=pool_size)
        self.paths: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def video(self, data: bytes, limits: VideoLimits, checkpoint: Callable[[], None], threads: int):
        from portrait.media.dali_gpu import decode_with_overflow

        decoded = decode_with_overflow(data, self.pool, limits, checkpoint, threads)
        with self.lock:
            self.paths[decoded.path if decoded.path == "gpu" else f"cpu ({decoded.reason})"] += 1
        return decoded.video


def missing() -> dict[str, str]:
    """What the full GPU path would use and this machine lacks, in words."""
    from portrait.media.dali_gpu import gpu_decode_unavailable

    report = {}
    if importlib.util.find_spec("tensorrt") is None:
        report["tensorrt"] = ("TensorRT is not installed (its libraries are not on the reachable package index): "
                              "the models run as PyTorch modules, not engines")
    decode = gpu_decode_unavailable()
    if decode is not None:
        report["nvdec"] = f"video decoded by PyAV on the CPU: {decode}"
    return report


def answer_summary(answer: dict) -> dict:
    live = answer["liveness"]
    return {"decision": answer["decision"], "reasons": answer["reasons"], "match": answer["match"]["score"],
            "passive": live["passive"]["score"], "continuity": live["continuity"]["score"],
            "actions": [(e["action"], round(e["start_s"], 2)) for e in live["active"]["observed"]],
            "frames_with_face": answer["video"]["frames_with_face"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    testdata = bench.default_testdata()
    parser.add_argument("--models", type=Path, default=Path("model_repository"))
    parser.add_argument("--id-image", type=Path, default=testdata / "images/compreface/004_A.jpg")
    parser.add_argument("--video", type=Path, default=testdata / "videos/replay_pair/real.mp4")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 64], help="concurrency levels")
    parser.add_argument("--requests", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--paths", nargs="+", default=["gpu", "cpu"], choices=["gpu", "cpu"])
    parser.add_argument("--fp32", action="store_true", help="every model in fp32 on the GPU (default: fp16 but YuNet)")
    parser.add_argument("--decode-pool", type=int, default=8, help="live DALI pipelines (clips decoded at once)")
    parser.add_argument("--cpu", action="store_true", help="smoke test: the GPU path on the CPU (PyTorch "
                        "references of the kernels, fp32); its figures mean nothing")
    args = parser.parse_args()
    for path in (args.models / "yunet" / "1" / "model.onnx", args.id_image, args.video):
        if not path.is_file():
            sys.exit(f"gpu_verify: {path} not found (build the repository with `portrait models build`, "
                     "pass --models, --id-image and --video)")
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU (torch.cuda.is_available() is False); "
                 "use --cpu for a smoke test")
    device = torch.device("cpu" if args.cpu else "cuda")
    card = "CPU smoke test (figures mean nothing)" if args.cpu else torch.cuda.get_device_name()
    workload = bench.Workload(args.id_image, args.video)
    id_bytes, video_bytes = workload.load()
    top = max(args.levels)
    # One model call at a time per model on the GPU (its own queue orders them); the batcher
    # holds rows for every client.
    gpu_settings = Settings(model_repository=args.models, workers=min(256, top), model_calls=1)
    cpu_settings = Settings(model_repository=args.models, workers=min(256, top))
    gaps = {} if args.cpu else missing()

    engines: dict[str, bench.InProcess] = {}
    decode_paths: collections.Counter[str] | None = None
    started = time.perf_counter()
    if "gpu" in args.paths:
        frames = TorchFrames(device.type, keep_on_device=True)
        if args.cpu or "nvdec" in gaps:
            decode = decoder("pyav")
        else:
            counting = CountingDecoder(args.decode_pool)
            decode, decode_paths = Decoder("gpu", decode_image, counting.video), counting.paths
        models = TorchModels(args.models, device, half=not (args.fp32 or args.cpu))
        engines["gpu"] = bench.InProcess(gpu_settings, models, frames, decode, mode="gpu")
    if "cpu" in args.paths:
        engines["cpu"] = bench.InProcess(cpu_settings)
    answers, rows = {}, []
    for name, engine in engines.items():
        try:
            answers[name] = answer_summary(engine.verify(id_bytes, video_bytes)[1])  # also the warm-up
            engine.verify(id_bytes, video_bytes)
            if decode_paths is not None:
                decode_paths.clear()
            rows += [engine.level(c, max(c, args.requests * c), id_bytes, video_bytes).summary() for c in args.levels]
        finally:
            engine.close()
    report = {"machine": {**bench.machine(), "gpu": card}, "workload": {"id_image": str(workload.id_image),
                                                                        "video": str(workload.video)},
              "runtime": f"gpu: torch {torch.__version__} {'fp32' if args.fp32 or args.cpu else 'fp16 but YuNet'}; "
                         f"cpu: {cpu_settings.runtime}",
              "inference_threads": cpu_settings.inference_threads, "model_calls": cpu_settings.concurrent_model_calls(),
              "workers": top, "rows": [{**r, "x_plain": None} for r in rows], "answers": answers,
              "gpu_decode_paths": dict(decode_paths or {}), "missing": gaps,
              "seconds": round(time.perf_counter() - started)}
    print(f"{card} | {os.cpu_count()} cores | {report['runtime']} | {report['seconds']} s")
    for name, why in gaps.items():
        print(f"missing {name}: {why}")
    if decode_paths:
        print("GPU path decodes: " + ", ".join(f"{k} {v}" for k, v in decode_paths.items()))
    print(bench.table(report))
    print("\none verification on each path:")
    for name, summary in answers.items():
        print(f"  {name}: {summary}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
