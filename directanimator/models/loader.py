"""Loading a backbone (diffusers folder, single safetensors file or Hugging Face repo id) plus an optional
DirectAnimator checkpoint into an `AnimatorModel`, with dtype, device and CPU offload."""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from torch import Tensor

from ..devices import usable_device
from ..errors import CheckpointError, InputError
from .checkpoint import (
    FORMAT_NAME,
    PICKLE_SUFFIXES,
    apply_checkpoint,
    check_compatible,
    check_finite,
    check_safetensors_file,
    read_checkpoint,
    read_safetensors,
    refuse_pickle,
    safetensors_shapes,
)
from .configs import (
    BACKBONE_REPOS,
    BUNDLED_BACKBONES,
    CueFusionConfig,
    backbone_config,
    default_scheduler_config,
)
from .family import BackboneSpec, build_backbone
from .transformer import DirectAnimatorTransformer, positional_embedding_case

log = logging.getLogger(__name__)

DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}
DEFAULT_SCHEDULER_CONFIG = default_scheduler_config()
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["model_index.json", "transformer/*.json", "transformer/*.safetensors", "vae/*.json",
                 "vae/*.safetensors", "scheduler/*.json"]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16" | "fp16" | "fp32"`` (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16, torch.float32):
            return dtype
    elif str(dtype).lower() in DTYPES:
        return DTYPES[str(dtype).lower()]
    raise InputError(f"dtype={dtype!r}: use 'bf16', 'fp16' or 'fp32'.")


@dataclass
class AnimatorModel:
    """Everything sampling needs: the CF-DiT, the VAE, the null-text embedding and the configs it was trained with.

    Offload (``offload=True``) keeps both networks on the CPU and moves one at a time to ``device`` inside
    ``with model.use("transformer"):`` / ``model.use("vae")``, so only the larger of the two occupies the GPU.
    """

    transformer: DirectAnimatorTransformer
    vae: AutoencoderKLCogVideoX
    null_text: Tensor  # [1, L, text_embed_dim]
    scheduler_config: dict
    cue_config: dict
    name: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload: bool = False
    info: dict = field(default_factory=dict)  # where it came from, positional-embedding case, checkpoint extras
    # Wan2.1 I2V only: the CLIP vision tower and its processor that embed the reference (None for other backbones)
    image_encoder: torch.nn.Module | None = None
    image_processor: Any = None

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def spec(self) -> BackboneSpec:
        """The backbone's facts (family, channels, text length, image conditioning, prediction)."""
        return self.transformer.spec

    def to(self, device: torch.device | str) -> "AnimatorModel":
        """Set the execution device; without offload, move both networks there now."""
        self.device = torch.device(device)
        if not self.offload:
            self.transformer.to(self.device)
            self.vae.to(self.device)
        return self

    def onload(self) -> "AnimatorModel":
        """Move both networks to the execution device (ends offloading until `offload_to_cpu`)."""
        self.offload = False
        return self.to(self.device)

    def offload_to_cpu(self) -> "AnimatorModel":
        """Move both networks to the CPU and keep them there between uses."""
        self.offload = True
        self.transformer.to("cpu")
        self.vae.to("cpu")
        _empty_cache(self.device)
        return self

    @contextmanager
    def use(self, part: Literal["transformer", "vae"]) -> Iterator[torch.nn.Module]:
        """Yield `part` on the execution device; with offload, move it back to the CPU afterwards."""
        if part not in ("transformer", "vae"):
            raise InputError(f"AnimatorModel.use({part!r}): use 'transformer' or 'vae'.")
        module = getattr(self, part)
        if self.offload:
            module.to(self.device)
        try:
            yield module
        finally:
            if self.offload:
                module.to("cpu")
                _empty_cache(self.device)


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- backbone sources
def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_backbone(repo_id: str, *, cache_dir: str | None = None, local_files_only: bool | None = None) -> Path:
    """Fetch (or find in the cache) the transformer, VAE and scheduler of a Hugging Face repo; return its folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _offline(local_files_only)
    try:
        folder = snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=offline,
                                   allow_patterns=_HUB_PATTERNS)
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"backbone {repo_id!r}: no local folder of that name, not in the Hugging Face cache "
            f"({cache_dir or 'default cache'}) and downloading is "
            f"{'disabled (offline: HF_HUB_OFFLINE=1 or local_files_only=True)' if offline else 'impossible here'}. "
            f"Download it where there is network: `hf download {repo_id} --include 'transformer/*' 'vae/*' "
            f"'scheduler/*'{' --cache-dir ' + str(cache_dir) if cache_dir else ''}`, or pass a local diffusers folder."
        ) from exc
    except Exception as exc:  # repository not found, gated, HTTP errors
        raise CheckpointError(
            f"backbone {repo_id!r}: cannot fetch it from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "Check the repo id and your access, or pass a local diffusers folder."
        ) from exc
    return Path(folder)


@lru_cache(maxsize=8)
def _bundled_shapes(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = build_backbone(backbone_config(name))
    return tuple(sorted((k, tuple(v.shape)) for k, v in model.state_dict().items()))


def match_bundled_config(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The bundled backbone whose weights have exactly these names and shapes, or None."""
    found = tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
    for name in BUNDLED_BACKBONES:
        if _bundled_shapes(name) == found:
            return name
    return None


