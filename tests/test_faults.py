"""Faults injected for real against `portrait serve` (uvicorn) on loopback: uploads that stall
or leave on raw sockets, a private `redis-server` paused with SIGSTOP, killed and started
again empty. (`benchmarks/bench_faults.py` measures the same cases at the default settings.)"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import free_port
from portrait.service.intake import Pace, receive_body
from portrait.service.problems import Problem
from test_service import KEY_A, KEY_B, KEY_C, _auth, _challenge, _verify, start_service, stop_service

# Small capacity, so that a few slow uploads are "every worker and waiting place's worth".
CAPACITY = {"PORTRAIT_WORKERS": "2", "PORTRAIT_MAX_WAITING": "2", "PORTRAIT_MAX_IN_FLIGHT_PER_TENANT": "2",
            "PORTRAIT_MAX_UPLOADS": "8", "PORTRAIT_UPLOAD_TIMEOUT_S": "30",
            "PORTRAIT_UPLOAD_MIN_BYTES_PER_S": str(256 * 1024), "PORTRAIT_MEMORY_RELEASE_IDLE_S": "1"}


@pytest.fixture(scope="module")
def images(testdata) -> dict[str, bytes]:
    root = testdata / "images/face_recognition/examples"
    return {"a": (root / "obama.jpg").read_bytes(), "b": (root / "obama2.jpg").read_bytes()}


@pytest.fixture(scope="module")
def service(tmp_path_factory, model_repository, testdata) -> Iterator[dict]:
    running = start_service(tmp_path_factory.mktemp("faults"), model_repository, CAPACITY)
    yield running
    if running["process"].poll() is None:
        stop_service(running)


def _compare(service: dict, images: dict[str, bytes], key: str) -> httpx.Response:
    files = {"image_a": ("a.jpg", images["a"], "image/jpeg"), "image_b": ("b.jpg", images["b"], "image/jpeg")}
    return httpx.post(f"{service['url']}/v1/compare", files=files, headers=_auth(key), timeout=120)


def _raw_compare(service: dict, images: dict[str, bytes], key: str) -> tuple[bytes, bytes]:
    """The head and body of a compare request, as bytes a socket can send in pieces."""
    files = {"image_a": ("a.jpg", images["a"], "image/jpeg"), "image_b": ("b.jpg", images["b"], "image/jpeg")}
    request = httpx.Request("POST", f"{service['url']}/v1/compare", headers=_auth(key), files=files)
    body = request.read()
    port = service["url"].rsplit(":", 1)[1]
    head = (f"POST /v1/compare HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {request.headers['content-type']}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode(), body


def _in_flight(service: dict) -> float:
    text = httpx.get(f"{service['url']}/metrics").text
    return float(re.search(r"^portrait_in_flight_requests ([0-9.e+]+)$", text, re.MULTILINE).group(1))


def _answer(sock: socket.socket, timeout_s: float) -> tuple[int | None, dict, bool]:
    """(status, problem body, whether the service then closed the connection) of one answer."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: (\d+)", head)
            if length and len(rest) >= int(length.group(1)):
                closes = re.search(rb"(?im)^connection: close", head) is not None
                return int(head.split()[1]), json.loads(rest), closes and sock.recv(1) == b""
    except socket.timeout:
        pass
    return None, {}, False


