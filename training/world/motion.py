"""Performances in continuous time: dance-like joint oscillators, travel and zoom, expressions, body turns.

A `Motion` holds only parameters; `Motion.sample(times)` evaluates them, so the same motion sampled at the same
times gives bit-identical poses whoever performs it (the basis of cross-identity ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from directanimator.errors import InputError

from .skeleton import DOF_INDEX, DOF_LIMITS, DOF_NAMES, PoseSequence

HARMONICS = np.array([0.5, 1.0, 2.0])  # oscillator frequencies as multiples of the tempo
ARM_STYLES = ("swing", "wave", "cross")
BLINK_WIDTH_S = 0.07  # Gaussian half-width of a blink
_LOW = np.array([DOF_LIMITS[n][0] for n in DOF_NAMES])
_HIGH = np.array([DOF_LIMITS[n][1] for n in DOF_NAMES])


LINEAR_PART = 0.8  # soft limits pass the inner 80 % of each range unchanged and saturate in the rest


def _soft_limit(raw: np.ndarray) -> np.ndarray:
    """Squash unbounded angles into each degree of freedom's limits: identity inside, tanh near the ends (C1)."""
    mid = 0.5 * (_LOW + _HIGH)
    half = 0.5 * (_HIGH - _LOW)
    z = (raw - mid) / half
    size = np.abs(z)
    rest = 1.0 - LINEAR_PART
    squashed = np.minimum(size, LINEAR_PART) + rest * np.tanh(np.maximum(size - LINEAR_PART, 0.0) / rest)
    return mid + half * np.sign(z) * squashed


