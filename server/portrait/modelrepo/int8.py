"""An int8 copy of the iris model, for CPUs with an int8 dot product (VNNI, AMX): built and
measured, run only when asked for (`PORTRAIT_RUNTIME=auto,iris_landmark=openvino_int8`).

On a Xeon with AVX-512 VNNI, OpenVINO ran the iris model 1.7x faster on an int8 copy than
on the fp32 file (one verification: 0.146 -> 0.079 CPU s), and SFace, both MiniFASNets and
dlib's ResNet 1.3-3.8x faster (`benchmarks/bench_runtimes.py --int8`). SFace's, dlib's and
the MiniFASNets' copies changed dev decisions (`eval pairs`, `eval liveness`: a pair's match,
a live photo refused and a replay accepted), so only the iris model has a copy. Its copy
leaves every `eval pairs` and `eval liveness` decision (liveness and generated-face dev
lists) as it was, but `eval actions` sees one blink more (d3 at 0.47 s, of 45 annotated)
and one 0.07 s later: the blink thresholds were calibrated on the fp32 model's eye openness
(which the copy moves by up to 0.03), so `RUNTIME=auto` keeps the fp32 file. Without VNNI
(AVX2 only) int8 gained nothing; the service's start log names the CPU's int8 flag.

The copy is derived from the repository's own fp32 file by NNCF's post-training
quantization (the `quantize` extra; `portrait models build --int8`), calibrated on the
inputs the fp32 pipeline gives the model on `CALIBRATION_MEDIA` (test data clips, found as
the tests find them, or under `--calibration-root`). It needs nothing from a network, and
the same inputs give the same file. Its record (`int8.json` beside the manifest) names the
fp32 file it came from, the calibration media and a digest of the rows; a copy whose fp32
source changed is stale and is not loaded. Licence: the same weights (Apache-2.0), requantized.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from portrait.modelrepo.repository import ModelRepositoryError, read_manifest
from portrait.modelrepo.sources import sha256_of

log = logging.getLogger(__name__)

# The CPU flags (Linux /proc/cpuinfo) of an int8 dot product OpenVINO uses.
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
# The models `models build --int8` quantizes: faster in int8 with VNNI, with the pair and
# liveness decisions unchanged (above).
INT8_MODELS = ("iris_landmark",)
RECORD = "int8.json"
INT8_FORMAT = 1  # bump when the quantization or its calibration changes what it writes
# Live clips under the test data root: both eyes of every frame with a face, 582 rows.
CALIBRATION_MEDIA = (
    "videos/replay_pair/real.mp4",
    "videos/liveportrait/d0.mp4",
    "videos/retalking/1.mp4",
    "videos/liveportrait/d13.mp4",
)


def int8_dot_product(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first of INT8_FLAGS this CPU has, or None (also where /proc/cpuinfo is unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return next((flag for flag in INT8_FLAGS if flag in flags), None)


def int8_path(repository: Path, name: str) -> Path:
    """The int8 copy (OpenVINO IR; its weights in the .bin beside it). Outside the version
    folder, so Triton's repository is untouched."""
    return repository / name / "int8" / "model.xml"


def _files_sha256(xml: Path) -> str:
    digest = hashlib.sha256()
    for path in (xml, xml.with_suffix(".bin")):
        digest.update(sha256_of(path).encode())
    return digest.hexdigest()


def read_records(repository: Path) -> dict[str, dict]:
    path = repository / RECORD
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def available(repository: Path, name: str) -> bool:
    """Whether an int8 copy of `name` is recorded for the repository's current fp32 file."""
    record = read_records(repository).get(name)
    manifest = read_manifest(repository).get(name)
    return (record is not None and manifest is not None and record["source_sha256"] == manifest.sha256
            and int8_path(repository, name).is_file())


def verified_int8(repository: Path, name: str) -> Path:
    """The int8 copy of `name`, after checking it against its record and its fp32 source."""
    if not available(repository, name):
        raise ModelRepositoryError(f"{name}: no current int8 copy in {repository}: run `portrait models build --int8`")
    path = int8_path(repository, name)
    if _files_sha256(path) != read_records(repository)[name]["sha256"]:
        raise ModelRepositoryError(f"{name}: {path} is corrupt: run `portrait models build --int8`")
    return path


