"""Active liveness: blinks, head movements and mouth openings read from per-frame eye
openness, head pose and lip gap as a person would name them, and whether they answer the
challenge exactly; and what a fixed recording can answer.

Head moves are measured from the pose the clip holds most, blinks from the clip's own
open-eye level, so a squint or a camera held to one side does not count as an action. Each
kind of action is one event per excursion from rest, with separate enter and exit
thresholds: a turn that wobbles back across the entry threshold is still one turn, and it
starts where the head began to move. Pitch is not judged where the head is turned far.

A challenge is answered when the actions seen are the actions asked, in order, each
beginning within its window after its prompt, and nothing else: a head move or mouth
opening that was not asked for fails it. Natural blinks are tolerated anywhere (people
blink every few seconds); a requested blink (client-named challenges only) must fall in its
window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from portrait.challenge import (
    BLINK, OVERRUN_S, TAIL_S, WINDOW_S, ChallengeSpec, all_schedules, record_after, sequences,
)

# Why a challenge was not answered, in the order they are looked for.
UNREQUESTED, INCOMPLETE, OUT_OF_WINDOW, TOO_LONG, TOO_SHORT = (
    "unrequested_action", "challenge_incomplete", "action_out_of_window", "recording_too_long",
    "recording_too_short")
REASONS = (UNREQUESTED, INCOMPLETE, OUT_OF_WINDOW, TOO_LONG, TOO_SHORT)
PASSED = -1


@dataclass(frozen=True)
class ActionEvent:
    action: str
    start_s: float
    end_s: float
    peak: float  # closed-eye ratio for blinks, the pose signal from rest for head moves, lip gap ratio for the mouth


@dataclass(frozen=True)
class Hysteresis:
    """One kind of movement away from rest, in the signal's units: it begins when the signal
    leaves rest (passes `exit`) and counts when it is past `enter` over at least `min_s`;
    it ends when the signal falls back under `exit`. Between the two thresholds nothing
    changes, so a turn that wobbles is still one turn."""

    enter: float
    exit: float
    min_s: float


@dataclass(frozen=True)
class LivenessThresholds:
    """Every threshold of the action stage. The shipped values come from `portrait calibrate
    --actions` on annotated clips (`pipeline.shipped_liveness`); tests name their own."""

    turn: Hysteresis  # degrees of yaw from the clip's rest pose
    tilt: Hysteresis  # degrees of roll from rest
    look: Hysteresis  # pitch units from rest (`landmarks.action_pose`: grows with head pitch, not degrees)
    mouth: Hysteresis  # lip gap over mouth width (closed is about 0 on any face)
    look_max_yaw: float  # pitch is judged only where the yaw from rest is under this
    rest_band: float  # the rest pose is the pose most frames hold, within this many degrees
    closed_ratio: float  # eyes below this share of the clip's open level are closed
    reopened_ratio: float  # ... until they are back over this share
    max_blink_s: float  # longer closures are eyes shut, not a blink
    max_pitch_shift: float  # a glance down lowers the lids and the head: not a blink

    @classmethod
    def from_record(cls, record: dict) -> LivenessThresholds:
        bands = {k: Hysteresis(**record[k]) for k in ("turn", "tilt", "look", "mouth")}
        return cls(**{**record, **bands})


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end] index pairs (inclusive) of consecutive True values."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def rest_level(values: np.ndarray, band: float) -> float:
    """The level a signal holds most of the time: the value with the most samples within
    `band` of it, refined to the median of those samples. Unlike the median it stays at rest
    when movements in one direction fill half the clip (a head bowed for seconds)."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return 0.0
    near = np.abs(values[:, None] - values[None, :]) <= band
    centre = values[int(np.argmax(near.sum(0)))]
    return float(np.median(values[np.abs(values - centre) <= band]))


