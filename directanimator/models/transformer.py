"""The CueFusion DiT: a diffusers CogVideoX or Wan transformer whose blocks are wrapped by CueFusion (DESIGN.md 5).

How cue tokens reach the wrapped blocks is in `directanimator.models.fusion`; what differs between the backbone
families is in `directanimator.models.family`. Latent sizes each backbone accepts are checked here
(`check_latent_shape_for`) and stated in one sentence (`positional_embedding_case`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping

import torch
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from torch import Tensor, nn

from ..errors import CheckpointError, InputError
from .configs import CueFusionConfig, fingerprint
from .cue_latents import CueLatents
from .family import family_of, spec_from_config, spec_of
from .fusion import (
    NUM_MODULATIONS,
    CueFusion,
    CueFusionBlock,
    CuePatchEmbed,
    CueTokens,
    WanCueFusionBlock,
)
from .memory import execution_device

log = logging.getLogger(__name__)

def _crop_region(grid: tuple[int, int], base_w: int, base_h: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a ``grid`` (h, w) lands when fitted, aspect kept, into the ``base_h x base_w`` training grid, centred.

    CogVideoX 1.0 trained its rotary embeddings on this normalised grid.
    """
    h, w = grid
    if h / w > base_h / base_w:
        new_h, new_w = base_h, int(round(base_h / h * w))
    else:
        new_h, new_w = int(round(base_w / w * h)), base_w
    top, left = int(round((base_h - new_h) / 2.0)), int(round((base_w - new_w) / 2.0))
    return (top, left), (top + new_h, left + new_w)


def latent_frames_for_sample_frames(config: Mapping[str, Any]) -> int:
    """Latent frames of the learned positional table (CogVideoX-5B-I2V: 49 pixel frames -> 13)."""
    return (int(config["sample_frames"]) - 1) // int(config.get("temporal_compression_ratio", 4)) + 1


