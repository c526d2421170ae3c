"""`portrait bench`: the standard workload, in process and through the HTTP service, beside a
plain OpenCV job measured in the same run.

The workload is one verification: an ID photo and a selfie clip (by default the test data's
`images/compreface/004_A.jpg` and `videos/replay_pair/real.mp4`, 3.7 s of 1080x720 H.264).
The plain job does a fraction of Portrait's work with the same published YuNet and SFace
files through OpenCV: it decodes the clip, detects on every third frame scaled to 640, embeds
the best face and the ID face and compares them, with no liveness, in two processes. It is
the yardstick: Portrait's verifications/s at each concurrency are printed as a ratio of it.

The profile mode runs verifications one at a time in process, without the batcher, and
charges the process's CPU seconds to each stage and to each model call inside it: one request
at a time, so the runtimes' and the decoder's helper threads work for the call that waits on
them. It says where the time goes, not how fast the service is.

Figures, not assertions: every run prints its table and a JSON line, names the machine and
the runtime each model ran on.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from portrait.settings import Settings, usable_cores

if TYPE_CHECKING:
    from portrait.backends.base import InferenceBackend
    from portrait.frames import FrameOps
    from portrait.media import Decoder

KEY = "bench-key-0123456789abcdef"
MODELS = ("yunet", "facemesh", "iris_landmark", "minifasnet_v2", "sface", "dlib_resnet")
REQUIRED = ["blink"]


@dataclass(frozen=True)
class Workload:
    id_image: Path
    video: Path

    def load(self) -> tuple[bytes, bytes]:
        return self.id_image.read_bytes(), self.video.read_bytes()


@dataclass
class Level:
    """One row of the table: a mode at one concurrency."""

    mode: str
    concurrency: int
    latencies_s: list[float]
    wall_s: float
    ok: int
    cpu_s: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)  # mean per verification
    rows_per_call: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_s) * 1000
        count = len(self.latencies_s)
        return {
            "mode": self.mode, "concurrency": self.concurrency, "requests": count, "ok": self.ok,
            "verifications_per_s": round(count / self.wall_s, 3),
            "p50_ms": round(float(np.percentile(lat, 50))), "p95_ms": round(float(np.percentile(lat, 95))),
            "p99_ms": round(float(np.percentile(lat, 99))),
            "cpu_s_per_verification": None if self.cpu_s is None else round(self.cpu_s / count, 2),
            "stages_ms": {k: round(v) for k, v in self.stages_ms.items()},
            "rows_per_call": {k: round(v, 1) for k, v in self.rows_per_call.items()},
            "decisions": self.decisions,
        }


def default_testdata() -> Path:
    return Path(os.environ.get("PORTRAIT_TESTDATA", Path.cwd().parent / "shared" / "testdata"))


def frame_id_record(folder: Path) -> Path:
    """A copy of the shipped calibration record with the generated-face check's threshold
    above any score (2; scores are correlations, at most 1), for runs whose ID photo must be
    a frame of the selfie itself: the test data hold no second capture of the people in the
    clips. The check rightly refuses such an ID photo (tests/test_synthetic.py); these runs
    are about everything else."""
    from portrait.pipeline import CALIBRATION

    record = json.loads(CALIBRATION.read_text())
    record["synthetic"]["derived_from_id"]["threshold"] = 2.0
    path = folder / "calibration-frame-id.json"
    path.write_text(json.dumps(record))
    return path


def machine() -> dict:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        found = re.search(r"^Model name:\s*(.+)$", subprocess.run(["lscpu"], capture_output=True, text=True).stdout, re.M)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


# ---- in process ---------------------------------------------------------------------------


class _Rows:
    """Batcher observer: rows per model call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[str, list[int]] = {}

    def batch(self, model: str, rows: int, items: int, seconds: float) -> None:
        with self.lock:
            self.rows.setdefault(model, []).append(rows)

    def queue_wait(self, model: str, seconds: float) -> None: ...

    def queue_depth(self, model: str, rows: int) -> None: ...

    def dropped(self, model: str, reason: str) -> None: ...

    def take(self) -> dict[str, float]:
        with self.lock:
            taken, self.rows = self.rows, {}
        return {m: float(np.mean(taken[m])) for m in MODELS if m in taken}


