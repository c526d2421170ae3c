"""H.264 and HEVC selfie videos decoded on the GPU (NVDEC, through DALI's mixed video decoder),
frames left in GPU memory as a PyTorch tensor.

The production path of DESIGN.md ("Triton on GPU"): frames never return to the host, the
`portrait.kernels` letterbox and warp read them where they are. Same sampling, limits, errors
and frame order (upright uint8 BGR) as `decode_video` on the CPU:

- PyAV reads the container on the CPU (header limits, frame timestamps from the packets, the
  display rotation from the first frame) exactly as `portrait.media.dali` does; DALI decodes
  only the sampled frames, by presentation-order index.
- DALI's output (RGB, [N,H,W,3], device memory) goes to PyTorch through DLPack without a host
  copy; the channel flip to BGR, the scaling to `VideoLimits.max_side` (area averaging, as
  on the CPU) and the rotation run on the GPU.

Set-up is kept out of the request path. Creating a decoder (CUDA stream, thread pool, memory
pools, the NVDEC decoder and parser) costs more than decoding a short clip, so a
`GpuVideoDecoder` builds its DALI pipelines once per process and device and feeds them one
clip after another through external sources (the bytes, and the frame indices as a tensor
argument). DALI itself leases NVDEC decoder instances from a per-process cache
(`NVDECCache` in its frames_decoder_gpu.h), which only a long-lived process benefits from.

A GPU has only a handful of NVDEC engines (2 on a T4, 7 on an H100), so the pool is bounded
by `max_clips_in_flight`; `decode_with_overflow` never waits for it and lets PyAV on the CPU
take the overflow, and also codecs the pool does not take and clips NVDEC refuses.

Everything that touches CUDA is behind `gpu_decode_unavailable()`: importing this module
needs neither PyTorch nor DALI, constructing a `GpuVideoDecoder` without them or without a
GPU raises a RuntimeError saying which is missing, and `decode_with_overflow` without a pool
is `decode_video`.

Needs, on the GPU machine: a CUDA build of PyTorch, nvidia-dali-cuda120, and the driver's
NVDEC library (libnvcuvid.so.1; in a container, NVIDIA_DRIVER_CAPABILITIES must include
`video`, which the default `compute,utility` does not).
"""

from __future__ import annotations

import ctypes
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from portrait.media.errors import MediaError
from portrait.media.limits import VideoLimits
from portrait.media.video import (
    DECODER_THREADS,
    Checkpoint,
    EvenSampler,
    Video,
    check_complete,
    check_header,
    check_pixels,
    decode_video,
    header_duration,
    no_checkpoint,
    open_video,
    packet_check,
    refuse_large_frames,
    sample_period,
    source_fps,
)

if TYPE_CHECKING:
    import torch

# What the pool decodes. NVDEC also reads VP8/VP9/AV1 on some GPUs and not others; those go
# to the CPU, where VP8/VP9 selfies are rare and cheap.
GPU_CODECS = frozenset({"h264", "hevc"})


@dataclass(frozen=True, eq=False)
class GpuVideo:
    """Sampled frames of one video, on the GPU; the fields of `Video` otherwise.

    frames: torch uint8 BGR [N, H, W, 3] on a CUDA device, upright, contiguous;
    timestamps: seconds from the first frame [N] (host); fps: the source frame rate;
    duration_s: from the header, else the last frame's time; rotation: degrees
    counter-clockwise applied to make the frames upright.
    """

    frames: torch.Tensor
    timestamps: np.ndarray
    fps: float
    codec: str
    duration_s: float
    rotation: int

    def to_video(self) -> Video:
        """The same clip with its frames copied to the host (what the CPU stages take)."""
        frames = np.ascontiguousarray(self.frames.cpu().numpy())
        return Video(frames, self.timestamps, self.fps, self.codec, self.duration_s, self.rotation)


class GpuBusy(RuntimeError):
    """Every GPU decoder is in use and the caller would not wait."""


class GpuUnsupported(MediaError):
    """The pool does not decode this codec on the GPU (the CPU decoder may)."""

    def __init__(self, codec: str) -> None:
        super().__init__("unsupported_media_type", f"the GPU decoder does not take {codec}")
        self.codec = codec


