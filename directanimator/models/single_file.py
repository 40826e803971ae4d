"""Single weight files as ComfyUI users keep them: a backbone in ``models/diffusion_models``, a VAE in
``models/vae``, a CLIP vision tower in ``models/clip_vision``.

What a file holds is read from its tensor names and shapes (`identify`), never from its name. Wan transformers
and VAEs load through diffusers' ``from_single_file`` (which converts the native Wan key layout), offline: the
config comes from the caller, a sidecar json (``<file>.json``) or the bundled real config whose tensors the file
matches exactly. diffusers 0.42 has no single-file loader for CogVideoX, so a diffusers-format CogVideoX file is
read straight into the model built from its config.

Text encoders are not read from single files: transformers has no single-file loader and diffusers' single-file
pipelines fetch the UMT5 encoder from the Hub. Wan prompts come from ComfyUI's own CLIP Loader (type "wan") and
CLIP Text Encode, or from the checkpoint's stored null prompt.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from diffusers import AutoencoderKLWan, CogVideoXTransformer3DModel, WanTransformer3DModel
from torch import nn

from ..errors import CheckpointError
from .checkpoint import (
    FORMAT_NAME,
    check_finite,
    check_safetensors_file,
    read_safetensors,
    safetensors_shapes,
)
from .configs import BUNDLED_BACKBONES, CONFIG_DIR, backbone_config
from .family import build_backbone, spec_from_config

log = logging.getLogger(__name__)

Shapes = Mapping[str, tuple[int, ...]]
Kind = Literal["transformer", "vae", "clip_vision"]

# Bundled VAE and image-encoder configs (json facts in configs/).
BUNDLED_VAES = {"wan2.1-vae": "vae_wan2.1.json", "wan2.2-vae": "vae_wan2.2.json"}
CLIP_VISION_CONFIG = "clip_vision_h.json"
CLIP_IMAGE_PROCESSOR_CONFIG = "clip_image_processor.json"
# ComfyUI saves whole checkpoints with these prefixes in front of the diffusion model's keys.
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
SUPPORTED = ("Wan2.1-I2V-14B (480p/720p) and Wan2.2-TI2V-5B transformers (native Wan layout as in ComfyUI's "
             "models/diffusion_models, or diffusers layout), diffusers-format CogVideoX image-to-video transformers "
             "(5B-I2V, 1.5-5B-I2V), the Wan2.1 and Wan2.2 VAEs (native or diffusers layout) and the CLIP ViT-H/14 "
             "vision tower in the transformers layout (ComfyUI's clip_vision_h.safetensors)")

# Marker tensors of model families this project does not run, so that a wrong file is named, not just refused.
_OTHER_FAMILIES = (
    ("HunyuanVideo", ("txt_in.individual_token_refiner.", "context_embedder.token_refiner.")),
    ("Flux", ("double_blocks.0.img_attn.qkv.weight", "single_transformer_blocks.0.attn.to_q.weight")),
    ("Stable Diffusion 3", ("joint_blocks.0.x_block.attn.qkv.weight",)),
    ("Stable Diffusion / SDXL UNet", ("input_blocks.0.0.weight", "down_blocks.0.resnets.0.conv1.weight")),
    ("LTX-Video", ("adaln_single.emb.timestep_embedder.linear_1.weight",)),
    ("Mochi", ("t5_y_embedder.to_kv.weight",)),
    ("CogVideoX in the original SAT layout", ("mixins.patch_embed.proj.weight",)),
    ("Wan VACE", ("vace_blocks.0.",)),
    ("Wan-Animate", ("motion_encoder.", "face_adapter.")),
    ("Wan FLF2V (first-last-frame)", ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed")),
)


@dataclass(frozen=True)
class FileKind:
    """What a weights file holds, as read from its tensors."""

    kind: Kind
    family: str  # "wan" | "cogvideox" (transformers and VAEs), "clip" (vision tower)
    variant: str | None  # transformer: BackboneSpec variant; VAE: a BUNDLED_VAES name
    layout: Literal["native", "diffusers", "transformers"]
    summary: str
    latent_channels: int | None = None  # transformer: the latent channels it predicts; VAE: its z channels


def strip_prefixes(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """Tensor names without ComfyUI's ``model.diffusion_model.`` / ``diffusion_model.`` prefix."""
    out = {}
    for key, shape in shapes.items():
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = tuple(shape)
    return out


