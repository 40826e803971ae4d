"""Text embeddings: CogVideoX takes T5-XXL token embeddings; animation uses the checkpoint's null prompt unless
the caller supplies its own. The backbone's own T5 (its ``text_encoder/`` and ``tokenizer/``) is found, keyed,
loaded and run here exactly as the diffusers CogVideoX pipelines run it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .errors import InputError

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- the backbone's own text encoder
# model_type -> encoder class. CogVideoX's T5 only: Wan's UMT5 is encoded another way (attention mask, padding
# zeroed, 512 tokens), which `encode_prompts` does not do.
T5_ENCODERS = {"t5": "T5EncoderModel"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
# Weight files are keyed by size plus a sample of their bytes: a T5-XXL encoder is about 9.5 GB, and hashing it
# whole at every training start (the cache key is computed there) would cost tens of seconds; other weights differ
# in every tensor, so their first and last MiB differ too.
_SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True)
class TextEncoderFolders:
    """Where a T5 text encoder (``config.json`` plus weights) and its tokenizer live."""

    encoder: Path
    tokenizer: Path

    @property
    def config(self) -> dict:
        return json.loads((self.encoder / "config.json").read_text())


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _is_t5(folder: Path) -> bool:
    path = folder / "config.json"
    try:
        return path.is_file() and json.loads(path.read_text()).get("model_type") in T5_ENCODERS
    except (OSError, ValueError):
        return False


def _cached_repo(repo_id: str) -> Path | None:
    """The local snapshot folder of Hugging Face repo `repo_id` when it holds a text encoder (no download)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "text_encoder/config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parents[1] if isinstance(found, str) else None


def find_text_encoder(source: str | Path) -> TextEncoderFolders | None:
    """The T5 encoder and tokenizer of `source`, or None where it has none.

    `source`: a diffusers pipeline folder (``text_encoder/`` and ``tokenizer/``, as every CogVideoX repo ships),
    a T5 encoder folder that holds its tokenizer too, or a Hugging Face repo id whose text encoder is already in the
    local cache (nothing is downloaded: T5-XXL is about 9.5 GB). An encoder without a tokenizer is an InputError.
    """
    if not str(source):
        return None
    root = Path(source).expanduser()
    if not root.exists():
        root = _cached_repo(str(source)) if "/" in str(source) and not str(source).startswith((".", "/", "~")) \
            else None
        if root is None:
            return None
    for encoder, tokenizer in ((root / "text_encoder", root / "tokenizer"), (root, root)):
        if not _is_t5(encoder):
            continue
        for folder in (tokenizer, encoder):
            if _has_tokenizer(folder):
                return TextEncoderFolders(encoder, folder)
        raise InputError(f"text encoder {encoder}: no tokenizer beside it (expected {tokenizer} with one of "
                         f"{', '.join(TOKENIZER_FILES)}). Copy the backbone repo's tokenizer/ folder there.")
    return None


def _sampled_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(_SAMPLE_BYTES))
        fh.seek(max(0, size - _SAMPLE_BYTES))
        digest.update(fh.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def text_encoder_fingerprint(source: str | Path) -> str | None:
    """16 hex digits that change when the text encoder of `source` (`find_text_encoder`) changes: its config and
    tokenizer files by content, its weight files by name, size and a sample of their bytes. None without one."""
    folders = find_text_encoder(source)
    if folders is None:
        return None
    digest = hashlib.sha256()
    for folder in dict.fromkeys((folders.encoder, folders.tokenizer)):
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            weights = path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
            part = _sampled_digest(path) if weights else hashlib.sha256(path.read_bytes()).hexdigest()
            digest.update(f"{folder.name}/{path.name}:{part}\n".encode())
    return digest.hexdigest()[:16]


def load_text_encoder(folders: TextEncoderFolders, *, device: str | torch.device = "cpu"):
    """``(tokenizer, encoder)`` from `folders`: the tokenizer through transformers' AutoTokenizer, the encoder as
    its T5 encoder class in the dtype its weights are stored in, in eval mode on `device`."""
    try:
        import transformers
    except ImportError:
        raise InputError(f"text encoder {folders.encoder}: encoding captions needs the `transformers` package "
                         "(pip install transformers sentencepiece).") from None
    model_type = folders.config.get("model_type")
    if model_type not in T5_ENCODERS:
        raise InputError(f"text encoder {folders.encoder}: model_type {model_type!r} is not a T5 encoder "
                         f"({', '.join(T5_ENCODERS)}).")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folders.tokenizer), local_files_only=True)
    except (ImportError, OSError, ValueError) as error:
        # a folder with spiece.model and no tokenizer.json (as T5 repos ship it) is converted by transformers through
        # sentencepiece's protobuf schema, which recent sentencepiece builds (0.2.3) generate for protobuf 5 only,
        # while mediapipe 0.10.21 pins protobuf < 5
        raise InputError(
            f"text tokenizer {folders.tokenizer}: transformers cannot load it ({type(error).__name__}: "
            f"{str(error)[:300]}). For a folder holding spiece.model only, install sentencepiece 0.2.0 (the last "
            "that reads it with protobuf < 5, which mediapipe pins) or put the tokenizer's tokenizer.json beside it."
        ) from error
    encoder = getattr(transformers, T5_ENCODERS[model_type]).from_pretrained(
        str(folders.encoder), dtype="auto", local_files_only=True)
    return tokenizer, encoder.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_prompts(tokenizer, encoder, prompts: Sequence[str], *, max_length: int) -> Tensor:
    """``[N, max_length, D]`` T5 embeddings of `prompts`, encoded as the diffusers CogVideoX pipelines do: the
    tokenizer pads to `max_length` (the backbone's ``max_text_seq_length``), truncates, adds ``</s>``; the encoder's
    last hidden state, without an attention mask, in the encoder's dtype and on its device."""
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputError(f"prompts: expected a non-empty list of strings, got {prompts!r:.200}.")
    ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                    return_tensors="pt").input_ids
    lengths = [len(row) for row in tokenizer(prompts, add_special_tokens=True).input_ids]
    cut = [p for p, n in zip(prompts, lengths) if n > max_length]
    if cut:
        log.warning("%d prompt(s) longer than the backbone's %d text tokens were truncated, e.g. %r", len(cut),
                    max_length, cut[0][:120])
    return encoder(input_ids=ids.to(encoder.device))[0]
