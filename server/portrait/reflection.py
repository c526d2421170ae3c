"""A simulation of a phone screen's light reflected by the face, for material: no recording
of a real face under a flashing screen exists here, so the light check is calibrated on the
live dev clips with this reflection added, and a real-phone pilot must confirm it (README).

The physics, in the order light takes it:

1. The screen, filled with a palette colour around the face oval, is a Lambertian source of
   luminance `luminance_nits` and area `area_m2` at distance d from the face: its irradiance is
   about luminance x area / d^2 (36 lux for 400 nits, 80 cm^2 lit, 30 cm). Indoors the face
   gets 100-500 lux from the room, so the screen adds a tenth to a third of the light; in
   sunlight (10,000+ lux) almost nothing. `strength` is that ratio for a white screen at the
   reference distance: each channel gains strength x the screen colour's linear value there.
2. Distance: d is read from the face's width in the frame (a face `reference_width` of the
   frame wide is at the reference distance) and the light falls off as 1/d^2.
3. Reflection: the skin reflects albedo x irradiance. The frame already is albedo x ambient
   light, so the lit frame is frame x (1 + strength x weight x colour) per channel in linear
   light: the skin's own colour needs no model. `weight` is 1 on the face (a soft ellipse
   around the detected box) and `background_ratio` elsewhere: the room behind is several times
   farther from the screen than the face.
4. The camera sees the change `latency_s` after the screen shows it.
5. Automatic exposure and white balance: the camera keeps the frame's mean level and grey
   balance, with gains that follow their targets as first-order lags (`exposure_tau_s`,
   `white_balance_tau_s`), so a colour's reflection fades back toward neutral while it is
   shown.
6. Sensor noise (`noise_levels`, in 8-bit levels after gamma) and compression (a JPEG at
   `jpeg_quality` per frame; in the browser test MediaRecorder's own VP8 does it).

Frames are processed one at a time (the camera's gains are a recursion over time), each as
whole arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from portrait.stages.light import LINEAR, NAMES, PALETTE_LINEAR


@dataclass(frozen=True)
class Conditions:
    """One simulated capture: room light, the phone's screen and camera."""

    strength: float = 0.2  # white screen's irradiance over the room's, on the face at the reference distance
    reference_width: float = 0.45  # face width over frame width at the reference distance (about 30 cm)
    background_ratio: float = 0.06  # screen light on the room behind, relative to the face: (0.3 m / 1.2 m)^2
    latency_s: float = 0.15
    exposure_tau_s: float = 0.4
    white_balance_tau_s: float = 0.8
    noise_levels: float = 1.5
    jpeg_quality: int = 80
    seed: int = 0

    @classmethod
    def draw(cls, rng: np.random.Generator, strength: tuple[float, float] = (0.08, 0.4)) -> Conditions:
        """Conditions spread over what indoor captures meet: strength log-uniform in its range
        (room light about 90 to 450 lux against a 36 lux screen), camera lags 0.2-1.2 s,
        latency 0.05-0.5 s, JPEG quality 60-90."""
        return cls(strength=float(np.exp(rng.uniform(*np.log(strength)))),
                   latency_s=float(rng.uniform(0.05, 0.5)),
                   exposure_tau_s=float(rng.uniform(0.2, 0.8)), white_balance_tau_s=float(rng.uniform(0.4, 1.2)),
                   noise_levels=float(rng.uniform(0.5, 2.5)), jpeg_quality=int(rng.integers(60, 91)),
                   seed=int(rng.integers(0, 2 ** 31)))