def _has(shapes: Shapes, *markers: str) -> bool:
    """True when a tensor name equals, or starts with, one of `markers`."""
    return any(k.startswith(m) for k in shapes for m in markers)


def _blocks(shapes: Shapes, prefix: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _sample(shapes: Shapes, n: int = 3) -> str:
    return ", ".join(sorted(shapes)[:n])


def _wan_variant(in_channels: int, out_channels: int, image: bool) -> str:
    if image and in_channels == 2 * out_channels + 4:
        return "wan-i2v"
    if not image and in_channels == out_channels:
        return "wan-ti2v" if out_channels == 48 else "wan-t2v"
    return "unknown"


def identify(shapes: Shapes) -> FileKind:
    """Read what a state dict holds from its tensor names and shapes; CheckpointError naming what was found for
    anything this project cannot load."""
    shapes = strip_prefixes(shapes)
    for name, markers in _OTHER_FAMILIES:
        if _has(shapes, *markers):
            marked = {k: v for k, v in shapes.items() if _has({k: v}, *markers)}
            raise CheckpointError(f"looks like {name} (keys such as {_sample(marked)}); DirectAnimator loads "
                                  f"{SUPPORTED}.")
    patch = shapes.get("patch_embedding.weight")
    if patch is not None and len(patch) == 5 and ("head.head.weight" in shapes or "proj_out.weight" in shapes):
        native = "head.head.weight" in shapes
        out_w = shapes["head.head.weight" if native else "proj_out.weight"]
        pt, ph, pw = patch[2:]
        out_channels = out_w[0] // (pt * ph * pw)
        image = _has(shapes, "img_emb.proj." if native else "condition_embedder.image_embedder.")
        layers = _blocks(shapes, "blocks.")
        variant = _wan_variant(patch[1], out_channels, image)
        summary = (f"Wan transformer ({'native' if native else 'diffusers'} layout, {layers} blocks, inner dim "
                   f"{patch[0]}, {patch[1]} input channels, {out_channels} output channels"
                   f"{', CLIP image embedding' if image else ''})")
        if variant == "unknown" and not image and patch[1] == 2 * out_channels + 4:
            raise CheckpointError(
                f"looks like a {summary}: image-to-video input channels without a CLIP image embedding, as in "
                "Wan2.2 I2V-A14B (one of its two expert files); DirectAnimator loads " + SUPPORTED + "."
            )
        if variant == "unknown":
            raise CheckpointError(f"looks like a {summary}, an input layout neither image-to-video (Wan2.1 I2V: "
                                  f"2 x out + 4 channels with an image embedding) nor TI2V; DirectAnimator loads "
                                  f"{SUPPORTED}.")
        return FileKind("transformer", "wan", variant, "native" if native else "diffusers", summary, out_channels)
    if "patch_embed.proj.weight" in shapes and "transformer_blocks.0.attn1.to_q.weight" in shapes \
            and "patch_embed.text_proj.weight" in shapes:
        layers = _blocks(shapes, "transformer_blocks.")
        inner = shapes["patch_embed.proj.weight"][0]
        return FileKind("transformer", "cogvideox", None, "diffusers",
                        f"CogVideoX transformer (diffusers layout, {layers} blocks, inner dim {inner})")
    # Wan VAEs: (layout, a key only that layout has, the tensor whose first side is z, Wan2.2's residual stages)
    for layout, marker, latent, residual_prefix in (
            ("native", "decoder.middle.0.residual.0.gamma", "conv2.weight", "encoder.downsamples.0.downsamples."),
            ("diffusers", "decoder.mid_block.resnets.0.norm1.gamma", "post_quant_conv.weight",
             "encoder.down_blocks.0.resnets.")):
        if marker in shapes and latent in shapes:
            z = shapes[latent][0]
            version = "2.2" if _has(shapes, residual_prefix) else "2.1"
            return FileKind("vae", "wan", f"wan{version}-vae", layout,
                            f"Wan{version} VAE ({layout} layout, {z} latent channels)", z)
    if "encoder.conv_in.conv.weight" in shapes and "decoder.conv_in.conv.weight" in shapes:
        return FileKind("vae", "cogvideox", None, "diffusers", "CogVideoX VAE (diffusers layout)")
    clip = _clip_names(shapes)
    if "embeddings.patch_embedding.weight" in clip and "pre_layrnorm.weight" in clip:
        layers = _blocks(clip, "encoder.layers.")
        width = clip["embeddings.patch_embedding.weight"][0]
        return FileKind("clip_vision", "clip", None, "transformers",
                        f"CLIP vision tower (transformers layout, {layers} layers, width {width})")
    if _has(shapes, "visual.transformer.resblocks.", "visual.conv1.weight"):
        raise CheckpointError(
            f"looks like a CLIP vision tower in the open_clip layout (keys such as {_sample(shapes)}); transformers "
            "cannot read it. Use ComfyUI's clip_vision_h.safetensors (transformers layout) or the image_encoder/ "
            "folder of a diffusers Wan2.1 I2V model."
        )
    if _has(shapes, "encoder.block.0.layer.0.SelfAttention.q.weight"):
        raise CheckpointError(
            f"looks like a T5/UMT5 text encoder (keys such as {_sample(shapes)}). DirectAnimator does not load text "
            "encoders from single files (transformers has no single-file loader for them): load it with ComfyUI's "
            "CLIP Loader (type 'wan') and connect CLIP Text Encode to DirectAnimator Encode's text input."
        )
    raise CheckpointError(
        f"not a model DirectAnimator knows ({len(shapes)} tensors, keys such as {_sample(shapes)}); it loads "
        f"{SUPPORTED}."
    )


def _clip_names(shapes: Mapping[str, Any]) -> dict[str, Any]:
    """CLIP vision names without the ``vision_model.`` prefix of transformers 4 checkpoints (ComfyUI's files keep
    it; transformers 5's CLIPVisionModel has none)."""
    return {k.removeprefix("vision_model."): v for k, v in shapes.items()}


def identify_file(path: str | Path, *, what: str = "weights file") -> FileKind:
    """`identify` on a safetensors file (header only); refuses DirectAnimator checkpoints given as a model."""
    path = Path(path)
    metadata = check_safetensors_file(path, what=what)
    if metadata.get("format") == FORMAT_NAME:
        raise CheckpointError(
            f"{what} {path}: this is a DirectAnimator checkpoint (CueFusion weights), not a model. Pass it as "
            "`checkpoint` and give the backbone (diffusers folder, repo id or weights file) as `backbone`."
        )
    try:
        return identify(safetensors_shapes(path, what=what))
    except CheckpointError as exc:
        raise CheckpointError(f"{what} {path}: {exc}") from None


# --------------------------------------------------------------------------- key layouts
def _meta(shapes: Shapes) -> dict[str, torch.Tensor]:
    return {k: torch.empty(tuple(v), device="meta") for k, v in shapes.items()}


def wan_transformer_to_diffusers(state: Mapping[str, Any]) -> dict[str, Any]:
    """Native Wan transformer names -> diffusers names (diffusers' own conversion; the input is not changed)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state))


def _wan22_vae_stage(key: str) -> str:
    """One native Wan2.2 VAE name -> the Wan2.1 native naming diffusers' converter reads, for the nested stages.

    diffusers 0.42's ``convert_wan_vae_to_diffusers`` (behind ``AutoencoderKLWan.from_single_file``) only knows the
    Wan2.1 layout, where each stage's blocks sit flat in ``downsamples``/``upsamples``; Wan2.2 nests them
    (``encoder.downsamples.<stage>.downsamples.<i>``, ``decoder.upsamples.<stage>.upsamples.<i>``) and diffusers'
    residual blocks name them ``down_blocks.<stage>.resnets.<i>`` / ``.downsampler``. So this maps them itself.
    """
    m = re.match(r"^(encoder|decoder)\.(down|up)samples\.(\d+)\.(?:down|up)samples\.(\d+)\.(.*)$", key)
    if not m:
        return key
    coder, way, stage, index, rest = m.groups()
    block = f"{coder}.{way}_blocks.{stage}"
    if rest.startswith(("resample.", "time_conv.")):
        return f"{block}.{way}sampler.{rest}"
    for old, new in ((r"residual\.0\.gamma", "norm1.gamma"), (r"residual\.2\.", "conv1."),
                     (r"residual\.3\.gamma", "norm2.gamma"), (r"residual\.6\.", "conv2."),
                     (r"shortcut\.", "conv_shortcut.")):
        if re.match(old, rest):
            return f"{block}.resnets.{index}.{re.sub('^' + old, new, rest)}"
    return key


def wan_vae_to_diffusers(state: Mapping[str, Any], variant: str) -> dict[str, Any]:
    """Native Wan VAE names -> diffusers `AutoencoderKLWan` names (Wan2.1 by diffusers' converter; Wan2.2's nested
    stages renamed first, see `_wan22_vae_stage`)."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    if variant != "wan2.2-vae":
        return convert_wan_vae_to_diffusers(dict(state))
    staged = {k: v for k, v in state.items() if _wan22_vae_stage(k) != k}
    rest = convert_wan_vae_to_diffusers({k: v for k, v in state.items() if k not in staged})
    rest.update({_wan22_vae_stage(k): v for k, v in staged.items()})
    return rest


# --------------------------------------------------------------------------- configs
def read_bundled_json(name: str) -> dict:
    """A bundled config json (configs/<name>) without its private ``_`` keys."""
    return {k: v for k, v in json.loads((CONFIG_DIR / name).read_text()).items() if not k.startswith("_")}


def bundled_vae_config(name: str) -> dict:
    """The `AutoencoderKLWan` config of a `BUNDLED_VAES` name ("wan2.1-vae", "wan2.2-vae")."""
    if name not in BUNDLED_VAES:
        raise CheckpointError(f"VAE config {name!r}: not bundled; bundled: {sorted(BUNDLED_VAES)}.")
    return read_bundled_json(BUNDLED_VAES[name])


def _sidecar(path: Path, key: str, *, beside: bool) -> dict | None:
    """``<file>.json`` (and ``config.json`` beside the file when `beside`) holding `key`, else None."""
    candidates = [path.with_suffix(".json")] + ([path.parent / "config.json"] if beside else [])
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"config {candidate}: not valid JSON ({exc}).") from exc
            if key in data:
                return {k: v for k, v in data.items() if not k.startswith("_")}
    return None


