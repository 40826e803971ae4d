"""Tiny models of the real classes, shared by every test: CogVideoX transformers in both layouts, the VAE,
the DirectAnimator transformer, saved diffusers folders and random cue triplets. Everything builds in
milliseconds on the CPU.

Pixel frames of 64x64 give an 8x8 latent grid (VAE factor 8) and 4x4 patches (patch size 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel, WanTransformer3DModel

from benchmarks.synthetic import random_triplet
from directanimator.cues.types import CueTriplet

TEXT_DIM = 32
TEXT_LEN = 8
LATENT_CHANNELS = 16
PIXELS = 64  # tiny frame side in pixels
LATENT = PIXELS // 8
SMALL = 32  # frame side (px) for the 1.5 layout, which takes any grid: 4x4 latents keep the VAE cheap

# CogVideoX 1.0 image-to-video layout (like CogVideoX-5B-I2V): learned positional embeddings plus rotary,
# fixed sample size: 8x8 latents and 13 pixel frames = 4 latent frames (reference + 9 driving frames).
TINY_CONFIG_10 = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=2 * LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    time_embed_dim=16,
    text_embed_dim=TEXT_DIM,
    num_layers=2,
    sample_width=LATENT,
    sample_height=LATENT,
    sample_frames=13,
    patch_size=2,
    max_text_seq_length=TEXT_LEN,
    use_rotary_positional_embeddings=True,
    use_learned_positional_embeddings=True,
)
TINY_LATENT_FRAMES_10 = 4  # (sample_frames - 1) / 4 + 1

# CogVideoX 1.5 image-to-video layout (like CogVideoX1.5-5B-I2V): temporal patches of 2, rotary only, ofs
# embedding, no patch bias; any grid up to the sample size (16x16 latents = 128x128 pixels).
TINY_CONFIG_15 = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=2 * LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    time_embed_dim=16,
    ofs_embed_dim=16,
    text_embed_dim=TEXT_DIM,
    num_layers=2,
    sample_width=2 * LATENT,
    sample_height=2 * LATENT,
    sample_frames=17,
    patch_size=2,
    patch_size_t=2,
    patch_bias=False,
    max_text_seq_length=TEXT_LEN,
    use_rotary_positional_embeddings=True,
    use_learned_positional_embeddings=False,
)

TINY_VAE_CONFIG = dict(
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=LATENT_CHANNELS,
    sample_height=PIXELS,
    sample_width=PIXELS,
    scaling_factor=0.7,
)

LAYOUTS = ("1.0", "1.5")

# Wan layouts (WanTransformer3DModel, patches (1, 2, 2), rotary only, flow matching):
# "wan-i2v" like Wan2.1-I2V-14B: noisy (16) + first-frame mask (4) + image condition latents (16) on channels,
#   a CLIP image embedding (here 5 tokens of width WAN_IMAGE_DIM) in the cross-attention context, whose processor
#   takes the last 512 context tokens as text: its text embeddings are always 512 tokens;
# "wan-ti2v" like Wan2.2-TI2V-5B: 48 latent channels, the clean image latent as the first latent frame.
WAN_LAYOUTS = ("wan-i2v", "wan-ti2v")
WAN_TEXT_LEN = 512
WAN_IMAGE_DIM = 20
WAN_IMAGE_TOKENS = 5
WAN_TI2V_CHANNELS = 48
_TINY_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=TEXT_DIM, freq_dim=16,
                 ffn_dim=32, num_layers=2, rope_max_seq_len=64)
TINY_WAN_CONFIGS = {
    "wan-i2v": dict(_TINY_WAN, in_channels=2 * LATENT_CHANNELS + 4, out_channels=LATENT_CHANNELS,
                    image_dim=WAN_IMAGE_DIM, added_kv_proj_dim=24),
    "wan-ti2v": dict(_TINY_WAN, in_channels=WAN_TI2V_CHANNELS, out_channels=WAN_TI2V_CHANNELS),
}


def tiny_backbone_config(layout: str = "1.0", **overrides) -> dict:
    """The tiny transformer config of `layout` (CogVideoX "1.0" / "1.5", or a `WAN_LAYOUTS` name), with
    `overrides` applied."""
    if layout in TINY_WAN_CONFIGS:
        config = dict(TINY_WAN_CONFIGS[layout])
    elif layout in LAYOUTS:
        config = dict(TINY_CONFIG_10 if layout == "1.0" else TINY_CONFIG_15)
    else:
        raise ValueError(f"layout must be one of {LAYOUTS + WAN_LAYOUTS}, got {layout!r}")
    config.update(overrides)
    return config


def tiny_backbone(layout: str = "1.0", *, seed: int = 0, **overrides):
    """A randomly initialised tiny `CogVideoXTransformer3DModel` or `WanTransformer3DModel` (eval mode, fp32)."""
    torch.manual_seed(seed)
    config = tiny_backbone_config(layout, **overrides)
    model_class = WanTransformer3DModel if layout in TINY_WAN_CONFIGS else CogVideoXTransformer3DModel
    return model_class(**config).eval()


def tiny_vae(*, seed: int = 0) -> AutoencoderKLCogVideoX:
    """A randomly initialised tiny `AutoencoderKLCogVideoX` (eval mode, fp32): 8x spatial, 4x temporal."""
    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(**TINY_VAE_CONFIG).eval()


def tiny_animator(layout: str = "1.0", *, seed: int = 0, randomize_cues: bool = False, rank: int = 8, **overrides):
    """A `DirectAnimatorTransformer` around a tiny backbone; cue modules zero (as built) unless `randomize_cues`."""
    from directanimator.models import CueFusionConfig, DirectAnimatorTransformer

    config = CueFusionConfig(modulation_rank=rank, text_rank=rank)
    model = DirectAnimatorTransformer(tiny_backbone(layout, seed=seed, **overrides), config=config).eval()
    if randomize_cues:
        randomize_cue_modules(model, seed=seed + 1)
    return model


def randomize_cue_modules(model, *, seed: int = 1, std: float = 0.2) -> None:
    """Give every cue parameter random values, as if trained, so that cues change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.cue_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * std)