class InProcess:
    """The service's engine without HTTP: the configured backend behind the cross-request
    batcher, one thread per concurrent verification. A GPU benchmark passes its own backend,
    frame path and decoder (`benchmarks/gpu_verify.py`) and names its rows."""

    def __init__(self, settings: Settings, backend: InferenceBackend | None = None, frames: FrameOps | None = None,
                 decode: Decoder | None = None, mode: str = "in_process") -> None:
        from portrait.backends import backend_from_settings, model_runtimes
        from portrait.batching import BatchingBackend
        from portrait.media import decoder
        from portrait.pipeline import CALIBRATION, Pipeline, config_from_record
        from portrait.service.inference import batch_policies, one_opencv_thread

        one_opencv_thread()
        self.settings = settings
        self.cores = usable_cores()
        self.mode = mode
        self.observer = _Rows()
        inner = backend or backend_from_settings(settings)
        self.runtimes = model_runtimes(inner)
        self.batcher = BatchingBackend(inner, batch_policies(settings), observer=self.observer)
        self.pipeline = Pipeline(self.batcher, config_from_record(settings.calibration or CALIBRATION, detect_every=settings.video_detect_every), frames)
        self.decode = decode or decoder(settings.decoder)

    def verify(self, id_bytes: bytes, video_bytes: bytes, running: int = 1) -> tuple[float, dict]:
        """One verification, decoded as the service decodes it with `running` requests at work."""
        from portrait.challenge import ChallengeSpec
        from portrait.media.video import decoder_threads, no_checkpoint
        from portrait.pipeline import Timings

        timings = Timings()
        start = time.perf_counter()
        with timings.stage("decode"):
            image = self.decode.image(id_bytes, max_pixels=self.settings.max_image_pixels)
            video = self.decode.video(video_bytes, self.settings.video_limits, no_checkpoint,
                                      decoder_threads(running, self.cores))
        answer = self.pipeline.verify(image, video, ChallengeSpec(tuple(REQUIRED)), timings=timings)
        return time.perf_counter() - start, answer

    def level(self, concurrency: int, requests: int, id_bytes: bytes, video_bytes: bytes) -> Level:
        self.observer.take()
        cpu = time.process_time()
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda _: self.verify(id_bytes, video_bytes, concurrency), range(requests)))
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        names = dict.fromkeys(s for _, a in results for s in a["timings_ms"])
        stages = {s: float(np.mean([a["timings_ms"].get(s, 0.0) for _, a in results])) for s in names}
        return Level(self.mode, concurrency, [t for t, _ in results], wall, len(results), cpu, stages,
                     self.observer.take(), _count(a["decision"] for _, a in results))

    def close(self) -> None:
        self.batcher.close()


# ---- through the HTTP service ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout_s: float = 180) -> None:
    """Until `url`/readyz answers 200; an error if `process` (when given) exits or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"portrait serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"service at {url} did not become ready")


def start_serve(env: dict[str, str], log=subprocess.DEVNULL, timeout_s: float = 180) -> tuple[subprocess.Popen, str]:
    """`portrait serve` on a free port, with `env` over this process's environment, returned
    once ready (killed if it does not become ready). `log` takes its stdout and stderr."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "portrait.cli", "serve"],
                               env={**os.environ, **env, "PORTRAIT_PORT": str(port)}, stdout=log,
                               stderr=subprocess.STDOUT if log is not subprocess.DEVNULL else subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout_s)
    except RuntimeError:
        process.kill()
        raise
    return process, url


