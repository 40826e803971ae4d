"""Backgrounds: flat, gradient, plasma texture, stripes, tiles or a room with a floor; static or panning.

Patterns are analytic functions of position in units of the canvas height, so a scene looks the same at any
size, and a panning background is the same function shifted by ``velocity * t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from directanimator.errors import InputError

BACKGROUND_KINDS = ("flat", "gradient", "plasma", "stripes", "tiles", "room")
PLASMA_WAVES = 6


@dataclass(frozen=True)
class Background:
    """A backdrop; `velocity` (canvas heights per second) pans it, so the camera seems to move."""

    kind: str = "flat"
    colours: tuple = ((0.6, 0.6, 0.6), (0.4, 0.4, 0.45), (0.3, 0.3, 0.3))
    scale: float = 0.15  # feature size, canvas heights
    angle: float = 0.0
    horizon: float = 0.8  # room: floor below this fraction of the height
    velocity: tuple = (0.0, 0.0)
    waves: tuple = ()  # plasma: ((fx, fy, phase), ...) in cycles per canvas height

    @property
    def moving(self) -> bool:
        return self.velocity[0] != 0.0 or self.velocity[1] != 0.0


KIND_PROBABILITIES = (0.15, 0.15, 0.25, 0.15, 0.15, 0.15)  # of BACKGROUND_KINDS


def sample_background(rng: np.random.Generator, *, moving_probability: float = 0.3,
                      kinds: tuple[str, ...] = BACKGROUND_KINDS) -> Background:
    """Draw a random backdrop of one of `kinds` (their default odds, renormalised); muted colours, occasionally
    panning. The draws are the same whatever `kinds` is, so only the kind changes between settings."""
    unknown = sorted(set(kinds) - set(BACKGROUND_KINDS))
    if not kinds or unknown:
        raise InputError(f"background kinds {list(kinds)}: choose one or more of {', '.join(BACKGROUND_KINDS)}.")
    grey = rng.uniform(0.15, 0.85)
    base = grey + rng.uniform(0.0, 0.6) * (rng.uniform(0.0, 1.0, size=3) - 0.5)  # mostly muted colours
    colours = tuple(tuple(float(c) for c in np.clip(base + rng.normal(0.0, 0.15, size=3), 0.0, 1.0))
                    for _ in range(3))
    odds = np.array([p if k in kinds else 0.0 for k, p in zip(BACKGROUND_KINDS, KIND_PROBABILITIES)])
    kind = str(rng.choice(BACKGROUND_KINDS, p=odds / odds.sum()))
    velocity = (0.0, 0.0)
    if rng.uniform() < moving_probability:
        speed = rng.uniform(0.05, 0.3)
        heading = rng.uniform(0.0, 2.0 * np.pi)
        velocity = (float(speed * np.cos(heading)), float(0.3 * speed * np.sin(heading)))
    waves = tuple(
        (float(f * np.cos(a)), float(f * np.sin(a)), float(p))
        for f, a, p in zip(rng.uniform(0.8, 6.0, PLASMA_WAVES), rng.uniform(0, np.pi, PLASMA_WAVES),
                           rng.uniform(0, 2 * np.pi, PLASMA_WAVES))
    )  # fmt: skip
    return Background(kind=kind, colours=colours, scale=float(rng.uniform(0.05, 0.25)),
                      angle=float(rng.uniform(0, np.pi)), horizon=float(rng.uniform(0.65, 0.9)),
                      velocity=velocity, waves=waves)  # fmt: skip


def _mix(a, b, t: np.ndarray) -> np.ndarray:
    """Planar ``[3, h, w]`` blend of colours (``[3]`` or planar) by weights `t` ``[h, w]``."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    a = a[:, None, None] if a.ndim == 1 else a
    b = b[:, None, None] if b.ndim == 1 else b
    return a + t.astype(np.float32)[None] * (b - a)


def _plasma(waves: tuple, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sum of random plane waves, 0..1."""
    if not waves:
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    total = sum(np.sin(2 * np.pi * (fx * x + fy * y) + p) for fx, fy, p in waves)
    return 0.5 + 0.5 * total / np.sqrt(len(waves) * 2.0)


def _pattern(bg: Background, x: np.ndarray, y: np.ndarray, px_per_unit: float) -> np.ndarray:
    """The backdrop at positions (canvas heights), planar RGB float32 ``[3, h, w]``."""
    c0, c1, c2 = bg.colours
    shape = np.broadcast_shapes(x.shape, y.shape)
    if bg.kind == "flat":
        return np.broadcast_to(np.asarray(c0, np.float32)[:, None, None], (3,) + shape)
    if bg.kind == "gradient":
        t = np.clip(0.5 + (x * np.cos(bg.angle) + y * np.sin(bg.angle)) * 0.6, 0.0, 1.0)
        return _mix(c0, c1, np.broadcast_to(t, shape))
    if bg.kind == "plasma":
        return _mix(c0, c1, np.broadcast_to(np.clip(_plasma(bg.waves, x, y), 0.0, 1.0), shape))
    sharp = max(bg.scale * px_per_unit / 3.0, 0.5)  # about one pixel of anti-aliasing at stripe edges
    if bg.kind == "stripes":
        phase = (x * np.cos(bg.angle) + y * np.sin(bg.angle)) * (2 * np.pi / bg.scale)
        return _mix(c0, c1, np.broadcast_to(0.5 + 0.5 * np.clip(sharp * np.sin(phase), -1, 1), shape))
    if bg.kind == "tiles":
        w = np.pi / bg.scale
        check = 0.5 + 0.5 * np.clip(sharp * np.sin(x * w) * np.sin(y * w) * 2.0, -1, 1)
        return _mix(c0, c1, np.broadcast_to(check, shape))
    if bg.kind == "room":
        wall = _mix(c0, c1, np.broadcast_to(0.3 * np.clip(_plasma(bg.waves, x, y), 0, 1), shape))
        floor = np.clip((y - bg.horizon) * px_per_unit + 0.5, 0.0, 1.0)  # one-pixel edge at the horizon
        shade = np.clip(0.85 + 0.5 * (y - bg.horizon), 0.0, 1.0)
        ground = np.asarray(c2, np.float32)[:, None, None] * np.broadcast_to(shade, shape)[None]
        return _mix(wall, ground, np.broadcast_to(floor, shape))
    raise InputError(f"background.kind={bg.kind!r}: expected one of {', '.join(BACKGROUND_KINDS)}.")


def background_planes(bg: Background, times, *, height: int, width: int) -> np.ndarray:
    """The backdrop at each time (seconds) as planar float32 ``[F, 3, H, W]`` (the renderer's layout)."""
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    x = ((np.arange(width, dtype=np.float64) + 0.5) / height)[None]
    y = ((np.arange(height, dtype=np.float64) + 0.5) / height)[:, None]
    out = np.empty((len(t), 3, height, width), np.float32)
    if not bg.moving:
        out[:] = _pattern(bg, x, y, float(height))  # static backdrops are computed once
        return out
    for i, ti in enumerate(t):
        out[i] = _pattern(bg, x + bg.velocity[0] * ti, y + bg.velocity[1] * ti, float(height))
    return out


def render_background(bg: Background, times, *, height: int, width: int) -> np.ndarray:
    """The backdrop at each time (seconds): float32 ``[F, H, W, 3]``, exactly what a clip shows behind its person."""
    return np.ascontiguousarray(background_planes(bg, times, height=height, width=width).transpose(0, 2, 3, 1))
