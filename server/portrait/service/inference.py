"""Inference for the service, apart from security: the backend and its batcher, the
decoders and frame path, the pipeline threads, and the fair hand-out of those threads.

Pipeline work is CPU-bound and synchronous, so it runs on a fixed pool of `workers`
threads; the event loop only waits. Requests waiting for a thread queue per tenant and are
served round-robin, so a tenant that floods the service waits behind itself, not in front
of the others. Each request gets a view of the shared batcher that carries its deadline and
cancellation, so abandoned work is dropped. Once no request has run for
`MEMORY_RELEASE_IDLE_S`, memory is handed back (`service/idle.py`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

import cv2
import numpy as np

from portrait.backends import InferenceBackend, backend_from_settings
from portrait.batching import BatchingBackend, BatchPolicy
from portrait.frames import frame_ops
from portrait.media import decoder
from portrait.media.video import decoder_threads
from portrait.modelrepo.specs import BY_NAME
from portrait.pipeline import CALIBRATION, Pipeline, config_from_record
from portrait.service.idle import release_memory
from portrait.service.metrics import Metrics
from portrait.settings import Settings, usable_cores

T = TypeVar("T")


def one_opencv_thread() -> None:
    """Run OpenCV on the calling thread. Requests already run side by side on the workers,
    and OpenCV's own pool on top of them only hands rows between threads: with one thread,
    about 2 % more verifications a second at concurrency 4 on 2 cores (seven paired runs), a
    request alone no slower, every dev answer the same bit for bit (README: lever 7).
    Process-wide, as OpenCV's pool is."""
    cv2.setNumThreads(1)


class FairWorkers:
    """`size` places shared round-robin by tenant; lives on the event loop."""

    def __init__(self, size: int) -> None:
        self.size = self.free = size
        self._waiting: dict[str, deque[asyncio.Future]] = {}  # insertion order is the turn order

    async def acquire(self, tenant: str) -> None:
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(tenant, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # granted as it was cancelled: pass the place on
            else:
                queue = self._waiting.get(tenant)
                if queue is not None and turn in queue:
                    queue.remove(turn)
                    if not queue:
                        del self._waiting[tenant]
            raise

    def release(self) -> None:
        while self._waiting:
            tenant = next(iter(self._waiting))
            queue = self._waiting.pop(tenant)
            turn = queue.popleft()
            if queue:
                self._waiting[tenant] = queue  # to the back of the line
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1

    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    def running(self) -> int:
        """Places in use. Read from worker threads too: a plain int, at worst a moment old."""
        return self.size - self.free

    def idle(self) -> bool:
        return self.free == self.size and not self._waiting


class BatcherObserver:
    """Feeds the batcher's measurements into Prometheus."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def batch(self, model: str, rows: int, items: int, seconds: float) -> None:
        self.metrics.batch_rows.labels(model).observe(rows)
        self.metrics.batch_requests.labels(model).observe(items)
        self.metrics.batch_seconds.labels(model).observe(seconds)

    def queue_wait(self, model: str, seconds: float) -> None:
        self.metrics.queue_wait.labels(model).observe(seconds)

    def queue_depth(self, model: str, rows: int) -> None:
        self.metrics.queue_depth.labels(model).set(rows)

    def dropped(self, model: str, reason: str) -> None:
        self.metrics.dropped.labels(model, reason).inc()


@dataclass
class RequestBackend:
    """The shared batcher as one request sees it: with its deadline and cancellation."""

    batcher: BatchingBackend
    deadline: float
    cancelled: threading.Event
    name: str = "batched"

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.batcher.infer(model, batch, deadline=self.deadline, cancelled=self.cancelled.is_set)

    def ready(self) -> bool:
        return self.batcher.ready()

    def close(self) -> None:
        pass


class Inference:
    def __init__(self, settings: Settings, metrics: Metrics, backend: InferenceBackend | None = None) -> None:
        self.settings = settings
        one_opencv_thread()
        self.decode = decoder(settings.decoder)
        self.inner = backend or backend_from_settings(settings)
        self.batcher = BatchingBackend(self.inner, batch_policies(settings), observer=BatcherObserver(metrics))
        self.config = config_from_record(settings.calibration or CALIBRATION, detect_every=settings.video_detect_every)
        # With the GPU frame path and Triton, model inputs stay on the device (CUDA shared memory).
        self.frames = frame_ops(settings.frames, keep_on_device=settings.frames == "gpu" and settings.backend == "triton")
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="pipeline")
        self.workers = FairWorkers(settings.workers)
        self.cores = usable_cores()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed = False

    def decode_threads(self) -> int:
        """FFmpeg threads for a video decode starting now: the cores shared among the
        requests running."""
        return decoder_threads(self.workers.running(), self.cores)

    def pipeline(self, deadline: float, cancelled: threading.Event) -> Pipeline:
        return Pipeline(RequestBackend(self.batcher, deadline, cancelled), self.config, self.frames)

    async def run(self, tenant: str, work: Callable[[], T], started: Callable[[], None]) -> T:
        """Wait for this tenant's turn at a worker, then run `work` on it. Cancellable while
        waiting; once `started` is called the work runs to its end (stop it through its
        cancellation event, never by cancelling this coroutine)."""
        await self.workers.acquire(tenant)
        try:
            started()
            return await asyncio.get_running_loop().run_in_executor(self.executor, work)
        finally:
            self.workers.release()
            if self.workers.idle():
                self._release_memory_when_idle()

    def _release_memory_when_idle(self) -> None:
        """In MEMORY_RELEASE_IDLE_S, if no request has run since, release memory (off the loop)."""
        delay = self.settings.memory_release_idle_s
        if not delay:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        loop = asyncio.get_running_loop()

        def still_idle() -> None:
            self._idle_timer = None
            if self.workers.idle() and not self._closed:
                loop.run_in_executor(None, release_memory, self.inner)

        self._idle_timer = loop.call_later(delay, still_idle)

    def ready(self) -> tuple[bool, str | None]:
        up = self.inner.ready()
        return (True, None) if up else (False, f"{self.inner.name} backend not ready")

    def close(self) -> None:
        self._closed = True
        self.batcher.drain(timeout_s=self.settings.request_timeout_s)
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.batcher.close()


def batch_policies(settings: Settings) -> dict[str, BatchPolicy]:
    """Queues hold what every worker may submit at once (two eye crops per frame): queued
    items are views of arrays the requests already hold, so the bound on memory is the
    number of workers, and a queue fills only when work is piling up behind the model."""
    policies = {}
    for name, spec in BY_NAME.items():
        rows = min(spec.max_batch_size, settings.batch_max_rows or spec.max_batch_size)
        per_request = 2 * (settings.video_max_frames + 1)
        policies[name] = BatchPolicy(max_batch=rows, max_delay_ms=settings.batch_max_delay_ms,
                                     max_queue_rows=max(8 * spec.max_batch_size, settings.workers * per_request),
                                     concurrency=settings.concurrent_model_calls())
    return policies
