"""Still images (the identity document photo): JPEG, PNG and WebP to uint8 BGR."""

from __future__ import annotations

import struct

import cv2
import numpy as np

from portrait.media import jpeg
from portrait.media.errors import MediaError
from portrait.media.limits import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE

# cv2.imdecode flags by JPEG reduction: libjpeg scales in the inverse DCT, so a 36-megapixel
# phone photo costs the time and memory of a 2-megapixel one.
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an upload to uint8 BGR [H, W, 3], upright (EXIF orientation applied).

    BGR because OpenCV and the face detector work in BGR. The size is read from the header
    and checked first, so a decompression bomb is refused before anything is allocated, and
    so is a JPEG whose scans or coefficient buffer would cost too much (`jpeg.check_cost`).
    Grayscale, alpha and 16-bit images come out as 8-bit BGR (alpha is dropped). A large
    JPEG comes out reduced (`reduction_for`).
    """
    reduction = reduction_for(data, *check_image_size(data, max_pixels))
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[reduction])
    except cv2.error as error:  # OpenCV's message names its own source lines: kept out of the answer
        raise MediaError("corrupt_media", "image does not decode") from error
    if image is None:
        raise MediaError("corrupt_media", "image does not decode")
    return image


def decode_peak_bytes(max_pixels: int = MAX_IMAGE_PIXELS) -> int:
    """The most memory one image decode takes: a JPEG's reduced output (its longer side under
    2 x MIN_IMAGE_SIDE, or an eighth of its sides) with its coefficient buffer when it has
    several scans, or a PNG or WebP at max_pixels, BGR."""
    jpeg_output = max((2 * MIN_IMAGE_SIDE) ** 2, max_pixels // 64) * 3
    return max(jpeg_output + jpeg.MAX_COEFFICIENT_BYTES, max_pixels * 3)


def reduction_for(data: bytes, width: int, height: int, min_side: int = MIN_IMAGE_SIDE) -> int:
    """A JPEG's reduction: the largest of 1, 2, 4 and 8 that leaves the longer side at least
    min_side. Other formats are decoded whole (1)."""
    if not data.startswith(jpeg.MAGIC):
        return 1
    return max(r for r in _REDUCED if r == 1 or max(width, height) // r >= min_side)


def check_image_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header, refusing unknown formats, images over max_pixels and
    JPEGs that would cost too much to decode or are truncated."""
    if data.startswith(jpeg.MAGIC):
        layout = jpeg.read_layout(data)[0]
        jpeg.check_cost(layout, max_pixels)
        if not layout.complete:
            raise MediaError("corrupt_media", "JPEG is truncated (no end-of-image marker)")
        return layout.width, layout.height
    width, height = image_size(data)
    if width * height == 0:
        raise MediaError("corrupt_media", "image header gives an empty size")
    if width * height > max_pixels:
        raise MediaError("media_too_large", f"image is {width}x{height}, over {max_pixels} pixels")
    return width, height


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) as stored, from the file header alone (no pixel is decoded)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_size(data)
    if data.startswith(jpeg.MAGIC):
        layout = jpeg.read_layout(data)[0]
        return layout.width, layout.height
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    raise MediaError("unsupported_media_type", "not a JPEG, PNG or WebP image")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise MediaError("corrupt_media", "PNG without an IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a" and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise MediaError("corrupt_media", "WebP without a readable frame header")
