"""Bundled backbone configurations, the CueFusion configuration and the backbone fingerprint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError, InputError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Short names -> bundled transformer configs (diffusers `CogVideoXTransformer3DModel` / `WanTransformer3DModel`).
# Wan2.1-I2V-14B's 480P and 720P checkpoints share one transformer config (they differ in weights and in the
# scheduler's flow shift).
BUNDLED_BACKBONES = {
    "cogvideox-5b-i2v": "cogvideox_5b_i2v.json",
    "cogvideox1.5-5b-i2v": "cogvideox1.5_5b_i2v.json",
    "wan2.1-i2v-14b": "wan2.1_i2v_14b.json",
    "wan2.1-i2v-14b-480p": "wan2.1_i2v_14b.json",
    "wan2.1-i2v-14b-720p": "wan2.1_i2v_14b.json",
    "wan2.2-ti2v-5b": "wan2.2_ti2v_5b.json",
}
# Hugging Face repo ids of the real backbones, for messages and for matching single files.
BACKBONE_REPOS = {
    "cogvideox-5b-i2v": "THUDM/CogVideoX-5b-I2V",
    "cogvideox1.5-5b-i2v": "THUDM/CogVideoX1.5-5B-I2V",
    "wan2.1-i2v-14b": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "wan2.1-i2v-14b-480p": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "wan2.1-i2v-14b-720p": "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
    "wan2.2-ti2v-5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
}
SCHEDULER_CONFIG_FILE = "scheduler_cogvideox_5b.json"
# Bundled names -> the scheduler config each backbone's diffusers repo ships (scheduler/scheduler_config.json). The
# Wan configs differ only in the flow shift: 3.0 for Wan2.1 at 480P, 5.0 at 720P and for Wan2.2 TI2V-5B.
BUNDLED_SCHEDULERS = {
    "cogvideox-5b-i2v": SCHEDULER_CONFIG_FILE,
    "cogvideox1.5-5b-i2v": SCHEDULER_CONFIG_FILE,
    "wan2.1-i2v-14b": "scheduler_wan2.1_i2v_14b_480p.json",
    "wan2.1-i2v-14b-480p": "scheduler_wan2.1_i2v_14b_480p.json",
    "wan2.1-i2v-14b-720p": "scheduler_wan2.1_i2v_14b_720p.json",
    "wan2.2-ti2v-5b": "scheduler_wan2.2_ti2v_5b.json",
}
# BackboneSpec.variant -> the bundled name whose scheduler config a backbone of that variant samples with when
# its own folder or checkpoint names none (Wan text-to-video layouts take Wan2.1's 480P shift, Wan's default).
VARIANT_SCHEDULERS = {
    "cogvideox-1.0": "cogvideox-5b-i2v",
    "cogvideox-1.5": "cogvideox1.5-5b-i2v",
    "wan-i2v": "wan2.1-i2v-14b-480p",
    "wan-ti2v": "wan2.2-ti2v-5b",
    "wan-t2v": "wan2.1-i2v-14b-480p",
}

# Keys of a backbone config that decide whether weights trained on one backbone fit another.
FINGERPRINT_KEYS = (
    "family", "inner_dim", "num_layers", "patch_size", "patch_size_t", "in_channels", "out_channels",
    "text_embed_dim", "time_embed_dim",
)
_FINGERPRINT_DEFAULTS = {"family": "cogvideox"}  # checkpoints written before Wan support record no family


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def bundled_backbone_names() -> list[str]:
    """Names accepted by `backbone_config` besides a dict or a path."""
    return sorted(BUNDLED_BACKBONES)


def backbone_config(name_or_dict: str | Mapping[str, Any] | Path) -> dict:
    """A transformer config dict (init kwargs of `CogVideoXTransformer3DModel`, no private keys) from a bundled
    name (``"cogvideox-5b-i2v"``, ``"cogvideox1.5-5b-i2v"``), a config.json path or a dict."""
    if isinstance(name_or_dict, Mapping):
        config = dict(name_or_dict)
    else:
        key = str(name_or_dict).lower()
        if key in BUNDLED_BACKBONES:
            config = _read_json(CONFIG_DIR / BUNDLED_BACKBONES[key])
        elif Path(name_or_dict).is_file():
            config = _read_json(Path(name_or_dict))
        else:
            raise InputError(
                f"backbone config {name_or_dict!r}: not a bundled name nor a config.json file. "
                f"Use one of {bundled_backbone_names()}, a path to a diffusers transformer config.json, or a dict."
            )
    return {k: v for k, v in config.items() if not k.startswith("_")}


def default_scheduler_config(backbone: Any = None) -> dict:
    """The scheduler config a backbone samples with when its folder or checkpoint names none, with its
    ``_class_name`` (the diffusers scheduler class).

    `backbone`: a bundled name (``"wan2.1-i2v-14b-720p"``: UniPC, flow shift 5.0), a `BackboneSpec` (its variant's
    bundled backbone: Wan2.1 I2V -> the 480P config, flow shift 3.0; Wan2.2 TI2V -> flow shift 5.0), or None: the
    CogVideoX 5B config (v-prediction, trailing spacing, zero-terminal-SNR).
    """
    if backbone is None:
        name = "cogvideox-5b-i2v"
    elif isinstance(backbone, str):
        name = backbone.lower()
        if name not in BUNDLED_SCHEDULERS:
            raise InputError(f"scheduler config for {backbone!r}: not a bundled backbone name; use one of "
                             f"{sorted(BUNDLED_SCHEDULERS)}.")
    else:
        variant = getattr(backbone, "variant", None)
        if variant not in VARIANT_SCHEDULERS:
            raise InputError(f"scheduler config for {backbone!r}: expected a bundled name or a BackboneSpec "
                             f"(variants {sorted(VARIANT_SCHEDULERS)}).")
        name = VARIANT_SCHEDULERS[variant]
    return {k: v for k, v in _read_json(CONFIG_DIR / BUNDLED_SCHEDULERS[name]).items() if k != "_source"}


def fingerprint(config: Mapping[str, Any]) -> dict:
    """The backbone facts that checkpoint weights depend on: family, inner dim, layers, patch sizes, channels, text
    and time-embedding widths (from `directanimator.models.family.spec_from_config`)."""
    from .family import spec_from_config

    config = dict(config)
    if "num_attention_heads" not in config or "attention_head_dim" not in config:
        missing = "num_attention_heads" if "num_attention_heads" not in config else "attention_head_dim"
        raise CheckpointError(
            f"backbone config lacks {missing!r}; it is not a CogVideoX or Wan transformer config."
        )
    spec = spec_from_config(config)
    return {
        "family": spec.family,
        "inner_dim": spec.inner_dim,
        "num_layers": spec.num_layers,
        "patch_size": spec.patch_size,
        "patch_size_t": spec.patch_size_t,
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "text_embed_dim": spec.text_embed_dim,
        "time_embed_dim": spec.time_embed_dim,
    }


def fingerprint_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they match)."""
    def get(fp: Mapping[str, Any], key: str) -> Any:
        return fp.get(key, _FINGERPRINT_DEFAULTS.get(key))
    return [f"{k}: {get(found, k)} vs {get(expected, k)}" for k in FINGERPRINT_KEYS if get(expected, k) != get(found, k)]