def screen_colour(at_s: float, shown_s: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Linear RGB the screen shows at `at_s` (black before the first colour)."""
    k = int(np.searchsorted(shown_s, at_s, "right")) - 1
    return PALETTE_LINEAR[int(colours[k])] if k >= 0 else np.zeros(3)


GRID = 8  # the weight map is smooth: computed on a grid this many times coarser, then resized
_TO_SRGB = (np.where(np.linspace(0, 1, 4096) <= 0.0031308, np.linspace(0, 1, 4096) * 12.92,
                     1.055 * np.power(np.linspace(0, 1, 4096), 1 / 2.4) - 0.055) * 255).astype(np.float32)


def face_weight(shape: tuple[int, int], box: np.ndarray | None, background: float) -> np.ndarray:
    """[H,W] share of the face's screen light each pixel gets: a soft ellipse over the face
    box (1 inside, falling smoothly over a fifth of its size) and `background` elsewhere."""
    height, width = shape
    if box is None:
        return np.full((height, width), background, np.float32)
    x, y, w, h = (float(v) for v in box[:4])
    ys, xs = np.ogrid[: -(-height // GRID), : -(-width // GRID)]
    r = np.sqrt(((xs * GRID - (x + w / 2)) / (0.6 * w)) ** 2 + ((ys * GRID - (y + h / 2)) / (0.7 * h)) ** 2)
    inside = np.clip((1.2 - r) / 0.2, 0, 1).astype(np.float32)
    coarse = background + (1 - background) * inside
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


@dataclass
class Camera:
    """The simulation's state across frames: the camera's gains and the noise source."""

    conditions: Conditions
    exposure: float = 1.0
    balance: np.ndarray = field(default_factory=lambda: np.ones(3))
    last_s: float | None = None
    rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.conditions.seed)

    def capture(self, frame: np.ndarray, at_s: float, colour: np.ndarray, box: np.ndarray | None) -> np.ndarray:
        """One BGR uint8 frame as the camera would record it under `colour` (linear RGB, what
        the screen showed `latency_s` before)."""
        c = self.conditions
        linear = LINEAR[frame]  # BGR linear light
        falloff = 1.0 if box is None else float(np.clip((box[2] / frame.shape[1] / c.reference_width) ** 2, 0.05, 2.0))
        weight = face_weight(frame.shape[:2], box, c.background_ratio)
        gain = (c.strength * falloff) * np.asarray(colour, np.float32)[::-1]  # per channel, BGR
        lit = linear + linear * (weight[..., None] * gain[None, None, :])
        # The gains the camera aims for keep the unlit frame's level and grey balance (RGB order).
        before = np.array(cv2.mean(linear)[:3][::-1])
        after = np.array(cv2.mean(lit)[:3][::-1])
        exposure_target = float(before.mean() / max(after.mean(), 1e-6))
        balance_target = (before / np.maximum(after, 1e-6)) / exposure_target
        dt = 1 / 30 if self.last_s is None else max(at_s - self.last_s, 0.0)
        self.exposure += (exposure_target - self.exposure) * (1 - np.exp(-dt / c.exposure_tau_s))
        self.balance += (balance_target - self.balance) * (1 - np.exp(-dt / c.white_balance_tau_s))
        self.last_s = at_s
        out = lit * (self.exposure * self.balance)[None, None, ::-1].astype(np.float32) * 4095
        codes = np.clip(out, 0, 4095).astype(np.uint16)
        srgb = _TO_SRGB[codes]  # linear -> sRGB levels through a 4096-entry table
        noise = np.empty_like(srgb)
        cv2.setRNGSeed(int(self.rng.integers(0, 2 ** 31)))
        cv2.randn(noise, 0.0, float(c.noise_levels))
        srgb += noise
        bgr = np.clip(srgb + 0.5, 0, 255).astype(np.uint8)
        if c.jpeg_quality >= 100:
            return bgr
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, c.jpeg_quality])
        return cv2.imdecode(jpeg, cv2.IMREAD_COLOR)


def light_clip(frames: np.ndarray, times: np.ndarray, boxes: np.ndarray | None, shown_s: np.ndarray,
               colours: np.ndarray, conditions: Conditions) -> np.ndarray:
    """A clip's frames [N,H,W,3] at `times` [N] lit by a sequence revealed at `shown_s` [K]
    (media seconds) with `colours` [K]; boxes [N,4+] the face per frame (None: no face)."""
    camera = Camera(conditions)
    out = np.empty_like(frames)
    for i, (frame, at) in enumerate(zip(frames, times)):
        colour = screen_colour(float(at) - conditions.latency_s, shown_s, colours)
        out[i] = camera.capture(frame, float(at), colour, None if boxes is None else boxes[i])
    return out


class LitCamera:
    """A live session's "camera" for tests and benchmarks: a clip played forward then back
    for as long as the session records, after holding its first frame `hold_s` (a person
    settling in), each frame lit by the colour the screen showed `latency_s` before (None
    `conditions`: unlit). A frame source for `portrait.streamer`."""

    def __init__(self, frames: np.ndarray, times: np.ndarray, boxes: list[np.ndarray | None],
                 conditions: Conditions | None, hold_s: float = 0.0) -> None:
        self.frames, self.times, self.boxes, self.hold_s = frames, times, boxes, hold_s
        self.conditions = conditions
        self.camera = Camera(conditions) if conditions is not None else None

    def index(self, t: float) -> int:
        length = max(float(self.times[-1]), 1e-3)
        folded = t % (2 * length)
        folded = 2 * length - folded if folded > length else folded
        return int(min(np.searchsorted(self.times, folded), len(self.times) - 1))

    def __call__(self, t: float, revealed) -> np.ndarray:
        i = self.index(max(0.0, t - self.hold_s))
        if self.camera is None:
            return self.frames[i]
        name = revealed.colour_at(t - self.conditions.latency_s)
        colour = np.zeros(3) if name is None else PALETTE_LINEAR[NAMES.index(name)]
        return self.camera.capture(self.frames[i], t, colour, self.boxes[i])
