"""Embedded backend on OpenVINO: the repository's fp32 ONNX files compiled for this CPU.

On the x86 CPUs this serves on, OpenVINO runs some of the models several times faster than
ONNX Runtime with identical fp32 weights (see `benchmarks/bench_runtimes.py`), so the
embedded backend picks a runtime per model (`portrait.backends.runtimes`). Precision is
pinned to f32: OpenVINO would otherwise pick bf16 on processors with AMX, and the
calibrated thresholds were measured on fp32 scores.

A compiled model is shared; an infer request is not thread-safe, so each call borrows one
from a small pool and returns it, which keeps concurrent pipeline workers apart without a
lock around the inference itself. Calls run side by side only up to the compiled model's
streams (`PORTRAIT_MODEL_CALLS`); past them OpenVINO queues them.

A compiled model keeps its intermediate buffers at the size of the largest batch it has run:
after bursts of concurrent requests (larger merged batches) that was most of the memory the
process kept (`release_memory`, which the service calls when it goes idle).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import openvino as ov

from portrait.modelrepo.int8 import verified_int8
from portrait.modelrepo.repository import ModelRecord, model_path, verified_models
from portrait.modelrepo.specs import BY_NAME


def compile_model(core: ov.Core, path: Path, threads: int, streams: int = 1) -> ov.CompiledModel:
    """`streams` calls run at once, each on `threads` threads (0: the runtime's choice). One
    stream runs one call at a time, however many threads call it."""
    config: dict = {"INFERENCE_PRECISION_HINT": "f32"}
    if streams > 1:
        config["NUM_STREAMS"] = streams
    else:
        config["PERFORMANCE_HINT"] = "LATENCY"
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads * streams
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def _output_names(compiled: ov.CompiledModel, wanted) -> list[str]:
    """The spec's name of each output, in the compiled model's order. Compiling can attach
    extra names of fused producers to an output tensor (YuNet's `cls_8` also answers to
    `291`), so any_name is not the ONNX output's name."""
    names = {t.name for t in wanted}
    found = []
    for output in compiled.outputs:
        match = names & output.get_names()
        if len(match) != 1:
            raise ValueError(f"output {output.get_names()} matches no single name of {sorted(names)}")
        found.append(match.pop())
    return found


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, repository: Path, models: list[str] | None = None, threads: int = 0, streams: int = 1,
                 int8: bool = False) -> None:
        """`int8`: run the models' int8 copies (`portrait.modelrepo.int8`) instead of the fp32 files."""
        names = models or list(BY_NAME)
        self.records: dict[str, ModelRecord] = verified_models(Path(repository), names)
        self.name = "openvino_int8" if int8 else "openvino"
        locate = verified_int8 if int8 else model_path
        core = ov.Core()
        self._compiled = {name: compile_model(core, locate(Path(repository), name), threads, streams)
                          for name in names}
        self._outputs = {name: _output_names(c, BY_NAME[name].outputs) for name, c in self._compiled.items()}
        self._requests: dict[str, queue.SimpleQueue[ov.InferRequest]] = {n: queue.SimpleQueue() for n in names}
        self._running = 0  # calls in progress, guarded by _state
        self._state = threading.Lock()

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._state:
            self._running += 1
        pool = self._requests[model]
        try:
            try:
                request = pool.get_nowait()
            except queue.Empty:
                request = self._compiled[model].create_infer_request()
            try:
                request.infer({0: np.ascontiguousarray(batch, np.float32)})
                # The request's output buffers are reused by its next call: copy them out.
                return {name: np.array(request.get_output_tensor(i).data, copy=True)
                        for i, name in enumerate(self._outputs[model])}
            finally:
                pool.put(request)
        finally:
            with self._state:
                self._running -= 1

    def release_memory(self) -> bool:
        """Hand back every compiled model's intermediate buffers, if no call is running (a
        call that starts meanwhile waits for this); the next call allocates them again.
        False when calls were running and nothing was released."""
        with self._state:
            if self._running:
                return False
            for compiled in self._compiled.values():
                compiled.release_memory()
            return True

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._compiled.clear()
