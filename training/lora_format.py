"""A trained LoRA in the formats the ecosystem reads, beside the CueFusion modules in the project's own format.

A DirectAnimator LoRA adapts the plain backbone, so it can be written under diffusers' key names
(``transformer_blocks.N.attn1.to_q.lora_A.weight`` on CogVideoX, ``blocks.N.attn1.to_q.lora_A.weight`` on Wan) and
loaded by tools that know nothing of CueFusion:

- ``diffusers``: ``pytorch_lora_weights.safetensors`` with the ``transformer.`` prefix and the LoRA config (rank,
  alpha, target modules) in its ``lora_adapter_metadata`` header, as ``CogVideoXLoraLoaderMixin.save_lora_weights``
  (``WanLoraLoaderMixin``'s on Wan) writes it (and the image-to-video pipeline's ``load_lora_weights`` reads it,
  with the alpha, so the scale is ``lora_alpha / r`` as trained);
- ``peft``: ``adapter_config.json`` plus ``adapter_model.safetensors`` (``base_model.model.`` prefix), the folder
  ``peft.PeftModel.from_pretrained(backbone, folder)`` reads.

The CueFusion modules cannot travel as a LoRA (they are new modules); the folder holds them as a DirectAnimator
checkpoint without backbone weights (``cue_fusion.safetensors``), which `directanimator.models.load_model` reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from directanimator.atomic import replace_output_folder
from directanimator.errors import InputError
from directanimator.models import DirectAnimatorTransformer, save_checkpoint
from directanimator.models.transformer import plain_backbone_key

log = logging.getLogger(__name__)

LORA_FORMATS = ("diffusers", "peft")
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
PEFT_CONFIG_FILE = "adapter_config.json"  # peft's CONFIG_NAME
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME
PEFT_PREFIX = "base_model.model."  # where peft's PeftModel keeps the wrapped model's state
CUE_FILE = "cue_fusion.safetensors"
EXPORT_COMMAND = "python -m training export --lora-format"  # the output marker of a LoRA folder
# LoraConfig fields that decide how the tensors are applied (the rest only concern training)
_CONFIG_KEYS = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora", "use_dora",
                "rank_pattern", "alpha_pattern")


def adapter_weights(model: DirectAnimatorTransformer, *, adapter_name: str = "default",
                    dtype: torch.dtype | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The LoRA of `model`'s backbone under plain diffusers names (``transformer_blocks.0.attn1.to_q.lora_A.weight``,
    without the CueFusion wrapper's ``.block``) and the LoraConfig fields that apply it (r, lora_alpha, ...)."""
    from peft.utils import get_peft_model_state_dict

    configs = dict(getattr(model.backbone, "peft_config", None) or {})
    if adapter_name not in configs:
        raise InputError(
            f"LoRA export: the backbone has no LoRA adapter named {adapter_name!r} "
            f"(found {sorted(configs) or 'none'}). "
            "Only a run with model.train='lora' has one; export a full run with --weights full."
        )
    state = get_peft_model_state_dict(model.backbone, adapter_name=adapter_name)

    def prepare(t: Tensor) -> Tensor:
        t = t.detach().to("cpu")
        return (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous().clone()

    tensors = {plain_backbone_key(k): prepare(v) for k, v in state.items()}
    data = configs[adapter_name].to_dict()
    config = {k: data[k] for k in _CONFIG_KEYS if k in data}
    if isinstance(config.get("target_modules"), (set, frozenset, tuple)):
        config["target_modules"] = sorted(config["target_modules"])
    if config.get("use_dora"):
        raise InputError("LoRA export: DoRA adapters (use_dora) are not written in the diffusers/peft formats here; "
                         "export the merged checkpoint (--weights merged) instead.")
    return tensors, config


def write_diffusers_lora(folder: str | Path, tensors: Mapping[str, Tensor], config: Mapping[str, Any], *,
                         family: str = "cogvideox") -> Path:
    """``folder/pytorch_lora_weights.safetensors`` as diffusers' LoRA writer of the backbone `family` makes it
    (CogVideoX's or Wan's: ``transformer.`` prefix, the config in the ``lora_adapter_metadata`` header); returns its
    path. `folder` is one being filled (`export_lora` swaps it in whole)."""
    from diffusers.loaders.lora_pipeline import CogVideoXLoraLoaderMixin, WanLoraLoaderMixin

    # diffusers' own writer: its key prefix and metadata layout are exactly what its loader expects
    writer = WanLoraLoaderMixin if family == "wan" else CogVideoXLoraLoaderMixin
    writer.save_lora_weights(str(folder), transformer_lora_layers=dict(tensors),
                                               transformer_lora_adapter_metadata=dict(config),
                                               weight_name=DIFFUSERS_LORA_FILE)
    return Path(folder) / DIFFUSERS_LORA_FILE


def write_peft_adapter(folder: str | Path, tensors: Mapping[str, Tensor], config: Mapping[str, Any], *,
                       base_model: str = "") -> Path:
    """``adapter_config.json`` (written by peft's LoraConfig) and ``adapter_model.safetensors`` into `folder`, the
    layout ``peft.PeftModel.from_pretrained(backbone, folder)`` reads; returns `folder`. `folder` is one being
    filled (`export_lora` swaps it in whole)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    folder = Path(folder)
    LoraConfig(**config, base_model_name_or_path=base_model or None).save_pretrained(str(folder))
    save_file({PEFT_PREFIX + k: v for k, v in tensors.items()}, str(folder / PEFT_WEIGHTS_FILE), {"format": "pt"})
    return folder


def lora_folder_for(out: str | Path) -> Path:
    """The default LoRA folder beside an exported checkpoint: ``model.safetensors`` -> ``model_lora/``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_lora")


def export_lora(model: DirectAnimatorTransformer, folder: str | Path, *, formats: Iterable[str] = ("diffusers",),
                null_text: Tensor | None = None, scheduler_config: Mapping[str, Any] | None = None,
                cue_config: Mapping[str, Any] | None = None, backbone_name: str = "",
                dtype: torch.dtype | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write `model`'s LoRA in each of `formats` ("diffusers", "peft") plus its CueFusion modules
    (``cue_fusion.safetensors``, a DirectAnimator checkpoint without backbone weights) into `folder`, which is
    replaced as a whole (only when new, empty or an earlier LoRA export); returns `folder`."""
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in LORA_FORMATS]
    if not formats or bad:
        raise InputError(f"LoRA formats {bad or formats}: use one or more of {', '.join(LORA_FORMATS)}.")
    if not isinstance(model, DirectAnimatorTransformer):
        raise InputError(f"model: expected a DirectAnimatorTransformer, got {type(model).__name__}.")
    tensors, config = adapter_weights(model, dtype=dtype)  # fails before the folder is touched
    with replace_output_folder(folder, EXPORT_COMMAND, option="--lora-out") as tmp:
        if "diffusers" in formats:
            write_diffusers_lora(tmp, tensors, config, family=model.family.name)
        if "peft" in formats:
            write_peft_adapter(tmp, tensors, config, base_model=backbone_name)
        save_checkpoint(tmp / CUE_FILE, model, weights="none", null_text=null_text, scheduler_config=scheduler_config,
                        cue_config=cue_config, backbone_name=backbone_name, dtype=dtype,
                        extra={**dict(extra or {}), "lora_formats": formats, "lora": config})
    log.info("exported the LoRA (%s; r=%s, alpha=%s, %d tensors) and CueFusion to %s", ", ".join(formats),
             config.get("r"), config.get("lora_alpha"), len(tensors), folder)
    return Path(folder)