class Service:
    """A running service: started here (`portrait serve` under uvicorn) or at `url`."""

    def __init__(self, url: str | None = None, api_key: str = KEY, env: dict[str, str] | None = None) -> None:
        import httpx

        self.process: subprocess.Popen | None = None
        self.api_key = api_key
        if url is None:
            self.process, url = start_serve({
                "PORTRAIT_API_KEYS": f"bench:{KEY}", "PORTRAIT_CLIENT_ACTIONS_TENANTS": "bench",
                "PORTRAIT_RATE_LIMIT_PER_S": "1000", "PORTRAIT_RATE_LIMIT_BURST": "1000", "PORTRAIT_LOG_LEVEL": "WARNING",
                "PORTRAIT_MAX_WAITING": "64", "PORTRAIT_MAX_IN_FLIGHT_PER_TENANT": "63", "PORTRAIT_MAX_UPLOADS": "64",
                "PORTRAIT_REQUEST_TIMEOUT_S": "600", **(env or {})})
        self.url = url
        self.client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64))
        if self.process is None:
            wait_ready(url)

    def _cpu_s(self) -> float | None:
        """CPU seconds of the service process so far (only when this bench started it)."""
        return None if self.process is None else process_cpu_s(self.process.pid)

    def verify(self, id_bytes: bytes, video_bytes: bytes) -> tuple[float, int, str | None]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        challenge = self.client.post(f"{self.url}/v1/challenges", json={"actions": REQUIRED}, headers=headers)
        if challenge.status_code >= 400:  # a service that chooses the actions itself
            challenge = self.client.post(f"{self.url}/v1/challenges", json={}, headers=headers)
        start = time.perf_counter()
        response = self.client.post(f"{self.url}/v1/verifications", headers=headers,
                                    data={"challenge": challenge.json()["token"]},
                                    files={"id_image": ("id.jpg", id_bytes), "video": ("clip.mp4", video_bytes)})
        decision = response.json().get("decision") if response.status_code == 200 else None
        return time.perf_counter() - start, response.status_code, decision

    def level(self, concurrency: int, requests: int, id_bytes: bytes, video_bytes: bytes) -> Level:
        before, cpu = self.client.get(f"{self.url}/metrics").text, self._cpu_s()
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda _: self.verify(id_bytes, video_bytes), range(requests)))
        wall = time.perf_counter() - start
        after, cpu_after = self.client.get(f"{self.url}/metrics").text, self._cpu_s()
        ok = sum(1 for _, status, _ in results if status == 200)
        names = dict.fromkeys(re.findall(r'^portrait_stage_duration_seconds_count{stage="([^"]+)"}', after, re.M))
        stages = {s: _mean(before, after, "portrait_stage_duration_seconds", "stage", s) * 1000 for s in names}
        rows = {m: _mean(before, after, "portrait_batch_size", "model", m) for m in MODELS}
        return Level("service", concurrency, [t for t, _, _ in results], wall, ok,
                     None if cpu is None else cpu_after - cpu, stages, rows,
                     _count(d or f"http_{s}" for _, s, d in results))

    def runtimes(self) -> dict[str, str]:
        """The runtime of each model, as the service's `portrait_model_info` says."""
        metrics = self.client.get(f"{self.url}/metrics").text
        return dict(re.findall(r'^portrait_model_info{name="([^"]+)",runtime="([^"]+)"', metrics, re.M))

    def close(self) -> None:
        self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _totals(metrics: str, histogram: str, label: str, value: str) -> np.ndarray:
    found = [re.search(rf'^{histogram}_{part}{{{label}="{value}"}} ([0-9.e+-]+)$', metrics, re.M)
             for part in ("sum", "count")]
    return np.array([float(f.group(1)) if f else 0.0 for f in found])


def _mean(before: str, after: str, histogram: str, label: str, value: str) -> float:
    total, count = _totals(after, histogram, label, value) - _totals(before, histogram, label, value)
    return float(total / count) if count else 0.0


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# ---- the profile: CPU seconds per stage and per model, one verification at a time ---------------


class _Stages:
    """Timings that also charge the process's CPU time to each stage, and remember which
    stage is running so that model calls are charged to it."""

    def __init__(self) -> None:
        from portrait.pipeline import Timings

        self.timings = Timings()
        self.cpu_s: dict[str, float] = {}
        self.current = "-"

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        outer, self.current = self.current, name
        start = time.process_time()
        try:
            with self.timings.stage(name):
                yield
        finally:
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + time.process_time() - start
            self.current = outer

    @property
    def ms(self) -> dict[str, float]:
        return self.timings.ms


