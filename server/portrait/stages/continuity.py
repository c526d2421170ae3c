"""Continuity: is the face in a video one person from start to end?

A splice (the clip cuts from one person to another) shows as a moment after which the
face no longer resembles the face before it. So every gap between two sampled frames is
a candidate cut, and the frames shortly before it are compared with the frames shortly
after it, but only where their head poses are alike: a turned or tilted head lowers an
embedding's similarity to a frontal one, and turning the head is what the challenge
asks for. The median over those pose-matched pairs stands for the cut, so one blurred
frame or a blink does not decide it; the clip's score is the lowest over all cuts.

Where no pair across a cut has alike poses, the closest-in-pose pairs stand in, so an
attacker cannot hide a cut behind a change of pose. The face box is followed by the
tracker, which already refuses a face that jumps to elsewhere in the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOWS = (2, 8)  # frames compared on each side of a cut: a short window finds a brief insert, a long one is steadier
POSE_TOLERANCE = 6.0  # yaw and pitch (FaceMesh degrees) of two frames this close count as alike
FALLBACK_PAIRS = 4  # closest-in-pose pairs used when no pair across a cut is within tolerance


@dataclass(frozen=True)
class Sample:
    """The frames continuity looks at, in time order."""

    embeddings: np.ndarray  # [N,D] normalised
    angles: np.ndarray  # [N,2] yaw, pitch
    times: np.ndarray  # [N] seconds

    def part(self, keep: np.ndarray) -> Sample:
        return Sample(self.embeddings[keep], self.angles[keep], self.times[keep])


def splice(first: Sample, second: Sample) -> Sample:
    """The first half of one clip followed by the second half of another, as an attacker's
    edit would join them: impostor evidence for calibration and tests."""
    head = first.part(first.times <= (first.times[0] + first.times[-1]) / 2)
    tail = second.part(second.times > (second.times[0] + second.times[-1]) / 2)
    step = float(np.median(np.diff(first.times))) if len(first.times) > 1 else 0.1
    shifted = tail.times - tail.times[0] + head.times[-1] + step
    return Sample(np.concatenate([head.embeddings, tail.embeddings]), np.concatenate([head.angles, tail.angles]),
                  np.concatenate([head.times, shifted]))


@dataclass(frozen=True)
class Continuity:
    score: float  # lowest over cuts of the median pose-matched similarity across the cut
    cut_s: float  # time of the weakest cut


def continuity(sample: Sample, windows: tuple[int, ...] = WINDOWS, pose_tolerance: float = POSE_TOLERANCE,
               fallback_pairs: int = FALLBACK_PAIRS) -> Continuity | None:
    """The clip's continuity, or None for under two frames."""
    n = len(sample.embeddings)
    if n < 2:
        return None
    similarity = sample.embeddings @ sample.embeddings.T
    pose = np.abs(sample.angles[:, None, :] - sample.angles[None, :, :]).max(-1)
    index = np.arange(n)
    scores = np.full(n - 1, np.inf)
    for cut in range(1, n):
        for window in windows:
            before = (index < cut) & (index >= cut - window)
            after = (index >= cut) & (index < cut + window)
            across = pose[np.ix_(before, after)].ravel()
            values = similarity[np.ix_(before, after)].ravel()
            alike = across <= pose_tolerance
            if not alike.any():
                alike = np.argsort(across, kind="stable")[:fallback_pairs]
            scores[cut - 1] = min(scores[cut - 1], float(np.median(values[alike])))
    weakest = int(np.argmin(scores)) + 1
    return Continuity(float(scores.min()), float(sample.times[weakest]))
