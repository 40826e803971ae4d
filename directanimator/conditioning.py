"""Reference and cue conditioning on the latent grid: the frame-count rule, VAE encoding of a CueTriplet, and the
image conditioning each backbone family's own image-to-video pipeline gives its transformer (`image_window`)."""

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
from .models.family import WAN_MASK_CHANNELS
from .vae_io import (
    TEMPORAL_COMPRESSION,
    encode_frames,
    latent_channels,
    latent_frames_for,
    masks_to_latent_grid,
    spatial_compression,
    temporal_compression,
)

log = logging.getLogger(__name__)


@dataclass
class Conditioning:
    """Everything the sampler needs from the inputs, on the latent grid.

    reference: ``[1, 1, C, h, w]`` the reference image's latent (image-latent scale), the leading latent frame;
    cues: `CueLatents` ``[1, 1 + N, ...]``: the reference's own cues, then the N driving latent frames;
    num_frames: output frames requested (the driving clip before padding); padded_frames: driving frames encoded
    (``4k+1``, ``>= num_frames``); fps: driving frame rate when known; notes: adjustments made, for the user;
    image_embeds: Wan2.1 I2V only, the reference's CLIP embedding ``[1, T, image_embed_dim]`` (the image encoder's
    penultimate hidden states, as diffusers' ``WanImageToVideoPipeline.encode_image``), else None;
    reference_pixels: ``[1, H, W, 3]`` 0..1 the reference at working size on the CPU (`image_window` encodes it
    again for Wan2.1 I2V); window_cache: `image_window` results by window length.
    """

    reference: Tensor
    cues: CueLatents
    num_frames: int
    padded_frames: int
    fps: float | None = None
    notes: list[str] = field(default_factory=list)
    image_embeds: Tensor | None = None
    reference_pixels: Tensor | None = None
    window_cache: dict[int, Tensor] = field(default_factory=dict, repr=False, compare=False)

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
        def move(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device=device, dtype=dtype)

        return Conditioning(move(self.reference), self.cues.to(device, dtype), self.num_frames, self.padded_frames,
                            self.fps, list(self.notes), image_embeds=move(self.image_embeds),
                            reference_pixels=self.reference_pixels,
                            window_cache={k: move(v) for k, v in self.window_cache.items()})


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
    (``align_pose``). Sizes the backbone cannot take, a VAE whose latents do not fit the transformer's channels,
    and a Wan2.1 I2V model without its CLIP image encoder raise InputError before any encoding. For Wan2.1 I2V
    the reference's CLIP embedding is computed too (``cond.image_embeds``); the per-window image channels come
    from `image_window`.
    """
    vae, transformer = model.vae, model.transformer
    config = backbone_config(model)
    check_channels(config, latent_channels(vae), int(transformer.latent_channels))
    if config.image_conditioning == "mask_and_latent":
        check_image_encoder(model, config)
    factor, compression = spatial_compression(vae), temporal_compression(vae)
    num, height, width = _check_triplet(triplet, factor * int(config.patch_size))
    grid = (height // factor, width // factor)

    fixed = fixed_latent_frames(config)
    padded = plan_frame_count(num, patch_size_t=config.patch_size_t,
                              min_video_latents=fixed - 1 if fixed else 1, compression=compression)
    video_latents = latent_frames_for(padded, compression=compression)
    transformer.check_latent_shape(fixed or 1 + video_latents, *grid)

    notes: list[str] = []
    if padded != num:
        base = plan_frame_count(num, compression=compression)
        with_patch = plan_frame_count(num, patch_size_t=config.patch_size_t, compression=compression)
        reasons = [f"{compression}k+1 frames"] if base > num else []
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
        cond = _encode_all(vae, triplet, grid, padded, tiling, num, notes, fps)
    if config.image_conditioning == "mask_and_latent":
        cond.image_embeds = clip_image_embeds(model, cond.reference_pixels)
    return cond


def expected_in_channels(config, latent_channels: int) -> int:
    """Transformer input channels for `latent_channels`-channel latents under the spec's image conditioning."""
    if config.image_conditioning == "latent_channels":
        return 2 * latent_channels  # noisy + image latents (CogVideoX I2V)
    if config.image_conditioning == "mask_and_latent":
        return 2 * latent_channels + WAN_MASK_CHANNELS  # noisy + first-frame mask + image latents (Wan2.1 I2V)
    return latent_channels  # "first_frame": the clean image latent replaces latent frame 0 (Wan2.2 TI2V)


def check_channels(config, vae_channels: int, predicted: int) -> None:
    """InputError unless the VAE's latents fit the transformer: it predicts them and takes them with its family's
    image conditioning on channels."""
    want = expected_in_channels(config, vae_channels)
    if want != int(config.in_channels) or vae_channels != predicted:
        raise InputError(
            f"model: the VAE makes {vae_channels}-channel latents but the {config.variant} transformer takes "
            f"in_channels={config.in_channels} ({want} expected with {vae_channels}-channel latents and "
            f"{config.image_conditioning!r} image conditioning) and predicts {predicted}. Load the VAE that belongs "
            f"to this backbone (Wan2.1: the 16-channel Wan VAE; Wan2.2 TI2V: the 48-channel Wan2.2 VAE; CogVideoX: "
            f"its own VAE)."
        )


