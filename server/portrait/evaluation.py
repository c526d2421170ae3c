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


def recorded(threshold: float) -> float:
    """A threshold as the calibration record keeps it, to 4 decimals, rounded up: every
    decision accepts at >=, and a threshold set a hair above a score it must refuse (the FAR
    point sits just over an impostor's score) would, rounded down, accept that score."""
    kept = round(threshold, 4)
    return kept if kept >= threshold else round(kept + 1e-4, 4)


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict[str, float]:
    threshold = threshold_at_far(impostor, far)
    return {
        "far_target": far,
        "threshold": recorded(threshold),
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
    the worst type); BPCER: bona fide samples rejected. With 95% intervals: dev lists hold
    tens of samples, where a rate alone says little."""
    attacks, bona_fide = is_attack, ~is_attack
    per_type = {
        str(kind): round(float(np.mean(accepted_live[attacks & (attack_types == kind)])), 4)
        for kind in np.unique(attack_types[attacks])
    }
    return {
        "apcer": round(float(np.mean(accepted_live[attacks])), 4) if attacks.any() else None,
        "apcer_ci95": wilson_interval(int(accepted_live[attacks].sum()), int(attacks.sum())),
        "apcer_per_type": per_type,
        "apcer_worst_type": max(per_type.values()) if per_type else None,
        "bpcer": round(float(np.mean(~accepted_live[bona_fide])), 4) if bona_fide.any() else None,
        "bpcer_ci95": wilson_interval(int((~accepted_live[bona_fide]).sum()), int(bona_fide.sum())),
        "attacks": int(attacks.sum()),
        "bona_fide": int(bona_fide.sum()),
    }


def assign_folds(count: int, folds: int = 10, seed: int = 0) -> np.ndarray:
    """Fold of each pair where the file names none: a fixed shuffle dealt into `folds` parts."""
    order = np.random.default_rng(seed).permutation(count)
    assigned = np.empty(count, np.int64)
    assigned[order] = np.arange(count) % folds
    return assigned


def wilson_interval(errors: int, trials: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a rate: sound at 0 errors and small counts, where the
    normal approximation collapses to a zero-width interval."""
    if trials == 0:
        return None
    p = errors / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return round(float(max(0.0, centre - half)), 6), round(float(min(1.0, centre + half)), 6)


def error_rates(scores: np.ndarray, same: np.ndarray, threshold: float) -> dict:
    """FMR (impostors accepted) and FNMR (genuine pairs not accepted) at one threshold, with
    counts and 95% intervals. A refused pair (score -inf) is a non-match."""
    accepted = scores >= threshold
    false_match, impostors = int(np.sum(accepted & ~same)), int(np.sum(~same))
    false_non_match, genuine = int(np.sum(~accepted & same)), int(np.sum(same))
    return {
        "fmr": round(false_match / impostors, 6) if impostors else None,
        "false_matches": false_match, "impostor_pairs": impostors,
        "fmr_ci95": wilson_interval(false_match, impostors),
        "fnmr": round(false_non_match / genuine, 6) if genuine else None,
        "false_non_matches": false_non_match, "genuine_pairs": genuine,
        "fnmr_ci95": wilson_interval(false_non_match, genuine),
    }


def differentials(per_group: dict[str, dict]) -> dict:
    """Highest over lowest FMR and FNMR across groups (null where the lowest is 0: the ratio
    is then unbounded and the counts say more)."""
    out = {}
    for rate in ("fmr", "fnmr"):
        values = [g[rate] for g in per_group.values() if g[rate] is not None]
        if len(values) < 2:
            out[f"{rate}_max_over_min"] = None
            continue
        low, high = min(values), max(values)
        out[f"{rate}_max_over_min"] = round(high / low, 3) if low > 0 else None
        out[f"{rate}_range"] = [low, high]
    return out


def det_curve(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) at every distinct score used as the threshold."""
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    thresholds = thresholds[np.isfinite(thresholds)]
    impostor_sorted, genuine_sorted = np.sort(impostor), np.sort(genuine)
    fmr = 1.0 - np.searchsorted(impostor_sorted, thresholds, side="left") / max(len(impostor), 1)
    fnmr = np.searchsorted(genuine_sorted, thresholds, side="left") / max(len(genuine), 1)
    return fmr, fnmr


def separating_threshold(accepted: np.ndarray, rejected: np.ndarray) -> float:
    """The threshold (accept at >=) with the fewest errors on both sides; among equally good
    ones, the middle of the widest gap between neighbouring scores, so it sits as far from
    both sets as the data allow. For small dev sets where any error is one too many."""
    accepted, rejected = np.asarray(accepted, np.float64), np.asarray(rejected, np.float64)
    values = np.unique(np.concatenate([accepted, rejected]))
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    gaps = np.concatenate([[0.0], np.diff(values), [0.0]])
    errors = np.array([np.sum(accepted < t) + np.sum(rejected >= t) for t in candidates])
    best = np.flatnonzero(errors == errors.min())
    return float(candidates[best[np.argmax(gaps[best])]])


def threshold_rejecting_all(accepted: np.ndarray, rejected: np.ndarray) -> float:
    """The threshold (accept at >=) that rejects every score in `rejected` and, under that,
    accepts as many of `accepted` as it can: the middle of the gap above the highest
    rejected score. For attacks, where the few dev samples must all fail."""
    accepted, rejected = np.asarray(accepted, np.float64), np.asarray(rejected, np.float64)
    top = float(rejected.max())
    above = accepted[accepted > top]
    return (top + float(above.min())) / 2 if len(above) else float(np.nextafter(top, np.inf))
