"""Training and test pairs from the world: same-identity, cross-identity with ground truth, pseudo driving clips.

Every random choice comes from a generator seeded by ``(seed, index, role)``, so a sample is the same
whatever else is switched on: turning cross-identity pairs off does not change the same-identity clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from directanimator.errors import InputError

from .background import BACKGROUND_KINDS, Background, sample_background
from .degrade import Degradation, degrade, shutter_seconds
from .identity import Identity, plainly_dressed, sample_identity
from .motion import Motion, sample_motion
from .render import RenderedClip, check_canvas, render_clip
from .skeleton import Placement

ROLES = {"target": 0, "reference": 1, "cross": 2, "pseudo": 3, "degrade": 4, "identity": 5}


@dataclass(frozen=True)
class WorldConfig:
    """What the world renders for each sample; serialised next to exported data."""

    height: int = 128
    width: int = 128
    num_frames: int = 17
    fps: float = 12.0
    identities: int | None = None  # size of the identity pool; None: a new identity for every role and sample
    turn_probability: float = 0.2  # chance of a clip with a turn away from (or back to) the camera
    close_up_probability: float = 0.25  # chance of an upper-body framing instead of the full body
    moving_background_probability: float = 0.3
    limb_thickness: float = 1.0  # arm and leg thickness x this (small canvases: limbs wider than a latent cell)
    plain_clothes: bool = False  # one-colour long sleeves and trousers, no accessories (identity.plainly_dressed)
    backgrounds: tuple[str, ...] = BACKGROUND_KINDS  # the backdrop kinds drawn from (background.BACKGROUND_KINDS)
    reference_gap: float = 1.0  # same-identity reference time: up to this many seconds outside the clip
    # the same-identity reference in its pose of that time but standing where the clip starts (no travel, no zoom),
    # as the cross-identity reference does: the location cue's first-frame anchor then holds in training too
    reference_in_place: bool = False
    cross_id: bool = True
    pseudo: bool = True
    degradations: tuple[Degradation, ...] = ()  # applied to the driving clip only; targets stay clean

    def validate(self) -> "WorldConfig":
        check_canvas(self.height, self.width)
        if self.num_frames < 1 or self.fps <= 0:
            raise InputError(f"WorldConfig: num_frames={self.num_frames}, fps={self.fps}; need >= 1 and > 0.")
        if self.identities is not None and self.identities < 2:
            raise InputError(
                f"WorldConfig.identities={self.identities}: a pool needs at least 2 identities (cross-identity "
                "pairs need two different ones); use None for a fresh identity every time."
            )
        for name in ("turn_probability", "close_up_probability", "moving_background_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"WorldConfig.{name}={getattr(self, name)}: must be a probability in 0..1.")
        if not 0.25 <= self.limb_thickness <= 4.0:
            raise InputError(f"WorldConfig.limb_thickness={self.limb_thickness}: use a factor in 0.25..4 "
                             "(1 keeps each identity's own limbs).")
        if not isinstance(self.plain_clothes, bool):
            raise InputError(f"WorldConfig.plain_clothes={self.plain_clothes!r}: use true or false.")
        if not isinstance(self.reference_in_place, bool):
            raise InputError(f"WorldConfig.reference_in_place={self.reference_in_place!r}: use true or false.")
        if self.reference_gap < 0:
            raise InputError(f"WorldConfig.reference_gap={self.reference_gap}: must be >= 0 seconds.")
        return self

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def times(self) -> np.ndarray:
        """Frame times of a clip, seconds from 0."""
        return np.arange(self.num_frames) / self.fps


@dataclass
class Scene:
    """Everything needed to render a clip: who, doing what, where, in front of what."""

    identity: Identity
    motion: Motion
    placement: Placement
    background: Background


@dataclass
class SameIdPair:
    """A reference frame and a clip of the same identity (also the clip's own ground truth)."""

    reference: RenderedClip
    clip: RenderedClip


@dataclass
class CrossIdPair:
    """Reference of B, driving clip of A, and the target: B performing A's motion where B's reference stands."""

    reference: RenderedClip
    driving: RenderedClip
    target: RenderedClip


@dataclass
class WorldSample:
    """One dataset item: the clean clip (target of same-identity training), the possibly degraded driving
    version of it, a same-identity reference, and optional cross-identity and pseudo-driving parts."""

    index: int
    clip: RenderedClip
    driving: RenderedClip
    reference: RenderedClip
    cross_reference: RenderedClip | None = None
    cross_target: RenderedClip | None = None
    pseudo_driving: RenderedClip | None = None
    scenes: dict = field(default_factory=dict)


def role_rng(seed: int, index: int, role: str) -> np.random.Generator:
    """The generator for one role of one sample."""
    if seed < 0 or index < 0:
        raise InputError(f"seed={seed}, index={index}: both must be non-negative integers.")
    return np.random.default_rng([int(seed), int(index), ROLES[role]])


def sample_placement(rng: np.random.Generator, *, close_up_probability: float = 0.25) -> Placement:
    """Full body (55-85 % of the height) with head and feet inside, or an upper-body close-up."""
    if rng.uniform() < close_up_probability:
        height = rng.uniform(1.3, 2.4)
        top = rng.uniform(0.04, 0.15)  # head top below the upper edge
        return Placement(x=float(rng.uniform(0.4, 0.6)), y=float(top + 0.52 * height), height=float(height))
    height = rng.uniform(0.55, 0.85)
    low, high = 0.04 + 0.52 * height, 0.98 - 0.48 * height
    return Placement(x=float(rng.uniform(0.3, 0.7)), y=float(rng.uniform(low, max(low, high))), height=float(height))


def _identity(rng: np.random.Generator, config: WorldConfig, seed: int, name: str) -> Identity:
    if config.identities is None:
        return sample_identity(rng, name)
    k = int(rng.integers(config.identities))
    return pool_identity(seed, k)


def pool_identity(seed: int, k: int) -> Identity:
    """Identity number `k` of the pool of world seed `seed`, named ``w{k:04d}``."""
    return sample_identity(np.random.default_rng([int(seed), int(k), ROLES["identity"], 0]), f"w{k:04d}")


def thickened(identity: Identity, factor: float) -> Identity:
    """`identity` with arms and legs `factor` times as thick (the same object for 1)."""
    if factor == 1.0:
        return identity
    p = identity.proportions
    return replace(identity, proportions=replace(p, arm_thickness=p.arm_thickness * factor,
                                                 leg_thickness=p.leg_thickness * factor).normalised())


def sample_scene(rng: np.random.Generator, config: WorldConfig, *, seed: int = 0, name: str = "x",
                 identity: Identity | None = None) -> Scene:
    """Draw identity (unless given), motion, placement and background for one clip."""
    identity = _identity(rng, config, seed, name) if identity is None else identity
    identity = thickened(identity, config.limb_thickness)
    if config.plain_clothes:
        identity = plainly_dressed(identity)
    motion = sample_motion(rng, duration=config.duration, turn_probability=config.turn_probability)
    placement = sample_placement(rng, close_up_probability=config.close_up_probability)
    background = sample_background(rng, moving_probability=config.moving_background_probability,
                                   kinds=tuple(config.backgrounds))
    return Scene(identity, motion, placement, background)


def render_scene(scene: Scene, times, config: WorldConfig, *, shutter: float = 0.0,
                 in_place: bool = False) -> RenderedClip:
    """`scene` rendered at `times`; `in_place`: in the poses of those times, without the motion's travel and zoom
    (standing at the placement, as at time 0)."""
    return render_clip(scene.identity, scene.motion, scene.placement, scene.background, times,
                       height=config.height, width=config.width, shutter=shutter, in_place=in_place)  # fmt: skip


def perform(performer: Scene, motion_from: Scene) -> Scene:
    """`performer`'s identity, placement and background with `motion_from`'s motion (cross-identity truth)."""
    return Scene(performer.identity, motion_from.motion, performer.placement, performer.background)


def _other_identity(rng, config, seed, name, avoid: Identity) -> Identity:
    for _ in range(64):
        identity = _identity(rng, config, seed, name)
        if identity.name != avoid.name:
            return identity
    raise InputError(
        f"WorldConfig.identities={config.identities}: could not draw an identity other than {avoid.name}; "
        "use a larger pool."
    )


def make_sample(index: int, config: WorldConfig = WorldConfig(), *, seed: int = 0) -> WorldSample:
    """Render sample `index` of the world with base `seed`: deterministic, bit for bit."""
    config.validate()
    times = config.times()
    target = sample_scene(role_rng(seed, index, "target"), config, seed=seed, name=f"s{seed}-{index}-a")
    clip = render_scene(target, times, config)
    ref_rng = role_rng(seed, index, "reference")
    ref_time = ref_rng.uniform(-config.reference_gap, config.duration + config.reference_gap)
    reference = render_scene(target, [ref_time], config, in_place=config.reference_in_place)
    scenes = {"target": target}

    driving = clip
    if config.degradations:
        driving = _degraded(target, clip, times, config, role_rng(seed, index, "degrade"))

    sample = WorldSample(index=index, clip=clip, driving=driving, reference=reference, scenes=scenes)
    if config.cross_id:
        rng = role_rng(seed, index, "cross")
        other = sample_scene(rng, config, seed=seed,
                             identity=_other_identity(rng, config, seed, f"s{seed}-{index}-b", target.identity))
        scenes["cross"] = other
        sample.cross_reference = render_scene(other, [0.0], config)
        sample.cross_target = render_scene(perform(other, target), times, config)
    if config.pseudo:
        rng = role_rng(seed, index, "pseudo")
        other = sample_scene(rng, config, seed=seed,
                             identity=_other_identity(rng, config, seed, f"s{seed}-{index}-c", target.identity))
        scenes["pseudo"] = perform(other, target)
        sample.pseudo_driving = render_scene(scenes["pseudo"], times, config)
    return sample


def _degraded(scene: Scene, clip: RenderedClip, times, config: WorldConfig, rng) -> RenderedClip:
    """The clip with the configured degradations (motion blur rendered first, then the rest in order)."""
    blur = [d for d in config.degradations if d.name == "motion_blur"]
    out = clip
    if blur and blur[-1].strength > 0:
        out = render_scene(scene, times, config, shutter=shutter_seconds(blur[-1].strength, config.fps))
    frames = out.frames
    for degradation in config.degradations:
        if degradation.name != "motion_blur":
            frames = degrade(frames, degradation, rng=rng, person_masks=clip.person_masks)
    return replace(out, frames=frames)


def same_id_pair(index: int, config: WorldConfig = WorldConfig(), *, seed: int = 0) -> SameIdPair:
    """Reference and clip of one identity (sample `index`, nothing else rendered)."""
    sample = make_sample(index, _only(config), seed=seed)
    return SameIdPair(reference=sample.reference, clip=sample.clip)


def cross_id_pair(index: int, config: WorldConfig = WorldConfig(), *, seed: int = 0) -> CrossIdPair:
    """Reference of B, driving clip of A, and B performing A's motion at B's placement (sample `index`)."""
    sample = make_sample(index, _only(config, cross_id=True), seed=seed)
    return CrossIdPair(reference=sample.cross_reference, driving=sample.driving, target=sample.cross_target)


def pseudo_driving(index: int, config: WorldConfig = WorldConfig(), *,
                   seed: int = 0) -> tuple[RenderedClip, RenderedClip]:
    """The target clip of sample `index` and a pseudo driving clip: another identity performing its motion."""
    sample = make_sample(index, _only(config, pseudo=True), seed=seed)
    return sample.clip, sample.pseudo_driving


def _only(config: WorldConfig, *, cross_id: bool = False, pseudo: bool = False) -> WorldConfig:
    return replace(config, cross_id=cross_id, pseudo=pseudo)
