"""The GPU production paths, as far as a machine without a GPU can check them.

- `portrait.media.dali_gpu`: without a GPU the overflow decode is `decode_video`, and the GPU
  decoder refuses to start with a clear error. The rest of its logic (container plan, the DALI
  graph fed clip after clip, DLPack to torch, BGR and rotation, the bounded pool and its
  overflow) runs here on DALI's CPU decoder: only device="mixed" (NVDEC) and CUDA memory differ
  on the GPU.
- `TritonBackend(shared_memory="cuda")` refuses without a GPU, before touching the network.

Clips are made in memory; nothing is written to disk.
"""

from __future__ import annotations

import io
from dataclasses import replace

import av
import numpy as np
import pytest

from portrait.backends import BackendError
from portrait.media import MediaError, VideoLimits, decode_video
from portrait.media.dali_gpu import (
    Decoded,
    GpuBusy,
    GpuDecodeError,
    GpuUnsupported,
    GpuVideo,
    GpuVideoDecoder,
    build_pipeline,
    decode_planned,
    decode_with_overflow,
    gpu_decode_unavailable,
    plan_clip,
    run_pipeline,
)

torch = pytest.importorskip("torch", reason="PyTorch is not installed (the GPU paths need it)")

NO_GPU = not torch.cuda.is_available()
LIMITS = VideoLimits()
SLOW = replace(LIMITS, target_fps=6.0, max_frames=8)
needs_no_gpu = pytest.mark.skipif(not NO_GPU, reason="a GPU is present: the refusal cannot happen")


