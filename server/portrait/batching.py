"""Cross-request micro-batching in front of an inference backend.

Many requests run the synchronous pipeline at once, each in its own worker thread, and each
calls `backend.infer(model, batch)` with a handful of rows. `BatchingBackend` wraps the real
backend and turns those small calls into few large ones:

- one bounded queue per model and `concurrency` worker threads for it (started on the model's
  first call), so that as many calls of one model run at once as the backend can run side by
  side (OpenVINO runs one call per stream; a single worker left a core idle);
- `infer` splits the caller's batch into queue items of at most `max_batch` rows, enqueues them
  and blocks on one `concurrent.futures.Future` per item, then returns exactly its own rows (the
  items of an oversized batch are reassembled in order);
- a worker waits until `max_batch` rows of one kind are queued or `max_delay_ms` has passed
  since the oldest queued item, takes the oldest item and the queued items of the same kind
  (same trailing shape and dtype; others wait for a later batch) up to `max_batch` rows,
  concatenates them, makes ONE call on the wrapped backend, splits every output back by rows
  and resolves each future. A wrapped call never has more than `max_batch` rows.

Admission control: a model queue holds at most `max_queue_rows` rows. A call that does not fit
raises `QueueFull(model, retry_after_s)` at once, with nothing enqueued; the front door answers
429/503 with Retry-After. The estimate is the number of batches ahead of the caller times the
recent (moving average) duration of one wrapped call.

Deadlines (`time.monotonic()` values) and cancellation (`cancelled()`, e.g. `Event.is_set`):
a call whose deadline has passed or that is cancelled raises before it is enqueued; a queued
item whose deadline has passed or whose `cancelled()` is true when the worker takes it is
dropped without a model call (its caller gets `DeadlineExceeded` or `Cancelled`); and a caller
still waiting at its deadline withdraws its items that the worker has not taken yet and raises
`DeadlineExceeded` then, so abandoned requests stop costing model time. `cancelled()` runs on
the worker thread under the queue lock: it must be cheap and must not block.

Errors: an exception from the wrapped call is set on every future of that batch, so every
caller of the batch receives the same exception object; the worker keeps serving.

Shutdown: `drain(timeout_s)` waits until every queue is empty and no batch is running (it does
not refuse new work; the front door stops admitting first). `close()` refuses new calls, FAILS
every queued item that no batch has taken yet with `BatcherClosed` (a `BackendError`, so the
front door answers 503), lets the batches already running in the wrapped backend finish and
deliver their results, stops the workers and then closes the wrapped backend. For a graceful
stop call `drain()` first, then `close()`.

Observability: an optional observer (see `BatchObserver`) receives batch sizes and durations,
queue waits, queue depths and drops; `stats()` returns counters per model for benchmarks.
Observer methods are called from the worker and the calling threads (`queue_depth` under the
queue lock); they must be quick, must not raise and must not call back into the batcher.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from portrait.backends.base import BackendError, InferenceBackend
from portrait.modelrepo.specs import BY_NAME

log = logging.getLogger("portrait.batching")

__all__ = [
    "BatchObserver",
    "BatchPolicy",
    "BatcherClosed",
    "BatchingBackend",
    "BatchingError",
    "Cancelled",
    "DeadlineExceeded",
    "NullObserver",
    "QueueFull",
]

DEFAULT_MAX_DELAY_MS = 5.0
DEFAULT_QUEUE_BATCHES = 8  # max_queue_rows = this * max_batch unless set


class BatchingError(RuntimeError):
    """Base of the errors raised by the batcher itself (not by the wrapped backend)."""


class QueueFull(BatchingError):
    """The model's queue cannot take the call's rows now; nothing was enqueued."""

    def __init__(self, model: str, retry_after_s: float) -> None:
        super().__init__(f"batch queue of {model!r} is full; retry after {retry_after_s:.3f} s")
        self.model = model
        self.retry_after_s = retry_after_s


class DeadlineExceeded(BatchingError):
    """The call's deadline passed before its rows were run; they were dropped."""

    def __init__(self, model: str) -> None:
        super().__init__(f"deadline passed before {model!r} ran this call")
        self.model = model


class Cancelled(BatchingError):
    """The call was cancelled (its request went away) before its rows were run."""

    def __init__(self, model: str) -> None:
        super().__init__(f"call to {model!r} cancelled before it ran")
        self.model = model


