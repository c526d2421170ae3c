"""Batched letterbox-resize-normalise for the YuNet detector, in one Triton launch.

Each frame is scaled so its longer side is `size` (bilinear), placed at the top-left of a
size x size square padded with zeros, and written as float32 NCHW with BGR channels and
values 0..255, which is what YuNet takes. A fixed square lets frames of different sizes
(different requests) share one detector batch.

Bilinear here means PyTorch's `interpolate(mode="bilinear", align_corners=False,
antialias=False)`: half-pixel centres, four taps, no rounding to uint8. The CPU path
(`portrait.stages.detect.letterbox`) uses OpenCV's INTER_AREA instead, which averages the
whole source footprint of each output pixel and rounds to uint8. At exactly 2x down the two
agree within rounding (both average 2x2 blocks). Other downscales (a 720p frame to 320 is
4x) differ: INTER_AREA is antialiased while four-tap bilinear skips source pixels and
aliases fine detail. On the test photos the mean difference is 1 to 4 levels at 320 (1.6x
to 23x down) and edges differ by tens of levels, so detector scores on the two paths differ
slightly. Upscales (INTER_AREA falls back to bilinear there) agree within rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from portrait.kernels import Frames, pack_frames, to_device

BLOCK = 1024  # output pixels per program; each handles all three channels


def target_sizes(shapes: tuple[tuple[int, int], ...], size: int) -> list[tuple[int, int, float]]:
    """(resized H, resized W, scale) per frame; scale maps frame to letterbox coordinates,
    as in `portrait.stages.detect.letterbox` (original = letterboxed / scale)."""
    out = []
    for height, width in shapes:
        scale = size / max(height, width)
        out.append((max(1, round(height * scale)), max(1, round(width * scale)), scale))
    return out


@triton.jit
def _letterbox_kernel(src, offsets, heights, widths, out_sizes, steps, out,
                      SIZE: tl.constexpr, BLOCK: tl.constexpr):
    frame = tl.program_id(0)
    pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_square = pixel < SIZE * SIZE
    oy = pixel // SIZE
    ox = pixel % SIZE

    base = tl.load(offsets + frame)
    height = tl.load(heights + frame)
    width = tl.load(widths + frame)
    inside = in_square & (oy < tl.load(out_sizes + 2 * frame)) & (ox < tl.load(out_sizes + 2 * frame + 1))

    # Half-pixel source coordinates, clamped at 0 like PyTorch's align_corners=False.
    sy = tl.maximum((oy.to(tl.float32) + 0.5) * tl.load(steps + 2 * frame) - 0.5, 0.0)
    sx = tl.maximum((ox.to(tl.float32) + 0.5) * tl.load(steps + 2 * frame + 1) - 0.5, 0.0)
    y0 = tl.minimum(sy.to(tl.int32), height - 1)
    x0 = tl.minimum(sx.to(tl.int32), width - 1)
    y1 = tl.minimum(y0 + 1, height - 1)
    x1 = tl.minimum(x0 + 1, width - 1)
    wy = sy - y0.to(tl.float32)
    wx = sx - x0.to(tl.float32)

    row0 = base + y0.to(tl.int64) * width * 3
    row1 = base + y1.to(tl.int64) * width * 3
    col0 = x0.to(tl.int64) * 3
    col1 = x1.to(tl.int64) * 3
    plane = SIZE * SIZE
    dst = frame.to(tl.int64) * 3 * plane + pixel
    for channel in tl.static_range(3):
        p00 = tl.load(src + row0 + col0 + channel, mask=inside, other=0).to(tl.float32)
        p01 = tl.load(src + row0 + col1 + channel, mask=inside, other=0).to(tl.float32)
        p10 = tl.load(src + row1 + col0 + channel, mask=inside, other=0).to(tl.float32)
        p11 = tl.load(src + row1 + col1 + channel, mask=inside, other=0).to(tl.float32)
        value = (1.0 - wy) * ((1.0 - wx) * p00 + wx * p01) + wy * ((1.0 - wx) * p10 + wx * p11)
        tl.store(out + dst + channel * plane, tl.where(inside, value, 0.0), mask=in_square)


def letterbox_normalise(frames: Frames, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H,W,3] BGR frames of any sizes (one device) -> (float32 [N,3,size,size], scales [N]).

    One launch for the whole batch, gridded over (frame, tile of BLOCK output pixels).
    """
    packed = pack_frames(frames)
    device = packed.flat.device
    targets = target_sizes(packed.shapes, size)
    out_sizes = to_device([t[:2] for t in targets], torch.int32, device)
    # Source pixels per output pixel (y, x), as PyTorch computes it for an explicit size.
    steps = to_device([(h / t[0], w / t[1]) for (h, w), t in zip(packed.shapes, targets)], torch.float32, device)
    out = torch.empty((len(packed), 3, size, size), dtype=torch.float32, device=device)
    grid = (len(packed), triton.cdiv(size * size, BLOCK))
    _letterbox_kernel[grid](packed.flat, packed.offsets, packed.heights, packed.widths, out_sizes, steps, out,
                            SIZE=size, BLOCK=BLOCK)
    return out, to_device([t[2] for t in targets], torch.float32, device)


def letterbox_reference(frames: Frames, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same result in plain PyTorch, one `interpolate` per frame."""
    packed = pack_frames(frames)
    device = packed.flat.device
    targets = target_sizes(packed.shapes, size)
    out = torch.zeros((len(packed), 3, size, size), dtype=torch.float32, device=device)
    for i, (height, width, _) in enumerate(targets):
        chw = packed.frame(i).permute(2, 0, 1)[None].to(torch.float32)
        resized = torch.nn.functional.interpolate(chw, size=(height, width), mode="bilinear",
                                                  align_corners=False, antialias=False)
        out[i, :, :height, :width] = resized[0]
    return out, to_device([t[2] for t in targets], torch.float32, device)