def tiny_inputs(layout: str = "1.0", *, batch: int = 1, frames: int | None = None, height: int = LATENT,
                width: int = LATENT, seed: int = 0) -> dict:
    """Random transformer inputs: hidden_states ``[B, F', 32, h, w]``, text ``[B, L, 32]``, timestep ``[B]``."""
    if frames is None:
        frames = TINY_LATENT_FRAMES_10
    gen = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, frames, 2 * LATENT_CHANNELS, height, width, generator=gen),
        encoder_hidden_states=torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=gen),
        timestep=torch.full((batch,), 500, dtype=torch.long),
    )


def tiny_wan_inputs(layout: str = "wan-i2v", *, batch: int = 1, frames: int = 3, height: int = LATENT,
                    width: int = LATENT, seed: int = 0) -> dict:
    """Random inputs of a tiny Wan model: hidden_states ``[B, F', C_in, h, w]``, text ``[B, 512, 32]``, timestep
    ``[B]`` and, for "wan-i2v", image_embeds ``[B, 5, 20]``."""
    config = TINY_WAN_CONFIGS[layout]
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(
        hidden_states=torch.randn(batch, frames, config["in_channels"], height, width, generator=gen),
        encoder_hidden_states=torch.randn(batch, WAN_TEXT_LEN, TEXT_DIM, generator=gen),
        timestep=torch.full((batch,), 500.0),
    )
    if config.get("image_dim"):
        inputs["image_embeds"] = torch.randn(batch, WAN_IMAGE_TOKENS, WAN_IMAGE_DIM, generator=gen)
    return inputs


