"""Detect on key frames, follow the face between them with FaceMesh's own landmarks.

As in MediaPipe's face pipeline, the detector runs only now and then: between key frames the
FaceMesh crop comes from the detections around it (interpolated between the key frames
before and after, since the whole clip is at hand), and the face row of a non-key frame
(box and five points, which alignment and PAD read) is rebuilt from its 468 mesh points.
Mesh points and YuNet rows differ in geometry (the mesh's extent is not YuNet's box; its
eye corners are not YuNet's eye centres), so the mapping from one to the other is fitted on
the clip's own key frames, where both exist. A frame whose mesh says "no face" has lost
the track: the caller detects on it again.
"""

from __future__ import annotations

import numpy as np

from portrait.stages.detect import ROW

# The mesh points read as YuNet's five: right eye (mean of its corners), left eye, nose
# tip, right and left mouth corners ("right" is the subject's right, the image's left).
_EYES = ((33, 133), (362, 263))
_NOSE_TIP, _MOUTH_RIGHT, _MOUTH_LEFT = 1, 61, 291
PRESENT = 0.5  # FaceMesh face probability under which the track is lost (MediaPipe's cut)


def key_indices(count: int, every: int) -> np.ndarray:
    """Every `every`-th frame and the last: the frames the detector sees."""
    if count == 0:
        return np.zeros(0, np.int64)
    return np.unique(np.r_[np.arange(0, count, max(1, every)), count - 1])


def interpolate(keys: np.ndarray, key_faces: np.ndarray, key_present: np.ndarray,
                count: int) -> tuple[np.ndarray, np.ndarray]:
    """Face rows of every frame from those of the key frames: between two present key
    frames a linear blend, next to one present key frame a copy of it, else absent."""
    frames = np.arange(count)
    after = np.clip(np.searchsorted(keys, frames, side="left"), 0, len(keys) - 1)
    before = np.clip(np.searchsorted(keys, frames, side="right") - 1, 0, len(keys) - 1)
    span = np.maximum(keys[after] - keys[before], 1)
    t = ((frames - keys[before]) / span)[:, None]
    pa, pb = key_present[before][:, None], key_present[after][:, None]
    blend = (1 - t) * key_faces[before] + t * key_faces[after]
    faces = np.where(pa & pb, blend, np.where(pa, key_faces[before], key_faces[after]))
    present = (pa | pb)[:, 0]
    return np.where(present[:, None], faces, 0).astype(np.float32), present


def frame_points(points: np.ndarray, crop_matrices: np.ndarray) -> np.ndarray:
    """Mesh points [N,468,3] in crop pixels -> [N,468,2] in frame pixels."""
    linear, shift = crop_matrices[:, :, :2].astype(np.float64), crop_matrices[:, :, 2].astype(np.float64)
    inverse = np.linalg.inv(linear)
    return np.einsum("nij,nkj->nki", inverse, points[:, :, :2] - shift[:, None, :])


def mesh_rows(points: np.ndarray) -> np.ndarray:
    """Frame-pixel mesh points [N,468,2] -> raw rows [N,14]: the points' extent as x,y,w,h and
    the five landmarks, before fitting to YuNet's geometry."""
    low, high = points.min(1), points.max(1)
    eyes = [points[:, list(pair)].mean(1) for pair in _EYES]
    five = np.stack([*eyes, points[:, _NOSE_TIP], points[:, _MOUTH_RIGHT], points[:, _MOUTH_LEFT]], 1)
    return np.concatenate([low, high - low, five.reshape(-1, 10)], 1)


def fit_to_detector(mesh: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """The clip's mapping from raw mesh rows to YuNet rows, from frames that have both:
    [14] median offsets, in units of the mesh extent, of the box centre and each landmark,
    and the median ratios of box width and height."""
    size = mesh[:, 2:4]
    centre_mesh, centre_det = mesh[:, :2] + size / 2, detected[:, :2] + detected[:, 2:4] / 2
    fit = np.empty((len(mesh), 14))
    fit[:, 0:2] = (centre_det - centre_mesh) / size
    fit[:, 2:4] = detected[:, 2:4] / size
    fit[:, 4:14] = (detected[:, 4:14] - mesh[:, 4:14]) / np.tile(size, 5)
    return np.median(fit, 0)


def apply_fit(mesh: np.ndarray, fit: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Raw mesh rows [N,14], the clip's fit and a score [N] -> YuNet-like rows [N,15]."""
    size = mesh[:, 2:4]
    centre = mesh[:, :2] + size / 2 + fit[0:2] * size
    wh = size * fit[2:4]
    rows = np.empty((len(mesh), ROW), np.float32)
    rows[:, 0:2] = centre - wh / 2
    rows[:, 2:4] = wh
    rows[:, 4:14] = mesh[:, 4:14] + fit[4:14] * np.tile(size, 5)
    rows[:, 14] = score
    return rows
