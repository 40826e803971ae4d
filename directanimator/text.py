"""Text embeddings: CogVideoX takes T5-XXL token embeddings; animation uses the checkpoint's null prompt unless
the caller supplies its own."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import InputError


def fit_text_embeddings(embeds: Tensor, *, max_length: int, dim: int, name: str = "text") -> Tensor:
    """T5 token embeddings ``[1, L, dim]`` (or ``[L, dim]``) zero-padded or truncated to ``[1, max_length, dim]``.

    CogVideoX pipelines pad prompts to ``max_text_seq_length`` with the padding tokens' embeddings; zero padding is
    the closest model-free equivalent, and truncation keeps the first tokens as the tokenizer would.
    """
    if not isinstance(embeds, Tensor):
        raise InputError(f"{name}: expected a tensor of T5 embeddings, got {type(embeds).__name__}.")
    if embeds.ndim == 2:
        embeds = embeds[None]
    if embeds.ndim != 3 or embeds.shape[0] != 1:
        raise InputError(f"{name}: expected embeddings [1, tokens, {dim}], got shape {tuple(embeds.shape)}.")
    if embeds.shape[-1] != dim:
        raise InputError(
            f"{name}: embeddings have {embeds.shape[-1]} features but the backbone takes {dim} (T5-XXL gives 4096). "
            "Use a T5-XXL text encoder (e.g. ComfyUI's CLIPLoader with type 'cogvideox' / t5xxl)."
        )
    tokens = embeds.shape[1]
    if tokens >= max_length:
        return embeds[:, :max_length].float()
    pad = torch.zeros(1, max_length - tokens, dim, dtype=torch.float32, device=embeds.device)
    return torch.cat([embeds.float(), pad], dim=1)