class _Charged:
    """A backend that charges each call's process CPU time, rows and calls to (stage, model)."""

    def __init__(self, inner: InferenceBackend, stages: _Stages) -> None:
        self.inner, self.stages, self.name = inner, stages, inner.name
        self.cpu_s: dict[tuple[str, str], float] = {}
        self.rows: dict[tuple[str, str], int] = {}
        self.calls: dict[tuple[str, str], int] = {}

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        start = time.process_time()
        try:
            return self.inner.infer(model, batch)
        finally:
            key = (self.stages.current, model)
            self.cpu_s[key] = self.cpu_s.get(key, 0.0) + time.process_time() - start
            self.rows[key] = self.rows.get(key, 0) + len(batch)
            self.calls[key] = self.calls.get(key, 0) + 1

    def ready(self) -> bool:
        return self.inner.ready()

    def close(self) -> None:
        self.inner.close()


def profile(settings: Settings, id_bytes: bytes, video_bytes: bytes, requests: int) -> dict:
    """CPU seconds per verification: per stage (models included), and per stage and model."""
    from portrait.backends import backend_from_settings, model_runtimes
    from portrait.challenge import ChallengeSpec
    from portrait.media import decoder
    from portrait.pipeline import Pipeline, PipelineConfig

    inner = backend_from_settings(settings)
    decode = decoder(settings.decoder)
    config = PipelineConfig(detect_every=settings.video_detect_every)
    totals: list[float] = []
    stage_cpu: dict[str, float] = {}
    stage_wall: dict[str, float] = {}
    models: dict[tuple[str, str], list[float]] = {}  # CPU s, rows, calls
    try:
        for index in range(requests + 1):  # the first one warms up: first calls compile and allocate
            stages = _Stages()
            charged = _Charged(inner, stages)
            pipeline = Pipeline(charged, config)
            start = time.process_time()
            with stages.stage("decode"):
                image = decode.image(id_bytes, max_pixels=settings.max_image_pixels)
                video = decode.video(video_bytes, settings.video_limits)
            pipeline.verify(image, video, ChallengeSpec(tuple(REQUIRED)), timings=stages)
            if index == 0:
                continue
            totals.append(time.process_time() - start)
            for name, seconds in stages.cpu_s.items():
                stage_cpu[name] = stage_cpu.get(name, 0.0) + seconds
                stage_wall[name] = stage_wall.get(name, 0.0) + stages.ms[name] / 1000
            for key, seconds in charged.cpu_s.items():
                entry = models.setdefault(key, [0.0, 0, 0])
                entry[0] += seconds
                entry[1] += charged.rows[key]
                entry[2] += charged.calls[key]
        runtimes = model_runtimes(inner)
    finally:
        inner.close()
    per = float(requests)
    return {
        "requests": requests, "cpu_s": round(sum(totals) / per, 3), "runtimes": runtimes,
        "stages": {name: {"cpu_s": round(stage_cpu[name] / per, 3), "wall_s": round(stage_wall[name] / per, 3),
                          "model_cpu_s": round(sum(v[0] for (s, _), v in models.items() if s == name) / per, 3)}
                   for name in stage_cpu},
        "models": [{"stage": stage, "model": model, "cpu_s": round(v[0] / per, 3), "rows": round(v[1] / per, 1),
                    "calls": round(v[2] / per, 1), "ms_per_row": round(1000 * v[0] / v[1], 2) if v[1] else None}
                   for (stage, model), v in models.items()],
    }


def profile_table(report: dict) -> str:
    lines = [f"profile: CPU s per verification, one at a time in process, mean of {report['requests']} "
             f"(after one warm-up): {report['cpu_s']} s",
             "| stage | CPU s | of it in models | wall s |", "|---|---|---|---|"]
    for name, s in report["stages"].items():
        lines.append(f"| {name} | {s['cpu_s']} | {s['model_cpu_s']} | {s['wall_s']} |")
    lines += ["", "| stage | model | runtime | calls | rows | CPU s | ms/row |", "|---|---|---|---|---|---|---|"]
    for m in sorted(report["models"], key=lambda m: -m["cpu_s"]):
        lines.append(f"| {m['stage']} | {m['model']} | {report['runtimes'].get(m['model'], '-')} | {m['calls']} | "
                     f"{m['rows']} | {m['cpu_s']} | {m['ms_per_row']} |")
    by_model: dict[str, float] = {}
    for m in report["models"]:
        by_model[m["model"]] = by_model.get(m["model"], 0.0) + m["cpu_s"]
    lines += ["", "per model: " + ", ".join(f"{k} {v:.3f} s" for k, v in sorted(by_model.items(), key=lambda kv: -kv[1]))
              + f"; models {sum(by_model.values()):.3f} s of {report['cpu_s']} s"]
    return "\n".join(lines)


