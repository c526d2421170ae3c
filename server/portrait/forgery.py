"""The forged recording an attacker makes from one ordinary recording of the victim: each
action cut out, slowed, placed 0.7 s after its prompt, the gaps filled with a still frame.

Against the one-shot mode the attacker knows every prompt's second before recording and
renders the file once. Against a live session nothing is known in advance, so this forger
does the same cut and re-timing *live*, as each prompt is revealed (the strongest form of the
attack on a session: it answers every prompt in its window). It cannot know the screen's
colours, so its frames carry none of their reflections. A frame source for
`portrait.streamer` and the browser tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLACE_AFTER_S = 0.7  # the action begins this long after its prompt
SLOWDOWN = 1.5  # the cut is played this much slower than it was recorded
MARGIN_S = (0.2, 0.3)  # kept before an action's start and after its end


@dataclass(frozen=True)
class Cut:
    action: str
    start_s: float  # in the source recording
    end_s: float


def cuts(events) -> dict[str, Cut]:
    """The first event of each head move or mouth opening the source recording shows
    (pipeline events), cut short of the next one so that a cut shows one action only."""
    moves = sorted((e for e in events if e.action != "blink"), key=lambda e: e.start_s)
    found: dict[str, Cut] = {}
    for event, following in zip(moves, [*moves[1:], None]):
        limit = following.start_s - MARGIN_S[0] if following is not None else float("inf")
        found.setdefault(event.action, Cut(event.action, max(0.0, event.start_s - MARGIN_S[0]),
                                           min(event.end_s + MARGIN_S[1], limit)))
    return found


class Forger:
    """Still frame, then each prompted action's cut from the source, re-timed to the prompt."""

    def __init__(self, frames: np.ndarray, times: np.ndarray, source_cuts: dict[str, Cut]) -> None:
        self.frames, self.times, self.cuts = frames, times, source_cuts
        self.still = 0

    def _frame_at(self, source_s: float) -> np.ndarray:
        return self.frames[int(min(np.searchsorted(self.times, source_s), len(self.times) - 1))]

    def __call__(self, t: float, revealed) -> np.ndarray:
        for prompted_at, action in reversed(revealed.prompts):
            cut = self.cuts.get(action)
            if cut is None:
                continue
            begin = prompted_at + PLACE_AFTER_S - MARGIN_S[0] * SLOWDOWN  # the action itself starts 0.7 s after
            offset = (t - begin) / SLOWDOWN
            if 0 <= offset <= cut.end_s - cut.start_s:
                return self._frame_at(cut.start_s + offset)
            if offset > 0:
                break
        return self.frames[self.still]
