"""GPU preprocessing kernels (Triton-lang) with PyTorch references.

On the GPU path decoded frames stay on the device: one letterbox launch turns a batch of
frames of any sizes into the detector's input, and one warp launch cuts every aligned, PAD,
FaceMesh and eye crop from the same frames. Both kernels read frames from one packed uint8
buffer, so frames of different sizes (different requests) share a launch. The CPU path does
the same work with OpenCV (`portrait.stages.detect.letterbox`, `portrait.stages.align.warp`).

`letterbox` and `warp` import Triton; this module needs only PyTorch. On a machine without a
GPU the kernels run under Triton's interpreter (`TRITON_INTERPRET=1`, set before `triton` is
imported), which is how the tests check them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedFrames:
    """uint8 HWC frames of different sizes laid end to end in one flat buffer.

    `offsets`, `heights` and `widths` live on the frames' device for the kernels; `shapes`
    keeps the same sizes on the host so references and callers need no device sync.
    """

    flat: torch.Tensor  # uint8 [sum(H*W*3)]
    offsets: torch.Tensor  # int64 [N], element offset of each frame in `flat`
    heights: torch.Tensor  # int32 [N]
    widths: torch.Tensor  # int32 [N]
    shapes: tuple[tuple[int, int], ...]  # (H, W) per frame

    def __len__(self) -> int:
        return len(self.shapes)

    def frame(self, index: int) -> torch.Tensor:
        """A [H,W,3] view of one frame (no copy)."""
        height, width = self.shapes[index]
        start = sum(h * w * 3 for h, w in self.shapes[:index])
        return self.flat[start : start + height * width * 3].view(height, width, 3)


Frames = Sequence[torch.Tensor] | PackedFrames


def to_device(values: torch.Tensor | Sequence[int] | Sequence[float] | Sequence[Sequence[float]],
              dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Small host arrays (per-frame sizes, matrices) -> `device`. A blocking copy from
    pageable memory waits for everything queued on the GPU, so it would stall the host once
    per launch; the copy goes through pinned memory without waiting instead."""
    tensor = torch.as_tensor(values, dtype=dtype)
    if tensor.device == device or device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def pack_frames(frames: Frames) -> PackedFrames:
    """Concatenate uint8 [H,W,3] frames (all on one device) into a `PackedFrames`."""
    if isinstance(frames, PackedFrames):
        return frames
    if not frames:
        raise ValueError("no frames to pack")
    device = frames[0].device
    for frame in frames:
        if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 [H,W,3], got {frame.dtype} {tuple(frame.shape)}")
        if frame.device != device:
            raise ValueError("all frames must be on one device")
    shapes = tuple((int(f.shape[0]), int(f.shape[1])) for f in frames)
    sizes = [h * w * 3 for h, w in shapes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return PackedFrames(
        flat=torch.cat([f.reshape(-1) for f in frames]),
        offsets=to_device(starts, torch.int64, device),
        heights=to_device([h for h, _ in shapes], torch.int32, device),
        widths=to_device([w for _, w in shapes], torch.int32, device),
        shapes=shapes,
    )
