"""What a server challenge costs genuine customers, simulated: each customer reacts to each
prompt after a reaction time drawn from a stated model, performs the move for a duration
drawn from annotated moves of that kind, returns to rest before the next one, and the
pipeline sees each start off by an error drawn from those it made on annotated clips.

The reaction model is lognormal (right-skewed, as reaction times are). Its default median,
0.85 s, is a choice reaction among seven prompts (about 0.65 s: 0.2 s of simple visual
reaction plus about 0.15 s per bit of choice, Hick-Hyman, log2(7+1) = 3 bits) plus reading
the short prompt and the neck's delay; its spread (log-SD 0.3: 90 % of starts between 0.52
and 1.39 s) is that of choice reaction times. The README lists the figures with other
spreads, since no prompted capture has been measured yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from portrait.challenge import OVERRUN_S, WINDOW_S, draw, record_after, sequences

REACTION_MEDIAN_S = 0.85
REACTION_LOG_SD = 0.3
BACK_TO_REST_S = 0.1  # a customer starts the next move this long after finishing the last
# The kind of annotated move whose durations stand for each move (no dev clip shows a
# deliberate tilt or look, so turns stand for them).
DURATION_KIND = {"turn_left": "turn", "turn_right": "turn", "tilt_left": "turn", "tilt_right": "turn",
                 "look_up": "turn", "look_down": "turn", "open_mouth": "open_mouth"}


@dataclass(frozen=True)
class Customers:
    """Where the simulated customers' numbers come from."""

    durations: dict[str, np.ndarray]  # "turn", "open_mouth" -> annotated durations, seconds
    onset_errors: np.ndarray  # observed start minus annotated start, seconds (found-once moves)
    min_held_s: dict[str, float]  # per move, how long it must be held to count (the hysteresis' min_s)
    reaction_median_s: float = REACTION_MEDIAN_S
    reaction_log_sd: float = REACTION_LOG_SD


def success_rate(customers: Customers, count: int, rng: np.random.Generator) -> dict:
    """The share of `count` simulated customers, each answering one drawn server challenge,
    whose recording the challenge accepts, and why the others fail."""
    index, schedules = draw(rng, count)
    table = np.array(sequences())[index]  # [count, moves]
    spread = customers.reaction_log_sd * rng.standard_normal(schedules.shape)
    reaction = np.exp(np.log(customers.reaction_median_s) + spread)
    kinds = np.vectorize(DURATION_KIND.get)(table)
    duration = np.zeros(schedules.shape)
    for kind, values in customers.durations.items():
        mask = kinds == kind
        duration[mask] = rng.choice(values, int(mask.sum()))
    error = rng.choice(customers.onset_errors, schedules.shape)
    held = np.vectorize(customers.min_held_s.get)(table)
    start = np.zeros(schedules.shape)
    free = np.zeros(count)  # when the customer is back at rest
    for i in range(schedules.shape[1]):
        start[:, i] = np.maximum(schedules[:, i] + reaction[:, i], free)
        free = start[:, i] + duration[:, i] + BACK_TO_REST_S
    seen = start + error
    record_s = record_after(schedules.T)
    early = (seen < schedules + WINDOW_S[0]).any(1)
    late = (seen > schedules + WINDOW_S[1]).any(1)
    unordered = (np.diff(seen, axis=1) <= 0).any(1)
    cut = start[:, -1] + held[:, -1] > record_s  # the last move not held long enough before the end
    failed = early | late | unordered | cut
    return {
        "customers": count, "accepted": round(float(1 - failed.mean()), 4),
        "failures": {"started_too_early": round(float(early.mean()), 4),
                     "started_too_late": round(float(late.mean()), 4),
                     "out_of_order": round(float(unordered.mean()), 4), "cut_by_the_end": round(float(cut.mean()), 4)},
        "model": {"reaction_median_s": customers.reaction_median_s, "reaction_log_sd": customers.reaction_log_sd,
                  "durations_from": {k: len(v) for k, v in customers.durations.items()},
                  "onset_errors_from": len(customers.onset_errors), "moves_per_challenge": schedules.shape[1],
                  "window_s": list(WINDOW_S), "overrun_s": OVERRUN_S},
    }
