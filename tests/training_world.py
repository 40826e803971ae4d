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


# Wan worlds: "wan-ti2v" a Wan2.2-TI2V-like layout (the clean reference latent as latent frame 0) on 16 latent
# channels, so that the Wan2.1-like micro VAE (8x spatial) serves it; "wan-i2v" the Wan2.1 I2V layout (mask +
# condition latent on channels, a tiny CLIP image embedding); "wan2.2-ti2v" the real TI2V layout (48 channels) with
# a tiny Wan2.2 VAE (16x spatial, its own patchify).
WAN_WORLD_LAYOUTS = ("wan-ti2v", "wan-i2v", "wan2.2-ti2v")
WAN_SHIFT = 3.0  # the flow shift the tiny Wan folders' scheduler samples with (Wan2.1 480p's)


def micro_wan_vae():
    """A tiny `AutoencoderKLWan` of the real class (z 16, 4x8x8, Wan2.1's per-channel latent statistics)."""
    from tests.tiny import tiny_wan_vae

    return tiny_wan_vae("2.1")


def save_wan_model(model: Path, layout: str = "wan-ti2v") -> Path:
    """A tiny diffusers Wan folder: transformer/ of `layout`, vae/ (micro Wan VAE), scheduler/ (flow UniPC)."""
    from diffusers import UniPCMultistepScheduler

    from tests.tiny import LATENT_CHANNELS

    if layout not in WAN_WORLD_LAYOUTS:
        raise ValueError(f"layout must be one of {WAN_WORLD_LAYOUTS}, got {layout!r}")
    from tests.tiny import tiny_wan_vae

    channels = {"in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS} if layout == "wan-ti2v" else {}
    tiny_backbone("wan-ti2v" if layout == "wan2.2-ti2v" else layout, **channels).save_pretrained(model / "transformer")
    (tiny_wan_vae("2.2") if layout == "wan2.2-ti2v" else micro_wan_vae()).save_pretrained(model / "vae")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=WAN_SHIFT,
                            num_train_timesteps=1000).save_pretrained(model / "scheduler")
    if layout == "wan-i2v":
        from tests.tiny import tiny_clip_vision

        encoder, processor = tiny_clip_vision()
        encoder.save_pretrained(model / "image_encoder")
        processor.save_pretrained(model / "image_processor")
    return model


def make_wan_world(root: Path, layout: str = "wan-ti2v") -> tuple[Path, Path]:
    """The 4 world clips of `make_world` and a tiny diffusers Wan folder of `layout`."""
    data, model = root / "world", root / "model"
    export_world(data, WorldConfig(height=64, width=64, num_frames=5), clips=4, val_clips=1, fmt="png")
    save_wan_model(model, layout)
    return data, model


DEMO_VAE = Path(__file__).resolve().parents[1] / "models" / "demo" / "vae"  # the bundled model's trained VAE


def make_wan_animation_world(root: Path) -> tuple[Path, Path]:
    """3 world clips of 17 frames at 64 px (the last is the val split) and a tiny Wan folder in the TI2V layout on
    16 channels (a little wider than tests.tiny's) whose vae/ is the bundled demo model's trained VAE: a random VAE
    does not reconstruct, so only a trained one shows whether a result animates (training a Wan VAE takes seconds
    per step on this CPU)."""
    import shutil

    from diffusers import UniPCMultistepScheduler

    from tests.tiny import LATENT_CHANNELS

    data, model = root / "world", root / "model"
    export_world(data, WorldConfig(height=64, width=64, num_frames=17), clips=3, val_clips=1, fmt="png")
    tiny_backbone("wan-ti2v", in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, attention_head_dim=16,
                  ffn_dim=64).save_pretrained(model / "transformer")
    shutil.copytree(DEMO_VAE, model / "vae")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=WAN_SHIFT,
                            num_train_timesteps=1000).save_pretrained(model / "scheduler")
    return data, model
