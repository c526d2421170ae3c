"""Pydantic models at the HTTP edge: what callers send and what they get back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Action = Literal["blink", "turn_left", "turn_right", "look_up", "look_down"]


class ChallengeRequest(BaseModel):
    actions: list[Action] | None = Field(
        default=None, min_length=1, max_length=5, json_schema_extra={"uniqueItems": True},
        description="1-5 distinct actions; only when the server allows client-chosen actions (kiosks, tests).",
    )


class ChallengeResponse(BaseModel):
    token: str
    actions: list[Action]
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


class ActiveLiveness(BaseModel):
    required: list[Action]
    ordered: bool
    observed: list[ObservedAction]
    missing: list[Action]


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


class VerificationResponse(BaseModel):
    decision: Literal["accept", "reject_mismatch", "reject_spoof", "retry"]
    reasons: list[str]
    match: MatchScore
    liveness: Liveness
    video: VideoSummary
    models: list[ModelVersion]
    timings_ms: dict[str, float]
    request_id: str
    receipt: str = Field(description="Ed25519-signed token (JWS compact form) of the inputs' digests and the answer.")


class LivenessResponse(BaseModel):
    decision: Literal["accept", "reject_spoof", "retry"]
    reasons: list[str]
    liveness: Liveness
    video: VideoSummary
    models: list[ModelVersion]
    timings_ms: dict[str, float]
    request_id: str
    receipt: str


class CompareResponse(BaseModel):
    decision: Literal["match", "no_match", "retry"]
    reasons: list[str]
    match: MatchScore
    models: list[ModelVersion]
    timings_ms: dict[str, float]
    request_id: str
    receipt: str


class Health(BaseModel):
    status: str
    detail: str | None = None
