"""Generated faces: is the selfie an animation of the ID photo itself?

The fraud this check is for animates the picture the fraudster holds, the victim's ID
photo, with a talking-head or reenactment tool, and plays the result into a virtual
camera. Such a video keeps that photo's pixels: its lighting, hairline, background and
skin texture move with the warp but stay the photo's. The same person filmed on another
day shares their identity with the photo (which the match measures) and little of the
rest. So each sampled frame's face is registered onto the ID face (a similarity from the
five landmarks, refined by an affine ECC fit, since landmarks alone leave the fine detail
a pixel or two apart) and compared twice: in fine detail (high-pass) and in layout
(low-pass, the shading and the silhouette of the hair, less the plane of brightness that
fits it best: a lamp to one side, or an animation re-lit that way, tilts the brightness
across the face without changing its layout). A frame's similarity is the mean of the two
normalised correlations; the clip's score is its best frame's, against the photo or its
mirror image.

What it does not see: a face swapped onto the attacker's own recording (the photo's
pixels are not kept), or an animation re-lit and re-textured before it is played. The
README's "Generated faces" says what was measured, and what else was tried.
"""

from __future__ import annotations

import cv2
import numpy as np

from portrait.stages import align

SIZE = 96
CONTEXT = 1.6  # the crop spans 1.6x the embedder's 112 crop: the face, its hairline, a little background
FINE_SIGMA = 2.0  # high-pass: the crop less its Gaussian blur at this sigma (pixels of SIZE)
LAYOUT_SIGMA = 4.0  # low-pass: the crop blurred at this sigma
MARGIN = 8  # border pixels left out of the comparison (registration moves them in from outside)
ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
# The five-point template of the embedder, scaled so the crop holds CONTEXT times as much.
TEMPLATE = ((align.TEMPLATE_112 - 56.0) / CONTEXT * (SIZE / 112.0) + SIZE / 2).astype(np.float32)


def crop_transforms(faces: np.ndarray) -> np.ndarray:
    """YuNet rows [N,15] -> [N,2,3] matrices cutting SIZE x SIZE context crops."""
    return align.similarity_transforms(align.landmarks5(faces), TEMPLATE)


def grey(crops: np.ndarray) -> np.ndarray:
    """BGR uint8 crops [N,S,S,3] -> float32 luma [N,S,S]."""
    return crops.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)


def _plane_axes(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred x and y coordinates of a side x side square, each scaled to unit norm. On a
    square they are orthogonal to each other and to a constant, so the best-fitting plane is
    the mean plus one projection on each: sums, not a least-squares solve (whose BLAS threads
    would spin on a 6,400-pixel problem and cost more CPU than the check)."""
    centred = np.arange(side, dtype=np.float32) - (side - 1) / 2
    y, x = np.meshgrid(centred, centred, indexing="ij")
    return x / np.sqrt((x * x).sum()), y / np.sqrt((y * y).sum())


PLANE = _plane_axes(SIZE - 2 * MARGIN)


def without_plane(image: np.ndarray) -> np.ndarray:
    """A square image less the plane of brightness that fits it best (least squares)."""
    x, y = PLANE
    return image - image.mean() - x * (x * image).sum() - y * (y * image).sum()


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))


def _register(reference: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """`crop` warped onto `reference` by the affine map ECC finds between their slightly
    blurred images; unchanged where ECC does not converge (the faces are too different)."""
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        _, warp = cv2.findTransformECC(cv2.GaussianBlur(reference, (0, 0), 1.5), cv2.GaussianBlur(crop, (0, 0), 1.5),
                                       warp, cv2.MOTION_AFFINE, ECC_CRITERIA, None, 1)
    except cv2.error:
        return crop
    return cv2.warpAffine(crop, warp, (SIZE, SIZE), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)


def similarity(reference: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """Luma context crops: the ID face [S,S] against frames [N,S,S] -> [N] mean of the
    fine-detail and layout correlations after registration (1: the same picture, or the
    same picture under a light that tilts its brightness)."""
    inner = (slice(MARGIN, SIZE - MARGIN),) * 2
    fine_ref = (reference - cv2.GaussianBlur(reference, (0, 0), FINE_SIGMA))[inner]
    layout_ref = without_plane(cv2.GaussianBlur(reference, (0, 0), LAYOUT_SIGMA)[inner])
    scores = np.empty(len(crops))
    for i, crop in enumerate(crops):  # at most the continuity sample (about 15 crops of 96x96)
        moved = _register(reference, crop)
        fine = (moved - cv2.GaussianBlur(moved, (0, 0), FINE_SIGMA))[inner]
        layout = without_plane(cv2.GaussianBlur(moved, (0, 0), LAYOUT_SIGMA)[inner])
        scores[i] = (_correlation(fine_ref, fine) + _correlation(layout_ref, layout)) / 2
    return scores


def derived_score(reference: np.ndarray, crops: np.ndarray) -> float | None:
    """How closely the best frame reproduces the ID photo, or its mirror image (flipping
    the animation left to right is free); None without frames. The crop's template is
    symmetric about its middle to within a pixel, so the flipped crop is the mirrored
    photo's crop, and registration takes up the rest."""
    if not len(crops):
        return None
    return float(max(similarity(reference, crops).max(), similarity(np.ascontiguousarray(reference[:, ::-1]), crops).max()))

