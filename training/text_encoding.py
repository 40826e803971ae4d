"""Text conditioning of a training cache: the null prompt and each clip's caption embedding.

The null prompt is, in order: the tensor of `model.null_text`; the backbone's own encoding of ``""`` (what its
diffusers pipelines feed the negative branch) when a text encoder is found (`model.text_encoder`, else the
backbone's ``text_encoder/`` and ``tokenizer/``); zeros otherwise. A clip's caption is its `text_embeds` file when
the metadata entry names one, else the encoding of its `caption` string. The encoder and the encoding follow the
backbone's family (`directanimator.text`): T5 at 226 tokens for CogVideoX, UMT5 at 512 tokens for Wan. Every
caption is encoded once, up front, batched, and kept under ``text/`` in the cache folder (whose key follows the
encoder), so a resumed prepare loads no encoder at all.
"""

from __future__ import annotations

import gc
import hashlib
import logging
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm import tqdm

from directanimator.atomic import save_safetensors
from directanimator.devices import process_device
from directanimator.errors import InputError
from directanimator.models.family import BackboneSpec, spec_from_config
from directanimator.text import (TextEncoderFolders, check_text_encoder, encode_prompts, find_text_encoder,
                                 fit_text_embeddings, load_text_encoder)

from .config import TrainConfig
from .data import NULL_TEXT

log = logging.getLogger(__name__)

TEXT_FOLDER = "text"  # caption embeddings in the cache folder, one file per distinct caption
ENCODE_BATCH = 8  # captions per encoder call (its activations, 226 tokens each on CogVideoX, 512 on Wan, grow with it)
# T5-XXL's and UMT5-XXL's width, which every released CogVideoX and Wan backbone takes; tiny and from-scratch
# backbones (the tests', the demo's) use far narrower text. Zeros as the null prompt of such a pretrained backbone
# are an input it has never seen, hence the warning.
PRETRAINED_TEXT_DIM = 4096


def backbone_spec(bc: dict | BackboneSpec) -> BackboneSpec:
    """The `BackboneSpec` of a backbone config dict (a spec passes through)."""
    return bc if isinstance(bc, BackboneSpec) else spec_from_config(bc)


def null_text(config: TrainConfig, bc: dict | BackboneSpec) -> Tensor:
    """``[1, max_text_seq_length, text_embed_dim]``: zeros, or the tensor of `model.null_text`."""
    spec = backbone_spec(bc)
    shape = (1, spec.max_text_seq_length, spec.text_embed_dim)
    if not config.model.null_text:
        return torch.zeros(shape)
    tensors = load_file(config.model.null_text)
    value = tensors.get("null_text", next(iter(tensors.values())) if len(tensors) == 1 else None)
    if value is None or value.reshape(-1, value.shape[-1]).shape != shape[1:]:
        raise InputError(f"model.null_text={config.model.null_text!r}: expected one tensor (or 'null_text') of "
                         f"shape {list(shape)}, found {({k: list(v.shape) for k, v in tensors.items()})}.")
    return value.float().reshape(shape)


def caption_embedding(root: Path, entry: dict, bc: dict | BackboneSpec) -> Tensor | None:
    """``[L, D]``: the entry's `text_embeds` file fitted to the backbone's text shape, or None without one."""
    if "text_embeds" not in entry:
        return None
    spec = backbone_spec(bc)
    tensors = load_file(str(root / entry["text_embeds"]))
    value = tensors.get("text_embeds", next(iter(tensors.values())))
    return fit_text_embeddings(value, max_length=spec.max_text_seq_length, dim=spec.text_embed_dim,
                               name=f"{entry['text_embeds']}")[0]


def caption_of(entry: dict) -> str | None:
    """The entry's `caption` string (None when absent or blank: the null prompt then stands for it)."""
    caption = entry.get("caption")
    if caption is None:
        return None
    if not isinstance(caption, str):
        raise InputError(f"metadata entry {entry.get('clip')!r}: caption must be a string, got "
                         f"{type(caption).__name__}; write the clip's description as text (or leave it out).")
    return caption if caption.strip() else None


def caption_file(folder: Path, caption: str) -> Path:
    """Where the cache in `folder` keeps the embedding of `caption`."""
    return folder / TEXT_FOLDER / f"{hashlib.sha256(caption.encode()).hexdigest()[:32]}.safetensors"


