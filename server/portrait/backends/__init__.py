"""Inference backends: where model calls run. The pipeline sees only `InferenceBackend`."""

from __future__ import annotations

from portrait.backends.base import BackendError, InferenceBackend

__all__ = ["BackendError", "InferenceBackend", "create_backend"]


def create_backend(kind: str, **options) -> InferenceBackend:
    """`embedded` (ONNX Runtime in process, the default) or `triton` (a Triton server)."""
    if kind == "embedded":
        from portrait.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(**options)
    if kind == "triton":
        from portrait.backends.triton import TritonBackend

        return TritonBackend(**options)
    raise ValueError(f"unknown backend {kind!r}: expected 'embedded' or 'triton'")
