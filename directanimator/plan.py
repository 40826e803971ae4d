"""How a loaded model samples: the one answer the nodes, the CLI, the demo, validation and the benchmarks share.

`sampling_plan` decides the cue options (the checkpoint's, then the caller's), the working size (a backbone with
learned positional embeddings fixes it, DESIGN.md 10; sides are multiples of the VAE factor times the patch size:
16 px on CogVideoX and Wan2.1, 32 px on Wan2.2) and the latent layout (the leading reference frame, the fixed
window, the VAE's compression); `frames_from_latents` turns sampled latents back into frames (drop the reference
frame, decode, trim to the driving frame count).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Callable

from torch import Tensor

from .conditioning import backbone_config, fixed_latent_frames, plan_frame_count, using
from .cues.types import CueConfig
from .errors import InputError
from .tensors import MIN_SIDE_PX
from .vae_io import TEMPORAL_COMPRESSION, decode_latents, latent_frames_for, spatial_compression, temporal_compression

__all__ = ["REFERENCE_LATENT_FRAMES", "SamplingPlan", "cue_config_for", "frames_from_latents", "sampling_plan"]

# the reference image is encoded alone into one leading latent frame, generated and dropped (DESIGN.md 5)
REFERENCE_LATENT_FRAMES = 1


@dataclass(frozen=True)
class SamplingPlan:
    """How one model samples: the cue options to extract with and the latent layout they lead to."""

    cue_config: CueConfig  # its height and width, when both set, are the working size in px
    fixed_latent_frames: int | None  # latent frames per pass (reference included) a learned positional table fixes
    patch_size_t: int | None  # latent frames the backbone patches together (CogVideoX 1.5: 2), None: 1
    spatial_compression: int  # px per latent cell along each side (8, or 16 for Wan2.2's VAE)
    reference_frames: int = REFERENCE_LATENT_FRAMES  # leading latent frames that hold the reference
    temporal_compression: int = TEMPORAL_COMPRESSION  # pixel frames per latent frame after the first
    patch_size: int = 2  # latent cells the backbone patches together along each side

    @property
    def size_multiple(self) -> int:
        """Working sides must be multiples of this many px: the VAE factor times the patch size."""
        return self.spatial_compression * self.patch_size

    @property
    def size(self) -> tuple[int, int] | None:
        """The working size ``(height, width)`` in px the plan fixes; None: derived from the driving video."""
        config = self.cue_config
        return (int(config.height), int(config.width)) if config.height and config.width else None

    @property
    def window(self) -> int | None:
        """The default context window in video latent frames: the fixed length less the reference, or None (the
        whole video in one pass)."""
        return self.fixed_latent_frames - self.reference_frames if self.fixed_latent_frames else None

    def frame_count(self, num_frames: int) -> int:
        """Driving frames to encode for a clip of `num_frames` (padded by repeating the last; `plan_frame_count`)."""
        return plan_frame_count(num_frames, patch_size_t=self.patch_size_t, min_video_latents=self.window or 1,
                                compression=self.temporal_compression)

    def video_latents(self, num_frames: int) -> int:
        """Video latent frames (the reference not counted) for a clip of `num_frames` driving frames."""
        return latent_frames_for(self.frame_count(num_frames), compression=self.temporal_compression)

    def working_size(self, driving_size: tuple[int, int]) -> tuple[int, int]:
        """The cue working size ``(height, width)`` in px for a driving video of `driving_size` ``(H, W)``: the cue
        options' rule (`directanimator.cues.working_size`), with derived sides rounded to the nearest multiple of
        `size_multiple` (halves up; at least 64 px) where the backbone needs more than the 16 px that rule gives."""
        from .cues import working_size

        height, width = working_size(tuple(driving_size), self.cue_config)[0]
        step = self.size_multiple

        def snap(side: int) -> int:
            return max(-(-MIN_SIDE_PX // step) * step, (side + step // 2) // step * step)

        config = self.cue_config
        return (height if config.height else snap(height)), (width if config.width else snap(width))

    def cue_config_for(self, driving_size: tuple[int, int]) -> CueConfig:
        """The cue options to extract a driving video of `driving_size` ``(H, W)`` with: `cue_config` with the
        working size fixed where this plan rounds the derived one differently from the cue options' own rule
        (Wan2.2: 32 px multiples); `cue_config` itself otherwise. InputError for a size the backbone cannot take."""
        from .cues import working_size

        size = self.working_size(driving_size)
        self.check_size(*size)
        if size == working_size(tuple(driving_size), self.cue_config)[0]:
            return self.cue_config
        return replace(self.cue_config, height=size[0], width=size[1])

    def check_size(self, height: int, width: int) -> None:
        """InputError unless a working size of ``height x width`` px fits the VAE and the backbone's patches."""
        step = self.size_multiple
        if height % step or width % step:
            raise InputError(
                f"working size {width}x{height} px: this backbone needs sides that are multiples of {step} px (VAE "
                f"factor {self.spatial_compression} x patch size {self.patch_size}); set the size to e.g. "
                f"{max(step, round(width / step) * step)}x{max(step, round(height / step) * step)}."
            )

    def latent_shape(self, driving_size: tuple[int, int], num_frames: int) -> tuple[int, int, int]:
        """``(latent frames per pass with the reference, h, w)`` the transformer sees for such a driving clip;
        InputError for a working size the backbone cannot take (`check_size`)."""
        height, width = self.working_size(driving_size)
        self.check_size(height, width)
        frames = self.fixed_latent_frames or self.reference_frames + self.video_latents(num_frames)
        return frames, height // self.spatial_compression, width // self.spatial_compression


