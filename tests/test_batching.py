"""Cross-request batching (`portrait.batching`): merging, routing, limits, deadlines, errors,
shutdown and observability, over a fake inner backend, plus one check on the real models."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from portrait.backends.base import BackendError
from portrait.batching import (
    BatchPolicy,
    BatcherClosed,
    BatchingBackend,
    Cancelled,
    DeadlineExceeded,
    QueueFull,
)

MODEL = "m"
SHAPE = (3, 4, 4)


class FakeBackend:
    """A fake inner backend, for failure injection and counting only (not a stand-in for a real
    backend in any other test): outputs are simple functions of each row so that routing can be
    checked, every call is recorded, calls can be held at a gate, and chosen calls can raise."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...], str]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_calls: dict[int, BaseException] = {}  # call index -> exception to raise
        self.closed = False

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            index = len(self.calls)
            self.calls.append((model, batch.shape, batch.dtype.str))
        assert self.gate.wait(10), "test never opened the gate"
        if index in self.fail_calls:
            raise self.fail_calls[index]
        flat = batch.reshape(len(batch), -1)
        return {"first": flat[:, 0].copy(), "sum": flat.sum(axis=1), "double": batch * 2}

    def ready(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True

    def sizes(self) -> list[int]:
        with self.lock:
            return [shape[0] for _, shape, _ in self.calls]


class RecordingObserver:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[tuple[str, int, int, float]] = []
        self.waits: list[float] = []
        self.depths: list[int] = []
        self.drops: list[tuple[str, str]] = []

    def batch(self, model: str, rows: int, items: int, seconds: float) -> None:
        with self.lock:
            self.batches.append((model, rows, items, seconds))

    def queue_wait(self, model: str, seconds: float) -> None:
        with self.lock:
            self.waits.append(seconds)

    def queue_depth(self, model: str, rows: int) -> None:
        with self.lock:
            self.depths.append(rows)

    def dropped(self, model: str, reason: str) -> None:
        with self.lock:
            self.drops.append((model, reason))


def wait_until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.002)


def rows(value: float, n: int = 1, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.full((n, *shape), value, np.float32)


def expect(batch: np.ndarray) -> dict[str, np.ndarray]:
    flat = batch.reshape(len(batch), -1)
    return {"first": flat[:, 0], "sum": flat.sum(axis=1), "double": batch * 2}


def assert_outputs(got: dict[str, np.ndarray], batch: np.ndarray) -> None:
    want = expect(batch)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.fixture
def fake():
    backend = FakeBackend()
    yield backend
    backend.gate.set()


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=40) as executor:
        yield executor


def make(fake: FakeBackend, max_batch: int = 8, max_delay_ms: float = 0.0, max_queue_rows: int | None = None,
         observer=None) -> BatchingBackend:
    return BatchingBackend(fake, {MODEL: BatchPolicy(max_batch, max_delay_ms, max_queue_rows)}, observer=observer)


def plug(batcher: BatchingBackend, fake: FakeBackend, pool: ThreadPoolExecutor):
    """Hold the worker inside one wrapped call so that the next calls queue up behind it."""
    fake.gate.clear()
    future = pool.submit(batcher.infer, MODEL, rows(-1.0))
    wait_until(lambda: len(fake.calls) == 1)
    return future


def queued(batcher: BatchingBackend) -> int:
    return batcher.stats()[MODEL]["queued_rows"]


def test_merges_across_threads_and_routes_rows(fake, pool):
    batcher = make(fake, max_batch=8)
    try:
        held = plug(batcher, fake, pool)
        futures = []
        for i in range(15):
            futures.append(pool.submit(batcher.infer, MODEL, rows(float(i))))
        wait_until(lambda: queued(batcher) == 15)
        fake.gate.set()
        for i, future in enumerate(futures):
            assert_outputs(future.result(10), rows(float(i)))
        assert_outputs(held.result(10), rows(-1.0))
        assert fake.sizes() == [1, 8, 7]  # 16 callers, 3 wrapped calls, none over max_batch
        stats = batcher.stats()[MODEL]
        assert stats["batches"] == 3 and stats["rows"] == 16 and stats["max_batch_rows"] == 8
        assert stats["mean_batch_rows"] == pytest.approx(16 / 3)
    finally:
        batcher.close()


