"""Screen light: the colour sequence a live session flashes, and whether the face's skin
answered it.

A phone held at arm's length lights the face with its screen. When the screen turns red the
skin reflects more red, whatever the skin's own colour: the reflected light is albedo x
irradiance, so the *relative* change of each channel is the screen's irradiance over the
ambient one, and the skin's albedo cancels. The check reads that relative change on the
skin FaceMesh finds (lower forehead and both cheeks), as log-chromaticity (log R/G, log B/G
of the linear colour): exposure and brightness changes, which scale all three channels
alike, cancel too. What is left is compared with the sequence the session revealed:

- per colour, the mean chromaticity of the frames while it was shown, from the moment it was
  revealed plus the camera's latency (searched over `LAGS_S`, one latency per session);
- the change from each colour to the next, against the change the palette predicts: the
  differences remove the face's own colour, slow drifts (automatic white balance adapting
  back, ambient light) and any constant offset;
- the score is the cosine between observed and predicted changes: 1 when the skin followed
  every step, about 0 for a recording that knew nothing of the sequence.

A recording made before the session, or a still, cannot carry the reflections of colours
nobody had drawn. Functions are pure and vectorised over many sequences, so the same code
judges one session and measures the chance that a recording lit for another sequence passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

# The palette: saturated primaries and secondaries, which every phone screen shows at full
# brightness and whose chromaticity directions are 60 degrees apart. White and black are
# left out: they change brightness, not chromaticity. sRGB, 0..255.
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (255, 0, 0)), ("yellow", (255, 255, 0)), ("green", (0, 255, 0)),
    ("cyan", (0, 255, 255)), ("blue", (0, 0, 255)), ("magenta", (255, 0, 255)),
)
NAMES = tuple(name for name, _ in PALETTE)
# Each colour stays on screen for one of these durations (seconds, drawn uniformly): at least
# 12 frames of a 30 fps camera and 3 of the 8 frames per second the service samples on the
# longest recording, so each colour is seen settled after the screen and the camera's
# exposure have caught up; short enough that automatic white balance, which takes about a
# second to adapt, has not cancelled it, and that a session holds 10 to 20 changes (0.5 to
# 1.0 s per colour left too few: a recording lit for another sequence passed 5 times as
# often at the same genuine pass rate).
DURATIONS_S = (0.4, 0.5, 0.6, 0.7)
FIRST_S = 0.5  # the first colour is due this long after recording starts (the camera has settled)
# From a colour's reveal (the media time the server had received) to its first frame on
# camera: the network, the page's repaint, the camera's pipeline. One latency per session,
# searched over this grid.
LAGS_S = tuple(round(0.1 * i, 1) for i in range(0, 9))  # 0 to 0.8 s
RISE_S = 0.1  # frames this soon after a change may be half-exposed: left out of each colour's mean
MIN_STEPS = 6  # colour changes seen on the face for the check to judge at all


def _srgb_to_linear(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, np.float64) / 255.0
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


LINEAR = _srgb_to_linear(np.arange(256)).astype(np.float32)  # uint8 sRGB -> linear light
PALETTE_LINEAR = _srgb_to_linear(np.array([rgb for _, rgb in PALETTE]))  # [C,3] RGB


def predicted_chroma(colours: np.ndarray) -> np.ndarray:
    """The direction in which each screen colour moves the skin's log-chromaticity (log R/G,
    log B/G), to first order in the screen's share of the light: (r - g, b - g) of the
    screen's linear colour. Index -1 stands for no colour (the screen before the sequence)."""
    table = np.concatenate([PALETTE_LINEAR[:, [0]] - PALETTE_LINEAR[:, [1]],
                            PALETTE_LINEAR[:, [2]] - PALETTE_LINEAR[:, [1]]], 1)
    table = np.vstack([table, np.zeros((1, 2))])  # row -1: no screen colour
    return table[np.asarray(colours)]


# ---- the sequence -------------------------------------------------------------------------

@dataclass(frozen=True)
class Sequence:
    """Colours (indices into PALETTE) and the second, after the start of recording, at which
    each is due. A session reveals colour k when the media it has received reach due_s[k]."""

    colours: tuple[int, ...]
    due_s: tuple[float, ...]


@dataclass(frozen=True)
class Shown:
    """What a session showed: the media second each colour was revealed, and the colours."""

    shown_s: tuple[float, ...]
    colours: tuple[int, ...]

    def claims(self) -> dict:
        return {"colours": [NAMES[c] for c in self.colours], "shown_s": [round(s, 3) for s in self.shown_s]}


def colours_needed(record_s: float) -> int:
    """How many colours cover a recording of `record_s` seconds at the shortest duration."""
    return max(1, math.ceil((record_s - FIRST_S) / DURATIONS_S[0]) + 1)


