"""Inference backends: where model calls run. The pipeline sees only `InferenceBackend`."""

from __future__ import annotations

from portrait.backends.base import BackendError, InferenceBackend

__all__ = ["BackendError", "InferenceBackend", "backend_from_settings", "create_backend"]


def create_backend(kind: str, **options) -> InferenceBackend:
    """`embedded` (ONNX Runtime in process, the default) or `triton` (a Triton server)."""
    if kind == "embedded":
        from portrait.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(**options)
    if kind == "triton":
        from portrait.backends.triton import TritonBackend

        return TritonBackend(**options)
    raise ValueError(f"unknown backend {kind!r}: expected 'embedded' or 'triton'")


def backend_from_settings(settings) -> InferenceBackend:
    """The backend `PORTRAIT_BACKEND` names. With the GPU frame path, Triton reads model
    inputs through CUDA shared memory, else through system shared memory."""
    if settings.backend == "triton":
        memory = "cuda" if settings.frames == "gpu" else "system"
        return create_backend("triton", url=settings.triton_url, shared_memory=memory)
    return create_backend("embedded", repository=settings.model_repository, threads=settings.ort_threads)
