"""Pydantic models at the HTTP edge: what callers send and what they get back."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from portrait.challenge import ACTIONS, MAX_ACTIONS, MAX_RECORD_S

Action = Literal[ACTIONS]  # type: ignore[valid-type]


class ChallengeRequest(BaseModel):
    # Strict: what the schema refuses is refused (no `false` read as 0.0 s, no "true" read as true).
    model_config = ConfigDict(strict=True)

    mirrored: bool | None = Field(
        default=None, description="Whether the capture client mirrors the recording (left and right swapped). "
        "Signed into the challenge; the default is the tenant's setting (else false).")
    actions: list[Action] | None = Field(
        default=None, min_length=1, max_length=MAX_ACTIONS,
        description=f"1-{MAX_ACTIONS} actions, none twice in a row; only when the server allows client-named "
        "challenges (kiosks, tests).")
    schedule: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None, min_length=1, max_length=MAX_ACTIONS,
        description="With `actions`, when client-named challenges are allowed: seconds after the start of "
        f"recording at which each prompt is shown, one per action, increasing, the recording ending by {MAX_RECORD_S} "
        "s; drawn by the server when absent.")


class ChallengeResponse(BaseModel):
    token: str
    actions: list[Action]
    schedule: list[float] = Field(description="Seconds after recording starts at which the client shows each prompt.")
    window_s: list[float] = Field(description="[min, max]: each action must begin this long after its prompt.")
    record_s: float = Field(description="When the client stops recording (seconds after it started).")
    mirrored: bool
    expires_at: str


class Score(BaseModel):
    score: float | None
    threshold: float


class MatchScore(Score):
    method: Literal["sface", "fused"] = Field(description="The score `threshold` applies to: SFace's cosine, or "
                                              "SFace and dlib fused (z-normalised, weighted; see calibration.json).")
    scores: dict[str, float] | None = Field(description="Each embedder's own score (sface: cosine; dlib: minus "
                                            "Euclidean distance) and the fused one.")


class ObservedAction(BaseModel):
    action: Action
    start_s: float
    end_s: float
    peak: float


class AskedChallenge(BaseModel):
    actions: list[Action]
    schedule: list[float] | None
    window_s: list[float]
    record_s: float | None
    mirrored: bool


class ActiveLiveness(BaseModel):
    challenge: AskedChallenge | None
    observed: list[ObservedAction]
    missing: list[Action] = Field(description="Asked for and never seen.")
    unrequested: list[ObservedAction] = Field(description="Head moves and mouth openings not asked for.")
    reason: str | None = Field(description="Why the challenge was not answered: unrequested_action, "
                               "challenge_incomplete, action_out_of_window, recording_too_long or "
                               "recording_too_short.")


class Liveness(BaseModel):
    active: ActiveLiveness
    passive: Score
    continuity: Score


class ModelVersion(BaseModel):
    name: str
    version: str
    sha256: str


class VideoSummary(BaseModel):
    frames: int
    frames_with_face: int
    duration_s: float
    codec: str


Thresholds = dict[str, Any]


class VerificationResponse(BaseModel):
    decision: Literal["accept", "reject_mismatch", "reject_spoof", "retry"]
    reasons: list[str]
    match: MatchScore
    liveness: Liveness
    video: VideoSummary
    thresholds: Thresholds
    models: list[ModelVersion]
    timings_ms: dict[str, float]
    request_id: str
    receipt: str = Field(description="Ed25519-signed token (JWS compact form) of the inputs' digests and the answer.")


class LivenessResponse(BaseModel):
    decision: Literal["accept", "reject_spoof", "retry"]
    reasons: list[str]
    liveness: Liveness
    video: VideoSummary
    thresholds: Thresholds
    models: list[ModelVersion]
    timings_ms: dict[str, float]
    request_id: str
    receipt: str


class CompareResponse(BaseModel):
    decision: Literal["match", "no_match", "retry"]
    reasons: list[str]
    match: MatchScore
    thresholds: Thresholds
    models: list[ModelVersion]
    timings_ms: dict[str, float]
    request_id: str
    receipt: str


class Health(BaseModel):
    status: str
    detail: str | None = None
