"""Degradations for robustness tests, each with a strength in 0..1 (0 leaves the frames bit-identical).

Frame-level: occluding objects, low light, low resolution, noise, JPEG artefacts, on any frames ``[F, H, W, 3]``.
Motion blur needs the scene (only what moves may smear), so the renderer applies it: `shutter_seconds` turns
its strength into an exposure for `render_clip(shutter=...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from directanimator.errors import InputError
from directanimator.tensors import as_frames, as_masks

from .raster import Canvas, capsule, capsule_box, convex, convex_box, coverage, ellipse, ellipse_box

DEGRADATIONS = ("occluders", "motion_blur", "low_light", "low_resolution", "noise", "jpeg")
MAX_NOISE_SIGMA = 0.15  # noise standard deviation at strength 1
MAX_DOWNSCALE = 8.0  # low resolution: linear downscale factor at strength 1
MIN_JPEG_QUALITY = 5  # JPEG quality at strength 1 (95 at strength 0+)


@dataclass(frozen=True)
class Degradation:
    """One degradation by name (see DEGRADATIONS) with a strength in 0..1."""

    name: str
    strength: float

    def __post_init__(self) -> None:
        if self.name not in DEGRADATIONS:
            raise InputError(f"degradation {self.name!r}: unknown; use one of {', '.join(DEGRADATIONS)}.")
        if not 0.0 <= float(self.strength) <= 1.0:
            raise InputError(f"degradation {self.name}: strength {self.strength} is outside 0..1.")


def parse_degradations(text: str) -> tuple[Degradation, ...]:
    """Parse ``"noise=0.3,jpeg=0.5"`` (a bare name means strength 0.5) into Degradations."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            strength = float(value) if value else 0.5
        except ValueError:
            raise InputError(f"degradation {item!r}: strength {value!r} is not a number; write e.g. noise=0.3.")
        out.append(Degradation(name.strip(), strength))
    return tuple(out)


def shutter_seconds(strength: float, fps: float) -> float:
    """Exposure for motion blur of `strength`: the whole frame interval at strength 1 (a 360-degree shutter)."""
    return float(strength) / float(fps)


def occluders(frames, strength: float, *, rng: np.random.Generator, person_masks=None,
              moving: bool = True) -> tuple[Tensor, Tensor]:
    """Paint up to four opaque objects (discs, boxes, bars) over the frames, aimed at the person.

    Object size grows with `strength`; with `person_masks` ``[F, H, W]`` they are centred on person pixels.
    Returns the frames and the objects' coverage ``[F, H, W]``; pixels outside it are left untouched.
    """
    frames = as_frames(frames, name="frames", check_sizes=False)
    count, height, width = frames.shape[:3]
    cover = torch.zeros(count, height, width)
    if strength <= 0:
        return frames.clone(), cover
    masks = None if person_masks is None else as_masks(person_masks, like=frames, name="person_masks")
    out = frames.numpy().copy()
    cover_np = cover.numpy()
    side = float(min(height, width))
    centres = []
    if masks is not None and bool((masks[0] > 0.5).any()):
        ys, xs = torch.nonzero(masks[0] > 0.5, as_tuple=True)
    else:
        ys = xs = None
    for _ in range(1 + int(round(3 * strength))):
        if ys is not None:
            k = int(rng.integers(len(ys)))
            cx, cy = float(xs[k]) + 0.5, float(ys[k]) + 0.5
        else:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        size = side * (0.06 + 0.22 * strength) * rng.uniform(0.6, 1.2)
        velocity = rng.normal(0.0, 0.02 * side, size=2) if moving else np.zeros(2)
        kind = rng.choice(["disc", "box", "bar"])
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        angle = rng.uniform(0, np.pi)
        centres.append((kind, cx, cy, size, velocity, colour, angle))
    for i in range(count):
        canvas = Canvas.from_image(out[i], track_masks=False)
        for kind, cx, cy, size, velocity, colour, angle in centres:
            x, y = cx + velocity[0] * i, cy + velocity[1] * i
            if kind == "disc":
                win = canvas.window(*ellipse_box(x, y, size, 0.8 * size, angle))
                dist = None if win is None else ellipse(win, x, y, size, 0.8 * size, angle)[0]
            elif kind == "box":
                c, s = math.cos(angle), math.sin(angle)
                pts = np.array([[x + dx * c - dy * s, y + dx * s + dy * c]
                                for dx, dy in ((-size, -0.7 * size), (size, -0.7 * size), (size, 0.7 * size),
                                               (-size, 0.7 * size))])  # fmt: skip
                win = canvas.window(*convex_box(pts))
                dist = None if win is None else convex(win, pts)
            else:
                dx, dy = 1.6 * size * math.cos(angle), 1.6 * size * math.sin(angle)
                r = 0.18 * size
                win = canvas.window(*capsule_box(x - dx, y - dy, x + dx, y + dy, r, r))
                dist = None if win is None else capsule(win, x - dx, y - dy, x + dx, y + dy, r, r)[0]
            if win is None:
                continue
            cov = coverage(dist)
            canvas.paint(win, cov, colour)
            held = cover_np[i, win.rows, win.cols]
            held += cov * (1.0 - held)
        out[i] = canvas.image()
    return torch.from_numpy(out), cover