def tiny_cue_latents(*, batch: int = 1, frames: int = TINY_LATENT_FRAMES_10, height: int = LATENT,
                     width: int = LATENT, seed: int = 0, channels: int = LATENT_CHANNELS):
    """Random `CueLatents` on a tiny latent grid; masks in 0..1."""
    from directanimator.models import CueLatents

    gen = torch.Generator().manual_seed(seed)
    shape = (batch, frames, channels, height, width)
    mask_shape = (batch, frames, 1, height, width)
    return CueLatents(
        pose=torch.randn(shape, generator=gen),
        face=torch.randn(shape, generator=gen),
        body_mask=torch.rand(mask_shape, generator=gen),
        face_mask=torch.rand(mask_shape, generator=gen),
    )


def save_tiny_diffusers(path: str | Path, layout: str = "1.0", *, seed: int = 0, with_vae: bool = True,
                        with_scheduler: bool = True) -> Path:
    """Write a tiny diffusers model folder (``transformer/``, ``vae/``, ``scheduler/``) and return its path."""
    from directanimator.models.loader import DEFAULT_SCHEDULER_CONFIG

    path = Path(path)
    tiny_backbone(layout, seed=seed).save_pretrained(path / "transformer")
    if with_vae:
        tiny_vae(seed=seed).save_pretrained(path / "vae")
    if with_scheduler:
        (path / "scheduler").mkdir(parents=True, exist_ok=True)
        (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(DEFAULT_SCHEDULER_CONFIG, indent=2))
    return path


def tiny_animator_model(layout: str = "1.0", *, seed: int = 0, randomize_cues: bool = False):
    """An `AnimatorModel` (tiny transformer, tiny VAE, zero null text, CogVideoX scheduler config) in memory."""
    from directanimator.models.loader import AnimatorModel, DEFAULT_SCHEDULER_CONFIG

    transformer = tiny_animator(layout, seed=seed, randomize_cues=randomize_cues)
    return AnimatorModel(
        transformer=transformer,
        vae=tiny_vae(seed=seed),
        null_text=torch.zeros(1, TEXT_LEN, TEXT_DIM),
        scheduler_config=dict(DEFAULT_SCHEDULER_CONFIG),
        cue_config={},
        name=f"tiny-{layout}",
    )


def synthetic_triplet(frames: int, *, height: int = PIXELS, width: int = PIXELS, seed: int = 0) -> CueTriplet:
    """A CueTriplet of random cue videos (the sampler only needs tensors of the right shapes)."""
    return random_triplet(frames, height=height, width=width, seed=seed)

# Tiny Wan VAEs (diffusers AutoencoderKLWan): "2.1" like Wan2.1's (z 16, 4x8x8, the real latents_mean/std);
# "2.2" like Wan2.2's (z 48, its own 2x2 patchify: 12 input channels, residual blocks, 4x16x16) with made-up
# per-channel statistics of the right length.
TINY_WAN_VAE_CONFIGS = {
    "2.1": dict(base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True]),
    "2.2": dict(base_dim=8, decoder_base_dim=12, z_dim=WAN_TI2V_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                patch_size=2, scale_factor_spatial=16,
                latents_mean=[round(0.05 * ((7 * i) % 11) - 0.25, 4) for i in range(WAN_TI2V_CHANNELS)],
                latents_std=[round(0.6 + 0.1 * ((5 * i) % 9), 4) for i in range(WAN_TI2V_CHANNELS)]),
}


def tiny_wan_vae(version: str = "2.1", *, seed: int = 0):
    """A randomly initialised tiny `AutoencoderKLWan` (eval mode, fp32) of `version` "2.1" or "2.2"."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**TINY_WAN_VAE_CONFIGS[version]).eval()


def tiny_clip_vision(*, seed: int = 0):
    """A tiny transformers `CLIPVisionModel` of width `WAN_IMAGE_DIM` (32 px images, 8 px patches: 17 tokens) and
    the `CLIPImageProcessor` of its size, the pair a Wan2.1 I2V model embeds its reference with."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=WAN_IMAGE_DIM, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=8)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPVisionModel(config).eval(), processor


def add_random_lora(model, seed: int = 5) -> None:
    """A LoRA on the attention projections of `model`'s backbone whose B matrices are random (peft starts them at
    zero), so the adapter changes the output."""
    from peft import LoraConfig

    model.backbone.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
