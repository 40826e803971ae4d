"""Bundled backbone configurations, the CueFusion configuration and the backbone fingerprint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError, InputError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Short names -> bundled transformer configs (diffusers `CogVideoXTransformer3DModel` layout).
BUNDLED_BACKBONES = {
    "cogvideox-5b-i2v": "cogvideox_5b_i2v.json",
    "cogvideox1.5-5b-i2v": "cogvideox1.5_5b_i2v.json",
}
# Hugging Face repo ids of the real backbones, for messages and for matching single files.
BACKBONE_REPOS = {
    "cogvideox-5b-i2v": "THUDM/CogVideoX-5b-I2V",
    "cogvideox1.5-5b-i2v": "THUDM/CogVideoX1.5-5B-I2V",
}
SCHEDULER_CONFIG_FILE = "scheduler_cogvideox_5b.json"

# Keys of a backbone config that decide whether weights trained on one backbone fit another.
FINGERPRINT_KEYS = (
    "inner_dim", "num_layers", "patch_size", "patch_size_t", "in_channels", "out_channels",
    "text_embed_dim", "time_embed_dim",
)


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


def default_scheduler_config() -> dict:
    """The CogVideoX 5B scheduler config (v-prediction, trailing spacing, zero-terminal-SNR)."""
    return {k: v for k, v in _read_json(CONFIG_DIR / SCHEDULER_CONFIG_FILE).items() if k != "_source"}


def fingerprint(config: Mapping[str, Any]) -> dict:
    """The backbone facts that checkpoint weights depend on: inner dim, layers, patch sizes, channels, text dim."""
    config = dict(config)
    try:
        inner_dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    except KeyError as exc:
        raise CheckpointError(
            f"backbone config lacks {exc.args[0]!r}; it is not a CogVideoX transformer config."
        ) from exc
    return {
        "inner_dim": inner_dim,
        "num_layers": int(config.get("num_layers", 30)),
        "patch_size": int(config.get("patch_size", 2)),
        "patch_size_t": None if config.get("patch_size_t") is None else int(config["patch_size_t"]),
        "in_channels": int(config.get("in_channels", 16)),
        "out_channels": int(config.get("out_channels") or 16),
        "text_embed_dim": int(config.get("text_embed_dim", 4096)),
        "time_embed_dim": int(config.get("time_embed_dim", 512)),
    }


def fingerprint_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they match)."""
    return [f"{k}: {found.get(k)} vs {expected.get(k)}" for k in FINGERPRINT_KEYS if expected.get(k) != found.get(k)]


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
