"""Triton backend: the models behind a Triton server, over gRPC.

The front door and Triton share the host, so by default tensors travel through system shared
memory rather than the request body. Registering a region costs a round trip, so each backend
keeps a pool of registered slots (one region: the input, then every output); a call holds one
slot for its duration, which makes concurrent calls safe without serialising them.

`shared_memory="cuda"` (the GPU deployment, front door and Triton on one GPU node) keeps the
same slots in GPU memory: regions from `tritonclient.utils.cuda_shared_memory`, registered by
their CUDA IPC handle. An input may then be a torch CUDA tensor (frames prepared on the GPU
by `portrait.kernels`): it is copied device to device into the slot through DLPack. A numpy
input is copied host to device. Outputs are copied back to host numpy, because the stages
after each model call still run on the CPU over numpy; keeping them on the GPU would need
those stages on torch first. This mode needs a CUDA GPU, a CUDA build of PyTorch (it views
the slots as tensors) and cuda-python (`tritonclient[cuda]`); without them the backend
refuses at construction.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from portrait.backends.base import BackendError
from portrait.modelrepo.specs import BY_NAME, ModelSpec

if TYPE_CHECKING:
    import torch

_ALIGN = 64  # outputs start on cache-line boundaries inside a slot
READY_PROBE_S = 2.0


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


def _shared_memory_kind(shared_memory: bool | str) -> str | None:
    """True or "system" -> "system", "cuda" -> "cuda", False -> None (tensors in the body)."""
    if shared_memory is True or shared_memory == "system":
        return "system"
    if shared_memory == "cuda":
        return "cuda"
    if shared_memory is False:
        return None
    raise ValueError(f"shared_memory must be True, False, 'system' or 'cuda', not {shared_memory!r}")


def _cuda_shared_memory(url: str, device: int) -> tuple[Any, Any]:
    """(tritonclient's cuda_shared_memory module, torch) once CUDA shared memory can work on
    `device`; otherwise BackendError saying what is missing. Starts nothing on the GPU."""
    def refuse(reason: str) -> BackendError:
        return BackendError(f"Triton at {url}: CUDA shared memory needs {reason}; "
                            "use shared_memory='system' (or True) on a machine without a GPU")

    try:
        import torch
    except ImportError:
        raise refuse("PyTorch with CUDA (it is not installed)") from None
    if not torch.cuda.is_available():
        raise refuse(f"a CUDA GPU (PyTorch {torch.__version__} sees none)")
    if not 0 <= device < torch.cuda.device_count():
        raise refuse(f"CUDA device {device} (PyTorch sees {torch.cuda.device_count()})")
    try:
        import tritonclient.utils.cuda_shared_memory as cudashm
    except (ImportError, RuntimeError) as error:  # RuntimeError: cuda-python is missing
        raise refuse(f"cuda-python, i.e. tritonclient[cuda] ({_reason(error)})") from None
    return cudashm, torch


@dataclass
class _Slot:
    name: str  # Triton's region name; for system memory the /dev/shm key is "/" + name
    region: Any  # shm.SharedMemoryRegion, or cuda_shared_memory's CudaSharedMemoryRegion
    nbytes: int
    view: torch.Tensor | None = None  # CUDA slots: the region as a uint8 tensor [nbytes]


class TritonBackend:
    name = "triton"

    def __init__(self, url: str = "127.0.0.1:8001", models: list[str] | None = None,
                 shared_memory: bool | str = True, timeout_s: float = 30.0,
                 shm_bytes_per_slot: int = 8 << 20, slots: int = 4, cuda_device: int = 0) -> None:
        """`shared_memory`: True or "system" (host shared memory), "cuda" (GPU memory on
        `cuda_device`, see the module's text) or False (tensors in the request body).
        `shm_bytes_per_slot` fits one 640x640 detector frame with its outputs; a slot that
        a call outgrows is replaced by a larger one. `slots` are registered up front; more are
        added while every slot is in use."""
        kind = _shared_memory_kind(shared_memory)
        self._cudashm = self._torch = None
        self._errors: tuple[type[Exception], ...] = (InferenceServerException, shm.SharedMemoryException)
        if kind == "cuda":  # before any connection: no GPU is a configuration error, not a network one
            self._cudashm, self._torch = _cuda_shared_memory(url, cuda_device)
            self._errors += (self._cudashm.CudaSharedMemoryException,)
        self.url = url
        self.models = list(models or BY_NAME)
        self.shared_memory = shared_memory
        self.shm_kind = kind
        self.cuda_device = cuda_device
        self.timeout_s = timeout_s
        # pid and uuid: two processes (or two backends) never share a region name.
        self.shm_prefix = f"portrait-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._slot_bytes = shm_bytes_per_slot
        self._client = grpcclient.InferenceServerClient(url)
        self._lock = threading.Lock()
        self._free: list[_Slot] = []
        self._slots: dict[str, _Slot] = {}  # every region this backend still owns
        # Regions Triton still holds (unregistering was refused), by name: system memory is
        # already unlinked (None); CUDA memory stays allocated here until Triton lets go.
        self._draining: dict[str, Any] = {}
        self._serial = itertools.count()
        self._closed = False
        try:
            self._check_models()
            if kind is not None:
                self._free.extend(self._create(shm_bytes_per_slot) for _ in range(slots))
        except self._errors as error:
            self.close()
            raise BackendError(f"Triton at {url}: cannot set up {kind} shared memory: {_reason(error)}") from None
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

    def infer(self, model: str, batch: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """float32 batch -> every output by name, as host numpy. A torch CUDA tensor is taken
        as it is only with shared_memory="cuda" (copied on the GPU into the slot)."""
        spec = BY_NAME[model]
        if self._torch is not None and isinstance(batch, self._torch.Tensor):
            batch = batch.to(self._torch.float32).contiguous()
            if not batch.is_cuda:
                batch = batch.numpy()
        else:
            batch = np.ascontiguousarray(batch, np.float32)
        try:
            if self.shm_kind is not None:
                return self._infer_shared(spec, batch)
            return self._infer_body(spec, batch)
        except self._errors as error:
            raise BackendError(f"Triton at {self.url}, model {model}: {_reason(error)}") from None

    def _infer_body(self, spec: ModelSpec, batch: np.ndarray) -> dict[str, np.ndarray]:
        tensor = grpcclient.InferInput(spec.input.name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        outputs = [grpcclient.InferRequestedOutput(t.name) for t in spec.outputs]
        result = self._client.infer(spec.name, [tensor], outputs=outputs, client_timeout=self.timeout_s)
        return {t.name: result.as_numpy(t.name) for t in spec.outputs}

    def _infer_shared(self, spec: ModelSpec, batch: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        shape = tuple(batch.shape)
        input_nbytes = math.prod(shape) * np.dtype(np.float32).itemsize
        layout: dict[str, tuple[int, int]] = {}  # output -> (offset, bytes) inside the slot
        offset = _aligned(input_nbytes)
        for name, nbytes in output_nbytes(spec, shape).items():
            layout[name] = (offset, nbytes)
            offset = _aligned(offset + nbytes)
        slot = self._acquire(offset)
        try:
            self._write_input(slot, batch)
            tensor = grpcclient.InferInput(spec.input.name, list(shape), "FP32")
            tensor.set_shared_memory(slot.name, input_nbytes)
            outputs = []
            for name, (start, nbytes) in layout.items():
                outputs.append(grpcclient.InferRequestedOutput(name))
                outputs[-1].set_shared_memory(slot.name, nbytes, start)
            result = self._client.infer(spec.name, [tensor], outputs=outputs, client_timeout=self.timeout_s)
            arrays = {
                name: self._read_output(slot, start, list(result.get_output(name).shape))
                for name, (start, _) in layout.items()
            }
        except BaseException:
            # After a timeout Triton may still write into this slot: no other call may get it.
            self._retire(slot)
            raise
        self._release(slot)
        return arrays

    def _write_input(self, slot: _Slot, batch: np.ndarray | torch.Tensor) -> None:
        """The input at offset 0 of the slot. CUDA slots take a numpy array (host to device)
        or a contiguous float32 CUDA tensor (device to device, through DLPack; tritonclient
        orders the copy after the tensor's pending work and waits for it)."""
        if self._cudashm is None:
            shm.set_shared_memory_region(slot.region, [batch])
        elif isinstance(batch, np.ndarray):
            self._cudashm.set_shared_memory_region(slot.region, [batch])
        else:
            self._cudashm.set_shared_memory_region_from_dlpack(slot.region, [batch])

    def _read_output(self, slot: _Slot, start: int, shape: list[int]) -> np.ndarray:
        """A float32 output at byte `start` of the slot, copied to host numpy. CUDA slots are
        read through their tensor view: cuda_shared_memory's get_contents_as_numpy reads only
        from offset 0 (and copies the whole region)."""
        if self._cudashm is None:
            return shm.get_contents_as_numpy(slot.region, np.float32, shape, start).copy()
        nbytes = math.prod(shape) * np.dtype(np.float32).itemsize
        # Triton finished writing before it answered; .cpu() is a blocking copy.
        return slot.view[start:start + nbytes].view(self._torch.float32).reshape(shape).cpu().numpy()

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
        if self._cudashm is None:
            slot = _Slot(name, shm.create_shared_memory_region(name, "/" + name, nbytes, create_only=True), nbytes)
        else:
            region = self._cudashm.create_shared_memory_region(name, nbytes, self.cuda_device)
            view = self._torch.from_dlpack(self._cudashm.as_shared_memory_tensor(region, "UINT8", [nbytes]))
            slot = _Slot(name, region, nbytes, view)
        with self._lock:
            self._slots[name] = slot
        try:
            if self._cudashm is None:
                self._client.register_system_shared_memory(name, "/" + name, nbytes, client_timeout=self.timeout_s)
            else:
                self._client.register_cuda_shared_memory(
                    name, self._cudashm.get_raw_handle(slot.region), self.cuda_device, nbytes,
                    client_timeout=self.timeout_s)
        except BaseException:
            self._retire(slot)
            raise
        return slot

    def _unregister(self, name: str) -> None:
        if self._cudashm is None:
            self._client.unregister_system_shared_memory(name, client_timeout=self.timeout_s)
        else:
            self._client.unregister_cuda_shared_memory(name, client_timeout=self.timeout_s)

    def _retire(self, slot: _Slot) -> None:
        """Unregister and unlink (or free). Triton refuses to unregister a region that a
        request it is still running uses (one whose deadline we gave up on): such a name is
        retried later. Meanwhile Triton's own mapping keeps system memory valid; CUDA memory
        is kept allocated here (in `_draining`) until Triton lets go, or until close."""
        with self._lock:
            if self._slots.pop(slot.name, None) is None:
                return
        try:
            self._unregister(slot.name)
        except InferenceServerException as error:
            if not _server_down(error):  # a server that is down holds no registrations
                with self._lock:
                    self._draining[slot.name] = None if self._cudashm is None else slot.region
        if self._cudashm is None:
            shm.destroy_shared_memory_region(slot.region)
        else:
            slot.view = None  # the tensor view must not outlive the memory
            # Drops tritonclient's reference; cudaFree runs once the last one (ours in
            # `_draining`, if any) is gone.
            self._cudashm.destroy_shared_memory_region(slot.region)

    def _drain(self, wait_s: float = 0.0) -> None:
        """Retry unregistering the regions Triton refused, for up to `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                names = list(self._draining)
            for name in names:
                try:
                    self._unregister(name)
                except InferenceServerException as error:
                    if not _server_down(error):
                        continue
                with self._lock:
                    self._draining.pop(name, None)
            if not names or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def ready(self) -> bool:
        if self._closed:
            return False
        probe = min(self.timeout_s, READY_PROBE_S)  # a hung server must not hang the probe
        try:
            return self._client.is_server_ready(client_timeout=probe) and all(
                self._client.is_model_ready(m, client_timeout=probe) for m in self.models)
        except InferenceServerException:
            return False

    def close(self) -> None:
        """Unregister and unlink every region; call once in-flight calls have returned. CUDA
        regions Triton still holds after `timeout_s` are freed anyway (Triton's IPC mapping
        of them is then its own to close)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._free.clear()
            slots = list(self._slots.values())
        for slot in slots:
            self._retire(slot)
        self._drain(wait_s=self.timeout_s)
        with self._lock:
            self._draining.clear()
        self._client.close()
