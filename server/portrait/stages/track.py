"""One primary face followed through a video.

The subject is chosen where one face clearly dominates (size, centrality, focus: the rule
of `detect.primary_face`, as for photos), then followed
frame to frame by box overlap, so a bystander who walks in is not mistaken for the
subject. Too few frames with the subject, or another face as prominent for much of the
clip, mean the video cannot be judged: the caller answers `retry`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from portrait.stages.detect import prominence, primary_face


MIN_IOU = 0.3  # a detection continues the track when it overlaps the last box this much
MIN_COVERAGE = 0.8  # fewer frames with the subject than this share: face_lost


@dataclass(frozen=True)
class Track:
    faces: np.ndarray  # [N,15] the subject's detection per frame (rows of absent frames are 0)
    present: np.ndarray  # [N] bool
    reason: str | None  # None, "no_face", "multiple_faces" or "face_lost"


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x,y,w,h box against [K,4] boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter + 1e-9)


def track_primary(detections: list[np.ndarray], image_hw: tuple[int, int], min_iou: float = MIN_IOU,
                  min_coverage: float = MIN_COVERAGE, max_crowded: float = 0.3, dominance: float = 1.6,
                  sharpness: list[np.ndarray | None] | None = None) -> Track:
    """`sharpness`: per frame, each face's sharpness where the frame has several faces (None
    where it has one or none, or where it was not measured)."""
    n = len(detections)
    sharpness = sharpness or [None] * n
    faces = np.zeros((n, 15), np.float32)
    present = np.zeros(n, bool)
    seeds = [(i, primary_face(d, image_hw, dominance, sharpness[i])) for i, d in enumerate(detections)]
    seed = next(((i, j) for i, j in seeds if j is not None), None)
    if seed is None:
        crowded = any(len(d) > 1 for d in detections)
        return Track(faces, present, "multiple_faces" if crowded else "no_face")
    start, index = seed
    crowded_frames = 0
    last = detections[start][index]
    for i in [*range(start, n), *range(start - 1, -1, -1)]:
        if i == start - 1:
            last = detections[start][index]  # walk backwards from the seed too
        candidates = detections[i]
        if len(candidates) == 0:
            continue
        overlaps = iou(last[:4], candidates[:, :4])
        best = int(np.argmax(overlaps))
        if overlaps[best] < min_iou:
            continue
        faces[i], present[i], last = candidates[best], True, candidates[best]
        scores = prominence(candidates, image_hw, sharpness[i])
        others = np.delete(scores, best)
        if len(others) and others.max() * dominance > scores[best]:
            crowded_frames += 1
    if crowded_frames > max_crowded * n:
        return Track(faces, present, "multiple_faces")
    if present.mean() < min_coverage:
        return Track(faces, present, "face_lost")
    return Track(faces, present, None)
