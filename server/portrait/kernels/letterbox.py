"""Batched letterbox-resize-normalise for the YuNet detector, in one Triton launch.

Each frame is scaled so its longer side is `size`, placed at the top-left of the detector's
canvas (`stages.detect.canvas` of the largest scaled frame: each side rounded up to YuNet's
coarsest stride) padded with zeros, and written as float32 NCHW with BGR channels in whole
levels 0..255, which is what YuNet takes.

Both the canvas and the pixels are the CPU path's (`stages.detect.letterbox`: OpenCV's
INTER_AREA into uint8), so the detector sees the same input on both paths and the thresholds
calibrated on one hold on the other. This kernel used to fill a size x size square by
four-tap bilinear sampling; YuNet's features over padding are not zero (biases), so a taller
canvas moves its boxes, and bilinear sampling skips source pixels when shrinking by more than
2x: on the standard workload the two shifted continuity by 0.027 and the match score by 0.02.

OpenCV's rule, per axis (`axis_table`), over the part of the frame the output covers
(`detect.covered`: all of it, but where a whole factor leaves a remainder): shrinking on both
axes, an output pixel is the mean of the source span it covers, the pixels at the span's
ends weighted by the part covered (its `computeResizeAreaTab`); otherwise (a frame smaller
than the detector) its area rule for enlarging, the nearest source pixel blended with the
next only where an output pixel straddles their boundary. The weights are OpenCV's float32
ones, summed in its order (each source row across, then the rows down) and rounded as it
rounds: half to even, and half up at exactly 2x on both axes (its SIMD path). On the CPU
(NumPy, or the interpreter) that is OpenCV's result bit for bit when shrinking; enlarging,
OpenCV works in fixed point and may differ by a level. A GPU may fuse a multiply and an add, which can move a value that sits
on a half by one level.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import triton
import triton.language as tl

from portrait.kernels import Frames, PackedFrames, pack_frames, to_device
from portrait.stages.detect import canvas, covered, scaled

BLOCK = 1024  # output pixels per program; each handles all three channels


def target_sizes(shapes: tuple[tuple[int, int], ...], size: int) -> list[tuple[int, int, float]]:
    """(resized H, resized W, scale) per frame, as the CPU path scales it (`detect.scaled`)."""
    return [scaled(height, width, size) for height, width in shapes]


@lru_cache(maxsize=256)
def axis_table(source: int, target: int, shrink: bool) -> tuple[np.ndarray, np.ndarray]:
    """One axis of OpenCV's INTER_AREA resize: [target, taps] source indices (int32) and
    weights (float32) in summation order; unused taps weigh 0 (adding 0 changes no sum)."""
    inverse = target / source
    step = 1.0 / inverse  # OpenCV's scale, computed as it computes it
    out = np.arange(target, dtype=np.float64)
    if shrink:
        low = out * step
        high = low + step
        cell = np.minimum(step, source - low)
        last = np.minimum(np.floor(high), source - 1).astype(np.int64)
        first = np.minimum(np.ceil(low).astype(np.int64), last)
        index = (first - 1)[:, None] + np.arange(int((last - first).max()) + 2)[None, :]
        full = (index >= first[:, None]) & (index < last[:, None])
        lead = np.where(first - low > 1e-3, (first - low) / cell, 0.0)
        tail = np.where(high - last > 1e-3, np.minimum(np.minimum(high - last, 1.0), cell) / cell, 0.0)
        weight = np.where(full, (1.0 / cell)[:, None], 0.0)
        weight[:, 0] = lead
        weight = np.where(index == last[:, None], tail[:, None], weight)
    else:
        near = np.floor(out * step).astype(np.int64)
        blend = (out + 1) - (near + 1) * inverse
        blend = np.where(blend <= 0, 0.0, blend - np.floor(blend))
        end = near >= source - 1
        near, blend = np.where(end, source - 1, near), np.where(end, 0.0, blend)
        index = near[:, None] + np.arange(2)[None, :]
        weight = np.stack([1.0 - blend, blend], 1)
    return np.clip(index, 0, source - 1).astype(np.int32), weight.astype(np.float32)


class Plan:
    """The axis tables of one launch: one per distinct frame size (a clip's frames share
    one), padded to one tap count and laid end to end, and each frame's start in them."""

    def __init__(self, packed: PackedFrames, size: int) -> None:
        self.targets = target_sizes(packed.shapes, size)
        self.canvas = canvas(max(t[0] for t in self.targets), max(t[1] for t in self.targets))
        sizes = dict(zip(packed.shapes, self.targets))  # each distinct size, in first-seen order
        rows, cols = {}, {}
        spans = {shape: covered(*shape, size) for shape in sizes}  # the source each output covers
        for (height, width), (target_h, target_w, _) in sizes.items():
            span_h, span_w = spans[height, width]
            shrink = span_h >= target_h and span_w >= target_w
            rows[height, width] = axis_table(span_h, target_h, shrink)
            cols[height, width] = axis_table(span_w, target_w, shrink)
        self.taps = max(table[0].shape[1] for table in [*rows.values(), *cols.values()])
        self.rows, row_starts = self._stack(rows)
        self.cols, col_starts = self._stack(cols)
        self.row_starts = [row_starts[shape] for shape in packed.shapes]
        self.col_starts = [col_starts[shape] for shape in packed.shapes]
        # OpenCV rounds half up at exactly 2x on both axes (its SIMD path), else half to even.
        self.halves = [spans[shape] == (2 * t[0], 2 * t[1]) for shape, t in zip(packed.shapes, self.targets)]

    def _stack(self, tables: dict) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
        padded = {shape: [np.pad(a, ((0, 0), (0, self.taps - a.shape[1]))) for a in table]
                  for shape, table in tables.items()}
        starts = dict(zip(padded, np.cumsum([0] + [len(index) for index, _ in padded.values()]).tolist()))
        index = np.concatenate([index for index, _ in padded.values()])
        weight = np.concatenate([weight for _, weight in padded.values()])
        return (index, weight), starts


