"""TritonBackend against the real Triton server: the embedded backend's numbers, over gRPC with
and without shared memory, under concurrency, and clear errors when the server is not there."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from portrait.backends import BackendError, create_backend
from portrait.backends.onnxruntime import OnnxRuntimeBackend
from portrait.modelrepo import specs
from portrait.modelrepo.build import synthetic_batch
from portrait.modelrepo.repository import MANIFEST
from portrait.triton.server import TritonServer

from conftest import free_port

pytest.importorskip("pytriton", reason="the Triton extra is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc")

from portrait.backends.triton import TritonBackend, output_nbytes  # noqa: E402  (needs tritonclient)

TOL = 1e-4
SHM = Path("/dev/shm")


def _start(repository: Path, log: Path) -> TritonServer:
    server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_file=log)
    server.start(timeout_s=180)
    return server


@pytest.fixture(scope="module")
def triton(model_repository, tmp_path_factory):
    server = _start(model_repository, tmp_path_factory.mktemp("triton") / "triton.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedded(model_repository):
    backend = OnnxRuntimeBackend(model_repository, threads=1)
    yield backend
    backend.close()


@pytest.fixture(scope="module", params=[True, False], ids=["shm", "body"])
def backend(request, triton):
    backend = TritonBackend(triton.urls()["grpc"], shared_memory=request.param)
    yield backend
    backend.close()


def _batch(spec: specs.ModelSpec, n: int, seed: int) -> np.ndarray:
    batch = synthetic_batch(spec, n, seed=seed)
    if spec is specs.DETECTOR:
        batch = batch[:, :, :320, :416].copy()  # dynamic, non-square H and W
    return batch


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, err_msg=name,
                                   atol=TOL * max(1.0, float(np.abs(expected).max())))


def _regions(prefix: str) -> list[Path]:
    return sorted(SHM.glob(f"{prefix}*"))


@pytest.mark.parametrize("spec", specs.MODELS, ids=lambda s: s.name)
def test_outputs_equal_embedded(backend, embedded, spec):
    batch = _batch(spec, 3, seed=11)
    _assert_same(backend.infer(spec.name, batch), embedded.infer(spec.name, batch))


def test_output_sizes_cover_the_detector_grid(embedded):
    batch = _batch(specs.DETECTOR, 2, seed=1)
    want = {name: a.nbytes for name, a in embedded.infer(specs.DETECTOR.name, batch).items()}
    assert output_nbytes(specs.DETECTOR, batch.shape) == want


def test_concurrent_mixed_models(triton, embedded):
    calls = [(spec, n, seed) for seed, (spec, n) in enumerate(
        [(s, n) for s in specs.MODELS for n in (1, 2, 4)] * 2)]
    expected = [embedded.infer(spec.name, _batch(spec, n, seed)) for spec, n, seed in calls]
    backend = TritonBackend(triton.urls()["grpc"], slots=2)
    try:
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda c: backend.infer(c[0].name, _batch(*c)), calls))
        for g, e in zip(got, expected):
            _assert_same(g, e)
        assert 2 <= len(_regions(backend.shm_prefix)) <= 16  # one slot per concurrent call
    finally:
        backend.close()


def test_batch_larger_than_a_slot_grows_it(triton, embedded):
    backend = TritonBackend(triton.urls()["grpc"], models=["sface"], shm_bytes_per_slot=64 << 10, slots=1)
    try:
        batch = _batch(specs.EMBEDDER, 8, seed=5)
        assert batch.nbytes > 64 << 10
        _assert_same(backend.infer("sface", batch), embedded.infer("sface", batch))
        (region,) = _regions(backend.shm_prefix)
        assert region.stat().st_size >= batch.nbytes
        _assert_same(backend.infer("sface", batch[:2]), embedded.infer("sface", batch[:2]))
    finally:
        backend.close()


def test_close_unregisters_and_unlinks(triton):
    backend = create_backend("triton", url=triton.urls()["grpc"], models=["minifasnet_v2"], slots=3)
    backend.infer("minifasnet_v2", _batch(specs.PAD_V2, 2, seed=2))
    assert len(_regions(backend.shm_prefix)) == 3
    assert len(_registered(triton, backend.shm_prefix)) == 3
    backend.close()
    assert _regions(backend.shm_prefix) == []
    assert _registered(triton, backend.shm_prefix) == []
    assert backend.ready() is False
    with pytest.raises(BackendError, match="closed"):
        backend.infer("minifasnet_v2", _batch(specs.PAD_V2, 1, seed=2))


def _registered(server: TritonServer, prefix: str) -> list[str]:
    client = grpcclient.InferenceServerClient(server.urls()["grpc"])
    return [r for r in client.get_system_shared_memory_status(as_json=True).get("regions", {})
            if r.startswith(prefix)]


def test_timeout_is_a_backend_error(triton, embedded):
    backend = TritonBackend(triton.urls()["grpc"], models=["facemesh"], slots=1)
    try:
        backend.timeout_s = 1e-3
        with pytest.raises(BackendError, match="model facemesh: .*Deadline Exceeded"):
            backend.infer("facemesh", _batch(specs.LANDMARKS, 16, seed=4))
        assert _regions(backend.shm_prefix) == []  # a slot Triton may still write to is dropped
        backend.timeout_s = 30.0
        batch = _batch(specs.LANDMARKS, 2, seed=4)
        _assert_same(backend.infer("facemesh", batch), embedded.infer("facemesh", batch))
    finally:
        backend.close()
    assert _registered(triton, backend.shm_prefix) == []  # once Triton let go of the timed-out one


def test_unreachable_server_fails_at_construction():
    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(BackendError, match=f"Triton at {url} is unreachable: .*failed to connect"):
        TritonBackend(url, timeout_s=5)


def test_model_not_served_fails_at_construction(triton):
    with pytest.raises(BackendError, match="not ready: nosuchmodel"):
        TritonBackend(triton.urls()["grpc"], models=["sface", "nosuchmodel"])


def test_stopped_server_is_not_ready_and_fails_calls(model_repository, embedded, tmp_path):
    """A server of its own (one small model, quick to start) so stopping it disturbs no other test."""
    repository = tmp_path / "repository"
    shutil.copytree(model_repository / "minifasnet_v2", repository / "minifasnet_v2")
    shutil.copy2(model_repository / MANIFEST, repository / MANIFEST)
    server = _start(repository, tmp_path / "triton.log")
    batch = _batch(specs.PAD_V2, 2, seed=9)
    backends = [TritonBackend(server.urls()["grpc"], models=["minifasnet_v2"], shared_memory=s)
                for s in (True, False)]
    try:
        for backend in backends:
            assert backend.ready()
            _assert_same(backend.infer("minifasnet_v2", batch), embedded.infer("minifasnet_v2", batch))
        server.stop()
        for backend in backends:
            assert backend.ready() is False
            with pytest.raises(BackendError, match="model minifasnet_v2: .*UNAVAILABLE"):
                backend.infer("minifasnet_v2", batch)
    finally:
        server.stop()
        for backend in backends:
            backend.close()
    assert _regions(backends[0].shm_prefix) == []