@lru_cache(maxsize=8)
def _bundled_shapes(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = build_backbone(backbone_config(name))
    return tuple(sorted((k, tuple(v.shape)) for k, v in model.state_dict().items()))


def match_bundled_config(shapes: Shapes) -> str | None:
    """The bundled backbone whose weights (diffusers names) have exactly these names and shapes, or None."""
    found = tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
    for name in BUNDLED_BACKBONES:
        if _bundled_shapes(name) == found:
            return name
    return None


def _empty(model_class: type[nn.Module], config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return model_class(**{k: v for k, v in dict(config).items() if not k.startswith("_")})


def _check_fit(model: nn.Module, shapes: Shapes, *, what: str, source: str, fix: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v) for k, v in shapes.items()}
    if expected == found:
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    bad = [f"{k} {found[k]} vs {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    quantised = [k for k in extra if k.endswith(("scale_weight", "scale_input", "weight_scale")) or k == "scaled_fp8"]
    hint = (" It holds ComfyUI's scaled fp8 tensors (quantised weights): use the bf16/fp16 file instead."
            if quantised else f" {fix}")
    raise CheckpointError(
        f"{what}: its tensors do not fit the config ({source}): {len(missing)} missing {missing[:3]}, {len(extra)} "
        f"unexpected {extra[:3]}, {len(bad)} mis-shaped {bad[:3]}.{hint}"
    )


def _config_folder(tmp: str, model_class: type, config: Mapping[str, Any]) -> str:
    """A local diffusers config folder for ``from_single_file(config=...)``, so nothing is fetched."""
    data = {"_class_name": model_class.__name__, **{k: v for k, v in dict(config).items() if not k.startswith("_")}}
    (Path(tmp) / "config.json").write_text(json.dumps(data))
    return tmp


def _finish(model: nn.Module, *, what: str) -> nn.Module:
    meta = [k for k, v in model.state_dict().items() if v.device.type == "meta"]
    if meta:
        raise CheckpointError(f"{what}: tensors {meta[:3]} were not in the file.")
    check_finite(model.state_dict(), what=what)
    return model.eval()


# --------------------------------------------------------------------------- loaders
def load_transformer_file(path: str | Path, *, config: Mapping[str, Any] | None = None,
                          dtype: torch.dtype = torch.float32) -> tuple[nn.Module, FileKind, str]:
    """A Wan or CogVideoX transformer from one safetensors file (native Wan or diffusers layout).

    The config is `config`, a sidecar json (``<file>.json`` or ``config.json`` beside it) or the bundled real
    config whose tensors the file matches exactly. Returns the model, what the file is and where the config came
    from.
    """
    path = Path(path)
    what = f"backbone file {path}"
    kind = identify_file(path, what="backbone file")
    if kind.kind != "transformer":
        folder = {"vae": "models/vae (pass it as the VAE)", "clip_vision": "models/clip_vision (pass it as the "
                  "CLIP vision / image encoder)"}[kind.kind]
        raise CheckpointError(f"{what}: this is a {kind.summary}, not a backbone; it belongs in ComfyUI's {folder}.")
    shapes = strip_prefixes(safetensors_shapes(path, what="backbone file"))
    names = wan_transformer_to_diffusers(_meta(shapes)) if kind.layout == "native" else _meta(shapes)
    diffusers_shapes = {k: tuple(v.shape) for k, v in names.items()}
    source = "given config"
    if config is None:
        config = _sidecar(path, "num_attention_heads", beside=True)
        source = "sidecar json"
    if config is None:
        name = match_bundled_config(diffusers_shapes)
        if name is None:
            raise CheckpointError(
                f"{what}: a {kind.summary} whose {len(shapes)} tensors match none of the bundled configs "
                f"{sorted(BUNDLED_BACKBONES)}, and no config beside it ({path.with_suffix('.json').name} or "
                "config.json). Put the transformer's diffusers config.json beside it."
            )
        config = backbone_config(name)
        source = f"matched bundled config {name}"
    config = backbone_config(config)
    spec = spec_from_config(config)
    if spec.family != kind.family:
        raise CheckpointError(f"{what}: the file is a {kind.summary} but the config ({source}) is a {spec.family} "
                              "config.")
    model_class = WanTransformer3DModel if spec.family == "wan" else CogVideoXTransformer3DModel
    fix = ("Is it a diffusers-format CogVideoX transformer? Original SAT weights must be converted with diffusers' "
           "conversion script first." if spec.family == "cogvideox" else
           "Give the config that belongs to these weights (a json beside the file).")
    _check_fit(_empty(model_class, config), diffusers_shapes, what=what, source=source, fix=fix)
    if spec.family == "wan":
        with tempfile.TemporaryDirectory() as tmp:
            model = WanTransformer3DModel.from_single_file(
                str(path), config=_config_folder(tmp, WanTransformer3DModel, config), local_files_only=True,
                torch_dtype=dtype)
        # from_single_file casts everything to torch_dtype, the rotary table too (from_pretrained keeps it fp32):
        # it holds no weights, so build it again at full precision
        rope = model.rope
        model.rope = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    else:  # diffusers has no from_single_file for CogVideoX: the file is already in diffusers names
        model = _empty(model_class, config)
        state, _ = read_safetensors(path, what="backbone file")
        check_finite(state, what=what)
        model.load_state_dict(state, strict=True, assign=True)
        model = model.to(dtype)
    log.info("%s: %s, config from %s", what, kind.summary, source)
    return _finish(model, what=what), kind, source


def load_vae_file(path: str | Path, *, config: Mapping[str, Any] | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[AutoencoderKLWan, FileKind, str]:
    """A Wan VAE (`AutoencoderKLWan`) from one safetensors file in the native Wan2.1/Wan2.2 or diffusers layout.

    The config is `config`, a sidecar ``<file>.json`` or the bundled config of the detected VAE ("wan2.1-vae":
    16 latent channels, 4x8x8; "wan2.2-vae": 48 channels, 4x16x16).
    """
    path = Path(path)
    what = f"VAE file {path}"
    kind = identify_file(path, what="VAE file")
    if kind.kind != "vae":
        raise CheckpointError(f"{what}: this is a {kind.summary}, not a VAE.")
    if kind.family != "wan":
        raise CheckpointError(f"{what}: a {kind.summary}; diffusers has no single-file loader for it. Give the "
                              "vae/ folder of a diffusers CogVideoX model (or its repo id) instead.")
    shapes = strip_prefixes(safetensors_shapes(path, what="VAE file"))
    native = kind.layout == "native"
    names = wan_vae_to_diffusers(_meta(shapes), kind.variant) if native else _meta(shapes)
    diffusers_shapes = {k: tuple(v.shape) for k, v in names.items()}
    source = "given config"
    if config is None:
        config = _sidecar(path, "z_dim", beside=False)
        source = "sidecar json"
    if config is None:
        config = bundled_vae_config(kind.variant)
        source = f"bundled config {kind.variant}"
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    _check_fit(_empty(AutoencoderKLWan, config), diffusers_shapes, what=what, source=source,
               fix=f"Give the VAE config that belongs to these weights ({path.with_suffix('.json').name} beside it).")
    with tempfile.TemporaryDirectory() as tmp:
        folder = _config_folder(tmp, AutoencoderKLWan, config)
        if kind.variant == "wan2.2-vae" and native:
            state, _ = read_safetensors(path, what="VAE file")
            source_state: Any = wan_vae_to_diffusers(strip_prefixes_state(state), kind.variant)
        else:
            source_state = str(path)
        vae = AutoencoderKLWan.from_single_file(source_state, config=folder, local_files_only=True,
                                                torch_dtype=dtype)
    log.info("%s: %s, config from %s", what, kind.summary, source)
    return _finish(vae, what=what), kind, source


def strip_prefixes_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict without ComfyUI's ``model.diffusion_model.`` / ``diffusion_model.`` prefixes."""
    renamed = strip_prefixes({k: () for k in state})
    return {new: state[old] for old, new in zip(state, renamed)}


def load_clip_vision_file(path: str | Path, *, config: Mapping[str, Any] | None = None,
                          dtype: torch.dtype = torch.float32):
    """A transformers `CLIPVisionModel` from one safetensors file in the transformers key layout (ComfyUI's
    ``clip_vision_h.safetensors``). transformers has no single-file loader, so the tower is built from `config`, a
    sidecar ``<file>.json`` or the bundled ViT-H/14 config, and the file's tensors are loaded into it (its
    ``visual_projection`` is not used: Wan takes the penultimate hidden states)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    path = Path(path)
    what = f"CLIP vision file {path}"
    kind = identify_file(path, what="CLIP vision file")
    if kind.kind != "clip_vision":
        raise CheckpointError(f"{what}: this is a {kind.summary}, not a CLIP vision tower.")
    source = "given config"
    if config is None:
        config = _sidecar(path, "hidden_size", beside=False)
        source = "sidecar json"
    if config is None:
        config = read_bundled_json(CLIP_VISION_CONFIG)
        source = "bundled CLIP ViT-H/14 config"
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    model = _empty(CLIPVisionModel, {"config": CLIPVisionConfig(**config)})
    prefixed = next(iter(model.state_dict())).startswith("vision_model.")

    def rename(state: Mapping[str, Any]) -> dict[str, Any]:
        unused = {"visual_projection.weight", "text_projection.weight", "logit_scale"}
        kept = {k: v for k, v in state.items() if k not in unused}
        return {("vision_model." + k if prefixed else k): v for k, v in _clip_names(kept).items()}

    fit = rename(safetensors_shapes(path, what="CLIP vision file"))
    _check_fit(model, fit, what=what, source=source,
               fix=f"Wan2.1 I2V uses CLIP ViT-H/14 (clip_vision_h); for another tower put its config beside it "
                   f"({path.with_suffix('.json').name}).")
    state = rename(read_safetensors(path, what="CLIP vision file")[0])
    check_finite(state, what=what)
    model.load_state_dict(state, strict=True, assign=True)
    log.info("%s: %s, config from %s", what, kind.summary, source)
    return _finish(model.to(dtype), what=what)


def clip_image_processor(image_size: int | None = None):
    """The CLIPImageProcessor of the Wan2.1 I2V image encoder, from the bundled config (nothing is fetched); with
    `image_size` (a tower's own ``config.image_size``), resizing and cropping to that size instead."""
    from transformers import CLIPImageProcessor

    config = read_bundled_json(CLIP_IMAGE_PROCESSOR_CONFIG)
    if image_size is not None:
        config = dict(config, size={"shortest_edge": int(image_size)},
                      crop_size={"height": int(image_size), "width": int(image_size)})
    return CLIPImageProcessor(**config)