def calibration_inputs(run_media: Callable[[Callable[[str, np.ndarray], None]], None]) -> dict[str, np.ndarray]:
    """The rows each model was given while `run_media` ran the pipeline (it calls the
    recorder with each model call's input)."""
    rows: dict[str, list[np.ndarray]] = {}
    run_media(lambda model, batch: rows.setdefault(model, []).append(np.array(batch, np.float32)))
    return {model: np.concatenate(parts) for model, parts in rows.items() if model in INT8_MODELS}


def quantize(repository: Path, inputs: dict[str, np.ndarray], media: list[str]) -> list[str]:
    """Write the int8 copy of every model in `inputs` whose record is not current; returns
    the models quantized."""
    import nncf
    import openvino as ov

    manifest = read_manifest(repository)
    records = read_records(repository)
    core = ov.Core()
    done = []
    for name, rows in inputs.items():
        fingerprint = hashlib.sha256(json.dumps([INT8_FORMAT, nncf.__version__, media]).encode()
                                     + rows.tobytes()).hexdigest()[:16]
        source = repository / name / "1" / "model.onnx"
        previous = records.get(name)
        if (previous is not None and previous["fingerprint"] == fingerprint
                and previous["source_sha256"] == manifest[name].sha256 and int8_path(repository, name).is_file()
                and _files_sha256(int8_path(repository, name)) == previous["sha256"]):
            continue
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars; stdout is the CLI's JSON
            model = nncf.quantize(core.read_model(str(source)),
                                  nncf.Dataset([rows[i : i + 1] for i in range(len(rows))]), subset_size=len(rows))
        target = int8_path(repository, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(target), compress_to_fp16=False)
        records[name] = {"source_sha256": manifest[name].sha256, "sha256": _files_sha256(target),
                         "fingerprint": fingerprint, "nncf": nncf.__version__, "calibration_rows": len(rows),
                         "calibration_media": media}
        log.info("%s: int8 copy written (%d calibration rows)", name, len(rows))
        done.append(name)
    (repository / RECORD).write_text(json.dumps({"format": INT8_FORMAT, "models": records}, indent=2) + "\n")
    return done


class _Recording:
    """A backend that hands each call's input to a recorder before running it."""

    def __init__(self, inner, record: Callable[[str, np.ndarray], None]) -> None:
        self.inner, self.record, self.name = inner, record, inner.name

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.record(model, batch)
        return self.inner.infer(model, batch)

    def ready(self) -> bool:
        return self.inner.ready()

    def close(self) -> None:
        self.inner.close()


def build_int8(settings, root: Path) -> dict[str, object]:
    """Quantize INT8_MODELS on the inputs the fp32 pipeline gives them on CALIBRATION_MEDIA
    under `root`; a summary for the CLI."""
    from portrait.backends import MEASURED, create_backend
    from portrait.media import decoder
    from portrait.pipeline import Pipeline, config_from_record

    missing = [name for name in CALIBRATION_MEDIA if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"calibration media not found under {root}: {', '.join(missing)}")
    repository = settings.model_repository
    fp32 = ",".join(["onnxruntime", *(f"{model}={runtime}" for model, runtime in MEASURED.items())])
    backend = create_backend("embedded", repository=repository, runtime=fp32, threads=1)
    decode = decoder("pyav")

    def run_media(record: Callable[[str, np.ndarray], None]) -> None:
        pipeline = Pipeline(_Recording(backend, record), config_from_record())
        for name in CALIBRATION_MEDIA:
            pipeline.liveness(decode.video((root / name).read_bytes(), settings.video_limits))

    try:
        inputs = calibration_inputs(run_media)
    finally:
        backend.close()
    quantized = quantize(repository, inputs, list(CALIBRATION_MEDIA))
    return {"int8": {"quantized": quantized, "current": [m for m in inputs if m not in quantized],
                     "rows": {m: len(rows) for m, rows in inputs.items()}, "cpu_int8": int8_dot_product()}}


def served(models: list[dict[str, str]], runtimes: dict[str, str], repository: Path) -> list[dict[str, str]]:
    """The models as answers and receipts name them, where a model runs its int8 copy: that
    copy's digest, and its version marked int8."""
    records = read_records(repository)
    return [{**model, "version": f"{model['version']}-int8", "sha256": records[model["name"]]["sha256"]}
            if runtimes.get(model["name"]) == "openvino_int8" else model for model in models]
