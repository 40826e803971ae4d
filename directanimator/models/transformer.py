"""The CueFusion DiT: a diffusers `CogVideoXTransformer3DModel` whose blocks are wrapped by CueFusion (DESIGN.md 5).

Cue tokens travel to the wrapped blocks inside ``attention_kwargs`` under `CUE_TOKENS_KEY`. The backbone hands the
same ``attention_kwargs`` object to every block, also through gradient checkpointing (which re-runs a block with
its original arguments during backward), so recomputation sees exactly the tensors of the first pass and the model
can run several forwards before one backward. The wrapper removes the key before calling the original block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from torch import Tensor, nn

from ..errors import CheckpointError, InputError
from .configs import CueFusionConfig, fingerprint
from .cue_latents import CueLatents

log = logging.getLogger(__name__)

CUE_TOKENS_KEY = "directanimator_cue_tokens"
NUM_MODULATIONS = 6  # (scale, shift, gate) for the pose and the face cue
OFS_DEFAULT = 2.0  # the ofs value CogVideoX 1.5 I2V samples with (diffusers' pipeline uses the same constant)
_BLOCK_PREFIX = "transformer_blocks."


@dataclass
class CueTokens:
    """What every wrapped block needs from the cues, computed once per forward (``[B, N, D]`` unless noted).

    ``LN(c)`` does not depend on the block, so ``c' = c + g * (LN(c) * (1 + s) + b)`` is evaluated per block as
    ``c + g * (1 + s) * LN(c) + g * b`` from precomputed ``LN(c_p)``, ``LN(c_f)`` and ``c_p + c_f``: the same
    function with a quarter of the per-block memory traffic. `weight` ``[B, 1, 1]`` scales the whole injection.
    """

    base: Tensor  # weight * (c_p + c_f)
    pose_norm: Tensor  # LN(c_p)
    face_norm: Tensor  # LN(c_f)
    base_mean: Tensor  # token means, [B, 1, D]
    pose_norm_mean: Tensor
    face_norm_mean: Tensor
    weight: Tensor | None = None
    shared: nn.Module | None = None  # the full-rank modulation shared by all blocks

    @classmethod
    def build(cls, pose: Tensor, face: Tensor, *, eps: float = 1e-6, weight: Tensor | None = None,
              shared: nn.Module | None = None) -> "CueTokens":
        """From the patch-embedded cues ``c_p, c_f`` ``[B, N, D]``."""
        dim = pose.shape[-1]
        base = pose + face if weight is None else (pose + face) * weight
        pose_norm = F.layer_norm(pose, (dim,), eps=eps)
        face_norm = F.layer_norm(face, (dim,), eps=eps)
        return cls(base, pose_norm, face_norm, base.mean(1, keepdim=True), pose_norm.mean(1, keepdim=True),
                   face_norm.mean(1, keepdim=True), weight, shared)


class CuePatchEmbed(nn.Module):
    """Patchify a cue video ``[B, F', C, h, w]`` into tokens ``[B, N, D]`` exactly as the backbone patchifies its input.

    CogVideoX 1.0: a ``p x p`` Conv2d per latent frame; CogVideoX 1.5: a Linear over ``(p_t, p, p)`` patches with
    features ordered ``(C, p_t, p, p)``. Tokens are ordered frame-major, then rows, then columns, so cue token ``n``
    lies on vision token ``n``.
    """

    def __init__(self, in_channels: int, embed_dim: int, *, patch_size: int = 2, patch_size_t: int | None = None,
                 bias: bool = True, zero_init: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.patch_size_t = patch_size_t
        if patch_size_t is None:
            self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        else:
            self.proj = nn.Linear(in_channels * patch_size * patch_size * patch_size_t, embed_dim, bias=bias)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            if self.proj.bias is not None:
                nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, f, c, h, w = x.shape
        p = self.patch_size
        if self.patch_size_t is None:
            # The stride-p, p x p convolution as a matmul over (C, p, p)-flattened patches: the same map, with the
            # Conv2d weight layout kept, and several times faster than a small-channel convolution on CPUs.
            patches = x.reshape(b, f, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, -1, c * p * p)
            return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)
        pt = self.patch_size_t
        x = x.permute(0, 1, 3, 4, 2).reshape(b, f // pt, pt, h // p, p, w // p, p, c)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(4, 7).flatten(1, 3)
        return self.proj(x)


class CueFusion(nn.Module):
    """One CF-DiT fusion module: modulates the cue tokens from the block's time embedding with gated residuals.

    ``(s_p, b_p, g_p, s_f, b_f, g_f) = shared(SiLU(e_t)) + up(down(SiLU(e_t)))``, i.e. ``Linear_l`` factorised as a
    full-rank projection shared by all blocks plus a low-rank per-block part with a per-block bias;
    ``c' = c + g * (LN(c) * (1 + s) + b)`` for the pose and the face cue. The vision stream gets ``c_p' + c_f'``,
    the text stream a low-rank projection of its token mean. ``up``, ``text_up`` (and the shared projection) start
    at zero.
    """

    def __init__(self, dim: int, time_embed_dim: int, *, modulation_rank: int = 64, text_rank: int = 64) -> None:
        super().__init__()
        self.down = nn.Linear(time_embed_dim, modulation_rank, bias=False)
        self.up = nn.Linear(modulation_rank, NUM_MODULATIONS * dim)
        self.text_down = nn.Linear(dim, text_rank, bias=False)
        self.text_up = nn.Linear(text_rank, dim, bias=False)
        # The down projections keep their random (Kaiming-uniform) init so that gradients reach the zero `up`
        # matrices; the output of the whole module is exactly zero at initialisation.
        for layer in (self.up, self.text_up):
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, hidden_states: Tensor, cues: CueTokens, temb: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``hidden_states + c_p' + c_f'`` and the text-stream addition ``[B, 1, D]``."""
        t = F.silu(temb)
        mod = self.up(self.down(t))
        if cues.shared is not None:
            mod = mod + cues.shared(t)
        s_p, b_p, g_p, s_f, b_f, g_f = mod.unsqueeze(1).chunk(NUM_MODULATIONS, dim=-1)  # each [B, 1, D]
        a_p, a_f, offset = g_p * (1 + s_p), g_f * (1 + s_f), g_p * b_p + g_f * b_f
        if cues.weight is not None:
            a_p, a_f, offset = a_p * cues.weight, a_f * cues.weight, offset * cues.weight
        # One new tensor, then in-place updates: these [B, N, D] passes are the whole per-block cost of the cues.
        out = torch.addcmul(hidden_states, a_p, cues.pose_norm)
        out.addcmul_(a_f, cues.face_norm).add_(cues.base).add_(offset)
        mean = cues.base_mean + offset + a_p * cues.pose_norm_mean + a_f * cues.face_norm_mean
        return out, self.text_up(self.text_down(mean))


class CueFusionBlock(nn.Module):
    """A backbone block wrapped with its CueFusion module; same call signature as `CogVideoXBlock`."""

    def __init__(self, block: nn.Module, fusion: CueFusion) -> None:
        super().__init__()
        self.block = block
        self.fusion = fusion

    def forward(self, hidden_states: Tensor, encoder_hidden_states: Tensor, temb: Tensor,
                image_rotary_emb: tuple[Tensor, Tensor] | None = None,
                attention_kwargs: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        cues = attention_kwargs.get(CUE_TOKENS_KEY) if attention_kwargs else None
        if cues is not None:
            # A new dict: the caller's object must stay intact for gradient-checkpoint recomputation.
            attention_kwargs = {k: v for k, v in attention_kwargs.items() if k != CUE_TOKENS_KEY}
            hidden_states, text = self.fusion(hidden_states, cues, temb)
            encoder_hidden_states = encoder_hidden_states + text
        return self.block(hidden_states, encoder_hidden_states, temb, image_rotary_emb, attention_kwargs)


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
    """Raise InputError when a backbone of `config` cannot take ``[F', C, height, width]`` latents."""
    p = int(config.get("patch_size", 2))
    pt = config.get("patch_size_t")
    vae_factor = 8
    if num_latent_frames < 1:
        raise InputError(f"latents: {num_latent_frames} latent frames; at least 1 is needed.")
    if height % p or width % p:
        raise InputError(
            f"latents: grid {height}x{width} (h x w) is not divisible by the patch size {p}. Use a working size "
            f"that is a multiple of {8 * p} px (e.g. {height * 8 // (8 * p) * 8 * p}x{width * 8 // (8 * p) * 8 * p})."
        )
    if pt is not None and num_latent_frames % int(pt):
        raise InputError(
            f"latents: {num_latent_frames} latent frames, but this backbone (CogVideoX 1.5 layout) groups latent frames "
            f"in patches of {pt}. Use a multiple of {pt} latent frames: with the leading reference latent that means "
            "8m+1 driving frames (9, 17, 25, ...), or pad the video by one latent frame."
        )
    if config.get("use_learned_positional_embeddings"):
        want_f = latent_frames_for_sample_frames(config)
        want_h, want_w = int(config["sample_height"]), int(config["sample_width"])
        if (num_latent_frames, height, width) != (want_f, want_h, want_w):
            raise InputError(
                f"latents: [F'={num_latent_frames}, h={height}, w={width}], but this backbone has learned positional "
                f"embeddings for exactly F'={want_f} latent frames at {want_h}x{want_w} latents "
                f"({want_h * vae_factor}x{want_w * vae_factor} px, {(want_f - 1) * 4 + 1} frames). With the leading "
                f"reference frame a window holds {(want_f - 2) * 4 + 1} driving frames: resize the video to "
                f"{want_w * vae_factor}x{want_h * vae_factor} and use context windows of that length."
            )
    elif pt is not None and config.get("use_rotary_positional_embeddings"):
        max_h, max_w = int(config["sample_height"]), int(config["sample_width"])
        if height > max_h or width > max_w:
            raise InputError(
                f"latents: grid {height}x{width} exceeds the rotary table of this backbone ({max_h}x{max_w} latents, "
                f"{max_h * vae_factor}x{max_w * vae_factor} px). Use a smaller working size."
            )


def positional_embedding_case(config: Mapping[str, Any]) -> str:
    """One sentence saying which sizes and lengths the backbone's positional embeddings accept (DESIGN.md 10)."""
    if config.get("use_learned_positional_embeddings"):
        f = latent_frames_for_sample_frames(config)
        h, w = int(config["sample_height"]) * 8, int(config["sample_width"]) * 8
        return (f"learned positional embeddings: exactly {f} latent frames ({(f - 1) * 4 + 1} frames) at {w}x{h} px; "
                f"a window is 1 reference latent + {f - 1} video latents ({(f - 2) * 4 + 1} driving frames)")
    if config.get("use_rotary_positional_embeddings"):
        if config.get("patch_size_t") is not None:
            h, w = int(config["sample_height"]) * 8, int(config["sample_width"]) * 8
            return (f"rotary positional embeddings only: any length with an even number of latent frames, any size "
                    f"that is a multiple of 16 px up to {w}x{h} px")
        return "rotary positional embeddings only: any length, any size that is a multiple of 16 px"
    return "sin-cos positional embeddings computed for the input size: any length and size (multiples of 16 px)"


class DirectAnimatorTransformer(nn.Module):
    """A `CogVideoXTransformer3DModel` (``.backbone``) with CueFusion around every block and cue patch embeddings.

    Untrained, it equals the backbone exactly: the cue patch embeddings and the modulation/text up-projections
    start at zero. Gradient checkpointing, attention processors and LoRA adapters are the backbone's own
    (``model.backbone.enable_gradient_checkpointing()``, ``model.backbone.add_adapter(...)``).
    """

    def __init__(self, backbone: CogVideoXTransformer3DModel, *, config: CueFusionConfig | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, CogVideoXTransformer3DModel):
            raise InputError(
                f"backbone: expected a diffusers CogVideoXTransformer3DModel, got {type(backbone).__name__}."
            )
        self.cue_config = (config or CueFusionConfig()).validate()
        self.backbone = backbone
        bc = backbone.config
        inner_dim = bc.num_attention_heads * bc.attention_head_dim
        self.inner_dim = inner_dim
        self.cue_channels = self.cue_config.cue_channels or (bc.out_channels or bc.in_channels)
        reference = next(backbone.parameters())
        factory = dict(device=reference.device, dtype=reference.dtype)

        def embed() -> CuePatchEmbed:
            return CuePatchEmbed(self.cue_channels + 1, inner_dim, patch_size=bc.patch_size,
                                 patch_size_t=bc.patch_size_t).to(**factory)

        self.pose_embed = embed()
        self.face_embed = embed()
        # The full-rank part of every block's Linear_l, shared; handed to the blocks with the cue tokens.
        self.shared_modulation = nn.Linear(bc.time_embed_dim, NUM_MODULATIONS * inner_dim).to(**factory)
        nn.init.zeros_(self.shared_modulation.weight)
        nn.init.zeros_(self.shared_modulation.bias)
        blocks = backbone.transformer_blocks
        for i, block in enumerate(blocks):
            if isinstance(block, CueFusionBlock):
                raise InputError("backbone: its blocks are already wrapped by another DirectAnimatorTransformer.")
            fusion = CueFusion(inner_dim, bc.time_embed_dim, modulation_rank=self.cue_config.modulation_rank,
                               text_rank=self.cue_config.text_rank).to(**factory)
            blocks[i] = CueFusionBlock(block, fusion)
        self._rotary_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    # ----------------------------------------------------------------- properties
    @property
    def latent_channels(self) -> int:
        return int(self.backbone.config.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def config(self):
        """The backbone's diffusers config."""
        return self.backbone.config

    @property
    def fingerprint(self) -> dict:
        return fingerprint(dict(self.backbone.config))

    @property
    def num_layers(self) -> int:
        return len(self.backbone.transformer_blocks)

    # ----------------------------------------------------------------- parameters and state
    def cue_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """``(name, module)`` of every cue module: patch embeddings, shared modulation, one CueFusion per block."""
        yield "pose_embed", self.pose_embed
        yield "face_embed", self.face_embed
        yield "shared_modulation", self.shared_modulation
        for i, block in enumerate(self.backbone.transformer_blocks):
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

    def _check_inputs(self, hidden_states: Tensor, encoder_hidden_states: Tensor, cues: CueLatents | None) -> None:
        bc = self.backbone.config
        if hidden_states.ndim != 5:
            raise InputError(
                f"hidden_states: expected [B, F', C, h, w] latents, got shape {tuple(hidden_states.shape)}."
            )
        b, f, c, h, w = hidden_states.shape
        if c != bc.in_channels:
            raise InputError(
                f"hidden_states: {c} channels, but the backbone takes {bc.in_channels} (noisy latents with "
                f"{bc.out_channels} channels concatenated with the reference image latents on channels)."
            )
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != b \
                or encoder_hidden_states.shape[2] != bc.text_embed_dim:
            raise InputError(
                f"encoder_hidden_states: expected [B={b}, L, {bc.text_embed_dim}] text embeddings, got "
                f"{tuple(encoder_hidden_states.shape)}. Use the checkpoint's null-text embedding or T5-XXL embeddings."
            )
        patch_embed = self.backbone.patch_embed
        uses_table = patch_embed.use_positional_embeddings or patch_embed.use_learned_positional_embeddings
        if uses_table and encoder_hidden_states.shape[1] != bc.max_text_seq_length:
            raise InputError(
                f"encoder_hidden_states: {encoder_hidden_states.shape[1]} text tokens, but this backbone's positional "
                f"table expects exactly {bc.max_text_seq_length}; pad or trim the text embeddings."
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

    # ----------------------------------------------------------------- forward
    def rotary_embeddings(self, num_latent_frames: int, h: int, w: int,
                          device: torch.device | None = None) -> tuple[Tensor, Tensor] | None:
        """Rotary (cos, sin) for a latent grid, as the CogVideoX pipelines compute them; None without rotary."""
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
                attention_kwargs: dict[str, Any] | None = None) -> Tensor:
        """Predict ``[B, F', Cz, h, w]`` (v-prediction) from noisy latents ++ image latents ``[B, F', 2*Cz, h, w]``.

        `cues` None runs the bare backbone (the guidance negative branch). `cue_weight` scales the cue injection per
        sample (``[B]`` or a float; 0 equals the bare backbone), e.g. for cue dropout or a batched guidance pass.
        `ofs` defaults to 2.0 for backbones with an ofs embedding (CogVideoX 1.5). With
        ``cue_config.reference_in_every_frame`` the leading frame's image latents are first copied into every frame.
        """
        self._check_inputs(hidden_states, encoder_hidden_states, cues)
        b, f, _, h, w = hidden_states.shape
        if self.cue_config.reference_in_every_frame:
            hidden_states = reference_in_every_frame(hidden_states, self.latent_channels)
        device = hidden_states.device
        timestep = torch.as_tensor(timestep, device=device)
        if timestep.ndim == 0 or timestep.numel() == 1:
            timestep = timestep.reshape(1).expand(b)
        if self.backbone.ofs_embedding is not None:
            ofs = torch.as_tensor(OFS_DEFAULT if ofs is None else ofs, device=device, dtype=hidden_states.dtype)
            ofs = ofs.reshape(-1).expand(b) if ofs.numel() == 1 else ofs
        else:
            ofs = None
        kwargs = dict(attention_kwargs or {})
        if cues is not None:
            pose, face = self.embed_cues(cues)
            weight = None
            if cue_weight is not None:
                weight = torch.as_tensor(cue_weight, device=device, dtype=pose.dtype).reshape(-1, 1, 1)
                if weight.shape[0] not in (1, b):
                    raise InputError(f"cue_weight: {weight.shape[0]} values for a batch of {b}; give 1 or {b}.")
            kwargs[CUE_TOKENS_KEY] = CueTokens.build(pose, face, eps=self.cue_config.norm_eps, weight=weight,
                                                     shared=self.shared_modulation)
        out = self.backbone(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep,
            timestep_cond=timestep_cond,
            ofs=ofs,
            image_rotary_emb=self.rotary_embeddings(f, h, w, device),
            attention_kwargs=kwargs or None,
            return_dict=False,
        )[0]
        return out


def reference_in_every_frame(hidden_states: Tensor, latent_channels: int) -> Tensor:
    """``[B, F', 2*Cz, h, w]`` with the image-latent channels (after the first `latent_channels`) of the leading
    frame copied into every frame; a blank (dropped) reference stays blank everywhere."""
    noisy, image = hidden_states[:, :, :latent_channels], hidden_states[:, :, latent_channels:]
    return torch.cat([noisy, image[:, :1].expand_as(image)], dim=2)


def _plain_key(key: str) -> str:
    """``transformer_blocks.3.block.attn1...`` -> ``transformer_blocks.3.attn1...`` (diffusers names)."""
    if key.startswith(_BLOCK_PREFIX):
        index, _, rest = key[len(_BLOCK_PREFIX):].partition(".")
        if rest.startswith("block."):
            return f"{_BLOCK_PREFIX}{index}.{rest[len('block.'):]}"
    return key


def _wrapped_key(key: str) -> str:
    """Inverse of `_plain_key`."""
    if key.startswith(_BLOCK_PREFIX):
        index, _, rest = key[len(_BLOCK_PREFIX):].partition(".")
        if not rest.startswith(("block.", "fusion.")):
            return f"{_BLOCK_PREFIX}{index}.block.{rest}"
    return key


def plain_backbone_key(key: str) -> str:
    """Public alias of the wrapper-to-diffusers key mapping (used for LoRA state dicts)."""
    return _plain_key(key)


def wrapped_backbone_key(key: str) -> str:
    """Public alias of the diffusers-to-wrapper key mapping."""
    return _wrapped_key(key)
