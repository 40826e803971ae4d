"""Animate a reference image from a driving video: cue extraction, VAE encoding, sampling, decoding.

The public entry of the library's inference. The pieces live in `conditioning` (frame-count rule, encoding of
the reference and the cue triplet), `sampling` (scheduler loop, guidance, context windows) and `vae_io`
(chunked and tiled VAE decoding).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import Tensor

from .conditioning import (
    Conditioning,
    backbone_config,
    check_image_encoder,
    encode_conditioning,
    fixed_latent_frames,
    pad_frames,
    plan_frame_count,
    using,
)
from .cues.types import CueConfig, CueTriplet
from .errors import InputError
from .plan import SamplingPlan, frames_from_latents, sampling_plan
from .sampling import (
    SCHEDULER_CHOICES,
    CacheStats,
    SCHEDULERS,
    StepCallback,
    WindowPlan,
    make_scheduler,
    plan_windows,
    sample_latents,
    scheduler_names,
    speed_notes,
    validate_options,
)
from .tensors import as_frames
from .vae_io import (
    decode_latents,
    encode_frames,
    latent_frames_for,
    latent_preview,
    masks_to_latent_grid,
    temporal_compression,
)

log = logging.getLogger(__name__)

__all__ = [
    "AnimationResult", "Conditioning", "SCHEDULERS", "SCHEDULER_CHOICES", "SamplingPlan", "WindowPlan", "animate",
    "animate_triplet", "decode_latents", "encode_conditioning", "encode_frames", "frames_from_latents",
    "latent_preview", "make_scheduler", "masks_to_latent_grid", "plan_frame_count", "plan_windows", "sample_latents",
    "sampling_plan", "scheduler_names",
]


@dataclass
class AnimationResult:
    """frames: ``[F, H, W, 3]`` float32 0..1 on the CPU, exactly the driving clip's frame count; fps: the driving
    frame rate when known; triplet: the cues used; notes: every adjustment made (padding, windows, resizes);
    latents: the sampled latents ``[1, 1 + N, C, h, w]`` (reference frame first) on the CPU."""

    frames: Tensor
    fps: float | None
    triplet: CueTriplet
    notes: list[str] = field(default_factory=list)
    latents: Tensor | None = None


def _video_latents(model, num_frames: int) -> int:
    config = backbone_config(model)
    fixed = fixed_latent_frames(config)
    compression = temporal_compression(model.vae)
    padded = plan_frame_count(num_frames, patch_size_t=config.patch_size_t, min_video_latents=fixed - 1 if fixed else 1,
                              compression=compression)
    return latent_frames_for(padded, compression=compression)


def animate(model, reference, driving, *, cue_config: CueConfig | None = None, steps: int = 25,
            guidance: float = 3.0, seed: int = 0, scheduler: str | None = None, window: int | None = None,
            overlap: int | None = None, fps: float | None = None, callback: StepCallback | None = None,
            denoise: float = 1.0, init_frames: Tensor | None = None, text_embeds: Tensor | None = None,
            tiling: bool | None = None, on_cue_frame=None, samples: int = 1, cache: str = "off",
            cache_threshold: float | None = None, batch_guidance: bool = False) -> AnimationResult:
    """Animate `reference` ``[1, H, W, 3]`` with the motion of `driving` ``[F, H', W', 3]`` (or a VideoClip).

    Extracts the Driving Cue Triplet with the cue options of `sampling_plan` (`cue_config`, default the
    checkpoint's; a backbone with learned positional embeddings sets the working size when they leave it open, and
    a derived size is rounded to the backbone's multiple, `SamplingPlan.cue_config_for`), then runs
    `animate_triplet`. Sampling options and the working size are checked before the cue extraction
    starts; see `animate_triplet` for them.
    """
    if hasattr(driving, "frames") and hasattr(driving, "fps"):  # a VideoClip
        fps = fps if fps is not None else float(driving.fps)
        driving = driving.frames
    driving = as_frames(driving, name="driving")
    validate_options(model, steps=steps, guidance=guidance, scheduler=scheduler, window=window, overlap=overlap,
                     denoise=denoise, num_video_latents=_video_latents(model, int(driving.shape[0])),
                     samples=samples, cache=cache, cache_threshold=cache_threshold, batch_guidance=batch_guidance)
    if denoise < 1.0 and init_frames is None:
        raise InputError(f"denoise={denoise}: partial denoising needs init_frames; pass them or use denoise=1.")
    plan = sampling_plan(model, cue_config=cue_config)
    if backbone_config(model).image_embed_dim is not None:  # Wan2.1 I2V: its CLIP tower, before the cue extraction
        check_image_encoder(model, backbone_config(model))
    from .cues import extract_cues

    driving_size = tuple(driving.shape[1:3])
    model.transformer.check_latent_shape(*plan.latent_shape(driving_size, int(driving.shape[0])))
    triplet = extract_cues(reference, driving, plan.cue_config_for(driving_size), on_frame=on_cue_frame)
    return animate_triplet(model, triplet, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler,
                           window=window, overlap=overlap, fps=fps, callback=callback, denoise=denoise,
                           init_frames=init_frames, text_embeds=text_embeds, tiling=tiling, samples=samples,
                           cache=cache, cache_threshold=cache_threshold, batch_guidance=batch_guidance)


def _init_latents(model, triplet: CueTriplet, init_frames, padded: int, tiling: bool | None) -> Tensor:
    frames = as_frames(init_frames, name="init_frames")
    size = tuple(triplet.pose.shape[1:3])
    if tuple(frames.shape[1:3]) != size:
        raise InputError(
            f"init_frames: {frames.shape[2]}x{frames.shape[1]} px, but the cues are at the working size "
            f"{size[1]}x{size[0]}. Resize the init frames to the working size."
        )
    if frames.shape[0] not in (triplet.num_frames, padded):
        raise InputError(
            f"init_frames: {frames.shape[0]} frames for a driving clip of {triplet.num_frames}; give one init frame "
            "per driving frame."
        )
    with using(model, "vae") as vae:
        return encode_frames(vae, pad_frames(frames, padded), name="init_frames", tiling=tiling)


def animate_triplet(model, triplet: CueTriplet, *, steps: int = 25, guidance: float = 3.0, seed: int = 0,
                    scheduler: str | None = None, window: int | None = None, overlap: int | None = None,
                    fps: float | None = None, callback: StepCallback | None = None, denoise: float = 1.0,
                    init_frames: Tensor | None = None, text_embeds: Tensor | None = None,
                    tiling: bool | None = None, samples: int = 1, cache: str = "off",
                    cache_threshold: float | None = None, batch_guidance: bool = False) -> AnimationResult:
    """Animate from an extracted cue triplet: encode, sample, decode, trim to the driving frame count.

    steps: denoising steps; guidance: cue guidance scale (1 = one forward per step); seed: reproduces the result
    on the same device and dtype; scheduler: one of `scheduler_names(model)` ("dpm"/"ddim" on CogVideoX,
    "unipc"/"euler" on Wan) or None/"auto" for the backbone's default ("dpm", "unipc"); window/overlap: context
    windows in video latent frames (None: the whole clip, or the backbone's fixed length; Wan windows take any
    length); denoise < 1 with `init_frames` ``[F, H, W, 3]`` refines an existing video; callback(step, total,
    preview) after every step (may raise to stop); text_embeds: ``[1, L, D]`` replacing the checkpoint's null-text
    embedding; tiling: spatial VAE tiling (None: when the frame exceeds the VAE's tile size); samples: the mean of
    that many results of seeds `seed`, `seed + 1`, ... (`sample_latents` says when that helps); cache /
    cache_threshold: a step cache ("off", "first_block", "mag", "taylorseer") and its setting, batch_guidance: the
    guidance branches in one forward (`sample_latents` describes both; what they did goes into the notes).
    """
    num = triplet.num_frames if isinstance(triplet, CueTriplet) else 0
    if num < 1:
        raise InputError(f"triplet: expected a CueTriplet with frames, got {type(triplet).__name__}.")
    validate_options(model, steps=steps, guidance=guidance, scheduler=scheduler, window=window, overlap=overlap,
                     denoise=denoise, num_video_latents=_video_latents(model, num), samples=samples, cache=cache,
                     cache_threshold=cache_threshold, batch_guidance=batch_guidance)
    if denoise < 1.0 and init_frames is None:
        raise InputError(f"denoise={denoise}: partial denoising needs init_frames; pass them or use denoise=1.")
    cond = encode_conditioning(model, triplet, fps=fps, tiling=tiling)
    init = None if init_frames is None or denoise >= 1.0 else _init_latents(
        model, triplet, init_frames, cond.padded_frames, tiling)
    notes = list(getattr(triplet.record, "notes", []) or []) + list(cond.notes)
    notes[:0] = (getattr(model, "info", None) or {}).get("memory_notes", [])  # fp8, offload, attention, compile
    config = backbone_config(model)
    fixed = fixed_latent_frames(config)
    effective_window = window if window is not None else (fixed - 1 if fixed else None)
    plan = plan_windows(cond.video_latent_frames, effective_window, overlap)
    if len(plan.spans) > 1:
        notes.append(
            f"{cond.video_latent_frames} video latent frames sampled in {len(plan.spans)} context windows of "
            f"{plan.window} (overlap {plan.overlap}), each with the reference frame in front."
        )
        log.info(notes[-1])
    stats = CacheStats()
    latents = sample_latents(model, cond, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler,
                             window=window, overlap=overlap, denoise=denoise, init_latents=init,
                             text_embeds=text_embeds, callback=callback, samples=samples, cache=cache,
                             cache_threshold=cache_threshold, batch_guidance=batch_guidance, stats=stats)
    notes.extend(speed_notes(stats, batch_guidance=batch_guidance, guidance=guidance))
    frames = frames_from_latents(model, latents, num_frames=cond.num_frames, tiling=tiling)
    return AnimationResult(frames=frames, fps=fps, triplet=triplet, notes=notes, latents=latents.cpu())
