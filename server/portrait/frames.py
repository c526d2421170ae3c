"""Where a request's pixel work happens: on the host with OpenCV, or on the GPU with the
Triton-lang kernels (`portrait.kernels`).

The pipeline asks for three things, always in batches: the detector's letterboxed input,
crops of frames by affine matrices (alignment, PAD, FaceMesh, eyes), and crops turned into
a model's input layout. Decoded frames and crops stay where they are; only the small
results (boxes, landmarks, scores, embeddings) and the model inputs, when the backend
needs them on the host, cross over.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import cv2
import numpy as np

from portrait.stages import detect
from portrait.stages.inputs import InputFormat


class FrameOps(Protocol):
    def prepare(self, frames: Any) -> Any:
        """A request's frames where this implementation works on them (moved once)."""
        ...

    def letterbox(self, frames: Any, size: int) -> tuple[Any, float]:
        """Same-size BGR frames [N,H,W,3] -> detector input [N,3,H',W'] (the longer side scaled
        to `size`, on the canvas `stages.detect.canvas` fits to it) and the scale."""
        ...

    def crops(self, frames: Any, frame_index: Sequence[int], matrices: np.ndarray, size: int) -> Any:
        """Crop k is frames[frame_index[k]] warped by matrices[k] to size x size (uint8)."""
        ...

    def model_input(self, crops: Any, fmt: InputFormat) -> Any: ...

    def to_host(self, array: Any) -> np.ndarray: ...

    def for_backend(self, batch: Any) -> Any:
        """A model input as the backend takes it."""
        ...


class HostFrames:
    """NumPy and OpenCV on the CPU: the default."""

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        return frames

    def letterbox(self, frames: np.ndarray, size: int) -> tuple[np.ndarray, float]:
        return detect.letterbox(frames, size)

    def crops(self, frames: np.ndarray | Sequence[np.ndarray], frame_index: Sequence[int], matrices: np.ndarray,
              size: int) -> np.ndarray:
        out = np.empty((len(matrices), size, size, 3), np.uint8)
        for k, (index, matrix) in enumerate(zip(frame_index, matrices)):
            out[k] = cv2.warpAffine(frames[index], matrix, (size, size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT)
        return out

    def model_input(self, crops: np.ndarray, fmt: InputFormat) -> np.ndarray:
        ordered = crops[..., ::-1] if fmt.rgb else crops
        batch = np.ascontiguousarray(ordered.transpose(0, 3, 1, 2), dtype=np.float32)
        if fmt.scale != 1.0:
            np.multiply(batch, np.float32(fmt.scale), out=batch)  # in place: no second batch
        return batch

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return array

    def for_backend(self, batch: np.ndarray) -> np.ndarray:
        return batch


class TorchFrames:
    """PyTorch tensors on one device: the Triton-lang kernels on a GPU, their PyTorch
    references elsewhere (so the same path runs, slowly, on a CPU).

    Model inputs go to the backend on the host, unless `keep_on_device`: then the batcher
    joins the tensors where they are and the Triton backend reads them through CUDA shared
    memory (`shared_memory="cuda"`), so frames and crops never cross to the host.
    """

    def __init__(self, device: str = "cuda", keep_on_device: bool = False) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.keep_on_device = keep_on_device
        if self.device.type == "cuda":
            from portrait.kernels.letterbox import letterbox_normalise as letterbox
            from portrait.kernels.warp import warp_affine as warp
        else:
            from portrait.kernels.letterbox import letterbox_reference as letterbox
            from portrait.kernels.warp import warp_affine_reference as warp
        self._letterbox, self._warp = letterbox, warp

    def prepare(self, frames: Any) -> Any:
        """Frames (NumPy or tensor) as a uint8 tensor on this device; no copy if already there."""
        if isinstance(frames, self.torch.Tensor):
            return frames.to(self.device)
        return self.torch.as_tensor(np.ascontiguousarray(np.asarray(frames)), device=self.device)

    def letterbox(self, frames: Any, size: int) -> tuple[Any, float]:
        batch, scales = self._letterbox(list(self.prepare(frames)), size)
        return batch, float(scales[0])

    def crops(self, frames: Any, frame_index: Sequence[int], matrices: np.ndarray, size: int) -> Any:
        stacked = frames if isinstance(frames, (np.ndarray, self.torch.Tensor)) else None
        images = list(self.prepare(stacked)) if stacked is not None else [self.prepare(f) for f in frames]
        return self._warp(images, list(map(int, frame_index)), self.torch.as_tensor(matrices), size)

    def model_input(self, crops: Any, fmt: InputFormat) -> Any:
        ordered = crops.flip(-1) if fmt.rgb else crops
        return ordered.permute(0, 3, 1, 2).to(self.torch.float32).contiguous() * fmt.scale

    def to_host(self, array: Any) -> np.ndarray:
        return array.cpu().numpy() if isinstance(array, self.torch.Tensor) else np.asarray(array)

    def for_backend(self, batch: Any) -> Any:
        return batch if self.keep_on_device else self.to_host(batch)


def frame_ops(name: str, keep_on_device: bool = False) -> FrameOps:
    """`host` (the default) or `gpu`, which needs PyTorch with CUDA and Triton-lang."""
    if name == "host":
        return HostFrames()
    if name == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("PORTRAIT_FRAMES=gpu needs a CUDA device; use `host` on this machine")
        return TorchFrames("cuda", keep_on_device)
    raise ValueError(f"unknown frame path {name!r}; choose host or gpu")
