"""Accuracy figures from scores: verification (TAR at FAR, 10-fold accuracy), calibration
of the match threshold, and presentation-attack error rates (ISO/IEC 30107-3 terms)."""

from __future__ import annotations

import numpy as np


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The lowest threshold whose false-accept rate on these impostor scores is <= far.

    With n impostors a rate below 1/n cannot be measured; the threshold then sits just
    above the highest impostor score.
    """
    ranked = np.sort(np.asarray(impostor, np.float64))[::-1]
    allowed = int(np.floor(far * len(ranked)))
    return float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else float(ranked[-1])


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict[str, float]:
    threshold = threshold_at_far(impostor, far)
    return {
        "far_target": far,
        "threshold": round(threshold, 4),
        "tar": round(float(np.mean(np.asarray(genuine) >= threshold)), 4),
        "far_measured": round(float(np.mean(np.asarray(impostor) >= threshold)), 6),
        "far_resolution": round(1.0 / max(len(impostor), 1), 6),
    }


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((scores >= threshold) == same))


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    candidates = np.unique(scores)
    accuracies = [(accuracy_at(scores, same, t), t) for t in candidates]
    return max(accuracies)[1]


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, float]:
    """LFW protocol: the threshold is chosen on the other folds, accuracy measured on each."""
    per_fold = []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_threshold(scores[~test], same[~test])
        per_fold.append(accuracy_at(scores[test], same[test], threshold))
    return {"mean": round(float(np.mean(per_fold)), 4), "std": round(float(np.std(per_fold)), 4),
            "folds": len(per_fold)}


def pad_error_rates(is_attack: np.ndarray, accepted_live: np.ndarray, attack_types: np.ndarray) -> dict:
    """APCER: attacks accepted as live (overall and per attack type, the standard reports
    the worst type); BPCER: bona fide samples rejected."""
    attacks, bona_fide = is_attack, ~is_attack
    per_type = {
        str(kind): round(float(np.mean(accepted_live[attacks & (attack_types == kind)])), 4)
        for kind in np.unique(attack_types[attacks])
    }
    return {
        "apcer": round(float(np.mean(accepted_live[attacks])), 4) if attacks.any() else None,
        "apcer_per_type": per_type,
        "apcer_worst_type": max(per_type.values()) if per_type else None,
        "bpcer": round(float(np.mean(~accepted_live[bona_fide])), 4) if bona_fide.any() else None,
        "attacks": int(attacks.sum()),
        "bona_fide": int(bona_fide.sum()),
    }