def _inverse_soft_limit(angles: np.ndarray) -> np.ndarray:
    """Raw oscillator centres whose soft-limited value is `angles` (clipped just inside the limits)."""
    mid = 0.5 * (_LOW + _HIGH)
    half = 0.5 * (_HIGH - _LOW)
    g = np.clip((angles - mid) / half, -0.999, 0.999)
    size = np.abs(g)
    rest = 1.0 - LINEAR_PART
    z = np.where(size <= LINEAR_PART, size,
                 LINEAR_PART + rest * np.arctanh(np.clip((size - LINEAR_PART) / rest, 0.0, 0.999)))
    return mid + half * np.sign(g) * z


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass
class Motion:
    """Parameters of one performance; see `sample_motion` for their ranges."""

    tempo: float  # beats per second
    base: np.ndarray  # [D] joint-angle centres
    amplitude: np.ndarray  # [D, K] oscillator amplitudes (K = len(HARMONICS))
    phase: np.ndarray  # [D, K]
    travel: np.ndarray  # [4]: sway amplitude, sway frequency (Hz), sway phase, drift (per second), in placement heights
    bounce: float  # hop height per beat, placement heights
    zoom: np.ndarray  # [4]: amplitude (log scale), frequency (Hz), phase, trend (log scale per second)
    yaw_keys: np.ndarray  # [K, 2] (time s, body yaw rad), eased between keys
    head_turn: np.ndarray  # [2, 3] two oscillators: amplitude (rad), frequency (Hz), phase
    speech: np.ndarray  # [5]: rest opening, envelope frequency, envelope phase, syllable frequency, syllable phase
    blinks: np.ndarray  # [2]: period (s), offset (s)
    brow: np.ndarray  # [3]: amplitude, frequency (Hz), phase

    def sample(self, times) -> PoseSequence:
        """Poses at `times` (seconds, any shape flattened to ``[F]``); root and scale are relative to t = 0."""
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        if t.size == 0 or not np.isfinite(t).all():
            raise InputError(f"times: expected finite sample times in seconds, got {t.size} values.")
        w = 2.0 * np.pi * self.tempo * HARMONICS  # [K]
        raw = self.base + (self.amplitude[None] * np.sin(t[:, None, None] * w + self.phase[None])).sum(-1)
        angles = _soft_limit(raw)

        def path(tt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            amp, freq, ph, drift = self.travel
            x = amp * np.sin(2 * np.pi * freq * tt + ph) + drift * tt
            y = -self.bounce * np.abs(np.sin(np.pi * self.tempo * tt))
            za, zf, zp, trend = self.zoom
            return x, y, np.exp(za * np.sin(2 * np.pi * zf * tt + zp) + trend * tt)

        x, y, scale = path(t)
        x0, y0, s0 = path(np.zeros(1))
        root = np.stack([x - x0, y - y0], axis=-1)
        scale = scale / s0

        keys = self.yaw_keys
        body_yaw = np.full_like(t, keys[0, 1])
        for (ta, ya), (tb, yb) in zip(keys[:-1], keys[1:]):
            body_yaw = np.where(t >= ta, ya + (yb - ya) * _smoothstep((t - ta) / max(tb - ta, 1e-6)), body_yaw)

        amp, freq, ph = self.head_turn[:, 0:1], self.head_turn[:, 1:2], self.head_turn[:, 2:3]
        head_yaw = (amp * np.sin(2 * np.pi * freq * t[None] + ph)).sum(0)

        rest, env_f, env_p, syl_f, syl_p = self.speech
        envelope = np.clip(np.sin(2 * np.pi * env_f * t + env_p) * 1.5, 0.0, 1.0)
        mouth = np.clip(rest + envelope * (0.5 + 0.5 * np.sin(2 * np.pi * syl_f * t + syl_p)), 0.0, 1.0)

        period, offset = self.blinks
        since = (t - offset + 0.5 * period) % period - 0.5 * period
        eyes = 1.0 - np.exp(-((since / BLINK_WIDTH_S) ** 2))
        brows = self.brow[0] * np.sin(2 * np.pi * self.brow[1] * t + self.brow[2])
        return PoseSequence(angles, root, scale, body_yaw, head_yaw, mouth, eyes, brows)

    @classmethod
    def still(cls, pose: PoseSequence | None = None) -> "Motion":
        """A motion that holds one pose (default: `PoseSequence.rest`) with open eyes and a closed mouth."""
        pose = PoseSequence.rest() if pose is None else pose
        zeros = np.zeros((len(DOF_NAMES), len(HARMONICS)))
        return cls(
            tempo=1.0, base=_inverse_soft_limit(pose.angles[0]),
            amplitude=zeros, phase=zeros.copy(), travel=np.zeros(4), bounce=0.0, zoom=np.zeros(4),
            yaw_keys=np.array([[0.0, float(pose.body_yaw[0])]]), head_turn=np.zeros((2, 3)),
            speech=np.array([0.0, 0.0, 0.0, 0.0, 0.0]), blinks=np.array([1e9, 5e8]), brow=np.zeros(3),
        )  # fmt: skip


def _arm(rng: np.random.Generator, style: str) -> tuple[float, float, float, float]:
    """Shoulder base, shoulder amplitude, elbow base, elbow amplitude for an arm style."""
    u = rng.uniform
    if style == "wave":  # arms up and out, overhead at the peaks
        return u(0.8, 1.8), u(0.4, 1.1), u(-0.6, 0.5), u(0.2, 0.8)
    if style == "cross":  # arm across the chest, forearm up over the face: self-occlusion
        return u(-1.7, -0.9), u(0.2, 0.5), u(-2.3, -1.5), u(0.2, 0.6)
    return u(0.1, 0.6), u(0.2, 0.7), u(-0.8, 0.0), u(0.1, 0.6)  # swing


def sample_motion(rng: np.random.Generator, *, duration: float = 1.5, turn_probability: float = 0.2,
                  energy: float = 1.0) -> Motion:
    """Draw a dance-like performance lasting about `duration` seconds (turns are placed inside it).

    `turn_probability` is the chance of turning to face away (and sometimes back) during the clip or starting
    from behind; `energy` scales every oscillation (0 gives a still pose).
    """
    if duration <= 0 or not 0.0 <= turn_probability <= 1.0 or energy < 0:
        raise InputError(
            f"sample_motion: duration={duration}, turn_probability={turn_probability}, energy={energy}; "
            "expected duration > 0, turn_probability in [0, 1] and energy >= 0."
        )
    u = rng.uniform
    count, k = len(DOF_NAMES), len(HARMONICS)
    base = np.zeros(count)
    amp_scale = np.zeros(count)
    weights = rng.dirichlet(np.ones(k), size=count)  # how each joint splits its motion over the harmonics
    phase = u(0.0, 2 * np.pi, size=(count, k))
    symmetry = rng.choice(["mirror", "alternate", "free"])
    styles = rng.choice(ARM_STYLES, size=2, p=[0.4, 0.35, 0.25])
    for side, style in zip(("left", "right"), styles):
        s_base, s_amp, e_base, e_amp = _arm(rng, str(style))
        base[DOF_INDEX[f"{side}_shoulder"]], amp_scale[DOF_INDEX[f"{side}_shoulder"]] = s_base, s_amp
        base[DOF_INDEX[f"{side}_elbow"]], amp_scale[DOF_INDEX[f"{side}_elbow"]] = e_base, e_amp
        amp_scale[DOF_INDEX[f"{side}_wrist"]] = u(0.1, 0.4)
        base[DOF_INDEX[f"{side}_hip"]], amp_scale[DOF_INDEX[f"{side}_hip"]] = u(0.02, 0.3), u(0.0, 0.25)
        base[DOF_INDEX[f"{side}_knee"]], amp_scale[DOF_INDEX[f"{side}_knee"]] = u(0.0, 0.35), u(0.0, 0.45)
        amp_scale[DOF_INDEX[f"{side}_ankle"]] = u(0.0, 0.2)
    base[DOF_INDEX["lean"]], amp_scale[DOF_INDEX["lean"]] = u(-0.08, 0.08), u(0.0, 0.15)
    base[DOF_INDEX["head_roll"]], amp_scale[DOF_INDEX["head_roll"]] = u(-0.1, 0.1), u(0.0, 0.2)
    amplitude = energy * amp_scale[:, None] * weights
    # left and right limbs: mirrored (same phase), alternating (half a cycle apart) or independent
    if symmetry != "free":
        shift = np.pi if symmetry == "alternate" else 0.0
        for joint in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
            phase[DOF_INDEX[f"right_{joint}"]] = phase[DOF_INDEX[f"left_{joint}"]] + shift
    tempo = u(0.4, 1.1)

    yaw_keys = [[0.0, 0.0]]
    if u() < turn_probability:
        kind = rng.choice(["away", "away_and_back", "from_behind", "profile"])
        start = u(0.0, 0.5) * duration
        span = u(0.3, 0.6) * duration
        direction = rng.choice([-1.0, 1.0])
        if kind == "from_behind":
            yaw_keys = [[start, direction * np.pi], [start + span, 0.0]]
        elif kind == "profile":
            yaw_keys = [[start, 0.0], [start + span, direction * u(1.0, 1.4)]]
        else:
            yaw_keys = [[start, 0.0], [start + span, direction * np.pi]]
            if kind == "away_and_back":
                back = start + span + u(0.05, 0.2) * duration
                yaw_keys += [[back, direction * np.pi], [back + span, direction * 2 * np.pi]]
    head_turn = np.stack([energy * np.array([u(0.0, 0.45), u(0.0, 0.25)]), np.array([u(0.15, 0.5), u(0.5, 1.2)]),
                          u(0.0, 2 * np.pi, size=2)], axis=1)  # fmt: skip
    return Motion(
        tempo=tempo, base=base, amplitude=amplitude, phase=phase,
        travel=np.array([energy * u(0.0, 0.12), u(0.1, 0.4), u(0, 2 * np.pi), energy * u(-0.08, 0.08)]),
        bounce=energy * u(0.0, 0.02),
        zoom=np.array([energy * u(0.0, 0.1), u(0.1, 0.4), u(0, 2 * np.pi), energy * u(-0.08, 0.08)]),
        yaw_keys=np.array(yaw_keys, dtype=np.float64), head_turn=head_turn,
        speech=np.array([u(0.0, 0.15), u(0.15, 0.5), u(0, 2 * np.pi), u(2.0, 4.0), u(0, 2 * np.pi)]),
        blinks=np.array([u(1.2, 3.5), u(0.0, 3.5)]),
        brow=np.array([u(0.0, 0.8), u(0.1, 0.5), u(0, 2 * np.pi)]),
    )  # fmt: skip