def test_stalled_uploads_hold_no_worker_place(service, images):
    """Tenants A and B open as many uploads as there are worker and waiting places (their
    caps allow it), send their headers and 64 KiB, and stop. Tenant C's request is still
    answered; each stalled upload gets 408 `upload_too_slow` once a 5 s window passes below
    the minimum rate, and its connection is closed."""
    stalled = []
    opened = time.monotonic()
    for key in (KEY_A, KEY_A, KEY_B, KEY_B):
        head, body = _raw_compare(service, images, key)
        sock = socket.create_connection(("127.0.0.1", int(service["url"].rsplit(":", 1)[1])))
        sock.sendall(head + body[:64 * 1024])
        stalled.append(sock)
    try:
        deadline = time.monotonic() + 10
        while _in_flight(service) < 5:  # the four uploads and this /metrics call
            assert time.monotonic() < deadline, "the stalled uploads never reached the service"
            time.sleep(0.05)
        other = _compare(service, images, KEY_C)
        assert other.status_code == 200 and other.json()["decision"] == "match", other.text
        answers = [_answer(sock, 20) for sock in stalled]
        held = time.monotonic() - opened
    finally:
        for sock in stalled:
            sock.close()
    assert [(status, problem.get("code"), closed) for status, problem, closed in answers] == \
        [(408, "upload_too_slow", True)] * 4, answers
    assert 5 <= held < 15  # refused at the end of the first window below the rate, not at the deadline
    assert _compare(service, images, KEY_A).status_code == 200  # A's places came back


def test_a_client_that_leaves_mid_upload_is_499(service, images):
    before = httpx.get(f"{service['url']}/metrics").text
    head, body = _raw_compare(service, images, KEY_B)
    with socket.create_connection(("127.0.0.1", int(service["url"].rsplit(":", 1)[1]))) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.5)
    deadline = time.monotonic() + 10

    def counted(text: str, status: str) -> float:
        pattern = rf'^portrait_request_duration_seconds_count{{endpoint="/v1/compare",[^}}]*status="{status}"}} (\S+)$'
        return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))

    while True:
        after = httpx.get(f"{service['url']}/metrics").text
        if counted(after, "499") + counted(after, "400") > counted(before, "499") + counted(before, "400"):
            break
        assert time.monotonic() < deadline, "the abandoned upload was never counted"
        time.sleep(0.1)
    assert counted(after, "499") == counted(before, "499") + 1
    assert counted(after, "400") == counted(before, "400")
    lines = [json.loads(line) for line in service["log"].read_text().splitlines() if line.startswith("{")]
    last = [line for line in lines if line.get("path") == "/v1/compare"][-1]
    assert last["status"] == 499 and last["tenant"] == "carrier-b"


def test_memory_is_handed_back_once_the_service_is_idle(service, images):
    """A second after the last request, the runtimes' buffers and the allocator's free
    pages go back to the system (the figures: benchmarks/bench_faults.py --only memory)."""

    def released() -> list[dict]:
        lines = [json.loads(line) for line in service["log"].read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line["msg"] == "memory released"]

    seen = len(released())
    with ThreadPoolExecutor(4) as pool:
        assert {r.status_code for r in pool.map(lambda key: _compare(service, images, key), (KEY_A, KEY_B) * 2)} == {200}
    deadline = time.monotonic() + 10
    while len(released()) == seen:
        assert time.monotonic() < deadline, "no memory release after the requests"
        time.sleep(0.2)
    line = released()[-1]
    assert line["complete"] is True and line["rss_mib_after"] <= line["rss_mib_before"], line


def _paced(script: list[tuple[float, dict]], pace: Pace) -> tuple[int, str | None, float]:
    """Feeds ASGI messages to `receive_body` at the scripted delays (a stand-in for a
    client, for the timing rules alone): (bytes received, refusal code, seconds)."""

    async def scenario() -> tuple[int, str | None, float]:
        queue: asyncio.Queue = asyncio.Queue()

        async def client() -> None:
            for delay, message in script:
                await asyncio.sleep(delay)
                await queue.put(message)

        feeder = asyncio.create_task(client())
        started, received, code = time.monotonic(), 0, None
        try:
            async for chunk in receive_body(queue.get, pace):
                received += len(chunk)
        except Problem as refused:
            code = refused.code
        feeder.cancel()
        return received, code, time.monotonic() - started

    return asyncio.run(scenario())


def _chunk(size: int, more: bool = True) -> dict:
    return {"type": "http.request", "body": b"x" * size, "more_body": more}


