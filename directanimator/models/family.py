"""Backbone families: the one place where CogVideoX and Wan differ (DESIGN.md 5).

A `BackboneSpec` states, in one vocabulary, what the rest of the project needs to know about a diffusers
transformer config: widths, patch sizes, channels, text length, positional-embedding limits, how the reference
image conditions the backbone and what the backbone predicts. Its attribute names follow the CogVideoX config
(``text_embed_dim``, ``max_text_seq_length``, ``patch_size_t``, ...), so code written against a CogVideoX config
reads a Wan one through the spec unchanged.

A `BackboneFamily` holds the calls that differ: which module list holds the blocks, how a block is wrapped, how the
backbone is run on ``[B, F', C, h, w]`` latents, and which time embedding modulates the cue tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

import torch
from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel
from torch import Tensor, nn

from ..errors import CheckpointError, InputError
from .fusion import CUE_TOKENS_KEY, CueFusionBlock, CueRotary, CueTokens, WanCueFusionBlock

FamilyName = Literal["cogvideox", "wan"]
# How the reference image conditions the backbone, as each family's own image-to-video pipeline does it:
# "latent_channels": CogVideoX I2V, the image latent concatenated on channels (leading frame(s), zeros after);
# "mask_and_latent": Wan2.1 I2V, a 4-channel first-frame mask and the latent of [image, black frames...] on
#   channels, plus a CLIP image embedding in the cross-attention context;
# "first_frame": Wan2.2 TI2V, the clean image latent replaces the first latent frame, whose timestep is 0.
ImageConditioning = Literal["latent_channels", "mask_and_latent", "first_frame"]
WAN_MASK_CHANNELS = 4  # Wan2.1 I2V: the first-frame mask, one channel per frame of the VAE's temporal group
WAN_TEXT_LENGTH = 512  # UMT5 tokens the Wan pipelines pad every prompt to


@dataclass(frozen=True)
class BackboneSpec:
    """What the project needs to know about a backbone, whatever its family (see the module docstring)."""

    family: FamilyName
    variant: str  # "cogvideox-1.0", "cogvideox-1.5", "wan-i2v", "wan-ti2v", "wan-t2v"
    inner_dim: int
    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    patch_size: int  # spatial
    patch_size_t: int | None  # temporal patch; None: one latent frame per patch
    in_channels: int
    out_channels: int  # latent channels the backbone predicts
    text_embed_dim: int
    max_text_seq_length: int
    time_embed_dim: int  # width of the time embedding e_t that modulates the cue tokens
    image_conditioning: ImageConditioning
    image_embed_dim: int | None  # CLIP image embedding width (Wan2.1 I2V), else None
    prediction: Literal["v_prediction", "flow"]
    use_learned_positional_embeddings: bool
    use_rotary_positional_embeddings: bool
    sample_frames: int | None  # CogVideoX: pixel frames of the positional table
    sample_height: int | None  # CogVideoX: latent grid of the positional table / rotary base
    sample_width: int | None
    max_rotary_positions: int | None  # Wan: rotary table length per axis (latent frames, patch rows, patch columns)
    temporal_compression_ratio: int = 4

    @property
    def image_channels(self) -> int:
        """Channels of the image conditioning concatenated to the noisy latents (0 for "first_frame")."""
        return self.in_channels - self.out_channels

    def to_dict(self) -> dict:
        return asdict(self)


SUPPORTED_CLASSES = ("CogVideoXTransformer3DModel", "WanTransformer3DModel")


def is_wan_config(config: Mapping[str, Any]) -> bool:
    """True for a diffusers `WanTransformer3DModel` config."""
    name = str(config.get("_class_name", ""))
    return name.startswith("Wan") or ("text_dim" in config and "ffn_dim" in config and "freq_dim" in config)


def is_cogvideox_config(config: Mapping[str, Any]) -> bool:
    name = str(config.get("_class_name", ""))
    return name.startswith("CogVideoX") or ("text_embed_dim" in config and "time_embed_dim" in config) or (
        "num_attention_heads" in config and "attention_head_dim" in config and not is_wan_config(config))


def spec_from_config(config: Mapping[str, Any]) -> BackboneSpec:
    """The `BackboneSpec` of a diffusers transformer config (dict or FrozenDict); CheckpointError for other models."""
    config = dict(config)
    name = config.get("_class_name")
    if name and name not in SUPPORTED_CLASSES:
        # e.g. WanVACETransformer3DModel or WanAnimateTransformer3DModel: a Wan class whose extra weights a plain
        # WanTransformer3DModel would silently drop
        raise CheckpointError(
            f"backbone config of class {name}: not supported; DirectAnimator runs on diffusers' "
            f"{' and '.join(SUPPORTED_CLASSES)}."
        )
    if is_wan_config(config):
        return _wan_spec(config)
    if is_cogvideox_config(config):
        return _cogvideox_spec(config)
    raise CheckpointError(
        f"backbone config with keys {sorted(config)[:8]}...: neither a CogVideoX nor a Wan transformer config. "
        "DirectAnimator runs on diffusers' CogVideoXTransformer3DModel and WanTransformer3DModel."
    )


def spec_of(module: nn.Module) -> BackboneSpec:
    """The spec of a backbone module (diffusers CogVideoX or Wan transformer)."""
    return spec_from_config(getattr(module, "config", {}) or {})


def _cogvideox_spec(c: dict) -> BackboneSpec:
    heads, head_dim = int(c.get("num_attention_heads", 30)), int(c.get("attention_head_dim", 64))
    pt = c.get("patch_size_t")
    in_channels = int(c.get("in_channels", 16))
    return BackboneSpec(
        family="cogvideox", variant="cogvideox-1.0" if pt is None else "cogvideox-1.5",
        inner_dim=heads * head_dim, num_layers=int(c.get("num_layers", 30)), num_attention_heads=heads,
        attention_head_dim=head_dim, patch_size=int(c.get("patch_size", 2)),
        patch_size_t=None if pt is None else int(pt), in_channels=in_channels,
        out_channels=int(c.get("out_channels") or in_channels), text_embed_dim=int(c.get("text_embed_dim", 4096)),
        max_text_seq_length=int(c.get("max_text_seq_length", 226)), time_embed_dim=int(c.get("time_embed_dim", 512)),
        image_conditioning="latent_channels", image_embed_dim=None, prediction="v_prediction",
        use_learned_positional_embeddings=bool(c.get("use_learned_positional_embeddings", True)),
        use_rotary_positional_embeddings=bool(c.get("use_rotary_positional_embeddings", False)),
        sample_frames=int(c.get("sample_frames", 49)), sample_height=int(c.get("sample_height", 60)),
        sample_width=int(c.get("sample_width", 90)), max_rotary_positions=None,
        temporal_compression_ratio=int(c.get("temporal_compression_ratio", 4)),
    )


def _wan_spec(c: dict) -> BackboneSpec:
    heads, head_dim = int(c.get("num_attention_heads", 40)), int(c.get("attention_head_dim", 128))
    pt, ph, pw = (int(v) for v in c.get("patch_size", (1, 2, 2)))
    if ph != pw:
        raise CheckpointError(f"Wan backbone config: patch_size {c.get('patch_size')} is not square; not supported.")
    in_channels = int(c.get("in_channels", 16))
    out_channels = int(c.get("out_channels") or in_channels)
    image_dim = c.get("image_dim")
    if in_channels == out_channels:
        # Wan2.2 TI2V-5B (and text-to-video models): the image latent replaces the first latent frame.
        conditioning, variant = "first_frame", "wan-ti2v" if out_channels == 48 else "wan-t2v"
    elif in_channels == 2 * out_channels + WAN_MASK_CHANNELS:
        conditioning, variant = "mask_and_latent", "wan-i2v"
    else:
        raise CheckpointError(
            f"Wan backbone config: in_channels={in_channels} with out_channels={out_channels} is neither an "
            f"image-to-video layout ({2 * out_channels + WAN_MASK_CHANNELS} = noisy + mask + image latents) nor the "
            f"TI2V/T2V layout ({out_channels})."
        )
    inner = heads * head_dim
    return BackboneSpec(
        family="wan", variant=variant, inner_dim=inner, num_layers=int(c.get("num_layers", 40)),
        num_attention_heads=heads, attention_head_dim=head_dim, patch_size=ph, patch_size_t=None if pt == 1 else pt,
        in_channels=in_channels, out_channels=out_channels, text_embed_dim=int(c.get("text_dim", 4096)),
        max_text_seq_length=WAN_TEXT_LENGTH, time_embed_dim=inner, image_conditioning=conditioning,
        image_embed_dim=None if image_dim is None else int(image_dim), prediction="flow",
        use_learned_positional_embeddings=False, use_rotary_positional_embeddings=True, sample_frames=None,
        sample_height=None, sample_width=None, max_rotary_positions=int(c.get("rope_max_seq_len", 1024)),
    )


# --------------------------------------------------------------------------- running the backbones
class BackboneFamily(ABC):
    """The family-specific calls (see the module docstring). Stateless; one instance per family."""

    name: FamilyName
    transformer_class: type[nn.Module]
    blocks_attr: str  # attribute of the backbone holding its block ModuleList

    def blocks(self, backbone: nn.Module) -> nn.ModuleList:
        return getattr(backbone, self.blocks_attr)

    @abstractmethod
    def block_tokens(self, output: Any) -> Tensor:
        """The vision tokens ``[B, N, D]`` from one block's output."""

    @abstractmethod
    def wrap_block(self, block: nn.Module, fusion: nn.Module) -> nn.Module:
        """`block` wrapped with its CueFusion module, keeping the block's call signature."""

    @abstractmethod
    def time_embedding(self, backbone: nn.Module, timestep: Tensor) -> Tensor | None:
        """The time embedding ``e_t`` ``[B, D_t]`` the cue modulation takes, when the blocks are not handed it."""

    @abstractmethod
    def run(self, backbone: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor, timestep: Tensor,
            *, cue_tokens: Any, attention_kwargs: dict | None, extra: dict) -> Tensor:
        """Run the backbone on ``[B, F', C, h, w]`` and return its prediction ``[B, F', C_out, h, w]``."""


