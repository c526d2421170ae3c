"""ONNX Runtime sessions configured the same way everywhere in the process."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def session(path: Path | str, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
