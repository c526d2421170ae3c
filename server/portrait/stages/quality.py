"""Frame quality: which frames of a video are worth embedding."""

from __future__ import annotations

import cv2
import numpy as np


def sharpness(crops_bgr: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each aligned crop's grey image: blur lowers it."""
    grey = crops_bgr.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)
    return np.array([cv2.Laplacian(g, cv2.CV_32F).var() for g in grey])


def frame_quality(yaw: np.ndarray, pitch: np.ndarray, openness: np.ndarray, sharp: np.ndarray,
                  neutral_pitch: float) -> np.ndarray:
    """Higher is better: frontal, eyes open, sharp. Each factor is in 0..1."""
    frontal = np.clip(1 - (np.abs(yaw) + np.abs(pitch - neutral_pitch)) / 40.0, 0, 1)
    eyes = np.clip(openness.mean(1) / max(float(np.percentile(openness.mean(1), 75)), 1e-6), 0, 1)
    crisp = sharp / max(float(sharp.max()), 1e-6)
    return frontal * eyes * (0.5 + 0.5 * crisp)


def spread(count: int, wanted: int) -> np.ndarray:
    """Indices of up to `wanted` of `count` frames, evenly spaced in order: frames from the
    whole clip, not only its sharpest moment."""
    if count == 0:
        return np.zeros(0, int)
    return np.unique(np.linspace(0, count - 1, min(wanted, count)).round().astype(int))