class BatcherClosed(BatchingError, BackendError):
    """The batcher was closed: new calls are refused and queued, untaken calls fail."""


@dataclass(frozen=True)
class BatchPolicy:
    """How one model batches: rows per wrapped call, longest wait, queue capacity in rows."""

    max_batch: int
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    max_queue_rows: int | None = None  # None: DEFAULT_QUEUE_BATCHES * max_batch
    concurrency: int = 1  # wrapped calls of this model in flight at once (worker threads)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {self.max_batch}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {self.concurrency}")
        if self.max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, not {self.max_delay_ms}")
        if self.max_queue_rows is None:
            object.__setattr__(self, "max_queue_rows", DEFAULT_QUEUE_BATCHES * self.max_batch)
        if self.max_queue_rows < self.max_batch:
            raise ValueError(f"max_queue_rows ({self.max_queue_rows}) must be >= max_batch ({self.max_batch})")


class BatchObserver(Protocol):
    """Receives the batcher's measurements (e.g. to feed Prometheus)."""

    def batch(self, model: str, rows: int, items: int, seconds: float) -> None:
        """One wrapped call: its rows, the queue items merged into it, its duration."""

    def queue_wait(self, model: str, seconds: float) -> None:
        """One item's wait from enqueue until a batch took it."""

    def queue_depth(self, model: str, rows: int) -> None:
        """Rows waiting in the model's queue, after every change."""

    def dropped(self, model: str, reason: str) -> None:
        """One call or item dropped: 'deadline', 'cancelled', 'queue_full' or 'closed'."""


class NullObserver:
    """The default observer: ignores everything."""

    def batch(self, model: str, rows: int, items: int, seconds: float) -> None:
        pass

    def queue_wait(self, model: str, seconds: float) -> None:
        pass

    def queue_depth(self, model: str, rows: int) -> None:
        pass

    def dropped(self, model: str, reason: str) -> None:
        pass


class _Item:
    """Up to max_batch rows of one caller, waiting for a batch."""

    __slots__ = ("array", "rows", "key", "deadline", "cancelled", "enqueued", "future")

    def __init__(self, array: np.ndarray, deadline: float | None, cancelled: Callable[[], bool] | None,
                 enqueued: float) -> None:
        self.array = array
        self.rows = array.shape[0]
        # Rows join only with rows of the same shape, type and place (host or device).
        self.key = (tuple(array.shape[1:]), str(array.dtype), str(getattr(array, "device", "host")))
        self.deadline = deadline
        self.cancelled = cancelled
        self.enqueued = enqueued
        self.future: Future = Future()


