"""Export a trained model to the DirectAnimator checkpoint format that `directanimator.models.load_model` reads.

From a module (`export_model`) or from a training checkpoint folder ``RUN/checkpoints/step_N``
(`export_training_checkpoint`: its ``model.safetensors``, EMA weights when the run kept an EMA, or the raw trained
weights with ``use_ema=False``: ``trainable.safetensors``, or ``sharded/`` for an FSDP run). ``weights="merged"`` folds a LoRA into the backbone
weights and writes a full checkpoint, which loads without peft and samples without the adapter overhead.
``lora_formats`` (``--lora-format diffusers|peft``) also writes the LoRA in diffusers' or peft's own format, with
the CueFusion modules beside it, into a folder (`training.lora_format`).
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from directanimator.errors import CheckpointError, InputError
from directanimator.models import DirectAnimatorTransformer, read_checkpoint, save_checkpoint
from directanimator.models.checkpoint import check_finite
from directanimator.models.loader import resolve_dtype

from .checkpointing import (MODEL, SHARDED, STATE_JSON, TRAINABLE, has_ema, is_sharded, read_trained, resolve_resume,
                            trained_files, verify_checkpoint)
from .lora_format import EXPORT_COMMAND, LORA_FORMATS, adapter_weights, export_lora, lora_folder_for

log = logging.getLogger(__name__)

EXPORT_WEIGHTS = ("auto", "lora", "full", "merged", "none")


def _has_adapters(model: DirectAnimatorTransformer) -> bool:
    return bool(getattr(model.backbone, "_hf_peft_config_loaded", False))


def merged_copy(model: DirectAnimatorTransformer) -> DirectAnimatorTransformer:
    """A copy of `model` with its LoRA folded into the backbone weights and the adapters removed."""
    if not _has_adapters(model):
        raise InputError("weights='merged': the model has no LoRA adapters to merge; export with weights='full'.")
    merged = copy.deepcopy(model)
    merged.backbone.fuse_lora()
    merged.backbone.unload_lora()
    return merged


def export_model(model: DirectAnimatorTransformer, path: str | Path, *, weights: str = "auto",
                 null_text: Tensor | None = None, scheduler_config: Mapping[str, Any] | None = None,
                 cue_config: Mapping[str, Any] | None = None, backbone_name: str = "",
                 dtype: str | torch.dtype | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write `model` as a DirectAnimator checkpoint at `path` (``.safetensors``); `model` is left unchanged.

    weights: "auto" (LoRA when attached, else CueFusion only), "lora", "full" (every backbone weight), "merged"
    (LoRA folded into full weights) or "none" (CueFusion only). `null_text` ``[1, L, D]``, `scheduler_config` and
    `cue_config` are stored for sampling; `dtype` ("bf16", "fp16", "fp32") converts floating tensors.
    """
    if not isinstance(model, DirectAnimatorTransformer):
        raise InputError(f"model: expected a DirectAnimatorTransformer, got {type(model).__name__}.")
    if weights not in EXPORT_WEIGHTS:
        raise InputError(f"weights={weights!r}: use one of {', '.join(EXPORT_WEIGHTS)}.")
    torch_dtype = resolve_dtype(dtype) if dtype is not None else None
    source = model
    if weights == "merged":
        source, weights = merged_copy(model), "full"
    return save_checkpoint(path, source, weights=weights, null_text=null_text, scheduler_config=scheduler_config,
                           cue_config=cue_config, backbone_name=backbone_name, dtype=torch_dtype, extra=extra)


def load_trained_weights(model: DirectAnimatorTransformer, trained: Mapping[str, Tensor], *,
                         source: str = "trainable weights") -> int:
    """Copy tensors named like ``model.named_parameters()`` (a ``module.`` prefix of DDP is accepted) into
    `model`; raises CheckpointError on unknown or mis-shaped names. Returns the number of tensors copied."""
    params = dict(model.named_parameters())
    unknown, bad = [], []
    pairs = []
    for key, value in trained.items():
        name = key[len("module."):] if key.startswith("module.") and key not in params else key
        if name not in params:
            unknown.append(key)
        elif params[name].shape != value.shape:
            bad.append(f"{key}: {tuple(value.shape)} vs {tuple(params[name].shape)}")
        else:
            pairs.append((params[name], value))
    if unknown or bad:
        raise CheckpointError(
            f"{source}: {len(unknown)} tensors name no parameter of the model (e.g. {unknown[:3]}), {len(bad)} have "
            f"other shapes ({bad[:3]}). The checkpoint was trained with another model, LoRA or CueFusion config."
        )
    with torch.no_grad():
        for param, value in pairs:
            param.copy_(value.to(param.dtype))
    return len(pairs)


