"""The decoded form of a video, shared by every decoder and the pipeline.

Kept apart from the decoders so that code which only consumes frames (the pipeline, the
GPU path) does not import FFmpeg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Video:
    """Sampled frames of one video.

    frames: uint8 BGR [N, H, W, 3] (OpenCV's and the detector's order), upright;
    timestamps: seconds from the first frame [N]; fps: the source frame rate;
    duration_s: from the header, else the last frame's time;
    rotation: degrees counter-clockwise applied to make the frames upright.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    codec: str
    duration_s: float
    rotation: int
