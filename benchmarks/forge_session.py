"""The forged-recording attack against live sessions: from one ordinary recording of the
victim (a dev clip), each prompted action is cut out, slowed and placed 0.7 s after its prompt,
with still frames between (`portrait.forgery`), and streamed to a session at the recording's
pace through `portrait.streamer`. Done live, as each prompt is revealed: the strongest form
of the attack, since the session discloses nothing in advance. The ID photo is a frame of
the same clip, so only liveness can stop it.

Each try creates a session whose actions are ones the clip shows (as the attack was tried
against the one-shot mode: only challenges the clip can answer), with the prompt times and
the screen colours drawn by the server. For comparison, `--genuine` tries stream the same
clip, unedited, lit by the colours each session revealed (`portrait.reflection`, conditions
drawn), in sessions whose prompts come before the clip's own actions (d12: turn left, turn
right, open the mouth, prompted at 0.3, 1.5 and 2.6 s).

    python benchmarks/forge_session.py --tries 20 --genuine 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from itertools import permutations
from pathlib import Path

import cv2
import numpy as np

from portrait import forgery, reflection, streamer
from portrait.bench import Service, default_testdata, frame_id_record
from portrait.media.limits import VideoLimits
from portrait.offline import Offline
from portrait.pipeline import Timings
from portrait.settings import Settings

GENUINE = (["turn_left", "turn_right", "open_mouth"], [0.3, 1.5, 2.6])  # what d12 does, prompted before it does it


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--genuine", type=int, default=5)
    parser.add_argument("--clip", default="videos/liveportrait/d12.mp4")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.1, help="the genuine camera's latency after the page "
                        "shows a colour (this client's own frame loop adds one or two frames to it)")
    parser.add_argument("--testdata", type=Path, default=None)
    args = parser.parse_args()
    testdata = args.testdata or default_testdata()
    offline = Offline(Settings())
    video = offline.decode.video((testdata / args.clip).read_bytes(), VideoLimits(max_frames=400, max_side=480))
    analysis = offline.pipeline.analyse_video(video, Timings(), need_embeddings=False)
    times = video.timestamps - video.timestamps[0]
    cuts = forgery.cuts(e for e in analysis.events if e.action != "blink")
    boxes = [f if p else None for f, p in zip(analysis.track.faces, analysis.track.present)]
    id_jpeg = cv2.imencode(".jpg", video.frames[0])[1].tobytes()
    choices = [list(p) for k in (2, 3) for p in permutations(sorted(cuts), k) if len(p) <= len(cuts)]
    rng = np.random.default_rng(args.seed)
    # The ID photo is a frame of the clip: the service reads a calibration record with the
    # generated-face check out of the way (frame_id_record), and answers the bench tenant in
    # full (the light score and the session's record are what is measured).
    service = Service(env={"PORTRAIT_FULL_ANSWER_TENANTS": "bench",
                           "PORTRAIT_CALIBRATION": str(frame_id_record(Path(tempfile.mkdtemp())))})
    headers = {"Authorization": f"Bearer {service.api_key}"}
    size = (video.frames.shape[2], video.frames.shape[1])
    results = {"forged": [], "genuine": []}
    try:
        for kind, count in (("forged", args.tries), ("genuine", args.genuine)):
            for i in range(count):
                actions = choices[int(rng.integers(len(choices)))] if kind == "forged" else GENUINE[0]
                body = {"actions": actions} if kind == "forged" else {"actions": GENUINE[0], "schedule": GENUINE[1]}
                created = service.client.post(f"{service.url}/v1/sessions", json=body, headers=headers).json()
                source = (forgery.Forger(video.frames, times, cuts) if kind == "forged" else
                          reflection.LitCamera(video.frames, times, boxes, replace(reflection.Conditions.draw(rng),
                                                                                    latency_s=args.latency)))
                outcome = streamer.stream(service.url.replace("http", "ws") + created["stream_path"],
                                          created["client_token"], source, size)
                answer = service.client.post(f"{service.url}/v1/sessions/{created['session_id']}/verifications",
                                             headers=headers, files={"id_image": ("id.jpg", id_jpeg, "image/jpeg")}).json()
                light = (answer.get("liveness") or {}).get("light") or {}
                row = {"try": i + 1, "actions": actions, "stream": outcome["last"]["type"],
                       "frames": (answer.get("video") or {}).get("frames"),
                       "light": {k: light.get(k) for k in ("latency_s", "strength", "steps")},
                       "simulated_strength": None if kind == "forged" else round(source.conditions.strength, 3),
                       "decision": answer.get("decision", answer.get("code")), "reasons": answer.get("reasons"),
                       "challenge_reason": ((answer.get("liveness") or {}).get("active") or {}).get("reason"),
                       "light_score": light.get("score"), "light_threshold": light.get("threshold")}
                results[kind].append(row)
                print(json.dumps({kind: row}), file=sys.stderr)
    finally:
        service.close()
    summary = {kind: {"tries": len(rows), "accepted": sum(r["decision"] == "accept" for r in rows),
                      "decisions": dict(Counter(str(r["decision"]) for r in rows)),
                      "reasons": dict(Counter(reason for r in rows for reason in (r["reasons"] or []))),
                      "actions_answered": sum(r["challenge_reason"] is None for r in rows),
                      "light_scores": [r["light_score"] for r in rows]}
               for kind, rows in results.items()}
    print(json.dumps({"clip": args.clip, "cuts": {a: [c.start_s, c.end_s] for a, c in cuts.items()},
                      "summary": summary, "tries": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
