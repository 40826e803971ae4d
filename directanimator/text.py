"""Text embeddings: CogVideoX takes T5-XXL token embeddings, Wan UMT5-XXL ones; animation uses the checkpoint's null
prompt unless the caller supplies its own. The backbone's own text encoder (its ``text_encoder/`` and
``tokenizer/``) is found, keyed, loaded and run here exactly as the family's diffusers pipelines run it:

- T5 (CogVideoX): ``max_text_seq_length`` (226) tokens, padded with the pad token, no attention mask;
- UMT5 (Wan): the prompt cleaned as diffusers' Wan pipelines clean it, 512 tokens with the attention mask, the
  hidden states kept for the prompt's own tokens and zeros after them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from .errors import InputError

if TYPE_CHECKING:  # the models package may import this module (no import cycle at run time)
    from .models.family import BackboneSpec

log = logging.getLogger(__name__)


def fit_text_embeddings(embeds: Tensor, *, max_length: int, dim: int, name: str = "text") -> Tensor:
    """T5 / UMT5 token embeddings ``[1, L, dim]`` (or ``[L, dim]``) zero-padded or truncated to
    ``[1, max_length, dim]``.

    Wan pipelines pad a prompt's embeddings with zeros exactly so. CogVideoX pipelines pad prompts to
    ``max_text_seq_length`` with the padding tokens' embeddings; zero padding is the closest model-free equivalent
    there. Truncation keeps the first tokens as the tokenizer would.
    """
    if not isinstance(embeds, Tensor):
        raise InputError(f"{name}: expected a tensor of T5 embeddings, got {type(embeds).__name__}.")
    if embeds.ndim == 2:
        embeds = embeds[None]
    if embeds.ndim != 3 or embeds.shape[0] != 1:
        raise InputError(f"{name}: expected embeddings [1, tokens, {dim}], got shape {tuple(embeds.shape)}.")
    if embeds.shape[-1] != dim:
        raise InputError(
            f"{name}: embeddings have {embeds.shape[-1]} features but the backbone takes {dim} (T5-XXL and UMT5-XXL "
            "give 4096). Use the backbone's own text encoder (e.g. ComfyUI's CLIPLoader with t5xxl and type "
            "'cogvideox' for CogVideoX, umt5_xxl and type 'wan' for Wan)."
        )
    tokens = embeds.shape[1]
    if tokens >= max_length:
        return embeds[:, :max_length].float()
    pad = torch.zeros(1, max_length - tokens, dim, dtype=torch.float32, device=embeds.device)
    return torch.cat([embeds.float(), pad], dim=1)


# --------------------------------------------------------------------------- the backbone's own text encoder
# model_type -> encoder class: CogVideoX's T5, Wan's UMT5. `encode_prompts` encodes each the way its family's
# pipelines do; FAMILY_ENCODERS says which one a backbone family takes.
TEXT_ENCODERS = {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel"}
FAMILY_ENCODERS = {"cogvideox": "t5", "wan": "umt5"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
# Weight files are keyed by size plus a sample of their bytes: a T5-XXL encoder is about 9.5 GB, and hashing it
# whole at every training start (the cache key is computed there) would cost tens of seconds; other weights differ
# in every tensor, so their first and last MiB differ too.
_SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True)
class TextEncoderFolders:
    """Where a T5 / UMT5 text encoder (``config.json`` plus weights) and its tokenizer live."""

    encoder: Path
    tokenizer: Path

    @property
    def config(self) -> dict:
        return json.loads((self.encoder / "config.json").read_text())

    @property
    def model_type(self) -> str:
        """``"t5"`` (CogVideoX) or ``"umt5"`` (Wan)."""
        return str(self.config.get("model_type"))


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _is_text_encoder(folder: Path) -> bool:
    path = folder / "config.json"
    try:
        return path.is_file() and json.loads(path.read_text()).get("model_type") in TEXT_ENCODERS
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
    """The T5 or UMT5 encoder and tokenizer of `source`, or None where it has none.

    `source`: a diffusers pipeline folder (``text_encoder/`` and ``tokenizer/``, as every CogVideoX and Wan
    diffusers repo ships), an encoder folder that holds its tokenizer too, or a Hugging Face repo id whose text
    encoder is already in the local cache (nothing is downloaded: T5-XXL is about 9.5 GB, UMT5-XXL 11 GB). An
    encoder without a tokenizer is an InputError.
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
        if not _is_text_encoder(encoder):
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


