"""The decision policy: from measurements to `accept`, `reject_spoof`, `reject_mismatch`
or `retry`, with stable reason codes.

Order matters: media we cannot judge ask for a retry before anything else; evidence of an
attack outranks a mismatch (an attacker's replay of someone else is a spoof first).
"""

from __future__ import annotations

from dataclasses import dataclass

ACCEPT, REJECT_SPOOF, REJECT_MISMATCH, RETRY = "accept", "reject_spoof", "reject_mismatch", "retry"


@dataclass(frozen=True)
class Evidence:
    id_face_problem: str | None  # "no_face", "multiple_faces"
    video_face_problem: str | None  # "no_face", "multiple_faces", "face_lost"
    passive_score: float | None
    passive_threshold: float
    continuity: float | None
    continuity_threshold: float
    synthetic_score: float | None  # how closely the selfie reproduces the ID photo (stages/synthetic.py)
    synthetic_threshold: float
    challenge_problem: str | None  # why the challenge was not answered (liveness.REASONS)
    match_score: float | None
    match_threshold: float
    light_problem: str | None = None  # "light_mismatch": the skin did not answer a live session's screen colours


def decide(e: Evidence) -> tuple[str, list[str]]:
    retry = []
    if e.id_face_problem:
        retry.append(f"id_{e.id_face_problem}")
    if e.video_face_problem:
        retry.append(f"video_{e.video_face_problem}")
    if retry:
        return RETRY, retry
    spoof = []
    if e.passive_score is not None and e.passive_score < e.passive_threshold:
        spoof.append("passive_spoof")
    if e.continuity is not None and e.continuity < e.continuity_threshold:
        spoof.append("identity_changed")
    if e.synthetic_score is not None and e.synthetic_score >= e.synthetic_threshold:
        spoof.append("synthetic_face")
    if spoof:
        return REJECT_SPOOF, spoof
    if e.challenge_problem or e.light_problem:
        return RETRY, [p for p in (e.challenge_problem, e.light_problem) if p]
    if e.match_score is not None and e.match_score < e.match_threshold:
        return REJECT_MISMATCH, ["face_mismatch"]
    return ACCEPT, []