def low_light(frames, strength: float) -> Tensor:
    """Darker, lower-contrast frames: each value mapped on its own by ``gain * x ** gamma``."""
    frames = as_frames(frames, name="frames", check_sizes=False)
    if strength <= 0:
        return frames.clone()
    gamma = 1.0 + 1.2 * strength
    gain = 1.0 - 0.8 * strength
    return gain * frames.pow(gamma)


def low_resolution(frames, strength: float) -> Tensor:
    """Frames shrunk by up to MAX_DOWNSCALE (area averaging) and enlarged back to their size (bilinear)."""
    frames = as_frames(frames, name="frames", check_sizes=False)
    if strength <= 0:
        return frames.clone()
    height, width = frames.shape[1:3]
    factor = 1.0 + (MAX_DOWNSCALE - 1.0) * strength
    small_size = (max(1, round(height / factor)), max(1, round(width / factor)))
    x = frames.permute(0, 3, 1, 2)
    small = F.interpolate(x, size=small_size, mode="area")
    back = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return back.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


def noise(frames, strength: float, *, rng: np.random.Generator) -> Tensor:
    """Additive Gaussian sensor noise, sigma up to MAX_NOISE_SIGMA, clipped to 0..1."""
    frames = as_frames(frames, name="frames", check_sizes=False)
    if strength <= 0:
        return frames.clone()
    sigma = MAX_NOISE_SIGMA * strength
    grain = torch.from_numpy(rng.standard_normal(size=tuple(frames.shape)).astype(np.float32))
    return (frames + sigma * grain).clamp(0.0, 1.0)


def jpeg(frames, strength: float) -> Tensor:
    """Each frame through JPEG at a quality falling from 95 to MIN_JPEG_QUALITY as strength grows."""
    frames = as_frames(frames, name="frames", check_sizes=False)
    if strength <= 0:
        return frames.clone()
    quality = int(round(95 - (95 - MIN_JPEG_QUALITY) * strength))
    out = torch.empty_like(frames)
    for i, frame in enumerate((frames * 255.0).round().to(torch.uint8).numpy()):
        ok, data = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise InputError(f"jpeg: OpenCV could not encode frame {i} ({frame.shape}).")
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy()
        out[i] = torch.from_numpy(decoded).float() / 255.0
    return out


def degrade(frames, degradation: Degradation, *, rng: np.random.Generator, person_masks=None) -> Tensor:
    """Apply one frame-level degradation; motion blur is refused (render with `shutter_seconds` instead)."""
    name, strength = degradation.name, float(degradation.strength)
    if name == "occluders":
        return occluders(frames, strength, rng=rng, person_masks=person_masks)[0]
    if name == "low_light":
        return low_light(frames, strength)
    if name == "low_resolution":
        return low_resolution(frames, strength)
    if name == "noise":
        return noise(frames, strength, rng=rng)
    if name == "jpeg":
        return jpeg(frames, strength)
    raise InputError(
        f"degradation {name!r} cannot be applied to finished frames: motion blur is rendered. Pass it to the "
        "world (WorldConfig.degradations) or call render_clip(shutter=shutter_seconds(strength, fps))."
    )
