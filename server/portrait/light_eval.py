"""The light check's material, calibration and evaluation (`portrait calibrate --light`,
`portrait eval light`).

Positives: each live dev clip as a session would record it, lit by a drawn sequence through
the reflection simulation (`portrait.reflection`, conditions drawn per sample). Negatives:
every live clip unlit (a recording made before the session), every attack clip unlit, and
every positive scored against sequences it was not lit for (a recording made for another
session). A session is longer than most dev clips, so a clip is played forward then backward
until the session's recording ends, as a person who keeps moving would fill it; frames are
sampled as the service samples a session's video. FaceMesh runs once per clip on the unlit
frames and the skin is read at those points on every lit version: light changes the colour
of the skin, not where FaceMesh finds it (the service reads the lit frames themselves).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from portrait import challenge, reflection
from portrait.media.limits import VideoLimits
from portrait.pipeline import CALIBRATION, Timings
from portrait.stages import keyframes, light

VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi"}
CHUNK_S = 0.25  # the capture module's MediaRecorder slice: a colour is revealed up to this late
TARGET_FALSE_PASS = 1e-4  # the chance a recording lit for another sequence (or none) passes


@dataclass
class Clip:
    """One dev clip, decoded densely once, with its face and skin points per frame."""

    name: str
    label: str  # "live" or an attack type
    frames: np.ndarray
    times: np.ndarray
    present: np.ndarray  # [N] the face was tracked
    boxes: np.ndarray  # [N,15]
    points: np.ndarray  # [N,P,2] skin sample points (zeros where absent)


def load_clip(offline, path: Path, name: str, label: str) -> Clip | None:
    """Decode at the service's 15 frames per second (up to 40 s) and track the face."""
    limits = replace(offline.settings.video_limits, max_frames=600, max_duration_s=120.0)
    video = offline.decode.video(path.read_bytes(), limits)
    track, mesh = offline.pipeline.track_video(video.frames, Timings())
    if track.reason is not None or mesh is None:
        return None
    kept = np.flatnonzero(track.present)
    points = np.zeros((len(video.frames), len(light.sample_points(np.zeros((1, 468, 2)))[0]), 2))
    points[kept] = light.sample_points(keyframes.frame_points(mesh[1], mesh[0]))
    return Clip(name, label, video.frames, video.timestamps - video.timestamps[0], track.present, track.faces, points)


def session_frames(clip: Clip, record_s: float, limits: VideoLimits) -> np.ndarray:
    """Indices into the clip's frames of the frames a session of `record_s` seconds gives the
    pipeline: the service's sampling over the session, the clip played forward then back."""
    period = max(1.0 / limits.target_fps, record_s / limits.max_frames)
    at = np.arange(0.0, record_s, period)
    length = max(float(clip.times[-1]), 1e-3)
    folded = np.mod(at, 2 * length)
    folded = np.where(folded > length, 2 * length - folded, folded)
    return np.clip(np.searchsorted(clip.times, folded), 0, len(clip.times) - 1), at


def reveal(due_s: np.ndarray, rng: np.random.Generator, record_s: float) -> np.ndarray:
    """When a session reveals each colour: at the first media chunk that reaches its due
    second (up to one slice late); NaN for colours past the end of the recording."""
    shown = due_s + rng.uniform(0, CHUNK_S, due_s.shape)
    return np.where(shown < record_s, shown, np.nan)


@dataclass(frozen=True)
class Sample:
    clip: str
    label: str
    observed: np.ndarray  # [M,2] skin chromaticity of the frames with a face
    times: np.ndarray  # [M]
    shown_s: np.ndarray | None  # [K] what it was lit by (None: unlit)
    colours: np.ndarray | None
    conditions: reflection.Conditions | None


def make_sample(clip: Clip, rng: np.random.Generator, limits: VideoLimits, lit: bool) -> Sample:
    spec = challenge.random_challenge(rng=rng)
    record_s = float(spec.record_s)
    index, at = session_frames(clip, record_s, limits)
    keep = clip.present[index]
    frames, boxes = clip.frames[index], np.where(clip.present[index, None], clip.boxes[index], np.nan)
    shown = colours = conditions = None
    if lit:
        colours, due = light.draw(rng, 1, light.colours_needed(record_s))
        colours, shown = colours[0], reveal(due[0], rng, record_s)
        conditions = reflection.Conditions.draw(rng)
        valid = ~np.isnan(shown)
        frames = reflection.light_clip(frames, at, [None if np.isnan(b[0]) else b for b in boxes],
                                       shown[valid], colours[valid], conditions)
    observed = light.chroma(light.skin_colour(frames[keep], clip.points[index][keep]))
    return Sample(clip.name, clip.label, observed, at[keep], shown, colours, conditions)


def null_scores(sample: Sample, draws: int, rng: np.random.Generator, record_s_of: float | None = None) -> np.ndarray:
    """The sample's score against `draws` sequences drawn for sessions of its length."""
    record_s = record_s_of or float(sample.times[-1]) + 0.1
    colours, due = light.draw(rng, draws, light.colours_needed(record_s))
    return light.scores(sample.observed, sample.times, reveal(due, rng, record_s), colours)[0]


def own_score(sample: Sample) -> float:
    valid = ~np.isnan(sample.shown_s)
    score = light.scores(sample.observed, sample.times, sample.shown_s[valid][None], sample.colours[valid][None])[0][0]
    return float(score)


def read_list(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def clip_rows(root: Path, live_list: Path) -> list[tuple[str, str]]:
    """(path, label): the dev list's clips, and every video of the attack folder's list
    (its live recordings are live clips too; `source` stills are not clips)."""
    rows = [(r["path"], "live" if r["label"].strip() == "live" else (r.get("attack") or "spoof").strip())
            for r in read_list(live_list) if Path(r["path"]).suffix.lower() in VIDEO_SUFFIXES]
    attacks = root / "attacks/attacks.csv"
    if attacks.exists():
        for r in read_list(attacks):
            if Path(r["path"]).suffix.lower() in VIDEO_SUFFIXES and r["label"] in ("live", "spoof"):
                rows.append((f"attacks/{r['path']}", "live" if r["label"] == "live" else r["attack"]))
    return rows