def test_many_threads_random_sizes_and_shapes(fake, pool):
    batcher = make(fake, max_batch=8, max_delay_ms=1.0, max_queue_rows=24 * 6)  # never full here
    rng = np.random.default_rng(0)
    shapes = [SHAPE, (3, 8, 8)]

    def caller(seed: int) -> None:
        local = np.random.default_rng(seed)
        for _ in range(15):
            n = int(local.integers(1, 7))
            shape = shapes[int(local.integers(0, 2))]
            batch = local.standard_normal((n, *shape)).astype(np.float32)
            assert_outputs(batcher.infer(MODEL, batch), batch)

    try:
        futures = [pool.submit(caller, int(seed)) for seed in rng.integers(0, 1 << 30, 24)]
        for future in futures:
            future.result(20)
        assert max(fake.sizes()) <= 8
        assert len(fake.calls) < 24 * 15
    finally:
        batcher.close()


def test_oversized_batch_split_and_reassembled(fake):
    batcher = make(fake, max_batch=4)
    try:
        batch = np.arange(10 * 48, dtype=np.float32).reshape(10, *SHAPE)
        assert_outputs(batcher.infer(MODEL, batch), batch)
        assert fake.sizes() == [4, 4, 2]
    finally:
        batcher.close()


def test_mixed_shapes_are_not_merged(fake, pool):
    batcher = make(fake, max_batch=8)
    small, large = (3, 8, 8), (3, 16, 16)
    try:
        held = plug(batcher, fake, pool)
        futures = []
        for i, shape in enumerate([small, large, small, large]):
            futures.append((pool.submit(batcher.infer, MODEL, rows(float(i), 1, shape)), rows(float(i), 1, shape)))
            wait_until(lambda i=i: queued(batcher) == i + 1)  # keep the queue order known
        fake.gate.set()
        held.result(10)
        for future, batch in futures:
            assert_outputs(future.result(10), batch)
        assert [shape for _, shape, _ in fake.calls[1:]] == [(2, *small), (2, *large)]
    finally:
        batcher.close()


def test_queue_full_raises_at_once_with_retry_after(fake, pool):
    observer = RecordingObserver()
    batcher = make(fake, max_batch=2, max_queue_rows=4, observer=observer)
    try:
        held = plug(batcher, fake, pool)
        waiting = [pool.submit(batcher.infer, MODEL, rows(float(i), 2)) for i in range(2)]
        wait_until(lambda: queued(batcher) == 4)
        start = time.monotonic()
        with pytest.raises(QueueFull) as raised:
            batcher.infer(MODEL, rows(9.0))
        assert time.monotonic() - start < 1.0
        assert raised.value.model == MODEL and raised.value.retry_after_s > 0
        assert (MODEL, "queue_full") in observer.drops
        with pytest.raises(ValueError):  # can never fit: a caller error, not an overload
            batcher.infer(MODEL, rows(9.0, 5))
        fake.gate.set()
        held.result(10)
        for i, future in enumerate(waiting):
            assert_outputs(future.result(10), rows(float(i), 2))
        assert_outputs(batcher.infer(MODEL, rows(9.0)), rows(9.0))  # room again
    finally:
        batcher.close()


def test_deadline_expired_items_are_dropped_without_a_call(fake, pool):
    observer = RecordingObserver()
    batcher = make(fake, max_batch=8, observer=observer)
    try:
        with pytest.raises(DeadlineExceeded):
            batcher.infer(MODEL, rows(1.0), deadline=time.monotonic() - 1)
        assert fake.calls == []
        held = plug(batcher, fake, pool)
        late = pool.submit(batcher.infer, MODEL, rows(2.0, 3), deadline=time.monotonic() + 0.1)
        with pytest.raises(DeadlineExceeded):
            late.result(10)
        fake.gate.set()
        held.result(10)
        assert batcher.drain(5)
        assert fake.sizes() == [1]  # the expired rows never reached the model
        assert queued(batcher) == 0
        assert observer.drops.count((MODEL, "deadline")) == 2
        assert batcher.stats()[MODEL]["dropped"] == {"deadline": 2}
    finally:
        batcher.close()


def test_deadline_expiring_in_a_split_call_withdraws_the_rest(fake, pool):
    batcher = make(fake, max_batch=2)
    try:
        held = plug(batcher, fake, pool)
        late = pool.submit(batcher.infer, MODEL, rows(2.0, 6), deadline=time.monotonic() + 0.1)
        with pytest.raises(DeadlineExceeded):
            late.result(10)
        assert queued(batcher) == 0
        fake.gate.set()
        held.result(10)
        assert batcher.drain(5) and fake.sizes() == [1]
    finally:
        batcher.close()


