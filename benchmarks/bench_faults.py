"""Faults injected for real against a running service, measured from outside: stalled and
slow uploads, a Redis that hangs (SIGSTOP) or restarts without its data, a client that
leaves mid-upload, SIGTERM, and resident memory across bursts of verifications.

    python benchmarks/bench_faults.py [--only stalled,redis_hang,...] [--attack stall|trickle]

Starts `portrait serve` (and a private `redis-server` where a case needs one) on loopback
ports with the default capacity settings, needs a built model repository and the test data;
prints one JSON object per case and asserts nothing. The cases:

- `stalled`: a customer's verification (the d18 clip, accepted) alone, then while tenants A
  and B keep every worker and waiting place's worth of uploads open (`WORKERS` +
  `MAX_WAITING`, 12 each, the per-tenant cap): each sends its headers and half its body,
  then stops (`--attack stall`), or declares a body of almost 32 MiB and sends it at 20 KiB/s,
  above the default minimum rate (`--attack trickle`); each starts again when the service
  answers or closes.
- `redis_hang`: a verification while Redis is stopped, then the retry with the same token
  after it resumes, then a replay.
- `redis_restart`: a token spent, Redis killed and started again empty, the token replayed.
- `disconnect`: a client that sends half its body and closes the socket: the status the
  service logs and counts.
- `drain`: SIGTERM to an idle service: its log lines about the drain and its exit status.
- `memory`: resident size after a warm-up, after each of three bursts of 4 concurrent
  verifications, and 5 and 15 s later, idle (the service hands memory back after
  `MEMORY_RELEASE_IDLE_S`, 10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import cv2
import httpx

from portrait.bench import free_port, start_serve

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
KEYS = {"a": "tenant-a-key-0123456789abcdef", "b": "tenant-b-key-0123456789abcdef",
        "c": "tenant-c-key-0123456789abcdef"}
D18 = {"actions": ["open_mouth", "blink", "open_mouth"], "schedule": [1.8, 2.8, 3.7]}


class Service:
    def __init__(self, extra: dict[str, str] | None = None) -> None:
        self.log = Path(tempfile.mkstemp(prefix="portrait-faults-", suffix=".log")[1])
        env = {"PORTRAIT_CLIENT_ACTIONS_TENANTS": ",".join(KEYS),
               "PORTRAIT_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
               "PORTRAIT_CHALLENGE_SECRET": "bench-faults-secret-0123456789abcdef-0123",
               "PORTRAIT_RATE_LIMIT_PER_S": "1000", "PORTRAIT_RATE_LIMIT_BURST": "1000", **(extra or {})}
        with open(self.log, "wb") as log:
            try:
                self.process, self.url = start_serve(env, log)
            except RuntimeError as error:
                raise RuntimeError(f"{error}: {self.log.read_text()[-2000:]}") from None
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)

    def rss_mib(self) -> float:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return round(int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1)) / 1024, 1)

    def challenge(self, tenant: str, body: dict | None = None) -> str:
        response = httpx.post(f"{self.url}/v1/challenges", json=body or D18, headers=_auth(tenant), timeout=30)
        response.raise_for_status()
        return response.json()["token"]

    def verify(self, tenant: str, token: str, id_image: bytes, video: bytes) -> tuple[int, float, dict]:
        started = time.perf_counter()
        response = httpx.post(f"{self.url}/v1/verifications", headers=_auth(tenant), timeout=300,
                              data={"challenge": token},
                              files={"id_image": ("id.jpg", id_image, "image/jpeg"),
                                     "video": ("v.mp4", video, "video/mp4")})
        body = response.json()
        return response.status_code, time.perf_counter() - started, {k: body.get(k) for k in ("decision", "code")}


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def _raw_request(service: Service, tenant: str, token: str, id_image: bytes, video: bytes) -> tuple[bytes, bytes]:
    """The head and body of a verification as a client would send them."""
    request = httpx.Request("POST", f"{service.url}/v1/verifications", headers=_auth(tenant),
                            data={"challenge": token}, files={"id_image": ("id.jpg", id_image, "image/jpeg"),
                                                              "video": ("v.mp4", video, "video/mp4")})
    body = request.read()
    lines = ["POST /v1/verifications HTTP/1.1", f"Host: 127.0.0.1:{service.port}",
             f"Authorization: Bearer {KEYS[tenant]}", f"Content-Type: {request.headers['content-type']}",
             f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), body


def _slow_client(service: Service, tenant: str, id_image: bytes, video: bytes, mode: str, stop: threading.Event,
                 outcomes: list) -> None:
    """Keeps one slow upload open: half a body then nothing (stall), or a body declared
    just under 32 MiB (the default upload limit) sent at 20 KiB/s, 1 KiB every 50 ms
    (trickle); when the service answers or closes, records the status (None: closed
    without one) and how long it was held, and starts again."""
    while not stop.is_set():
        head, body = _raw_request(service, tenant, service.challenge(tenant), id_image, video)
        if mode == "trickle":
            declared = 32 * 1024 * 1024 - 4096
            head = re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % declared, head)
            body += b"x" * (declared - len(body))
        started = time.monotonic()
        sent = len(body) // 2 if mode == "stall" else 256 * 1024
        with socket.create_connection(("127.0.0.1", service.port)) as sock:
            sock.sendall(head + body[:sent])
            sock.settimeout(0.05)
            answer = None
            while not stop.is_set():
                try:
                    answer = sock.recv(4096)
                    break
                except socket.timeout:
                    if mode == "trickle" and sent < len(body):
                        sock.sendall(body[sent:sent + 1024])
                        sent += 1024
                except OSError:
                    answer = b""
                    break
            if stop.is_set():
                return
            match = re.match(rb"HTTP/1\.1 (\d{3})", answer or b"")
            outcomes.append((int(match.group(1)) if match else None, round(time.monotonic() - started, 1)))


def _media() -> tuple[bytes, bytes]:
    path = TESTDATA / "videos/liveportrait/d18.mp4"
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="bgr24")
    return cv2.imencode(".jpg", frame)[1].tobytes(), path.read_bytes()


def _latencies(runs: list[tuple[int, float, dict]]) -> dict:
    seconds = [s for _, s, _ in runs]
    statuses = [status for status, _, _ in runs]
    return {"statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "answers": sorted({json.dumps(a) for _, _, a in runs}),
            "median_ms": round(statistics.median(seconds) * 1000), "max_ms": round(max(seconds) * 1000)}


def stalled(media: tuple[bytes, bytes], attack: str, count: int) -> dict:
    service = Service()
    try:
        settings = {"workers": 8, "max_waiting": 16}
        service.verify("c", service.challenge("c"), *media)  # warm-up
        alone = [service.verify("c", service.challenge("c"), *media) for _ in range(count)]
        stop = threading.Event()
        outcomes: list = []
        slow = settings["workers"] + settings["max_waiting"]
        threads = [threading.Thread(target=_slow_client, args=(service, "ab"[i % 2], *media, attack, stop, outcomes),
                                    daemon=True) for i in range(slow)]
        for thread in threads:
            thread.start()
        time.sleep(3.0)  # every slow upload is open
        during = [service.verify("c", service.challenge("c"), *media) for _ in range(count)]
        stop.set()
        for thread in threads:
            thread.join(30)
        after = [service.verify("c", service.challenge("c"), *media) for _ in range(count)]
        unloaded = max(statistics.median([s for _, s, _ in alone]), statistics.median([s for _, s, _ in after]))
        ok_during = [s for status, s, _ in during if status == 200]
        return {"attack": attack, "slow_uploads": slow, "alone": _latencies(alone), "during": _latencies(during),
                "after": _latencies(after),
                "during_median_over_unloaded": round(statistics.median(ok_during) / unloaded, 2) if ok_during else None,
                "slow_upload_outcomes": {str(s): sum(1 for o in outcomes if o[0] == s)
                                         for s in sorted({o[0] for o in outcomes}, key=str)},
                "slow_upload_held_s": sorted(h for s, h in outcomes if s is not None)[-3:]}
    finally:
        service.stop()


class Redis:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def _ready(service: Service, timeout_s: float = 30) -> float:
    started = time.monotonic()
    while httpx.get(f"{service.url}/readyz", timeout=10).status_code != 200:
        if time.monotonic() - started > timeout_s:
            raise RuntimeError("not ready again")
        time.sleep(0.1)
    return round(time.monotonic() - started, 2)


def redis_hang(media: tuple[bytes, bytes]) -> dict:
    redis = Redis()
    service = Service({"PORTRAIT_REDIS_URL": redis.url})
    cheap = (_compare_image(), _fake_clip())
    try:
        token = service.challenge("c", {"actions": ["blink"]})
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            refused = service.verify("c", token, *cheap)
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        ready_after_s = _ready(service)
        retry = service.verify("c", token, *cheap)
        replay = service.verify("c", token, *cheap)
        return {"while_stopped": refused[0], "while_stopped_answer": refused[2], "ready_again_after_s": ready_after_s,
                "retry_after_resume": retry[0], "retry_answer": retry[2], "replay": replay[0],
                "replay_answer": replay[2]}
    finally:
        service.stop()
        redis.kill()


def redis_restart(media: tuple[bytes, bytes]) -> dict:
    redis = Redis()
    service = Service({"PORTRAIT_REDIS_URL": redis.url})
    cheap = (_compare_image(), _fake_clip())
    try:
        token = service.challenge("c", {"actions": ["blink"]})
        spent = service.verify("c", token, *cheap)
        redis.kill()
        redis = Redis(redis.port)
        ready_after_s = _ready(service)
        replay = service.verify("c", token, *cheap)
        fresh = service.verify("c", service.challenge("c", {"actions": ["blink"]}), *cheap)
        return {"spent": spent[0], "ready_again_after_s": ready_after_s, "replay_after_restart": replay[0],
                "replay_answer": replay[2], "fresh_token_after_restart": fresh[0]}
    finally:
        service.stop()
        redis.kill()


def disconnect(media: tuple[bytes, bytes]) -> dict:
    service = Service()
    try:
        head, body = _raw_request(service, "c", service.challenge("c"), *media)
        with socket.create_connection(("127.0.0.1", service.port)) as sock:
            sock.sendall(head + body[: len(body) // 2])
            time.sleep(0.5)
        time.sleep(1.0)
        metrics = httpx.get(f"{service.url}/metrics").text
        counted = {status: sum(float(v) for v in re.findall(
            rf'^portrait_request_duration_seconds_count{{endpoint="/v1/verifications",[^}}]*status="{status}"[^}}]*}} '
            r'([0-9.e+]+)$', metrics, re.M)) for status in ("400", "499")}
        lines = [json.loads(line) for line in service.log.read_text().splitlines() if line.startswith("{")]
        logged = [(line.get("status"), line.get("msg")) for line in lines if line.get("path") == "/v1/verifications"]
        return {"counted_by_status": counted, "access_log": logged}
    finally:
        service.stop()


def drain() -> dict:
    service = Service({"PORTRAIT_DRAIN_GRACE_S": "1"})
    started = time.monotonic()
    status = service.stop()
    lines = [json.loads(line) for line in service.log.read_text().splitlines() if line.startswith("{")]
    return {"exit_status": status, "seconds": round(time.monotonic() - started, 1),
            "log_lines_after_sigterm": [line["msg"] for line in lines if "drain" in line["msg"].lower()
                                        or "shutdown" in line["msg"].lower()]}


def memory(media: tuple[bytes, bytes], extra: dict[str, str]) -> dict:
    service = Service(extra)
    try:
        service.verify("c", service.challenge("c"), *media)
        time.sleep(2)
        report = {"settings": extra, "after_warm_up_mib": service.rss_mib(), "after_bursts_mib": []}
        for _ in range(3):
            with ThreadPoolExecutor(4) as pool:
                tokens = [service.challenge("c") for _ in range(4)]
                results = list(pool.map(lambda t: service.verify("c", t, *media)[0], tokens))
            assert results == [200] * 4, results
            time.sleep(2)
            report["after_bursts_mib"].append(service.rss_mib())
        time.sleep(5)
        report["idle_5s_later_mib"] = service.rss_mib()
        time.sleep(10)
        report["idle_15s_later_mib"] = service.rss_mib()
        report["retained_mib"] = round(report["idle_15s_later_mib"] - report["after_warm_up_mib"], 1)
        return report
    finally:
        service.stop()


def _compare_image() -> bytes:
    return (TESTDATA / "images/face_recognition/examples/obama.jpg").read_bytes()


def _fake_clip() -> bytes:
    return (TESTDATA / "videos/replay_pair/fake.mp4").read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="stalled,redis_hang,redis_restart,disconnect,drain,memory")
    parser.add_argument("--attack", choices=("stall", "trickle"), default="stall")
    parser.add_argument("--requests", type=int, default=5, help="the customer's verifications per phase")
    parser.add_argument("--memory-env", default="", help="extra environment for the memory case, NAME=VALUE,...")
    args = parser.parse_args()
    media = _media()
    cases = {
        "stalled": lambda: stalled(media, args.attack, args.requests),
        "redis_hang": lambda: redis_hang(media),
        "redis_restart": lambda: redis_restart(media),
        "disconnect": lambda: disconnect(media),
        "drain": drain,
        "memory": lambda: memory(media, dict(kv.split("=", 1) for kv in args.memory_env.split(",") if kv)),
    }
    for name in args.only.split(","):
        print(json.dumps({"case": name, **cases[name]()}), flush=True)


if __name__ == "__main__":
    main()
