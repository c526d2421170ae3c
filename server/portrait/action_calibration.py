"""The action stage's thresholds, chosen on clips a person annotated (`portrait calibrate
--actions`).

Each kind of movement is tuned on its own, over a grid of its thresholds: the score is the
annotated actions found exactly once with the start within `ONSET_LIMIT_S` of the annotated
start, minus the observed events nothing annotated explains. Of the grid points with the
best score, the one farthest from any worse point (in grid steps) is kept, so the
thresholds sit in the middle of what the data allows, not at its edge.

The dev clips hold no head tilt: tilts are calibrated on the clips as they are (every
observed tilt is an extra) and on copies whose roll signal carries a synthetic tilt
(`SYNTHETIC_TILT_DEG` for `SYNTHETIC_TILT_S`) in the middle; roll is an in-plane rotation,
which YuNet's eye points follow, so adding it to the signal is what rotating the frames
would do, less the detector's own error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from itertools import product

import numpy as np

from portrait.action_scoring import Span, match_clip, summarise
from portrait.stages.liveness import (
    Hysteresis, LivenessThresholds, blinks, excursions, mouth_openings, relative_pose,
)

ONSET_LIMIT_S = 0.3  # an observed start further than this from the annotated one does not count
NEGATIVES_MARGIN = 2  # grid steps from any extra event, for a kind the clips never show
SYNTHETIC_TILT_DEG = 20.0
SYNTHETIC_TILT_S = 1.0

FAMILIES = {"turn": ("turn_left", "turn_right"), "tilt": ("tilt_left", "tilt_right"),
            "look": ("look_up", "look_down"), "mouth": ("open_mouth",), "blink": ("blink",)}
# The pose column each head movement reads, and the sign of its first action.
_AXIS = {"turn": 0, "look": 1, "tilt": 2}

GRIDS: dict[str, dict[str, np.ndarray]] = {
    "turn": {"enter": np.arange(6.0, 30.01, 1.0), "exit": np.arange(2.0, 20.01, 2.0),
             "min_s": np.round(np.arange(0.1, 0.801, 0.1), 2)},
    "tilt": {"enter": np.arange(6.0, 20.01, 1.0), "exit": np.arange(2.0, 14.01, 2.0),
             "min_s": np.round(np.arange(0.1, 0.801, 0.1), 2)},
    "look": {"enter": np.arange(3.0, 30.01, 1.0), "exit": np.arange(1.0, 15.01, 2.0),
             "min_s": np.round(np.arange(0.1, 1.201, 0.1), 2), "look_max_yaw": np.array([15.0, 20.0, 30.0, 90.0])},
    "mouth": {"enter": np.round(np.arange(0.2, 0.701, 0.02), 2), "exit": np.round(np.arange(0.06, 0.501, 0.02), 2),
              "min_s": np.round(np.arange(0.1, 1.001, 0.05), 2)},
}
REST_BANDS = np.array([2.0, 3.0, 4.0, 5.0])
BLINK_GRIDS = {  # tuned one group after another, in this order
    ("closed_ratio", "reopened_ratio"): (np.round(np.arange(0.3, 0.701, 0.05), 2),
                                         np.round(np.arange(0.55, 0.901, 0.05), 2)),
    ("max_blink_s",): (np.round(np.arange(0.3, 1.201, 0.1), 2),),
    ("max_pitch_shift",): (np.arange(2.0, 40.01, 2.0),),
}
# Where the blink search starts: permissive, so the first group is not held back by the others.
BLINK_START = {"closed_ratio": 0.5, "reopened_ratio": 0.75, "max_blink_s": 1.2, "max_pitch_shift": 40.0}


@dataclass(frozen=True)
class ClipSignals:
    """What the action stage reads from one clip."""

    times: np.ndarray  # [N] seconds
    openness: np.ndarray  # [N,2]
    pose: np.ndarray  # [N,3] yaw, pitch, roll (`landmarks.action_pose`)
    mouth: np.ndarray  # [N]


def score(per_clip: list[dict], actions: tuple[str, ...]) -> int:
    """Annotated actions found once with the start close enough, minus extra events."""
    total = 0
    for clip in per_clip:
        for action in actions:
            row = clip.get(action)
            if row is not None:
                total += sum(1 for e in row["onset_errors_s"] if abs(e) <= ONSET_LIMIT_S) - row["extra"]
    return total


def _margin(best: np.ndarray) -> np.ndarray:
    """Grid steps from each True cell to the nearest False cell or the grid's edge (chessboard)."""
    margin = np.zeros(best.shape, int)
    inside = best.copy()
    while inside.any():
        margin += inside
        padded = np.pad(inside, 1, constant_values=False)
        shrunk = np.ones(best.shape, bool)
        for shift in product((0, 1, 2), repeat=best.ndim):
            shrunk &= padded[tuple(slice(s, s + n) for s, n in zip(shift, best.shape))]
        inside = shrunk
    return margin


