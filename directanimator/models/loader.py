"""Loading a backbone (diffusers folder, single safetensors file or Hugging Face repo id) plus an optional
DirectAnimator checkpoint into an `AnimatorModel`, with dtype, device, CPU offload and the memory options of
`directanimator.models.memory` (fp8 storage, block offload, attention backend, regional compile)."""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import torch
from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan
from torch import Tensor

from ..devices import usable_device
from ..errors import CheckpointError, InputError
from .checkpoint import (
    PICKLE_SUFFIXES,
    apply_checkpoint,
    check_compatible,
    check_finite,
    read_checkpoint,
    refuse_pickle,
)
from .configs import BACKBONE_REPOS, CueFusionConfig, default_scheduler_config
from .family import BackboneSpec, spec_from_config, spec_of, transformer_class_for
from .memory import MemoryOptions, apply_memory_options, check_device, describe, hooks_place_weights
from .single_file import (
    clip_image_processor,
    identify_file,
    load_clip_vision_file,
    load_transformer_file,
    load_vae_file,
    match_bundled_config,
)
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
                 "vae/*.safetensors", "scheduler/*.json", "image_encoder/*.json", "image_encoder/*.safetensors",
                 "image_processor/*.json"]
__all__ = ["AnimatorModel", "download_backbone", "load_backbone_file", "load_model", "match_bundled_config",
           "resolve_dtype", "vae_class_for"]


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

    Offload (``offload=True``) keeps the networks on the CPU and moves one at a time to ``device`` inside
    ``with model.use("transformer"):`` / ``model.use("vae")`` / ``model.use("image_encoder")``, so only the largest
    occupies the GPU. A transformer under block offload (``MemoryOptions(offload="blocks")``) is never moved here:
    diffusers' hooks move its blocks to ``device`` one group at a time (`hooks_place_weights`).
    """

    transformer: DirectAnimatorTransformer
    vae: torch.nn.Module  # AutoencoderKLCogVideoX or AutoencoderKLWan
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

    def _networks(self) -> list[torch.nn.Module]:
        """The networks this model moves itself: not those whose weights diffusers' offload hooks place (moving
        one of those would put all its blocks on the GPU at once, or strand its cue modules on the CPU)."""
        return [m for m in (self.transformer, self.vae, self.image_encoder)
                if m is not None and not hooks_place_weights(m)]

    def to(self, device: torch.device | str) -> "AnimatorModel":
        """Set the execution device; without offload, move the networks there now."""
        self.device = torch.device(device)
        if not self.offload:
            for module in self._networks():
                module.to(self.device)
        return self

    def onload(self) -> "AnimatorModel":
        """Move both networks to the execution device (ends offloading until `offload_to_cpu`)."""
        self.offload = False
        return self.to(self.device)

    def offload_to_cpu(self) -> "AnimatorModel":
        """Move the networks to the CPU and keep them there between uses."""
        self.offload = True
        for module in self._networks():
            module.to("cpu")
        _empty_cache(self.device)
        return self

    @contextmanager
    def use(self, part: Literal["transformer", "vae", "image_encoder"]) -> Iterator[torch.nn.Module]:
        """Yield `part` on the execution device; with offload, move it back to the CPU afterwards."""
        if part not in ("transformer", "vae", "image_encoder"):
            raise InputError(f"AnimatorModel.use({part!r}): use 'transformer', 'vae' or 'image_encoder'.")
        module = getattr(self, part)
        if module is None:
            raise InputError(
                f"model {self.name}: has no image encoder; {self.spec.variant} embeds the reference with CLIP. Load "
                "it with image_encoder= (a diffusers Wan2.1 I2V folder or repo id, or clip_vision_h.safetensors)."
            )
        moves = self.offload and not hooks_place_weights(module)
        if moves:
            module.to(self.device)
        try:
            yield module
        finally:
            if moves:
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
    """Fetch (or find in the cache) the transformer, VAE, scheduler and (Wan2.1 I2V) image encoder and processor of
    a Hugging Face repo; return its folder."""
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
            f"'scheduler/*' 'image_encoder/*' 'image_processor/*'"
            f"{' --cache-dir ' + str(cache_dir) if cache_dir else ''}`, or pass a local diffusers folder."
        ) from exc
    except Exception as exc:  # repository not found, gated, HTTP errors
        raise CheckpointError(
            f"backbone {repo_id!r}: cannot fetch it from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "Check the repo id and your access, or pass a local diffusers folder."
        ) from exc
    return Path(folder)


def load_backbone_file(path: str | Path, *, config: Mapping[str, Any] | None = None,
                       dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, str]:
    """A Wan or CogVideoX transformer from one safetensors file (see `single_file.load_transformer_file`);
    returns the model and a short description of the file and where its config came from."""
    model, kind, how = load_transformer_file(path, config=config, dtype=dtype)
    return model, f"{kind.summary}, {how}"


def _folder_config(root: Path, what: str) -> dict:
    try:
        return json.loads((root / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{what} {root}: config.json is not valid JSON ({exc}).") from exc


def _refuse_pickle_only(root: Path, what: str) -> None:
    pickles = [p.name for p in root.iterdir() if p.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles and not any(p.suffix == ".safetensors" for p in root.iterdir()):
        refuse_pickle(root / pickles[0], what=what)


@dataclass
class _FolderParts:
    """Where the parts of a diffusers folder are (None: absent)."""

    root: Path | None
    vae: Path | None
    scheduler: Path | None
    image_encoder: Path | None


def _folder_parts(folder: Path) -> _FolderParts:
    def sub(name: str, file: str) -> Path | None:
        return folder / name if (folder / name / file).is_file() else None

    scheduler = folder / "scheduler" / "scheduler_config.json"
    return _FolderParts(root=folder, vae=sub("vae", "config.json"),
                        scheduler=scheduler if scheduler.is_file() else None,
                        image_encoder=sub("image_encoder", "config.json"))


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, _FolderParts]:
    """Transformer (CogVideoX or Wan, from its config) from a diffusers folder (pipeline folder with transformer/
    or a bare transformer folder), and where the folder's other parts are."""
    sub = folder / "transformer"
    root = sub if (sub / "config.json").is_file() else folder
    if not (root / "config.json").is_file():
        raise CheckpointError(
            f"backbone folder {folder}: no transformer/config.json nor config.json. Expected a diffusers CogVideoX or "
            "Wan image-to-video folder (transformer/, vae/, scheduler/) or a bare transformer folder."
        )
    _refuse_pickle_only(root, "backbone weights")
    model_class = transformer_class_for(_folder_config(root, "backbone folder"))
    try:
        model = model_class.from_pretrained(root, torch_dtype=dtype, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"backbone folder {root}: cannot load the transformer ({exc}).") from exc
    check_finite(model.state_dict(), what=f"backbone folder {root}")
    return model.eval(), _folder_parts(folder)


