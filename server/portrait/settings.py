"""All settings in one place, read from `PORTRAIT_*` environment variables, validated at
start: choices are literals, numbers have bounds, and combinations that cannot work are
refused before anything is built (`settings_error` turns a refusal into one line)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from portrait.media.limits import MAX_IMAGE_PIXELS, MIN_FRAME_SIDE, VideoLimits


def _default_mirror() -> Path | None:
    candidate = Path("../shared/models")
    return candidate.resolve() if candidate.is_dir() else None


# The most calls of one model the default lets run at once: the second cost 0.5 GiB of
# resident memory on the 2-core bench machine, and past four the other models' calls keep
# the cores busy anyway.
DEFAULT_MODEL_CALLS_CAP = 4


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by the cgroup's CPU quota (a
    container's CPU limit, which affinity does not show)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, -(-int(quota) // int(period))))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PORTRAIT_", extra="ignore")

    model_repository: Path = Field(
        default=Path("model_repository"),
        description="Triton model repository written by `portrait models build`.",
    )
    model_mirror: Path | None = Field(
        default_factory=_default_mirror,
        description="Folder holding mirrored model files (MiniFASNet, dlib); else their canonical URLs.",
    )
    calibration: Path | None = Field(
        default=None,
        description="A calibration record to decide with instead of the shipped one: `portrait calibrate "
                    "--output FILE` on the carrier's own labelled material.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "portrait",
        description="Downloaded wheels and model files, keyed by sha256.",
    )
    runtime: str = Field(default="auto", description="Embedded runtime per model: `auto` (the measured "
                         "table in portrait.backends), `onnxruntime`, `openvino`, or overrides such as "
                         "`auto,sface=onnxruntime` or `auto,iris_landmark=openvino_int8` (the int8 copy "
                         "`models build --int8` writes; faster with VNNI or AMX, README Performance).")
    inference_threads: int = Field(default=1, ge=0, description="Intra-op threads of each embedded model call; "
                                   "0 lets the runtime choose (all cores). One thread per call, with the "
                                   "models' batchers and the pipeline workers running side by side, cost the "
                                   "least CPU per verification (benchmarks/bench_threads.py).")
    model_calls: int = Field(default=0, ge=0, description="Calls of one model running at once: the batcher's "
                             "workers per model and OpenVINO's streams. 0: with the embedded backend, the "
                             "cores this process may use divided by INFERENCE_THREADS (1 when that is 0), at "
                             f"most {DEFAULT_MODEL_CALLS_CAP}; with Triton, 1 (fewer, larger batches). One call at "
                             "a time left a core of two idle at concurrency 4 (OpenVINO runs one call per "
                             "stream); each call running at once holds its own buffers (README, Memory).")

    def concurrent_model_calls(self) -> int:
        """`model_calls`, with 0 resolved against the backend and this machine."""
        if self.model_calls:
            return self.model_calls
        if self.backend == "triton" or self.inference_threads == 0:
            return 1
        return max(1, min(DEFAULT_MODEL_CALLS_CAP, usable_cores() // self.inference_threads))

    @field_validator("calibration")
    @classmethod
    def _readable_record(cls, value: Path | None) -> Path | None:
        if value is not None:
            from portrait.pipeline import config_from_record

            try:
                config_from_record(value)
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{value}: not a usable calibration record ({error!r})") from None
        return value

    @field_validator("model_mirror", "api_keys_file", "receipt_key_file", "calibration", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("runtime")
    @classmethod
    def _known_runtimes(cls, value: str) -> str:
        from portrait.backends import runtime_table

        runtime_table(value)  # raises on an unknown runtime or model, or OpenVINO missing
        return value

    backend: Literal["embedded", "triton"] = Field(default="embedded", description="`embedded` (ONNX Runtime "
                                                    "and OpenVINO in process) or `triton`.")
    triton_url: str = Field(default="127.0.0.1:8001", description="Triton gRPC address for the triton backend.")
    decoder: Literal["pyav", "dali", "gpu"] = Field(default="pyav", description="Media decoder: `pyav`, `dali` (CPU) or `gpu` (NVDEC).")
    frames: Literal["host", "gpu"] = Field(default="host", description="Pixel work: `host` (OpenCV) or `gpu` (Triton-lang kernels).")
    video_fps: float = Field(default=VideoLimits.target_fps, gt=0, le=60, description="Frames sampled per second of video.")
    video_detect_every: int = Field(default=1, ge=1, description="The detector sees every n-th sampled frame; "
                                    "FaceMesh follows the face between (1: detect on every frame). 4 saves "
                                    "about 0.3 CPU s per verification but changes the observed actions on 6 of "
                                    "the 11 dev clips (README, Performance).")
    video_max_frames: int = Field(default=VideoLimits.max_frames, ge=2, le=1000, description="Frames kept per video at most.")
    video_max_seconds: float = Field(default=VideoLimits.max_duration_s, gt=0, le=600, description="Longer videos are refused.")
    video_max_side: int = Field(default=VideoLimits.max_side, ge=0, description="Kept frames are scaled down while "
                                f"decoding to this longer side ({MIN_FRAME_SIDE} or more; 0 keeps the coded size).")
    max_image_pixels: int = Field(default=MAX_IMAGE_PIXELS, ge=1, description="Larger images are refused.")
    max_video_pixels: int = Field(default=VideoLimits.max_pixels, gt=0, description="Larger video frames are refused.")

    # The HTTP service
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    api_keys: str = Field(default="", description="tenant:key,tenant2:key2 (keys of 16+ characters).")
    api_keys_file: Path | None = Field(default=None, description="A file of tenant:key lines.")
    challenge_secret: str = Field(default="", description="HMAC secret for challenge tokens; random per "
                                  "process when empty (set it when several replicas share traffic).")
    challenge_ttl_s: float = Field(default=120.0, gt=0, le=3600)
    mirrored: bool = Field(default=False, description="Whether capture clients mirror the recording, unless "
                           "the tenant is in mirrored_tenants or the challenge request says.")
    mirrored_tenants: str = Field(default="", description="Comma-separated tenants whose capture client mirrors.")
    session_ttl_s: float = Field(default=120.0, gt=0, le=3600, description="A live session's stream must start "
                                 "this long after it is created, and its verdict be asked this long after the "
                                 "stream ends; its media are dropped then.")
    session_max_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024,
                                   description="Media one session's stream may send (11.5 s at 2 Mbit/s is 3 MB).")
    sessions_max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024, description="Media all streams of "
                                    "this process may hold: each stream reserves SESSION_MAX_BYTES when it starts; "
                                    "beyond, 503 `sessions_full`.")
    session_required: bool = Field(default=False, description="Every tenant must verify through live sessions "
                                   "(the one-shot challenge and verification routes answer 403 `session_required`).")
    session_required_tenants: str = Field(default="", description="Comma-separated tenants that must verify "
                                          "through live sessions.")
    receipt_key_file: Path | None = Field(default=None, description="Ed25519 private key (PEM) signing "
                                          "receipts; generated per process when unset.")
    redis_url: str = Field(default="", description="Single-use challenge nonces in Redis (several replicas).")
    redis_timeout_s: float = Field(default=0.5, gt=0, le=10, description="Limit on one Redis call; a slower "
                                   "store counts as down (503 `nonce_store_unavailable`, `/readyz` 503).")
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, le=1024 ** 3)
    max_uploads: int = Field(default=32, ge=1, description="Requests whose body is still arriving, at most; "
                             "beyond it, 503 `overloaded`. Worker and waiting places go only to requests whose "
                             "body is in, so slow uploads hold these instead (each up to MAX_UPLOAD_BYTES in memory).")
    upload_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="A body must arrive within this "
                                    "long, else 408 `upload_too_slow`.")
    upload_min_bytes_per_s: int = Field(default=16 * 1024, ge=0, description="... and grow by at least this many "
                                        "bytes per second over every 5 s (0: no minimum), else 408 `upload_too_slow`.")
    rate_limit_per_s: float = Field(default=20.0, gt=0, description="Requests per second per tenant (shared "
                                    "by every replica through Redis when `REDIS_URL` is set).")
    rate_limit_burst: int = Field(default=40, ge=1, description="Requests a tenant may send at once.")
    max_in_flight_per_tenant: int = Field(default=12, ge=1, description="Requests of one tenant admitted at "
                                          "once, uploading or not; below `WORKERS + MAX_WAITING` and `MAX_UPLOADS`, "
                                          "so one tenant cannot fill either.")
    workers: int = Field(default=8, ge=1, le=256, description="Requests processed at once (pipeline threads), "
                         "shared round-robin between the tenants waiting.")
    max_waiting: int = Field(default=16, ge=0, description="Requests waiting for a worker; beyond it, 503 + Retry-After.")
    request_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    drain_grace_s: float = Field(default=0.0, ge=0, le=300, description="After SIGTERM, keep serving this long "
                                 "with `/readyz` at 503 (for load balancers that poll it) before closing.")
    memory_release_idle_s: float = Field(default=10.0, ge=0, le=3600, description="After this long with no "
                                         "request running, hand back the memory the runtimes and the allocator "
                                         "keep from the last burst (0: never); README, Media and memory.")
    batch_max_delay_ms: float = Field(default=5.0, ge=0, le=1000)
    batch_max_rows: int = Field(default=0, ge=0, description="Cap on rows per model call; 0 uses each model's maximum.")

    @model_validator(mode="after")
    def _compatible(self) -> Settings:
        if self.decoder == "gpu" and self.frames != "gpu":
            raise ValueError("PORTRAIT_DECODER=gpu leaves frames on the GPU: set PORTRAIT_FRAMES=gpu too")
        if self.session_max_bytes > self.sessions_max_bytes:
            raise ValueError("PORTRAIT_SESSION_MAX_BYTES must not exceed PORTRAIT_SESSIONS_MAX_BYTES")
        if self.max_in_flight_per_tenant >= self.workers + self.max_waiting:
            raise ValueError(f"PORTRAIT_MAX_IN_FLIGHT_PER_TENANT ({self.max_in_flight_per_tenant}) must be below "
                             f"PORTRAIT_WORKERS + PORTRAIT_MAX_WAITING ({self.workers + self.max_waiting}), "
                             "so one tenant cannot take every place")
        if self.max_in_flight_per_tenant >= self.max_uploads:
            raise ValueError(f"PORTRAIT_MAX_IN_FLIGHT_PER_TENANT ({self.max_in_flight_per_tenant}) must be below "
                             f"PORTRAIT_MAX_UPLOADS ({self.max_uploads}), so one tenant's slow uploads cannot take "
                             "every upload place")
        return self

    # Per tenant: comma-separated tenant names.
    client_actions_tenants: str = Field(default="", description="Tenants that may name a challenge's actions "
                                        "and schedule (kiosks, tests); the token and the receipt say so. Never a "
                                        "tenant whose callers could be an attacker.")
    full_answer_tenants: str = Field(default="", description="Tenants whose answers carry every score, "
                                     "threshold and observed action (audit back ends); the others get the "
                                     "decision and reasons. Receipts carry the scores for every tenant.")

    # The demo page: off unless asked for. It runs as a tenant of its own, with its own small
    # quota, so anyone who can reach it spends that and nothing of a carrier's.
    demo: bool = Field(default=False, description="Serve the demo page at /demo (never in production).")
    demo_tenant: str = Field(default="demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                             description="The tenant name the demo's requests and receipts carry; not a "
                             "tenant of the API keys.")
    demo_rate_limit_per_s: float = Field(default=0.2, gt=0, description="The demo's requests per second, all "
                                         "visitors together.")
    demo_rate_limit_burst: int = Field(default=6, ge=1, description="The demo's requests at once.")
    demo_max_in_flight: int = Field(default=1, ge=1, description="The demo's requests in progress at once.")

    @model_validator(mode="after")
    def _demo_is_apart(self) -> Settings:
        if self.demo_tenant in tenant_names(self.full_answer_tenants):
            raise ValueError(f"PORTRAIT_FULL_ANSWER_TENANTS names the demo's tenant ({self.demo_tenant}): the demo "
                             "answers the decision and reasons only")
        if self.demo_max_in_flight >= self.workers + self.max_waiting:
            raise ValueError("PORTRAIT_DEMO_MAX_IN_FLIGHT must be below PORTRAIT_WORKERS + PORTRAIT_MAX_WAITING")
        return self

    @field_validator("video_max_side")
    @classmethod
    def _frame_side(cls, value: int) -> int:
        if value and value < MIN_FRAME_SIDE:
            raise ValueError(f"must be 0 or at least {MIN_FRAME_SIDE} (the video detector's input)")
        return value

    @property
    def video_limits(self) -> VideoLimits:
        """The limits every video decoder takes (their one definition)."""
        return VideoLimits(target_fps=self.video_fps, max_frames=self.video_max_frames,
                           max_duration_s=self.video_max_seconds, max_pixels=self.max_video_pixels,
                           max_side=self.video_max_side)

    def mirrored_for(self, tenant: str) -> bool:
        """Whether this tenant's capture client mirrors, when its challenge request does not say."""
        return self.mirrored or tenant in tenant_names(self.mirrored_tenants)

    def client_actions_for(self, tenant: str) -> bool:
        """Whether this tenant may name a challenge's actions and schedule."""
        return tenant in tenant_names(self.client_actions_tenants)

    def full_answer_for(self, tenant: str) -> bool:
        """Whether this tenant's answers carry the scores (else the decision and reasons)."""
        return tenant in tenant_names(self.full_answer_tenants)

    def session_required_for(self, tenant: str) -> bool:
        """Whether this tenant may verify only through live sessions (with screen light)."""
        return self.session_required or tenant in {t.strip() for t in self.session_required_tenants.split(",") if t.strip()}

    triton_http_port: int = Field(default=8000, ge=1, le=65535)
    triton_grpc_port: int = Field(default=8001, ge=1, le=65535)
    triton_metrics_port: int = Field(default=8002, ge=1, le=65535)
    triton_startup_timeout_s: float = Field(default=120.0, gt=0)


def tenant_names(value: str) -> frozenset[str]:
    """The tenants of a comma-separated list."""
    return frozenset(name.strip() for name in value.split(",") if name.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_error(error: ValidationError) -> str:
    """A refused setting as one line: the variable and why."""
    parts = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"]).upper()
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"PORTRAIT_{name}: {message}" if name else message)
    return "invalid settings: " + "; ".join(parts)