_FAMILIES: dict[str, BackboneFamily] = {}


def register(family: BackboneFamily) -> BackboneFamily:
    _FAMILIES[family.name] = family
    return family


def family_of(backbone: nn.Module) -> BackboneFamily:
    """The family of a diffusers backbone module; InputError for other classes."""
    for family in _FAMILIES.values():
        if isinstance(backbone, family.transformer_class):
            return family
    raise InputError(
        f"backbone: expected a diffusers CogVideoXTransformer3DModel or WanTransformer3DModel, got "
        f"{type(backbone).__name__}."
    )


def family_named(name: str) -> BackboneFamily:
    if name not in _FAMILIES:
        raise InputError(f"backbone family {name!r}: unknown; known: {sorted(_FAMILIES)}.")
    return _FAMILIES[name]


def transformer_class_for(config: Mapping[str, Any]) -> type[nn.Module]:
    """The diffusers transformer class a config belongs to."""
    return family_named(spec_from_config(config).family).transformer_class


def build_backbone(config: Mapping[str, Any], **kwargs) -> nn.Module:
    """A diffusers backbone of the right class from a config dict (private ``_`` keys dropped)."""
    clean = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return transformer_class_for(clean)(**clean, **kwargs)


OFS_DEFAULT = 2.0  # the ofs value CogVideoX 1.5 I2V samples with (diffusers' pipeline uses the same constant)


