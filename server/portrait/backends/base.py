"""The one interface between the pipeline and whatever runs the models."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class BackendError(RuntimeError):
    """A model call failed for a reason that is not the caller's input (server down, timeout)."""


class InferenceBackend(Protocol):
    """Runs one model on one batch. Every model of the repository has a single input."""

    name: str

    def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 batch [N, ...] -> every output of the model by name, each [N, ...]."""
        ...

    def ready(self) -> bool:
        """True when every model can serve (files loaded, server reachable)."""
        ...

    def close(self) -> None: ...
