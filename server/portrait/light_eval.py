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
import sys
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from portrait import challenge, reflection
from portrait.evaluation import recorded
from portrait.media.errors import MediaError
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
    limits = replace(offline.settings.video_limits, max_frames=600, max_duration_s=40.0)
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


@dataclass
class Material:
    """Scores of the light check on the simulated positives and every negative."""

    positives: list[dict]  # per lit sample: clip, conditions, own score
    wrong: np.ndarray  # [P, draws] each positive against sequences it was not lit for
    negatives: dict[str, np.ndarray]  # kind -> scores of unlit clips against drawn sequences
    unlit_clips: dict[str, str]  # clip -> kind
    skipped: dict[str, str]
    draws: int


def build(offline, root: Path, live_list: Path, seed: int, per_clip: int, draws: int, log=None) -> Material:
    """Every clip once: its positives (live dev clips, `per_clip` drawn sequences and
    conditions each) and its unlit negative (each against `draws` drawn sequences); each
    positive also against `draws` sequences it was not lit for. One clip's frames at a time."""
    rng = np.random.default_rng(seed)
    limits = offline.settings.video_limits
    live_dev = {r["path"] for r in read_list(live_list) if r["label"].strip() == "live"}
    positives, wrong, negatives, unlit, skipped = [], [], {}, {}, {}
    for name, kind in clip_rows(root, live_list):
        try:
            clip = load_clip(offline, root / name, name, kind)
        except (OSError, ValueError, MediaError) as error:
            skipped[name] = getattr(error, "code", type(error).__name__)
            continue
        if clip is None:
            skipped[name] = "no face tracked"
            continue
        kind_key = "unlit_live" if kind == "live" else f"unlit_{kind}"
        sample = make_sample(clip, rng, limits, lit=False)
        negatives.setdefault(kind_key, []).append(null_scores(sample, draws, rng, _record_s(rng)))
        unlit[name] = kind_key
        if name in live_dev:
            for _ in range(per_clip):
                lit = make_sample(clip, rng, limits, lit=True)
                positives.append({"clip": name, "score": own_score(lit), "conditions": asdict(lit.conditions)})
                wrong.append(null_scores(lit, draws, rng))
        if log is not None:
            log(f"light material: {name} ({kind}) done")
        del clip
    return Material(positives, np.array(wrong), {k: np.concatenate(v) for k, v in negatives.items()}, unlit,
                    skipped, draws)


def _record_s(rng: np.random.Generator) -> float:
    return float(challenge.random_challenge(rng=rng).record_s)


def _pass_rate(scores: np.ndarray, threshold: float) -> float:
    """A NaN score (too few changes seen) never passes."""
    return float(np.mean(np.nan_to_num(scores, nan=-1.0) >= threshold))


def threshold_for(material: Material, target: float = TARGET_FALSE_PASS) -> float:
    """The lowest threshold at which every kind of negative, and positives scored against
    sequences they were not lit for, pass at most `target` of the time."""
    pools = [material.wrong.ravel(), *material.negatives.values()]
    quantiles = [float(np.quantile(np.nan_to_num(p, nan=-1.0), 1 - target, method="higher")) for p in pools]
    return float(np.nextafter(max(quantiles), np.inf))