def excursions(signal: np.ndarray, times: np.ndarray, band: Hysteresis,
               rest: float | None = None) -> list[tuple[int, int]]:
    """[first, last] indices of each movement away from rest: a run above `band.exit` that is
    above `band.enter` over at least `band.min_s` (first to last frame above it), widened to
    where the signal began to rise from `rest` (by default half the exit threshold) and where
    it came back to it: a slow turn starts when the head starts moving, not when it crosses a
    threshold. NaN (not measurable) keeps the state of the frame before, so a gap neither
    starts nor ends a movement."""
    if len(signal) == 0:
        return []
    known = np.isfinite(signal)
    value = np.where(known, signal, 0.0)
    above = value > band.exit
    last_known = np.maximum.accumulate(np.where(known, np.arange(len(signal)), 0))
    above = np.where(known, above, above[last_known] & known[last_known])
    frame = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    found: list[tuple[int, int]] = []
    for start, end in _runs(above):
        entered = np.flatnonzero(known[start : end + 1] & (value[start : end + 1] > band.enter))
        if not len(entered) or times[start + entered[-1]] - times[start + entered[0]] + frame < band.min_s:
            continue
        first = found[-1][1] + 1 if found else 0
        rest = band.exit / 2 if rest is None else rest
        while start - 1 >= first and rest < value[start - 1] < value[start]:
            start -= 1
        while end + 1 < len(value) and rest < value[end + 1] < value[end]:
            end += 1
        found.append((int(start), int(end)))
    return found


def _events(action: str, signal: np.ndarray, times: np.ndarray, band: Hysteresis,
            rest: float | None = None) -> list[ActionEvent]:
    return [ActionEvent(action, float(times[a]), float(times[b]), round(float(np.nanmax(signal[a : b + 1])), 3))
            for a, b in excursions(signal, times, band, rest)]


def blinks(openness: np.ndarray, pitch: np.ndarray, times: np.ndarray,
           limits: LivenessThresholds) -> list[ActionEvent]:
    """Both eyes close (the more open one under `closed_ratio` of the clip's open level) and
    open again (back over `reopened_ratio`) within `max_blink_s`, with the head level.
    Between the two levels the eyes count as still closed, so a blink that half-opens on
    the way is one blink. openness [N,2], pitch [N] from rest, times [N] seconds."""
    if len(times) < 3:
        return []
    level = max(float(np.percentile(openness.mean(1), 75)), 1e-6)
    shut = -openness.max(1) / level
    band = Hysteresis(-limits.closed_ratio, -limits.reopened_ratio, 0.0)
    events = []
    for start, end in excursions(shut, times, band):
        if start == 0 or end == len(times) - 1 or times[end] - times[start] > limits.max_blink_s:
            continue  # closed at the clip's edge, or for too long
        if np.abs(np.nan_to_num(pitch[start : end + 1])).max() > limits.max_pitch_shift:
            continue
        depth = float(openness[start : end + 1].mean(1).min() / level)
        events.append(ActionEvent("blink", float(times[start]), float(times[end]), round(depth, 3)))
    return events


def relative_pose(pose: np.ndarray, limits: LivenessThresholds) -> np.ndarray:
    """[N,3] yaw, pitch, roll -> the same measured from the clip's rest pose, pitch NaN
    where the head is turned too far for it to mean anything."""
    yaw = pose[:, 0] - rest_level(pose[:, 0], limits.rest_band)
    level = np.abs(yaw) < limits.look_max_yaw
    pitch = pose[:, 1] - rest_level(pose[level, 1], limits.rest_band)
    roll = pose[:, 2] - rest_level(pose[:, 2], limits.rest_band)
    return np.stack([yaw, np.where(level, pitch, np.nan), roll], axis=1)


def head_moves(pose: np.ndarray, times: np.ndarray, limits: LivenessThresholds,
               mirrored: bool = False) -> list[ActionEvent]:
    """Turns, tilts and looks, each one event per excursion from the clip's rest pose.
    pose [N,3] (yaw, pitch, roll) as `landmarks.action_pose` gives it; yaw and roll are
    positive toward the subject's left in an unmirrored recording, so a mirrored one swaps
    left and right."""
    yaw, pitch, roll = relative_pose(pose, limits).T
    side = -1.0 if mirrored else 1.0
    signals = {
        "turn_left": (side * yaw, limits.turn), "turn_right": (-side * yaw, limits.turn),
        "tilt_left": (side * roll, limits.tilt), "tilt_right": (-side * roll, limits.tilt),
        "look_up": (pitch, limits.look), "look_down": (-pitch, limits.look),
    }
    # A move starts where the head leaves its rest level (0 here), however slowly.
    events = [e for action, (signal, band) in signals.items() for e in _events(action, signal, times, band, 0.0)]
    return sorted(events, key=lambda e: e.start_s)