def text_encoder_folders(config: TrainConfig) -> TextEncoderFolders | None:
    """The text encoder prepare uses: `model.text_encoder` (an InputError when it names none), else the backbone
    folder's own, else None."""
    m = config.model
    if m.text_encoder:
        found = find_text_encoder(m.text_encoder)
        if found is None:
            raise InputError(f"config model.text_encoder={m.text_encoder!r}: no T5 or UMT5 text encoder there. Give "
                             "a folder with text_encoder/ and tokenizer/ (a CogVideoX or Wan diffusers repo), an "
                             "encoder folder holding its tokenizer, or a repo id in the local Hugging Face cache; or "
                             "leave it empty.")
        return found
    return find_text_encoder(m.backbone)


def _encode(folders: TextEncoderFolders, batches: list[list[str]], folder: Path, spec: BackboneSpec,
            device: torch.device) -> None:
    """Encode each batch of prompts in one encoder call; write each embedding ``[L, D]`` (the encoder's dtype) to
    its `caption_file`."""
    tokenizer, encoder = load_text_encoder(folders, device=device)
    total = sum(map(len, batches))
    log.info("prepare: encoding %d prompts with %s (%s, %s)", total, folders.encoder, encoder.dtype, device)
    try:
        with tqdm(total=total, desc="text", unit="prompt") as bar:
            for prompts in batches:
                embeds = encode_prompts(tokenizer, encoder, prompts, max_length=spec.max_text_seq_length)
                for prompt, value in zip(prompts, embeds.cpu()):
                    save_safetensors({"text_embeds": value.contiguous()}, caption_file(folder, prompt), {})
                bar.update(len(prompts))
    finally:
        # the encoder (T5-XXL: 9.5 GB, UMT5-XXL: 11 GB) must not sit beside the VAE for the rest of prepare
        del tokenizer, encoder
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def prepare_text(config: TrainConfig, bc: dict | BackboneSpec, entries: list[dict], folder: Path
                 ) -> Callable[[dict], Tensor | None]:
    """Write the cache's null prompt and caption embeddings (each once) and return the caption embedding of a
    metadata entry (``[L, D]`` float32, or None without a caption). `bc`: the backbone's transformer config (or
    its spec), which picks the encoder kind and the text length."""
    spec = backbone_spec(bc)
    captions = {c for e in entries if "text_embeds" not in e and (c := caption_of(e)) is not None}
    folders = text_encoder_folders(config)
    if folders is not None:
        check_text_encoder(folders, spec, fix="Set model.text_encoder to the backbone's own text encoder.")
    if folders is None and not config.model.null_text and spec.text_embed_dim == PRETRAINED_TEXT_DIM:
        name, encoder = ("Wan", "UMT5") if spec.family == "wan" else ("CogVideoX", "T5")
        log.warning("prepare: no text encoder in %s (text_encoder/ and tokenizer/), so the null prompt is zeros, "
                    "which a pretrained %s never saw (its pipelines encode \"\" with %s). Download the backbone's "
                    "text_encoder/ and tokenizer/ or set model.text_encoder.", config.model.backbone, name, encoder)
    if folders is None and captions:
        log.warning("prepare: %d distinct captions are left out (trained as the null prompt): no text encoder to "
                    "encode them; set model.text_encoder or give text_embeds files.", len(captions))
        captions = set()

    null_path = folder / NULL_TEXT
    own_null = not null_path.is_file()  # the backbone's encoding of "" is still to be made
    if own_null and (folders is None or config.model.null_text):
        save_safetensors({"null_text": null_text(config, spec)}, null_path, {})
        own_null = False
    todo = sorted(c for c in captions if not caption_file(folder, c).is_file())
    # "" goes alone, as the pipelines encode the negative prompt: a batch may differ from it in the last float bits
    batches = [[""]] * own_null + [todo[k:k + ENCODE_BATCH] for k in range(0, len(todo), ENCODE_BATCH)]
    if batches:
        _encode(folders, batches, folder, spec, process_device(config.data.device, name="data.device"))
    if own_null:
        empty = load_file(str(caption_file(folder, "")))["text_embeds"]
        save_safetensors({"null_text": empty.float()[None]}, null_path, {})

    def embedding(entry: dict) -> Tensor | None:
        if "text_embeds" in entry:  # a precomputed embedding wins over the caption
            return caption_embedding(config.data_root, entry, spec)
        caption = caption_of(entry)
        if caption is None or caption not in captions:
            return None
        return load_file(str(caption_file(folder, caption)))["text_embeds"].float()

    return embedding
