"""The front door's parts that need no models: the fair hand-out of workers, the error
catalogue and its documentation, settings validation, the log line of a 500."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from portrait import settings as settings_module
from portrait.security.tokens import _MESSAGES as TOKEN_CODES
from portrait.service.app import AccessMiddleware, create_app, request_id_of
from portrait.service.inference import FairWorkers
from portrait.service.logs import JsonFormatter
from portrait.service.metrics import Metrics
from portrait.service.problems import CODES
from portrait.settings import Settings, settings_error

ROOT = Path(__file__).resolve().parent.parent


# Fair workers -------------------------------------------------------------------------


def test_fair_workers_serve_tenants_round_robin() -> None:
    async def scenario() -> list[str]:
        workers = FairWorkers(1)
        order: list[str] = []
        await workers.acquire("a")  # the one place is taken

        async def wait(tenant: str) -> None:
            await workers.acquire(tenant)
            order.append(tenant)

        tasks = [asyncio.create_task(wait(t)) for t in ("a", "a", "a", "a", "b", "b", "c")]
        await asyncio.sleep(0)
        assert workers.waiting() == 7
        for _ in range(7):
            workers.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order

    # a flooding tenant waits behind itself: b and c are served after at most one more a
    assert asyncio.run(scenario()) == ["a", "b", "c", "a", "b", "a", "a"]


def test_fair_workers_cancelled_waiter_leaves_the_line() -> None:
    async def scenario() -> None:
        workers = FairWorkers(1)
        await workers.acquire("a")
        assert workers.running() == 1
        leaving = asyncio.create_task(workers.acquire("b"))
        staying = asyncio.create_task(workers.acquire("c"))
        await asyncio.sleep(0)
        leaving.cancel()
        await asyncio.sleep(0)
        assert workers.waiting() == 1
        workers.release()
        await staying
        workers.release()
        assert workers.free == 1 and workers.waiting() == 0 and workers.running() == 0

    asyncio.run(scenario())


# The error catalogue ------------------------------------------------------------------


def _raised_codes() -> set[str]:
    codes = set()
    for path in (ROOT / "server" / "portrait").rglob("*.py"):
        text = path.read_text()
        codes |= set(re.findall(r'problem\(\s*"([a-z_]+)"', text))
        codes |= set(re.findall(r'Problem\(\s*\d{3},\s*"([a-z_]+)"', text))
    return codes


def test_every_raised_code_is_catalogued() -> None:
    raised = _raised_codes() | set(TOKEN_CODES)
    assert raised and raised <= set(CODES), sorted(raised - set(CODES))


def test_readme_has_every_error_code_in_its_table() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {code: int(status) for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", readme, re.MULTILINE)}
    assert rows == {code: status for code, (status, _) in CODES.items()}


# Settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("values, says", [
    ({"decoder": "gpu"}, "PORTRAIT_DECODER=gpu leaves frames on the GPU: set PORTRAIT_FRAMES=gpu too"),
    ({"backend": "tensorrt"}, "PORTRAIT_BACKEND: Input should be 'embedded' or 'triton'"),
    ({"frames": "cuda"}, "PORTRAIT_FRAMES: Input should be 'host' or 'gpu'"),
    ({"log_level": "LOUD"}, "PORTRAIT_LOG_LEVEL: Input should be"),
    ({"port": 70000}, "PORTRAIT_PORT: Input should be less than or equal to 65535"),
    ({"rate_limit_per_s": 0}, "PORTRAIT_RATE_LIMIT_PER_S: Input should be greater than 0"),
    ({"max_in_flight_per_tenant": 30}, "must be below PORTRAIT_WORKERS + PORTRAIT_MAX_WAITING (24)"),
    ({"workers": 2, "max_waiting": 0}, "PORTRAIT_MAX_IN_FLIGHT_PER_TENANT (12) must be below"),
    ({"full_answer_tenants": "carrier,demo"}, "PORTRAIT_FULL_ANSWER_TENANTS names the demo's tenant (demo)"),
    ({"demo_max_in_flight": 24}, "PORTRAIT_DEMO_MAX_IN_FLIGHT must be below"),
    ({"demo_tenant": "bad name"}, "PORTRAIT_DEMO_TENANT: String should match pattern"),
    ({"max_uploads": 12}, "must be below PORTRAIT_MAX_UPLOADS (12)"),
])
def test_settings_refused_with_one_line(values: dict, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**values)
    line = settings_error(info.value)
    assert says in line and "\n" not in line


def test_default_settings_are_valid_and_the_tenant_cap_is_below_admission() -> None:
    settings = Settings()
    assert settings.max_in_flight_per_tenant < settings.workers + settings.max_waiting
    assert Settings(decoder="gpu", frames="gpu").decoder == "gpu"  # the GPU itself is checked at start


def test_model_calls_follow_the_cores_and_threads(monkeypatch, tmp_path) -> None:
    """One call per usable core at one thread a call (a container's CPU quota caps the cores),
    at most the cap; a set value wins; the runtime's own thread choice (0) and Triton get one
    call at a time."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(3)))
    real = settings_module.usable_cores
    monkeypatch.setattr(settings_module, "usable_cores", lambda: real(tmp_path / "none"))  # no quota file
    assert Settings().concurrent_model_calls() == 3
    assert Settings(inference_threads=2).concurrent_model_calls() == 1
    assert Settings(inference_threads=4).concurrent_model_calls() == 1
    assert Settings(inference_threads=0).concurrent_model_calls() == 1
    assert Settings(backend="triton").concurrent_model_calls() == 1
    assert Settings(model_calls=3, inference_threads=0).concurrent_model_calls() == 3
    quota = tmp_path / "cpu.max"
    for text, cores in (("150000 100000\n", 2), ("max 100000\n", 3), ("50000 100000\n", 1), ("900000 100000", 3)):
        quota.write_text(text)
        assert real(quota) == cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)))
    assert Settings().concurrent_model_calls() == settings_module.DEFAULT_MODEL_CALLS_CAP
    assert Settings(model_calls=8).concurrent_model_calls() == 8