def draw(rng: np.random.Generator, count: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` sequences of `length` colours: ([count, length] palette indices, never the
    same colour twice in a row; [count, length] due seconds)."""
    size = len(PALETTE)
    first = rng.integers(0, size, (count, 1))
    steps = rng.integers(1, size, (count, length - 1))  # a change to any other colour
    colours = np.cumsum(np.concatenate([first, steps], 1), 1) % size
    durations = np.asarray(DURATIONS_S)[rng.integers(0, len(DURATIONS_S), (count, length - 1))]
    due = np.round(FIRST_S + np.concatenate([np.zeros((count, 1)), np.cumsum(durations, 1)], 1), 3)
    return colours, due


def random_sequence(record_s: float, rng: np.random.Generator) -> Sequence:
    colours, due = draw(rng, 1, colours_needed(record_s))
    return Sequence(tuple(int(c) for c in colours[0]), tuple(float(d) for d in due[0]))


# ---- the skin's colour --------------------------------------------------------------------

# FaceMesh indices of skin the screen lights squarely: the lower forehead (between and above
# the brows, below most fringes) and the cheekbones of either side.
REGIONS: dict[str, tuple[int, ...]] = {
    "forehead": (9, 107, 336, 151, 108, 337, 8),
    "cheek_right": (50, 101, 118, 117, 123, 205, 36, 100),
    "cheek_left": (280, 330, 347, 346, 352, 425, 266, 329),
}
_OFFSETS = np.array([(0, 0), (-2, 0), (2, 0), (0, -2), (0, 2)], np.float64)  # a small cross around each point


@lru_cache(maxsize=1)
def _sample_weights() -> np.ndarray:
    """[P,468] weights turning mesh points into sample points: each region's landmarks and
    the midpoints of every two of them (points spread over the region's hull)."""
    rows = []
    for indices in REGIONS.values():
        for i in indices:
            row = np.zeros(468)
            row[i] = 1
            rows.append(row)
        for i, j in combinations(indices, 2):
            row = np.zeros(468)
            row[[i, j]] = 0.5
            rows.append(row)
    return np.array(rows)


def sample_points(mesh_xy: np.ndarray) -> np.ndarray:
    """Mesh points in frame pixels [M,468,2] -> skin sample points [M,P,2]."""
    return np.einsum("pk,mkc->mpc", _sample_weights(), mesh_xy)


def skin_colour(frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mean linear RGB of the skin at the sample points: frames [M,H,W,3] uint8 BGR,
    points [M,P,2] -> [M,3]. A gather, no loop over pixels; a mean of linear light, since
    reflected light adds linearly."""
    count, height, width = frames.shape[:3]
    xy = (points[:, :, None, :] + _OFFSETS[None, None]).reshape(count, -1, 2)
    x = np.clip(np.rint(xy[..., 0]), 0, width - 1).astype(np.intp)
    y = np.clip(np.rint(xy[..., 1]), 0, height - 1).astype(np.intp)
    values = frames[np.arange(count)[:, None], y, x]  # [M,Q,3] BGR
    return LINEAR[values].mean(1)[:, ::-1]


def chroma(rgb: np.ndarray) -> np.ndarray:
    """Linear RGB [M,3] -> log-chromaticity [M,2]: log R/G, log B/G."""
    safe = np.maximum(rgb, 1e-4)
    return np.stack([np.log(safe[:, 0] / safe[:, 1]), np.log(safe[:, 2] / safe[:, 1])], 1)


# ---- the response -------------------------------------------------------------------------

def changes(observed: np.ndarray, times: np.ndarray, shown_s: np.ndarray, colours: np.ndarray,
            lags_s: tuple[float, ...] = LAGS_S) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The colour changes seen and predicted, for S revealed sequences and each latency.

    observed [M,2] log-chromaticity per frame at `times` [M] seconds after the start of
    recording; shown_s [S,K] the media second at which each colour was revealed (NaN where a
    sequence is shorter), colours [S,K]. Per colour, the mean of the frames shown it (from its
    reveal plus the latency, less `RISE_S`, to the next); returns the change of that mean from
    each colour to the next, observed and predicted ([S,L,K,2], zero where either colour had
    no frame), and whether each change was seen ([S,L,K])."""
    shown_s, colours = np.atleast_2d(shown_s).astype(np.float64), np.atleast_2d(colours)
    count, length = shown_s.shape
    lags = np.asarray(lags_s)
    starts = np.where(np.isnan(shown_s), np.inf, shown_s)[:, None, :] + lags[None, :, None]  # [S,L,K]
    # The colour on camera at each frame (segment k+1 is colour k; segment 0 is before the
    # first), by one searchsorted over every (sequence, latency), each row shifted past the last.
    span = float(max(np.max(np.where(np.isinf(starts), 0.0, starts)), times.max(initial=0.0))) + 1.0
    rows = np.arange(count * len(lags)).reshape(count, len(lags), 1)
    shifted = np.minimum(starts, span - 0.5) + rows * span
    segment = np.searchsorted(shifted.ravel(), (times[None, None, :] + rows * span).ravel(), "right").reshape(
        count, len(lags), -1) - rows * length
    began = np.concatenate([np.full((count, len(lags), 1), -np.inf), starts], 2)
    settled = times[None, None, :] - np.take_along_axis(began, segment, 2) >= RISE_S
    segments = length + 1
    key = (rows * segments + segment)[settled]
    frame = np.broadcast_to(np.arange(len(times)), segment.shape)[settled]
    total = count * len(lags) * segments
    counts = np.bincount(key, minlength=total).reshape(count, len(lags), segments)
    sums = np.stack([np.bincount(key, weights=observed[frame, c], minlength=total) for c in range(2)], -1)
    means = sums.reshape(count, len(lags), segments, 2) / np.maximum(counts, 1)[..., None]
    seen = counts > 0
    palette = np.concatenate([np.full((count, 1), -1), np.where(np.isnan(shown_s), -1, colours)], 1)
    predicted = predicted_chroma(palette)[:, None]  # [S,1,K+1,2]
    step_ok = seen[..., 1:] & seen[..., :-1]
    d_obs = np.where(step_ok[..., None], np.diff(means, axis=2), 0.0)
    d_pred = np.where(step_ok[..., None], np.diff(predicted, axis=2), 0.0)
    return d_obs, d_pred, step_ok


def agreement(d_obs: np.ndarray, d_pred: np.ndarray, step_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (sequence, latency): the score and the light's strength on the skin.

    The strength is the median over changes of each observed change projected on its
    predicted one (robust to a few changes a head turn or a blink disturbs). Each change then
    scores the cosine of its direction against the predicted one times how well its size
    agrees with strength x predicted size (min(r, 1/r) of their ratio r), and the score is
    the mean over changes: near 1 when every change went the way and the distance the screen
    said, near 0 for natural colour drift or the changes of another sequence, whose sizes and
    directions disagree. Each change weighs the same, so one large natural change (a cheek
    shaded by a head turn) cannot carry the score."""
    predicted_sq = (d_pred ** 2).sum(-1)
    projection = (d_obs * d_pred).sum(-1) / np.maximum(predicted_sq, 1e-12)
    with np.errstate(all="ignore"):
        strength = np.nan_to_num(np.nanmedian(np.where(step_ok, projection, np.nan), axis=-1))
    cosine = (d_obs * d_pred).sum(-1) / np.maximum(np.linalg.norm(d_obs, axis=-1) * np.sqrt(predicted_sq), 1e-12)
    ratio = projection / np.maximum(np.abs(strength)[..., None], 1e-12)
    size = np.where(ratio > 0, np.minimum(ratio, 1 / np.maximum(ratio, 1e-12)), 0.0)
    per_step = np.where(step_ok, np.clip(cosine, 0, 1) * size, 0.0)
    score = np.where(strength > 0, per_step.sum(-1) / np.maximum(step_ok.sum(-1), 1), 0.0)
    return score, strength


def scores(observed: np.ndarray, times: np.ndarray, shown_s: np.ndarray, colours: np.ndarray,
           lags_s: tuple[float, ...] = LAGS_S) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """How well one clip's skin followed each of S revealed sequences (see `changes`): per
    sequence the best score over latencies (NaN when fewer than MIN_STEPS changes were seen),
    that latency, the estimated strength there and the number of changes seen."""
    d_obs, d_pred, step_ok = changes(observed, times, shown_s, colours, lags_s)
    score, strength = agreement(d_obs, d_pred, step_ok)
    steps = step_ok.sum(-1)
    score = np.where(steps >= MIN_STEPS, score, np.nan)
    best = np.argmax(np.where(np.isnan(score), -np.inf, score), 1)
    pick = np.arange(len(score))
    return score[pick, best], np.asarray(lags_s)[best], strength[pick, best], steps[pick, best]


@dataclass(frozen=True)
class Response:
    """The light check's reading of one session, for the answer and its receipt."""

    score: float | None  # None: too few colour changes seen on the face
    latency_s: float | None
    strength: float | None  # the screen's share of the light on the skin, as the changes say
    steps: int  # colour changes seen

    def claims(self) -> dict:
        return {"score": None if self.score is None else round(self.score, 4), "latency_s": self.latency_s,
                "strength": None if self.strength is None else round(self.strength, 4), "steps": self.steps}


def respond(observed: np.ndarray, times: np.ndarray, shown: Shown) -> Response:
    """One session's reading: its frames' chromaticity against the colours it revealed."""
    if len(times) == 0 or not shown.shown_s:
        return Response(None, None, None, 0)
    score, lag, strength, steps = scores(observed, times, np.array([shown.shown_s]), np.array([shown.colours]))
    if np.isnan(score[0]):
        return Response(None, None, None, int(steps[0]))
    return Response(float(score[0]), float(lag[0]), float(strength[0]), int(steps[0]))


def observe(frames: np.ndarray, mesh_xy: np.ndarray) -> np.ndarray:
    """The skin's log-chromaticity [M,2] in frames [M,H,W,3] (BGR) with mesh points [M,468,2]."""
    return chroma(skin_colour(frames, sample_points(mesh_xy)))
