"""Decoding a 1080p clip stays within the documented memory bound.

The clip is a test video fitted into 1920x1080 and re-encoded as H.264 here, in memory; it
reaches the child process through a pipe and is never written anywhere.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from portrait.media import VideoLimits, decode_video
from portrait.media.video import decode_peak_bytes

LIMITS = VideoLimits()
BENCH_DECODE = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py"


@pytest.fixture(scope="module")
def clip_1080p(testdata) -> bytes:
    # The decode benchmark's own 1080p re-encode, so test and benchmark measure the same clip.
    spec = importlib.util.spec_from_file_location("bench_decode", BENCH_DECODE)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.upscaled_1080p((testdata / "videos/liveportrait/d0.mp4").read_bytes())  # 3.1 s, 78 frames


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
