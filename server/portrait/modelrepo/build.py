"""`portrait models build`: fetch, convert, validate and write the model repository.

The build is idempotent: a model whose fingerprint (source digest, conversion, description)
matches the manifest and whose file still has the recorded digest is left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from portrait import ort
from portrait.modelrepo import configs, onnx_edit
from portrait.modelrepo.repository import MANIFEST, ModelRecord, model_path, read_manifest
from portrait.modelrepo.sources import fetch, sha256_of
from portrait.modelrepo.specs import MODELS, Conversion, ModelSpec, WheelFile

log = logging.getLogger(__name__)

BUILD_FORMAT = 1  # bump when conversion code changes what it writes
# Largest |converted - source| allowed at build time; the edits are exact, so this only
# absorbs a different order of float additions between the two graphs.
BUILD_TOLERANCE = 1e-3


def _fingerprint(spec: ModelSpec) -> str:
    text = json.dumps([BUILD_FORMAT, asdict(spec)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _source_sha(spec: ModelSpec, path: Path) -> str:
    return spec.source.sha256 if isinstance(spec.source, WheelFile) else sha256_of(path)


def convert(spec: ModelSpec, source: Path) -> onnx.ModelProto:
    if spec.conversion is Conversion.TFLITE:
        import tflite2onnx

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "model.onnx"
            tflite2onnx.convert(str(source), str(out))
            model = onnx.load(str(out))
    else:
        model = onnx.load(str(source))
    if spec.conversion is Conversion.FOLD_QUANTIZED:
        folded = onnx_edit.fold_weight_chains(model)
        log.info("%s: folded %d quantized weight nodes to fp32", spec.name, folded)
    onnx_edit.prune_inputs(model)
    onnx_edit.make_batch_dynamic(model, spec)
    return onnx_edit.finalize(model)


def synthetic_batch(spec: ModelSpec, batch: int, seed: int = 0) -> np.ndarray:
    """A deterministic input in the model's value range (640x640 where H and W are dynamic,
    the size the detector was published with)."""
    dims = tuple(640 if d == -1 else d for d in spec.input.dims)
    scale = 1.0 if spec.conversion is Conversion.TFLITE else 255.0
    rng = np.random.default_rng(seed)
    return (rng.random((batch, *dims), dtype=np.float32) * scale).astype(np.float32)


def run_source(spec: ModelSpec, source: Path, batch: np.ndarray) -> list[np.ndarray]:
    """Run the published file one item at a time (most are fixed at batch 1) in the runtime
    its publisher targets."""
    if spec.conversion is Conversion.TFLITE:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(str(source))
        interpreter.allocate_tensors()
        (inp,) = interpreter.get_input_details()
        outs = interpreter.get_output_details()
        per_item = []
        for item in batch:
            interpreter.set_tensor(inp["index"], item.transpose(1, 2, 0)[None])  # NCHW -> NHWC
            interpreter.invoke()
            per_item.append([interpreter.get_tensor(o["index"]).reshape(-1) for o in outs])
        return [np.stack([p[i] for p in per_item]) for i in range(len(outs))]
    if spec.conversion is Conversion.FOLD_QUANTIZED:
        # ONNX Runtime rejects the block-quantized originals; OpenCV's DNN runs them.
        import cv2

        net = cv2.dnn.readNetFromONNX(str(source))
        names = [t.name for t in spec.outputs]
        per_item = []
        for item in batch:
            net.setInput(item[None])
            per_item.append(net.forward(names))
    else:
        reference = ort.session(source)
        name = reference.get_inputs()[0].name
        per_item = [reference.run(None, {name: item[None]}) for item in batch]
    return [np.concatenate([p[i] for p in per_item]) for i in range(len(per_item[0]))]


def validate_against_source(spec: ModelSpec, converted: Path, source: Path) -> float:
    """Largest absolute difference between the converted model (one batch) and the source."""
    batch = synthetic_batch(spec, 4)
    expected = run_source(spec, source, batch)
    session = ort.session(converted)
    got = session.run(None, {spec.input.name: batch})
    worst = 0.0
    for e, g in zip(expected, got):
        worst = max(worst, float(np.abs(e.reshape(g.shape) - g).max()))
    if worst > BUILD_TOLERANCE:
        raise RuntimeError(f"{spec.name}: converted model differs from its source by {worst:.2e}")
    return worst


def build_model(spec: ModelSpec, repository: Path, cache_dir: Path, mirror: Path | None,
                previous: ModelRecord | None) -> tuple[ModelRecord, bool]:
    """Return the model's record and whether it was (re)built."""
    target = model_path(repository, spec.name)
    fingerprint = _fingerprint(spec)
    if (previous is not None and previous.fingerprint == fingerprint and target.exists()
            and sha256_of(target) == previous.sha256):
        _write_configs(spec, repository)
        return previous, False
    source = fetch(spec.source, cache_dir, mirror)
    model = convert(spec, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".onnx.part")
    onnx.save(model, str(tmp))
    worst = validate_against_source(spec, tmp, source)
    tmp.replace(target)
    log.info("%s: built, max |converted - source| = %.2e", spec.name, worst)
    _write_configs(spec, repository)
    record = ModelRecord(
        name=spec.name,
        version=spec.version,
        licence=spec.licence,
        summary=spec.summary,
        source=spec.source.describe(),
        source_sha256=_source_sha(spec, source),
        sha256=sha256_of(target),
        fingerprint=fingerprint,
        max_batch_size=spec.max_batch_size,
    )
    return record, True


def _write_configs(spec: ModelSpec, repository: Path) -> None:
    folder = repository / spec.name
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    _write_if_changed(folder / "config.pbtxt", configs.render_cpu(spec))
    _write_if_changed(folder / "configs" / f"{configs.GPU_CONFIG_NAME}.pbtxt", configs.render_gpu(spec))
    _write_if_changed(folder / "configs" / f"{configs.OPENVINO_CONFIG_NAME}.pbtxt", configs.render_openvino(spec))


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def build_repository(repository: Path, cache_dir: Path, mirror: Path | None,
                     specs: tuple[ModelSpec, ...] = MODELS) -> dict[str, object]:
    """Build every model; return a summary for the CLI."""
    started = time.perf_counter()
    previous = read_manifest(repository)
    records, rebuilt = [], []
    for spec in specs:
        record, fresh = build_model(spec, repository, cache_dir, mirror, previous.get(spec.name))
        records.append(record)
        if fresh:
            rebuilt.append(spec.name)
    manifest = {"format": BUILD_FORMAT, "models": [asdict(r) for r in records]}
    _write_if_changed(repository / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return {
        "repository": str(repository),
        "built": rebuilt,
        "cached": [r.name for r in records if r.name not in rebuilt],
        "seconds": round(time.perf_counter() - started, 2),
        "models": [record.served() for record in records],
    }
