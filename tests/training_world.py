"""A tiny training world shared by the training tests: the world_tiny.toml config, four rendered clips with a
tiny diffusers model folder, the config overrides that point a run at them, and the micro VAE settings."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.tiny import tiny_backbone
from training.world import WorldConfig, export_world

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "world_tiny.toml"

# `training vae` settings for a micro architecture of the real class: 8x spatial, 4x temporal, 16 latent channels.
MICRO = ["block_out_channels=[8, 8, 8, 8]", "norm_num_groups=4", "frames=9", "crop=32", "batch_size=2",
         "warmup_steps=0", "log_every=1", "val_clips=1", "max_clips=8"]


def micro_vae():
    """A VAE of the real class, smaller than tests.tiny's, so that preparing a few clips takes seconds."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(0)
    return AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                                  latent_channels=16, sample_height=64, sample_width=64).eval()


def make_world(root: Path) -> tuple[Path, Path]:
    """4 world clips (64 px, 5 frames; the last is the val split) and a tiny diffusers model folder."""
    data, model = root / "world", root / "model"
    export_world(data, WorldConfig(height=64, width=64, num_frames=5), clips=4, val_clips=1, fmt="png")
    tiny_backbone("1.0", use_learned_positional_embeddings=False).save_pretrained(model / "transformer")
    micro_vae().save_pretrained(model / "vae")
    return data, model


def overrides(root: Path, data: Path, model: Path, *extra: str) -> list[str]:
    """Config overrides that train on `data` from the backbone in `model`, writing runs under `root`/runs."""
    return [f"data.metadata={json.dumps(str(data))}", f"model.backbone={json.dumps(str(model))}",
            f"run.out_dir={json.dumps(str(root / 'runs'))}", *extra]
