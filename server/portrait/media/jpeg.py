"""What a JPEG will cost to decode, read from its markers before any decoder sees it.

A JPEG decoder's work grows with the number of scans (libjpeg and FFmpeg decode every one,
each over the whole image: a progressive file whose last scan is repeated thousands of times
costs minutes), and a file with more than one scan (progressive, or one component per scan)
is decoded through a buffer of every DCT coefficient of the image at its full size, whatever
size it is decoded to. Both are known from the markers alone: the frame header gives the
size and sampling, each scan begins with its own marker. `check_cost` refuses what is over
the limits before a byte of pixels exists.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

from portrait.media.errors import MediaError

# Scans a JPEG may have. libjpeg's progressive script has 10 (6 for grey), the most in the
# test data is 14 (`obama_and_biden.jpg`); a baseline file has 1 (3 when each component has its own).
MAX_SCANS = 32
# Scans one MJPEG video frame may have: cameras write sequential JPEG, at most one scan per
# component, per field of an interlaced frame (6). A video has up to `frame_budget` frames,
# so each frame's scans multiply the decode's cost.
MAX_FRAME_SCANS = 6
# The most a multi-scan JPEG's coefficient buffer may take: 2 bytes per coefficient, 64 per
# 8x8 block, every block of every component at full size. 64 MiB is a 22-megapixel 4:2:0 or
# an 11-megapixel 4:4:4 progressive photo (the largest in the test data takes 42 MiB).
MAX_COEFFICIENT_BYTES = 64 * 1024 * 1024
_BLOCK_BYTES = 64 * 2

# Start-of-frame markers (SOF0..SOF15 less DHT, JPG and DAC): they carry the image size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS, _EOI, _SOI = 0xDA, 0xD9, 0xD8
# Markers without a length field.
_STANDALONE = frozenset({0x01, _SOI, *range(0xD0, 0xD8)})
# The next marker after entropy-coded data: 0xFF followed by neither a stuffed zero, a
# restart marker nor another fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class Layout:
    """One JPEG image as its markers describe it."""

    width: int
    height: int
    progressive: bool
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) factor per component
    scans: int
    first_scan_components: int
    complete: bool  # an end-of-image marker follows the last scan

    @property
    def multi_scan(self) -> bool:
        """Whether a decoder must hold every coefficient (libjpeg's `has_multiple_scans`)."""
        return self.progressive or self.first_scan_components < len(self.sampling)

    def coefficient_bytes(self) -> int:
        """The coefficient buffer libjpeg allocates for a multi-scan image (0 for one scan)."""
        if not self.multi_scan:
            return 0
        max_h = max(h for h, _ in self.sampling)
        max_v = max(v for _, v in self.sampling)
        blocks = 0
        for h, v in self.sampling:
            across = math.ceil(self.width * h / (8 * max_h))
            down = math.ceil(self.height * v / (8 * max_v))
            blocks += -(-across // h) * h * -(-down // v) * v
        return blocks * _BLOCK_BYTES


def read_layout(data: bytes, start: int = 0) -> tuple[Layout, int]:
    """The layout of the JPEG at `start` and the offset just past it (past its end-of-image
    marker, or the end of the data). Stray bytes between markers are skipped as libjpeg does."""
    if data[start : start + 2] != b"\xff\xd8":
        raise MediaError("corrupt_media", "not a JPEG image (no start-of-image marker)")
    pos, end = start + 2, len(data)
    frame: tuple[int, int, bool, tuple[tuple[int, int], ...]] | None = None
    scans = first_scan = 0
    while pos + 2 <= end:
        if data[pos] != 0xFF or data[pos + 1] in (0x00, 0xFF):
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
        marker = data[pos + 1]
        if marker == _EOI:
            return _layout(frame, scans, first_scan, complete=True), pos + 2
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > end:
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > end:
            raise MediaError("corrupt_media", "JPEG segment runs past the end of the data")
        if marker in _SOF:
            frame = _frame(data, pos, length, marker in _PROGRESSIVE)
        elif marker == _SOS:
            if frame is None:
                raise MediaError("corrupt_media", "JPEG scan before its frame header")
            scans += 1
            first_scan = first_scan or data[pos + 4]
            if scans > MAX_SCANS:  # no need to read further
                return _layout(frame, scans, first_scan, complete=False), end
            found = _NEXT_MARKER.search(data, pos + 2 + length)
            if found is None:
                break
            pos = found.start()
            continue
        pos += 2 + length
    return _layout(frame, scans, first_scan, complete=False), end


def _frame(data: bytes, pos: int, length: int, progressive: bool):
    if length < 8:
        raise MediaError("corrupt_media", "JPEG frame header is too short")
    height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
    count = data[pos + 9]
    if count == 0 or length < 8 + 3 * count:
        raise MediaError("corrupt_media", "JPEG frame header has no components")
    sampling = tuple((data[pos + 11 + 3 * i] >> 4, data[pos + 11 + 3 * i] & 15) for i in range(count))
    if any(not (1 <= h <= 4 and 1 <= v <= 4) for h, v in sampling):
        raise MediaError("corrupt_media", "JPEG frame header has a bad sampling factor")
    return width, height, progressive, sampling


def _layout(frame, scans: int, first_scan: int, complete: bool) -> Layout:
    if frame is None:
        raise MediaError("corrupt_media", "JPEG without a frame header")
    width, height, progressive, sampling = frame
    return Layout(width, height, progressive, sampling, scans, first_scan, complete)


def check_cost(layout: Layout, max_pixels: int) -> None:
    """Refuse a JPEG whose decode would cost more than allowed: pixels, scans, coefficients."""
    pixels = layout.width * layout.height
    if pixels == 0:
        raise MediaError("corrupt_media", "JPEG frame header gives an empty size")
    if pixels > max_pixels:
        raise MediaError("media_too_large", f"the JPEG is {layout.width}x{layout.height}, over {max_pixels} pixels")
    if layout.scans > MAX_SCANS:
        raise MediaError("too_many_scans", f"the JPEG has more than {MAX_SCANS} scans")
    if layout.coefficient_bytes() > MAX_COEFFICIENT_BYTES:
        message = (f"a {layout.width}x{layout.height} progressive JPEG needs more than "
                   f"{MAX_COEFFICIENT_BYTES >> 20} MiB to decode")
        raise MediaError("media_too_large", message)


def check_frames(data: bytes, max_pixels: int, max_scans: int = MAX_FRAME_SCANS) -> int:
    """Check every JPEG image in one MJPEG packet (interlaced MJPEG carries two), counting
    their scans together against max_scans; returns the number of images."""
    images = scans = pos = 0
    while True:
        layout, pos = read_layout(data, pos)
        images += 1
        scans += layout.scans
        if scans > max_scans:
            raise MediaError("too_many_scans", f"a video frame has more than {max_scans} scans")
        check_cost(layout, max_pixels)
        pos = data.find(b"\xff\xd8", pos)
        if pos < 0:
            return images
