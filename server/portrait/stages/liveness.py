"""Active liveness: blinks and head movements read from per-frame eye openness and head
angles, and whether they answer the challenge.

Thresholds are relative to the clip's own open-eye level and neutral pitch, so a squint
or a camera held low does not count as an action; each action must also come back
(eyes reopen, head returns), which a photo swung in front of the camera rarely does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

ACTIONS = ("blink", "turn_left", "turn_right", "look_up", "look_down")


@dataclass(frozen=True)
class ActionEvent:
    action: str
    start_s: float
    end_s: float
    peak: float  # closed-eye ratio for blinks, angle in degrees for turns


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
        for start, end in _runs(signal > threshold):
            span = times[end] - times[start]
            frame = np.median(np.diff(times)) if len(times) > 1 else 0.0
            if span + frame < limits.min_action_s:
                continue
            peak = float(signal[start : end + 1].max())
            events.append(ActionEvent(action, float(times[start]), float(times[end]), round(peak, 1)))
    return sorted(events, key=lambda e: e.start_s)


def unmet(required: Sequence[str], events: Iterable[ActionEvent], ordered: bool) -> list[str]:
    """The required actions the events do not show; in order when `ordered` (each action
    must start after the previous one was seen)."""
    observed = sorted(events, key=lambda e: e.start_s)
    if not ordered:
        seen = {e.action for e in observed}
        return [a for a in required if a not in seen]
    missing, after = [], -np.inf
    for action in required:
        match = next((e for e in observed if e.action == action and e.start_s > after), None)
        if match is None:
            missing.append(action)
        else:
            after = match.start_s
    return missing