@dataclass
class CueFusionConfig:
    """Hyperparameters of the CueFusion modules; serialised into every checkpoint.

    The per-block modulation ``Linear_l(SiLU(e_t)) -> 6 * inner_dim`` is factorised as a full-rank projection
    shared by all blocks plus a per-block ``up_l(down_l(.))`` of rank ``modulation_rank`` with a per-block bias; the
    text-stream projection is ``text_up_l(text_down_l(.))`` of rank ``text_rank`` (docs/model.md says why).

    `reference_in_every_frame`: the image-latent channels carry the reference latent in every latent frame, not in
    the leading frame only (CogVideoX I2V's layout, zeros after it). A backbone trained from scratch then finds the
    reference's backdrop and clothes at each token's own place instead of having to learn to fetch them across
    frames by attention; a pretrained I2V backbone expects the leading-frame layout (the default).

    `residual_reference`: the transformer denoises the clip minus the reference latent repeated over every frame,
    and sampling adds it back, so a zero prediction is the still reference and the whole loss is the motion. For
    backbones trained from scratch in that mode (the demo model); a pretrained backbone denoises plain latents.
    """

    modulation_rank: int = 64
    text_rank: int = 64
    cue_channels: int | None = None  # VAE latent channels of the cue videos; None: the backbone's out_channels
    norm_eps: float = 1e-6
    reference_in_every_frame: bool = False
    residual_reference: bool = False

    def validate(self) -> "CueFusionConfig":
        if self.modulation_rank < 1 or self.text_rank < 1:
            raise InputError(
                f"CueFusionConfig: modulation_rank={self.modulation_rank} and text_rank={self.text_rank} must be >= 1."
            )
        if self.cue_channels is not None and self.cue_channels < 1:
            raise InputError(f"CueFusionConfig.cue_channels={self.cue_channels}: must be >= 1 or None.")
        for name in ("reference_in_every_frame", "residual_reference"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"CueFusionConfig.{name}={getattr(self, name)!r}: must be true or false.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "CueFusionConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(data or {}).items() if k in known}).validate()
