"""Score-level fusion of the two embedders: each score z-normalised, then a weighted sum.

SFace's cosine and dlib's (minus) Euclidean distance live on different scales; z-normalising
each by its impostor score distribution puts them on one (how many impostor standard
deviations above a typical impostor a pair scores). The weights are Fisher's linear
discriminant on the two z-scores: the direction that best separates genuine from impostor
pairs, learned on labelled pairs and written to the calibration record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORES = ("sface", "dlib")


@dataclass(frozen=True)
class Fusion:
    mean: tuple[float, float]  # impostor score mean per embedder (SCORES order)
    std: tuple[float, float]
    weights: tuple[float, float]  # sum to 1

    def __call__(self, sface: np.ndarray, dlib: np.ndarray) -> np.ndarray:
        z = [(np.asarray(s, np.float64) - m) / d for s, m, d in zip((sface, dlib), self.mean, self.std)]
        return self.weights[0] * z[0] + self.weights[1] * z[1]

    def to_record(self) -> dict:
        return {name: {"impostor_mean": round(m, 6), "impostor_std": round(d, 6), "weight": round(w, 4)}
                for name, m, d, w in zip(SCORES, self.mean, self.std, self.weights)}

    @classmethod
    def from_record(cls, record: dict) -> Fusion:
        parts = [record[name] for name in SCORES]
        return cls(tuple(float(p["impostor_mean"]) for p in parts), tuple(float(p["impostor_std"]) for p in parts),
                   tuple(float(p["weight"]) for p in parts))


def learn(sface: np.ndarray, dlib: np.ndarray, same: np.ndarray) -> Fusion:
    """Normalisation and weights from labelled pairs (both scores present)."""
    scores = np.stack([sface, dlib], 1).astype(np.float64)
    impostor, genuine = scores[~same], scores[same]
    mean, std = impostor.mean(0), impostor.std(0)
    z_gen, z_imp = (genuine - mean) / std, (impostor - mean) / std
    within = np.cov(z_gen, rowvar=False) + np.cov(z_imp, rowvar=False)
    weights = np.linalg.solve(within, z_gen.mean(0) - z_imp.mean(0))
    weights = np.clip(weights, 0.0, None)  # a score can be left out, never counted against
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(2, 0.5)
    return Fusion(tuple(float(m) for m in mean), tuple(float(s) for s in std), tuple(float(w) for w in weights))
