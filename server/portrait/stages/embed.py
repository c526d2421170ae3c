"""Embeddings and their comparison."""

from __future__ import annotations

import numpy as np


def to_input(aligned_bgr: np.ndarray) -> np.ndarray:
    """uint8 [N,112,112,3] BGR -> float32 [N,3,112,112] **RGB** 0..255.

    SFace was trained on RGB; OpenCV's FaceRecognizerSF swaps channels itself, the ONNX
    file does not, and BGR input gives quietly wrong embeddings.
    """
    return np.ascontiguousarray(aligned_bgr[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


def normalise(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [N,D] and [N,D] (or [D] broadcast)."""
    return np.sum(normalise(np.atleast_2d(a)) * normalise(np.atleast_2d(b)), axis=1)