def figures(material: Material, threshold: float) -> dict:
    """APCER per kind of negative (unlit clips x drawn sequences), BPCER on the simulated
    positives (with 95% intervals and by light strength), and the chance that a recording
    lit for another sequence passes."""
    from portrait.evaluation import wilson_interval

    own = np.array([p["score"] for p in material.positives])
    strengths = np.array([p["conditions"]["strength"] for p in material.positives])
    rejected = int(np.sum(~(np.nan_to_num(own, nan=-1.0) >= threshold)))
    wrong = material.wrong.ravel()
    wrong_passed = int(np.sum(np.nan_to_num(wrong, nan=-1.0) >= threshold))
    apcer = {kind: {"rate": _pass_rate(scores, threshold), "trials": int(len(scores)),
                    "passed": int(np.sum(np.nan_to_num(scores, nan=-1.0) >= threshold)),
                    "ci95": wilson_interval(int(np.sum(np.nan_to_num(scores, nan=-1.0) >= threshold)), len(scores)),
                    "clips": sum(1 for k in material.unlit_clips.values() if k == kind)}
             for kind, scores in sorted(material.negatives.items())}
    bands = {}
    for low, high in ((0.08, 0.12), (0.12, 0.2), (0.2, 0.3), (0.3, 0.41)):
        inside = (strengths >= low) & (strengths < high)
        if inside.any():
            bands[f"{low}-{high}"] = {"samples": int(inside.sum()),
                                      "bpcer": round(float(np.mean(~(np.nan_to_num(own[inside], nan=-1.0) >= threshold))), 4)}
    return {
        "threshold": round(threshold, 4),
        "bpcer": round(rejected / max(len(own), 1), 4), "bpcer_rejected": rejected, "positives": int(len(own)),
        "bpcer_ci95": wilson_interval(rejected, len(own)),
        "bpcer_by_strength": bands,
        "positive_scores": {"min": _r(np.nanmin(own)), "p5": _r(np.nanpercentile(own, 5)), "median": _r(np.nanmedian(own))},
        "apcer": apcer,
        "apcer_worst_kind": max((v["rate"] for v in apcer.values()), default=None),
        "wrong_sequence": {"rate": round(wrong_passed / max(len(wrong), 1), 7), "passed": wrong_passed,
                           "trials": int(len(wrong)), "draws_per_positive": material.draws,
                           "ci95": wilson_interval(wrong_passed, len(wrong)),
                           "highest": _r(np.nanmax(wrong))},
        "negatives_highest": {kind: _r(np.nanmax(s)) for kind, s in material.negatives.items()},
        "skipped": material.skipped,
    }


def _r(value: float) -> float:
    return round(float(value), 4)


def calibrate(offline, root: Path, live_list: Path, output: Path | None = None, seed: int = 19,
              per_clip: int = 10, draws: int = 2_000) -> dict:
    """`portrait calibrate --light`: the threshold from simulated material, written to the
    calibration record with the data it came from and how optimistic it is."""
    material = build(offline, root, live_list, seed, per_clip, draws, log=lambda line: print(line, file=sys.stderr))
    threshold = recorded(threshold_for(material))
    measured = figures(material, threshold)
    record = {
        "threshold": measured["threshold"],
        "rule": f"the lowest threshold at which every kind of negative and the positives scored against sequences "
                f"they were not lit for pass at most {TARGET_FALSE_PASS:g} of the time",
        "statistic": "mean over colour changes of cos(observed, predicted change of the skin's log-chromaticity) "
                     "x min(r, 1/r) of the change's size over the session's median response; best latency over "
                     f"{light.LAGS_S[0]}-{light.LAGS_S[-1]} s",
        "palette": list(light.NAMES), "durations_s": list(light.DURATIONS_S), "first_s": light.FIRST_S,
        "data": f"{live_list.name}: {len(material.positives)} simulated positives ({per_clip} per live dev "
                f"clip, conditions drawn: reflection.Conditions.draw); negatives: {len(material.unlit_clips)} unlit "
                f"clips ({', '.join(f'{k} {sum(1 for v in material.unlit_clips.values() if v == k)}' for k in sorted(material.negatives))}) "
                f"and every positive against sequences it was not lit for, {draws} drawn sequences each; seed {seed}",
        "figures_at_threshold": {k: measured[k] for k in ("bpcer", "bpcer_ci95", "bpcer_by_strength", "apcer_worst_kind",
                                                          "wrong_sequence", "positive_scores")},
        "optimism": "positives are simulated (reflection.py), not recorded: a real phone's screen, camera and room "
                    "differ, and the threshold was chosen and measured on the same material. Real-phone error rates "
                    "need a pilot (README, Live sessions)",
    }
    target = output or CALIBRATION
    stored = json.loads(target.read_text()) if target.exists() else {}
    stored.update(light=record, light_calibrated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    target.write_text(json.dumps(stored, indent=2) + "\n")
    return {"light": record, "figures": measured}


def evaluate(offline, root: Path, live_list: Path, threshold: float, seed: int = 1919, per_clip: int = 10,
             draws: int = 2_000) -> dict:
    """`portrait eval light`: fresh draws at the shipped threshold."""
    material = build(offline, root, live_list, seed, per_clip, draws)
    return {"seed": seed, **figures(material, threshold),
            "positives_detail": [{"clip": p["clip"], "score": None if np.isnan(p["score"]) else round(p["score"], 4),
                                  "strength": round(p["conditions"]["strength"], 3)} for p in material.positives]}