def mouth_openings(mouth: np.ndarray, times: np.ndarray, limits: LivenessThresholds) -> list[ActionEvent]:
    """The mouth opened wide (lip gap over width) and held open, then closed: speech opens
    it as wide for a moment, which the minimum duration leaves out."""
    return _events("open_mouth", mouth, times, limits.mouth)


def observe(openness: np.ndarray, pose: np.ndarray, mouth: np.ndarray, times: np.ndarray,
            limits: LivenessThresholds, mirrored: bool = False) -> list[ActionEvent]:
    """Every action seen in the clip, in order of start. openness [N,2], pose [N,3] (yaw,
    pitch, roll), mouth [N], times [N] seconds after the start of recording."""
    pitch = relative_pose(pose, limits)[:, 1]
    found = [*blinks(openness, pitch, times, limits), *head_moves(pose, times, limits, mirrored),
             *mouth_openings(mouth, times, limits)]
    return sorted(found, key=lambda e: e.start_s)


def outcomes(events: list[ActionEvent], actions: tuple[str, ...], schedules: np.ndarray | None,
             window_s: tuple[float, float], record_s: np.ndarray | None, duration_s: float) -> np.ndarray:
    """Whether one clip's events answer many challenges with the same actions: [M] index
    into REASONS of the first reason each fails, or PASSED. schedules [M,len(actions)]
    and record_s [M] (None: untimed, order only).

    The head moves and mouth openings must be exactly the non-blink actions asked, in
    order (each is then forced); each requested blink takes the earliest blink after the
    previous action that starts in its window, which leaves the most room for the rest.
    """
    count = 1 if schedules is None else len(schedules)
    moves = [e for e in events if e.action != BLINK]
    asked_moves = [a for a in actions if a != BLINK]
    seen_moves = [e.action for e in moves]
    if seen_moves != asked_moves:
        extra = len(seen_moves) > len(asked_moves) or not _is_subsequence(seen_moves, asked_moves)
        return np.full(count, REASONS.index(UNREQUESTED if extra else INCOMPLETE))
    blink_starts = np.array(sorted(e.start_s for e in events if e.action == BLINK))
    if BLINK in actions and len(blink_starts) < actions.count(BLINK):
        return np.full(count, REASONS.index(INCOMPLETE))
    if schedules is None:
        lo, hi = np.full((1, len(actions)), -np.inf), np.full((1, len(actions)), np.inf)
    else:
        lo, hi = schedules + window_s[0], schedules + window_s[1]
    ok = np.ones(count, bool)
    previous = np.full(count, -np.inf)
    forced = iter(moves)
    for i, action in enumerate(actions):
        if action == BLINK:
            at = np.maximum(np.searchsorted(blink_starts, lo[:, i], "left"),
                            np.searchsorted(blink_starts, previous, "right"))
            found = at < len(blink_starts)
            start = blink_starts[np.minimum(at, len(blink_starts) - 1)]
            ok &= found & (start <= hi[:, i])
        else:
            start = np.full(count, next(forced).start_s)
            ok &= (start >= lo[:, i]) & (start <= hi[:, i]) & (start > previous)
        previous = np.where(ok, start, previous)
    result = np.where(ok, PASSED, REASONS.index(INCOMPLETE if schedules is None else OUT_OF_WINDOW))
    if record_s is not None:
        result = np.where(ok & (duration_s > record_s + OVERRUN_S), REASONS.index(TOO_LONG), result)
        result = np.where(ok & (duration_s < record_s - OVERRUN_S), REASONS.index(TOO_SHORT), result)
    return result


def _is_subsequence(part: list[str], whole: list[str]) -> bool:
    remaining = iter(whole)
    return all(any(item == other for other in remaining) for item in part)


@dataclass(frozen=True)
class Verdict:
    reason: str | None  # None when the challenge is answered
    missing: list[str]  # asked for, never seen
    unrequested: list[ActionEvent]  # head moves and mouth openings beyond those asked, in order