class _ModelQueue:
    """The queue, worker thread and counters of one model. All state is guarded by `lock`."""

    def __init__(self, owner: BatchingBackend, model: str, policy: BatchPolicy) -> None:
        self.owner = owner
        self.model = model
        self.policy = policy
        self.delay_s = policy.max_delay_ms / 1000.0
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # the worker waits here for items
        self.idle = threading.Condition(self.lock)  # drain() waits here for an empty queue
        self.items: deque[_Item] = deque()  # may hold items their callers withdrew (future cancelled)
        self.rows = 0  # rows of live (not withdrawn) items
        self.rows_by_key: dict[tuple, int] = {}
        self.running = 0  # batches in the wrapped backend
        self.closed = False
        self.call_seconds: float | None = None  # moving average of one wrapped call
        self.batches = 0
        self.total_rows = 0
        self.total_items = 0
        self.max_rows = 0
        self.drops: dict[str, int] = {}
        self.threads = [threading.Thread(target=self._run, name=f"batcher-{model}-{i}", daemon=True)
                        for i in range(policy.concurrency)]
        for thread in self.threads:
            thread.start()

    # -- caller side (lock held by the caller of these helpers where noted) --

    def retry_after(self, extra_rows: int) -> float:
        """Seconds until the queue has probably room for `extra_rows` more rows. Lock held."""
        batches = math.ceil((self.rows + extra_rows) / self.policy.max_batch)
        waves = math.ceil(batches / self.policy.concurrency) + (1 if self.running else 0)
        per_batch = self.call_seconds if self.call_seconds is not None else max(self.delay_s, 0.01)
        return max(waves * per_batch, 0.01)

    def enqueue(self, parts: list[np.ndarray], deadline: float | None,
                cancelled: Callable[[], bool] | None) -> list[_Item]:
        rows = sum(p.shape[0] for p in parts)
        with self.lock:
            if self.closed:
                raise BatcherClosed(f"batcher closed: {self.model!r} takes no new calls")
            if self.rows + rows > self.policy.max_queue_rows:
                error = QueueFull(self.model, self.retry_after(rows))
            else:
                error = None
                now = time.monotonic()
                items = [_Item(p, deadline, cancelled, now) for p in parts]
                wake = not self.items
                for item in items:
                    self.items.append(item)
                    self.rows_by_key[item.key] = self.rows_by_key.get(item.key, 0) + item.rows
                    wake = wake or self.rows_by_key[item.key] >= self.policy.max_batch
                self.rows += rows
                if wake:
                    self.work.notify()
                self.owner._observe("queue_depth", self.model, self.rows)
        if error is not None:
            self.owner._dropped(self, "queue_full")
            raise error
        return items

    def withdraw(self, items: list[_Item]) -> None:
        """Remove the items that no batch has taken yet (their callers stopped waiting)."""
        with self.lock:
            for item in items:
                if item.future.cancel():  # False once a batch took it or it was resolved
                    self._forget(item)
            if self.rows == 0 and not self.running:
                self.idle.notify_all()
            self.owner._observe("queue_depth", self.model, self.rows)

    def _forget(self, item: _Item) -> None:
        """Take a live item out of the row counts. Lock held."""
        self.rows -= item.rows
        left = self.rows_by_key[item.key] - item.rows
        if left:
            self.rows_by_key[item.key] = left
        else:
            del self.rows_by_key[item.key]

    # -- worker side --

    def _run(self) -> None:
        while True:
            with self.lock:
                batch, dropped = self._wait_and_take()
                if batch is None:
                    return
                if batch:
                    self.running += 1
                if self.items:
                    self.work.notify()  # another worker may take the next batch now
                self.owner._observe("queue_depth", self.model, self.rows)
            for item, reason in dropped:
                error = DeadlineExceeded(self.model) if reason == "deadline" else Cancelled(self.model)
                item.future.set_exception(error)
                self.owner._dropped(self, reason)
            if batch:
                try:
                    self._execute(batch)
                finally:
                    with self.lock:
                        self.running -= 1
                        if self.rows == 0 and not self.running:
                            self.idle.notify_all()

    def _wait_and_take(self) -> tuple[list[_Item] | None, list[tuple[_Item, str]]]:
        """Block until a batch is due, then take it. Lock held. None: closed, stop."""
        items = self.items
        while True:
            while items and items[0].future.cancelled():
                items.popleft()  # withdrawn by its caller, already out of the counts
            if self.closed:
                return None, []
            if not items:
                self.idle.notify_all()
                self.work.wait()
                continue
            head = items[0]
            if self.rows_by_key[head.key] >= self.policy.max_batch:
                break
            remaining = head.enqueued + self.delay_s - time.monotonic()
            if remaining <= 0:
                break
            self.work.wait(remaining)
        return self._take(time.monotonic())

    def _take(self, now: float) -> tuple[list[_Item], list[tuple[_Item, str]]]:
        """The oldest item and the queued items of its kind, up to max_batch rows, in order. Lock held."""
        items, limit = self.items, self.policy.max_batch
        taken: list[_Item] = []
        skipped: list[_Item] = []
        dropped: list[tuple[_Item, str]] = []
        key = None
        rows = 0
        while items:
            item = items.popleft()
            if item.future.cancelled():
                continue
            if key is not None and item.key != key:
                skipped.append(item)  # another shape: waits for a later batch, keeps its place
                continue
            reason = _drop_reason(item, now)
            if reason is not None:
                self._forget(item)
                dropped.append((item, reason))
                continue
            if rows + item.rows > limit:
                items.appendleft(item)
                break
            key = item.key
            self._forget(item)
            item.future.set_running_or_notify_cancel()  # from now on its caller cannot withdraw it
            taken.append(item)
            rows += item.rows
            if rows == limit:
                break
        items.extendleft(reversed(skipped))
        return taken, dropped

    def _execute(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        for item in batch:
            self.owner._observe("queue_wait", self.model, now - item.enqueued)
        arrays = [item.array for item in batch]
        rows = sum(a.shape[0] for a in arrays)
        start = time.monotonic()
        try:
            joined = arrays[0] if len(arrays) == 1 else _join(arrays)
            outputs = self.owner.inner.infer(self.model, joined)
            for name, value in outputs.items():
                if np.ndim(value) == 0 or value.shape[0] != rows:
                    raise BackendError(f"{self.model!r} output {name!r} has shape {np.shape(value)} "
                                       f"for a batch of {rows} rows")
        except BaseException as error:  # every caller of this batch gets the same exception
            seconds = time.monotonic() - start
            for item in batch:
                item.future.set_exception(error)
            self._record(rows, len(batch), seconds)
            return  # and the worker keeps serving
        seconds = time.monotonic() - start
        if len(batch) == 1:
            batch[0].future.set_result(outputs)
        else:
            bounds = np.cumsum([a.shape[0] for a in arrays[:-1]])
            pieces = {name: np.split(value, bounds) for name, value in outputs.items()}
            for index, item in enumerate(batch):
                item.future.set_result({name: parts[index] for name, parts in pieces.items()})
        self._record(rows, len(batch), seconds)

    def _record(self, rows: int, items: int, seconds: float) -> None:
        with self.lock:
            self.batches += 1
            self.total_rows += rows
            self.total_items += items
            self.max_rows = max(self.max_rows, rows)
            self.call_seconds = seconds if self.call_seconds is None else 0.8 * self.call_seconds + 0.2 * seconds
        self.owner._observe("batch", self.model, rows, items, seconds)

    # -- shutdown --

    def close(self) -> list[_Item]:
        """Refuse new calls; return the queued, untaken items for the owner to fail."""
        with self.lock:
            self.closed = True
            failed = [item for item in self.items if item.future.set_running_or_notify_cancel()]
            self.items.clear()
            self.rows = 0
            self.rows_by_key.clear()
            self.work.notify_all()
            self.idle.notify_all()
            self.owner._observe("queue_depth", self.model, 0)
        return failed

    def wait_idle(self, until: float) -> bool:
        with self.lock:
            while self.rows > 0 or self.running:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return False
                self.idle.wait(remaining)
            return True

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "batches": self.batches,
                "rows": self.total_rows,
                "items": self.total_items,
                "mean_batch_rows": self.total_rows / self.batches if self.batches else 0.0,
                "max_batch_rows": self.max_rows,
                "queued_rows": self.rows,
                "dropped": dict(self.drops),
                "max_batch": self.policy.max_batch,
                "concurrency": self.policy.concurrency,
            }