def vae_class_for(config: Mapping[str, Any]) -> type[torch.nn.Module]:
    """The diffusers VAE class of a VAE config: `AutoencoderKLWan` or `AutoencoderKLCogVideoX`."""
    name = str(config.get("_class_name", ""))
    if name == "AutoencoderKLWan" or (not name and "z_dim" in config):
        return AutoencoderKLWan
    if name == "AutoencoderKLCogVideoX" or (not name and "latent_channels" in config):
        return AutoencoderKLCogVideoX
    raise CheckpointError(f"VAE config of class {name or 'unknown'!r}: DirectAnimator loads AutoencoderKLWan and "
                          "AutoencoderKLCogVideoX.")


def _resolve_source(source: str | Path, *, cache_dir: str | None, local_files_only: bool | None) -> Path:
    """A local path, or the snapshot folder of a Hugging Face repo id."""
    path = Path(source)
    if not path.exists() and _REPO_ID.match(str(source)) and not str(source).startswith((".", "/")):
        return download_backbone(str(source), cache_dir=cache_dir, local_files_only=local_files_only)
    return path


def _load_vae(source: str | Path, dtype: torch.dtype, *, cache_dir: str | None, local_files_only: bool | None,
              config: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """A VAE from a diffusers folder (its class from its config), a repo id, or a single Wan VAE file."""
    path = _resolve_source(source, cache_dir=cache_dir, local_files_only=local_files_only)
    if path.is_file() or path.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES:
        refuse_pickle(path, what="VAE")
        if not path.is_file():
            raise CheckpointError(f"VAE file {path}: no such file.")
        return load_vae_file(path, config=config, dtype=dtype)[0]
    root = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (root / "config.json").is_file():
        raise CheckpointError(f"VAE {source}: no vae/config.json nor config.json found.")
    _refuse_pickle_only(root, "VAE weights")
    vae_class = vae_class_for(_folder_config(root, "VAE"))
    try:
        vae = vae_class.from_pretrained(root, torch_dtype=dtype, use_safetensors=True, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"VAE {root}: cannot load it ({exc}).") from exc
    check_finite(vae.state_dict(), what=f"VAE {root}")
    return vae


def _load_image_encoder(source: str | Path, dtype: torch.dtype, *, cache_dir: str | None,
                        local_files_only: bool | None) -> tuple[torch.nn.Module, Any]:
    """The CLIP vision tower and its image processor of Wan2.1 I2V from a diffusers folder (image_encoder/ and
    image_processor/, or a bare image-encoder folder), a repo id, or a single file (ComfyUI's clip_vision_h)."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    path = _resolve_source(source, cache_dir=cache_dir, local_files_only=local_files_only)
    if path.is_file() or path.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES:
        refuse_pickle(path, what="CLIP vision model")
        if not path.is_file():
            raise CheckpointError(f"CLIP vision file {path}: no such file.")
        encoder = load_clip_vision_file(path, dtype=dtype)
        return encoder, clip_image_processor(encoder.config.image_size)
    root = path / "image_encoder" if (path / "image_encoder" / "config.json").is_file() else path
    if not (root / "config.json").is_file():
        raise CheckpointError(
            f"image encoder {source}: no image_encoder/config.json nor config.json. Give the diffusers Wan2.1 I2V "
            "folder (or repo id) that has image_encoder/, or ComfyUI's clip_vision_h.safetensors."
        )
    _refuse_pickle_only(root, "image encoder weights")
    try:
        encoder = CLIPVisionModel.from_pretrained(root, dtype=dtype, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"image encoder {root}: cannot load it as a CLIPVisionModel ({exc}).") from exc
    check_finite(encoder.state_dict(), what=f"image encoder {root}")
    processor_root = path / "image_processor"
    if (processor_root / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(processor_root, local_files_only=True)
    else:
        processor = clip_image_processor(encoder.config.image_size)
    return encoder.eval(), processor


def cast_transformer(transformer: DirectAnimatorTransformer, dtype: torch.dtype) -> DirectAnimatorTransformer:
    """Cast to `dtype` as diffusers' ``from_pretrained(torch_dtype=...)`` does: the modules the backbone's class keeps in
    fp32 (``_keep_in_fp32_modules``: Wan's rotary table, time embedder, modulation tables and norms) stay fp32, the
    rest (CueFusion included) takes `dtype`. A plain ``.to(dtype)`` would round Wan's rotary table to bf16."""
    keep = tuple(getattr(transformer.backbone, "_keep_in_fp32_modules", None) or ())
    if dtype == torch.float32 or not keep:
        return transformer.to(dtype)

    def kept(name: str) -> bool:  # diffusers matches these names as substrings of the parameter name
        return any(pattern in name for pattern in keep)

    for module_name, module in transformer.named_modules():
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is None or not tensor.is_floating_point():
                    continue
                name = f"{module_name}.{key}" if module_name else key
                target = torch.float32 if kept(name) else dtype
                if tensor.dtype != target:
                    if isinstance(tensor, torch.nn.Parameter):
                        tensor.data = tensor.data.to(target)
                    else:
                        store[key] = tensor.to(target)
    return transformer


def build_transformer(backbone: torch.nn.Module,
                      cue_fusion: CueFusionConfig | Mapping[str, Any] | None = None) -> DirectAnimatorTransformer:
    """Wrap a backbone (CogVideoX or Wan) into a DirectAnimatorTransformer (fresh, zero-initialised CueFusion)."""
    if isinstance(cue_fusion, Mapping):
        cue_fusion = CueFusionConfig.from_dict(cue_fusion)
    return DirectAnimatorTransformer(backbone, config=cue_fusion)


_WAN_720P_FILE = re.compile(r"720p", re.IGNORECASE)


def _scheduler_config(spec: BackboneSpec, scheduler_file: Path | None, single_file: Path | None = None) -> dict:
    """The folder's scheduler config (with its ``_class_name``, which picks the sampler), else the default of the
    backbone's variant (`default_scheduler_config`). A Wan2.1 I2V single file named for 720P (as the published
    ``wan2.1_i2v_720p_14B_*.safetensors`` are) takes the 720P pipeline's flow shift: its tensors are those of the
    480P model, so its name is all that tells them apart."""
    if scheduler_file is not None:
        config = json.loads(scheduler_file.read_text())
        return {k: v for k, v in config.items() if not k.startswith("_") or k == "_class_name"}
    if single_file is not None and spec.variant == "wan-i2v" and _WAN_720P_FILE.search(single_file.name):
        log.info("%s: a Wan2.1 I2V 720P file by its name; sampling with the 720P pipeline's flow shift",
                 single_file.name)
        return default_scheduler_config("wan2.1-i2v-14b-720p")
    return default_scheduler_config(spec)


def load_model(backbone: str | Path, checkpoint: str | Path | None = None, *, dtype: str | torch.dtype = "bf16",
               device: str | torch.device = "cpu", offload: bool = False, cache_dir: str | None = None,
               local_files_only: bool | None = None, vae: str | Path | None = None,
               cue_fusion: CueFusionConfig | None = None, image_encoder: str | Path | None = None,
               backbone_config: Mapping[str, Any] | None = None,
               vae_config: Mapping[str, Any] | None = None,
               require_image_encoder: bool = False, memory: MemoryOptions | None = None,
               place: bool = True) -> AnimatorModel:
    """Load the backbone and, when given, a DirectAnimator checkpoint (CueFusion + LoRA or full weights).

    `backbone`: a diffusers folder (``transformer/`` and ``vae/`` subfolders, Wan2.1 I2V also ``image_encoder/``
    and ``image_processor/``; or a bare transformer folder), a single ``.safetensors`` transformer file (Wan in
    the native layout ComfyUI keeps in models/diffusion_models or in diffusers names; CogVideoX in diffusers
    names), or a Hugging Face repo id (fetched with `snapshot_download` into `cache_dir`; HF_HUB_OFFLINE or
    `local_files_only` forbid downloading). The family (CogVideoX or Wan) comes from the config or the weights.
    `vae` overrides or supplies the VAE (a folder, repo id or single Wan VAE file); `image_encoder` the Wan2.1 I2V
    CLIP vision tower (a folder or repo id with image_encoder/, or ComfyUI's clip_vision_h.safetensors).
    `backbone_config` / `vae_config` give the configs of single files whose tensors match no bundled config.
    `cue_fusion` configures fresh CueFusion modules when there is no checkpoint (training from scratch).
    `require_image_encoder`: a backbone that embeds the reference with CLIP (Wan2.1 I2V) but has no image encoder
    is refused before the VAE loads (for sampling); otherwise it loads with a warning (training from cached
    embeddings needs none).
    `memory`: weight storage, offload, attention backend and compile of the transformer (`MemoryOptions`, checked
    before anything loads; applied by `apply_memory_options` once the checkpoint is in and the weights are cast).
    None applies nothing (`apply_memory_options` can then still be called once, e.g. after adding a LoRA to train).
    ``memory.offload="model"`` is the same as ``offload=True`` (recorded as "model" either way); with
    ``offload=True`` and ``memory.offload="blocks"`` the transformer's blocks are offloaded and the VAE and image
    encoder wait on the CPU between uses. The options in effect are recorded in ``info["memory"]``, the notes of
    what they did in ``info["memory_notes"]``.
    `place=False` leaves the networks on the CPU with `device` as the execution device, for a model manager that
    moves them itself (ComfyUI's); a transformer under block offload is placed by its hooks either way.
    """
    torch_dtype = resolve_dtype(dtype)
    apply_memory = memory is not None
    memory = (memory or MemoryOptions()).validate()
    if offload and memory.offload == "none":
        memory = replace(memory, offload="model")
    offload = memory.offload == "model" or bool(offload)
    device = usable_device(device, name="device")  # before anything loads
    check_device(memory, device)
    if checkpoint is not None:
        refuse_pickle(checkpoint, what="DirectAnimator checkpoint")
        ckpt = read_checkpoint(checkpoint)  # fail fast, before loading gigabytes of backbone
    else:
        ckpt = None
    source = str(backbone)
    path = Path(backbone)
    parts = _FolderParts(None, None, None, None)
    clip_missing = require_image_encoder and image_encoder is None
    if vae is not None:  # a VAE of other latent channels is refused before gigabytes of backbone load
        _refuse_vae_mismatch(path, Path(vae), source)
    if path.is_file() or path.suffix.lower() in (".safetensors",) + PICKLE_SUFFIXES:
        refuse_pickle(path, what="backbone file")
        if not path.is_file():
            raise CheckpointError(f"backbone file {path}: no such file.")
        if clip_missing:
            _refuse_missing_clip(path, source)
        model, how = load_backbone_file(path, config=backbone_config, dtype=torch_dtype)
        origin = f"single file ({how})"
    elif path.is_dir():
        if clip_missing:
            _refuse_missing_clip(path, source)
        model, parts = _load_folder(path, torch_dtype)
        origin = "diffusers folder"
    elif _REPO_ID.match(source) and not source.startswith((".", "/")):
        folder = download_backbone(source, cache_dir=cache_dir, local_files_only=local_files_only)
        if clip_missing:
            _refuse_missing_clip(folder, source)
        model, parts = _load_folder(folder, torch_dtype)
        origin = f"Hugging Face repo ({folder})"
    else:
        raise CheckpointError(
            f"backbone {source!r}: no such file or folder, and not a Hugging Face repo id (owner/name). Known repos: "
            f"{sorted(set(BACKBONE_REPOS.values()))}."
        )
    spec = spec_of(model)
    encoder_source = image_encoder if image_encoder is not None else (
        parts.root if parts.image_encoder is not None else None)
    needs_clip = spec.image_conditioning == "mask_and_latent" and encoder_source is None
    if needs_clip and require_image_encoder:  # a backbone whose header and config did not tell
        raise CheckpointError(_missing_clip_message(source, spec.variant))
    if ckpt is not None:
        check_compatible(ckpt, dict(model.config), backbone_name=source)
    transformer = build_transformer(model, ckpt.cue_fusion if ckpt is not None else cue_fusion)
    if ckpt is not None:
        apply_checkpoint(transformer, ckpt)
    cast_transformer(transformer, torch_dtype)
    transformer.eval()
    memory_notes = apply_memory_options(transformer, memory, device=device) if apply_memory else []

    vae_source = vae if vae is not None else parts.vae
    if vae_source is None:
        example = "a Wan VAE file such as wan_2.1_vae.safetensors" if spec.family == "wan" else \
            "vae='THUDM/CogVideoX-5b-I2V'"
        raise CheckpointError(
            f"backbone {source}: has no VAE (a bare transformer folder or a single weights file). Pass vae= a "
            f"diffusers VAE folder, repo id or {example}."
        )
    vae_model = _load_vae(vae_source, torch_dtype, cache_dir=cache_dir, local_files_only=local_files_only,
                          config=vae_config)
    _check_vae_fits(vae_model, spec, source)

    encoder = processor = None
    if encoder_source is not None:
        encoder, processor = _load_image_encoder(encoder_source, torch_dtype, cache_dir=cache_dir,
                                                 local_files_only=local_files_only)
        _check_image_encoder_fits(encoder, spec, source)
    elif needs_clip:
        log.warning("%s (needed before encoding a reference)", _missing_clip_message(source, spec.variant))

    if ckpt is not None and ckpt.scheduler_config:
        scheduler_config = dict(ckpt.scheduler_config)
    else:
        scheduler_config = _scheduler_config(spec, parts.scheduler, path if path.is_file() else None)
    if ckpt is not None and ckpt.null_text is not None:
        null_text = ckpt.null_text.float()
        if null_text.ndim == 2:
            null_text = null_text[None]
        if null_text.shape[-1] != spec.text_embed_dim:
            raise CheckpointError(
                f"DirectAnimator checkpoint {checkpoint}: null_text has {null_text.shape[-1]} features, the backbone "
                f"takes {spec.text_embed_dim}."
            )
    else:  # no stored null prompt: zeros of the backbone's text length (226 on CogVideoX, 512 UMT5 tokens on Wan)
        null_text = torch.zeros(1, spec.max_text_seq_length, spec.text_embed_dim)
    name = Path(checkpoint).stem if checkpoint is not None else (path.name if path.exists() else source)
    info = {
        "backbone": source,
        "backbone_origin": origin,
        "family": spec.family,
        "variant": spec.variant,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "weights": ckpt.weights if ckpt is not None else "none",
        "positional_embeddings": positional_embedding_case(dict(model.config)),
        "extra": ckpt.extra if ckpt is not None else {},
        "memory": memory.to_dict(),
        "memory_notes": list(memory_notes),
    }
    log.info("loaded %s: %s backbone from %s, %s; %s", name, spec.variant, origin, info["positional_embeddings"],
             describe(memory))
    result = AnimatorModel(transformer=transformer, vae=vae_model, null_text=null_text,
                           scheduler_config=scheduler_config, cue_config=dict(ckpt.cue_config) if ckpt else {},
                           name=name, device=device, offload=offload, info=info, image_encoder=encoder,
                           image_processor=processor)
    if offload:
        return result.offload_to_cpu()
    return result.to(device) if place else result


def _missing_clip_message(source: str, variant: str) -> str:
    return (f"backbone {source}: {variant} embeds the reference with a CLIP vision tower and none was found: pass "
            "image_encoder= (a diffusers Wan2.1 I2V folder or repo id with image_encoder/, or ComfyUI's "
            "clip_vision_h.safetensors).")


def _refuse_missing_clip(path: Path, source: str) -> None:
    """Before any weights load: CheckpointError when the backbone at `path` (a file, read from its header; or a
    folder, read from its config) embeds the reference with CLIP and brings no image_encoder/."""
    if path.is_file():
        variant = identify_file(path, what="backbone file").variant
        if variant == "wan-i2v":
            raise CheckpointError(_missing_clip_message(source, variant))
        return
    root = path / "transformer" if (path / "transformer" / "config.json").is_file() else path
    if _folder_parts(path).image_encoder is None and (root / "config.json").is_file():
        spec = spec_from_config(_folder_config(root, "backbone folder"))
        if spec.image_conditioning == "mask_and_latent":
            raise CheckpointError(_missing_clip_message(source, spec.variant))


def _peek_latent_channels(path: Path, part: Literal["transformer", "vae"]) -> int | None:
    """Latent channels of a backbone (predicted) or VAE (z) from a file header or a folder config; None when that
    does not tell (the load itself then names any problem)."""
    try:
        if path.is_file():
            return identify_file(path).latent_channels
        root = path / part if (path / part / "config.json").is_file() else path
        if not (root / "config.json").is_file():
            return None
        config = _folder_config(root, part)
        if part == "transformer":
            return spec_from_config(config).out_channels
        channels = config.get("z_dim", config.get("latent_channels"))
        return None if channels is None else int(channels)
    except CheckpointError:
        return None


def _refuse_vae_mismatch(backbone: Path, vae: Path, source: str) -> None:
    backbone_channels = _peek_latent_channels(backbone, "transformer")
    vae_channels = _peek_latent_channels(vae, "vae")
    if None not in (backbone_channels, vae_channels) and backbone_channels != vae_channels:
        raise CheckpointError(_vae_mismatch_message(source, "backbone", backbone_channels, f"VAE {vae}",
                                                    vae_channels))


def _vae_mismatch_message(source: str, backbone: str, channels: int, vae: str, vae_channels: int) -> str:
    return (f"backbone {source}: its {backbone} works on {channels} latent channels but the {vae} makes "
            f"{vae_channels}. Wan2.1 I2V takes the Wan2.1 VAE (16), Wan2.2 TI2V-5B the Wan2.2 VAE (48), CogVideoX "
            "its own.")


def _check_vae_fits(vae: torch.nn.Module, spec: BackboneSpec, source: str) -> None:
    """The VAE's latent channels must be the backbone's (16 for Wan2.1 and CogVideoX, 48 for Wan2.2 TI2V)."""
    channels = vae.config.get("z_dim", vae.config.get("latent_channels"))
    if channels is not None and int(channels) != spec.out_channels:
        raise CheckpointError(_vae_mismatch_message(source, f"{spec.variant} transformer", spec.out_channels,
                                                    f"VAE ({type(vae).__name__})", int(channels)))


def _check_image_encoder_fits(encoder: torch.nn.Module, spec: BackboneSpec, source: str) -> None:
    width = int(encoder.config.hidden_size)
    if spec.image_embed_dim is None:
        log.warning("backbone %s (%s) takes no CLIP image embedding; the image encoder is loaded but unused.",
                    source, spec.variant)
    elif width != spec.image_embed_dim:
        raise CheckpointError(
            f"backbone {source}: its {spec.variant} transformer takes image embeddings of width {spec.image_embed_dim} "
            f"but the image encoder makes {width} (Wan2.1 I2V uses CLIP ViT-H/14, width 1280)."
        )