def check_text_encoder(folders: TextEncoderFolders, spec: "BackboneSpec", *,
                       fix: str = "Use the backbone's own text_encoder/ and tokenizer/.") -> None:
    """InputError (ending in `fix`) unless `folders` holds the kind of text encoder `spec`'s family takes (T5 for
    CogVideoX, UMT5 for Wan) at the backbone's text width."""
    want = FAMILY_ENCODERS.get(spec.family)
    if folders.model_type != want:
        raise InputError(f"text encoder {folders.encoder}: a {folders.model_type!r} encoder, but a {spec.family} "
                         f"backbone takes {want!r} (CogVideoX: T5-XXL, Wan: UMT5-XXL). {fix}")
    width = folders.config.get("d_model")
    if width != spec.text_embed_dim:
        raise InputError(f"text encoder {folders.encoder}: it gives {width}-wide embeddings but the backbone takes "
                         f"{spec.text_embed_dim} (T5-XXL and UMT5-XXL: 4096). {fix}")


def load_text_encoder(folders: TextEncoderFolders, *, device: str | torch.device = "cpu"):
    """``(tokenizer, encoder)`` from `folders`: the tokenizer through transformers' AutoTokenizer, the encoder as
    its T5 or UMT5 encoder class in the dtype its weights are stored in, in eval mode on `device`."""
    try:
        import transformers
    except ImportError:
        raise InputError(f"text encoder {folders.encoder}: encoding captions needs the `transformers` package "
                         "(pip install transformers sentencepiece).") from None
    model_type = folders.model_type
    if model_type not in TEXT_ENCODERS:
        raise InputError(f"text encoder {folders.encoder}: model_type {model_type!r} is neither a T5 nor a UMT5 "
                         f"encoder ({', '.join(TEXT_ENCODERS)}).")
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
    encoder = getattr(transformers, TEXT_ENCODERS[model_type]).from_pretrained(
        str(folders.encoder), dtype="auto", local_files_only=True)
    return tokenizer, encoder.to(device).eval().requires_grad_(False)


def _clean_wan_prompts(prompts: list[str]) -> list[str]:
    # diffusers' own cleaning (ftfy when installed, HTML entities, whitespace) rather than a copy: the captions then
    # match what its Wan pipelines encode in the same environment
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return [prompt_clean(p) for p in prompts]


@torch.no_grad()
def encode_prompts(tokenizer, encoder, prompts: Sequence[str], *, max_length: int) -> Tensor:
    """``[N, max_length, D]`` embeddings of `prompts`, encoded as the diffusers pipelines of the encoder's family do
    (the tokenizer pads to `max_length`, the backbone's ``max_text_seq_length``, truncates and adds ``</s>``):

    - T5 (CogVideoX pipelines): the encoder's last hidden state over all `max_length` tokens, without an
      attention mask;
    - UMT5 (Wan pipelines, `max_length` 512): each prompt cleaned as those pipelines clean it, encoded with the
      attention mask, its hidden states kept for its own tokens (``</s>`` included) and zeros after them.

    In the encoder's dtype and on its device.
    """
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputError(f"prompts: expected a non-empty list of strings, got {prompts!r:.200}.")
    masked = getattr(encoder.config, "model_type", None) == "umt5"
    if masked:
        prompts = _clean_wan_prompts(prompts)
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                       return_attention_mask=True, return_tensors="pt")
    lengths = [len(row) for row in tokenizer(prompts, add_special_tokens=True).input_ids]
    cut = [p for p, n in zip(prompts, lengths) if n > max_length]
    if cut:
        log.warning("%d prompt(s) longer than the backbone's %d text tokens were truncated, e.g. %r", len(cut),
                    max_length, cut[0][:120])
    ids = tokens.input_ids.to(encoder.device)
    if not masked:
        return encoder(input_ids=ids)[0]
    mask = tokens.attention_mask.to(encoder.device)
    hidden = encoder(input_ids=ids, attention_mask=mask)[0].to(encoder.dtype)
    own = torch.arange(hidden.shape[1], device=hidden.device)[None] < mask.gt(0).sum(dim=1)[:, None]
    return torch.where(own[..., None], hidden, hidden.new_zeros(()))


def backbone_null_prompt(source: str | Path, spec: "BackboneSpec", *, device: str | torch.device = "cpu"
                         ) -> Tensor | None:
    """``[1, max_text_seq_length, text_embed_dim]`` float32 on the CPU: the encoding of the empty prompt ``""`` by the
    text encoder `find_text_encoder` finds in `source` (what the family's diffusers pipelines feed the negative
    branch by default), or None where `source` has no text encoder. The encoder must suit `spec`
    (`check_text_encoder`); it is loaded on `device` and freed before returning."""
    folders = find_text_encoder(source)
    if folders is None:
        return None
    check_text_encoder(folders, spec)
    tokenizer, encoder = load_text_encoder(folders, device=device)
    try:
        return encode_prompts(tokenizer, encoder, [""], max_length=spec.max_text_seq_length).float().cpu()
    finally:
        del tokenizer, encoder
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