def _join(arrays: list) -> Any:
    """Concatenate callers' rows where they are: NumPy on the host, PyTorch tensors on their
    device (the GPU path hands the Triton backend device tensors for CUDA shared memory)."""
    if isinstance(arrays[0], np.ndarray):
        return np.concatenate(arrays, axis=0)
    import torch

    return torch.cat(arrays, dim=0)


def _drop_reason(item: _Item, now: float) -> str | None:
    if item.deadline is not None and now >= item.deadline:
        return "deadline"
    if item.cancelled is not None:
        try:
            if item.cancelled():
                return "cancelled"
        except Exception:
            log.exception("cancelled() of a queued call failed; dropping the call")
            return "cancelled"
    return None


class BatchingBackend:
    """An `InferenceBackend` that merges concurrent calls per model into few wrapped calls."""

    def __init__(
        self,
        inner: InferenceBackend,
        policies: dict[str, BatchPolicy] | None = None,
        default: BatchPolicy | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        """`policies` by model name; other models use `default` (its max_batch capped at the
        model's `max_batch_size` in the specs), else max_batch = the spec's `max_batch_size`,
        max_delay_ms = 5, max_queue_rows = 8 * max_batch."""
        self.inner = inner
        self.name = f"batched({getattr(inner, 'name', 'backend')})"
        self.policies = dict(policies or {})
        for model, policy in self.policies.items():
            spec = BY_NAME.get(model)
            if spec is not None and policy.max_batch > spec.max_batch_size:
                raise ValueError(f"{model!r}: max_batch {policy.max_batch} exceeds the model's "
                                 f"max_batch_size {spec.max_batch_size}")
        self.default = default
        self.observer: BatchObserver = observer or NullObserver()
        self._queues: dict[str, _ModelQueue] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- InferenceBackend --

    def infer(
        self,
        model: str,
        batch: np.ndarray,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run `model` on `batch` [N, ...] as part of a shared batch; return its N rows of every
        output. Blocks until done. Raises `QueueFull` (nothing enqueued), `DeadlineExceeded`
        (`deadline` is a `time.monotonic()` value), `Cancelled`, `BatcherClosed`, or whatever
        the wrapped backend raised for the batch these rows were in."""
        if not hasattr(batch, "shape"):
            batch = np.asarray(batch)
        if batch.ndim == 0:
            raise ValueError("batch must have a leading batch dimension")
        queue = self._queue(model)
        if deadline is not None and time.monotonic() >= deadline:
            self._dropped(queue, "deadline")
            raise DeadlineExceeded(model)
        if cancelled is not None and cancelled():
            self._dropped(queue, "cancelled")
            raise Cancelled(model)
        rows = batch.shape[0]
        if rows == 0:
            return self.inner.infer(model, batch)
        limit = queue.policy.max_batch
        if rows > queue.policy.max_queue_rows:
            raise ValueError(f"a batch of {rows} rows can never fit the {model!r} queue "
                             f"({queue.policy.max_queue_rows} rows); split it")
        parts = [batch] if rows <= limit else [batch[i : i + limit] for i in range(0, rows, limit)]
        items = queue.enqueue(parts, deadline, cancelled)
        try:
            results = [self._wait(queue, item, deadline) for item in items]
        except BaseException:
            queue.withdraw(items)  # the rest of an oversized call is not worth running
            raise
        if len(results) == 1:
            return results[0]
        return {name: np.concatenate([r[name] for r in results], axis=0) for name in results[0]}

    def ready(self) -> bool:
        return not self._closed and self.inner.ready()

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new calls, fail queued untaken calls with `BatcherClosed`, let running batches
        finish (waiting up to `timeout_s` for the workers), then close the wrapped backend."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queues = list(self._queues.values())
        for queue in queues:
            for item in queue.close():
                item.future.set_exception(BatcherClosed(f"batcher closed before {queue.model!r} ran this call"))
                self._dropped(queue, "closed")
        until = time.monotonic() + timeout_s
        for queue in queues:
            for thread in queue.threads:
                thread.join(max(0.0, until - time.monotonic()))
            if any(thread.is_alive() for thread in queue.threads):
                log.warning("batcher worker for %s still in a model call after %.1f s", queue.model, timeout_s)
        self.inner.close()

    # -- extras --

    def drain(self, timeout_s: float) -> bool:
        """Wait until every model queue is empty and no batch is running. True if it got there
        within `timeout_s`. Does not refuse new calls."""
        until = time.monotonic() + timeout_s
        with self._lock:
            queues = list(self._queues.values())
        return all([queue.wait_idle(until) for queue in queues])

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per model: batches, rows, items, mean_batch_rows, max_batch_rows, queued_rows,
        dropped (by reason), max_batch."""
        with self._lock:
            queues = list(self._queues.values())
        return {queue.model: queue.stats() for queue in queues}

    def policy(self, model: str) -> BatchPolicy:
        """The policy `model` uses."""
        if model in self.policies:
            return self.policies[model]
        spec = BY_NAME.get(model)
        if self.default is not None:
            if spec is not None and self.default.max_batch > spec.max_batch_size:
                return BatchPolicy(spec.max_batch_size, self.default.max_delay_ms,
                                   max(self.default.max_queue_rows, spec.max_batch_size), self.default.concurrency)
            return self.default
        if spec is None:
            raise KeyError(f"unknown model {model!r}: no batch policy and no spec")
        return BatchPolicy(spec.max_batch_size, DEFAULT_MAX_DELAY_MS)

    # -- internals --

    def _queue(self, model: str) -> _ModelQueue:
        queue = self._queues.get(model)
        if queue is not None:
            return queue
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"batcher closed: {model!r} takes no new calls")
            queue = self._queues.get(model)
            if queue is None:
                queue = self._queues[model] = _ModelQueue(self, model, self.policy(model))
            return queue

    def _wait(self, queue: _ModelQueue, item: _Item, deadline: float | None) -> dict[str, np.ndarray]:
        if deadline is None:
            return item.future.result()
        try:
            return item.future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            if item.future.done():  # resolved right at the deadline
                return item.future.result()
            self._dropped(queue, "deadline")
            raise DeadlineExceeded(queue.model) from None

    def _dropped(self, queue: _ModelQueue, reason: str) -> None:
        with queue.lock:
            queue.drops[reason] = queue.drops.get(reason, 0) + 1
        self._observe("dropped", queue.model, reason)

    def _observe(self, method: str, *args: Any) -> None:
        try:
            getattr(self.observer, method)(*args)
        except Exception:
            log.exception("batch observer %s failed", method)