@triton.jit
def _round(value, half_up):
    """OpenCV's rounding to a level: half to even (cvRound), or half up (its 2x path)."""
    up = tl.floor(value + 0.5)
    odd_tie = ((up - value) == 0.5) & ((up - 2.0 * tl.floor(up * 0.5)) == 1.0)
    return tl.where(odd_tie & (half_up == 0), up - 1.0, up)


@triton.jit
def _letterbox_kernel(src, offsets, widths, out_sizes, row_index, row_weight, row_starts, col_index, col_weight,
                      col_starts, halves, out, canvas_h, canvas_w, BLOCK: tl.constexpr, TAPS: tl.constexpr):
    frame = tl.program_id(0)
    pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    plane = canvas_h * canvas_w
    in_canvas = pixel < plane
    oy = pixel // canvas_w
    ox = pixel % canvas_w

    base = tl.load(offsets + frame)
    width = tl.load(widths + frame)
    inside = in_canvas & (oy < tl.load(out_sizes + 2 * frame)) & (ox < tl.load(out_sizes + 2 * frame + 1))
    row_at = (tl.load(row_starts + frame) + oy) * TAPS
    col_at = (tl.load(col_starts + frame) + ox) * TAPS

    half_up = tl.load(halves + frame)
    dst = out + frame.to(tl.int64) * 3 * plane + pixel
    for channel in tl.static_range(3):
        # OpenCV's order: each source row across, then the rows down (0 + x is exactly x).
        total = tl.zeros((BLOCK,), tl.float32)
        for ty in tl.static_range(TAPS):
            sy = tl.load(row_index + row_at + ty, mask=inside, other=0)
            wy = tl.load(row_weight + row_at + ty, mask=inside, other=0.0)
            row = base + sy.to(tl.int64) * width * 3 + channel
            across = tl.zeros((BLOCK,), tl.float32)
            for tx in tl.static_range(TAPS):
                sx = tl.load(col_index + col_at + tx, mask=inside, other=0)
                wx = tl.load(col_weight + col_at + tx, mask=inside, other=0.0)
                across += tl.load(src + row + sx.to(tl.int64) * 3, mask=inside, other=0).to(tl.float32) * wx
            total += wy * across
        tl.store(dst + channel * plane, tl.where(inside, _round(total, half_up), 0.0), mask=in_canvas)


def letterbox_normalise(frames: Frames, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H,W,3] BGR frames of any sizes (one device) -> (float32 [N,3,canvas H,canvas W],
    scales [N]).

    One launch for the whole batch, gridded over (frame, tile of BLOCK output pixels).
    """
    packed = pack_frames(frames)
    plan = Plan(packed, size)
    device = packed.flat.device
    height, width = plan.canvas
    out = torch.empty((len(packed), 3, height, width), dtype=torch.float32, device=device)
    grid = (len(packed), triton.cdiv(height * width, BLOCK))
    _letterbox_kernel[grid](
        packed.flat, packed.offsets, packed.widths, to_device([t[:2] for t in plan.targets], torch.int32, device),
        *(to_device(a, d, device) for a, d in ((plan.rows[0], torch.int32), (plan.rows[1], torch.float32),
                                              (plan.row_starts, torch.int32), (plan.cols[0], torch.int32),
                                              (plan.cols[1], torch.float32), (plan.col_starts, torch.int32),
                                              (plan.halves, torch.int32))),
        out, height, width, BLOCK=BLOCK, TAPS=plan.taps)
    return out, to_device([t[2] for t in plan.targets], torch.float32, device)


def letterbox_reference(frames: Frames, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same result in plain PyTorch, one frame at a time, in the kernel's order."""
    packed = pack_frames(frames)
    plan = Plan(packed, size)
    device = packed.flat.device
    out = torch.zeros((len(packed), 3, *plan.canvas), dtype=torch.float32, device=device)
    for i, (rows, cols, _) in enumerate(plan.targets):
        r0, c0 = plan.row_starts[i], plan.col_starts[i]
        row_index, row_weight = (torch.from_numpy(a[r0 : r0 + rows]).to(device) for a in plan.rows)
        col_index, col_weight = (torch.from_numpy(a[c0 : c0 + cols]).to(device) for a in plan.cols)
        image = packed.frame(i).to(torch.float32)
        total = torch.zeros((rows, cols, 3), dtype=torch.float32, device=device)
        for ty in range(plan.taps):
            source = image[row_index[:, ty].long()]
            across = torch.zeros_like(total)
            for tx in range(plan.taps):
                across = across + source[:, col_index[:, tx].long()] * col_weight[:, tx, None]
            total = total + row_weight[:, ty, None, None] * across
        rounded = torch.floor(total + 0.5) if plan.halves[i] else torch.round(total)
        out[i, :, :rows, :cols] = rounded.permute(2, 0, 1)
    return out, to_device([t[2] for t in plan.targets], torch.float32, device)
