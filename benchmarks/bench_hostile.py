"""What hostile uploads cost the service, and what they cost another tenant.

    python benchmarks/bench_hostile.py [--requests 10] [--json out.json]

Starts `portrait serve` (needs a built model repository and ../shared/testdata) with two
tenants. Tenant A sends each hostile file of `tests/hostile.py` once (made here, in memory);
for each the table gives the answer, its wall time, the CPU seconds the server process
spent on it (counted until the process is idle again, so work that outlives the answer is
counted) and its peak resident growth (Linux's VmHWM, reset before each case). Then tenant
B's ordinary `/v1/compare` p95 is measured alone, while A sends the hostile files in a loop
from two clients, and alone again. Prints a table and JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx

from portrait.bench import process_cpu_s, start_serve

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import hostile  # noqa: E402

TESTDATA = Path(os.environ.get("PORTRAIT_TESTDATA", ROOT.parent / "shared" / "testdata"))
KEY_A = "hostile-tenant-a-0123456789"
KEY_B = "ordinary-tenant-b-0123456789"


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.process, self.url = start_serve({
            "PORTRAIT_API_KEYS": f"a:{KEY_A},b:{KEY_B}", "PORTRAIT_RATE_LIMIT_PER_S": "1000",
            "PORTRAIT_RATE_LIMIT_BURST": "1000", "PORTRAIT_LOG_LEVEL": "WARNING", **env})

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def idle(self, limit_s: float) -> None:
        """Wait until the process spends under 5% of a core for a second (or limit_s)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = self.cpu_s()
            time.sleep(1.0)
            if self.cpu_s() - before < 0.05:
                return

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def cases(photo: bytes) -> dict[str, dict]:
    """name -> how to send it (path, files or body, key)."""
    scans = hostile.many_scans_jpeg(6000, 6000, 2800)
    return {
        "progressive JPEG, last scan x2800 (compare)": {
            "path": "/v1/compare", "key": KEY_A, "size": len(scans),
            "files": {"image_a": ("a.jpg", scans, "image/jpeg"), "image_b": ("b.jpg", photo, "image/jpeg")}},
        "MJPEG MOV, 2 frames x 75,000 scans (liveness)": {
            "path": "/v1/liveness", "key": KEY_A, "challenge": True,
            "files": {"video": ("v.mov", hostile.tiny_scans_mov(), "video/quicktime")}},
        "MOV 320x240 with a 16000x16000 frame (liveness)": {
            "path": "/v1/liveness", "key": KEY_A, "challenge": True,
            "files": {"video": ("v.mov", hostile.giant_second_frame_mov(), "video/quicktime")}},
        "30 MiB JSON to /v1/challenges, no key": {
            "path": "/v1/challenges", "key": None, "body": hostile.huge_json(30)},
    }


def send(client: httpx.Client, url: str, case: dict, timeout: float) -> httpx.Response:
    headers = _auth(case["key"]) if case["key"] else {}
    if "body" in case:
        return client.post(f"{url}{case['path']}", content=case["body"], timeout=timeout,
                           headers={**headers, "content-type": "application/json"})
    data = {}
    if case.get("challenge"):
        token = client.post(f"{url}/v1/challenges", json={}, headers=headers).json()["token"]
        data["challenge"] = token
    return client.post(f"{url}{case['path']}", files=case["files"], data=data, headers=headers, timeout=timeout)


def _code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return body.get("code") or body.get("decision") or ""