# ---- the plain job ------------------------------------------------------------------------------

_plain_models: tuple = ()


def _plain_init(yunet: str, sface: str) -> None:
    import cv2

    global _plain_models
    _plain_models = (cv2.FaceDetectorYN.create(yunet, "", (320, 320), 0.7, 0.3, 50),
                     cv2.FaceRecognizerSF.create(sface, ""))


def _plain_detect(detector, image: np.ndarray):
    import cv2

    scale = 640 / max(image.shape[:2])
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    detector.setInputSize((small.shape[1], small.shape[0]))
    _, faces = detector.detect(small)
    if faces is None:
        return None
    best = faces[np.argmax(faces[:, -1])].copy()
    best[:14] /= scale
    return best


def _plain_job(paths: tuple[str, str]) -> tuple[float, float | None]:
    """One verification the plain way; returns (seconds, similarity)."""
    import cv2

    detector, recognizer = _plain_models
    start = time.perf_counter()
    id_image = cv2.imread(paths[0], cv2.IMREAD_COLOR)
    id_face = _plain_detect(detector, id_image)
    capture = cv2.VideoCapture(paths[1])
    best, best_frame, index = None, None, 0
    while capture.grab():
        if index % 3 == 0:
            _, frame = capture.retrieve()
            face = _plain_detect(detector, frame)
            if face is not None and (best is None or face[-1] > best[-1]):
                best, best_frame = face, frame
        index += 1
    capture.release()
    score = None
    if id_face is not None and best is not None:
        features = [recognizer.feature(recognizer.alignCrop(image, face))
                    for image, face in ((id_image, id_face), (best_frame, best))]
        score = float(recognizer.match(*features, cv2.FaceRecognizerSF_FR_COSINE))
    return time.perf_counter() - start, score


def plain_job(workload: Workload, requests: int, settings: Settings, processes: int = 2) -> Level:
    from portrait.modelrepo.sources import fetch
    from portrait.modelrepo.specs import DETECTOR, EMBEDDER

    files = [str(fetch(spec.source, settings.cache_dir, settings.model_mirror)) for spec in (DETECTOR, EMBEDDER)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, _plain_init, files) as pool:
        pool.map(_plain_job, [(str(workload.id_image), str(workload.video))] * processes)  # warm-up
        cpu = _children_cpu_s()
        start = time.perf_counter()
        results = pool.map(_plain_job, [(str(workload.id_image), str(workload.video))] * requests, chunksize=1)
        wall = time.perf_counter() - start
        after = _children_cpu_s()
        cpu = after - cpu if cpu is not None and after is not None else None
    return Level("plain_opencv", processes, [t for t, _ in results], wall, len(results), cpu,
                 decisions=_count("compared" if s is not None else "no_face" for _, s in results))


def _children_cpu_s() -> float | None:
    """CPU seconds of the pool's worker processes (Linux /proc)."""
    total = 0.0
    try:
        for child in multiprocessing.active_children():
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None
    return total


# ---- the run and its table ---------------------------------------------------------------------