def _sidecar_config(path: Path) -> dict | None:
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"backbone config {candidate}: not valid JSON ({exc}).") from exc
            if "num_attention_heads" in data:
                return backbone_config(data)
    return None


def load_backbone_file(path: str | Path, *, config: Mapping[str, Any] | None = None,
                       dtype: torch.dtype = torch.float32) -> tuple[CogVideoXTransformer3DModel, str]:
    """A CogVideoX transformer from one safetensors file of diffusers-format weights.

    diffusers 0.42 has no `from_single_file` for CogVideoXTransformer3DModel, so the config comes from `config`, a
    sidecar json (``<file>.json`` or ``config.json`` beside it) or the bundled real config whose tensor names and
    shapes match. Returns the model and a short description of where its config came from.
    """
    path = Path(path)
    metadata = check_safetensors_file(path, what="backbone file")
    if metadata.get("format") == FORMAT_NAME:
        raise CheckpointError(
            f"backbone file {path}: this is a DirectAnimator checkpoint (CueFusion weights), not a backbone. Pass it as "
            "`checkpoint` and give the CogVideoX backbone (diffusers folder, repo id or weights file) as `backbone`."
        )
    shapes = safetensors_shapes(path, what="backbone file")
    source = "given config"
    if config is None:
        config = _sidecar_config(path)
        source = "sidecar json"
    if config is None:
        name = match_bundled_config(shapes)
        if name is None:
            blocks = {k.split(".")[1] for k in shapes if k.startswith("transformer_blocks.")}
            raise CheckpointError(
                f"backbone file {path}: no config beside it ({path.with_suffix('.json').name} or config.json) and its "
                f"{len(shapes)} tensors ({len(blocks)} blocks) match none of the bundled configs "
                f"{sorted(BUNDLED_BACKBONES)}. Put the transformer's diffusers config.json beside it."
            )
        config = backbone_config(name)
        source = f"matched bundled config {name}"
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = CogVideoXTransformer3DModel(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != {k: tuple(v) for k, v in shapes.items()}:
        missing = sorted(set(expected) - set(shapes))
        extra = sorted(set(shapes) - set(expected))
        bad = [k for k in expected if k in shapes and tuple(shapes[k]) != expected[k]]
        raise CheckpointError(
            f"backbone file {path}: its tensors do not fit the config ({source}): missing {missing[:3]}, unexpected "
            f"{extra[:3]}, mis-shaped {bad[:3]}. Is it a diffusers-format CogVideoX transformer? Original SAT weights "
            "must be converted with diffusers' conversion script first."
        )
    state, _ = read_safetensors(path, what="backbone file")
    check_finite(state, what=f"backbone file {path}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(dtype).eval(), source


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[CogVideoXTransformer3DModel, Path | None, Path | None]:
    """Transformer from a diffusers folder (pipeline folder with transformer/ or a bare transformer folder)."""
    sub = folder / "transformer"
    root = sub if (sub / "config.json").is_file() else folder
    if not (root / "config.json").is_file():
        raise CheckpointError(
            f"backbone folder {folder}: no transformer/config.json nor config.json. Expected a diffusers CogVideoX "
            "image-to-video folder (transformer/, vae/, scheduler/) or a bare transformer folder."
        )
    pickles = [p.name for p in root.iterdir() if p.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles and not any(p.suffix == ".safetensors" for p in root.iterdir()):
        refuse_pickle(root / pickles[0], what="backbone weights")
    try:
        model = CogVideoXTransformer3DModel.from_pretrained(root, torch_dtype=dtype, use_safetensors=True,
                                                           local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"backbone folder {root}: cannot load the transformer ({exc}).") from exc
    check_finite(model.state_dict(), what=f"backbone folder {root}")
    vae = folder / "vae" if (folder / "vae" / "config.json").is_file() else None
    scheduler = folder / "scheduler" / "scheduler_config.json"
    return model.eval(), vae, scheduler if scheduler.is_file() else None


def _load_vae(source: str | Path, dtype: torch.dtype, *, cache_dir: str | None,
              local_files_only: bool | None) -> AutoencoderKLCogVideoX:
    path = Path(source)
    if not path.exists() and _REPO_ID.match(str(source)):
        path = download_backbone(str(source), cache_dir=cache_dir, local_files_only=local_files_only)
    if path.is_file():
        refuse_pickle(path, what="VAE")
        raise CheckpointError(f"VAE {path}: give a diffusers VAE folder (config.json + safetensors) or a repo id.")
    root = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (root / "config.json").is_file():
        raise CheckpointError(f"VAE {source}: no vae/config.json nor config.json found.")
    try:
        vae = AutoencoderKLCogVideoX.from_pretrained(root, torch_dtype=dtype, use_safetensors=True,
                                                     local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"VAE {root}: cannot load it ({exc}).") from exc
    check_finite(vae.state_dict(), what=f"VAE {root}")
    return vae


def build_transformer(backbone: CogVideoXTransformer3DModel,
                      cue_fusion: CueFusionConfig | Mapping[str, Any] | None = None) -> DirectAnimatorTransformer:
    """Wrap a backbone into a DirectAnimatorTransformer (fresh, zero-initialised CueFusion)."""
    if isinstance(cue_fusion, Mapping):
        cue_fusion = CueFusionConfig.from_dict(cue_fusion)
    return DirectAnimatorTransformer(backbone, config=cue_fusion)


def load_model(backbone: str | Path, checkpoint: str | Path | None = None, *, dtype: str | torch.dtype = "bf16",
               device: str | torch.device = "cpu", offload: bool = False, cache_dir: str | None = None,
               local_files_only: bool | None = None, vae: str | Path | None = None,
               cue_fusion: CueFusionConfig | None = None) -> AnimatorModel:
    """Load the backbone and, when given, a DirectAnimator checkpoint (CueFusion + LoRA or full weights).

    `backbone`: a diffusers folder (``transformer/`` and ``vae/`` subfolders, or a bare transformer folder), a
    single ``.safetensors`` file of diffusers-format transformer weights, or a Hugging Face repo id (fetched with
    `snapshot_download` into `cache_dir`; HF_HUB_OFFLINE or `local_files_only` forbid downloading). `vae` overrides
    or supplies the VAE (a folder or repo id) when the backbone source has none. `cue_fusion` configures fresh
    CueFusion modules when there is no checkpoint (training from scratch).
    """
    torch_dtype = resolve_dtype(dtype)
    device = usable_device(device, name="device")  # before anything loads
    if checkpoint is not None:
        refuse_pickle(checkpoint, what="DirectAnimator checkpoint")
        ckpt = read_checkpoint(checkpoint)  # fail fast, before loading gigabytes of backbone
    else:
        ckpt = None
    source = str(backbone)
    path = Path(backbone)
    vae_folder = scheduler_file = None
    if path.is_file() or path.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES:
        refuse_pickle(path, what="backbone file")
        if not path.is_file():
            raise CheckpointError(f"backbone file {path}: no such file.")
        model, how = load_backbone_file(path, dtype=torch_dtype)
        origin = f"single file ({how})"
    elif path.is_dir():
        model, vae_folder, scheduler_file = _load_folder(path, torch_dtype)
        origin = "diffusers folder"
    elif _REPO_ID.match(source) and not source.startswith((".", "/")):
        folder = download_backbone(source, cache_dir=cache_dir, local_files_only=local_files_only)
        model, vae_folder, scheduler_file = _load_folder(folder, torch_dtype)
        origin = f"Hugging Face repo ({folder})"
    else:
        raise CheckpointError(
            f"backbone {source!r}: no such file or folder, and not a Hugging Face repo id (owner/name). Known repos: "
            f"{sorted(BACKBONE_REPOS.values())}."
        )
    if ckpt is not None:
        check_compatible(ckpt, dict(model.config), backbone_name=source)
    transformer = build_transformer(model, ckpt.cue_fusion if ckpt is not None else cue_fusion)
    if ckpt is not None:
        apply_checkpoint(transformer, ckpt)
    transformer.to(torch_dtype).eval()

    vae_source = vae if vae is not None else vae_folder
    if vae_source is None:
        raise CheckpointError(
            f"backbone {source}: has no VAE (a bare transformer folder or a single weights file). Pass vae= a diffusers "
            "VAE folder or repo id, e.g. vae='THUDM/CogVideoX-5b-I2V'."
        )
    vae_model = _load_vae(vae_source, torch_dtype, cache_dir=cache_dir, local_files_only=local_files_only)

    scheduler_config = dict(DEFAULT_SCHEDULER_CONFIG)
    if scheduler_file is not None:
        scheduler_config = {k: v for k, v in json.loads(scheduler_file.read_text()).items() if not k.startswith("_")}
    if ckpt is not None and ckpt.scheduler_config:
        scheduler_config = dict(ckpt.scheduler_config)
    bc = model.config
    if ckpt is not None and ckpt.null_text is not None:
        null_text = ckpt.null_text.float()
        if null_text.ndim == 2:
            null_text = null_text[None]
        if null_text.shape[-1] != bc.text_embed_dim:
            raise CheckpointError(
                f"DirectAnimator checkpoint {checkpoint}: null_text has {null_text.shape[-1]} features, the backbone "
                f"takes {bc.text_embed_dim}."
            )
    else:
        null_text = torch.zeros(1, bc.max_text_seq_length, bc.text_embed_dim)
    name = Path(checkpoint).stem if checkpoint is not None else (path.name if path.exists() else source)
    info = {
        "backbone": source,
        "backbone_origin": origin,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "weights": ckpt.weights if ckpt is not None else "none",
        "positional_embeddings": positional_embedding_case(dict(bc)),
        "extra": ckpt.extra if ckpt is not None else {},
    }
    log.info("loaded %s: backbone from %s, %s", name, origin, info["positional_embeddings"])
    result = AnimatorModel(transformer=transformer, vae=vae_model, null_text=null_text,
                           scheduler_config=scheduler_config, cue_config=dict(ckpt.cue_config) if ckpt else {},
                           name=name, device=device, offload=offload, info=info)
    return result.offload_to_cpu() if offload else result.to(device)
