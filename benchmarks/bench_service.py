"""Verifications per second and latency percentiles of the real service at concurrency 1,
4 and 16, with cross-request batching on and, in the same run, with max_batch=1.

    python benchmarks/bench_service.py [--requests-per-client 3] [--video PATH]

Starts `portrait serve` twice on loopback ports (needs a built model repository) and
drives it over HTTP with real media: the ID image is a frame of the clip, the challenge a
blink. Prints a table and JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import cv2
import httpx
import numpy as np

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
KEY = "bench-key-0123456789abcdef"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(extra: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _port()
    env = {**os.environ, "PORTRAIT_PORT": str(port), "PORTRAIT_API_KEYS": f"bench:{KEY}",
           "PORTRAIT_CLIENT_ACTIONS_TENANTS": "bench", "PORTRAIT_RATE_LIMIT_PER_S": "1000",
           "PORTRAIT_RATE_LIMIT_BURST": "1000", "PORTRAIT_LOG_LEVEL": "WARNING", **extra}
    process = subprocess.Popen([sys.executable, "-m", "portrait.cli", "serve"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("service did not become ready")


def _verify(url: str, id_image: bytes, video: bytes) -> tuple[float, int]:
    headers = {"Authorization": f"Bearer {KEY}"}
    token = httpx.post(f"{url}/v1/challenges", json={"actions": ["blink"]}, headers=headers).json()["token"]
    start = time.perf_counter()
    response = httpx.post(f"{url}/v1/verifications", headers=headers, timeout=300, data={"challenge": token},
                          files={"id_image": ("id.jpg", id_image), "video": ("v.mp4", video)})
    return time.perf_counter() - start, response.status_code


def _totals(metrics: str, histogram: str, model: str) -> np.ndarray:
    """(sum, count) so far of one model's histogram."""
    found = [re.search(rf'^{histogram}_{part}{{model="{model}"}} ([0-9.e+]+)$', metrics, re.M)
             for part in ("sum", "count")]
    return np.array([float(f.group(1)) if f else 0.0 for f in found])


def _mean(before: str, after: str, histogram: str, model: str) -> float:
    total, calls = _totals(after, histogram, model) - _totals(before, histogram, model)
    return round(total / calls, 2) if calls else 0.0


def _load(url: str, concurrency: int, per_client: int, id_image: bytes, video: bytes) -> dict:
    before = httpx.get(f"{url}/metrics").text
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: _verify(url, id_image, video), range(concurrency * per_client)))
    wall = time.perf_counter() - started
    latencies = np.array([r[0] for r in results]) * 1000
    after = httpx.get(f"{url}/metrics").text
    return {
        "requests": len(results),
        "ok": sum(1 for r in results if r[1] == 200),
        "status_codes": {str(code): sum(1 for r in results if r[1] == code) for code in sorted({r[1] for r in results})},
        "verifications_per_s": round(len(results) / wall, 2),
        "p50_ms": round(float(np.percentile(latencies, 50))),
        "p95_ms": round(float(np.percentile(latencies, 95))),
        "p99_ms": round(float(np.percentile(latencies, 99))),
        "mean_rows_per_call": {m: _mean(before, after, "portrait_batch_size", m) for m in ("yunet", "facemesh", "sface")},
        "mean_requests_per_call": {m: _mean(before, after, "portrait_batch_requests", m)
                                   for m in ("yunet", "facemesh", "sface")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--video", type=Path, default=TESTDATA / "videos/liveportrait/d0.mp4")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    video = args.video.read_bytes()
    with av.open(str(args.video)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="bgr24")
    id_image = cv2.imencode(".jpg", frame)[1].tobytes()
    report: dict[str, dict] = {}
    for name, extra in (("batching", {}), ("max_batch_1", {"PORTRAIT_BATCH_MAX_ROWS": "1"})):
        process, url = _start({**extra, "PORTRAIT_WORKERS": str(max(args.concurrency))})
        try:
            _verify(url, id_image, video)  # warm-up
            report[name] = {c: _load(url, c, args.requests_per_client, id_image, video) for c in args.concurrency}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    print(f"{'config':<14}{'conc':>5}{'verif/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
          "  rows/call | requests/call (yunet, facemesh, sface)")
    for name, rows in report.items():
        for c, r in rows.items():
            m, q = r["mean_rows_per_call"], r["mean_requests_per_call"]
            print(f"{name:<14}{c:>5}{r['verifications_per_s']:>9}{r['p50_ms']:>8}{r['p95_ms']:>8}{r['p99_ms']:>8}"
                  f"  {m['yunet']}, {m['facemesh']}, {m['sface']} | {q['yunet']}, {q['facemesh']}, {q['sface']}"
                  f"  ({r['ok']}/{r['requests']} ok)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
