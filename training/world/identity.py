"""Who a puppet is: body proportions, skin, hair, clothes (colours and textures), face features, accessories."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .skeleton import Proportions

PATTERN_KINDS = ("plain", "stripes", "checks", "dots", "gradient")
HAIR_STYLES = ("bald", "short", "bob", "long")
SLEEVES = ("none", "short", "long")
LEGWEAR = ("shorts", "trousers", "skirt")
ACCESSORIES = ("glasses", "hat", "belt", "scarf", "bag")

# Skin tones, light to dark (sRGB 0..1); identities interpolate between neighbours.
SKIN_TONES = np.array([
    [0.98, 0.87, 0.78], [0.94, 0.78, 0.66], [0.87, 0.68, 0.55], [0.76, 0.56, 0.42],
    [0.62, 0.44, 0.32], [0.47, 0.32, 0.23], [0.35, 0.24, 0.18],
])  # fmt: skip
HAIR_COLOURS = np.array([
    [0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.28, 0.14], [0.75, 0.58, 0.32],
    [0.55, 0.20, 0.08], [0.70, 0.70, 0.72], [0.30, 0.30, 0.70], [0.80, 0.30, 0.55],
])  # fmt: skip
EYE_COLOURS = np.array([[0.20, 0.12, 0.06], [0.15, 0.35, 0.55], [0.20, 0.40, 0.20], [0.08, 0.06, 0.05]])
FANTASY_SKIN_PROBABILITY = 0.08  # cartoon skins (green, blue, grey) keep the model from relying on skin colour


@dataclass(frozen=True)
class Pattern:
    """A two-colour procedural texture in body units: plain, stripes, checks, dots or a gradient."""

    kind: str = "plain"
    base: tuple = (0.5, 0.5, 0.5)
    accent: tuple = (0.2, 0.2, 0.2)
    period: float = 0.04  # units of standing height
    angle: float = 0.0  # stripe direction, radians

    def colour(self, lu: np.ndarray, lv: np.ndarray, unit: float) -> np.ndarray:
        """Planar RGB ``[3, h, w]`` at body-unit coordinates `lu`, `lv` (broadcastable), or ``[3]`` when plain.

        `unit` (px per body unit) sets the edge softness so that stripes stay anti-aliased at any size.
        """
        base = np.asarray(self.base, dtype=np.float32)
        if self.kind == "plain":
            return base
        period_px = max(self.period * unit, 1e-3)
        sharp = float(np.clip(period_px / 3.0, 0.5, 6.0))  # ~1 px transitions, fading to a sine when tiny
        w = 2.0 * np.pi / self.period
        if self.kind == "stripes":
            phase = (lu * np.cos(self.angle) + lv * np.sin(self.angle)) * w
            t = 0.5 + 0.5 * np.minimum(np.maximum(sharp * np.sin(phase), -1.0), 1.0)
        elif self.kind == "checks":
            t = 0.5 + 0.5 * np.minimum(np.maximum(sharp * np.sin(lu * w) * np.sin(lv * w) * 2.0, -1.0), 1.0)
        elif self.kind == "dots":
            fu = (lu / self.period) % 1.0 - 0.5
            fv = (lv / self.period) % 1.0 - 0.5
            dist_px = np.sqrt(fu * fu + fv * fv) * period_px
            t = np.minimum(np.maximum(0.3 * period_px - dist_px + 0.5, 0.0), 1.0)
        else:  # gradient: towards the accent colour further down the garment
            t = np.clip(0.5 + lv * (0.5 / (4.0 * self.period)), 0.0, 1.0)  # broadcasts over lu
        accent = np.asarray(self.accent, dtype=np.float32)
        return base[:, None, None] + t.astype(np.float32)[None] * (accent - base)[:, None, None]


@dataclass(frozen=True)
class Face:
    """Face features as fractions of the head radii (eye and nose positions are fixed by the skeleton)."""

    eye_size: float = 0.17  # eye half-width, fraction of head_rx
    eye_colour: tuple = (0.2, 0.12, 0.06)
    brow_thickness: float = 0.05  # fraction of head_ry
    brow_slant: float = 0.0  # radians, positive = inner ends lower (stern)
    mouth_width: float = 0.32  # half-width, fraction of head_rx
    mouth_height: float = 0.42  # mouth centre below the head centre, fraction of head_ry
    lip_colour: tuple = (0.65, 0.25, 0.25)
    nose: bool = True


@dataclass(frozen=True)
class Identity:
    """Everything that makes one puppet recognisable; `name` is the identity label written to metadata."""

    name: str
    proportions: Proportions = field(default_factory=lambda: Proportions().normalised())
    skin: tuple = (0.87, 0.68, 0.55)
    hair_style: str = "short"
    hair_colour: tuple = (0.25, 0.15, 0.08)
    hairline: float = -0.35  # where the fringe ends, fraction of head_ry from the head centre
    face: Face = field(default_factory=Face)
    shirt: Pattern = field(default_factory=Pattern)
    sleeves: str = "short"
    legwear: str = "trousers"
    trousers: Pattern = field(default_factory=lambda: Pattern(base=(0.2, 0.25, 0.4)))
    shoes: tuple = (0.15, 0.12, 0.1)
    accessories: tuple = ()
    accessory_colour: tuple = (0.8, 0.2, 0.2)


def _colour(rng: np.random.Generator, *, saturation=(0.2, 0.9), value=(0.15, 0.95)) -> tuple:
    """A random RGB colour from hue, saturation and value."""
    h = rng.uniform(0.0, 1.0)
    s = rng.uniform(*saturation)
    v = rng.uniform(*value)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    rgb = v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return tuple(float(c) for c in rgb)


def _pattern(rng: np.random.Generator) -> Pattern:
    kind = str(rng.choice(PATTERN_KINDS, p=[0.35, 0.25, 0.15, 0.1, 0.15]))
    return Pattern(kind=kind, base=_colour(rng), accent=_colour(rng), period=float(rng.uniform(0.02, 0.06)),
                   angle=float(rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)])))


def _skin(rng: np.random.Generator) -> tuple:
    if rng.uniform() < FANTASY_SKIN_PROBABILITY:
        return _colour(rng, saturation=(0.2, 0.5), value=(0.5, 0.9))
    position = rng.uniform(0.0, len(SKIN_TONES) - 1.0)
    low = int(position)
    high = min(low + 1, len(SKIN_TONES) - 1)
    tone = SKIN_TONES[low] + (position - low) * (SKIN_TONES[high] - SKIN_TONES[low])
    return tuple(float(c) for c in tone)


def sample_identity(rng: np.random.Generator, name: str) -> Identity:
    """Draw a random identity; the same generator state gives the same identity."""
    u = rng.uniform
    build = u(0.8, 1.3)  # overall thickness of limbs and torso
    proportions = Proportions(
        head_rx=u(0.052, 0.07), head_ry=u(0.066, 0.085), neck=u(0.02, 0.05), torso=u(0.25, 0.32),
        shoulder_width=u(0.085, 0.125) * (0.85 + 0.15 * build), hip_width=u(0.045, 0.075) * build,
        upper_arm=u(0.15, 0.18), forearm=u(0.13, 0.16), hand=u(0.05, 0.07),
        thigh=u(0.21, 0.26), shin=u(0.2, 0.25), foot=u(0.05, 0.075),
        arm_thickness=u(0.017, 0.025) * build, leg_thickness=u(0.026, 0.038) * build,
        torso_thickness=u(0.02, 0.035),
    ).normalised()
    face = Face(
        eye_size=u(0.14, 0.22),
        eye_colour=tuple(float(c) for c in EYE_COLOURS[rng.integers(len(EYE_COLOURS))]),
        brow_thickness=u(0.03, 0.08), brow_slant=u(-0.35, 0.35), mouth_width=u(0.22, 0.4),
        mouth_height=u(0.35, 0.5),
        lip_colour=tuple(float(c) for c in np.clip(np.array(_colour(rng, saturation=(0.3, 0.7), value=(0.4, 0.8)))
                                                     * [1.0, 0.6, 0.6], 0, 1)),
        nose=bool(u() < 0.7),
    )
    accessories = tuple(a for a in ACCESSORIES if u() < 0.18)
    return Identity(
        name=name, proportions=proportions, skin=_skin(rng),
        hair_style=str(rng.choice(HAIR_STYLES, p=[0.1, 0.4, 0.25, 0.25])),
        hair_colour=tuple(float(c) for c in HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]),
        hairline=u(-0.55, -0.2), face=face, shirt=_pattern(rng),
        sleeves=str(rng.choice(SLEEVES, p=[0.2, 0.45, 0.35])),
        legwear=str(rng.choice(LEGWEAR, p=[0.2, 0.55, 0.25])), trousers=_pattern(rng),
        shoes=_colour(rng, value=(0.05, 0.6)), accessories=accessories, accessory_colour=_colour(rng),
    )  # fmt: skip


def plainly_dressed(identity: Identity) -> Identity:
    """`identity` in one-colour long sleeves and trousers with no accessories: its arms wear the torso's colour.

    Colours, body, face and hair stay the identity's own; only textures, cuts and accessories go. A small model
    then finds a moved limb's colour on the torso beside it instead of having to tell which texture went where.
    """
    return replace(identity, shirt=Pattern(base=identity.shirt.base), sleeves="long", legwear="trousers",
                   trousers=Pattern(base=identity.trousers.base), accessories=())
