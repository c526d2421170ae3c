"""Hostile uploads, made in memory at test time: files that are valid enough to reach a
decoder and cost it far more than their size says (tests and `benchmarks/bench_hostile.py`).

None is derived from the test data: the pictures are synthetic gradients."""

from __future__ import annotations

import io
import json
import struct
from fractions import Fraction

import av
import cv2
import numpy as np

_EOI = b"\xff\xd9"


def picture(width: int, height: int, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """A synthetic BGR picture: colour gradients, and as much noise as asked."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1) * 255, y / max(height, 1) * 255, (x + y) / max(width + height, 1) * 255], -1)
    return np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)


def progressive_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    return data.tobytes()


def last_scan(jpeg: bytes) -> tuple[int, int]:
    """(start, end) of the last scan: its SOS marker to the end-of-image marker."""
    start = jpeg.rindex(b"\xff\xda")
    end = jpeg.rindex(_EOI)
    return start, end


def repeated_last_scan(jpeg: bytes, times: int) -> bytes:
    """The JPEG with its last scan repeated `times` more times: libjpeg decodes every one."""
    start, end = last_scan(jpeg)
    return jpeg[:end] + jpeg[start:end] * times + jpeg[end:]


def many_scans_jpeg(width: int = 6000, height: int = 6000, times: int = 2800) -> bytes:
    """The issue's first file: a progressive JPEG whose last scan (59 bytes over a grey
    6000x6000 picture) is repeated thousands of times; libjpeg visits every block of the
    image for each (about 25 ms a scan here)."""
    return repeated_last_scan(flat_progressive_jpeg(width, height), times)


def flat_progressive_jpeg(width: int, height: int) -> bytes:
    """A grey progressive JPEG: its refinement scans are a few bytes each."""
    return progressive_jpeg(np.full((height, width, 3), 128, np.uint8), quality=75)


def resized_sof(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header claiming another size (the scan data is left as is:
    a decoder allocates the frame from the header before it reads a scan)."""
    data = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise ValueError("no frame header")


def mjpeg_mov(frames: list[bytes], width: int, height: int, rate: int = 10) -> bytes:
    """A QuickTime file whose MJPEG stream holds these JPEGs as its frames; the header
    states width x height whatever the frames say."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mov") as output:
        stream = output.add_stream("mjpeg", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        for index, frame in enumerate(frames):
            packet = av.Packet(frame)
            packet.stream, packet.pts, packet.dts = stream, index, index
            packet.time_base = Fraction(1, rate)
            output.mux(packet)
    return buffer.getvalue()


def tiny_scans_mov(frames: int = 2, scans: int = 75_000) -> bytes:
    """The issue's second file: MJPEG frames of 1920x1080, each with tens of thousands of tiny scans."""
    frame = repeated_last_scan(flat_progressive_jpeg(1920, 1080), scans)
    return mjpeg_mov([frame] * frames, 1920, 1080)


def giant_second_frame_mov(side: int = 16000) -> bytes:
    """The issue's third file: a MOV whose header says 320x240, its second frame side x side."""
    first = cv2.imencode(".jpg", picture(320, 240))[1].tobytes()
    second = resized_sof(cv2.imencode(".jpg", picture(320, 240, seed=1))[1].tobytes(), side, side)
    # FFmpeg refuses a frame with more than 4 blocks of 8x8 per byte of its packet: pad it.
    padding = (side // 8) ** 2 // 4 + 1024
    return mjpeg_mov([first, second + bytes(padding)], 320, 240)


def huge_json(mib: int = 30) -> bytes:
    """The issue's fourth body: `[{},{},...]` of `mib` MiB (to POST /v1/challenges without a key)."""
    count = mib * 1024 * 1024 // 3
    return b"[" + b"{}," * (count - 1) + b"{}]"


def is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True
