"""DirectAnimator checkpoints: one safetensors file with CueFusion weights, a LoRA or full backbone weights (or
neither, when the backbone stayed frozen), the null-text embedding, and the configs in the header metadata.

Header metadata (all strings): ``format`` = "directanimator", ``format_version``, ``config`` (JSON: CueFusion
config, weights kind, LoRA config, backbone config and name, scheduler and cue configs, extra fields) and
``fingerprint`` (JSON: the backbone facts the weights depend on). Tensor names: ``cue.*``, ``lora.*`` or
``backbone.*`` (plain diffusers names), ``null_text``.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from safetensors import safe_open
from torch import Tensor

from ..atomic import save_safetensors
from ..errors import CheckpointError, InputError
from .configs import _FINGERPRINT_DEFAULTS, CueFusionConfig, fingerprint, fingerprint_mismatch
from .family import spec_from_config
from .transformer import DirectAnimatorTransformer, plain_backbone_key, wrapped_backbone_key

log = logging.getLogger(__name__)

FORMAT_NAME = "directanimator"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
WeightsKind = Literal["auto", "lora", "full", "none"]
_LORA_CONFIG_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora",
                     "init_lora_weights")


def refuse_pickle(path: str | Path, *, what: str = "checkpoint") -> None:
    """Raise CheckpointError for pickle-based files, which can run arbitrary code when loaded."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{what} {path}: '{path.suffix}' files are Python pickles, which can execute code when loaded, and are "
            "refused. Convert it to safetensors once in a trusted environment, e.g. "
            "`python -c \"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{path.name}', map_location='cpu', weights_only=True), '{path.stem}.safetensors')\"` "
            "(diffusers models: `from_pretrained(...).save_pretrained(out, safe_serialization=True)`)."
        )


def check_safetensors_file(path: str | Path, *, what: str = "checkpoint") -> dict[str, str]:
    """Validate a safetensors file's framing (header and data length) and return its header metadata.

    Raises CheckpointError naming the file when it is missing, a pickle, truncated or not safetensors at all.
    """
    path = Path(path)
    refuse_pickle(path, what=what)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file.")
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise ValueError(f"header length {header_len} exceeds the file size {size}")
            header = json.loads(fh.read(header_len))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end > size:
            raise ValueError(f"the tensors need {8 + header_len + end} bytes but the file has {size}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{what} {path}: not a valid safetensors file ({exc}). It is truncated or corrupted (an interrupted "
            "download or copy?); download or copy it again."
        ) from exc
    return dict(header.get("__metadata__") or {})


def read_safetensors(path: str | Path, *, what: str = "checkpoint") -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the header metadata of a validated safetensors file."""
    metadata = check_safetensors_file(path, what=what)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error type on corrupted content
        raise CheckpointError(f"{what} {path}: cannot read its tensors ({exc}); the file is corrupted.") from exc
    return tensors, metadata


def check_finite(tensors: Mapping[str, Tensor], *, what: str, fix: str = "") -> None:
    """Raise CheckpointError naming the first floating tensor of `tensors` that holds NaN or infinite values (a
    diverged training run saved them; sampling with them gives a black or noise video)."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            raise CheckpointError(
                f"{what}: tensor {name!r} holds {nan} NaN and {inf} infinite values (of {value.numel()}); the "
                "training that wrote it diverged, or the file is damaged. "
                + (fix or "Use a checkpoint saved before the divergence (an earlier step), or retrain with a lower "
                          "learning rate.")
            )


