"""Figures for reviewers: the DET curve of `portrait eval pairs`, the passive-score
distributions of `portrait eval liveness`. Plotting is an optional
extra (`pip install 'portrait[plot]'`); matplotlib loads only when a plot is asked for."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np

from portrait.evaluation import det_curve


class PlotUnavailable(ValueError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'portrait[plot]'") from None
    return plt


def _probit(rate: np.ndarray, floor: float) -> np.ndarray:
    return np.array([NormalDist().inv_cdf(r) for r in np.clip(rate, floor, 1 - floor)])


def det_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], operating: tuple[str, float], path: Path,
             title: str) -> None:
    """DET curves (FNMR against FMR on normal-deviate axes, as ISO/IEC 19795-1 draws them)
    of each score, with the shipped score's operating point at its threshold."""
    plt = _pyplot()
    impostors = max(len(i) for _, i in curves.values())
    genuine_count = max(len(g) for g, _ in curves.values())
    # Zero rates are drawn half a step below each axis's resolution, where the axis starts.
    floors = (0.5 / max(impostors, 1), 0.5 / max(genuine_count, 1))
    figure, axes = plt.subplots(figsize=(6, 5))
    for name, (genuine, impostor) in curves.items():
        fmr, fnmr = det_curve(genuine, impostor)
        axes.plot(_probit(fmr, floors[0]), _probit(fnmr, floors[1]), label=name)
    name, threshold = operating
    genuine, impostor = curves[name]
    point = (float(np.mean(impostor >= threshold)), float(np.mean(genuine < threshold)))
    axes.plot(_probit(np.array([point[0]]), floors[0])[0], _probit(np.array([point[1]]), floors[1])[0], "o",
              color="black", label=f"operating point ({name} >= {threshold:.4g}): FMR {point[0]:.2g}, FNMR {point[1]:.2g}")
    for floor, ticks_at, limits in ((floors[0], axes.set_xticks, axes.set_xlim), (floors[1], axes.set_yticks, axes.set_ylim)):
        ticks = [t for t in (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5) if t >= floor]
        ticks_at(_probit(np.array(ticks), floor), [f"{t:g}" for t in ticks])
        limits(_probit(np.array([floor]), floor)[0] - 0.2, _probit(np.array([0.6]), floor)[0])
    axes.set_xlabel(f"false match rate (resolution {1 / max(impostors, 1):.1g})")
    axes.set_ylabel(f"false non-match rate (resolution {1 / max(genuine_count, 1):.1g})")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def liveness_plot(scores: dict[str, np.ndarray], threshold: float, path: Path, title: str) -> None:
    """Live and attack passive scores per sample, with the threshold they are judged by."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 41)
    for (label, values), colour in zip(scores.items(), ("tab:green", "tab:red")):
        axes.hist(values, bins=bins, alpha=0.6, color=colour, label=f"{label} ({len(values)})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    axes.set_xlabel("passive live score (median over frames)")
    axes.set_ylabel("samples")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
