"""FaceMesh landmarks: crop preparation, and the geometry read from the 468 points.

Everything is measured in the crop, which is rotated so the eyes are level: eye openness
is a ratio and head angles come from 3-D point pairs, so neither depends on where the face
was in the frame.
"""

from __future__ import annotations

import numpy as np

from portrait.stages.inputs import InputFormat

CROP = 192
CONTEXT = 1.5  # the crop side is 1.5x the face box, as MediaPipe crops for FaceMesh

EYE_CROP = 64
EYE_CONTEXT = 2.3  # the eye crop side is 2.3x the corner-to-corner distance, as MediaPipe's

# MediaPipe FaceMesh indices. "Right" is the subject's right (the image's left). Corners
# are listed image-left first.
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
CHEEK_RIGHT, CHEEK_LEFT = 234, 454
FOREHEAD, CHIN = 10, 152
# Inner lip contour: upper points paired with the lower points below them, and the corners.
UPPER_LIP = (82, 13, 312)
LOWER_LIP = (87, 14, 317)
MOUTH_CORNERS = (78, 308)


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


INPUT = InputFormat(rgb=True, scale=1.0 / 255.0)  # FaceMesh and the iris model: RGB in 0..1


def mesh_points(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs -> ([N,468,3] points in crop pixels, [N] face probability)."""
    points = outputs["conv2d_20"].reshape(-1, 468, 3)
    presence = 1.0 / (1.0 + np.exp(-outputs["conv2d_30"].reshape(-1)))
    return points, presence


def _as3x3(matrices: np.ndarray) -> np.ndarray:
    out = np.zeros((len(matrices), 3, 3), np.float64)
    out[:, :2] = matrices
    out[:, 2, 2] = 1.0
    return out


def eye_transforms(points: np.ndarray, face_crops: np.ndarray) -> np.ndarray:
    """Face-crop landmarks [N,468,3] and the frame->crop matrices [N,2,3] -> [2N,2,3]
    frame->eye-crop matrices (right eye of every face, then left eye of every face).

    Eye crops are cut from the frame, not the face crop, to keep the eyelids sharp. The
    left eye is mirrored, as MediaPipe feeds it, so both look like one eye to the model.
    """
    matrices = []
    for (start, end), mirror in ((RIGHT_EYE_CORNERS, False), (LEFT_EYE_CORNERS, True)):
        a, b = points[:, start, :2], points[:, end, :2]
        centre, delta = (a + b) / 2, b - a
        angle = np.arctan2(delta[:, 1], delta[:, 0])
        k = EYE_CROP / (EYE_CONTEXT * np.maximum(np.linalg.norm(delta, axis=1), 1e-3))
        cos, sin = np.cos(-angle) * k, np.sin(-angle) * k
        flip = -1.0 if mirror else 1.0
        rows = np.zeros((len(points), 3, 3))
        rows[:, 0] = np.stack([flip * cos, -flip * sin, np.zeros_like(cos)], 1)
        rows[:, 1] = np.stack([sin, cos, np.zeros_like(cos)], 1)
        rows[:, 0, 2] = EYE_CROP / 2 - (rows[:, 0, 0] * centre[:, 0] + rows[:, 0, 1] * centre[:, 1])
        rows[:, 1, 2] = EYE_CROP / 2 - (rows[:, 1, 0] * centre[:, 0] + rows[:, 1, 1] * centre[:, 1])
        rows[:, 2, 2] = 1.0
        matrices.append(rows @ _as3x3(face_crops))
    return np.concatenate(matrices)[:, :2].astype(np.float32)


def eye_openness(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Iris-model outputs for [2N] eye crops -> [N,2] openness (right, left): the mean
    lid-to-lid distance over the corner-to-corner distance; ~0.3 open, <0.1 closed."""
    contour = outputs["output_eyes_contours_and_brows"].reshape(-1, 71, 3)[:, :16, :2]
    lower, upper = contour[:, 1:8], contour[:, 9:16]  # paired inner points, corner to corner
    gap = np.linalg.norm(upper[:, 1:6] - lower[:, 1:6], axis=2).mean(1)
    width = np.linalg.norm(contour[:, 0] - contour[:, 8], axis=1)
    ratio = gap / np.maximum(width, 1e-6)
    return ratio.reshape(2, -1).T


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


def mouth_openness(points: np.ndarray) -> np.ndarray:
    """[N,468,3] -> [N] gap between the inner lips over the mouth's width: ~0 closed, ~0.1-0.3
    in speech, higher when the mouth is opened wide. A ratio of 3-D distances, so neither
    the distance to the camera nor a turned head (which narrows the mouth in the image)
    changes it much."""
    gap = np.linalg.norm(points[:, UPPER_LIP] - points[:, LOWER_LIP], axis=2).mean(1)
    width = np.linalg.norm(points[:, MOUTH_CORNERS[1]] - points[:, MOUTH_CORNERS[0]], axis=1)
    return gap / np.maximum(width, 1e-6)


# The nose tip, and the points the action pose measures it against: the cheek outlines at
# the nose's height, the top of the forehead, the outer eye corners.
NOSE_TIP = 1
OUTER_EYE_CORNERS = (33, 263)


def action_pose(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[N,468,3] FaceMesh points in the level face crop and the YuNet rows [N,15] they were
    cut from -> [N,3] (yaw, pitch, roll) in degrees, for reading head movements.

    Only the points' 2-D places are used: FaceMesh's depth is flattened (a 30-degree turn reads
    about 18 degrees from it) and mixes yaw into pitch, which showed a look up in the middle of
    a left turn. Yaw is where the nose tip sits between the two cheek outlines, as a person
    judges a turn (asin of its offset from the middle, half-widths as units; positive toward
    the subject's own left in an unmirrored recording). Pitch compares the nose tip's drop
    below the outer eye corners with the forehead's height above them, both vertical, so a
    turn leaves it alone (positive looking up; an angle of the face's 2-D proportions that
    grows with head pitch, not the head's pitch in degrees). Roll is the slope of YuNet's eye
    line in the frame (positive when the head tilts toward the subject's own left shoulder,
    unmirrored)."""
    right, left, nose = points[:, CHEEK_RIGHT, 0], points[:, CHEEK_LEFT, 0], points[:, NOSE_TIP, 0]
    offset = (nose - right) / np.maximum(left - right, 1e-6)
    yaw = np.degrees(np.arcsin(np.clip(2.0 * offset - 1.0, -1.0, 1.0)))
    eyes = points[:, OUTER_EYE_CORNERS, 1].mean(1)
    drop = points[:, NOSE_TIP, 1] - eyes
    rise = np.maximum(eyes - points[:, FOREHEAD, 1], 1e-6)
    pitch = -np.degrees(np.arctan2(drop, rise) - np.pi / 4)
    roll = np.degrees(np.arctan2(faces[:, 7] - faces[:, 5], faces[:, 6] - faces[:, 4]))
    return np.stack([yaw, pitch, roll], axis=1)
