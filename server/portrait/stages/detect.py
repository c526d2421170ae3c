"""Face detection with YuNet: tensor preparation and output decoding.

YuNet is anchor-free: every cell of the stride-8/16/32 grids predicts a class and an
objectness score, a box (centre offset, log size) and five landmarks. Decoding follows
OpenCV's FaceDetectorYN so the two agree on the same input.
"""

from __future__ import annotations

import cv2
import numpy as np

STRIDES = (8, 16, 32)
# One detection row: x, y, w, h, 5 landmarks (x, y) (right eye, left eye, nose, mouth corners), score.
ROW = 15


def _grid(height: int, width: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = height // stride, width // stride
    r, c = np.divmod(np.arange(rows * cols, dtype=np.float32), cols)
    return c, r


def decode(outputs: dict[str, np.ndarray], input_hw: tuple[int, int], score_threshold: float = 0.7,
           nms_threshold: float = 0.3, top_k: int = 50) -> list[np.ndarray]:
    """Raw YuNet outputs for a batch -> one [K, 15] array of faces per image, best first."""
    height, width = input_hw
    per_stride = []
    for stride in STRIDES:
        cls, obj = outputs[f"cls_{stride}"][..., 0], outputs[f"obj_{stride}"][..., 0]
        bbox, kps = outputs[f"bbox_{stride}"], outputs[f"kps_{stride}"]
        cx, cy = _grid(height, width, stride)
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        centre_x = (cx + bbox[..., 0]) * stride
        centre_y = (cy + bbox[..., 1]) * stride
        w = np.exp(bbox[..., 2]) * stride
        h = np.exp(bbox[..., 3]) * stride
        points = np.empty_like(kps)
        points[..., 0::2] = (kps[..., 0::2] + cx[:, None]) * stride
        points[..., 1::2] = (kps[..., 1::2] + cy[:, None]) * stride
        per_stride.append(np.concatenate(
            [np.stack([centre_x - w / 2, centre_y - h / 2, w, h], -1), points, score[..., None]], -1
        ))
    candidates = np.concatenate(per_stride, axis=1)  # [N, anchors, 15]
    return [_nms(rows, score_threshold, nms_threshold, top_k) for rows in candidates]


def _nms(rows: np.ndarray, score_threshold: float, nms_threshold: float, top_k: int) -> np.ndarray:
    rows = rows[rows[:, -1] >= score_threshold]
    if len(rows) == 0:
        return np.zeros((0, ROW), np.float32)
    keep = cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, -1].tolist(), score_threshold,
                            nms_threshold, top_k=top_k)
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return rows[keep].astype(np.float32)


def canvas(height: int, width: int) -> tuple[int, int]:
    """The detector input that holds an image of this size: each side rounded up to YuNet's
    coarsest stride. A square would spend a third of its cells on padding for a 3:2 clip."""
    coarse = STRIDES[-1]
    return -(-height // coarse) * coarse, -(-width // coarse) * coarse


def _whole_factor(height: int, width: int, size: int) -> int:
    """k where scaling the longer side to `size` shrinks the image by a whole factor k > 1;
    else 1."""
    longest = max(height, width)
    return longest // size if longest > size and longest % size == 0 else 1


def scaled(height: int, width: int, size: int) -> tuple[int, int, float]:
    """(height, width, scale) of an image scaled so its longer side is `size`.

    Shrunk by a whole factor k (a 640-wide clip frame to the video detector's 320), each side
    is its floor over k and covers the image's first k x that many pixels (`covered`): every
    output pixel is the mean of a whole k x k block, OpenCV's area rule for whole factors,
    four times cheaper than its general weights, and the scale is exactly 1/k on both axes
    (rounding 427 rows to 214 would stretch the vertical axis by 0.2 %, which `rescale`
    does not undo)."""
    factor = _whole_factor(height, width, size)
    if factor > 1:
        return max(1, height // factor), max(1, width // factor), 1 / factor
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale)), scale


def covered(height: int, width: int, size: int) -> tuple[int, int]:
    """The rows and columns of the image that `scaled` maps onto the detector's input: each
    side's whole blocks of k (all of it when k is 1)."""
    factor = _whole_factor(height, width, size)
    return min(height, max(1, height // factor) * factor), min(width, max(1, width // factor) * factor)


def letterbox(frames_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Scale frames so the longer side is `size`, pad bottom/right to the `canvas` of the scaled
    size. Frames of one clip share one shape; the batcher merges calls of the same shape.
    Returns the float32 NCHW batch and the scale (original = detected / scale).
    """
    n, h, w, _ = frames_bgr.shape
    nh, nw, scale = scaled(h, w, size)
    ch, cw = covered(h, w, size)
    batch = np.zeros((n, *canvas(nh, nw), 3), np.uint8)
    for i in range(n):
        batch[i, :nh, :nw] = cv2.resize(frames_bgr[i, :ch, :cw], (nw, nh), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32), scale


def pad_to(batch: np.ndarray, height: int, width: int) -> np.ndarray:
    """An NCHW batch padded bottom/right with zeros to height x width (images of different
    shapes in one detector call)."""
    n, c, h, w = batch.shape
    if (h, w) == (height, width):
        return batch
    out = np.zeros((n, c, height, width), batch.dtype)
    out[:, :, :h, :w] = batch
    return out


def rescale(faces: np.ndarray, scale: float) -> np.ndarray:
    """Map detections on a letterboxed frame back to the original frame."""
    out = faces.copy()
    out[:, :14] /= scale
    return out


# A face under this share of the sharpest face's sharpness is out of focus. In-focus faces
# of one photo differ by up to about 4x in Laplacian variance (beards, lighting); a blurred
# background face is 20x or more below the subject.
IN_FOCUS_SHARE = 0.2


def clarity(sharpness: np.ndarray) -> np.ndarray:
    """1 for a face in focus, less for one well below the sharpest face of the image: a face
    out of focus is background, however large (a blurred passer-by behind a portrait)."""
    return np.clip(sharpness / (IN_FOCUS_SHARE * max(float(np.max(sharpness)), 1e-6)), 0.0, 1.0)


def prominence(faces: np.ndarray, image_hw: tuple[int, int], sharpness: np.ndarray | None = None) -> np.ndarray:
    """How much each face looks like *the* subject: its size, discounted by its distance
    from the image centre (a customer fills and centres the frame; bystanders and the
    document's small "ghost" portrait do not) and, where the faces' sharpness is known, by
    being out of focus."""
    h, w = image_hw
    size = np.sqrt(faces[:, 2] * faces[:, 3])
    cx = (faces[:, 0] + faces[:, 2] / 2) / w - 0.5
    cy = (faces[:, 1] + faces[:, 3] / 2) / h - 0.5
    off_centre = np.sqrt(cx**2 + cy**2) / np.sqrt(0.5)
    score = size * (1.0 - 0.5 * off_centre)
    return score if sharpness is None else score * clarity(sharpness)


def primary_face(faces: np.ndarray, image_hw: tuple[int, int], dominance: float = 1.6,
                 sharpness: np.ndarray | None = None) -> int | None:
    """Index of the face that clearly wins on prominence, or None when none does: a second
    face as large, as central and as sharp within a factor `dominance` makes a group photo.
    Faces under 1/dominance of the winner's prominence are ignored."""
    if len(faces) == 0:
        return None
    scores = prominence(faces, image_hw, sharpness)
    ranked = np.sort(scores)[::-1]
    if len(ranked) > 1 and ranked[1] * dominance > ranked[0]:
        return None
    return int(np.argmax(scores))
