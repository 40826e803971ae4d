"""CueFusion modules (DESIGN.md 5): cue tokens, the cue patch embedding, the per-block fusion and the block
wrappers of each backbone family.

Cue tokens reach a wrapped block without changing the block's call signature, so diffusers' gradient
checkpointing, attention processors and ``_no_split_modules`` keep working:

- CogVideoX blocks take ``attention_kwargs``; the cue tokens travel there under `CUE_TOKENS_KEY`. The backbone hands
  the same dict object to every block, also through gradient checkpointing (which re-runs a block with its original
  arguments during backward), so recomputation sees exactly the tensors of the first pass.
- Wan blocks take no ``attention_kwargs``; the cue tokens ride on the rotary embedding tuple the backbone hands to
  every block (`CueRotary`, attached by a hook on the backbone's ``rope`` for one forward). The tuple is one of the
  block's arguments, so checkpoint recomputation sees the same cues as well.

The wrappers strip the cues before calling the original block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CUE_TOKENS_KEY = "directanimator_cue_tokens"
NUM_MODULATIONS = 6  # (scale, shift, gate) for the pose and the face cue

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
    temb: Tensor | None = None  # the time embedding e_t, for blocks that are not handed it (Wan)

    @classmethod
    def build(cls, pose: Tensor, face: Tensor, *, eps: float = 1e-6, weight: Tensor | None = None,
              shared: nn.Module | None = None, temb: Tensor | None = None) -> "CueTokens":
        """From the patch-embedded cues ``c_p, c_f`` ``[B, N, D]``."""
        dim = pose.shape[-1]
        base = pose + face if weight is None else (pose + face) * weight
        pose_norm = F.layer_norm(pose, (dim,), eps=eps)
        face_norm = F.layer_norm(face, (dim,), eps=eps)
        return cls(base, pose_norm, face_norm, base.mean(1, keepdim=True), pose_norm.mean(1, keepdim=True),
                   face_norm.mean(1, keepdim=True), weight, shared, temb)


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
        # Wan keeps its time embedder in fp32 (`_keep_in_fp32_modules`) in a bf16 model; cast e_t as Wan's forward does.
        t = F.silu(temb.to(self.down.weight.dtype))
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


class CueRotary(tuple):
    """A Wan rotary embedding ``(cos, sin)`` that carries the forward's `CueTokens` to every wrapped block."""

    cues: CueTokens

    def __new__(cls, rotary: tuple, cues: CueTokens) -> "CueRotary":
        carrier = super().__new__(cls, tuple(rotary))
        carrier.cues = cues
        return carrier

    def to(self, *args, **kwargs) -> "CueRotary":
        """The rotary tensors moved like ``Tensor.to``, the cues kept. Device-moving hooks (diffusers' group
        offloading, through accelerate's ``send_to_device``) call this; rebuilding the tuple from its items, as they
        do for plain tuples, would drop the cues."""
        return CueRotary(tuple(t.to(*args, **kwargs) for t in self), self.cues)


class WanCueFusionBlock(nn.Module):
    """A `WanTransformerBlock` wrapped with its CueFusion module; same call signature as the block.

    The vision tokens get ``c_p' + c_f'`` before the block; the cross-attention context (text, and the CLIP image
    tokens of Wan2.1 I2V) gets the text-stream term for this block only, as Wan's context is not carried from block
    to block.
    """

    def __init__(self, block: nn.Module, fusion: CueFusion) -> None:
        super().__init__()
        self.block = block
        self.fusion = fusion

    def forward(self, hidden_states: Tensor, encoder_hidden_states: Tensor, temb: Tensor,
                rotary_emb: tuple[Tensor, Tensor] | None) -> Tensor:
        cues = getattr(rotary_emb, "cues", None)
        if cues is not None:
            rotary_emb = tuple(rotary_emb)
            hidden_states, text = self.fusion(hidden_states, cues, cues.temb)
            encoder_hidden_states = encoder_hidden_states + text.to(encoder_hidden_states.dtype)
        return self.block(hidden_states, encoder_hidden_states, temb, rotary_emb)
