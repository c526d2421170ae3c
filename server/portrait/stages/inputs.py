"""How each model wants its crops: channel order and scale, as float32 NCHW."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputFormat:
    rgb: bool  # False keeps the decoders' BGR order
    scale: float
