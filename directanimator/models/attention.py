"""CogVideoX attention through diffusers' attention dispatcher, so that the attention-backend switch reaches it.

Wan's processor (`WanAttnProcessor`) already calls `diffusers.models.attention_dispatch.dispatch_attention_fn`;
CogVideoX's (`CogVideoXAttnProcessor2_0`) calls ``F.scaled_dot_product_attention`` itself, and diffusers 0.42 ships
no dispatcher-based processor for it, so `set_attention_backend` cannot change its kernel.
`DispatchCogVideoXAttnProcessor` is the same computation with the kernel call handed to the dispatcher.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import Attention, CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from torch import Tensor, nn


class DispatchCogVideoXAttnProcessor:
    """`CogVideoXAttnProcessor2_0`'s joint text+vision attention (rotary on the vision tokens) with the kernel chosen
    by diffusers' dispatcher (``_attention_backend``, set by `ModelMixin.set_attention_backend`).

    Written here because diffusers 0.42 has no CogVideoX processor that dispatches; the projections, norms, rotary
    embedding and output split follow diffusers' processor, computed in the dispatcher's ``[B, S, heads, D]`` layout.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor,
                 attention_mask: Tensor | None = None,
                 image_rotary_emb: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:  # vision tokens only; the text tokens come first
            query[:, text_seq_length:] = apply_rotary_emb(query[:, text_seq_length:], image_rotary_emb, sequence_dim=1)
            if not attn.is_cross_attention:
                key[:, text_seq_length:] = apply_rotary_emb(key[:, text_seq_length:], image_rotary_emb, sequence_dim=1)

        hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                              is_causal=False, backend=self._attention_backend)
        hidden_states = attn.to_out[0](hidden_states.flatten(2, 3).type_as(query))
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


def install_dispatch_attention(backbone: nn.Module) -> int:
    """Replace every `CogVideoXAttnProcessor2_0` in `backbone` by `DispatchCogVideoXAttnProcessor`; return how many.

    Other processors (Wan's, which dispatch already; fused or custom ones) are left alone.
    """
    count = 0
    for module in backbone.modules():
        if isinstance(module, Attention) and type(module.processor) is CogVideoXAttnProcessor2_0:
            module.set_processor(DispatchCogVideoXAttnProcessor())
            count += 1
    return count


def dispatching_processors(backbone: nn.Module) -> int:
    """How many attention processors of `backbone` route through diffusers' dispatcher."""
    return sum(1 for m in backbone.modules()
               if hasattr(m, "processor") and hasattr(getattr(m, "processor"), "_attention_backend"))