def choose(scores: np.ndarray, sensitive: bool = False) -> tuple[tuple[int, ...], int]:
    """The grid index kept among those with the best score (the one deepest inside their
    region; the middle one of those tied), and its depth in grid steps.

    `sensitive`, for a kind of action the clips never show (nothing but extras to avoid):
    the lowest first threshold (grid axis 0) at least `NEGATIVES_MARGIN` steps inside the
    region, since deeper would only make a real one harder to see."""
    best = scores == scores.max()
    margin = _margin(best)
    if sensitive:
        deep = np.argwhere(margin >= min(NEGATIVES_MARGIN, margin.max()))
        lowest = deep[deep[:, 0] == deep[:, 0].min()]
        index = tuple(int(i) for i in lowest[len(lowest) // 2])
        return index, int(margin[index])
    deepest = np.argwhere(margin == margin.max())
    return tuple(int(i) for i in deepest[len(deepest) // 2]), int(margin.max())


def _spans(events) -> list[Span]:
    return [Span(e.action, e.start_s, e.end_s) for e in events]


def _head_events(family: str, relative: np.ndarray, times: np.ndarray, band: Hysteresis) -> list[Span]:
    first, second = FAMILIES[family]
    signal = relative[:, _AXIS[family]]
    return [Span(action, float(times[a]), float(times[b]))
            for action, sign in ((first, 1.0), (second, -1.0))
            for a, b in excursions(sign * signal, times, band, 0.0)]


def _synthetic_tilts(clips: dict[str, ClipSignals]) -> list[tuple[ClipSignals, list[Span]]]:
    """Each clip with a tilt to each side added to its roll in the middle, and its span."""
    out = []
    for signals in clips.values():
        t = signals.times
        start = t[0] + (t[-1] - t[0] - SYNTHETIC_TILT_S) / 2
        phase = np.clip((t - start) / SYNTHETIC_TILT_S, 0.0, 1.0)
        bump = SYNTHETIC_TILT_DEG * np.sin(np.pi * phase) ** 0.5
        for action, sign in (("tilt_left", 1.0), ("tilt_right", -1.0)):
            pose = signals.pose.copy()
            pose[:, 2] += sign * bump
            out.append((replace(signals, pose=pose), [Span(action, float(start), float(start + SYNTHETIC_TILT_S))]))
    return out


def _head_family(family: str, data: list[tuple[ClipSignals, list[Span]]], rest_band: float,
                 base: LivenessThresholds) -> tuple[dict, int, int]:
    grid = GRIDS[family]
    names = list(grid)
    actions = FAMILIES[family]
    shape = tuple(len(v) for v in grid.values())
    scores = np.full(shape, -10**6)
    relative_by_yaw: dict[float, list[np.ndarray]] = {}
    for index in product(*(range(n) for n in shape)):
        values = {name: float(grid[name][i]) for name, i in zip(names, index)}
        if values["exit"] >= values["enter"]:
            continue
        limit = values.get("look_max_yaw", base.look_max_yaw)
        if limit not in relative_by_yaw:
            bounds = replace(base, rest_band=rest_band, look_max_yaw=limit)
            relative_by_yaw[limit] = [relative_pose(s.pose, bounds) for s, _ in data]
        band = Hysteresis(values["enter"], values["exit"], values["min_s"])
        per_clip = [match_clip([a for a in annotated if a.action in actions],
                               _head_events(family, relative, s.times, band))
                    for (s, annotated), relative in zip(data, relative_by_yaw[limit])]
        scores[index] = score(per_clip, actions)
    shown = any(a.action in actions for _, annotated in data for a in annotated)
    index, margin = choose(scores, sensitive=not shown)
    chosen = {name: float(grid[name][i]) for name, i in zip(names, index)}
    return chosen, int(scores[index]), margin


def _mouth(data: list[tuple[ClipSignals, list[Span]]], base: LivenessThresholds) -> tuple[dict, int, int]:
    grid = GRIDS["mouth"]
    shape = tuple(len(v) for v in grid.values())
    scores = np.full(shape, -10**6)
    for index in product(*(range(n) for n in shape)):
        enter, exit_, min_s = (float(grid[name][i]) for name, i in zip(grid, index))
        if exit_ >= enter:
            continue
        limits = replace(base, mouth=Hysteresis(enter, exit_, min_s))
        per_clip = [match_clip([a for a in annotated if a.action == "open_mouth"],
                               _spans(mouth_openings(s.mouth, s.times, limits))) for s, annotated in data]
        scores[index] = score(per_clip, ("open_mouth",))
    index, margin = choose(scores)
    return {name: float(grid[name][i]) for name, i in zip(grid, index)}, int(scores[index]), margin


def _blinks(data: list[tuple[ClipSignals, list[Span]]], base: LivenessThresholds) -> tuple[dict, int, dict]:
    chosen = dict(BLINK_START)
    pitch = [relative_pose(s.pose, base)[:, 1] for s, _ in data]
    margins, best = {}, 0
    for names, axes in BLINK_GRIDS.items():
        scores = np.full(tuple(len(a) for a in axes), -10**6)
        for index in product(*(range(len(a)) for a in axes)):
            values = {**chosen, **{n: float(a[i]) for n, a, i in zip(names, axes, index)}}
            limits = replace(base, **values)
            per_clip = [match_clip([a for a in annotated if a.action == "blink"],
                                   _spans(blinks(s.openness, p, s.times, limits)))
                        for (s, annotated), p in zip(data, pitch)]
            scores[index] = score(per_clip, ("blink",))
        index, margin = choose(scores)
        chosen.update({n: float(a[i]) for n, a, i in zip(names, axes, index)})
        margins["+".join(names)] = margin
        best = int(scores[index])
    return chosen, best, margins


# Where the search starts (each kind's thresholds are then searched on their grid). The
# signals a calibration reads do not depend on them.
STARTING_POINT = LivenessThresholds(turn=Hysteresis(15.0, 8.0, 0.3), tilt=Hysteresis(15.0, 8.0, 0.3),
                                    look=Hysteresis(15.0, 8.0, 0.3), mouth=Hysteresis(0.45, 0.3, 0.3),
                                    look_max_yaw=90.0, rest_band=3.0, **BLINK_START)


def calibrate(clips: dict[str, ClipSignals], annotations: dict[str, list[Span]]) -> dict:
    """Thresholds for every kind of action, with each one's score and margin."""
    data = [(clips[path], annotations[path]) for path in sorted(clips)]
    tilt_data = [(s, []) for s, _ in data] + _synthetic_tilts(clips)
    start = STARTING_POINT
    best = None
    for rest_band in REST_BANDS:  # the rest pose's band, on the turns (the clips' largest head moves)
        found = _head_family("turn", data, float(rest_band), start)
        if best is None or (found[1], found[2]) > (best[1][1], best[1][2]):
            best = (float(rest_band), found)
    rest_band, turn = best
    heads = {"turn": turn, **{family: _head_family(family, tilt_data if family == "tilt" else data, rest_band, start)
                              for family in ("tilt", "look")}}
    look = heads["look"][0]
    limits = replace(start, rest_band=rest_band, look_max_yaw=look.pop("look_max_yaw"),
                     **{family: Hysteresis(**heads[family][0]) for family in ("turn", "tilt")},
                     look=Hysteresis(**look))
    mouth, mouth_score, mouth_margin = _mouth(data, limits)
    limits = replace(limits, mouth=Hysteresis(**mouth))
    blink, blink_score, blink_margins = _blinks(data, limits)
    limits = replace(limits, **blink)
    return {
        "thresholds": asdict(limits),
        "search": {
            **{family: {"score": heads[family][1], "margin_steps": heads[family][2]} for family in heads},
            "mouth": {"score": mouth_score, "margin_steps": mouth_margin},
            "blink": {"score": blink_score, "margin_steps": blink_margins},
            "rest_band": rest_band,
            "grids": {family: {k: [float(v[0]), float(v[-1]), len(v)] for k, v in grid.items()}
                      for family, grid in GRIDS.items()},
        },
    }


def evaluate(clips: dict[str, ClipSignals], annotations: dict[str, list[Span]], limits: LivenessThresholds,
             observe) -> dict:
    """Each clip's observed events against its annotations, and the summary per action type.
    `observe(signals, limits)` gives a clip's events (the pipeline's own function)."""
    per_clip = {path: match_clip(annotations[path], _spans(observe(clips[path], limits))) for path in sorted(clips)}
    return {"actions": summarise(per_clip), "clips": per_clip}
