"""Shared fixtures: the test data, a model repository built from the real sources, faces."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from portrait.bench import free_port  # noqa: F401  (the tests import it from here)
from portrait.modelrepo.build import build_repository
from portrait.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def _testdata_dir() -> Path:
    return Path(os.environ.get("PORTRAIT_TESTDATA", SHARED / "testdata"))


@pytest.fixture(scope="session")
def testdata() -> Path:
    path = _testdata_dir()
    if not (path / "README.md").exists():
        pytest.skip(f"test data not found at {path} (set PORTRAIT_TESTDATA)")
    return path


@pytest.fixture(scope="session")
def mirror() -> Path:
    settings = Settings()
    path = settings.model_mirror or (SHARED / "models")
    if not (path / "SHA256SUMS").exists():
        pytest.skip(f"model mirror not found at {path} (set PORTRAIT_MODEL_MIRROR)")
    return path


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, mirror) -> Path:
    repository = tmp_path_factory.mktemp("model_repository")
    build_repository(repository, Settings().cache_dir, mirror)
    return repository


@pytest.fixture(scope="session")
def face_images(testdata) -> list[np.ndarray]:
    """Real single-person photos, BGR, scaled so the longer side is 640."""
    names = [
        "images/deepface/img1.jpg", "images/deepface/img2.jpg", "images/deepface/img17.jpg",
        "images/face_recognition/examples/obama.jpg", "images/face_recognition/examples/biden.jpg",
        "images/compreface/001_A.jpg", "images/silent_face/image_T1.jpg", "images/astronaut.png",
    ]
    images = []
    for name in names:
        image = cv2.imread(str(testdata / name), cv2.IMREAD_COLOR)
        scale = 640 / max(image.shape[:2])
        images.append(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    return images


def frame_id_record(folder: Path) -> Path:
    """The shipped calibration record with the generated-face check out of the way, for tests
    whose ID photo must be a frame of the selfie itself (`portrait.bench.frame_id_record`)."""
    from portrait.bench import frame_id_record as record

    return record(folder)