def test_cancelled_items_are_dropped_without_a_call(fake, pool):
    observer = RecordingObserver()
    batcher = make(fake, max_batch=8, observer=observer)
    gone = threading.Event()
    try:
        with pytest.raises(Cancelled):
            batcher.infer(MODEL, rows(1.0), cancelled=lambda: True)
        held = plug(batcher, fake, pool)
        abandoned = pool.submit(batcher.infer, MODEL, rows(3.0, 2), cancelled=gone.is_set)
        kept = pool.submit(batcher.infer, MODEL, rows(4.0))
        wait_until(lambda: queued(batcher) == 3)
        gone.set()  # the client went away while its rows were queued
        fake.gate.set()
        with pytest.raises(Cancelled):
            abandoned.result(10)
        assert_outputs(kept.result(10), rows(4.0))
        held.result(10)
        assert fake.sizes() == [1, 1]  # only the plug and the caller still there
        assert observer.drops.count((MODEL, "cancelled")) == 2
    finally:
        batcher.close()


def test_inner_error_reaches_every_caller_of_the_batch_and_worker_survives(fake, pool):
    batcher = make(fake, max_batch=8)
    error = BackendError("model server went away")
    fake.fail_calls[1] = error
    try:
        held = plug(batcher, fake, pool)
        futures = [pool.submit(batcher.infer, MODEL, rows(float(i))) for i in range(3)]
        wait_until(lambda: queued(batcher) == 3)
        fake.gate.set()
        held.result(10)
        for future in futures:
            assert future.exception(10) is error
        assert fake.sizes() == [1, 3]
        assert_outputs(batcher.infer(MODEL, rows(5.0, 2)), rows(5.0, 2))  # still serving
    finally:
        batcher.close()


def test_malformed_inner_output_is_a_backend_error(fake):
    class Short(FakeBackend):
        def infer(self, model, batch):
            return {"x": np.zeros((len(batch) + 1, 2), np.float32)}

    batcher = BatchingBackend(Short(), default=BatchPolicy(4, 0.0))
    try:
        with pytest.raises(BackendError, match="shape"):
            batcher.infer(MODEL, rows(1.0))
    finally:
        batcher.close()


def test_lone_caller_waits_at_most_max_delay(fake):
    batcher = make(fake, max_batch=8, max_delay_ms=50.0)
    try:
        batcher.infer(MODEL, rows(0.0))  # warm the worker thread
        start = time.monotonic()
        assert_outputs(batcher.infer(MODEL, rows(1.0)), rows(1.0))
        elapsed = time.monotonic() - start
        assert 0.045 <= elapsed < 1.05  # waited for company, but not much longer than max_delay
    finally:
        batcher.close()


def test_full_batch_does_not_wait_for_max_delay(fake):
    batcher = make(fake, max_batch=4, max_delay_ms=5000.0)
    try:
        start = time.monotonic()
        assert_outputs(batcher.infer(MODEL, rows(1.0, 4)), rows(1.0, 4))
        assert time.monotonic() - start < 2.0
    finally:
        batcher.close()


def test_concurrency_runs_that_many_calls_of_one_model_at_once(fake, pool):
    """With two workers a second batch starts while the first is held in the wrapped backend;
    a third waits for one of them; drain waits for both."""
    batcher = BatchingBackend(fake, {MODEL: BatchPolicy(2, 0.0, concurrency=2)})
    try:
        held = plug(batcher, fake, pool)
        second = pool.submit(batcher.infer, MODEL, rows(2.0, 2))
        wait_until(lambda: len(fake.calls) == 2)  # started beside the held call
        third = pool.submit(batcher.infer, MODEL, rows(3.0, 2))
        wait_until(lambda: queued(batcher) == 2)
        time.sleep(0.05)
        assert len(fake.calls) == 2 and not batcher.drain(0.05)
        fake.gate.set()
        for future, value, n in ((held, -1.0, 1), (second, 2.0, 2), (third, 3.0, 2)):
            assert_outputs(future.result(10), rows(value, n))
        assert batcher.drain(5.0) and fake.sizes() == [1, 2, 2]
        assert batcher.stats()[MODEL]["concurrency"] == 2
    finally:
        batcher.close()
    with pytest.raises(ValueError):
        BatchPolicy(2, concurrency=0)


def test_close_fails_queued_calls_and_finishes_running_ones(fake, pool):
    batcher = make(fake, max_batch=8)
    held = plug(batcher, fake, pool)
    queued_call = pool.submit(batcher.infer, MODEL, rows(2.0))
    wait_until(lambda: queued(batcher) == 1)
    closing = pool.submit(batcher.close)
    with pytest.raises(BatcherClosed):
        queued_call.result(10)
    assert not closing.done()  # waits for the running batch
    assert not batcher.ready()
    fake.gate.set()
    assert_outputs(held.result(10), rows(-1.0))
    closing.result(10)
    assert fake.closed and fake.sizes() == [1]
    with pytest.raises(BatcherClosed):
        batcher.infer(MODEL, rows(3.0))
    assert isinstance(BatcherClosed("x"), BackendError)
    batcher.close()  # twice is fine


