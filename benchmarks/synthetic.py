"""Seeded models of the real classes with random weights, and random cue triplets, for benchmarks that measure
speed and memory rather than quality: a CogVideoX 1.5-layout DirectAnimator model of a chosen width and depth,
a small VAE, and cue videos of the right shapes."""

from __future__ import annotations

import torch

TEXT_DIM = 32
TEXT_LEN = 8
LATENT_CHANNELS = 16
VAE_FACTOR = 8  # pixels per latent cell

# A small VAE of the real class: 8x spatial, 4x temporal, 16 latent channels.
SMALL_VAE_CONFIG = dict(
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=LATENT_CHANNELS,
    sample_height=64,
    sample_width=64,
    scaling_factor=0.7,
)
CUE_STD = 0.2  # random cue weights as if trained, so that the cue path does real work


def random_backbone_15(*, size: int, heads: int, head_dim: int, layers: int, seed: int = 0):
    """A seeded CogVideoX 1.5 image-to-video transformer (temporal patches of 2, rotary only) for `size` px frames."""
    from diffusers import CogVideoXTransformer3DModel

    latent_side = size // VAE_FACTOR
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=2 * LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS, time_embed_dim=16, ofs_embed_dim=16, text_embed_dim=TEXT_DIM,
        num_layers=layers, sample_width=latent_side, sample_height=latent_side, sample_frames=17, patch_size=2,
        patch_size_t=2, patch_bias=False, max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
    ).eval()


def random_animator(*, size: int, heads: int, head_dim: int, layers: int):
    """An `AnimatorModel`: `random_backbone_15` in a DirectAnimator transformer with random cue weights, a small
    VAE and zero null text; the same weights on every call."""
    from diffusers import AutoencoderKLCogVideoX

    from directanimator.models import DirectAnimatorTransformer
    from directanimator.models.loader import DEFAULT_SCHEDULER_CONFIG, AnimatorModel

    backbone = random_backbone_15(size=size, heads=heads, head_dim=head_dim, layers=layers, seed=0)
    transformer = DirectAnimatorTransformer(backbone).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in transformer.cue_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * CUE_STD)
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(**SMALL_VAE_CONFIG).eval()
    return AnimatorModel(transformer=transformer, vae=vae, null_text=torch.zeros(1, TEXT_LEN, TEXT_DIM),
                         scheduler_config=dict(DEFAULT_SCHEDULER_CONFIG), cue_config={}, name="bench")


def random_triplet(frames: int, *, height: int, width: int, seed: int = 0):
    """A `CueTriplet` of random cue videos, `frames` frames of `height` x `width` px (the sampler only needs shapes)."""
    from directanimator.cues.types import CueRecord, CueTriplet, Similarity

    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen)

    record = CueRecord(
        person_boxes=torch.zeros(frames, 4), person_valid=torch.ones(frames, dtype=torch.bool),
        face_boxes=torch.zeros(frames, 4), face_valid=torch.ones(frames, dtype=torch.bool),
        bad_frames=torch.zeros(frames, dtype=torch.bool), transform=Similarity(),
        reference_person_box=torch.zeros(4), reference_face_box=None,
    )
    return CueTriplet(
        pose=rand(frames, height, width, 3), face=rand(frames, height, width, 3),
        body_location=rand(frames, height, width), face_location=rand(frames, height, width),
        reference=rand(1, height, width, 3), reference_mask=rand(1, height, width),
        reference_pose=rand(1, height, width, 3), reference_face=rand(1, height, width, 3),
        reference_body_location=rand(1, height, width), reference_face_location=rand(1, height, width),
        record=record,
    )
