"""Passive presentation-attack detection with the MiniFASNet pair.

The crop reproduces the Silent-Face project's: the face box scaled around its centre
(2.7x for V2, 4.0x for V1-SE), shifted to stay inside the frame, the scale capped so it
fits, then resized to 80x80 BGR. The two softmaxes are averaged; class 1 is live.

The models were trained on boxes from the project's own RetinaFace detector, which are
wider, shorter and lower than YuNet's; a YuNet box is mapped to that geometry first
(`BoxMap`, fitted by `portrait calibrate --liveness` and kept in the calibration record).
One frame's score is noisy, so a clip's score is the median over frames spread in time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from portrait.stages.inputs import InputFormat

SIZE = 80
SCALES = {"minifasnet_v2": 2.7, "minifasnet_v1se": 4.0}


@dataclass(frozen=True)
class BoxMap:
    """A detector's box -> the PAD detector's: centre shifted by a fraction of the box's
    width and height, width and height scaled."""

    dx: float = 0.0
    dy: float = 0.0
    width: float = 1.0
    height: float = 1.0

    def apply(self, boxes: np.ndarray) -> np.ndarray:
        """[N,>=4] x,y,w,h -> [N,4] mapped x,y,w,h."""
        x, y, w, h = (boxes[:, i].astype(np.float64) for i in range(4))
        cx, cy = x + w / 2 + self.dx * w, y + h / 2 + self.dy * h
        nw, nh = w * self.width, h * self.height
        return np.stack([cx - nw / 2, cy - nh / 2, nw, nh], 1)


def fit_box_map(boxes: np.ndarray, reference: np.ndarray) -> BoxMap:
    """The map taking YuNet boxes [N,4] to the reference detector's boxes [N,4] of the same
    faces: per coordinate, the median of the relative offset or size ratio (robust to the
    odd detector miss)."""
    bx, by, bw, bh = (boxes[:, i].astype(np.float64) for i in range(4))
    rx, ry, rw, rh = (reference[:, i].astype(np.float64) for i in range(4))
    return BoxMap(dx=float(np.median((rx + rw / 2 - bx - bw / 2) / bw)),
                  dy=float(np.median((ry + rh / 2 - by - bh / 2) / bh)),
                  width=float(np.median(rw / bw)), height=float(np.median(rh / bh)))


def crop_transforms(faces: np.ndarray, image_hw: tuple[int, int], scale: float) -> np.ndarray:
    """Boxes [N,>=4] x,y,w,h (already in the PAD detector's geometry) of one frame size ->
    [N,2,3] frame->80x80 matrices."""
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
