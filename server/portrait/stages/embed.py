"""Embeddings and their comparison."""

from __future__ import annotations

import numpy as np

from portrait.stages.inputs import InputFormat


# SFace takes 112x112 aligned crops as **RGB** 0..255. OpenCV's FaceRecognizerSF swaps the
# channels itself; the ONNX file does not, and BGR input gives quietly wrong embeddings.
INPUT = InputFormat(rgb=True, scale=1.0)
# dlib's ResNet takes its 150x150 chips as RGB 0..255 too (its normalisation is in the graph).
DLIB_INPUT = InputFormat(rgb=True, scale=1.0)
DLIB_CHIP = 150


def normalise(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of [N,D] and [N,D] (or [D] broadcast)."""
    return np.sum(normalise(np.atleast_2d(a)) * normalise(np.atleast_2d(b)), axis=1)


def distance_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise minus Euclidean distance: dlib's embeddings are compared by distance (same
    person below 0.6), turned around so that higher means more alike, as for cosine."""
    return -np.linalg.norm(np.atleast_2d(a) - np.atleast_2d(b), axis=1)
