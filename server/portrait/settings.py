"""All settings in one place, read from `PORTRAIT_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_mirror() -> Path | None:
    candidate = Path("../shared/models")
    return candidate.resolve() if candidate.is_dir() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PORTRAIT_", extra="ignore")

    model_repository: Path = Field(
        default=Path("model_repository"),
        description="Triton model repository written by `portrait models build`.",
    )
    model_mirror: Path | None = Field(
        default_factory=_default_mirror,
        description="Folder holding mirrored model files (MiniFASNet); else their canonical URLs.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "portrait",
        description="Downloaded wheels and model files, keyed by sha256.",
    )
    ort_threads: int = Field(default=0, description="ONNX Runtime intra-op threads; 0 lets ORT choose.")

    @field_validator("model_mirror", "api_keys_file", "receipt_key_file", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        return None if value == "" else value

    backend: str = Field(default="embedded", description="`embedded` (ONNX Runtime) or `triton`.")
    triton_url: str = Field(default="127.0.0.1:8001", description="Triton gRPC address for the triton backend.")
    decoder: str = Field(default="pyav", description="Media decoder: `pyav`, `dali` (CPU) or `gpu` (NVDEC).")
    frames: str = Field(default="host", description="Pixel work: `host` (OpenCV) or `gpu` (Triton-lang kernels).")
    video_fps: float = Field(default=15.0, description="Frames sampled per second of video.")
    video_max_frames: int = Field(default=96, description="Frames kept per video at most.")
    video_max_seconds: float = Field(default=12.0, description="Longer videos are refused.")
    max_image_pixels: int = Field(default=40_000_000, description="Larger images are refused.")
    max_video_pixels: int = Field(default=1920 * 1088, description="Larger video frames are refused.")

    # The HTTP service
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"
    api_keys: str = Field(default="", description="tenant:key,tenant2:key2 (keys of 16+ characters).")
    api_keys_file: Path | None = Field(default=None, description="A file of tenant:key lines.")
    challenge_secret: str = Field(default="", description="HMAC secret for challenge tokens; random per "
                                  "process when empty (set it when several replicas share traffic).")
    challenge_ttl_s: float = 120.0
    allow_client_actions: bool = Field(default=False, description="Let callers name the challenge actions "
                                       "and schedule (kiosks, tests).")
    mirrored: bool = Field(default=False, description="Whether capture clients mirror the recording, unless "
                           "the tenant is in mirrored_tenants or the challenge request says.")
    mirrored_tenants: str = Field(default="", description="Comma-separated tenants whose capture client mirrors.")
    receipt_key_file: Path | None = Field(default=None, description="Ed25519 private key (PEM) signing "
                                          "receipts; generated per process when unset.")
    redis_url: str = Field(default="", description="Single-use challenge nonces in Redis (several replicas).")
    max_upload_bytes: int = 32 * 1024 * 1024
    rate_limit_per_s: float = Field(default=20.0, description="Requests per second per tenant.")
    rate_limit_burst: int = 40
    max_in_flight_per_tenant: int = 32
    workers: int = Field(default=8, description="Requests processed at once (pipeline threads).")
    max_waiting: int = Field(default=16, description="Requests waiting for a worker; beyond it, 503 + Retry-After.")
    request_timeout_s: float = 60.0
    batch_max_delay_ms: float = 5.0
    batch_max_rows: int = Field(default=0, description="Cap on rows per model call; 0 uses each model's maximum.")

    @property
    def video_limits(self) -> dict[str, float]:
        """The keyword arguments every video decoder takes."""
        return {"target_fps": self.video_fps, "max_frames": self.video_max_frames,
                "max_duration_s": self.video_max_seconds, "max_pixels": self.max_video_pixels}

    def mirrored_for(self, tenant: str) -> bool:
        """Whether this tenant's capture client mirrors, when its challenge request does not say."""
        return self.mirrored or tenant in {t.strip() for t in self.mirrored_tenants.split(",") if t.strip()}

    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    triton_startup_timeout_s: float = 120.0


@lru_cache
def get_settings() -> Settings:
    return Settings()