def safetensors_shapes(path: str | Path, *, what: str = "file") -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the header only (no tensor data is read)."""
    check_safetensors_file(path, what=what)
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}


def is_directanimator_checkpoint(path: str | Path) -> bool:
    """Whether a safetensors file carries the DirectAnimator format marker."""
    try:
        return check_safetensors_file(path).get("format") == FORMAT_NAME
    except CheckpointError:
        return False


@dataclass
class DirectAnimatorCheckpoint:
    """A checkpoint read from disk (or about to be written)."""

    path: Path | None
    weights: str  # "lora", "full" or "none"
    cue_fusion: CueFusionConfig
    fingerprint: dict
    cue_state: dict[str, Tensor]
    backbone_config: dict = field(default_factory=dict)
    backbone_name: str = ""
    lora_config: dict | None = None
    lora_state: dict[str, Tensor] = field(default_factory=dict)
    backbone_state: dict[str, Tensor] = field(default_factory=dict)
    null_text: Tensor | None = None
    scheduler_config: dict | None = None
    cue_config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def _adapter_names(backbone) -> list[str]:
    if not getattr(backbone, "_hf_peft_config_loaded", False):
        return []
    return list(getattr(backbone, "peft_config", {}) or {})


def _lora_config_dict(peft_config) -> dict:
    data = peft_config.to_dict()
    out = {k: data[k] for k in _LORA_CONFIG_KEYS if k in data}
    if isinstance(out.get("target_modules"), (set, frozenset, tuple)):
        out["target_modules"] = sorted(out["target_modules"])
    return out


def save_checkpoint(path: str | Path, model: DirectAnimatorTransformer, *, weights: WeightsKind = "auto",
                    null_text: Tensor | None = None, scheduler_config: Mapping[str, Any] | None = None,
                    cue_config: Mapping[str, Any] | None = None, backbone_name: str = "",
                    adapter_name: str = "default", dtype: torch.dtype | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write `model`'s CueFusion weights plus a LoRA (``weights="lora"``), the full backbone (``"full"``) or no
    backbone weights (``"none"``; ``"auto"`` picks "lora" when an adapter is attached) to `path` atomically.

    `extra` (JSON-serialisable) is stored in the header, e.g. training step and recipe.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"checkpoint path {path}: must end in .safetensors (only safetensors files are written).")
    adapters = _adapter_names(model.backbone)
    if weights == "auto":
        weights = "lora" if adapters else "none"
    if weights not in ("lora", "full", "none"):
        raise InputError(f"weights={weights!r}: use 'auto', 'lora', 'full' or 'none'.")

    def prepare(t: Tensor) -> Tensor:
        t = t.detach().to("cpu")
        return (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous().clone()

    tensors = {f"cue.{k}": prepare(v) for k, v in model.cue_state_dict().items()}
    lora_config = None
    if weights == "lora":
        if adapter_name not in adapters:
            raise InputError(
                f"weights='lora': the backbone has no LoRA adapter named {adapter_name!r} (found {adapters}). Attach "
                "one with model.backbone.add_adapter(peft.LoraConfig(...)) or save with weights='full' or 'none'."
            )
        from peft.utils import get_peft_model_state_dict

        lora_state = get_peft_model_state_dict(model.backbone, adapter_name=adapter_name)
        tensors.update({f"lora.{plain_backbone_key(k)}": prepare(v) for k, v in lora_state.items()})
        lora_config = _lora_config_dict(model.backbone.peft_config[adapter_name])
    elif weights == "full":
        if adapters:
            raise InputError(
                f"weights='full': the backbone carries LoRA adapters {adapters}; merge them first "
                "(model.backbone.fuse_lora(); model.backbone.unload_lora()) or save with weights='lora'."
            )
        tensors.update({f"backbone.{k}": prepare(v) for k, v in model.backbone_state_dict().items()})
    if null_text is not None:
        tensors["null_text"] = prepare(null_text)
    config = {
        "cue_fusion": model.cue_config.to_dict(),
        "weights": weights,
        "lora": lora_config,
        "backbone": {k: v for k, v in dict(model.backbone.config).items() if not k.startswith("_")},
        "backbone_name": backbone_name,
        "scheduler": dict(scheduler_config) if scheduler_config else None,
        "cue_config": dict(cue_config or {}),
        "extra": dict(extra or {}),
    }
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config, default=_json_default),
        "fingerprint": json.dumps(model.fingerprint),
    }
    save_safetensors(tensors, path, metadata)
    log.info("saved DirectAnimator checkpoint %s (%s weights, %d tensors)", path, weights, len(tensors))
    return path


def _json_default(value):
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, torch.dtype):
        return str(value)
    return str(value)


def read_checkpoint(path: str | Path) -> DirectAnimatorCheckpoint:
    """Read and validate a DirectAnimator checkpoint; raise CheckpointError naming the file on any problem."""
    path = Path(path)
    tensors, metadata = read_safetensors(path, what="DirectAnimator checkpoint")
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"DirectAnimator checkpoint {path}: the header has no DirectAnimator format marker (found metadata keys "
            f"{sorted(metadata)}). It is not a DirectAnimator checkpoint; a backbone file (CogVideoX or Wan transformer) goes in `backbone`."
        )
    try:
        version = int(metadata.get("format_version", "0"))
        config = json.loads(metadata["config"])
        fp = json.loads(metadata["fingerprint"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"DirectAnimator checkpoint {path}: damaged header metadata ({exc}).") from exc
    if version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"DirectAnimator checkpoint {path}: format version {version}, this code reads up to {FORMAT_VERSION}. "
            "Update the DirectAnimator package."
        )
    check_finite(tensors, what=f"DirectAnimator checkpoint {path}")
    groups: dict[str, dict[str, Tensor]] = {"cue": {}, "lora": {}, "backbone": {}}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix in groups and rest:
            groups[prefix][rest] = value
    return DirectAnimatorCheckpoint(
        path=path,
        weights=config.get("weights", "none"),
        cue_fusion=CueFusionConfig.from_dict(config.get("cue_fusion")),
        fingerprint=fp,
        cue_state=groups["cue"],
        backbone_config=config.get("backbone") or {},
        backbone_name=config.get("backbone_name", ""),
        lora_config=config.get("lora"),
        lora_state=groups["lora"],
        backbone_state=groups["backbone"],
        null_text=tensors.get("null_text"),
        scheduler_config=config.get("scheduler"),
        cue_config=config.get("cue_config") or {},
        extra=config.get("extra") or {},
        format_version=version,
    )


FAMILY_NAMES = {"cogvideox": "CogVideoX", "wan": "Wan"}


def checkpoint_family(ckpt: DirectAnimatorCheckpoint) -> str:
    """The backbone family a checkpoint was trained for; checkpoints written before Wan support record none and are
    CogVideoX ones."""
    return str(ckpt.fingerprint.get("family", _FINGERPRINT_DEFAULTS["family"]))


def _variant(config: Mapping[str, Any]) -> str:
    try:
        return spec_from_config(config).variant
    except CheckpointError:
        return "unknown variant"


def check_compatible(ckpt: DirectAnimatorCheckpoint, backbone_config: Mapping[str, Any], *,
                     backbone_name: str = "") -> None:
    """Raise CheckpointError when `ckpt` was trained for a backbone other than one with `backbone_config`; a
    checkpoint of another backbone family (CogVideoX vs Wan) gets its own message naming both families."""
    found = fingerprint(backbone_config)
    loaded = f" {backbone_name}" if backbone_name else ""
    trained, here = checkpoint_family(ckpt), found["family"]
    if trained != here:
        what = [_variant(ckpt.backbone_config)] if ckpt.backbone_config else []
        what += [ckpt.backbone_name] if ckpt.backbone_name else []
        raise CheckpointError(
            f"DirectAnimator checkpoint {ckpt.path}: trained for a {FAMILY_NAMES.get(trained, trained)} backbone"
            f"{' (' + ', '.join(what) + ')' if what else ''}, but the loaded backbone{loaded} is a "
            f"{FAMILY_NAMES.get(here, here)} backbone ({_variant(backbone_config)}). CueFusion "
            "weights, LoRAs and backbone weights do not carry over between backbone families: load the checkpoint "
            f"with the {FAMILY_NAMES.get(trained, trained)} backbone it was trained for, or use a checkpoint trained "
            f"on {FAMILY_NAMES.get(here, here)}."
        )
    diffs = fingerprint_mismatch(ckpt.fingerprint, found)
    if diffs:
        trained_for = ckpt.backbone_name or "another backbone"
        raise CheckpointError(
            f"DirectAnimator checkpoint {ckpt.path}: trained for {trained_for}, which differs from the loaded "
            f"backbone{loaded} ({'; '.join(f'{d} (loaded vs checkpoint)' for d in diffs)}). "
            "Load it with the backbone it was trained for."
        )


def apply_checkpoint(model: DirectAnimatorTransformer, ckpt: DirectAnimatorCheckpoint, *,
                     adapter_name: str = "default") -> None:
    """Load a checkpoint's CueFusion weights and its LoRA or full backbone weights into `model`.

    `model` must have been built with ``ckpt.cue_fusion`` (see `loader.build_transformer`).
    """
    source = f"DirectAnimator checkpoint {ckpt.path}"
    check_compatible(ckpt, dict(model.backbone.config))
    model.load_cue_state_dict(ckpt.cue_state, source=source)
    if ckpt.weights == "full":
        model.load_backbone_state_dict(ckpt.backbone_state, source=source)
    elif ckpt.weights == "lora":
        if not ckpt.lora_config or not ckpt.lora_state:
            raise CheckpointError(f"{source}: says it holds a LoRA but has no LoRA config or tensors.")
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict

        if adapter_name in _adapter_names(model.backbone):
            raise CheckpointError(f"{source}: the backbone already has an adapter named {adapter_name!r}.")
        model.backbone.add_adapter(LoraConfig(**ckpt.lora_config), adapter_name=adapter_name)
        state = {wrapped_backbone_key(k): v for k, v in ckpt.lora_state.items()}
        try:
            result = set_peft_model_state_dict(model.backbone, state, adapter_name=adapter_name)
        except RuntimeError as exc:  # size mismatches
            raise CheckpointError(f"{source}: LoRA tensors do not fit this backbone ({exc}).") from exc
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
        if unexpected or missing:
            raise CheckpointError(
                f"{source}: LoRA tensors do not fit this backbone (unexpected {unexpected[:3]}, missing {missing[:3]})."
            )
    log.info("applied %s (%s weights)", ckpt.path, ckpt.weights)
