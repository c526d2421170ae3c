"""Video decode: the shipped decoder against the plain one it replaced, in the same run.

Plain: FFmpeg decodes every frame and the sampled ones are converted to BGR at their coded
size (what the models then scale down themselves). Shipped: FFmpeg's scaler converts and
scales the sampled frames in one step to `VideoLimits.max_side`, and frames the sampler is
sure to drop are not decoded when nothing refers to them. Two ablations show each lever on
its own. Variants run round-robin so machine load hits them alike; each prints wall time
(median, p95), CPU seconds per decode, the frames FFmpeg returned, and the resident memory
one decode adds at its peak in a fresh process (Linux: VmHWM; FFmpeg's buffers included; a
process that decoded before reuses the memory it freed, which would hide the difference).

    python benchmarks/bench_decode.py [--video clip.mp4] [--upscale] [--repeats 9]

--upscale re-encodes the clip to 1920x1080 H.264 in memory first (the clip fitted, centred on
black), the size the issue's memory figures are about.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import av
import cv2
import numpy as np

from portrait.media import video as video_module
from portrait.media.limits import VideoLimits
from portrait.media.video import (
    EvenSampler,
    assemble,
    decode_video,
    header_duration,
    open_video,
    sample_period,
    source_fps,
    upright_rotation,
)
from portrait.settings import Settings

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


def plain_decode(data: bytes, limits: VideoLimits):
    """The baseline: every frame decoded, the sampled ones converted at the coded size."""
    with open_video(data) as (container, stream):
        stream.thread_type = "AUTO"
        duration = header_duration(container, stream)
        sampler: EvenSampler[np.ndarray] = EvenSampler(
            sample_period(limits.target_fps, limits.max_frames, duration), limits.max_frames)
        start, rotation = None, 0
        for frame in container.decode(stream):
            if start is None:
                start, rotation = frame.time, upright_rotation(frame.rotation)
            if sampler.wants(frame.time - start):
                sampler.add(frame.time - start, np.rot90(frame.to_ndarray(format="bgr24"), rotation // 90))
        fps = source_fps(stream)
        return assemble(sampler.kept, fps, stream.codec_context.name, duration or 0.0, rotation)


def counting_frames(skip: bool):
    """video._frames that counts the frames FFmpeg returns, with or without skipping."""
    original = video_module._frames
    counts: list[int] = []

    def frames(container, stream, max_duration_s, unwanted=lambda packet: False):
        count = 0
        for frame in original(container, stream, max_duration_s, unwanted if skip else (lambda p: False)):
            count += 1
            yield frame
        counts.append(count)

    return frames, counts, original


def resident_gain(work: Callable[[], object]) -> int:
    """Bytes the process's resident size rose by at its peak while `work` ran (Linux)."""
    def status(field: str) -> int:
        with open("/proc/self/status") as lines:
            return int(next(l for l in lines if l.startswith(field + ":")).split()[1]) * 1024

    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM starts again from the current resident size
    base = status("VmRSS")
    result = work()
    peak = status("VmHWM")
    del result
    return peak - base


def upscaled_1080p(data: bytes) -> bytes:
    """The clip fitted into 1920x1080 (centred on black), H.264 in memory."""
    buffer = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=source.streams.video[0].average_rate)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "18"}
        for frame in source.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            scale = min(1920 / image.shape[1], 1080 / image.shape[0])
            inner = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            canvas = np.zeros((1080, 1920, 3), np.uint8)
            top, left = (1080 - inner.shape[0]) // 2, (1920 - inner.shape[1]) // 2
            canvas[top : top + inner.shape[0], left : left + inner.shape[1]] = inner
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="bgr24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def all_variants(limits: VideoLimits) -> dict[str, tuple[Callable, VideoLimits, bool]]:
    """name -> (decoder, limits, skip unused frames)."""
    coded = replace(limits, max_side=0)
    return {
        "plain (before)": (plain_decode, coded, False),
        "skip only": (decode_video, coded, True),
        f"scale only ({limits.max_side})": (decode_video, limits, False),
        f"shipped (skip + scale {limits.max_side})": (decode_video, limits, True),
    }


def child_gain(name: str, data: bytes, limits: VideoLimits) -> int:
    """In a fresh process: the resident memory one decode of variant `name` adds."""
    decode, lims, skip = all_variants(limits)[name]
    patched, _, _ = counting_frames(skip)
    video_module._frames = patched
    return resident_gain(lambda: decode(data, lims))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=Path, default=TESTDATA / "videos/replay_pair/real.mp4")
    parser.add_argument("--upscale", action="store_true", help="re-encode to 1920x1080 first")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    data = args.video.read_bytes()
    if args.upscale:
        data = upscaled_1080p(data)
    limits = Settings().video_limits
    variants = all_variants(limits)
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    frames_out: dict[str, int | str] = {}
    shapes: dict[str, tuple] = {}
    peaks: dict[str, float] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, (decode, lims, skip) in variants.items():
            patched, counts, original = counting_frames(skip)
            video_module._frames = patched
            try:
                started, cpu_started = time.perf_counter(), time.process_time()
                video = decode(data, lims)
                elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu_started
            finally:
                video_module._frames = original
            if repeat:
                wall[name].append(elapsed)
                cpu[name].append(cpu_used)
            frames_out[name] = counts[0] if counts else "all"
            shapes[name] = video.frames.shape
    spawn = multiprocessing.get_context("spawn")
    for name in variants:
        with spawn.Pool(1) as child:
            peaks[name] = child.apply(child_gain, (name, data, limits)) / 2**20
    with av.open(io.BytesIO(data)) as clip:
        stream = clip.streams.video[0]
        print(f"clip: {stream.codec_context.name} {stream.width}x{stream.height}, {stream.frames} frames; "
              f"limits: {limits}")
    base = float(np.median(cpu["plain (before)"]))
    print(f"{'variant':<32}{'wall p50 ms':>12}{'p95 ms':>9}{'CPU s':>8}{'CPU x':>7}{'frames out':>11}"
          f"{'kept':>20}{'+RSS MiB':>10}")
    report = {}
    for name in variants:
        p50, p95 = np.percentile(wall[name], 50) * 1000, np.percentile(wall[name], 95) * 1000
        cpu_s = float(np.median(cpu[name]))
        print(f"{name:<32}{p50:>12.0f}{p95:>9.0f}{cpu_s:>8.3f}{base / cpu_s:>7.2f}{str(frames_out[name]):>11}"
              f"{str(shapes[name]):>20}{peaks[name]:>10.1f}")
        report[name] = {"wall_ms_p50": round(p50, 1), "wall_ms_p95": round(p95, 1), "cpu_s": round(cpu_s, 4),
                        "frames_decoded": frames_out[name], "kept": list(shapes[name]),
                        "resident_peak_gain_mib": round(peaks[name], 1)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
