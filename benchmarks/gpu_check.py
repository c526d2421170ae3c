"""One GPU check, self-contained: kernels against their references, kernel against reference
speed, and FP16 throughput of every model, printed as one table naming the card.

    python benchmarks/gpu_check.py --models model_repository        # on a CUDA machine
    python benchmarks/gpu_check.py --models model_repository --cpu  # smoke test, no GPU

Needs only PyTorch, Triton, onnx, onnxruntime and numpy (plus PyAV, OpenCV and DALI for the
optional video rows): no TensorRT, Triton server or network. The project need not be
installed (the `server/` folder beside this one is put on the path). The models come from
a repository built beforehand with `portrait models build`. They run as PyTorch modules made
by `onnx_torch.py` beside this script; each is checked against ONNX Runtime on the CPU.

Model rows time CUDA-graph replays (what a serving loop with fixed batch shapes would do)
beside plain eager calls; neither is TensorRT, so these are floors for the GPU target.

The last rows, optional, time video decode on NVDEC (`portrait.media.dali_gpu`, DALI's mixed
decoder, pipelines kept alive) against PyAV on the CPU, on a synthetic H.264 clip (HEVC when
this PyAV lacks an H.264 encoder) made in memory, since the GPU machine may have neither
network nor test data. They need DALI with CUDA and the driver's NVDEC library, and are one
row saying why when those are missing.

Benchmarks are not tests: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnx_torch import OnnxModule  # noqa: E402
from portrait import ort  # noqa: E402
from portrait.modelrepo import specs  # noqa: E402

DETECTOR_SIZE = 320  # the video detector's letterbox (PipelineConfig.video_detector_size)


def model_input(spec: specs.ModelSpec, batch: int, detector_size: int, seed: int = 0) -> np.ndarray:
    """A random input in the model's value range (0..1 for the TFLite models, else 0..255)."""
    dims = tuple(detector_size if d == -1 else d for d in spec.input.dims)
    scale = 1.0 if spec.conversion is specs.Conversion.TFLITE else 255.0
    return np.random.default_rng(seed).random((batch, *dims), dtype=np.float32) * scale


def max_differences(outputs: tuple[torch.Tensor, ...], reference: list[np.ndarray]) -> tuple[float, float]:
    """(max abs diff, max abs diff / max |reference|) over all outputs."""
    absolute = relative = 0.0
    for out, ref in zip(outputs, reference):
        diff = float(np.abs(out.float().cpu().numpy().reshape(ref.shape) - ref).max())
        absolute = max(absolute, diff)
        relative = max(relative, diff / max(float(np.abs(ref).max()), 1e-12))
    return absolute, relative


# --- timing and the table ----------------------------------------------------------------

@dataclass
class Row:
    check: str
    batch: int
    diff: str = "-"
    relative: str = "-"
    ms: float | None = None
    baseline_ms: float | None = None
    note: str = ""


