"""Passive presentation-attack detection with the MiniFASNet pair.

The crop reproduces the Silent-Face project's: the face box scaled around its centre
(2.7x for V2, 4.0x for V1-SE), shifted to stay inside the frame, the scale capped so it
fits, then resized to 80x80 BGR. The two softmaxes are averaged; class 1 is live.
"""

from __future__ import annotations

import numpy as np

from portrait.stages.inputs import InputFormat

SIZE = 80
SCALES = {"minifasnet_v2": 2.7, "minifasnet_v1se": 4.0}


def crop_transforms(faces: np.ndarray, image_hw: tuple[int, int], scale: float) -> np.ndarray:
    """YuNet rows [N,15] of one frame size -> [N,2,3] frame->80x80 matrices."""
    h, w = image_hw
    bx, by, bw, bh = (faces[:, i].astype(np.float64) for i in range(4))
    s = np.minimum(np.minimum((h - 1) / bh, (w - 1) / bw), scale)
    nw, nh = bw * s, bh * s
    cx, cy = bx + bw / 2, by + bh / 2
    left = np.clip(cx - nw / 2, 0, None)
    top = np.clip(cy - nh / 2, 0, None)
    left = np.minimum(left, w - 1 - nw)
    top = np.minimum(top, h - 1 - nh)
    kx, ky = SIZE / nw, SIZE / nh
    zeros = np.zeros_like(kx)
    return np.stack([np.stack([kx, zeros, -kx * left], 1), np.stack([zeros, ky, -ky * top], 1)], 1).astype(np.float32)


INPUT = InputFormat(rgb=False, scale=1.0)  # BGR 0..255, no normalisation


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def live_scores(logits_by_model: dict[str, np.ndarray]) -> np.ndarray:
    """Per crop probability of being live: the mean of the models' class-1 softmax."""
    return np.mean([softmax(logits)[:, 1] for logits in logits_by_model.values()], axis=0)
