"""Reading a built model repository: the manifest and checked model files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from portrait.modelrepo.sources import sha256_of

MANIFEST = "manifest.json"


class ModelRepositoryError(RuntimeError):
    """A model file is missing, corrupt, or not the one the manifest names."""


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: str
    licence: str
    summary: str
    source: str
    source_sha256: str
    sha256: str
    fingerprint: str
    max_batch_size: int

    def served(self) -> dict[str, str]:
        """How answers, receipts and metrics name the model."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def model_path(repository: Path, name: str) -> Path:
    return repository / name / "1" / "model.onnx"


def read_manifest(repository: Path) -> dict[str, ModelRecord]:
    path = repository / MANIFEST
    if not path.exists():
        return {}
    entries = json.loads(path.read_text())["models"]
    return {entry["name"]: ModelRecord(**entry) for entry in entries}


def served_models(repository: Path) -> list[dict[str, str]]:
    """The models named in every answer and receipt: name, version and sha256 of each file."""
    return [record.served() for record in read_manifest(repository).values()]


def verified_models(repository: Path, names: list[str]) -> dict[str, ModelRecord]:
    """The manifest records of `names`, after checking each file against its digest."""
    manifest = read_manifest(repository)
    if not manifest:
        raise ModelRepositoryError(f"{repository} has no {MANIFEST}: run `portrait models build`")
    records = {}
    for name in names:
        record = manifest.get(name)
        path = model_path(repository, name)
        if record is None:
            raise ModelRepositoryError(f"{name}: not in {repository / MANIFEST}: run `portrait models build`")
        if not path.is_file():
            raise ModelRepositoryError(f"{name}: {path} is missing: run `portrait models build`")
        actual = sha256_of(path)
        if actual != record.sha256:
            raise ModelRepositoryError(
                f"{name}: {path} is corrupt (sha256 {actual[:12]}..., manifest {record.sha256[:12]}...):"
                " run `portrait models build`"
            )
        records[name] = record
    return records
