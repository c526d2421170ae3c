"""Batched affine warp: every crop of a batch (112x112 aligned faces, 80x80 PAD crops,
192x192 FaceMesh crops, 64x64 eye crops) in one Triton launch.

The result is `cv2.warpAffine(frame, M, (size, size), flags=INTER_LINEAR,
borderMode=BORDER_CONSTANT)` bit for bit, the CPU path in `portrait.stages.align.warp`: `M`
maps frame pixels to crop pixels, pixel centres sit on integer coordinates, taps outside the
frame read 0, and OpenCV's fixed point is followed exactly (`fixed_point`): each crop pixel's
source position in 1/32 pixel, from the inverted matrix scaled by 1024 and rounded per row
and per column as OpenCV rounds it, and 15-bit bilinear weights. A float warp (as this kernel
was) samples up to 1/32 pixel elsewhere, which on PAD crops shrunk 10x from a photo moved
live scores by up to 0.009, as much as the calibrated threshold's margin on the dev data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from portrait.kernels import Frames, PackedFrames, pack_frames, to_device

BLOCK = 1024  # output pixels per program; each handles all three channels
# OpenCV's constants: coordinates scaled by 2^10, kept to 2^5 steps a pixel, weights of 2^15.
AB_SCALE = 1024
INTER_BITS = 5


def invert_affine(matrices: torch.Tensor) -> torch.Tensor:
    """[K,2,3] forward matrices -> [K,2,3] crop-to-frame matrices, in float64 and closed form
    as OpenCV does (a singular matrix inverts to zeros, so its crop samples one pixel)."""
    m = matrices.to(torch.float64)
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    inv_det = torch.where(det != 0, 1.0 / torch.where(det != 0, det, 1.0), 0.0)
    a11, a12 = m[:, 1, 1] * inv_det, -m[:, 0, 1] * inv_det
    a21, a22 = -m[:, 1, 0] * inv_det, m[:, 0, 0] * inv_det
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    return torch.stack([torch.stack([a11, a12, b1], 1), torch.stack([a21, a22, b2], 1)], 1)


def fixed_point(inverse: np.ndarray, size: int) -> np.ndarray:
    """[K,2,3] float64 crop-to-frame matrices -> int32 [K,4,size]: OpenCV's per-row offsets of
    x and y (X0, Y0: rounding delta included) and per-column steps (adelta, bdelta), all in
    1/1024 pixel. Crop pixel (x, y) reads frame position ((X0[y] + adelta[x]) >> 5) / 32."""
    steps = np.arange(size, dtype=np.float64)
    limit = np.iinfo(np.int32)
    half_step = AB_SCALE >> INTER_BITS >> 1

    def rounded(values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(values), limit.min // 4, limit.max // 4)  # saturated, with room to add

    rows_x = rounded((inverse[:, 0, 1, None] * steps + inverse[:, 0, 2, None]) * AB_SCALE) + half_step
    rows_y = rounded((inverse[:, 1, 1, None] * steps + inverse[:, 1, 2, None]) * AB_SCALE) + half_step
    cols_x = rounded(inverse[:, 0, 0, None] * steps * AB_SCALE)
    cols_y = rounded(inverse[:, 1, 0, None] * steps * AB_SCALE)
    return np.stack([rows_x, rows_y, cols_x, cols_y], 1).astype(np.int32)


@triton.jit
def _warp_kernel(src, offsets, heights, widths, frame_index, steps, out, SIZE: tl.constexpr, BLOCK: tl.constexpr):
    crop = tl.program_id(0)
    pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_square = pixel < SIZE * SIZE
    x = pixel % SIZE
    y = pixel // SIZE

    frame = tl.load(frame_index + crop)
    base = tl.load(offsets + frame)
    height = tl.load(heights + frame)
    width = tl.load(widths + frame)
    table = steps + crop * 4 * SIZE
    sx = (tl.load(table + y, mask=in_square, other=0) + tl.load(table + 2 * SIZE + x, mask=in_square, other=0)) >> 5
    sy = (tl.load(table + SIZE + y, mask=in_square, other=0) + tl.load(table + 3 * SIZE + x, mask=in_square, other=0)) >> 5
    fx = sx & 31
    fy = sy & 31
    # Far outside the frame every tap reads the border anyway; clamping keeps addresses sane.
    x0 = tl.minimum(tl.maximum(sx >> 5, -2), width + 1)
    y0 = tl.minimum(tl.maximum(sy >> 5, -2), height + 1)
    x1 = x0 + 1
    y1 = y0 + 1
    ok_x0 = (x0 >= 0) & (x0 < width)
    ok_x1 = (x1 >= 0) & (x1 < width)
    ok_y0 = in_square & (y0 >= 0) & (y0 < height)
    ok_y1 = in_square & (y1 >= 0) & (y1 < height)
    row0 = base + y0.to(tl.int64) * width * 3
    row1 = base + y1.to(tl.int64) * width * 3
    col0 = x0.to(tl.int64) * 3
    col1 = x1.to(tl.int64) * 3
    # OpenCV's 15-bit bilinear weights: (1 - fy/32)(1 - fx/32) * 2^15 and so on, exact integers.
    w00 = (32 - fy) * (32 - fx) * 32
    w01 = (32 - fy) * fx * 32
    w10 = fy * (32 - fx) * 32
    w11 = fy * fx * 32

    dst = crop.to(tl.int64) * SIZE * SIZE * 3 + pixel * 3
    for channel in tl.static_range(3):
        p00 = tl.load(src + row0 + col0 + channel, mask=ok_y0 & ok_x0, other=0).to(tl.int32)
        p01 = tl.load(src + row0 + col1 + channel, mask=ok_y0 & ok_x1, other=0).to(tl.int32)
        p10 = tl.load(src + row1 + col0 + channel, mask=ok_y1 & ok_x0, other=0).to(tl.int32)
        p11 = tl.load(src + row1 + col1 + channel, mask=ok_y1 & ok_x1, other=0).to(tl.int32)
        value = (p00 * w00 + p01 * w01 + p10 * w10 + p11 * w11 + (1 << 14)) >> 15
        tl.store(out + dst + channel, value.to(tl.uint8), mask=in_square)


def _crop_inputs(frames: Frames, frame_index: torch.Tensor | Sequence[int], matrices: torch.Tensor,
                 size: int) -> tuple[PackedFrames, torch.Tensor, np.ndarray]:
    packed = pack_frames(frames)
    device = packed.flat.device
    index = to_device(frame_index, torch.int32, device)
    if matrices.dim() != 3 or matrices.shape[1:] != (2, 3) or len(matrices) != len(index):
        raise ValueError(f"need one [2,3] matrix per crop, got {tuple(matrices.shape)} for {len(index)} crops")
    inverse = invert_affine(torch.as_tensor(matrices).detach().cpu().to(torch.float64)).numpy()
    return packed, index, fixed_point(inverse, size)


def warp_affine(frames: Frames, frame_index: torch.Tensor | Sequence[int], matrices: torch.Tensor,
                size: int) -> torch.Tensor:
    """Crop k is frame `frame_index[k]` warped by forward matrix `matrices[k]` to size x size:
    uint8 [K,size,size,3] in the frames' channel order. One launch, gridded over (crop, tile
    of BLOCK output pixels)."""
    packed, index, steps = _crop_inputs(frames, frame_index, matrices, size)
    device = packed.flat.device
    out = torch.empty((len(index), size, size, 3), dtype=torch.uint8, device=device)
    if len(index) == 0:
        return out
    grid = (len(index), triton.cdiv(size * size, BLOCK))
    _warp_kernel[grid](packed.flat, packed.offsets, packed.heights, packed.widths, index,
                       to_device(steps, torch.int32, device), out, SIZE=size, BLOCK=BLOCK)
    return out


def warp_affine_reference(frames: Frames, frame_index: torch.Tensor | Sequence[int], matrices: torch.Tensor,
                          size: int) -> torch.Tensor:
    """The same result in plain PyTorch, one crop at a time, by the same integer arithmetic."""
    packed, index, steps = _crop_inputs(frames, frame_index, matrices, size)
    device = packed.flat.device
    out = torch.empty((len(index), size, size, 3), dtype=torch.uint8, device=device)
    for k, frame in enumerate(index.tolist()):
        height, width = packed.shapes[frame]
        image = packed.frame(frame).to(torch.int64)
        table = torch.from_numpy(steps[k].astype(np.int64)).to(device)
        sx = (table[0][:, None] + table[2][None, :]) >> INTER_BITS  # [y, x], 1/32 pixel
        sy = (table[1][:, None] + table[3][None, :]) >> INTER_BITS
        fx, fy = sx & 31, sy & 31
        x0, y0 = sx >> INTER_BITS, sy >> INTER_BITS
        total = torch.zeros((size, size, 3), dtype=torch.int64, device=device)
        for dy, wy in ((0, 32 - fy), (1, fy)):
            for dx, wx in ((0, 32 - fx), (1, fx)):
                xs, ys = x0 + dx, y0 + dy
                inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
                taps = image[ys.clamp(0, height - 1), xs.clamp(0, width - 1)] * inside[..., None]
                total += taps * (wy * wx * 32)[..., None]
        out[k] = ((total + (1 << 14)) >> 15).to(torch.uint8)
    return out
