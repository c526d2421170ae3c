"""Pydantic models at the HTTP edge: what callers send and what they get back."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from portrait.challenge import ACTIONS, MAX_ACTIONS, MAX_RECORD_S

if TYPE_CHECKING:
    from portrait.security.tokens import Challenge

Action = Literal[ACTIONS]  # type: ignore[valid-type]


class ChallengeRequest(BaseModel):
    # Strict: what the schema refuses is refused (no `false` read as 0.0 s, no "true" read as true).
    model_config = ConfigDict(strict=True)

    mirrored: bool | None = Field(
        default=None, description="Whether the capture client mirrors the recording (left and right swapped). "
        "Signed into the challenge; the default is the tenant's setting (else false).")
    actions: list[Action] | None = Field(
        default=None, min_length=1, max_length=MAX_ACTIONS,
        description=f"1-{MAX_ACTIONS} actions, none twice in a row; only for a tenant allowed client-named "
        "challenges (kiosks, tests; `PORTRAIT_CLIENT_ACTIONS_TENANTS`), and marked so in the token and receipt.")
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
    client_named: bool = Field(description="The caller named the actions (kiosks, tests): the receipt says so.")
    expires_at: str

    @classmethod
    def of(cls, challenge: Challenge) -> ChallengeResponse:
        """What the caller (the carrier's back end, or the demo page) is told of a challenge."""
        expires = datetime.fromtimestamp(challenge.expires_at, timezone.utc).isoformat(timespec="seconds")
        return cls(**challenge.spec.claims(), token=challenge.token, expires_at=expires)


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
    client_named: bool


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
FULL = "Only for tenants with full answers (`PORTRAIT_FULL_ANSWER_TENANTS`); the receipt carries it for all."


class Answer(BaseModel):
    """What every tenant gets: the decision, its reasons, the request id and the receipt. The
    scores and thresholds are a tuning oracle for anyone testing a fake: a tenant gets them
    only when it is configured for full answers, and should keep them in its back end."""

    reasons: list[str]
    request_id: str
    receipt: str = Field(description="Ed25519-signed token (JWS compact form) of the inputs' digests, the "
                         "decision, scores and thresholds, the challenge and the events seen; the audit record. "
                         "Its payload is readable: keep it in the back end too.")
    thresholds: Thresholds | None = Field(default=None, description=FULL)
    models: list[ModelVersion] | None = Field(default=None, description=FULL)
    timings_ms: dict[str, float] | None = Field(default=None, description=FULL)


class VerificationResponse(Answer):
    decision: Literal["accept", "reject_mismatch", "reject_spoof", "retry"]
    match: MatchScore | None = Field(default=None, description=FULL)
    liveness: Liveness | None = Field(default=None, description=FULL)
    video: VideoSummary | None = Field(default=None, description=FULL)


class LivenessResponse(Answer):
    decision: Literal["accept", "reject_spoof", "retry"]
    liveness: Liveness | None = Field(default=None, description=FULL)
    video: VideoSummary | None = Field(default=None, description=FULL)


class CompareResponse(Answer):
    decision: Literal["match", "no_match", "retry"]
    match: MatchScore | None = Field(default=None, description=FULL)


class ReceiptKey(BaseModel):
    kid: str = Field(description="The key id every receipt's header names.")
    alg: Literal["EdDSA"]
    pem: str = Field(description="The Ed25519 public key, PEM (SubjectPublicKeyInfo).")
    jwk: dict[str, str] = Field(description="The same key as a JWK (RFC 8037).")


class Health(BaseModel):
    status: str
    detail: str | None = None
