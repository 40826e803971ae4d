"""CueFusion modules, the DirectAnimator transformer, configs, checkpoint I/O, loading, memory options and size
reports."""

from .checkpoint import (
    DirectAnimatorCheckpoint,
    apply_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .configs import CueFusionConfig, backbone_config, bundled_backbone_names, default_scheduler_config, fingerprint
from .cue_latents import CueLatents
from .family import BackboneSpec, build_backbone, family_of, spec_from_config, spec_of
from .loader import AnimatorModel, build_transformer, load_model, resolve_dtype
from .memory import MemoryOptions, applied_options, apply_memory_options
from .transformer import (
    CueFusion,
    CueFusionBlock,
    CuePatchEmbed,
    DirectAnimatorTransformer,
    WanCueFusionBlock,
    check_latent_shape_for,
    positional_embedding_case,
)

__all__ = [
    "AnimatorModel",
    "BackboneSpec",
    "CueFusion",
    "CueFusionBlock",
    "CueFusionConfig",
    "CueLatents",
    "CuePatchEmbed",
    "DirectAnimatorCheckpoint",
    "DirectAnimatorTransformer",
    "MemoryOptions",
    "WanCueFusionBlock",
    "applied_options",
    "apply_checkpoint",
    "apply_memory_options",
    "backbone_config",
    "build_backbone",
    "build_transformer",
    "bundled_backbone_names",
    "check_latent_shape_for",
    "default_scheduler_config",
    "family_of",
    "fingerprint",
    "load_model",
    "positional_embedding_case",
    "read_checkpoint",
    "resolve_dtype",
    "save_checkpoint",
    "spec_from_config",
    "spec_of",
]