class CogVideoXFamily(BackboneFamily):
    """`CogVideoXTransformer3DModel`: input ``[B, F', C, h, w]`` as the backbone takes it, cue tokens through
    ``attention_kwargs``, each block modulated by the ``temb`` it is handed."""

    name = "cogvideox"
    transformer_class = CogVideoXTransformer3DModel
    blocks_attr = "transformer_blocks"

    def block_tokens(self, output: Any) -> Tensor:
        return output[0]

    def wrap_block(self, block: nn.Module, fusion: nn.Module) -> nn.Module:
        return CueFusionBlock(block, fusion)

    def time_embedding(self, backbone: nn.Module, timestep: Tensor) -> Tensor | None:
        return None  # the blocks are handed it

    def run(self, backbone: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor, timestep: Tensor,
            *, cue_tokens: CueTokens | None, attention_kwargs: dict | None, extra: dict) -> Tensor:
        b = hidden_states.shape[0]
        ofs = None
        if backbone.ofs_embedding is not None:
            ofs = extra.get("ofs")
            ofs = torch.as_tensor(OFS_DEFAULT if ofs is None else ofs, device=hidden_states.device,
                                  dtype=hidden_states.dtype)
            ofs = ofs.reshape(-1).expand(b) if ofs.numel() == 1 else ofs
        kwargs = dict(attention_kwargs or {})
        if cue_tokens is not None:
            kwargs[CUE_TOKENS_KEY] = cue_tokens
        return backbone(
            hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
            timestep_cond=extra.get("timestep_cond"), ofs=ofs, image_rotary_emb=extra.get("image_rotary_emb"),
            attention_kwargs=kwargs or None, return_dict=False,
        )[0]


