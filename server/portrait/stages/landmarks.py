"""FaceMesh landmarks: crop preparation, and the geometry read from the 468 points.

Everything is measured in the crop, which is rotated so the eyes are level: eye openness
is a ratio and head angles come from 3-D point pairs, so neither depends on where the face
was in the frame.
"""

from __future__ import annotations

import numpy as np

CROP = 192
CONTEXT = 1.5  # the crop side is 1.5x the face box, as MediaPipe crops for FaceMesh

# MediaPipe FaceMesh indices. "Right" is the subject's right (the image's left).
RIGHT_EYE = (33, 160, 158, 133, 153, 144)  # outer corner, upper x2, inner corner, lower x2
LEFT_EYE = (263, 387, 385, 362, 380, 373)
CHEEK_RIGHT, CHEEK_LEFT = 234, 454
FOREHEAD, CHIN = 10, 152


def crop_transforms(faces: np.ndarray) -> np.ndarray:
    """YuNet rows [N,15] -> [N,2,3] matrices cutting a level, 1.5x face crop of 192x192."""
    x, y, w, h = faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 3]
    cx, cy = x + w / 2, y + h / 2
    eye_dx = faces[:, 6] - faces[:, 4]
    eye_dy = faces[:, 7] - faces[:, 5]
    roll = np.arctan2(eye_dy, eye_dx)
    scale = CROP / (np.maximum(w, h) * CONTEXT)
    cos, sin = np.cos(-roll) * scale, np.sin(-roll) * scale
    tx = CROP / 2 - (cos * cx - sin * cy)
    ty = CROP / 2 - (sin * cx + cos * cy)
    return np.stack([np.stack([cos, -sin, tx], 1), np.stack([sin, cos, ty], 1)], 1).astype(np.float32)


def to_input(crops_bgr: np.ndarray) -> np.ndarray:
    """uint8 [N,192,192,3] BGR -> float32 [N,3,192,192] RGB in 0..1."""
    return np.ascontiguousarray(crops_bgr[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def mesh_points(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs -> ([N,468,3] points in crop pixels, [N] face probability)."""
    points = outputs["conv2d_20"].reshape(-1, 468, 3)
    presence = 1.0 / (1.0 + np.exp(-outputs["conv2d_30"].reshape(-1)))
    return points, presence


def _eye_ratio(points: np.ndarray, eye: tuple[int, ...]) -> np.ndarray:
    p = points[:, list(eye), :2]
    vertical = np.linalg.norm(p[:, 1] - p[:, 5], axis=1) + np.linalg.norm(p[:, 2] - p[:, 4], axis=1)
    horizontal = np.linalg.norm(p[:, 0] - p[:, 3], axis=1)
    return vertical / (2.0 * np.maximum(horizontal, 1e-6))


def eye_openness(points: np.ndarray) -> np.ndarray:
    """[N,468,3] -> [N,2] eye aspect ratios (right, left): ~0.25-0.35 open, <0.15 closed."""
    return np.stack([_eye_ratio(points, RIGHT_EYE), _eye_ratio(points, LEFT_EYE)], axis=1)


def head_angles(points: np.ndarray) -> np.ndarray:
    """[N,468,3] -> [N,2] (yaw, pitch) in degrees.

    Yaw is positive when the subject turns to their own left (the nose moves to the image's
    right in an unmirrored recording); pitch is positive when they look up.
    """
    across = points[:, CHEEK_LEFT] - points[:, CHEEK_RIGHT]
    down = points[:, CHIN] - points[:, FOREHEAD]
    yaw = np.degrees(np.arctan2(across[:, 2], across[:, 0]))
    pitch = np.degrees(np.arctan2(-down[:, 2], down[:, 1]))
    return np.stack([yaw, pitch], axis=1)