class GpuDecodeError(MediaError):
    """DALI/NVDEC failed on a clip whose container PyAV read: corrupt, or a profile NVDEC
    lacks (H.264 4:2:2/4:4:4, for one). The CPU decoder tells which."""

    def __init__(self, message: str) -> None:
        super().__init__("corrupt_media", message)


class Decoded(NamedTuple):
    """What `decode_with_overflow` returns: the video, the path that decoded it ("gpu" or
    "cpu"), and why the CPU took it ("" on the GPU; "no_gpu_pool", "gpu_busy", "codec",
    "gpu_decode_failed")."""

    video: GpuVideo | Video
    path: str
    reason: str


@dataclass(frozen=True)
class ClipPlan:
    """What the CPU reads from the container before the GPU decodes: the frames to take
    (presentation-order indices) and their times."""

    codec: str
    fps: float
    duration_s: float
    rotation: int
    times: tuple[float, ...]
    indices: tuple[int, ...]


def gpu_decode_unavailable(device_id: int = 0) -> str | None:
    """Why GPU decode cannot run on CUDA device `device_id` here, or None when it can.
    Imports PyTorch and DALI only to ask; starts nothing on the GPU."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (a CUDA build is needed)"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA device (a CPU-only build, or no GPU)"
    if not 0 <= device_id < torch.cuda.device_count():
        return f"no CUDA device {device_id}: PyTorch sees {torch.cuda.device_count()}"
    try:
        from nvidia.dali import backend
    except ImportError:
        return "NVIDIA DALI is not installed (nvidia-dali-cuda120)"
    if backend.GetCUDADeviceCount() <= device_id:
        return f"DALI sees no CUDA device {device_id}"
    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError:
        return ("the driver's NVDEC library libnvcuvid.so.1 is not loadable (in a container, "
                "set NVIDIA_DRIVER_CAPABILITIES to include video)")
    return None


def plan_clip(data: bytes, limits: VideoLimits, codecs: frozenset[str] = GPU_CODECS) -> ClipPlan:
    """Read the container on the CPU and choose the frames, as `decode_video_dali` does: the
    same header checks, truncation check and sampler, so the same frames as `decode_video`.
    A codec outside `codecs` raises GpuUnsupported."""
    from portrait.media.dali import _frame_times  # imports DALI; the GPU path needs it anyway

    with open_video(data) as (container, stream):
        codec = stream.codec_context.name
        if codec not in codecs:
            raise GpuUnsupported(codec)
        duration = header_duration(container, stream)
        check_header(stream, duration, limits.max_duration_s, limits.max_pixels)
        refuse_large_frames(stream, limits.max_pixels)
        inspect = packet_check(stream, limits.max_pixels, no_checkpoint)
        times, rotation = _frame_times(container, stream, limits.max_duration_s, inspect)
        fps = source_fps(stream)
    check_complete(duration, times[-1], fps)
    period = sample_period(limits.target_fps, limits.max_frames, duration)
    sampler: EvenSampler[int] = EvenSampler(period, limits.max_frames)
    for index, time in enumerate(times):
        if sampler.wants(time):
            sampler.add(time, index)
    return ClipPlan(
        codec=codec,
        fps=fps,
        duration_s=float(duration or times[-1]),
        rotation=rotation,
        times=tuple(time for time, _ in sampler.kept),
        indices=tuple(index for _, index in sampler.kept),
    )


def build_pipeline(device: str = "mixed", device_id: int | None = 0, num_threads: int = 2) -> Any:
    """A built DALI pipeline decoding one in-memory video per run: external sources "encoded"
    (the file's bytes) and "frames" (int32 indices), one output [F, H, W, 3] RGB. "mixed" puts
    the frames in GPU memory (NVDEC); "cpu" (device_id None) is the same graph on FFmpeg, which
    is how the tests check the graph without a GPU."""
    from nvidia.dali import fn, pipeline_def, types

    # One clip per run and no prefetching: each run consumes exactly the inputs fed before
    # it. exec_dynamic: outputs belong to the caller (not recycled by the next run).
    @pipeline_def(batch_size=1, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_dynamic=True)
    def clip_pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(encoded, device=device, frames=frames, pad_mode="none")

    pipe = clip_pipeline()
    pipe.build()
    return pipe


def run_pipeline(pipe: Any, data: bytes, indices: tuple[int, ...] | list[int]) -> Any:
    """Decode the frames at `indices` of one clip; the DALI tensor (TensorGPU for "mixed")
    [len(indices), H, W, 3] RGB. DALI's failures raise GpuDecodeError."""
    try:
        pipe.feed_input("encoded", [np.frombuffer(data, np.uint8)])
        pipe.feed_input("frames", [np.asarray(indices, np.int32)])
        (outputs,) = pipe.run()
        sample = outputs[0]
    except RuntimeError as error:  # DALI's text is an internal assertion: keep it in the cause
        raise GpuDecodeError("video does not decode on the GPU") from error
    if sample.shape()[0] != len(indices):
        raise GpuDecodeError(f"DALI decoded {sample.shape()[0]} of {len(indices)} frames")
    return sample


def to_bgr_upright(rgb: torch.Tensor, rotation: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB [N,H,W,3] -> BGR, scaled to size (width, height) by area averaging when given and
    smaller, turned `rotation` degrees counter-clockwise, as a new contiguous tensor on the
    same device (np.rot90 and torch.rot90 turn the same way)."""
    import torch

    bgr = rgb.flip(-1)  # a copy: the result no longer refers to DALI's buffer
    if size is not None and (bgr.shape[2], bgr.shape[1]) != size:
        bgr = torch.cat([_area_scaled(part, size) for part in bgr.split(_SCALE_CHUNK)])
    if rotation:
        bgr = torch.rot90(bgr, rotation // 90, dims=(1, 2))
    return bgr.contiguous()


# Frames scaled at once on the GPU: bounds the float copy the scaling makes (16 x 1080p = 400 MB).
_SCALE_CHUNK = 16


def _area_scaled(bgr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [N,H,W,3] -> [N,height,width,3] by area averaging (cv2.INTER_AREA's kernel)."""
    import torch

    planar = bgr.permute(0, 3, 1, 2).float()
    scaled = torch.nn.functional.interpolate(planar, size=(size[1], size[0]), mode="area")
    return scaled.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def decode_planned(pipe: Any, data: bytes, plan: ClipPlan, limits: VideoLimits) -> torch.Tensor:
    """The planned frames of `data`, upright BGR [N,H,W,3] at the kept size, on the
    pipeline's device."""
    import torch

    sample = run_pipeline(pipe, data, plan.indices)
    _, height, width, _ = sample.shape()
    check_pixels(width, height, limits.max_pixels)
    rgb = torch.from_dlpack(sample)  # no copy; DLPack's stream handshake orders it after DALI
    frames = to_bgr_upright(rgb, plan.rotation, limits.frame_size(width, height))
    if frames.is_cuda:
        # DALI may reuse its buffer once `sample` is released; the flip must have read it.
        torch.cuda.current_stream(frames.device).synchronize()
    del rgb, sample
    return frames


class GpuVideoDecoder:
    """A bounded pool of live DALI pipelines on one GPU, each decoding one clip at a time.

    Thread-safe: any thread may call `decode`; at most `max_clips_in_flight` clips hold a
    pipeline (and an NVDEC decoder) at once. The container is read on the CPU before a
    pipeline is taken, so waiting and parsing never hold one. A pipeline that fails is
    dropped and rebuilt on its next use.
    """

    # The pipelines' DALI device; the tests run the pool's logic with "cpu" (DALI's FFmpeg
    # decoder) through a subclass that skips the CUDA check in __init__.
    _pipeline_device = "mixed"

    def __init__(self, device_id: int = 0, max_clips_in_flight: int = 4, num_threads: int = 2,
                 codecs: frozenset[str] = GPU_CODECS) -> None:
        if max_clips_in_flight < 1:
            raise ValueError("max_clips_in_flight must be at least 1")
        reason = gpu_decode_unavailable(device_id)
        if reason is not None:
            raise RuntimeError(f"GPU video decode (DALI on NVDEC) is unavailable: {reason}; "
                               "decode on the CPU instead (decode_video, or decode_with_overflow "
                               "without a pool)")
        # --- only with CUDA, DALI and NVDEC from here on ---
        self._start(device_id, max_clips_in_flight, num_threads, codecs)

    def _start(self, device_id: int | None, max_clips_in_flight: int, num_threads: int,
               codecs: frozenset[str]) -> None:
        self.device_id = device_id
        self.max_clips_in_flight = max_clips_in_flight
        self.num_threads = num_threads
        self.codecs = codecs
        self._lock = threading.Lock()
        self._closed = False
        self._in_flight = 0
        # Idle pipelines; None is a slot whose pipeline is built on first use (after a failure).
        self._idle: queue.Queue[Any] = queue.Queue()
        for _ in range(max_clips_in_flight):
            self._idle.put(self._build())

    def _build(self) -> Any:
        return build_pipeline(self._pipeline_device, self.device_id, self.num_threads)

    @property
    def in_flight(self) -> int:
        """Clips being decoded now."""
        return self._in_flight

    def decode(self, data: bytes, limits: VideoLimits, *, wait: bool = True,
               timeout_s: float | None = None) -> GpuVideo:
        """Like `decode_video`, frames on the GPU. With wait=False, or after timeout_s, a pool
        with every pipeline in use raises GpuBusy. Raises GpuUnsupported for codecs outside
        `codecs`, GpuDecodeError when DALI fails, MediaError for what decode_video refuses."""
        if self._closed:
            raise RuntimeError("the GPU video decoder is closed")
        if not wait and self._idle.empty():  # cheap early answer; the get below decides
            raise GpuBusy(f"all {self.max_clips_in_flight} GPU video decoders are busy")
        plan = plan_clip(data, limits, self.codecs)
        pipe = self._acquire(wait, timeout_s)
        try:
            frames = decode_planned(pipe, data, plan, limits)
        except BaseException:
            self._release(None)  # rebuilt on next use: a failed pipeline is not trusted
            raise
        self._release(pipe)
        return GpuVideo(frames, np.asarray(plan.times, np.float64), plan.fps, plan.codec,
                        plan.duration_s, plan.rotation)

    def _acquire(self, wait: bool, timeout_s: float | None) -> Any:
        try:
            pipe = self._idle.get(block=wait, timeout=timeout_s if wait else None)
        except queue.Empty:
            raise GpuBusy(f"all {self.max_clips_in_flight} GPU video decoders are busy") from None
        with self._lock:
            self._in_flight += 1
        if pipe is None:
            try:
                pipe = self._build()
            except BaseException:
                self._release(None)
                raise
        return pipe

    def _release(self, pipe: Any) -> None:
        with self._lock:
            self._in_flight -= 1
            closed = self._closed
        self._idle.put(None if closed else pipe)

    def close(self) -> None:
        """Drop the idle pipelines (DALI frees them when collected); clips in flight finish
        and drop theirs."""
        with self._lock:
            self._closed = True
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                return


def decode_with_overflow(data: bytes, pool: GpuVideoDecoder | None, limits: VideoLimits,
                         checkpoint: Checkpoint = no_checkpoint, threads: int = DECODER_THREADS) -> Decoded:
    """Decode on the GPU pool if a pipeline is free right now, else with PyAV on the CPU
    (on `threads` FFmpeg threads).

    Never waits for the GPU. The CPU also takes codecs the pool does not decode and clips
    DALI fails on (a corrupt clip then gets decode_video's own error). Media errors found
    while reading the container (limits, truncation) are raised as they are: the CPU would
    refuse the clip the same way. The result says which path ran and why.
    """
    checkpoint()
    if pool is None:
        return Decoded(decode_video(data, limits, checkpoint, threads), "cpu", "no_gpu_pool")
    try:
        return Decoded(pool.decode(data, limits, wait=False), "gpu", "")
    except GpuBusy:
        reason = "gpu_busy"
    except GpuUnsupported:
        reason = "codec"
    except GpuDecodeError:
        reason = "gpu_decode_failed"
    return Decoded(decode_video(data, limits, checkpoint, threads), "cpu", reason)
