"""Reference and cue conditioning on the latent grid: the frame-count rule and VAE encoding of a CueTriplet."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .cues.location_cue import align_pose_cue
from .cues.types import CueTriplet
from .errors import InputError
from .models.cue_latents import CueLatents
from .vae_io import (
    TEMPORAL_COMPRESSION,
    encode_frames,
    latent_frames_for,
    masks_to_latent_grid,
    spatial_compression,
)

log = logging.getLogger(__name__)


@dataclass
class Conditioning:
    """Everything the sampler needs from the inputs, on the latent grid.

    reference: ``[1, 1, C, h, w]`` the reference image's latent (image-latent scale), the leading latent frame;
    cues: `CueLatents` ``[1, 1 + N, ...]``: the reference's own cues, then the N driving latent frames;
    num_frames: output frames requested (the driving clip before padding); padded_frames: driving frames encoded
    (``4k+1``, ``>= num_frames``); fps: driving frame rate when known; notes: adjustments made, for the user.
    """

    reference: Tensor
    cues: CueLatents
    num_frames: int
    padded_frames: int
    fps: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def latent_frames(self) -> int:
        """Latent frames sampled, the leading reference frame included (``1 + N``)."""
        return self.cues.num_frames

    @property
    def video_latent_frames(self) -> int:
        """``N``: latent frames of the driving video."""
        return self.cues.num_frames - 1

    @property
    def grid(self) -> tuple[int, int]:
        return self.cues.grid

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Conditioning":
        return Conditioning(self.reference.to(device=device, dtype=dtype), self.cues.to(device, dtype),
                            self.num_frames, self.padded_frames, self.fps, list(self.notes))


def backbone_config(model):
    """The facts of the model's backbone (`directanimator.models.family.BackboneSpec`: CogVideoX-named attributes
    for either family)."""
    return model.transformer.spec


def using(model, part: str):
    """``model.use(part)`` (AnimatorModel: onloads `part` when offloading), or the plain module for other models."""
    return model.use(part) if hasattr(model, "use") else nullcontext(getattr(model, part))


def fixed_latent_frames(config) -> int | None:
    """Latent frames (reference included) a backbone with learned positional embeddings was trained on, else None."""
    if not getattr(config, "use_learned_positional_embeddings", False):
        return None
    compression = int(getattr(config, "temporal_compression_ratio", TEMPORAL_COMPRESSION))
    return (int(config.sample_frames) - 1) // compression + 1


def plan_frame_count(num_frames: int, *, patch_size_t: int | None = None, min_video_latents: int = 1,
                     compression: int = TEMPORAL_COMPRESSION) -> int:
    """Driving frames to encode for a clip of `num_frames`: the next ``4k+1``, raised until the latent frames
    (``1 + N`` with the reference) divide by `patch_size_t` and ``N >= min_video_latents``."""
    if num_frames < 1:
        raise InputError(f"driving: the clip has {num_frames} frames; give at least one frame.")
    video_latents = max(-(-(num_frames - 1) // compression) + 1, min_video_latents)
    step = int(patch_size_t or 1)
    while (1 + video_latents) % step:
        video_latents += 1
    return compression * (video_latents - 1) + 1


def pad_frames(x: Tensor, count: int) -> Tensor:
    """Repeat the last frame of ``[F, ...]`` up to `count` frames."""
    extra = count - int(x.shape[0])
    if extra <= 0:
        return x
    return torch.cat([x, x[-1:].expand(extra, *x.shape[1:])], dim=0)


def _check_triplet(triplet: CueTriplet, multiple: int) -> tuple[int, int, int]:
    if not isinstance(triplet, CueTriplet):
        raise InputError(f"triplet: expected a CueTriplet (from extract_cues), got {type(triplet).__name__}.")
    num, height, width = (int(s) for s in triplet.pose.shape[:3]) if triplet.pose.ndim == 4 else (0, 0, 0)
    expected = {
        "pose": (num, height, width, 3), "face": (num, height, width, 3),
        "body_location": (num, height, width), "face_location": (num, height, width),
        "reference": (1, height, width, 3), "reference_pose": (1, height, width, 3),
        "reference_face": (1, height, width, 3), "reference_body_location": (1, height, width),
        "reference_face_location": (1, height, width),
    }
    for name, shape in expected.items():
        value = getattr(triplet, name)
        if not isinstance(value, Tensor) or tuple(value.shape) != shape or num == 0:
            found = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise InputError(
                f"triplet.{name}: expected shape {shape} (pose is [F, H, W, 3], masks [F, H, W], reference fields "
                f"one frame, all at one working size), got {found}. Build the triplet with extract_cues()."
            )
    if height % multiple or width % multiple:
        raise InputError(
            f"triplet: working size {width}x{height} px; the VAE and the transformer's patches need multiples of "
            f"{multiple}. Set CueConfig.height/width to multiples of {multiple}."
        )
    return num, height, width


def encode_conditioning(model, triplet: CueTriplet, *, fps: float | None = None,
                        tiling: bool | None = None) -> Conditioning:
    """VAE-encode the reference and the cue triplet of `triplet` for `model` (an AnimatorModel).

    The driving cues are padded by repeating their last frame to the frame count the backbone needs
    (`plan_frame_count`), which is reported in the notes; the reference and its own cues are encoded alone as the
    leading latent frame. A pose cue in driving pixels is first aligned for a checkpoint trained on aligned ones
    (``align_pose``). Sizes the backbone cannot take raise InputError before any encoding.
    """
    vae, transformer = model.vae, model.transformer
    config = backbone_config(model)
    latent_channels = int(vae.config.latent_channels)
    if 2 * latent_channels != int(config.in_channels) or latent_channels != int(transformer.latent_channels):
        raise InputError(
            f"model: the VAE makes {latent_channels}-channel latents but the transformer takes in_channels="
            f"{config.in_channels} (noisy + reference latents) and predicts {transformer.latent_channels}. "
            "Load a VAE and an image-to-video transformer of the same CogVideoX family."
        )
    factor = spatial_compression(vae)
    num, height, width = _check_triplet(triplet, factor * int(config.patch_size))
    grid = (height // factor, width // factor)

    fixed = fixed_latent_frames(config)
    padded = plan_frame_count(num, patch_size_t=config.patch_size_t,
                              min_video_latents=fixed - 1 if fixed else 1)
    video_latents = latent_frames_for(padded)
    transformer.check_latent_shape(fixed or 1 + video_latents, *grid)

    notes: list[str] = []
    if padded != num:
        base = plan_frame_count(num)
        with_patch = plan_frame_count(num, patch_size_t=config.patch_size_t)
        reasons = [f"{TEMPORAL_COMPRESSION}k+1 frames"] if base > num else []
        if with_patch > base:
            reasons.append(f"latent frames divisible by the temporal patch size {config.patch_size_t}")
        if padded > with_patch:
            reasons.append(f"the backbone's fixed length of {fixed - 1} video latent frames")
        notes.append(
            f"driving clip padded from {num} to {padded} frames (last frame repeated) for {' and '.join(reasons)}; "
            f"the output is trimmed back to {num} frames."
        )
        log.info(notes[-1])

    triplet = _pose_layout_for(model, triplet, notes)
    with using(model, "vae") as vae:
        return _encode_all(vae, triplet, grid, padded, tiling, num, notes, fps)


def _pose_layout_for(model, triplet: CueTriplet, notes: list[str]) -> CueTriplet:
    """`triplet` with its pose cue in the layout `model` was trained on (its checkpoint's ``align_pose``): an
    unaligned cue is aligned (the same warp extraction does); an aligned one for an unaligned model is kept, with
    a warning. A backbone without a DirectAnimator checkpoint has no recorded layout and takes the cue as it is."""
    trained = getattr(model, "cue_config", None) or {}
    if not trained:
        return triplet
    wanted = bool(trained.get("align_pose", False))
    if wanted and not triplet.record.pose_aligned:
        notes.append("pose cue moved onto the reference by the location transform: the model was trained on "
                     "aligned pose cues (align_pose)")
        log.info(notes[-1])
        return align_pose_cue(triplet)
    if triplet.record.pose_aligned and not wanted:
        notes.append("the pose cue is aligned to the reference (align_pose) but the model was trained on pose cues "
                     "in driving pixels; extract the cues with align_pose off for this model")
        log.warning(notes[-1])
    return triplet


def _encode_all(vae, triplet: CueTriplet, grid: tuple[int, int], padded: int, tiling: bool | None, num: int,
                notes: list[str], fps: float | None) -> Conditioning:
    def encode(frames: Tensor, name: str) -> Tensor:
        return encode_frames(vae, frames, name=name, image_latents=True, tiling=tiling)

    def grid_masks(masks: Tensor, name: str) -> Tensor:
        return masks_to_latent_grid(masks, grid, name=name).to(vae.device)

    reference = encode(triplet.reference, "triplet.reference")
    reference_cues = CueLatents(
        pose=encode(triplet.reference_pose, "triplet.reference_pose"),
        face=encode(triplet.reference_face, "triplet.reference_face"),
        body_mask=grid_masks(triplet.reference_body_location, "triplet.reference_body_location"),
        face_mask=grid_masks(triplet.reference_face_location, "triplet.reference_face_location"),
    )
    driving_cues = CueLatents(
        pose=encode(pad_frames(triplet.pose, padded), "triplet.pose"),
        face=encode(pad_frames(triplet.face, padded), "triplet.face"),
        body_mask=grid_masks(pad_frames(triplet.body_location, padded), "triplet.body_location"),
        face_mask=grid_masks(pad_frames(triplet.face_location, padded), "triplet.face_location"),
    )
    cues = reference_cues.cat(driving_cues.to(dtype=reference.dtype))
    return Conditioning(reference=reference, cues=cues, num_frames=num, padded_frames=padded, fps=fps, notes=notes)