def median_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn`, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _graphed(fn: Callable[[], Any]) -> Callable[[], None]:
    """Capture `fn` (fixed input tensors) in a CUDA graph and return its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the checks -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Sizes and repeats: full on a GPU, tiny for the CPU smoke test (interpreted kernels)."""

    device: torch.device
    frames: int
    frame_long_side: int
    letterbox: int
    crops: int
    crop_size: int
    batches: tuple[int, ...]
    repeats: int
    half: bool


def _failed(row: Row, error: Exception) -> Row:
    """One failing row (a kernel or graph capture the card refuses) must not cost the rest
    of a run on a borrowed machine: its error goes into the table instead."""
    row.note = f"FAILED: {type(error).__name__}: {str(error)[:80]}"
    return row


def _compare(plan: Plan, row: Row, kernel: Callable[[], torch.Tensor], reference: Callable[[], torch.Tensor],
             unit: str) -> Row:
    try:
        row.diff = f"{(kernel().float() - reference().float()).abs().max().item():.2g}{unit}"
        row.ms = median_ms(kernel, plan.device, plan.repeats)
        row.baseline_ms = median_ms(reference, plan.device, plan.repeats)
    except Exception as error:  # noqa: BLE001
        return _failed(row, error)
    return row


def kernel_rows(plan: Plan) -> list[Row]:
    from portrait.kernels import pack_frames
    from portrait.kernels.letterbox import letterbox_normalise, letterbox_reference
    from portrait.kernels.warp import warp_affine, warp_affine_reference

    generator = torch.Generator().manual_seed(0)
    long, short = plan.frame_long_side, plan.frame_long_side * 9 // 16
    shapes = [(short, long) if i % 2 else (long, short) for i in range(plan.frames)]  # landscape and portrait
    frames = pack_frames([torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator).to(plan.device)
                          for h, w in shapes])
    _log("kernel: letterbox")
    rows = [_compare(plan, Row(f"letterbox {short}x{long} mixed -> {plan.letterbox}", plan.frames,
                               note="baseline: the PyTorch reference, frame by frame"),
                     lambda: letterbox_normalise(frames, plan.letterbox)[0],
                     lambda: letterbox_reference(frames, plan.letterbox)[0], "")]

    # Similarity crops (as alignment makes) centred on random points of each crop's frame.
    rng = np.random.default_rng(0)
    index = rng.integers(0, plan.frames, plan.crops)
    angle = rng.uniform(-0.5, 0.5, plan.crops)
    scale = rng.uniform(0.1, 0.5, plan.crops) * plan.crop_size / 112
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    linear = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)
    centres = rng.random((plan.crops, 2)) * np.array([shapes[i][::-1] for i in index])  # x, y
    translation = plan.crop_size / 2 - np.einsum("kij,kj->ki", linear, centres)
    matrices = torch.from_numpy(np.concatenate([linear, translation[:, :, None]], 2).astype(np.float32))
    index_t, matrices_t = torch.from_numpy(index).to(plan.device), matrices.to(plan.device)
    _log("kernel: warp")
    rows.append(_compare(plan, Row(f"warp -> {plan.crop_size}x{plan.crop_size} uint8", plan.crops,
                                   note="baseline: the PyTorch reference, crop by crop"),
                         lambda: warp_affine(frames, index_t, matrices_t, plan.crop_size),
                         lambda: warp_affine_reference(frames, index_t, matrices_t, plan.crop_size), " lvl"))
    return rows


def model_rows(plan: Plan, repository: Path) -> list[Row]:
    rows = []
    for spec in specs.MODELS:
        dtype = torch.float16 if plan.half and spec.gpu_fp16 else torch.float32  # as the GPU path runs it
        path = repository / spec.name / "1" / "model.onnx"
        module = OnnxModule(path).to(plan.device, dtype).eval()
        session = ort.session(path)
        size = DETECTOR_SIZE if spec.input.dims[1] == -1 else spec.input.dims[1]
        for batch in (b for b in plan.batches if b <= spec.max_batch_size):
            _log(f"model: {spec.name} batch {batch}")
            x = model_input(spec, batch, DETECTOR_SIZE)
            row = Row(f"{spec.name} {size}x{size} {'fp16' if dtype == torch.float16 else 'fp32'}", batch)
            try:
                with torch.inference_mode():
                    forward = partial(module, torch.from_numpy(x).to(plan.device, dtype))
                    if batch <= 8:
                        reference = session.run(None, {spec.input.name: x})
                        row.diff, row.relative = (f"{v:.2g}" for v in max_differences(forward(), reference))
                    row.baseline_ms = median_ms(forward, plan.device, plan.repeats)
                    if plan.device.type == "cuda":
                        row.ms = median_ms(_graphed(forward), plan.device, plan.repeats)
                        row.note = f"{batch / row.ms * 1000:,.0f} items/s (graph)"
                    else:
                        row.note = f"{batch / row.baseline_ms * 1000:,.0f} items/s (eager)"
            except Exception as error:  # noqa: BLE001
                _failed(row, error)
            rows.append(row)
    return rows


# The synthetic clip: 1280x720, 30 fps, 3 s, with B-frames (as phones write them).
VIDEO_SIZE = (720, 1280)  # H, W
VIDEO_FPS = 30
VIDEO_SECONDS = 3
VIDEO_CLIPS = 20  # clips through the live pool
VIDEO_ENCODERS = (("libx264", "h264"), ("h264", "h264"), ("libx265", "hevc"))


def synthetic_clip() -> tuple[bytes, str]:
    """An MP4 made in memory with the first encoder this PyAV has, and what it is."""
    import io

    import av

    height, width = VIDEO_SIZE
    ramp = np.tile((np.arange(width) * 255 // width).astype(np.uint8), (height, 1))
    errors = []
    for encoder, codec in VIDEO_ENCODERS:
        try:
            buffer = io.BytesIO()
            with av.open(buffer, "w", format="mp4") as output:
                stream = output.add_stream(encoder, rate=VIDEO_FPS)
                stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
                stream.options = {"preset": "veryfast"}
                for index in range(VIDEO_FPS * VIDEO_SECONDS):
                    image = np.stack([ramp, np.roll(ramp, 8 * index, axis=1),
                                      np.roll(np.flipud(ramp), 4 * index, axis=0)], -1)
                    image[:64] = (index * 53) % 200 + 28  # each frame's own grey band
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
                    for packet in stream.encode(frame):
                        output.mux(packet)
                for packet in stream.encode():
                    output.mux(packet)
            return buffer.getvalue(), f"{codec} ({encoder})"
        except Exception as error:  # noqa: BLE001  (an encoder this build lacks or cannot open)
            errors.append(f"{encoder}: {type(error).__name__}")
    raise RuntimeError(f"no H.264/HEVC encoder in this PyAV ({'; '.join(errors)})")


def video_rows(plan: Plan) -> list[Row]:
    """NVDEC decode through a live pool vs a decoder per clip vs PyAV on the CPU; one row
    saying why when GPU decode cannot run here."""
    check = "video decode (DALI NVDEC)"
    try:
        from portrait.media.dali_gpu import GpuVideoDecoder, gpu_decode_unavailable
        from portrait.media.limits import VideoLimits
        from portrait.media.video import decode_video
    except ImportError as error:  # PyAV or OpenCV missing: the project's own dependencies
        return [Row(check, 0, note=f"skipped: {error}")]
    device_id = plan.device.index or 0
    reason = gpu_decode_unavailable(device_id) or (None if plan.device.type == "cuda" else "a --cpu run")
    if reason is not None:
        return [Row(check, 0, note=f"skipped: {reason}")]
    try:
        _log("video: encoding a synthetic clip")
        data, codec = synthetic_clip()
        limits = VideoLimits()
        cpu = decode_video(data, limits)
        label = f"video {codec} {VIDEO_SIZE[1]}x{VIDEO_SIZE[0]} {VIDEO_SECONDS}s -> {len(cpu.frames)} frames"

        _log("video: first decoder")
        started = time.perf_counter()
        pool = GpuVideoDecoder(device_id, max_clips_in_flight=1)
        built = time.perf_counter()
        first = pool.decode(data, limits)
        first_ms, build_ms = (time.perf_counter() - started) * 1000, (built - started) * 1000
        gpu = first.to_video()
        same = (gpu.frames.shape == cpu.frames.shape and np.array_equal(gpu.timestamps, cpu.timestamps))
        diff = f"{np.abs(gpu.frames.astype(np.int16) - cpu.frames).mean():.2g} lvl" if same else "-"

        _log(f"video: {VIDEO_CLIPS} clips through the live pool")
        reused = median_ms(lambda: pool.decode(data, limits), plan.device, VIDEO_CLIPS, warmup=1)
        pool.close()

        def fresh() -> None:
            decoder = GpuVideoDecoder(device_id, max_clips_in_flight=1)
            decoder.decode(data, limits)
            decoder.close()

        _log("video: a new decoder per clip, and PyAV on the CPU")
        per_clip = median_ms(fresh, plan.device, 3, warmup=0)
        pyav = median_ms(lambda: decode_video(data, limits), plan.device, 5, warmup=1)
    except Exception as error:  # noqa: BLE001
        return [_failed(Row(check, 0), error)]
    frames = len(cpu.frames)
    shapes = "same frames and times as PyAV" if same else (
        f"MISMATCH: GPU {gpu.frames.shape} vs PyAV {cpu.frames.shape} or other timestamps")
    return [
        Row(f"{label}: NVDEC, live pool", frames, diff=diff, ms=reused, baseline_ms=pyav,
            note=f"baseline: PyAV on CPU ({os.cpu_count()} cores); {shapes}"),
        Row(f"{label}: NVDEC, live pool", frames, ms=reused, baseline_ms=per_clip,
            note="baseline: a new decoder per clip (set-up + decode)"),
        Row(f"{label}: NVDEC, first clip", frames, ms=first_ms,
            note=f"process's first decoder: {build_ms:.0f} ms to build, then its first clip"),
    ]


def table(title: str, rows: list[Row]) -> str:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    header = ("check", "batch", "max|diff|", "rel", "ms", "baseline ms", "x faster", "note")
    body = [(r.check, str(r.batch), r.diff, r.relative, num(r.ms), num(r.baseline_ms),
             f"{r.baseline_ms / r.ms:.1f}" if r.ms and r.baseline_ms else "-", r.note) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in body]
    lines += ["ms: the kernel, or the model as a CUDA graph replay (median); baseline: the PyTorch reference,",
              "or the model called eagerly. max|diff|: kernel vs reference in 0..255 units; model vs ONNX Runtime",
              "fp32 on the CPU at batch <= 8, absolute and relative to the largest reference output.",
              "video rows: ms per clip (frames on the GPU, upright BGR), batch = frames kept; max|diff| there is",
              "the mean |GPU - PyAV| in 0..255 units (their YUV->RGB conversions differ slightly)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("model_repository"), help="built model repository")
    parser.add_argument("--cpu", action="store_true", help="smoke test on CPU: kernels interpreted, tiny sizes")
    args = parser.parse_args()
    if not (args.models / "yunet" / "1" / "model.onnx").exists():
        sys.exit(f"no built model repository at {args.models} (run `portrait models build` and pass --models)")
    if args.cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels (and triton) are imported
        plan = Plan(torch.device("cpu"), frames=4, frame_long_side=96, letterbox=32, crops=8, crop_size=24,
                    batches=(1, 2), repeats=2, half=False)
        card = "CPU (smoke test: Triton interpreter, fp32, tiny sizes; figures mean nothing)"
    elif torch.cuda.is_available():
        plan = Plan(torch.device("cuda"), frames=32, frame_long_side=1280, letterbox=320, crops=256, crop_size=112,
                    batches=(1, 8, 32, 64), repeats=20, half=True)
        card = torch.cuda.get_device_name()
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels, as TensorRT would
    else:
        sys.exit("no CUDA device: this check needs a GPU (torch.cuda.is_available() is False); "
                 "use --cpu for a smoke test")
    import triton

    started = time.perf_counter()
    rows = kernel_rows(plan) + model_rows(plan, args.models) + video_rows(plan)
    title = (f"{card} | torch {torch.__version__} | triton {triton.__version__} | "
             f"{time.perf_counter() - started:.0f} s")
    print(table(title, rows))


if __name__ == "__main__":
    main()
