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

    @field_validator("model_mirror", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        return None if value == "" else value

    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    triton_startup_timeout_s: float = 120.0


@lru_cache
def get_settings() -> Settings:
    return Settings()
