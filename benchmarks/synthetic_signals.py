"""Training-free signals tried for the generated-face check, measured on labelled clips.

    python benchmarks/synthetic_signals.py --list benchmarks/data/generated_dev.csv --root ../shared/testdata

For every clip of the list (cut to the service's longest, as `eval liveness` judges it), the
pipeline's own tracking and FaceMesh, then one number per signal:

- pulse_snr: remote photoplethysmography (POS, Wang et al. 2017) on the mean colour of the
  forehead and both cheeks, resampled to 10 Hz: the spectral peak in 0.7-3 Hz over the rest
  of that band, in dB (a live face's pulse; a generator has none to give);
- pulse_coherence: the mean correlation of the three regions' pulse signals (a real pulse
  is one signal under all the skin; noise is not);
- rigidity: the median Procrustes residual between frames of alike pose (yaw and pitch
  within 5 degrees) of 27 FaceMesh points that do not move with expression (a warped still
  bends where a skull cannot);
- flicker: over the first 4 s at the clip's own frame rate, the face patch's mean absolute
  second difference over its first (frame-by-frame generation flickers, motion is smooth);
- embedding_norm: the median norm of SFace's embedding before normalisation;
- shading_per_degree: the skin's shading pattern (log luma, blurred to the face's scale, at
  40 FaceMesh points of forehead, cheeks and nose, less each frame's median) regressed on yaw
  and pitch; the yaw slope, root mean square over the points, in per cent per degree (under a
  light fixed in the room, shading follows the head; a warped still carries its shading with
  the texture, a generator repaints it);
- shading_at_pose: the same pattern's root mean square difference between frames of alike
  pose (yaw and pitch within 2 degrees together, at least 3 frames apart), median over pairs,
  in per cent (at one pose a live face's skin holds still; generated texture may boil).

It prints each clip's values and, per signal, the area under the ROC curve of live against
generated clips (0.5: no separation; either direction counts) and how many generated clips
lie beyond every live clip in the better direction: what a threshold with no live clip
rejected would catch on this material.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import av
import numpy as np

from portrait.offline import GENERATED, Offline, VIDEO_SUFFIXES
from portrait.pipeline import Timings
from portrait.settings import Settings
from portrait.stages import embed, keyframes, quality

REGIONS = {"forehead": [10, 151, 9, 108, 337, 67, 297, 109, 338, 69, 299, 104, 333, 107, 336, 66, 296],
           "right_cheek": [50, 101, 118, 117, 123, 187, 205, 36, 142, 119, 100, 47, 126, 209],
           "left_cheek": [280, 330, 347, 346, 352, 411, 425, 266, 371, 348, 329, 277, 355, 429]}
RIGID = [33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 127, 356, 234, 454, 10, 151, 9, 8, 93, 323, 132, 361,
         58, 288, 172, 397]
SHADING = [*REGIONS["forehead"], *REGIONS["right_cheek"], *REGIONS["left_cheek"], 4, 5, 195, 197, 6, 1, 19, 94, 2,
           98, 327, 168]
PULSE_HZ = 10.0
MIN_PULSE_S = 3.2  # two POS windows; shorter clips get no pulse figures
OFFSETS = np.stack(np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)), -1).reshape(-1, 2)


def region_colour(frames: np.ndarray, points: np.ndarray, indices: list[int], spread: np.ndarray) -> np.ndarray:
    """Mean RGB [N,3] of 5x5 samples (scaled by `spread` [N]) around each region point."""
    at = points[:, indices][:, :, None, :] + OFFSETS[None, None] * spread[:, None, None, None]
    at = at.reshape(len(points), -1, 2)
    x = np.clip(np.round(at[..., 0]).astype(int), 0, frames.shape[2] - 1)
    y = np.clip(np.round(at[..., 1]).astype(int), 0, frames.shape[1] - 1)
    return frames[np.arange(len(points))[:, None], y, x][..., ::-1].astype(np.float64).mean(1)


def pos_pulse(rgb: np.ndarray, rate: float) -> np.ndarray:
    """POS: overlapping 1.6 s windows of temporally normalised RGB projected on the plane
    orthogonal to the skin tone, summed."""
    length, pulse = int(1.6 * rate), np.zeros(len(rgb))
    projection = np.array([[0, 1, -1], [-2, 1, 1]], float)
    for start in range(len(rgb) - length + 1):
        window = rgb[start : start + length]
        s = projection @ (window / window.mean(0)).T
        h = s[0] + s[0].std() / (s[1].std() + 1e-9) * s[1]
        pulse[start : start + length] += h - h.mean()
    return pulse


def pulse_snr(pulse: np.ndarray, rate: float) -> float:
    padded = 1 << int(np.ceil(np.log2(len(pulse) * 8)))
    freq = np.fft.rfftfreq(padded, 1 / rate)
    power = np.abs(np.fft.rfft((pulse - pulse.mean()) * np.hanning(len(pulse)), padded)) ** 2
    band = (freq >= 0.7) & (freq <= 3.0)
    peak = freq[band][np.argmax(power[band])]
    near = (np.abs(freq - peak) <= 0.15) | (np.abs(freq - 2 * peak) <= 0.15)
    return float(10 * np.log10(power[band & near].sum() / max(power[band & ~near].sum(), 1e-12)))


def procrustes_residual(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(0), b - b.mean(0)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    singular = np.linalg.svd(a.T @ b, compute_uv=False)
    return float(np.sqrt(max(0.0, 1 - singular.sum() ** 2)))


def flicker(data: bytes, box: np.ndarray, scale: float, seconds: float = 4.0) -> float:
    """Second over first temporal difference of the face patch, every frame of the first seconds."""
    import cv2

    x, y, w, h = box * scale
    patches = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time > seconds:
                break
            grey = frame.to_ndarray(format="gray").astype(np.float32)
            patch = grey[int(y + 0.25 * h): int(y + 0.85 * h), int(x + 0.2 * w): int(x + 0.8 * w)]
            patches.append(cv2.resize(patch, (48, 48), interpolation=cv2.INTER_AREA))
    stack = np.stack(patches)
    first = np.abs(np.diff(stack, axis=0)).mean()
    second = np.abs(stack[2:] - 2 * stack[1:-1] + stack[:-2]).mean()
    return float(second / max(first, 1e-6))


def pulse_figures(frames: np.ndarray, points: np.ndarray, faces: np.ndarray, times: np.ndarray,
                  grid: np.ndarray) -> dict[str, float]:
    """POS pulse of each skin region on a uniform time grid: mean SNR and mean coherence."""
    pulses = []
    for indices in REGIONS.values():
        colour = region_colour(frames, points, indices, faces[:, 2] / 100.0)
        pulses.append(pos_pulse(np.stack([np.interp(grid, times, colour[:, c]) for c in range(3)], 1), PULSE_HZ))
    return {"pulse_snr": float(np.mean([pulse_snr(p, PULSE_HZ) for p in pulses])),
            "pulse_coherence": float(np.mean([np.corrcoef(pulses[i], pulses[j])[0, 1]
                                              for i, j in ((0, 1), (0, 2), (1, 2))]))}


def shading(frames: np.ndarray, points: np.ndarray, faces: np.ndarray, angles: np.ndarray) -> dict[str, float]:
    """How the skin's shading pattern moves with head pose, and how much it moves at one pose."""
    import cv2

    sigma = max(1.0, float(np.median(faces[:, 2])) / 40)
    grey = np.stack([cv2.GaussianBlur(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), sigma)
                     for f in frames])
    at = points[:, SHADING]
    x = np.clip(np.round(at[..., 0]).astype(int), 0, grey.shape[2] - 1)
    y = np.clip(np.round(at[..., 1]).astype(int), 0, grey.shape[1] - 1)
    pattern = np.log(grey[np.arange(len(grey))[:, None], y, x] + 1.0)
    pattern -= np.median(pattern, axis=1, keepdims=True)
    design = np.column_stack([np.ones(len(angles)), angles - angles.mean(0)])
    slopes = np.linalg.lstsq(design, pattern, rcond=None)[0]
    apart = np.abs(angles[:, None] - angles[None]).sum(-1)
    i, j = np.nonzero(np.triu(apart < 2.0, 3))
    at_pose = float(np.sqrt(np.median(((pattern[i] - pattern[j]) ** 2).mean(1))) * 100) if len(i) else float("nan")
    return {"shading_per_degree": float(np.sqrt((slopes[1] ** 2).mean()) * 100), "shading_at_pose": at_pose}