def judge(challenge: ChallengeSpec, events: list[ActionEvent], duration_s: float) -> Verdict:
    """One clip against one challenge (the service's question)."""
    schedules = None if challenge.schedule is None else np.array([challenge.schedule], float)
    record_s = None if challenge.record_s is None else np.array([challenge.record_s], float)
    code = int(outcomes(events, challenge.actions, schedules, challenge.window_s, record_s, duration_s)[0])
    seen = [e.action for e in events]
    missing = [a for a in challenge.actions if a not in seen]
    asked = iter(a for a in challenge.actions if a != BLINK)
    wanted = next(asked, None)
    unrequested = []  # the moves left over when the asked ones are matched in order
    for event in (e for e in events if e.action != BLINK):
        if event.action == wanted:
            wanted = next(asked, None)
        else:
            unrequested.append(event)
    return Verdict(None if code == PASSED else REASONS[code], missing, unrequested)




def count_answered(events: list[ActionEvent], duration_s: float, index: np.ndarray, schedules: np.ndarray) -> int:
    """How many of the drawn server challenges (`challenge.draw`) one clip's events answer:
    what a fixed recording of this clip would pass if replayed into the camera."""
    table, answered = sequences(), 0
    order = np.argsort(index, kind="stable")
    which, starts = np.unique(index[order], return_index=True)
    for sequence, rows in zip(which, np.split(order, starts[1:])):
        timed = schedules[rows]
        result = outcomes(events, table[sequence], timed, WINDOW_S, record_after(timed.T), duration_s)
        answered += int((result == PASSED).sum())
    return answered


def answer_rate(events: list[ActionEvent], duration_s: float) -> float:
    """The exact chance that a server challenge is answered by these events: a fixed
    recording replayed into the camera. Only the challenge whose sequence is the recording's
    own moves can pass (every other fails as unrequested or incomplete), so the chance is
    1 / (number of sequences) times the share of the equally likely schedules it fits."""
    moves = tuple(e.action for e in events if e.action != BLINK)
    if moves not in set(sequences()):
        return 0.0
    timed = all_schedules()
    passed = outcomes(events, moves, timed, WINDOW_S, record_after(timed.T), duration_s) == PASSED
    return float(passed.mean()) / len(sequences())


def _fits(starts: np.ndarray, duration_s: float, timed: np.ndarray) -> np.ndarray:
    """[K] whether moves starting at `starts` (one per prompt) in a recording of this length
    answer each schedule: every start in its window, the length within the overrun."""
    ok = np.all((starts >= timed + WINDOW_S[0] - 1e-9) & (starts <= timed + WINDOW_S[1] + 1e-9), axis=1)
    record_s = record_after(timed.T)
    return ok & (np.abs(duration_s - record_s) <= OVERRUN_S + 1e-9)


def best_crafted_rate(step_s: float = 0.05) -> dict:
    """The largest chance of answering a server challenge that one recording made for the
    purpose has: one sequence of moves (any: they are equally likely), each starting at a
    chosen second, blinks anywhere (they are tolerated and never asked), and a chosen length.
    Starts and length are searched by coordinate ascent on a `step_s` grid from starts at
    every offset after the mean prompt times, against every schedule the server draws."""
    timed = all_schedules()
    mean = timed.mean(0)
    lengths = np.round(np.arange(WINDOW_S[0], WINDOW_S[1] + 1e-9, step_s), 3)
    best = (0.0, None, None)
    for offset in lengths:
        starts = np.round(mean + offset, 3)
        duration = float(np.round(mean[-1] + WINDOW_S[1] + TAIL_S, 3))
        share = float(_fits(starts, duration, timed).mean())
        improved = True
        while improved:
            improved = False
            for i in range(len(starts) + 1):
                for delta in (-step_s, step_s):
                    trial_starts, trial_duration = starts.copy(), duration
                    if i < len(starts):
                        trial_starts[i] = round(trial_starts[i] + delta, 3)
                    else:
                        trial_duration = round(trial_duration + delta, 3)
                    trial = float(_fits(trial_starts, trial_duration, timed).mean())
                    if trial > share:
                        share, starts, duration, improved = trial, trial_starts, trial_duration, True
        if share > best[0]:
            best = (share, starts, duration)
    share, starts, duration = best
    return {"rate": share / len(sequences()), "schedules_fitted": share, "sequences": len(sequences()),
            "starts_s": [round(float(t), 2) for t in starts], "duration_s": round(duration, 2)}