def run(workload: Workload, levels: list[int], per_level: int, modes: list[str], url: str | None = None,
        api_key: str = KEY, settings: Settings | None = None) -> dict:
    settings = settings or Settings()
    id_bytes, video_bytes = workload.load()
    rows: list[Level] = []
    runtimes: dict[str, dict[str, str]] = {}
    profiled = profile(settings, id_bytes, video_bytes, max(1, per_level)) if "profile" in modes else None
    if profiled is not None:
        runtimes["profile"] = profiled["runtimes"]
    if "plain" in modes:
        rows.append(plain_job(workload, max(2, per_level * 2), settings))
    if "in_process" in modes:
        engine = InProcess(settings)
        runtimes["in_process"] = engine.runtimes
        try:
            rows += [_warm_level(engine, c, per_level, id_bytes, video_bytes) for c in levels]
        finally:
            engine.close()
    if "service" in modes:
        service = Service(url, api_key)
        runtimes["service"] = service.runtimes()
        try:
            rows += [_warm_level(service, c, per_level, id_bytes, video_bytes) for c in levels]
        finally:
            service.close()
    summaries = [r.summary() for r in rows]
    plain = next((s for s in summaries if s["mode"] == "plain_opencv"), None)
    for s in summaries:
        s["x_plain"] = round(s["verifications_per_s"] / plain["verifications_per_s"], 2) if plain else None
    return {"machine": machine(), "workload": {"id_image": str(workload.id_image), "video": str(workload.video)},
            "runtime": settings.runtime, "runtimes": runtimes, "inference_threads": settings.inference_threads,
            "model_calls": settings.concurrent_model_calls(), "workers": settings.workers, "rows": summaries,
            "profile": profiled}


def _warm_level(target: InProcess | Service, concurrency: int, per_level: int, id_bytes: bytes,
                video_bytes: bytes) -> Level:
    """A level measured after one unmeasured round at its concurrency, as the plain job's
    processes are warmed: the first calls compile and allocate, and the first batches merged
    across that many requests allocate for their size (at concurrency 4 the first four
    requests took 2.81-3.19 s, three of them the slowest of 24; a level run right after on
    the same service had none over 2.83 s)."""
    target.level(concurrency, concurrency, id_bytes, video_bytes)
    return target.level(concurrency, max(concurrency, per_level * concurrency), id_bytes, video_bytes)


def table(report: dict) -> str:
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average']}",
             f"workload: {report['workload']['id_image']} + {report['workload']['video']}",
             f"runtime {report['runtime']}, inference threads {report['inference_threads']}, "
             f"calls of one model at once {report['model_calls']}, service workers {report['workers']}; "
             "each level measured after one unmeasured round at its concurrency",
             *(f"runtimes measured ({mode}): " + ", ".join(f"{name}={r}" for name, r in per_model.items())
               for mode, per_model in report.get("runtimes", {}).items()),
             "",
             "| mode | conc | requests | verif/s | x plain | p50 ms | p95 ms | p99 ms | CPU s/verif | "
             "rows/call yunet, facemesh, iris, pad, sface, dlib | decisions |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        rows = ", ".join(str(r["rows_per_call"].get(k, "-")) for k in MODELS) if r["rows_per_call"] else "-"
        decisions = ", ".join(f"{k} {v}" for k, v in r["decisions"].items())
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['ok']}/{r['requests']} | {r['verifications_per_s']} | "
                     f"{r['x_plain']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
                     f"{r['cpu_s_per_verification']} | {rows} | {decisions} |")
    staged = [r for r in report["rows"] if r["stages_ms"]]
    if staged:
        stages = list(dict.fromkeys(s for r in staged for s in r["stages_ms"]))
        lines += ["", "mean ms per verification by stage (waits for batches included):",
                  "| mode | conc | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
        for r in staged:
            lines.append(f"| {r['mode']} | {r['concurrency']} | "
                         + " | ".join(str(r["stages_ms"].get(s, 0)) for s in stages) + " |")
    if report.get("profile"):
        lines += ["", profile_table(report["profile"])]
    return "\n".join(lines)


def main_args(args) -> int:
    testdata = default_testdata()
    workload = Workload(args.id_image or testdata / "images/compreface/004_A.jpg",
                        args.video or testdata / "videos/replay_pair/real.mp4")
    for path in (workload.id_image, workload.video):
        if not path.is_file():
            print(f"portrait bench: {path} not found (pass --id-image/--video or set PORTRAIT_TESTDATA)",
                  file=sys.stderr)
            return 2
    per_level = 1 if args.quick else args.requests
    report = run(workload, args.concurrency, per_level, args.modes, args.url, args.api_key or KEY)
    print(table(report))
    print(json.dumps(report))
    return 0
