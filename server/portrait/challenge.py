"""What a challenge may ask, and when: the action list, how the server draws a challenge,
the prompt schedule's bounds and the window in which each action must begin.

This is the one definition: the liveness stage, the challenge tokens, the HTTP schemas and
the CLI import it. Draws are vectorised so the same function serves one challenge for a
customer and millions for the simulation that measures what a recording can answer.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np

ACTIONS: tuple[str, ...] = ("blink", "turn_left", "turn_right", "tilt_left", "tilt_right", "look_up", "look_down",
                            "open_mouth")
BLINK = "blink"

MIN_ACTIONS, MAX_ACTIONS = 2, 4  # what the server draws; a client-named challenge may ask 1
WINDOW_S = (0.3, 3.0)  # an action must begin this long after its prompt: human reaction
FIRST_PROMPT_S = (1.0, 2.0)  # the customer settles in frame before the first prompt
PROMPT_GAP_S = (1.5, 2.0)  # time to do one action before the next prompt
STEP_S = 0.1  # schedule granularity
TAIL_S = 0.5  # recording goes on this long after the last window closes
OVERRUN_S = 0.5  # a clip may run this far past the recording's end (encoder, clock jitter)
MAX_RECORD_S = FIRST_PROMPT_S[1] + (MAX_ACTIONS - 1) * PROMPT_GAP_S[1] + WINDOW_S[1] + TAIL_S


@dataclass(frozen=True)
class ChallengeSpec:
    """The actions asked for and, when timed, the second after the start of recording at
    which each prompt is shown. Untimed specs (no schedule) are for offline checks only:
    the service always issues a schedule."""

    actions: tuple[str, ...]
    schedule: tuple[float, ...] | None = None
    window_s: tuple[float, float] = WINDOW_S
    record_s: float | None = None
    mirrored: bool = False

    @classmethod
    def timed(cls, actions: tuple[str, ...] | list[str], schedule: tuple[float, ...] | list[float],
              mirrored: bool = False) -> ChallengeSpec:
        schedule = tuple(round(float(s), 3) for s in schedule)
        return cls(tuple(actions), schedule, WINDOW_S, float(record_after(schedule)), mirrored)

    def claims(self) -> dict:
        """The fields as plain JSON (token payload, receipt, API answer)."""
        return {"actions": list(self.actions), "schedule": None if self.schedule is None else list(self.schedule),
                "window_s": list(self.window_s), "record_s": self.record_s, "mirrored": self.mirrored}


def record_after(schedule) -> np.ndarray:
    """When the capture client stops recording: after the last action's window, plus a tail.
    `schedule` is one schedule, or an array whose last row holds the last prompts."""
    return np.round(np.asarray(schedule, float)[-1] + WINDOW_S[1] + TAIL_S, 3)


@lru_cache(maxsize=None)
def sequences(min_actions: int = MIN_ACTIONS, max_actions: int = MAX_ACTIONS) -> tuple[tuple[str, ...], ...]:
    """Every ordered sequence the server may ask: no action twice in a row."""
    found = []
    for length in range(min_actions, max_actions + 1):
        found += [s for s in product(ACTIONS, repeat=length) if all(a != b for a, b in zip(s, s[1:]))]
    return tuple(found)


def _steps(bounds: tuple[float, float]) -> int:
    return int(round((bounds[1] - bounds[0]) / STEP_S)) + 1


def distinct_challenges() -> int:
    """Sequences times the schedules each can have on the STEP_S grid."""
    per_gap, first = _steps(PROMPT_GAP_S), _steps(FIRST_PROMPT_S)
    return sum(first * per_gap ** (len(s) - 1) for s in sequences())


def _schedules(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """[count, MAX_ACTIONS] prompt times on the STEP_S grid, NaN past each length."""
    count = len(lengths)
    first = FIRST_PROMPT_S[0] + STEP_S * rng.integers(0, _steps(FIRST_PROMPT_S), (count, 1))
    gaps = PROMPT_GAP_S[0] + STEP_S * rng.integers(0, _steps(PROMPT_GAP_S), (count, MAX_ACTIONS - 1))
    schedules = np.round(np.cumsum(np.concatenate([first, gaps], 1), 1), 3)
    schedules[np.arange(MAX_ACTIONS)[None, :] >= lengths[:, None]] = np.nan
    return schedules


def draw(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` server challenges: (index into `sequences()` [count], schedules [count,
    MAX_ACTIONS] in seconds, NaN past each sequence's length). Sequences are uniform over
    all of them, so each is as likely as any other."""
    table = sequences()
    index = rng.integers(0, len(table), count)
    return index, _schedules(rng, np.array([len(s) for s in table])[index])


def _system_rng() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128))


def random_challenge(mirrored: bool = False, rng: np.random.Generator | None = None) -> ChallengeSpec:
    """One server challenge, from the operating system's randomness unless `rng` is given."""
    index, schedules = draw(rng or _system_rng(), 1)
    actions = sequences()[int(index[0])]
    return ChallengeSpec.timed(actions, [float(s) for s in schedules[0, : len(actions)]], mirrored)


def random_schedule(actions: tuple[str, ...] | list[str], mirrored: bool = False,
                    rng: np.random.Generator | None = None) -> ChallengeSpec:
    """Named actions (kiosks, tests) with a schedule the server draws."""
    schedule = _schedules(rng or _system_rng(), np.array([len(actions)]))[0, : len(actions)]
    return ChallengeSpec.timed(actions, [float(s) for s in schedule], mirrored)


def valid_actions(actions: object, min_actions: int = 1) -> bool:
    return (isinstance(actions, (list, tuple)) and min_actions <= len(actions) <= MAX_ACTIONS
            and all(isinstance(a, str) and a in ACTIONS for a in actions)
            and all(a != b for a, b in zip(actions, actions[1:])))


def valid_schedule(schedule: object, count: int) -> bool:
    """One prompt per action, increasing, and a recording no longer than the server's own."""
    return (isinstance(schedule, (list, tuple)) and count >= 1 and len(schedule) == count
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in schedule)
            and schedule[0] >= 0 and all(b > a for a, b in zip(schedule, schedule[1:]))
            and float(record_after(schedule)) <= MAX_RECORD_S)
