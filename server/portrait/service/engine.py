"""Everything a request needs, built once at start-up: backend and batcher, pipeline
configuration, security objects, metrics and the worker threads.

Pipeline work is CPU-bound and synchronous, so it runs on a bounded thread pool; the event
loop only parses uploads, authenticates and waits. Each request gets a view of the shared
batcher that carries its deadline and cancellation, so abandoned work is dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from portrait.backends import InferenceBackend, backend_from_settings
from portrait.batching import BatchingBackend, BatchPolicy
from portrait.frames import frame_ops
from portrait.media import decoder
from portrait.modelrepo.repository import read_manifest
from portrait.modelrepo.specs import BY_NAME
from portrait.pipeline import Pipeline, PipelineConfig
from portrait.security.keys import ApiKeys
from portrait.security.limits import InFlightLimiter, RateLimiter
from portrait.security.nonces import MemoryNonceStore, NonceStore, RedisNonceStore
from portrait.security.receipts import ReceiptSigner, generate_key
from portrait.security.tokens import ChallengeSigner
from portrait.service.metrics import Metrics
from portrait.settings import Settings

log = logging.getLogger("portrait.service")
T = TypeVar("T")


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


class Engine:
    def __init__(self, settings: Settings, backend: InferenceBackend | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.keys = ApiKeys.load(settings.api_keys, settings.api_keys_file)
        secret = settings.challenge_secret.encode() or secrets.token_bytes(32)
        if not settings.challenge_secret:
            log.warning("PORTRAIT_CHALLENGE_SECRET is not set: challenges are valid on this process only")
        self.challenges = ChallengeSigner(secret, ttl_s=settings.challenge_ttl_s)
        self.nonces: NonceStore = RedisNonceStore(settings.redis_url) if settings.redis_url else MemoryNonceStore()
        if settings.receipt_key_file:
            key_pem = settings.receipt_key_file.read_bytes()
        else:
            log.warning("PORTRAIT_RECEIPT_KEY_FILE is not set: receipts are signed with a key made for this process")
            key_pem = generate_key()
        self.receipts = ReceiptSigner(key_pem)
        self.rate = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.in_flight = InFlightLimiter(settings.max_in_flight_per_tenant)
        self.decode = decoder(settings.decoder)
        self.inner = backend or backend_from_settings(settings)
        self.batcher = BatchingBackend(self.inner, _policies(settings), observer=BatcherObserver(self.metrics))
        self.config = PipelineConfig()
        # With the GPU frame path and Triton, model inputs stay on the device (CUDA shared memory).
        self.frames = frame_ops(settings.frames, keep_on_device=settings.frames == "gpu" and settings.backend == "triton")
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="pipeline")
        self.models = [{"name": r.name, "version": r.version, "sha256": r.sha256}
                       for r in read_manifest(settings.model_repository).values()]
        for model in self.models:
            self.metrics.models.labels(model["name"]).info({"version": model["version"], "sha256": model["sha256"]})
        self.draining = False
        self.admitted = 0  # requests running or waiting for a worker; touched only on the event loop

    def pipeline(self, deadline: float, cancelled: threading.Event) -> Pipeline:
        return Pipeline(RequestBackend(self.batcher, deadline, cancelled), self.config, self.frames)

    async def run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def has_room(self) -> bool:
        """Bounded admission: the executor's own queue is unbounded, so cap it here."""
        return self.admitted < self.settings.workers + self.settings.max_waiting

    def ready(self) -> tuple[bool, str | None]:
        if self.draining:
            return False, "shutting down"
        up = self.inner.ready()
        self.metrics.backend_up.set(1 if up else 0)
        return (True, None) if up else (False, f"{self.inner.name} backend not ready")

    def close(self) -> None:
        self.draining = True
        self.batcher.drain(timeout_s=self.settings.request_timeout_s)
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.batcher.close()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()



def _policies(settings: Settings) -> dict[str, BatchPolicy]:
    """Queues hold what every worker may submit at once (two eye crops per frame): queued
    items are views of arrays the requests already hold, so the bound on memory is the
    number of workers, and a queue fills only when work is piling up behind the model."""
    policies = {}
    for name, spec in BY_NAME.items():
        rows = min(spec.max_batch_size, settings.batch_max_rows or spec.max_batch_size)
        per_request = 2 * (settings.video_max_frames + 1)
        policies[name] = BatchPolicy(max_batch=rows, max_delay_ms=settings.batch_max_delay_ms,
                                     max_queue_rows=max(8 * spec.max_batch_size, settings.workers * per_request))
    return policies
