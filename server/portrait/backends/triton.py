"""Triton backend: the models behind a Triton server, over gRPC.

The front door and Triton share the host, so by default tensors travel through system shared
memory rather than the request body. Registering a region costs a round trip, so each backend
keeps a pool of registered slots (one region: the input, then every output); a call holds one
slot for its duration, which makes concurrent calls safe without serialising them.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from portrait.backends.base import BackendError
from portrait.modelrepo.specs import BY_NAME, ModelSpec

_ALIGN = 64  # outputs start on cache-line boundaries inside a slot


def output_nbytes(spec: ModelSpec, shape: tuple[int, ...]) -> dict[str, int]:
    """Bytes each float32 output needs for an input of `shape` ([N, C, H, W]).

    Only the detector has dynamic output dims: per stride s (its outputs are named
    `<kind>_<s>`) one row per cell of the (H/s) x (W/s) grid; rounding up keeps this an upper
    bound when H or W is not a multiple of s.
    """
    sizes = {}
    for tensor in spec.outputs:
        count = shape[0]
        for dim in tensor.dims:
            if dim == -1:
                stride = int(tensor.name.rsplit("_", 1)[1])
                dim = math.ceil(shape[-2] / stride) * math.ceil(shape[-1] / stride)
            count *= dim
        sizes[tensor.name] = count * np.dtype(np.float32).itemsize
    return sizes


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _server_down(error: InferenceServerException) -> bool:
    return error.status() == "StatusCode.UNAVAILABLE"


def _reason(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@dataclass
class _Slot:
    name: str  # Triton's region name; the /dev/shm key is "/" + name
    region: shm.SharedMemoryRegion
    nbytes: int


class TritonBackend:
    name = "triton"

    def __init__(self, url: str = "127.0.0.1:8001", models: list[str] | None = None,
                 shared_memory: bool = True, timeout_s: float = 30.0,
                 shm_bytes_per_slot: int = 8 << 20, slots: int = 4) -> None:
        """`shm_bytes_per_slot` fits one 640x640 detector frame with its outputs; a slot that
        a call outgrows is replaced by a larger one. `slots` are registered up front; more are
        added while every slot is in use."""
        self.url = url
        self.models = list(models or BY_NAME)
        self.shared_memory = shared_memory
        self.timeout_s = timeout_s
        # pid and uuid: two processes (or two backends) never share a region name.
        self.shm_prefix = f"portrait-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._slot_bytes = shm_bytes_per_slot
        self._client = grpcclient.InferenceServerClient(url)
        self._lock = threading.Lock()
        self._free: list[_Slot] = []
        self._slots: dict[str, _Slot] = {}  # every region this backend still owns
        self._draining: set[str] = set()  # unlinked, but Triton still holds them
        self._serial = itertools.count()
        self._closed = False
        try:
            self._check_models()
            if shared_memory:
                self._free.extend(self._create(shm_bytes_per_slot) for _ in range(slots))
        except (InferenceServerException, shm.SharedMemoryException) as error:
            self.close()
            raise BackendError(f"Triton at {url}: cannot set up shared memory: {_reason(error)}") from None
        except BaseException:
            self.close()
            raise

    def _check_models(self) -> None:
        try:
            self._client.is_server_live(client_timeout=self.timeout_s)
            missing = [m for m in self.models
                       if not self._client.is_model_ready(m, client_timeout=self.timeout_s)]
        except InferenceServerException as error:
            raise BackendError(f"Triton at {self.url} is unreachable: {_reason(error)}") from None
        if missing:
            raise BackendError(f"Triton at {self.url}: model(s) not ready: {', '.join(missing)}")

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        spec = BY_NAME[model]
        batch = np.ascontiguousarray(batch, np.float32)
        try:
            if self.shared_memory:
                return self._infer_shared(spec, batch)
            return self._infer_body(spec, batch)
        except (InferenceServerException, shm.SharedMemoryException) as error:
            raise BackendError(f"Triton at {self.url}, model {model}: {_reason(error)}") from None

    def _infer_body(self, spec: ModelSpec, batch: np.ndarray) -> dict[str, np.ndarray]:
        tensor = grpcclient.InferInput(spec.input.name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        outputs = [grpcclient.InferRequestedOutput(t.name) for t in spec.outputs]
        result = self._client.infer(spec.name, [tensor], outputs=outputs, client_timeout=self.timeout_s)
        return {t.name: result.as_numpy(t.name) for t in spec.outputs}

    def _infer_shared(self, spec: ModelSpec, batch: np.ndarray) -> dict[str, np.ndarray]:
        layout: dict[str, tuple[int, int]] = {}  # output -> (offset, bytes) inside the slot
        offset = _aligned(batch.nbytes)
        for name, nbytes in output_nbytes(spec, batch.shape).items():
            layout[name] = (offset, nbytes)
            offset = _aligned(offset + nbytes)
        slot = self._acquire(offset)
        try:
            shm.set_shared_memory_region(slot.region, [batch])
            tensor = grpcclient.InferInput(spec.input.name, list(batch.shape), "FP32")
            tensor.set_shared_memory(slot.name, batch.nbytes)
            outputs = []
            for name, (start, nbytes) in layout.items():
                outputs.append(grpcclient.InferRequestedOutput(name))
                outputs[-1].set_shared_memory(slot.name, nbytes, start)
            result = self._client.infer(spec.name, [tensor], outputs=outputs, client_timeout=self.timeout_s)
            arrays = {
                name: shm.get_contents_as_numpy(
                    slot.region, np.float32, list(result.get_output(name).shape), start).copy()
                for name, (start, _) in layout.items()
            }
        except BaseException:
            # After a timeout Triton may still write into this slot: no other call may get it.
            self._retire(slot)
            raise
        self._release(slot)
        return arrays

    def _acquire(self, nbytes: int) -> _Slot:
        with self._lock:
            if self._closed:
                raise BackendError(f"Triton at {self.url}: backend is closed")
            slot = self._free.pop() if self._free else None
        if slot is not None and slot.nbytes >= nbytes:
            return slot
        if slot is not None:
            self._retire(slot)
        # Powers of two: a slot grows a few times, not once per new batch size.
        return self._create(max(1 << (nbytes - 1).bit_length(), self._slot_bytes))

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            if not self._closed:
                self._free.append(slot)
                return
        self._retire(slot)

    def _create(self, nbytes: int) -> _Slot:
        self._drain()
        name = f"{self.shm_prefix}-{next(self._serial)}"
        slot = _Slot(name, shm.create_shared_memory_region(name, "/" + name, nbytes, create_only=True), nbytes)
        with self._lock:
            self._slots[name] = slot
        try:
            self._client.register_system_shared_memory(name, "/" + name, nbytes, client_timeout=self.timeout_s)
        except BaseException:
            self._retire(slot)
            raise
        return slot

    def _retire(self, slot: _Slot) -> None:
        """Unregister and unlink. Triton refuses to unregister a region that a request it is
        still running uses (one whose deadline we gave up on): such a name is retried later,
        and Triton's own mapping keeps the memory valid meanwhile."""
        with self._lock:
            if self._slots.pop(slot.name, None) is None:
                return
        try:
            self._client.unregister_system_shared_memory(slot.name, client_timeout=self.timeout_s)
        except InferenceServerException as error:
            if not _server_down(error):  # a server that is down holds no registrations
                with self._lock:
                    self._draining.add(slot.name)
        shm.destroy_shared_memory_region(slot.region)

    def _drain(self, wait_s: float = 0.0) -> None:
        """Retry unregistering the regions Triton refused, for up to `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                names = list(self._draining)
            for name in names:
                try:
                    self._client.unregister_system_shared_memory(name, client_timeout=self.timeout_s)
                except InferenceServerException as error:
                    if not _server_down(error):
                        continue
                with self._lock:
                    self._draining.discard(name)
            if not names or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def ready(self) -> bool:
        if self._closed:
            return False
        try:
            return self._client.is_server_ready(client_timeout=self.timeout_s) and all(
                self._client.is_model_ready(m, client_timeout=self.timeout_s) for m in self.models)
        except InferenceServerException:
            return False

    def close(self) -> None:
        """Unregister and unlink every region; call once in-flight calls have returned."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._free.clear()
            slots = list(self._slots.values())
        for slot in slots:
            self._retire(slot)
        self._drain(wait_s=self.timeout_s)
        self._client.close()
