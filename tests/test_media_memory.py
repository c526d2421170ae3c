"""Decoding a 1080p clip stays within the documented memory bound.

The clip is a test video fitted into 1920x1080 and re-encoded as H.264 here, in memory; it
reaches the child process through a pipe and is never written anywhere.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from portrait.media import VideoLimits, decode_video
from portrait.media.video import decode_peak_bytes

LIMITS = VideoLimits()


def upscaled_1080p(path: Path) -> bytes:
    """The clip scaled to fit 1920x1080 (centred on black), H.264 in MP4, in memory."""
    buffer = io.BytesIO()
    with av.open(str(path)) as source, av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=source.streams.video[0].average_rate)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for frame in source.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            scale = min(1920 / image.shape[1], 1080 / image.shape[0])
            inner = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
            canvas = np.zeros((1080, 1920, 3), np.uint8)
            top, left = (1080 - inner.shape[0]) // 2, (1920 - inner.shape[1]) // 2
            canvas[top : top + inner.shape[0], left : left + inner.shape[1]] = inner
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="bgr24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip_1080p(testdata) -> bytes:
    return upscaled_1080p(testdata / "videos/liveportrait/d0.mp4")  # 3.1 s, 78 frames


def test_python_allocations_are_the_kept_frames_once(clip_1080p):
    """NumPy's allocations while decoding: the store of max_frames + 1 frames at the kept
    size, and no second copy of it (stacking a list of frames would double it)."""
    tracemalloc.start()
    try:
        video = decode_video(clip_1080p, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert video.frames.shape[1:] == (360, 640, 3)
    store = (LIMITS.max_frames + 1) * video.frames[0].nbytes
    print(f"tracemalloc peak {peak / 2**20:.1f} MiB, store {store / 2**20:.1f} MiB")
    assert store <= peak < store + 4 * video.frames[0].nbytes


CHILD = """
import json, sys
from portrait.media import VideoLimits, decode_video

def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

small, clip = open(sys.argv[1], "rb").read(), sys.stdin.buffer.read()
decode_video(small, VideoLimits())  # FFmpeg's libraries loaded and started
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak resident size starts again from the current one
base = status("VmRSS")
video = decode_video(clip, VideoLimits())
print(json.dumps({"base": base, "peak": status("VmHWM"), "frames": list(video.frames.shape)}))
"""


def test_a_1080p_decode_stays_under_the_documented_bound(clip_1080p, testdata):
    """Resident memory (FFmpeg's buffers included) a process gains at its peak while decoding
    the clip (Linux's VmHWM, reset before the decode)."""
    result = subprocess.run([sys.executable, "-c", CHILD, str(testdata / "videos/liveportrait/d0.mp4")],
                            input=clip_1080p, capture_output=True, check=True, timeout=120)
    figures = json.loads(result.stdout)
    gained = figures["peak"] - figures["base"]
    print(f"1080p decode: +{gained / 2**20:.0f} MiB resident, bound {decode_peak_bytes(LIMITS) / 2**20:.0f} MiB")
    assert figures["frames"][1:] == [360, 640, 3]
    assert gained < decode_peak_bytes(LIMITS)