# The log line of a 500 ----------------------------------------------------------------


def test_a_500_logs_its_request_id_and_traceback_and_answers_problem_json() -> None:
    """Failure injection: a route that raises stands in for a bug; the middleware is the real one."""

    async def broken(request):
        raise RuntimeError("boom in the pipeline")

    app = Starlette(routes=[Route("/broken", broken)], middleware=[Middleware(AccessMiddleware)])
    app.state.engine = SimpleNamespace(metrics=Metrics())
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("portrait.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.get("/broken", headers={"x-request-id": "rid-500-test"})

        response = asyncio.run(call())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert response.status_code == 500 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal_error" and response.json()["request_id"] == "rid-500-test"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    error = next(line for line in lines if line["msg"] == "unhandled error")
    assert error["request_id"] == "rid-500-test" and error["error"] == "RuntimeError"
    assert error["traceback"][0].startswith("Traceback") and "boom in the pipeline" in error["traceback"][-1]
    assert any("in broken" in line for line in error["traceback"])
    access = next(line for line in lines if line["msg"] == "request")
    assert access["status"] == 500 and access["request_id"] == "rid-500-test"


# Request ids ---------------------------------------------------------------------------


def test_a_client_request_id_is_kept_only_when_it_is_a_plain_id() -> None:
    for kept in (b"rid-500-test", b"0f8fad5b-d9cb-469f-a165-70867728950e", b"YWJj+/=:_.", b"a" * 128):
        assert request_id_of(kept) == kept.decode()
    fresh = {request_id_of(given) for given in (b"", b"a" * 129, b"evil\r\nset-cookie: x=1", b"tab\tid", b"\x00",
                                                 b"caf\xc3\xa9", b"two words")}
    assert len(fresh) == 7 and all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in fresh)


def test_control_characters_never_reach_the_response_header() -> None:
    """A raw ASGI request (an HTTP client would refuse to send these bytes): the echoed
    header and the problem body carry a fresh id instead."""

    async def ok(request):
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/ok", ok)], middleware=[Middleware(AccessMiddleware)])
    app.state.engine = SimpleNamespace(metrics=Metrics())
    sent: list[dict] = []

    async def call() -> None:
        scope = {"type": "http", "method": "GET", "path": "/ok", "raw_path": b"/ok", "query_string": b"",
                 "headers": [(b"x-request-id", b"id\r\nx-injected: 1\x07")], "app": app, "http_version": "1.1",
                 "scheme": "http", "server": ("test", 80), "client": ("test", 1), "root_path": ""}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(call())
    start = next(m for m in sent if m["type"] == "http.response.start")
    echoed = dict(start["headers"])[b"x-request-id"]
    assert re.fullmatch(rb"[0-9a-f]{32}", echoed), echoed


# /docs without a CDN -------------------------------------------------------------------


def test_docs_are_served_from_this_process_without_a_cdn() -> None:
    from fastapi.testclient import TestClient

    app = create_app(Settings(api_keys="carrier:carrier-key-0123456789"))
    app.state.engine = SimpleNamespace(metrics=Metrics())  # no lifespan: /docs needs no engine
    client = TestClient(app)
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
    assert urls and all(url.startswith("/") for url in urls), urls
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
    assert client.get("/redoc").status_code == 404


# Native libraries' stderr ---------------------------------------------------------------

NATIVE_CHILD = """
import logging, sys, time
import cv2, numpy as np
from portrait.service import logs

logs.configure("INFO", native=True)
logging.getLogger("portrait.test").info("before")
jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 99, np.uint8))[1].tobytes()
sos = jpeg.index(b"\\xff\\xda")
cv2.imdecode(np.frombuffer(jpeg[:sos] + b"\\x00\\x01\\x02" + jpeg[sos:], np.uint8), cv2.IMREAD_COLOR)
time.sleep(0.5)
logging.getLogger("portrait.test").info("after")
"""


def test_libjpeg_warnings_become_json_log_lines() -> None:
    result = subprocess.run([sys.executable, "-c", NATIVE_CHILD], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "server")})
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    native = [line for line in lines if line["logger"] == "portrait.native"]
    assert [line["msg"] for line in lines if line["logger"] == "portrait.test"] == ["before", "after"]
    assert len(native) == 1 and "Corrupt JPEG data" in native[0]["msg"]
