"""Inference backends: where model calls run. The pipeline sees only `InferenceBackend`."""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import numpy as np

from portrait.backends.base import BackendError, InferenceBackend
from portrait.modelrepo import int8
from portrait.modelrepo.specs import BY_NAME

__all__ = ["BackendError", "InferenceBackend", "backend_from_settings", "create_backend", "model_runtimes",
           "runtime_table"]

# openvino_int8: OpenVINO on the model's int8 copy (`portrait.modelrepo.int8`), by override only.
RUNTIMES = ("onnxruntime", "openvino", "openvino_int8")
# The faster embedded runtime per model on fp32 files, batch 8, one thread, measured on an
# AVX-512 x86 server by `benchmarks/bench_runtimes.py` (outputs equal within 2e-4): OpenVINO
# ran FaceMesh, the iris model, both MiniFASNets and SFace 2.0-2.5x faster; YuNet was even.
MEASURED = {"yunet": "onnxruntime", "facemesh": "openvino", "iris_landmark": "openvino",
            "minifasnet_v2": "openvino", "minifasnet_v1se": "openvino", "sface": "openvino"}


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@lru_cache(maxsize=1)
def cpu_int8() -> str | None:
    """This CPU's int8 dot product (a cpuinfo flag), read once: where it has none, an int8
    copy is slower than the fp32 file (the start log says which)."""
    return int8.int8_dot_product()


def runtime_table(choice: str) -> dict[str, str]:
    """`PORTRAIT_RUNTIME` -> the runtime of every model. `auto` is the measured table (every
    model on ONNX Runtime where OpenVINO, a dependency, could not be installed; never an int8
    copy, see `portrait.modelrepo.int8`); one runtime name puts every model there;
    `auto,sface=onnxruntime` or `auto,iris_landmark=openvino_int8` overrides single models."""
    first, *overrides = [part.strip() for part in choice.split(",") if part.strip()] or ["auto"]
    if first == "auto":
        table = dict.fromkeys(BY_NAME, "onnxruntime")  # a model not measured yet stays on ONNX Runtime
        if openvino_installed():
            table.update({model: runtime for model, runtime in MEASURED.items() if model in BY_NAME})
    elif first in RUNTIMES:
        table = dict.fromkeys(BY_NAME, first)
    else:
        raise ValueError(f"runtime {first!r}: expected auto, {' or '.join(RUNTIMES)}")
    for override in overrides:
        model, _, runtime = override.partition("=")
        if model not in BY_NAME or runtime not in RUNTIMES:
            raise ValueError(f"runtime override {override!r}: expected <model>=<runtime>, models "
                             f"{', '.join(BY_NAME)}, runtimes {', '.join(RUNTIMES)}")
        table[model] = runtime
    if {"openvino", "openvino_int8"} & set(table.values()) and not openvino_installed():
        raise ValueError("runtime openvino needs the openvino package, which is not installed")
    return table


class EmbeddedBackend:
    """Every model in this process, each on the runtime its table names."""

    name = "embedded"

    def __init__(self, repository, runtimes: dict[str, str], threads: int = 0,
                 models: list[str] | None = None, streams: int = 1) -> None:
        self.runtimes = {m: runtimes[m] for m in models or runtimes}
        by_runtime: dict[str, list[str]] = {}
        for model, runtime in self.runtimes.items():
            by_runtime.setdefault(runtime, []).append(model)
        self._backends: dict[str, InferenceBackend] = {}
        for runtime, models in by_runtime.items():
            if runtime in ("openvino", "openvino_int8"):
                from portrait.backends.openvino import OpenVinoBackend

                backend: InferenceBackend = OpenVinoBackend(repository, models, threads, streams,
                                                            int8=runtime == "openvino_int8")
            else:
                from portrait.backends.onnxruntime import OnnxRuntimeBackend

                backend = OnnxRuntimeBackend(repository, models, threads)
            self._backends.update(dict.fromkeys(models, backend))

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._backends[model].infer(model, batch)

    def ready(self) -> bool:
        return all(b.ready() for b in self._backends.values())

    def release_memory(self) -> bool:
        """Hand back the memory the runtimes keep between calls, where they can (OpenVINO);
        False if some was in use."""
        released = [backend.release_memory() for backend in set(self._backends.values())
                    if hasattr(backend, "release_memory")]
        return all(released)

    def close(self) -> None:
        for backend in set(self._backends.values()):
            backend.close()


def create_backend(kind: str, **options) -> InferenceBackend:
    """`embedded` (in process: ONNX Runtime and OpenVINO per model, the default) or `triton`."""
    if kind == "embedded":
        runtimes = runtime_table(options.pop("runtime", "auto"))
        return EmbeddedBackend(runtimes=runtimes, **options)
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
    return create_backend("embedded", repository=settings.model_repository, runtime=settings.runtime,
                          threads=settings.inference_threads, streams=settings.concurrent_model_calls())


def model_runtimes(backend: InferenceBackend) -> dict[str, str]:
    """What runs each model: the embedded backend's runtime per model, else the backend's
    name (Triton's own configuration decides there)."""
    runtimes = getattr(backend, "runtimes", None)
    return dict(runtimes) if runtimes else dict.fromkeys(BY_NAME, backend.name)