def check_latent_shape_for(config: Mapping[str, Any], num_latent_frames: int, height: int, width: int) -> None:
    """Raise InputError when a backbone of `config` (CogVideoX or Wan) cannot take ``[F', C, height, width]``
    latents."""
    spec = spec_from_config(config)
    p, pt = spec.patch_size, spec.patch_size_t
    if num_latent_frames < 1:
        raise InputError(f"latents: {num_latent_frames} latent frames; at least 1 is needed.")
    if height % p or width % p:
        raise InputError(
            f"latents: grid {height}x{width} (h x w) is not divisible by the patch size {p}. Use a working size that "
            f"is a multiple of the VAE's factor times {p} px (16 px for an 8x VAE, 32 px for Wan2.2's 16x VAE)."
        )
    if pt is not None and num_latent_frames % int(pt):
        raise InputError(
            f"latents: {num_latent_frames} latent frames, but this backbone ({spec.variant}) groups latent frames "
            f"in patches of {pt}. Use a multiple of {pt} latent frames: with the leading reference latent that means "
            "8m+1 driving frames (9, 17, 25, ...), or pad the video by one latent frame."
        )
    if spec.family == "wan":
        limit = spec.max_rotary_positions
        if max(num_latent_frames, height // p, width // p) > limit:
            raise InputError(
                f"latents: [F'={num_latent_frames}, h={height}, w={width}] exceeds this backbone's rotary table of "
                f"{limit} positions per axis; use a shorter window or a smaller working size."
            )
        return
    vae_factor = 8
    if spec.use_learned_positional_embeddings:
        want_f = latent_frames_for_sample_frames(config)
        want_h, want_w = spec.sample_height, spec.sample_width
        if (num_latent_frames, height, width) != (want_f, want_h, want_w):
            raise InputError(
                f"latents: [F'={num_latent_frames}, h={height}, w={width}], but this backbone has learned positional "
                f"embeddings for exactly F'={want_f} latent frames at {want_h}x{want_w} latents "
                f"({want_h * vae_factor}x{want_w * vae_factor} px, {(want_f - 1) * 4 + 1} frames). With the leading "
                f"reference frame a window holds {(want_f - 2) * 4 + 1} driving frames: resize the video to "
                f"{want_w * vae_factor}x{want_h * vae_factor} and use context windows of that length."
            )
    elif pt is not None and spec.use_rotary_positional_embeddings:
        max_h, max_w = spec.sample_height, spec.sample_width
        if height > max_h or width > max_w:
            raise InputError(
                f"latents: grid {height}x{width} exceeds the rotary table of this backbone ({max_h}x{max_w} latents, "
                f"{max_h * vae_factor}x{max_w * vae_factor} px). Use a smaller working size."
            )


def positional_embedding_case(config: Mapping[str, Any]) -> str:
    """One sentence saying which sizes and lengths the backbone's positional embeddings accept (DESIGN.md 10)."""
    spec = spec_from_config(config)
    if spec.family == "wan":
        # the VAE is not part of the transformer config; the variant tells it: TI2V-5B's 48-channel latents come from
        # the 16x Wan2.2 VAE, the others' from the 8x Wan2.1 VAE
        multiple = (16 if spec.variant == "wan-ti2v" else 8) * spec.patch_size
        return (f"rotary positional embeddings only (Wan, {spec.variant}): any length and any size that is a "
                f"multiple of {multiple} px, up to {spec.max_rotary_positions} positions per axis")
    if spec.use_learned_positional_embeddings:
        f = latent_frames_for_sample_frames(config)
        h, w = spec.sample_height * 8, spec.sample_width * 8
        return (f"learned positional embeddings: exactly {f} latent frames ({(f - 1) * 4 + 1} frames) at {w}x{h} px; "
                f"a window is 1 reference latent + {f - 1} video latents ({(f - 2) * 4 + 1} driving frames)")
    if spec.use_rotary_positional_embeddings:
        if spec.patch_size_t is not None:
            h, w = spec.sample_height * 8, spec.sample_width * 8
            return (f"rotary positional embeddings only: any length with an even number of latent frames, any size "
                    f"that is a multiple of 16 px up to {w}x{h} px")
        return "rotary positional embeddings only: any length, any size that is a multiple of 16 px"
    return "sin-cos positional embeddings computed for the input size: any length and size (multiples of 16 px)"


class DirectAnimatorTransformer(nn.Module):
    """A diffusers backbone (``.backbone``: `CogVideoXTransformer3DModel` or `WanTransformer3DModel`) with CueFusion
    around every block and cue patch embeddings.

    Untrained, it equals the backbone exactly: the cue patch embeddings and the modulation/text up-projections
    start at zero. Gradient checkpointing, attention processors and LoRA adapters are the backbone's own
    (``model.backbone.enable_gradient_checkpointing()``, ``model.backbone.add_adapter(...)``). What differs between
    the families is in `family` (`directanimator.models.family`); `spec` states the backbone's facts.
    """

    def __init__(self, backbone: nn.Module, *, config: CueFusionConfig | None = None) -> None:
        super().__init__()
        self.family = family_of(backbone)
        self.spec = spec_of(backbone)
        self.cue_config = (config or CueFusionConfig()).validate()
        if self.spec.family != "cogvideox":
            for name in ("reference_in_every_frame", "residual_reference"):
                if getattr(self.cue_config, name):
                    raise InputError(
                        f"CueFusionConfig.{name} (training config: model.{name}=true): a mode of CogVideoX-layout "
                        f"models trained from scratch (the reference latent on channels); this {self.spec.variant} "
                        f"backbone conditions on the reference its own way ({self.spec.image_conditioning}). "
                        f"Set it to false.")
        self.backbone = backbone
        spec = self.spec
        inner_dim = spec.inner_dim
        self.inner_dim = inner_dim
        self.cue_channels = self.cue_config.cue_channels or spec.out_channels
        reference = next(backbone.parameters())
        factory = dict(device=reference.device, dtype=_weights_dtype(backbone))

        def embed() -> CuePatchEmbed:
            return CuePatchEmbed(self.cue_channels + 1, inner_dim, patch_size=spec.patch_size,
                                 patch_size_t=spec.patch_size_t).to(**factory)

        self.pose_embed = embed()
        self.face_embed = embed()
        # The full-rank part of every block's Linear_l, shared; handed to the blocks with the cue tokens.
        self.shared_modulation = nn.Linear(spec.time_embed_dim, NUM_MODULATIONS * inner_dim).to(**factory)
        nn.init.zeros_(self.shared_modulation.weight)
        nn.init.zeros_(self.shared_modulation.bias)
        blocks = self.family.blocks(backbone)
        for i, block in enumerate(blocks):
            if isinstance(block, (CueFusionBlock, WanCueFusionBlock)):
                raise InputError("backbone: its blocks are already wrapped by another DirectAnimatorTransformer.")
            fusion = CueFusion(inner_dim, spec.time_embed_dim, modulation_rank=self.cue_config.modulation_rank,
                               text_rank=self.cue_config.text_rank).to(**factory)
            blocks[i] = self.family.wrap_block(block, fusion)
        self._rotary_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    # ----------------------------------------------------------------- properties
    @property
    def latent_channels(self) -> int:
        return self.spec.out_channels

    @property
    def blocks(self) -> nn.ModuleList:
        """The wrapped blocks (`CueFusionBlock` / `WanCueFusionBlock`), in order."""
        return self.family.blocks(self.backbone)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights (the cue modules are built in the dtype most backbone weights have)."""
        return self.pose_embed.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        """The device the model computes on: under block offload the hooks' onload device (its weights wait on the
        CPU between forwards), else the device of its weights."""
        return execution_device(self)

    @property
    def config(self):
        """The backbone's diffusers config."""
        return self.backbone.config

    @property
    def fingerprint(self) -> dict:
        return fingerprint(dict(self.backbone.config))

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    # ----------------------------------------------------------------- parameters and state
    def cue_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """``(name, module)`` of every cue module: patch embeddings, shared modulation, one CueFusion per block."""
        yield "pose_embed", self.pose_embed
        yield "face_embed", self.face_embed
        yield "shared_modulation", self.shared_modulation
        for i, block in enumerate(self.blocks):
            yield f"blocks.{i}", block.fusion

    def cue_parameters(self) -> list[nn.Parameter]:
        return [p for _, m in self.cue_modules() for p in m.parameters()]

    def cue_state_dict(self) -> dict[str, Tensor]:
        """CueFusion weights under stable names (``pose_embed.*``, ``face_embed.*``, ``shared_modulation.*``,
        ``blocks.<i>.*``)."""
        return {f"{name}.{k}": v for name, m in self.cue_modules() for k, v in m.state_dict().items()}

    def load_cue_state_dict(self, state: Mapping[str, Tensor], *, source: str = "checkpoint") -> None:
        """Load `cue_state_dict` output; raise CheckpointError naming `source` on missing, extra or mis-shaped
        tensors."""
        own = self.cue_state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise CheckpointError(
                f"{source}: CueFusion weights do not fit this model ({len(missing)} missing, e.g. {missing[:3]}; "
                f"{len(extra)} unexpected, e.g. {extra[:3]}). It was saved for another backbone depth or another "
                "CueFusion configuration."
            )
        bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
        if bad:
            raise CheckpointError(
                f"{source}: CueFusion tensor shapes differ from this model ({'; '.join(bad[:3])}). The checkpoint was "
                "trained for another backbone (inner dim, patch size, latent channels) or CueFusion ranks."
            )
        with torch.no_grad():
            for name, module in self.cue_modules():
                prefix = name + "."
                module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The backbone's weights under plain diffusers names (without the wrappers and the cue modules)."""
        return {_plain_key(k): v for k, v in self.backbone.state_dict().items() if ".fusion." not in k}

    def load_backbone_state_dict(self, state: Mapping[str, Tensor], *, source: str = "checkpoint") -> None:
        """Load plain diffusers-named backbone weights; raise CheckpointError naming `source` when they do not fit."""
        wrapped = {_wrapped_key(k): v for k, v in state.items()}
        own = {k: v for k, v in self.backbone.state_dict().items() if ".fusion." not in k}
        missing = sorted(set(own) - set(wrapped))
        extra = sorted(set(wrapped) - set(own))
        bad = [f"{_plain_key(k)}: {tuple(wrapped[k].shape)} vs {tuple(v.shape)}"
               for k, v in own.items() if k in wrapped and wrapped[k].shape != v.shape]
        if missing or extra or bad:
            raise CheckpointError(
                f"{source}: backbone weights do not fit this backbone (missing {len(missing)}, unexpected {len(extra)}, "
                f"mis-shaped {len(bad)}: {(missing + extra + bad)[:3]}). The checkpoint was made for another backbone."
            )
        self.backbone.load_state_dict(wrapped, strict=False)

    # ----------------------------------------------------------------- checks
    def check_latent_shape(self, num_latent_frames: int, h: int, w: int) -> None:
        """Raise InputError for latent sizes this backbone cannot take (see `check_latent_shape_for`)."""
        check_latent_shape_for(dict(self.backbone.config), num_latent_frames, h, w)

    def _check_inputs(self, hidden_states: Tensor, encoder_hidden_states: Tensor, cues: CueLatents | None,
                      image_embeds: Tensor | None, timestep: Tensor) -> None:
        spec = self.spec
        if hidden_states.ndim != 5:
            raise InputError(
                f"hidden_states: expected [B, F', C, h, w] latents, got shape {tuple(hidden_states.shape)}."
            )
        b, f, c, h, w = hidden_states.shape
        if c != spec.in_channels:
            what = {
                "latent_channels": f"noisy latents with {spec.out_channels} channels concatenated with the reference "
                                   "image latents on channels",
                "mask_and_latent": f"noisy latents ({spec.out_channels}), the first-frame mask (4) and the image "
                                   f"condition latents ({spec.out_channels}) on channels",
                "first_frame": "the latents, the reference latent in the first frame",
            }[spec.image_conditioning]
            raise InputError(f"hidden_states: {c} channels, but the backbone takes {spec.in_channels} ({what}).")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != b \
                or encoder_hidden_states.shape[2] != spec.text_embed_dim:
            raise InputError(
                f"encoder_hidden_states: expected [B={b}, L, {spec.text_embed_dim}] text embeddings, got "
                f"{tuple(encoder_hidden_states.shape)}. Use the checkpoint's null-text embedding or the backbone's own "
                "text encoder's embeddings."
            )
        fixed_text = self._fixed_text_length()
        if fixed_text is not None and encoder_hidden_states.shape[1] != fixed_text:
            raise InputError(
                f"encoder_hidden_states: {encoder_hidden_states.shape[1]} text tokens, but this backbone expects "
                f"exactly {fixed_text}; pad or trim the text embeddings (directanimator.text.fit_text_embeddings)."
            )
        if spec.image_embed_dim is not None:
            if image_embeds is None or image_embeds.ndim != 3 or image_embeds.shape[0] != b \
                    or image_embeds.shape[2] != spec.image_embed_dim:
                found = None if image_embeds is None else tuple(image_embeds.shape)
                raise InputError(
                    f"image_embeds: this backbone ({spec.variant}) takes the reference's CLIP image embedding "
                    f"[B={b}, L, {spec.image_embed_dim}], got {found}. Encode the reference with the backbone's image "
                    "encoder (encode_conditioning does)."
                )
        elif image_embeds is not None:
            raise InputError(f"image_embeds: this backbone ({spec.variant}) takes no image embedding; pass None.")
        if timestep.ndim == 2 and (spec.family != "wan" or tuple(timestep.shape) != (b, f)):
            raise InputError(
                f"timestep: shape {tuple(timestep.shape)}; give [B] (one per sample)"
                + (f" or [B={b}, F'={f}] (one per latent frame)." if spec.family == "wan" else ".")
            )
        self.check_latent_shape(f, h, w)
        if cues is not None:
            if not isinstance(cues, CueLatents):
                raise InputError(f"cues: expected CueLatents or None, got {type(cues).__name__}.")
            cues.check_matches(hidden_states)
            if cues.latent_channels != self.cue_channels:
                raise InputError(
                    f"cues: pose/face latents have {cues.latent_channels} channels, but the cue embeddings take "
                    f"{self.cue_channels} (the VAE's latent channels). Encode the cue videos with the model's VAE."
                )

    def _fixed_text_length(self) -> int | None:
        """Text tokens the backbone requires exactly: CogVideoX with a positional table, Wan with image
        cross-attention (its processor takes everything before the last 512 context tokens as image tokens)."""
        if self.spec.family == "wan":
            return self.spec.max_text_seq_length if self.spec.image_embed_dim is not None else None
        patch_embed = self.backbone.patch_embed
        uses_table = patch_embed.use_positional_embeddings or patch_embed.use_learned_positional_embeddings
        return self.spec.max_text_seq_length if uses_table else None

    # ----------------------------------------------------------------- forward
    def rotary_embeddings(self, num_latent_frames: int, h: int, w: int,
                          device: torch.device | None = None) -> tuple[Tensor, Tensor] | None:
        """CogVideoX: rotary (cos, sin) for a latent grid, as its pipelines compute them; None without rotary. Wan
        computes its rotary table inside the backbone (None here)."""
        if self.spec.family != "cogvideox":
            return None
        bc = self.backbone.config
        if not bc.use_rotary_positional_embeddings:
            return None
        device = torch.device(device or self.device)
        key = (num_latent_frames, h, w, device)
        if key not in self._rotary_cache:
            p, pt = bc.patch_size, bc.patch_size_t
            grid = (h // p, w // p)
            base_w, base_h = bc.sample_width // p, bc.sample_height // p
            if pt is None:
                rope = get_3d_rotary_pos_embed(embed_dim=bc.attention_head_dim,
                                               crops_coords=_crop_region(grid, base_w, base_h), grid_size=grid,
                                               temporal_size=num_latent_frames, device=device)
            else:
                rope = get_3d_rotary_pos_embed(embed_dim=bc.attention_head_dim, crops_coords=None, grid_size=grid,
                                               temporal_size=(num_latent_frames + pt - 1) // pt, grid_type="slice",
                                               max_size=(base_h, base_w), device=device)
            if len(self._rotary_cache) > 16:
                self._rotary_cache.clear()
            self._rotary_cache[key] = rope
        return self._rotary_cache[key]

    def embed_cues(self, cues: CueLatents) -> tuple[Tensor, Tensor]:
        """Cue tokens ``(c_p, c_f)``, each ``[B, N, D]``, aligned with the vision tokens."""
        cues = cues.to(device=self.device, dtype=self.dtype)
        pose = self.pose_embed(torch.cat([cues.pose, cues.body_mask], dim=2))
        face = self.face_embed(torch.cat([cues.face, cues.face_mask], dim=2))
        return pose, face

    def forward(self, hidden_states: Tensor, encoder_hidden_states: Tensor, timestep: Tensor | int | float, *,
                cues: CueLatents | None = None, ofs: Tensor | float | None = None,
                cue_weight: Tensor | float | None = None, timestep_cond: Tensor | None = None,
                image_embeds: Tensor | None = None, attention_kwargs: dict[str, Any] | None = None) -> Tensor:
        """Predict ``[B, F', Cz, h, w]`` from the backbone's input ``[B, F', C_in, h, w]`` (noisy latents with the
        image conditioning of the family, `directanimator.models.family.ImageConditioning`).

        The prediction is the backbone's own: v on CogVideoX, the flow velocity on Wan. `cues` None runs the bare
        backbone (the guidance negative branch). `cue_weight` scales the cue injection per sample (``[B]`` or a
        float; 0 equals the bare backbone), e.g. for cue dropout or a batched guidance pass. `timestep`: ``[B]`` or a
        scalar; on Wan also ``[B, F']``, one per latent frame (Wan2.2 TI2V's clean first frame has 0).
        `image_embeds`: the reference's CLIP embedding on Wan2.1 I2V. `ofs` defaults to 2.0 for backbones with an
        ofs embedding (CogVideoX 1.5). With ``cue_config.reference_in_every_frame`` the leading frame's image
        latents are first copied into every frame.
        """
        device = hidden_states.device
        b = hidden_states.shape[0] if hidden_states.ndim == 5 else 0
        timestep = torch.as_tensor(timestep, device=device)
        if timestep.ndim == 0 or timestep.numel() == 1:
            timestep = timestep.reshape(1).expand(b)
        self._check_inputs(hidden_states, encoder_hidden_states, cues, image_embeds, timestep)
        _, f, _, h, w = hidden_states.shape
        if self.cue_config.reference_in_every_frame:
            hidden_states = reference_in_every_frame(hidden_states, self.latent_channels)
        tokens = None
        if cues is not None:
            pose, face = self.embed_cues(cues)
            weight = None
            if cue_weight is not None:
                weight = torch.as_tensor(cue_weight, device=device, dtype=pose.dtype).reshape(-1, 1, 1)
                if weight.shape[0] not in (1, b):
                    raise InputError(f"cue_weight: {weight.shape[0]} values for a batch of {b}; give 1 or {b}.")
            # The noisy frames' timestep: per-frame timesteps give the clean first frame 0 and the rest t.
            sample_t = timestep if timestep.ndim == 1 else timestep.amax(dim=1)
            tokens = CueTokens.build(pose, face, eps=self.cue_config.norm_eps, weight=weight,
                                     shared=self.shared_modulation,
                                     temb=self.family.time_embedding(self.backbone, sample_t))
        extra = dict(ofs=ofs, timestep_cond=timestep_cond, image_embeds=image_embeds,
                     image_rotary_emb=self.rotary_embeddings(f, h, w, device))
        return self.family.run(self.backbone, hidden_states, encoder_hidden_states, timestep, cue_tokens=tokens,
                               attention_kwargs=attention_kwargs, extra=extra)


def _weights_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype holding most of `module`'s weights. A Wan loaded in bf16 keeps a few small modules in fp32
    (diffusers' ``_keep_in_fp32_modules``: its first parameter, ``scale_shift_table``, among them), which must not
    decide the dtype of the cue modules and the inputs."""
    sizes: dict[torch.dtype, int] = {}
    for param in module.parameters():
        if param.is_floating_point():
            sizes[param.dtype] = sizes.get(param.dtype, 0) + param.numel()
    return max(sizes, key=sizes.get) if sizes else torch.float32


def reference_in_every_frame(hidden_states: Tensor, latent_channels: int) -> Tensor:
    """``[B, F', 2*Cz, h, w]`` with the image-latent channels (after the first `latent_channels`) of the leading
    frame copied into every frame; a blank (dropped) reference stays blank everywhere."""
    noisy, image = hidden_states[:, :, :latent_channels], hidden_states[:, :, latent_channels:]
    return torch.cat([noisy, image[:, :1].expand_as(image)], dim=2)


_BLOCK_PREFIXES = ("transformer_blocks.", "blocks.")  # CogVideoX, Wan


def _split_block_key(key: str) -> tuple[str, str, str] | None:
    for prefix in _BLOCK_PREFIXES:
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            if index.isdigit():
                return prefix, index, rest
    return None


def _plain_key(key: str) -> str:
    """``transformer_blocks.3.block.attn1...`` -> ``transformer_blocks.3.attn1...`` (diffusers names; Wan's
    ``blocks.3.block.attn1...`` likewise)."""
    parts = _split_block_key(key)
    if parts and parts[2].startswith("block."):
        return f"{parts[0]}{parts[1]}.{parts[2][len('block.'):]}"
    return key


def _wrapped_key(key: str) -> str:
    """Inverse of `_plain_key`."""
    parts = _split_block_key(key)
    if parts and not parts[2].startswith(("block.", "fusion.")):
        return f"{parts[0]}{parts[1]}.block.{parts[2]}"
    return key


def plain_backbone_key(key: str) -> str:
    """Public alias of the wrapper-to-diffusers key mapping (used for LoRA state dicts)."""
    return _plain_key(key)


def wrapped_backbone_key(key: str) -> str:
    """Public alias of the diffusers-to-wrapper key mapping."""
    return _wrapped_key(key)
