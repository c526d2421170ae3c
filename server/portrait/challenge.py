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
# What the server draws: head moves and the mouth, never a blink (natural blinks land in
# most windows, so a requested one is nearly free to a recording that blinks throughout).
MOVES: tuple[str, ...] = tuple(a for a in ACTIONS if a != BLINK)

DRAWN_ACTIONS = 5  # every server challenge asks this many moves (README, "Active liveness": why five)
MAX_ACTIONS = DRAWN_ACTIONS  # a client-named challenge may ask 1 to this many
# An observed action must begin this long after its prompt. People start a prompted move
# 0.4-2.0 s after it: reacting to a written prompt with one of seven movements is a choice
# reaction (simple visual reaction 0.2-0.25 s, each bit of choice about 0.15 s more by the
# Hick-Hyman law, three bits here, then reading the prompt and the neck's own delay), and
# 2.0 s is past the 99th percentile of the reaction model in the README. The pipeline places
# a start up to 0.3 s before or after the frame a person would name (measured by `portrait
# eval actions`), so the window is that span widened by 0.3 s each side.
WINDOW_S = (0.1, 2.3)
FIRST_PROMPT_S = (1.0, 1.5)  # the customer settles in frame before the first prompt
PROMPT_GAP_S = (1.3, 1.7)  # one move and back to rest (the annotated moves last 0.5-1.9 s)
STEP_S = 0.1  # schedule granularity
TAIL_S = 0.8  # recording goes on this long after the last window closes: the last move is seen whole
OVERRUN_S = 0.4  # a clip may end this far before or after the recording's end (encoder, clock jitter)
MAX_RECORD_S = round(FIRST_PROMPT_S[1] + (MAX_ACTIONS - 1) * PROMPT_GAP_S[1] + WINDOW_S[1] + TAIL_S, 3)


@dataclass(frozen=True)
class ChallengeSpec:
    """The actions asked for and, when timed, the second after the start of recording at
    which each prompt is shown. Untimed specs (no schedule) are for offline checks only:
    the service always issues a schedule. `client_named`: the caller chose the actions (a
    kiosk, a test), so the challenge proves nothing the caller did not already know."""

    actions: tuple[str, ...]
    schedule: tuple[float, ...] | None = None
    window_s: tuple[float, float] = WINDOW_S
    record_s: float | None = None
    mirrored: bool = False
    client_named: bool = False

    @classmethod
    def timed(cls, actions: tuple[str, ...] | list[str], schedule: tuple[float, ...] | list[float],
              mirrored: bool = False, client_named: bool = False) -> ChallengeSpec:
        schedule = tuple(round(float(s), 3) for s in schedule)
        return cls(tuple(actions), schedule, WINDOW_S, float(record_after(schedule)), mirrored, client_named)

    def claims(self) -> dict:
        """The fields as plain JSON (token payload, receipt, API answer)."""
        return {"actions": list(self.actions), "schedule": None if self.schedule is None else list(self.schedule),
                "window_s": list(self.window_s), "record_s": self.record_s, "mirrored": self.mirrored,
                "client_named": self.client_named}


def record_after(schedule) -> np.ndarray:
    """When the capture client stops recording: after the last action's window, plus a tail.
    `schedule` is one schedule, or an array whose last row holds the last prompts."""
    return np.round(np.asarray(schedule, float)[-1] + WINDOW_S[1] + TAIL_S, 3)


@lru_cache(maxsize=None)
def sequences(length: int = DRAWN_ACTIONS) -> tuple[tuple[str, ...], ...]:
    """Every ordered sequence the server may ask: `length` moves, none twice in a row."""
    return tuple(s for s in product(MOVES, repeat=length) if all(a != b for a, b in zip(s, s[1:])))


def _steps(bounds: tuple[float, float]) -> int:
    return int(round((bounds[1] - bounds[0]) / STEP_S)) + 1


def distinct_challenges() -> int:
    """Sequences times the schedules each can have on the STEP_S grid."""
    return len(sequences()) * _steps(FIRST_PROMPT_S) * _steps(PROMPT_GAP_S) ** (DRAWN_ACTIONS - 1)


def _schedules(rng: np.random.Generator, count: int, length: int = DRAWN_ACTIONS) -> np.ndarray:
    """[count, length] prompt times on the STEP_S grid."""
    first = FIRST_PROMPT_S[0] + STEP_S * rng.integers(0, _steps(FIRST_PROMPT_S), (count, 1))
    gaps = PROMPT_GAP_S[0] + STEP_S * rng.integers(0, _steps(PROMPT_GAP_S), (count, length - 1))
    return np.round(np.cumsum(np.concatenate([first, gaps], 1), 1), 3)


@lru_cache(maxsize=None)
def all_schedules() -> np.ndarray:
    """[K, DRAWN_ACTIONS] every schedule the server may draw, each as likely as any other:
    the exact distribution a recording's chance is summed over."""
    first = FIRST_PROMPT_S[0] + STEP_S * np.arange(_steps(FIRST_PROMPT_S))
    gaps = PROMPT_GAP_S[0] + STEP_S * np.arange(_steps(PROMPT_GAP_S))
    grid = np.array(list(product(first, *[gaps] * (DRAWN_ACTIONS - 1))))
    return np.round(np.cumsum(grid, 1), 3)


def draw(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` server challenges: (index into `sequences()` [count], schedules [count,
    DRAWN_ACTIONS] in seconds). Sequences are uniform over all of them, so none is likelier
    than another, and schedules uniform on their grid."""
    index = rng.integers(0, len(sequences()), count)
    return index, _schedules(rng, count)


def _system_rng() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128))


def random_challenge(mirrored: bool = False, rng: np.random.Generator | None = None) -> ChallengeSpec:
    """One server challenge, from the operating system's randomness unless `rng` is given."""
    index, schedules = draw(rng or _system_rng(), 1)
    return ChallengeSpec.timed(sequences()[int(index[0])], [float(s) for s in schedules[0]], mirrored)


def random_schedule(actions: tuple[str, ...] | list[str], mirrored: bool = False,
                    rng: np.random.Generator | None = None) -> ChallengeSpec:
    """Client-named actions (kiosks, tests) with a schedule the server draws."""
    schedule = _schedules(rng or _system_rng(), 1, len(actions))[0]
    return ChallengeSpec.timed(actions, [float(s) for s in schedule], mirrored, client_named=True)


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
