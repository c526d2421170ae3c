"""Five-point similarity alignment to each embedder's template (SFace 112x112, dlib 150x150).

The similarity (rotation, uniform scale, translation) is the least-squares fit of Umeyama
(1991), the same estimate OpenCV's FaceRecognizerSF.alignCrop makes, solved for all faces
at once.
"""

from __future__ import annotations

import numpy as np

# SFace/ArcFace template: right eye, left eye, nose tip, right and left mouth corners.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float32,
)

# dlib's chip (get_face_chip(size=150, padding=0.25)) is defined by dlib's own 5 points (eye
# corners, base of the nose), which YuNet does not give. Where YuNet's 5 points fall on
# dlib's chips: the mean over 43 photos of the test data (every other photo of pairs.csv, one
# face each) of YuNet's points mapped by the similarity from dlib's 5-point shape predictor
# onto dlib's padded template. Per-point spread 2-4.5 px. On the other 43 photos, dlib's
# embedding of the chip made from YuNet's points is 0.15 (median, Euclidean) from dlib's own
# descriptor; dlib's same-person threshold is 0.6.
TEMPLATE_DLIB_150 = np.array(
    [[46.90, 45.08], [101.79, 44.87], [73.95, 77.45], [50.41, 100.70], [99.24, 101.01]], np.float32,
)


def similarity_transforms(points: np.ndarray, template: np.ndarray = TEMPLATE_112) -> np.ndarray:
    """[N,5,2] source landmarks -> [N,2,3] matrices mapping them onto the template."""
    src = points.astype(np.float64)
    dst = template.astype(np.float64)[None]
    src_mean, dst_mean = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = np.einsum("nki,nkj->nij", dst_c, src_c) / src.shape[1]
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones((len(src), 2))
    sign[np.linalg.det(u) * np.linalg.det(vt) < 0, 1] = -1
    rotation = np.einsum("nij,nj,njk->nik", u, sign, vt)
    variance = (src_c**2).sum((1, 2)) / src.shape[1]
    scale = (singular * sign).sum(1) / variance
    linear = rotation * scale[:, None, None]
    translation = dst_mean[:, 0] - np.einsum("nij,nj->ni", linear, src_mean[:, 0])
    return np.concatenate([linear, translation[:, :, None]], axis=2).astype(np.float32)


def landmarks5(faces: np.ndarray) -> np.ndarray:
    """YuNet rows [N,15] -> [N,5,2] landmarks."""
    return faces[:, 4:14].reshape(-1, 5, 2)
