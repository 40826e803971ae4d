"""CueFusion modules, the DirectAnimator transformer, configs, checkpoint I/O, loading and size reports."""

from .checkpoint import (
    DirectAnimatorCheckpoint,
    apply_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .configs import CueFusionConfig, backbone_config, bundled_backbone_names, default_scheduler_config, fingerprint
from .cue_latents import CueLatents
from .loader import AnimatorModel, build_transformer, load_model, resolve_dtype
from .transformer import (
    CueFusion,
    CueFusionBlock,
    CuePatchEmbed,
    DirectAnimatorTransformer,
    check_latent_shape_for,
    positional_embedding_case,
)

__all__ = [
    "AnimatorModel",
    "CueFusion",
    "CueFusionBlock",
    "CueFusionConfig",
    "CueLatents",
    "CuePatchEmbed",
    "DirectAnimatorCheckpoint",
    "DirectAnimatorTransformer",
    "apply_checkpoint",
    "backbone_config",
    "build_transformer",
    "bundled_backbone_names",
    "check_latent_shape_for",
    "default_scheduler_config",
    "fingerprint",
    "load_model",
    "positional_embedding_case",
    "read_checkpoint",
    "resolve_dtype",
    "save_checkpoint",
]