def export_training_checkpoint(folder: str | Path, path: str | Path, *, backbone: str | Path,
                               weights: str = "auto", use_ema: bool = True, dtype: str | None = None,
                               backbone_name: str = "", lora_formats: tuple[str, ...] | list[str] = (),
                               lora_out: str | Path | None = None) -> Path:
    """Export a training checkpoint folder (``RUN/checkpoints/step_N``, or a run folder for its latest) to `path`.

    The folder's ``model.safetensors`` holds the EMA weights when the run kept an EMA; ``use_ema=False`` replaces
    them with the raw weights (``trainable.safetensors``, or ``sharded/`` for an FSDP run). `backbone` is the backbone the run trained from.
    ``weights="auto"`` keeps what the checkpoint holds: a full-backbone run exports its trained backbone, a LoRA
    run its adapter, a CueFusion-only run CueFusion alone. `lora_formats` ("diffusers", "peft") also writes the
    LoRA in those formats plus the CueFusion modules into `lora_out` (default: ``<path stem>_lora/`` beside `path`;
    see `training.lora_format.export_lora`).
    """
    from directanimator.atomic import check_output_folder
    from directanimator.models import load_model

    bad = [f for f in lora_formats if f not in LORA_FORMATS]
    if bad:
        raise InputError(f"--lora-format {bad[0]!r}: use {' or '.join(LORA_FORMATS)}.")
    lora_folder = Path(lora_out) if lora_out else lora_folder_for(path)
    if lora_formats:
        check_output_folder(lora_folder, EXPORT_COMMAND, option="--lora-out")  # before the backbone loads
    folder = Path(folder)
    if not (folder / STATE_JSON).is_file() and (folder / "checkpoints").is_dir():
        latest = resolve_resume(folder, "latest")
        if latest is None:
            raise CheckpointError(f"run folder {folder}: has no complete checkpoint yet.")
        folder = latest
    model_file = folder / MODEL
    if not model_file.is_file():
        raise CheckpointError(
            f"training checkpoint {folder}: no {MODEL}. Give RUN/checkpoints/step_N (or the run folder for its "
            "latest checkpoint) of a run that writes model files."
        )
    raw = not use_ema and has_ema(folder)
    verify_checkpoint(folder, (MODEL, *trained_files(folder)) if raw else (MODEL,))  # the files read, as saved
    ckpt = read_checkpoint(model_file)  # fail fast, before loading the backbone
    if lora_formats and ckpt.weights != "lora":
        raise InputError(f"--lora-format: training checkpoint {folder} holds {ckpt.weights!r} backbone weights, not a "
                         "LoRA (only runs with model.train='lora' have one); leave --lora-format out.")
    if weights == "auto":
        weights = ckpt.weights
    model = load_model(backbone, model_file, dtype="fp32")
    transformer = model.transformer
    if raw:
        trained = read_trained(folder)  # an FSDP run's sharded/ too
        source = folder / (SHARDED if is_sharded(folder) else TRAINABLE)  # where the raw weights were read from
        check_finite(trained, what=f"training checkpoint {source}")
        count = load_trained_weights(transformer, trained, source=str(source))
        log.info("export: raw trained weights (%d tensors) instead of the EMA", count)
    extra = {**ckpt.extra, "exported_from": str(folder), "ema": bool(use_ema and has_ema(folder))}
    common = dict(null_text=model.null_text, scheduler_config=model.scheduler_config, cue_config=model.cue_config,
                  backbone_name=backbone_name or ckpt.backbone_name, extra=extra)
    lora_dtype = resolve_dtype(dtype) if dtype is not None else None
    if lora_formats:
        adapter_weights(transformer, dtype=lora_dtype)  # its refusals (e.g. DoRA) before --out is written
    out = export_model(transformer, path, weights=weights, dtype=dtype, **common)
    if lora_formats:
        export_lora(transformer, lora_folder, formats=lora_formats, dtype=lora_dtype, **common)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import add_renamed_argument

    parser.add_argument("checkpoint", help="training checkpoint folder RUN/checkpoints/step_N, or RUN for the latest")
    add_renamed_argument(parser, "--backbone", old="--model", key="model.backbone", required=True,
                         help="the backbone the run trained from (folder, file, repo id)")
    parser.add_argument("--out", required=True, help="output DirectAnimator checkpoint (.safetensors)")
    parser.add_argument("--weights", default="auto", choices=EXPORT_WEIGHTS,
                        help="backbone weights to include; 'auto' keeps what the checkpoint holds (a full run's "
                             "backbone, a LoRA), 'merged' folds a LoRA into full weights")
    parser.add_argument("--no-ema", action="store_true", help="export the raw trained weights, not their EMA")
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"), help="convert floating tensors")
    parser.add_argument("--lora-format", action="append", default=[], choices=LORA_FORMATS,
                        help="also write the LoRA in this format (repeat for both): 'diffusers' "
                             "(pytorch_lora_weights.safetensors for load_lora_weights), 'peft' (adapter_config.json "
                             "+ adapter_model.safetensors); the CueFusion modules go beside it "
                             "(cue_fusion.safetensors)")
    parser.add_argument("--lora-out", default=None,
                        help="folder for --lora-format; unset, the --out name without .safetensors plus _lora")


def run(args: argparse.Namespace) -> int:
    if not str(args.out).endswith(".safetensors"):
        raise InputError(f"--out {args.out}: must end in .safetensors.")
    path = export_training_checkpoint(args.checkpoint, args.out, backbone=args.backbone, weights=args.weights,
                                      use_ema=not args.no_ema, dtype=args.dtype, lora_formats=args.lora_format,
                                      lora_out=args.lora_out)
    log.info("exported %s", path)
    return 0
