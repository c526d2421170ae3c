"""Embeddings and their comparison."""

from __future__ import annotations

import numpy as np

from portrait.stages.inputs import InputFormat


# SFace takes 112x112 aligned crops as **RGB** 0..255. OpenCV's FaceRecognizerSF swaps the
# channels itself; the ONNX file does not, and BGR input gives quietly wrong embeddings.
INPUT = InputFormat(rgb=True, scale=1.0)


def normalise(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [N,D] and [N,D] (or [D] broadcast)."""
    return np.sum(normalise(np.atleast_2d(a)) * normalise(np.atleast_2d(b)), axis=1)
