"""Text conditioning of a training cache: the null prompt and each clip's caption embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from torch import Tensor

from directanimator.atomic import save_safetensors
from directanimator.errors import InputError
from directanimator.text import fit_text_embeddings

from .config import TrainConfig
from .data import NULL_TEXT


def null_text(config: TrainConfig, bc: dict) -> Tensor:
    """``[1, max_text_seq_length, text_embed_dim]``: zeros, or the tensor of `model.null_text`."""
    shape = (1, int(bc["max_text_seq_length"]), int(bc["text_embed_dim"]))
    if not config.model.null_text:
        return torch.zeros(shape)
    tensors = load_file(config.model.null_text)
    value = tensors.get("null_text", next(iter(tensors.values())) if len(tensors) == 1 else None)
    if value is None or value.reshape(-1, value.shape[-1]).shape != shape[1:]:
        raise InputError(f"model.null_text={config.model.null_text!r}: expected one tensor (or 'null_text') of "
                         f"shape {list(shape)}, found {({k: list(v.shape) for k, v in tensors.items()})}.")
    return value.float().reshape(shape)


def caption_embedding(root: Path, entry: dict, bc: dict) -> Tensor | None:
    """``[L, D]``: the entry's `text_embeds` file fitted to the backbone's text shape, or None without one."""
    if "text_embeds" not in entry:
        return None
    tensors = load_file(str(root / entry["text_embeds"]))
    value = tensors.get("text_embeds", next(iter(tensors.values())))
    return fit_text_embeddings(value, max_length=int(bc["max_text_seq_length"]), dim=int(bc["text_embed_dim"]),
                               name=f"{entry['text_embeds']}")[0]


def prepare_text(config: TrainConfig, bc: dict, entries: list[dict], folder: Path
                 ) -> Callable[[dict], Tensor | None]:
    """Write the cache's null prompt (once) and return the caption embedding of a metadata entry (or None)."""
    if not (folder / NULL_TEXT).is_file():
        save_safetensors({"null_text": null_text(config, bc)}, folder / NULL_TEXT, {})
    return lambda entry: caption_embedding(config.data_root, entry, bc)