class WanFamily(BackboneFamily):
    """`WanTransformer3DModel`: input permuted to ``[B, C, F', h, w]``, cue tokens on the rotary tuple
    (`CueRotary`), the cue modulation from the backbone's own time embedding ``e_t`` (its ``condition_embedder``),
    which Wan hands to the blocks only as the projected ``timestep_proj``."""

    name = "wan"
    transformer_class = WanTransformer3DModel
    blocks_attr = "blocks"

    def block_tokens(self, output: Any) -> Tensor:
        return output

    def wrap_block(self, block: nn.Module, fusion: nn.Module) -> nn.Module:
        return WanCueFusionBlock(block, fusion)

    def time_embedding(self, backbone: nn.Module, timestep: Tensor) -> Tensor:
        """``e_t`` ``[B, D]`` for per-sample timesteps ``[B]``, exactly as Wan's condition embedder computes it."""
        embedder = backbone.condition_embedder
        features = embedder.timesteps_proj(timestep)
        weight = next(embedder.time_embedder.parameters())
        return embedder.time_embedder(features.to(weight.dtype))

    def run(self, backbone: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor, timestep: Tensor,
            *, cue_tokens: CueTokens | None, attention_kwargs: dict | None, extra: dict) -> Tensor:
        x = hidden_states.permute(0, 2, 1, 3, 4)
        b, _, f, h, w = x.shape
        if timestep.ndim == 2:
            # One timestep per latent frame -> one per token, as diffusers' Wan2.2 TI2V pipeline expands them.
            p = int(backbone.config.patch_size[1])
            timestep = timestep[:, :, None].expand(b, f, (h // p) * (w // p)).reshape(b, -1)
        handle = None
        if cue_tokens is not None:
            handle = backbone.rope.register_forward_hook(lambda _m, _a, rotary: CueRotary(rotary, cue_tokens))
        try:
            out = backbone(hidden_states=x, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                           encoder_hidden_states_image=extra.get("image_embeds"), attention_kwargs=attention_kwargs,
                           return_dict=False)[0]
        finally:
            if handle is not None:
                handle.remove()
        return out.permute(0, 2, 1, 3, 4)


COGVIDEOX = register(CogVideoXFamily())
WAN = register(WanFamily())
