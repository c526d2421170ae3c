"""The real Triton server (bundled in nvidia-pytriton) serving the built repository."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from portrait import ort
from portrait.modelrepo import specs
from portrait.modelrepo.build import synthetic_batch
from portrait.modelrepo.repository import model_path
from portrait.triton.server import TritonServer

from conftest import free_port

pytest.importorskip("pytriton", reason="the Triton extra is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc")

TRITON_TOL = 1e-4


@pytest.fixture(scope="module")
def triton(model_repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    server = TritonServer(model_repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_file=log)
    server.start(timeout_s=180)
    yield server
    server.stop()


def _infer(client, spec, batch):
    inp = grpcclient.InferInput(spec.input.name, list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    result = client.infer(spec.name, [inp])
    return [result.as_numpy(t.name) for t in spec.outputs]


def _metric(server, name, model):
    with urllib.request.urlopen(server.urls()["metrics"], timeout=5) as response:
        text = response.read().decode()
    pattern = rf'^{name}{{[^}}]*model="{model}"[^}}]*}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


@pytest.mark.parametrize("spec", specs.MODELS, ids=lambda s: s.name)
def test_triton_outputs_equal_onnxruntime(triton, model_repository, spec):
    client = grpcclient.InferenceServerClient(triton.urls()["grpc"])
    assert client.is_model_ready(spec.name)
    batch = synthetic_batch(spec, 3, seed=7)
    if spec is specs.DETECTOR:
        batch = batch[:, :, :320, :416].copy()  # dynamic H and W
    expected = ort.session(model_path(model_repository, spec.name)).run(
        [t.name for t in spec.outputs], {spec.input.name: batch})
    for got, want in zip(_infer(client, spec, batch), expected):
        np.testing.assert_allclose(got, want, atol=TRITON_TOL * max(1.0, float(np.abs(want).max())))


def test_concurrent_requests_are_batched_by_triton(triton):
    spec = specs.PAD_V2
    before_requests = _metric(triton, "nv_inference_count", spec.name)
    before_executions = _metric(triton, "nv_inference_exec_count", spec.name)
    items = synthetic_batch(spec, 64, seed=3)

    def send(i):
        client = grpcclient.InferenceServerClient(triton.urls()["grpc"])
        return _infer(client, spec, items[i : i + 1])[0]

    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(send, range(64)))
    assert all(o.shape == (1, 3) for o in outputs)
    # Triton refreshes its metrics on an interval: wait until every request is counted.
    deadline = time.monotonic() + 10
    while (requests := _metric(triton, "nv_inference_count", spec.name) - before_requests) < 64:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    executions = _metric(triton, "nv_inference_exec_count", spec.name) - before_executions
    assert requests == 64
    assert executions < requests, f"{executions:.0f} executions for {requests:.0f} requests: no batching"


def test_cli_serves_and_stops_cleanly(model_repository, tmp_path):
    ports = {"PORTRAIT_TRITON_HTTP_PORT": free_port(), "PORTRAIT_TRITON_GRPC_PORT": free_port(),
             "PORTRAIT_TRITON_METRICS_PORT": free_port()}
    env = {**os.environ, "PORTRAIT_MODEL_REPOSITORY": str(model_repository),
           **{k: str(v) for k, v in ports.items()}}
    process = subprocess.Popen([sys.executable, "-m", "portrait.cli", "triton"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        announced = json.loads(process.stdout.readline())
        assert announced["ready"] is True
        client = grpcclient.InferenceServerClient(announced["grpc"])
        assert all(client.is_model_ready(s.name) for s in specs.MODELS)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    time.sleep(0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ports['PORTRAIT_TRITON_HTTP_PORT']}/v2/health/ready", timeout=2)


def test_missing_repository_is_a_clear_error(tmp_path):
    server = TritonServer(tmp_path, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with pytest.raises(Exception, match="run `portrait models build` first"):
        server.start(timeout_s=10)