def test_drain_waits_for_queued_work(fake, pool):
    batcher = make(fake, max_batch=2)
    try:
        assert batcher.drain(0.1)  # nothing yet
        held = plug(batcher, fake, pool)
        futures = [pool.submit(batcher.infer, MODEL, rows(float(i), 2)) for i in range(3)]
        wait_until(lambda: queued(batcher) == 6)
        assert not batcher.drain(0.05)
        fake.gate.set()
        assert batcher.drain(5)
        assert queued(batcher) == 0 and batcher.stats()[MODEL]["rows"] == 7  # every row has run
        for i, future in enumerate(futures):
            assert_outputs(future.result(10), rows(float(i), 2))
        held.result(10)
    finally:
        batcher.close()


def test_observer_receives_batches_waits_and_depths(fake, pool):
    observer = RecordingObserver()
    batcher = make(fake, max_batch=4, observer=observer)
    try:
        held = plug(batcher, fake, pool)
        futures = [pool.submit(batcher.infer, MODEL, rows(float(i), n)) for i, n in enumerate([1, 2, 1, 3])]
        wait_until(lambda: queued(batcher) == 7)
        fake.gate.set()
        for f in futures + [held]:
            f.result(10)
        assert batcher.drain(5)
        assert [(m, r, i) for m, r, i, _ in observer.batches] == [(MODEL, 1, 1), (MODEL, 4, 3), (MODEL, 3, 1)]
        assert [r for _, r, _, _ in observer.batches] == fake.sizes()
        assert all(s >= 0 for *_, s in observer.batches)
        assert len(observer.waits) == 5 and all(w >= 0 for w in observer.waits)
        assert max(observer.depths) == 7 and observer.depths[-1] == 0
    finally:
        batcher.close()


def test_failing_observer_does_not_break_batching(fake):
    class Broken:
        def __getattr__(self, name):
            def fail(*args):
                raise RuntimeError("observer bug")
            return fail

    batcher = make(fake, observer=Broken())
    try:
        assert_outputs(batcher.infer(MODEL, rows(1.0, 3)), rows(1.0, 3))
    finally:
        batcher.close()


def test_policies_default_to_the_model_specs(fake):
    from portrait.modelrepo.specs import BY_NAME

    batcher = BatchingBackend(fake)
    try:
        policy = batcher.policy("yunet")
        assert policy == BatchPolicy(BY_NAME["yunet"].max_batch_size, 5.0, 8 * BY_NAME["yunet"].max_batch_size)
        capped = BatchingBackend(fake, default=BatchPolicy(1000, 1.0, 4000)).policy("sface")
        assert capped.max_batch == BY_NAME["sface"].max_batch_size
        with pytest.raises(KeyError):
            batcher.policy("no_such_model")
        with pytest.raises(ValueError):
            BatchingBackend(fake, {"sface": BatchPolicy(1000, 1.0)})
        with pytest.raises(ValueError):
            BatchPolicy(4, 1.0, 2)
    finally:
        batcher.close()


def test_real_onnxruntime_calls_merge_and_match_direct_calls(model_repository):
    from portrait.backends.onnxruntime import OnnxRuntimeBackend

    model = "minifasnet_v2"
    inner = OnnxRuntimeBackend(model_repository, models=[model])
    calls: list[int] = []
    real_infer = inner.infer

    def counting_infer(name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(batch))
        return real_infer(name, batch)

    rng = np.random.default_rng(7)
    inputs = [rng.uniform(0, 255, (1, 3, 80, 80)).astype(np.float32) for _ in range(16)]
    direct = [real_infer(model, x) for x in inputs]
    inner.infer = counting_infer  # count the wrapped calls the batcher makes
    batcher = BatchingBackend(inner, {model: BatchPolicy(32, 200.0)})
    barrier = threading.Barrier(16)

    def caller(x: np.ndarray) -> dict[str, np.ndarray]:
        barrier.wait(10)
        return batcher.infer(model, x)

    try:
        with ThreadPoolExecutor(max_workers=16) as executor:
            results = list(executor.map(caller, inputs, timeout=30))
        for got, want in zip(results, direct):
            assert set(got) == set(want)
            for name in want:
                assert got[name].shape == want[name].shape
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
        assert sum(calls) == 16 and len(calls) < 16 and max(calls) <= 32
    finally:
        batcher.close()