def check_image_encoder(model, config) -> None:
    """InputError unless a Wan2.1 I2V `model` has its CLIP vision encoder and processor, of the backbone's width."""
    encoder, processor = getattr(model, "image_encoder", None), getattr(model, "image_processor", None)
    if encoder is None or processor is None:
        missing = " and ".join(n for n, v in (("image_encoder", encoder), ("image_processor", processor)) if v is None)
        raise InputError(
            f"model: the {config.variant} backbone conditions on a CLIP image embedding of the reference, but the "
            f"model has no {missing}. Load the model with its CLIP vision encoder (the image_encoder/ and "
            "image_processor/ folders of a Wan2.1 I2V diffusers repo, or the clip_vision file ComfyUI uses)."
        )
    width = getattr(getattr(encoder, "config", None), "hidden_size", None)
    if width is not None and config.image_embed_dim is not None and int(width) != int(config.image_embed_dim):
        raise InputError(
            f"model.image_encoder: its hidden states are {width} wide but the backbone takes {config.image_embed_dim}"
            "-wide image embeddings. Load the CLIP vision encoder that belongs to this backbone (Wan2.1: "
            "open-clip ViT-H/14)."
        )


def reference_image(pixels: Tensor):
    """The reference ``[1, H, W, 3]`` 0..1 as the 8-bit RGB PIL image a user hands diffusers' pipelines."""
    from PIL import Image

    array = (pixels[0].detach().float().cpu() * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(array, mode="RGB")


def clip_image_embeds(model, pixels: Tensor) -> Tensor:
    """The CLIP embedding ``[1, T, D]`` of the reference ``[1, H, W, 3]`` 0..1, as ``WanImageToVideoPipeline.
    encode_image`` makes it: the processor on the RGB image, then the encoder's penultimate hidden states."""
    with using(model, "image_encoder") as encoder:
        device = next(encoder.parameters()).device
        inputs = model.image_processor(images=reference_image(pixels), return_tensors="pt").to(device)
        with torch.no_grad():
            return encoder(**inputs, output_hidden_states=True).hidden_states[-2]


def image_window(model, cond: Conditioning, latent_frames: int) -> Tensor:
    """The image-conditioning channels ``[1, latent_frames, spec.image_channels, h, w]`` of a window of
    `latent_frames` latent frames (the reference frame included), as each family's diffusers pipeline builds them:

    CogVideoX I2V, 1.0 and 1.5: the reference latent in frame 0, zeros after. (On 1.5,
    CogVideoXImageToVideoPipeline.prepare_latents would repeat the image latent into a second frame for an odd
    latent count, but ``__call__`` first pads the count to a multiple of ``patch_size_t`` and drops the padded
    leading frame after denoising, so that branch never runs: the image latent sits in frame 0 only, which is
    dropped, exactly like our leading reference frame. tests/test_wan_conditioning.py checks it against ``__call__``.)
    Wan2.1 I2V: the 4-channel first-frame mask, then the normalised latent of the pixel video [reference, frames of
    zeros in the VAE's -1..1 input range] of the window's length, encoded in one VAE call (the causal VAE makes
    every later latent depend on the image), cached in `cond` per window length; Wan2.2 TI2V: no channels (the
    sampler puts the reference latent into frame 0 itself). On the device and dtype of ``cond.reference``.
    """
    config = backbone_config(model)
    ref = cond.reference
    if latent_frames < 1:
        raise InputError(f"image_window: latent_frames={latent_frames}; a window holds at least the reference frame.")
    if config.image_conditioning == "first_frame":
        return ref.new_zeros(1, latent_frames, 0, *ref.shape[3:])
    if config.image_conditioning == "latent_channels":
        pt = config.patch_size_t
        if pt is not None and latent_frames % pt:
            raise InputError(
                f"image_window: {latent_frames} latent frames; {config.variant} windows hold a multiple of the "
                f"temporal patch size {pt}."
            )
        return torch.cat([ref, ref.new_zeros(1, latent_frames - 1, *ref.shape[2:])], dim=1)
    if latent_frames not in cond.window_cache:
        cond.window_cache[latent_frames] = _wan_i2v_window(model, cond, latent_frames)
    return cond.window_cache[latent_frames]


def _wan_i2v_window(model, cond: Conditioning, latent_frames: int) -> Tensor:
    """Wan2.1 I2V's first-frame mask and condition latents for a window (see `image_window`)."""
    if cond.reference_pixels is None:
        raise InputError(
            "conditioning.reference_pixels: missing; Wan2.1 I2V encodes the reference again as the first frame of "
            "each window's video. Build the conditioning with encode_conditioning()."
        )
    ref = cond.reference
    with using(model, "vae") as vae:
        compression = temporal_compression(vae)
        pixels = cond.reference_pixels.float()
        frames = compression * (latent_frames - 1) + 1
        # 0.5 is 0 in the VAE's -1..1 input range: the pipeline's zero frames after its normalised image
        video = torch.cat([pixels, pixels.new_full((frames - 1, *pixels.shape[1:]), 0.5)], dim=0)
        latents = encode_frames(vae, video, name="conditioning.reference_pixels", image_latents=True, tiling=None)
    mask = torch.zeros(1, latent_frames, WAN_MASK_CHANNELS, *ref.shape[3:], device=latents.device,
                       dtype=latents.dtype)
    mask[:, 0] = 1.0  # all 4 mask channels of latent frame 0: the image frame, repeated over the temporal group
    return torch.cat([mask, latents], dim=2).to(device=ref.device, dtype=ref.dtype)


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
    compression = temporal_compression(vae)

    def encode(frames: Tensor, name: str) -> Tensor:
        return encode_frames(vae, frames, name=name, image_latents=True, tiling=tiling)

    def grid_masks(masks: Tensor, name: str) -> Tensor:
        return masks_to_latent_grid(masks, grid, name=name, compression=compression).to(vae.device)

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
    return Conditioning(reference=reference, cues=cues, num_frames=num, padded_frames=padded, fps=fps, notes=notes,
                        reference_pixels=triplet.reference.detach().float().cpu())