def cue_config_for(saved: Mapping[str, Any] | None, *, cue_config: CueConfig | None = None, anchor: str | None = None,
                   default_size: int | None = None, options: Mapping[str, Any] | None = None,
                   name: str = "the model's cue options") -> CueConfig:
    """The cue options to sample with, before the backbone's size rule: `cue_config` or else the checkpoint's
    `saved` ones, then `anchor` (None keeps it), `default_size` as height and width when no height is set, then
    `options` (CueConfig fields, e.g. from --size, --cutoff). Raises CueError or InputError naming a bad value."""
    if cue_config is not None:
        if not isinstance(cue_config, CueConfig):
            raise InputError(f"cue_config: expected a CueConfig, got {type(cue_config).__name__}.")
        config = cue_config.validate()
    else:
        config = CueConfig.from_saved(saved, name=name)
    if anchor is not None:
        config = replace(config, anchor=anchor)
    if config.height is None and default_size:
        config = replace(config, height=default_size, width=default_size)
    return replace(config, **dict(options or {}))  # replace validates (CueConfig.__post_init__)


def sampling_plan(model, *, cue_config: CueConfig | None = None, anchor: str | None = None,
                  default_size: int | None = None, options: Mapping[str, Any] | None = None) -> SamplingPlan:
    """How `model` (an AnimatorModel) samples: `cue_config_for` its saved cue options and the caller's, with the
    working size its learned positional embeddings fix when the options leave the size open.

    The one place that decides it; nodes, CLI, demo, validation and benchmarks call it.
    """
    config = cue_config_for(getattr(model, "cue_config", None), cue_config=cue_config, anchor=anchor,
                            default_size=default_size, options=options)
    backbone = backbone_config(model)
    fixed = fixed_latent_frames(backbone)
    factor = spatial_compression(model.vae)
    if fixed and config.height is None and config.width is None:
        # learned positional embeddings take one size only: make it the working size
        config = replace(config, height=int(backbone.sample_height) * factor,
                         width=int(backbone.sample_width) * factor)
    pt = getattr(backbone, "patch_size_t", None)
    return SamplingPlan(cue_config=config, fixed_latent_frames=fixed, patch_size_t=int(pt) if pt else None,
                        spatial_compression=factor, temporal_compression=temporal_compression(model.vae),
                        patch_size=int(backbone.patch_size))


def frames_from_latents(model, latents: Tensor, *, num_frames: int | None = None, tiling: bool | None = None,
                        tile: tuple[int, int] | None = None,
                        on_chunk: Callable[[int, int], None] | None = None) -> Tensor:
    """Frames ``[F, H, W, 3]`` float32 0..1 on the CPU from sampled latents ``[1, 1 + N, C, h, w]``: the leading
    reference frame dropped, the rest decoded (`decode_latents`: temporal chunks, `tiling`, `tile`, `on_chunk`)
    and trimmed to `num_frames` (the driving clip's count; None keeps every decoded frame)."""
    if latents.ndim != 5 or latents.shape[1] <= REFERENCE_LATENT_FRAMES:
        raise InputError(f"latents: expected [1, 1 + N, C, h, w] with the reference frame first and N >= 1 video "
                         f"latent frames, got shape {tuple(latents.shape)}. Use latents from the sampler.")
    with using(model, "vae") as vae:
        frames = decode_latents(vae, latents[:, REFERENCE_LATENT_FRAMES:], tiling=tiling, tile=tile,
                                on_chunk=on_chunk)
    return frames if num_frames is None else frames[:num_frames]