def test_a_body_must_keep_a_minimum_rate_and_arrive_by_its_deadline():
    pace = Pace(timeout_s=1.0, min_bytes_per_s=1000, window_s=0.2)  # 200 bytes every 0.2 s
    steady = [(0.05, _chunk(400)) for _ in range(8)] + [(0.05, _chunk(400, more=False))]
    assert _paced(steady, pace)[:2] == (3600, None)
    stalled = [(0.0, _chunk(100)), (5.0, _chunk(100, more=False))]
    received, code, seconds = _paced(stalled, pace)
    assert (received, code) == (100, "upload_too_slow") and 0.2 <= seconds < 0.5  # the first window
    trickle = [(0.2, _chunk(150)) for _ in range(20)]  # 750 bytes/s, under the minimum
    assert _paced(trickle, pace)[1] == "upload_too_slow"
    endless = [(0.05, _chunk(400)) for _ in range(100)]  # fast enough, but past the deadline
    received, code, seconds = _paced(endless, pace)
    assert code == "upload_too_slow" and 1.0 <= seconds < 1.3
    leaving = [(0.05, _chunk(400)), (0.05, {"type": "http.disconnect"})]
    assert _paced(leaving, pace)[:2] == (400, "client_closed_request")


# Redis: hung, and restarted without its data ----------------------------------------------


class Redis:
    """A private redis-server without persistence, on a fixed port across restarts."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (.ci/run installs it)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture(scope="module")
def redis() -> Iterator[Redis]:
    server = Redis()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def redis_service(tmp_path_factory, model_repository, testdata, redis) -> Iterator[dict]:
    running = start_service(tmp_path_factory.mktemp("faults-redis"), model_repository,
                            {"PORTRAIT_REDIS_URL": redis.url, "PORTRAIT_REDIS_TIMEOUT_S": "0.5"})
    yield running
    if running["process"].poll() is None:
        stop_service(running)


@pytest.fixture(scope="module")
def clip(testdata) -> dict[str, bytes]:
    return {"id": (testdata / "images/face_recognition/examples/obama.jpg").read_bytes(),
            "video": (testdata / "videos/replay_pair/fake.mp4").read_bytes()}


def _ready_again(service: dict) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{service['url']}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "readiness did not come back with Redis"
        time.sleep(0.1)


def test_a_claim_lost_to_a_hung_redis_leaves_the_token_good_once(redis_service, redis, clip):
    """Redis stops answering (SIGSTOP) while the claim is on its way: the verification is
    refused (503) although Redis executes the claim when it resumes. The customer's retry
    with the same token is answered; a replay after it is not."""
    token = _challenge(redis_service, ["blink"])
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        refused = _verify(redis_service, token, clip["id"], clip["video"])
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)
    assert refused.status_code == 503 and refused.json()["code"] == "nonce_store_unavailable", refused.text
    _ready_again(redis_service)
    retry = _verify(redis_service, token, clip["id"], clip["video"])
    assert retry.status_code == 200 and retry.json()["decision"] == "reject_spoof", retry.text
    replay = _verify(redis_service, token, clip["id"], clip["video"])
    assert replay.status_code == 409 and replay.json()["code"] == "replayed_challenge", replay.text


def test_single_use_survives_a_redis_restart_without_its_data(redis_service, redis, clip):
    """A token spent before Redis lost its data (killed, started again without persistence)
    is refused afterwards, as is one issued before and never used; a new one is answered."""
    spent = _challenge(redis_service, ["blink"])
    unused = _challenge(redis_service, ["blink"])
    assert _verify(redis_service, spent, clip["id"], clip["video"]).status_code == 200
    redis.kill()
    redis.start()
    _ready_again(redis_service)
    for token in (spent, unused):
        replay = _verify(redis_service, token, clip["id"], clip["video"])
        assert replay.status_code == 410 and replay.json()["code"] == "expired_challenge", replay.text
    fresh = _verify(redis_service, _challenge(redis_service, ["blink"]), clip["id"], clip["video"])
    assert fresh.status_code == 200 and fresh.json()["decision"] == "reject_spoof", fresh.text