def measure_cases(server: Server, all_cases: dict[str, dict], timeout: float) -> list[dict]:
    rows = []
    with httpx.Client() as client:
        for name, case in all_cases.items():
            server.idle(30)
            server.reset_peak()
            base, cpu = server.status("VmRSS"), server.cpu_s()
            started = time.perf_counter()
            try:
                response = send(client, server.url, case, timeout)
                answer = f"{response.status_code} {_code(response)}"
            except httpx.TimeoutException:
                answer = "client timeout"
            wall = time.perf_counter() - started
            answered_cpu = server.cpu_s() - cpu
            server.idle(300)
            rows.append({"case": name, "answer": answer, "wall_s": round(wall, 2),
                         "cpu_s_at_answer": round(answered_cpu, 2), "cpu_s": round(server.cpu_s() - cpu, 2),
                         "peak_mib": round((server.status("VmHWM") - base) / 2**20, 1),
                         "kept_mib": round((server.status("VmRSS") - base) / 2**20, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def p95(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def tenant_b(url: str, files: dict, n: int, timeout: float) -> list[tuple[str, float]]:
    out = []
    with httpx.Client(timeout=timeout) as client:
        for _ in range(n):
            started = time.perf_counter()
            try:
                status = str(client.post(f"{url}/v1/compare", files=files, headers=_auth(KEY_B)).status_code)
            except httpx.TimeoutException:
                status = "timeout"
            out.append((status, time.perf_counter() - started))
    return out


def measure_neighbour(server: Server, all_cases: dict[str, dict], photos: tuple[bytes, bytes], n: int,
                      timeout: float) -> dict:
    files = {"image_a": ("a.jpg", photos[0], "image/jpeg"), "image_b": ("b.jpg", photos[1], "image/jpeg")}
    tenant_b(server.url, files, 2, timeout)  # warm-up
    before = tenant_b(server.url, files, n, timeout)
    stop = threading.Event()
    sent: list[str] = []

    def attacker(offset: int) -> None:
        names = list(all_cases)
        with httpx.Client() as client:
            index = offset
            while not stop.is_set():
                try:
                    sent.append(_code(send(client, server.url, all_cases[names[index % len(names)]], timeout)))
                except httpx.HTTPError:
                    sent.append("error")
                index += 1

    with ThreadPoolExecutor(2) as pool:
        for offset in range(2):
            pool.submit(attacker, offset)
        time.sleep(2.0)
        during = tenant_b(server.url, files, n, timeout)
        stop.set()
    server.idle(300)
    after = tenant_b(server.url, files, n, timeout)
    figures = {name: round(p95([s for _, s in runs]) * 1000) for name, runs in
               (("before_ms", before), ("during_ms", during), ("after_ms", after))}
    unloaded = max(figures["before_ms"], figures["after_ms"])
    return {**figures, "ratio": round(figures["during_ms"] / unloaded, 2),
            "b_statuses": sorted({status for status, _ in before + during + after}),
            "attacker_answers": {code: sent.count(code) for code in sorted(set(sent))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10, help="tenant B's requests per phase")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-neighbour", action="store_true")
    parser.add_argument("--cases", default="", help="comma-separated words: run only the cases whose name has one")
    args = parser.parse_args()
    photos = tuple((TESTDATA / f"images/face_recognition/examples/{name}.jpg").read_bytes() for name in ("obama", "biden"))
    all_cases = cases(photos[0])
    if args.cases:
        words = args.cases.split(",")
        all_cases = {name: case for name, case in all_cases.items() if any(word in name for word in words)}
    server = Server({"PORTRAIT_WORKERS": "2", "PORTRAIT_MAX_WAITING": "6", "PORTRAIT_MAX_IN_FLIGHT_PER_TENANT": "4"})
    try:
        rows = measure_cases(server, all_cases, args.timeout)
        neighbour = None if args.skip_neighbour else measure_neighbour(server, all_cases, photos, args.requests,
                                                                       args.timeout)
    finally:
        server.stop()
    print("\n| case | answer | wall s | server CPU s at the answer | server CPU s in all | peak RSS growth MiB | kept MiB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['answer']} | {row['wall_s']} | {row['cpu_s_at_answer']} | {row['cpu_s']} | "
              f"{row['peak_mib']} | {row['kept_mib']} |")
    if neighbour:
        print(f"\ntenant B /v1/compare p95: alone {neighbour['before_ms']} / {neighbour['after_ms']} ms, under A's "
              f"hostile files {neighbour['during_ms']} ms (x{neighbour['ratio']}); B's statuses "
              f"{neighbour['b_statuses']}; A's answers {neighbour['attacker_answers']}")
    result = {"cases": rows, "neighbour": neighbour, "cv2": cv2.__version__}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