def signals(offline: Offline, path: Path) -> dict[str, float] | None:
    pipeline = offline.pipeline
    video = offline.labelled_clip(path)
    frames = pipeline.ops.prepare(video.frames)
    track, mesh = pipeline.track_video(frames, Timings())
    if track.reason is not None:
        return None
    kept = np.flatnonzero(track.present)
    matrices, points, _ = mesh
    at = keyframes.frame_points(points, matrices)
    faces, times = track.faces[kept], video.timestamps[kept]
    grid = np.arange(times[0], times[-1], 1 / PULSE_HZ)
    found = {"pulse_snr": float("nan"), "pulse_coherence": float("nan")}
    if times[-1] - times[0] >= MIN_PULSE_S:
        found = pulse_figures(frames[kept], at, faces, times, grid)
    angles = pipeline.face_geometry(frames[kept], faces, mesh)[1]
    rigid, step = points[:, RIGID], max(1, len(points) // 40)
    pairs = [(i, j) for i in range(0, len(points), step) for j in range(i + step, len(points), step)
             if np.abs(angles[i] - angles[j]).max() <= 5]
    found["rigidity"] = float(np.median([procrustes_residual(rigid[i, :, :2], rigid[j, :, :2]) for i, j in pairs])
                              ) if pairs else float("nan")
    coded = max(video.frames.shape[1:3])
    with av.open(io.BytesIO(path.read_bytes())) as container:
        stream = container.streams.video[0]
        native = max(stream.width, stream.height)
    found["flicker"] = flicker(path.read_bytes(), np.median(faces[:, :4], 0), native / coded) \
        if video.rotation == 0 else float("nan")
    chosen = quality.spread(len(kept), 12)
    raw = pipeline.run("sface", pipeline.ops.model_input(pipeline.aligned_crops(frames[kept][chosen], faces[chosen]),
                                                         embed.INPUT))["fc1"]
    found["embedding_norm"] = float(np.median(np.linalg.norm(raw, axis=1)))
    found.update(shading(frames[kept], at, faces, angles))
    return found


def separation(live: np.ndarray, generated: np.ndarray) -> tuple[float, int]:
    """AUC (folded to >= 0.5) and generated clips beyond every live clip on the better side."""
    live, generated = live[np.isfinite(live)], generated[np.isfinite(generated)]
    auc = float(np.mean([(g > v) + 0.5 * (g == v) for g in generated for v in live]))
    beyond = int((generated > live.max()).sum()) if auc >= 0.5 else int((generated < live.min()).sum())
    return max(auc, 1 - auc), beyond


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    offline = Offline(Settings())
    rows = [r for r in csv.DictReader(args.list.open())
            if Path(r["path"]).suffix.lower() in VIDEO_SUFFIXES
            and (r["label"].strip() == "live" or r.get("attack", "").strip() in GENERATED)]
    table = []
    for row in rows:
        found = signals(offline, args.root / row["path"])
        if found is None:
            print(f"{row['path']}: no usable face")
            continue
        table.append((row, found))
        print(f"{row['path']} | {row['label']} | {row.get('family', '')} | "
              + " | ".join(f"{k} {v:.3f}" for k, v in found.items()), flush=True)
    is_live = np.array([r["label"].strip() == "live" for r, _ in table])
    print(f"\nsignal | AUC live vs generated ({int(is_live.sum())} live, {int((~is_live).sum())} generated) | "
          "generated clips beyond every live clip")
    for name in table[0][1]:
        values = np.array([f[name] for _, f in table])
        auc, beyond = separation(values[is_live], values[~is_live])
        print(f"{name} | {auc:.2f} | {beyond} of {int((~is_live).sum())}")


if __name__ == "__main__":
    main()
