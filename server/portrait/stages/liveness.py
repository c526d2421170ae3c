"""Active liveness: blinks, head movements and mouth openings read from per-frame eye
openness, head angles and lip gap, and whether they answer the challenge exactly.

Thresholds are relative to the clip's own open-eye level and neutral pitch, so a squint
or a camera held low does not count as an action; each action must also come back
(eyes reopen, head returns, mouth closes), which a photo swung in front of the camera
rarely does.

A challenge is answered when the actions seen are the actions asked, in order, each
beginning within its window after its prompt, and nothing else: a head move or mouth
opening that was not asked for fails it. Natural blinks are tolerated anywhere (people
blink every few seconds); a requested blink must fall in its window. One action held, or
split into two segments by a wobble across the threshold, counts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from portrait.challenge import ACTIONS, BLINK, MAX_RECORD_S, OVERRUN_S, WINDOW_S, ChallengeSpec, record_after, sequences

# Why a challenge was not answered, in the order they are looked for.
UNREQUESTED, INCOMPLETE, OUT_OF_WINDOW, TOO_LONG = (
    "unrequested_action", "challenge_incomplete", "action_out_of_window", "recording_too_long")
REASONS = (UNREQUESTED, INCOMPLETE, OUT_OF_WINDOW, TOO_LONG)
PASSED = -1


@dataclass(frozen=True)
class ActionEvent:
    action: str
    start_s: float
    end_s: float
    peak: float  # closed-eye ratio for blinks, degrees for head moves, lip gap ratio for the mouth


@dataclass(frozen=True)
class LivenessThresholds:
    closed_ratio: float = 0.5  # openness below this fraction of the open level is closed
    reopened_ratio: float = 0.75
    max_blink_s: float = 0.6  # longer closures are eyes shut, not a blink
    reopen_within_s: float = 0.6
    max_pitch_shift_deg: float = 12.0  # a glance down lowers the lids and the head
    turn_deg: float = 12.0
    look_deg: float = 10.0
    min_action_s: float = 0.1
    # Lip gap over mouth width: speech in the dev clips peaks at 0.44, mouths opened wide
    # reach 0.53-0.63 (see README, "Active liveness").
    mouth_open_ratio: float = 0.48
    merge_gap_s: float = 0.5  # segments of one action closer than this are one action


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end] index pairs (inclusive) of consecutive True values."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def blinks(openness: np.ndarray, pitch: np.ndarray, times: np.ndarray,
           limits: LivenessThresholds = LivenessThresholds()) -> list[ActionEvent]:
    """Both eyes close (relative to this clip's open level) and reopen quickly, with the
    head level. openness [N,2], pitch [N] degrees, times [N] seconds."""
    if len(times) < 3:
        return []
    level = np.percentile(openness.mean(1), 75)
    closed = openness.max(1) < limits.closed_ratio * level
    reopened = openness.mean(1) > limits.reopened_ratio * level
    neutral_pitch = np.median(pitch)
    events = []
    for start, end in _runs(closed):
        if times[end] - times[start] > limits.max_blink_s:
            continue
        before = np.flatnonzero(reopened[:start] & (times[:start] >= times[start] - limits.reopen_within_s))
        after = np.flatnonzero(reopened[end + 1 :] & (times[end + 1 :] <= times[end] + limits.reopen_within_s))
        if len(before) == 0 or len(after) == 0:
            continue
        if np.abs(pitch[start : end + 1] - neutral_pitch).max() > limits.max_pitch_shift_deg:
            continue
        depth = float(openness[start : end + 1].mean(1).min() / level)
        events.append(ActionEvent("blink", float(times[start]), float(times[end]), round(depth, 3)))
    return events


def _timed_runs(action: str, signal: np.ndarray, threshold: float, times: np.ndarray,
                limits: LivenessThresholds) -> list[ActionEvent]:
    """Runs of `signal` above `threshold` lasting at least min_action_s (a lone noisy frame
    is not an action); peak is the run's largest value."""
    frame = np.median(np.diff(times)) if len(times) > 1 else 0.0
    events = []
    for start, end in _runs(signal > threshold):
        if times[end] - times[start] + frame < limits.min_action_s:
            continue
        peak = float(signal[start : end + 1].max())
        events.append(ActionEvent(action, float(times[start]), float(times[end]), round(peak, 3)))
    return events


def head_moves(yaw: np.ndarray, pitch: np.ndarray, times: np.ndarray, mirrored: bool = False,
               limits: LivenessThresholds = LivenessThresholds()) -> list[ActionEvent]:
    """Turns from absolute yaw (0 faces the camera), looks from pitch relative to the
    clip's median (the camera is often below the face). Yaw is positive toward the
    subject's left in an unmirrored recording; a mirrored one swaps left and right."""
    neutral_pitch = np.median(pitch)
    signals = {
        "turn_left": yaw if not mirrored else -yaw,
        "turn_right": -yaw if not mirrored else yaw,
        "look_up": pitch - neutral_pitch,
        "look_down": neutral_pitch - pitch,
    }
    events = []
    for action, signal in signals.items():
        threshold = limits.look_deg if action.startswith("look") else limits.turn_deg
        events += _timed_runs(action, signal, threshold, times, limits)
    return sorted(events, key=lambda e: e.start_s)


def mouth_openings(mouth: np.ndarray, times: np.ndarray,
                   limits: LivenessThresholds = LivenessThresholds()) -> list[ActionEvent]:
    """The mouth opened wide (lip gap over width above mouth_open_ratio) and closed again.
    An absolute ratio: a closed mouth is near 0 whatever the face, and speech stays below."""
    return _timed_runs("open_mouth", mouth, limits.mouth_open_ratio, times, limits)


def merge_segments(events: list[ActionEvent], gap_s: float) -> list[ActionEvent]:
    """One action held or split by a wobble counts once: consecutive non-blink segments of
    the same action less than `gap_s` apart become one event."""
    merged: list[ActionEvent] = []
    last = -1  # index in `merged` of the latest non-blink event
    for event in sorted(events, key=lambda e: e.start_s):
        if event.action == BLINK:
            merged.append(event)
            continue
        previous = merged[last] if last >= 0 else None
        if previous is not None and previous.action == event.action and event.start_s - previous.end_s <= gap_s:
            merged[last] = ActionEvent(event.action, previous.start_s, max(previous.end_s, event.end_s),
                                       max(previous.peak, event.peak))
        else:
            merged.append(event)
            last = len(merged) - 1
    return merged


def observe(openness: np.ndarray, angles: np.ndarray, mouth: np.ndarray, times: np.ndarray,
            mirrored: bool = False, limits: LivenessThresholds = LivenessThresholds()) -> list[ActionEvent]:
    """Every action seen in the clip, in order of start. openness [N,2], angles [N,2]
    (yaw, pitch), mouth [N], times [N] seconds after the start of recording."""
    found = [*blinks(openness, angles[:, 1], times, limits),
             *head_moves(angles[:, 0], angles[:, 1], times, mirrored, limits),
             *mouth_openings(mouth, times, limits)]
    return merge_segments(found, limits.merge_gap_s)


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
        actions = table[sequence]
        timed = schedules[rows, : len(actions)]
        result = outcomes(events, actions, timed, WINDOW_S, record_after(timed.T), duration_s)
        answered += int((result == PASSED).sum())
    return answered


def best_crafted_rate(index: np.ndarray, schedules: np.ndarray) -> dict:
    """The largest share of drawn challenges one recording answers, searched over
    recordings made for it: k head moves (k = 1..4) at chosen seconds on a grid, and a
    blink every 0.3 s throughout, since blinks are tolerated anywhere. The actions are
    interchangeable in the draw, so which moves does not matter, only how many and when."""
    table = sequences()
    moves_of = [tuple(a for a in s if a != BLINK) for s in table]
    blinks_everywhere = [ActionEvent(BLINK, t, t + 0.1, 0.2) for t in np.arange(0.3, MAX_RECORD_S, 0.3)]
    best = {"rate": 0.0, "moves": 0, "at_s": []}
    for k in range(1, 5):
        moves = tuple(a for a in ACTIONS if a != BLINK)[:k]
        wanted = np.array([m == moves for m in moves_of])[index]
        step = 0.25 if k <= 2 else 0.5
        for times in combinations(np.arange(1.0 + WINDOW_S[0], MAX_RECORD_S - 1.0, step), k):
            gaps = np.diff(times)
            if np.any(gaps < 0.6) or (k > 2 and np.any(gaps > 4.5)):
                continue
            events = sorted(blinks_everywhere + [ActionEvent(m, float(t), float(t) + 0.4, 20.0)
                                                 for m, t in zip(moves, times)], key=lambda e: e.start_s)
            rate = count_answered(events, times[-1] + 0.6, index[wanted], schedules[wanted]) / len(index)
            if rate > best["rate"]:
                best = {"rate": rate, "moves": k, "at_s": [round(float(t), 2) for t in times]}
    return best
