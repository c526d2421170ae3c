"""Embedded backend: ONNX Runtime sessions in this process, on CPU. The default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from portrait import ort
from portrait.modelrepo.repository import ModelRecord, model_path, verified_models
from portrait.modelrepo.specs import BY_NAME


class OnnxRuntimeBackend:
    name = "embedded"

    def __init__(self, repository: Path, models: list[str] | None = None, threads: int = 0) -> None:
        names = models or list(BY_NAME)
        self.records: dict[str, ModelRecord] = verified_models(Path(repository), names)
        self._sessions = {name: ort.session(model_path(Path(repository), name), threads) for name in names}
        self._outputs = {name: [o.name for o in s.get_outputs()] for name, s in self._sessions.items()}

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        session = self._sessions[model]
        outputs = session.run(None, {BY_NAME[model].input.name: np.ascontiguousarray(batch, np.float32)})
        return dict(zip(self._outputs[model], outputs))

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._sessions.clear()