def encode(codec: str, container: str, count: int = 24, rate: int = 12, rotation: int | None = None,
           size: tuple[int, int] = (48, 64)) -> bytes:
    """A small clip whose frames differ (a grey band encodes the index, a ramp moves)."""
    height, width = size
    ramp = np.tile((np.arange(width) * 255 // width).astype(np.uint8), (height, 1))
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        if codec.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(count):
            image = np.stack([ramp, np.roll(ramp, 3 * index, axis=1), np.flipud(ramp)], -1)
            image[: height // 3] = (index * 53) % 200 + 28
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def h264() -> bytes:
    return encode("libx264", "mp4")


@pytest.fixture(scope="module")
def vp9() -> bytes:
    return encode("libvpx-vp9", "webm")


@pytest.fixture(scope="module")
def vp9_rotated() -> bytes:
    return encode("libvpx-vp9", "webm", count=12, rotation=-90)  # a phone's portrait clip


def assert_same_video(got, want, exact: bool = True) -> None:
    assert got.frames.dtype == np.uint8 and got.frames.shape == want.frames.shape
    if exact:
        np.testing.assert_array_equal(got.frames, want.frames)
    else:  # DALI and PyAV convert YUV to RGB slightly differently (about 2 levels on these
        # flat synthetic frames); a wrong frame is off by tens of levels in its index band
        assert np.abs(got.frames.astype(int) - want.frames).mean() < 3.0
    np.testing.assert_array_equal(got.timestamps, want.timestamps)
    assert (got.fps, got.codec, got.duration_s, got.rotation) == (
        want.fps, want.codec, want.duration_s, want.rotation)


# ---------------------------------------------------------------- without a GPU


def test_overflow_without_a_pool_is_decode_video(h264):
    decoded = decode_with_overflow(h264, None, SLOW)
    assert isinstance(decoded, Decoded) and (decoded.path, decoded.reason) == ("cpu", "no_gpu_pool")
    assert_same_video(decoded.video, decode_video(h264, SLOW))
    assert len(decoded.video.frames) == 8


def test_overflow_refuses_what_decode_video_refuses(h264):
    with pytest.raises(MediaError) as caught:
        decode_with_overflow(h264[: len(h264) // 3], None, LIMITS)
    with pytest.raises(MediaError) as expected:
        decode_video(h264[: len(h264) // 3], LIMITS)
    assert caught.value.code == expected.value.code


@needs_no_gpu
def test_gpu_decoder_without_cuda_says_why():
    reason = gpu_decode_unavailable()
    assert reason and "CUDA" in reason
    with pytest.raises(RuntimeError, match="GPU video decode .* unavailable: .*CUDA.*decode_video"):
        GpuVideoDecoder()


@needs_no_gpu
def test_cuda_shared_memory_without_a_gpu_fails_at_construction():
    pytest.importorskip("tritonclient.grpc")
    from portrait.backends.triton import TritonBackend

    # Nothing listens on this address: the refusal comes before any connection.
    with pytest.raises(BackendError, match="CUDA shared memory needs a CUDA GPU.*shared_memory='system'"):
        TritonBackend("127.0.0.1:9", shared_memory="cuda")


def test_shared_memory_modes():
    pytest.importorskip("tritonclient.grpc")
    from portrait.backends.triton import TritonBackend, _shared_memory_kind

    assert [_shared_memory_kind(v) for v in (True, "system", "cuda", False)] == ["system", "system", "cuda", None]
    with pytest.raises(ValueError, match="shared_memory must be"):
        TritonBackend("127.0.0.1:9", shared_memory="gpu")


# ---------------------------------------------------------------- the GPU path's logic on DALI's CPU decoder


class CpuDecoder(GpuVideoDecoder):
    """GpuVideoDecoder's pool and decode with DALI's CPU decoder: no CUDA check, no NVDEC."""

    _pipeline_device = "cpu"

    def __init__(self, max_clips_in_flight: int = 1, codecs: frozenset[str] = frozenset({"vp9"})) -> None:
        self._start(None, max_clips_in_flight, 1, codecs)


def test_plan_takes_the_frames_decode_video_takes(h264):
    plan = plan_clip(h264, SLOW)
    video = decode_video(h264, SLOW)
    assert plan.codec == "h264" and len(plan.indices) == 8
    np.testing.assert_array_equal(plan.times, video.timestamps)
    assert (plan.fps, plan.duration_s, plan.rotation) == (video.fps, video.duration_s, video.rotation)
    with pytest.raises(GpuUnsupported) as caught:
        plan_clip(h264, LIMITS, codecs=frozenset({"hevc"}))
    assert caught.value.code == "unsupported_media_type"


def test_one_pipeline_decodes_clip_after_clip(vp9, vp9_rotated):
    from portrait.media.dali import decode_video_dali

    pipe = build_pipeline("cpu", None, 1)
    codecs = frozenset({"vp9"})
    for data, fps, rotation in ((vp9, 12.0, 0), (vp9_rotated, 12.0, 270), (vp9, 5.0, 0)):
        limits = replace(LIMITS, target_fps=fps)
        plan = plan_clip(data, limits, codecs=codecs)
        assert plan.rotation == rotation
        frames = decode_planned(pipe, data, plan, limits)
        want = decode_video_dali(data, limits)
        assert frames.is_contiguous() and frames.dtype == torch.uint8
        np.testing.assert_array_equal(frames.numpy(), want.frames)  # BGR, upright
        assert_same_video(decode_video(data, limits), want, exact=False)
    # DALI's failure is GpuDecodeError, and the pipeline still serves the next clip.
    with pytest.raises(GpuDecodeError):
        run_pipeline(pipe, b"\x1a\x45\xdf\xa3" + bytes(200), [0])
    plan = plan_clip(vp9, LIMITS, codecs=codecs)
    assert len(decode_planned(pipe, vp9, plan, LIMITS)) == len(plan.indices)


def test_the_gpu_graph_scales_frames_as_the_cpu_decoders_do():
    """Frames over max_side come out at the size PyAV and DALI on the CPU give, area-averaged."""
    from portrait.media.dali import decode_video_dali

    data = encode("libvpx-vp9", "webm", count=12, rotation=-90, size=(360, 480))  # shown 360x480
    limits = replace(LIMITS, max_side=320)
    pipe = build_pipeline("cpu", None, 1)
    frames = decode_planned(pipe, data, plan_clip(data, limits, codecs=frozenset({"vp9"})), limits)
    want = decode_video_dali(data, limits)
    assert frames.shape[1:] == want.frames.shape[1:] == (320, 240, 3)
    assert np.abs(frames.numpy().astype(int) - want.frames).mean() < 1.0  # torch vs OpenCV area
    assert_same_video(decode_video(data, limits), want, exact=False)


def test_pool_decodes_and_overflows(vp9, h264):
    from portrait.media.dali import decode_video_dali

    pool = CpuDecoder(max_clips_in_flight=1)
    try:
        decoded = decode_with_overflow(vp9, pool, LIMITS)
        assert (decoded.path, decoded.reason) == ("gpu", "") and isinstance(decoded.video, GpuVideo)
        assert_same_video(decoded.video.to_video(), decode_video_dali(vp9, LIMITS))

        held = pool._acquire(wait=False, timeout_s=None)  # every decoder busy
        assert pool.in_flight == 1
        with pytest.raises(GpuBusy):
            pool.decode(vp9, LIMITS, wait=False)
        with pytest.raises(GpuBusy):
            pool.decode(vp9, LIMITS, wait=True, timeout_s=0.05)
        decoded = decode_with_overflow(vp9, pool, LIMITS)
        assert (decoded.path, decoded.reason) == ("cpu", "gpu_busy")
        assert_same_video(decoded.video, decode_video(vp9, LIMITS))
        pool._release(held)

        decoded = decode_with_overflow(h264, pool, LIMITS)  # not a codec this pool takes
        assert (decoded.path, decoded.reason) == ("cpu", "codec")
        assert pool.in_flight == 0
    finally:
        pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.decode(vp9, LIMITS)


def test_pool_falls_back_and_rebuilds_after_a_gpu_failure(vp9, monkeypatch):
    import portrait.media.dali_gpu as dali_gpu

    pool = CpuDecoder(max_clips_in_flight=1)
    built = []
    monkeypatch.setattr(pool, "_build", lambda: built.append(1) or build_pipeline("cpu", None, 1))

    def fail(*args, **kwargs):
        raise GpuDecodeError("NVDEC refused the clip")

    with monkeypatch.context() as patch:
        patch.setattr(dali_gpu, "decode_planned", fail)
        decoded = decode_with_overflow(vp9, pool, LIMITS)
    assert (decoded.path, decoded.reason) == ("cpu", "gpu_decode_failed")
    assert_same_video(decoded.video, decode_video(vp9, LIMITS))
    assert decode_with_overflow(vp9, pool, LIMITS).path == "gpu" and built == [1]  # a fresh pipeline
    pool.close()


def test_gpu_check_skips_video_decode_without_a_gpu():
    if not NO_GPU:
        pytest.skip("a GPU is present")
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_video", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check_video"] = module
    spec.loader.exec_module(module)
    plan = module.Plan(torch.device("cpu"), frames=1, frame_long_side=8, letterbox=8, crops=1, crop_size=8,
                       batches=(1,), repeats=1, half=False)
    (row,) = module.video_rows(plan)
    assert row.note.startswith("skipped: ") and "CUDA" in row.note


def test_service_gpu_settings_refuse_clearly_without_a_gpu():
    from portrait.frames import HostFrames, frame_ops
    from portrait.media import decoder

    assert isinstance(frame_ops("host"), HostFrames)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        frame_ops("gpu")
    with pytest.raises(ValueError, match="unknown frame path"):
        frame_ops("tpu")
    with pytest.raises(RuntimeError, match="GPU video decode .* is unavailable"):
        decoder("gpu")
