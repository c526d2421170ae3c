"""Batched affine warp: every crop of a batch (112x112 aligned faces, 80x80 PAD crops,
192x192 FaceMesh crops, 64x64 eye crops) in one Triton launch.

Semantics are `cv2.warpAffine(frame, M, (size, size), flags=INTER_LINEAR,
borderMode=BORDER_CONSTANT)`, the CPU path in `portrait.stages.align.warp`: `M` maps frame
pixels to crop pixels, pixel centres sit on integer coordinates, and taps outside the frame
read 0. OpenCV quantises source coordinates to 1/32 pixel and weights to 15 bits; this
kernel uses float32 throughout, so on sharp edges the two differ by a level or two and on
average by well under one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from portrait.kernels import Frames, PackedFrames, pack_frames, to_device

BLOCK = 1024  # output pixels per program; each handles all three channels


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


@triton.jit
def _warp_kernel(src, offsets, heights, widths, frame_index, inverse, out,
                 SIZE: tl.constexpr, TO_UINT8: tl.constexpr, BLOCK: tl.constexpr):
    crop = tl.program_id(0)
    pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_square = pixel < SIZE * SIZE
    x = (pixel % SIZE).to(tl.float32)
    y = (pixel // SIZE).to(tl.float32)

    frame = tl.load(frame_index + crop)
    base = tl.load(offsets + frame)
    height = tl.load(heights + frame)
    width = tl.load(widths + frame)
    m = inverse + crop * 6
    sx = tl.load(m + 0) * x + tl.load(m + 1) * y + tl.load(m + 2)
    sy = tl.load(m + 3) * x + tl.load(m + 4) * y + tl.load(m + 5)
    # Far outside the frame every tap reads the border anyway; clamping keeps the integer
    # conversion in range without changing the result.
    sx = tl.minimum(tl.maximum(sx, -2.0), width.to(tl.float32) + 1.0)
    sy = tl.minimum(tl.maximum(sy, -2.0), height.to(tl.float32) + 1.0)
    fx = tl.floor(sx)
    fy = tl.floor(sy)
    wx = sx - fx
    wy = sy - fy
    x0 = fx.to(tl.int32)
    y0 = fy.to(tl.int32)
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

    dst = crop.to(tl.int64) * SIZE * SIZE * 3 + pixel * 3
    for channel in tl.static_range(3):
        p00 = tl.load(src + row0 + col0 + channel, mask=ok_y0 & ok_x0, other=0).to(tl.float32)
        p01 = tl.load(src + row0 + col1 + channel, mask=ok_y0 & ok_x1, other=0).to(tl.float32)
        p10 = tl.load(src + row1 + col0 + channel, mask=ok_y1 & ok_x0, other=0).to(tl.float32)
        p11 = tl.load(src + row1 + col1 + channel, mask=ok_y1 & ok_x1, other=0).to(tl.float32)
        value = (1.0 - wy) * ((1.0 - wx) * p00 + wx * p01) + wy * ((1.0 - wx) * p10 + wx * p11)
        if TO_UINT8:
            value = tl.minimum(tl.maximum(tl.floor(value + 0.5), 0.0), 255.0).to(tl.uint8)
        tl.store(out + dst + channel, value, mask=in_square)


def _crop_inputs(frames: Frames, frame_index: torch.Tensor | Sequence[int],
                 matrices: torch.Tensor) -> tuple[PackedFrames, torch.Tensor, torch.Tensor]:
    packed = pack_frames(frames)
    device = packed.flat.device
    index = to_device(frame_index, torch.int32, device)
    if matrices.dim() != 3 or matrices.shape[1:] != (2, 3) or len(matrices) != len(index):
        raise ValueError(f"need one [2,3] matrix per crop, got {tuple(matrices.shape)} for {len(index)} crops")
    return packed, index, invert_affine(to_device(matrices, torch.float64, device))


def warp_affine(frames: Frames, frame_index: torch.Tensor | Sequence[int], matrices: torch.Tensor,
                size: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Crop k is frame `frame_index[k]` warped by forward matrix `matrices[k]` to size x size.

    Returns [K,size,size,3] in the frames' channel order, uint8 (rounded half up, as OpenCV)
    or float32 (unrounded). One launch, gridded over (crop, tile of BLOCK output pixels).
    """
    if dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"dtype must be uint8 or float32, got {dtype}")
    packed, index, inverse = _crop_inputs(frames, frame_index, matrices)
    out = torch.empty((len(index), size, size, 3), dtype=dtype, device=packed.flat.device)
    if len(index) == 0:
        return out
    grid = (len(index), triton.cdiv(size * size, BLOCK))
    _warp_kernel[grid](packed.flat, packed.offsets, packed.heights, packed.widths, index,
                       inverse.to(torch.float32).contiguous(), out, SIZE=size,
                       TO_UINT8=dtype == torch.uint8, BLOCK=BLOCK)
    return out


def warp_affine_reference(frames: Frames, frame_index: torch.Tensor | Sequence[int], matrices: torch.Tensor,
                          size: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """The same result with `grid_sample` (align_corners=True puts pixel centres on the
    integer coordinates OpenCV uses; zeros padding is BORDER_CONSTANT), one call per frame."""
    packed, index, inverse = _crop_inputs(frames, frame_index, matrices)
    device = packed.flat.device
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64, device=device),
                            torch.arange(size, dtype=torch.float64, device=device), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # [size,size,3]
    out = torch.empty((len(index), size, size, 3), dtype=dtype, device=device)
    for frame in torch.unique(index).tolist():
        crops = (index == frame).nonzero()[:, 0]
        height, width = packed.shapes[frame]
        source = torch.einsum("hwj,kij->khwi", points, inverse[crops])  # [k,size,size,2] x, y
        grid = torch.stack([source[..., 0] * 2 / (width - 1) - 1, source[..., 1] * 2 / (height - 1) - 1], -1)
        image = packed.frame(frame).permute(2, 0, 1)[None].to(torch.float32).expand(len(crops), -1, -1, -1)
        sampled = torch.nn.functional.grid_sample(image, grid.to(torch.float32), mode="bilinear",
                                                  padding_mode="zeros", align_corners=True)
        hwc = sampled.permute(0, 2, 3, 1)
        out[crops] = torch.floor(hwc + 0.5).clamp(0, 255).to(dtype) if dtype == torch.uint8 else hwc
    return out
