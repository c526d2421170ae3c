"""What a live session costs beside a one-shot verification of the same clip, and the memory
its media take in the service.

CPU: `portrait serve` is started here; each round streams a dev clip lit by the colours the
session reveals (`portrait.reflection.LitCamera` through `portrait.streamer`, the client in
this process) and asks the session's verdict, then verifies the very recording the session
received through the one-shot route (`POST /v1/verifications`, a client-named challenge with
the prompt times the session revealed). The service process's CPU seconds are read from
/proc around the stream, the session's verification and the one-shot verification. The
session's verification judges the recording up to its stop, the one-shot one all of it, so
the session's own extra is also given alone: the stream's CPU and the light check's time.
Memory: `--streams` sessions receive a recorded session's chunks at once, each at the pace it
was recorded; the service's resident size and its session media gauge are sampled throughout.

    python benchmarks/bench_sessions.py --rounds 5 --streams 6
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from portrait import reflection, streamer
from portrait.bench import Service, default_testdata, frame_id_record
from portrait.media.limits import VideoLimits
from portrait.offline import Offline
from portrait.pipeline import Timings
from portrait.settings import Settings

ACTIONS = ["turn_left", "turn_right", "open_mouth"]  # what d12 shows
SCHEDULE = [0.3, 1.5, 2.6]


def load(testdata: Path) -> dict:
    offline = Offline(Settings())
    video = offline.decode.video((testdata / "videos/liveportrait/d12.mp4").read_bytes(),
                                 VideoLimits(max_frames=400, max_side=480))
    track, _ = offline.pipeline.track_video(video.frames, Timings())
    return {"frames": video.frames, "times": video.timestamps - video.timestamps[0],
            "boxes": [f if p else None for f, p in zip(track.faces, track.present)],
            "id": cv2.imencode(".jpg", video.frames[0])[1].tobytes()}


def stream(service: Service, clip: dict, conditions) -> tuple[dict, dict, float]:
    """A session streamed to its end: (created, stream outcome, the service's CPU seconds
    while it streamed)."""
    headers = {"Authorization": f"Bearer {service.api_key}"}
    created = service.client.post(f"{service.url}/v1/sessions", json={"actions": ACTIONS, "schedule": SCHEDULE},
                                  headers=headers).json()
    camera = reflection.LitCamera(clip["frames"], clip["times"], clip["boxes"], conditions)
    before = service._cpu_s()
    outcome = streamer.stream(service.url.replace("http", "ws") + created["stream_path"], created["client_token"],
                              camera, (clip["frames"].shape[2], clip["frames"].shape[1]))
    return created, outcome, service._cpu_s() - before


def verdict(service: Service, clip: dict, created: dict) -> tuple[dict, float]:
    before = service._cpu_s()
    answer = service.client.post(f"{service.url}/v1/sessions/{created['session_id']}/verifications",
                                 headers={"Authorization": f"Bearer {service.api_key}"},
                                 files={"id_image": ("id.jpg", clip["id"], "image/jpeg")}).json()
    return answer, service._cpu_s() - before


def one_shot(service: Service, clip: dict, media: bytes, schedule: list[float]) -> tuple[dict, float]:
    headers = {"Authorization": f"Bearer {service.api_key}"}
    token = service.client.post(f"{service.url}/v1/challenges", json={"actions": ACTIONS, "schedule": schedule},
                                headers=headers).json()["token"]
    before = service._cpu_s()
    answer = service.client.post(f"{service.url}/v1/verifications", headers=headers, data={"challenge": token},
                                 files={"id_image": ("id.jpg", clip["id"], "image/jpeg"),
                                        "video": ("session.webm", media, "video/webm")}).json()
    return answer, service._cpu_s() - before


def replay(url: str, token: str, chunks: list[bytes]) -> str:
    """Send a recorded session's chunks to another session, each when the media it ends
    with would have been recorded."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from portrait.media.webm import MediaClock

    clock = MediaClock()
    ends = [clock.feed(chunk) or 0.0 for chunk in chunks]
    try:
        with connect(url, max_size=2 ** 20) as ws:
            ws.send(json.dumps({"token": token}))
            json.loads(ws.recv(timeout=10))
            start = time.monotonic()
            for chunk, end in zip(chunks, ends):
                time.sleep(max(0.0, end - (time.monotonic() - start)))
                ws.send(chunk)
            ws.send(json.dumps({"type": "end"}))
            while True:
                message = json.loads(ws.recv(timeout=30))
                if message["type"] in ("complete", "error"):
                    return message.get("code", message["type"])
    except ConnectionClosed as closed:
        return f"closed {closed.rcvd.code if closed.rcvd else ''}"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--testdata", type=Path, default=None)
    args = parser.parse_args()
    clip = load(args.testdata or default_testdata())
    # The ID photo is a frame of the clip: the service reads a calibration record with the
    # generated-face check out of the way (frame_id_record), and answers the bench tenant in
    # full (the light score and the session's record are what is measured).
    service = Service(env={"PORTRAIT_FULL_ANSWER_TENANTS": "bench",
                           "PORTRAIT_CALIBRATION": str(frame_id_record(Path(tempfile.mkdtemp())))})
    try:
        rounds = []
        for i in range(args.rounds):
            created, outcome, streamed = stream(service, clip, reflection.Conditions(strength=0.2, seed=i))
            schedule = [m["media_s"] for m in outcome["revealed"].messages if m["type"] == "prompt"]
            # The two verifications of the same recording, in alternating order (warm caches).
            if i % 2 == 0:
                answer, judged = verdict(service, clip, created)
                plain, plain_cpu = one_shot(service, clip, outcome["media"], schedule)
            else:
                plain, plain_cpu = one_shot(service, clip, outcome["media"], schedule)
                answer, judged = verdict(service, clip, created)
            rounds.append({"session_cpu_s": round(streamed + judged, 3), "one_shot_cpu_s": round(plain_cpu, 3),
                           "stream_cpu_s": round(streamed, 3), "session_verification_cpu_s": round(judged, 3),
                           "session": [answer["decision"], answer["reasons"]],
                           "one_shot": [plain.get("decision"), plain.get("reasons")],
                           "light_ms": answer["timings_ms"].get("light"), "media_bytes": len(outcome["media"])})
            print(json.dumps(rounds[-1]), file=sys.stderr)
        session_cpu = float(np.mean([r["session_cpu_s"] for r in rounds]))
        plain_cpu = float(np.mean([r["one_shot_cpu_s"] for r in rounds]))
        extra = float(np.mean([r["stream_cpu_s"] + (r["light_ms"] or 0) / 1000 for r in rounds]))
        recorded = outcome["chunks"]

        samples, stop = [], threading.Event()
        pid = service.process.pid

        def sample() -> None:
            while not stop.is_set():
                gauge = [float(line.split()[-1]) for line in service.client.get(f"{service.url}/metrics").text.splitlines()
                         if line.startswith("portrait_session_media_bytes ")]
                samples.append((rss_bytes(pid), gauge[0] if gauge else 0.0))
                time.sleep(0.2)

        idle = rss_bytes(pid)
        watcher = threading.Thread(target=sample)
        watcher.start()
        headers = {"Authorization": f"Bearer {service.api_key}"}
        held = [service.client.post(f"{service.url}/v1/sessions", json={"actions": ACTIONS, "schedule": SCHEDULE},
                                    headers=headers).json() for _ in range(args.streams)]
        ends: list[str] = []
        threads = [threading.Thread(target=lambda c=c: ends.append(replay(
            service.url.replace("http", "ws") + c["stream_path"], c["client_token"], recorded)))
            for c in held]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(0.5)
        stop.set()
        watcher.join()
        peak_rss, peak_media = max(r for r, _ in samples), max(m for _, m in samples)
        report = {
            "machine_load": open("/proc/loadavg").read().split()[:3],
            "rounds": rounds,
            "session_cpu_s_mean": round(session_cpu, 3), "one_shot_cpu_s_mean": round(plain_cpu, 3),
            "session_over_one_shot": round(session_cpu / plain_cpu, 3),
            "stream_and_light_cpu_s_mean": round(extra, 3),
            "stream_and_light_over_one_shot": round(extra / plain_cpu, 3),
            "memory": {"streams": args.streams, "stream_outcomes": dict(Counter(ends)),
                       "recorded_session_bytes": sum(map(len, recorded)), "rss_idle_mib": round(idle / 2 ** 20, 1),
                       "rss_peak_mib": round(peak_rss / 2 ** 20, 1),
                       "rss_added_per_stream_mib": round((peak_rss - idle) / args.streams / 2 ** 20, 2),
                       "media_held_peak_mib": round(peak_media / 2 ** 20, 2),
                       "media_per_stream_mib": round(peak_media / args.streams / 2 ** 20, 2)},
        }
        print(json.dumps(report, indent=2))
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
