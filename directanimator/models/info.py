"""Size report of a backbone plus CueFusion: parameters, weight bytes per precision, activation estimate per
context window, whether the window fits the positional embeddings, the memory plan of LoRA training on one
24, 48 or 80 GB GPU (frozen weights bf16, or fp8 and block-offloaded as `directanimator.models.memory` stores them),
and the sampling plan: peak GPU memory of one window for each combination of the memory options on 12 to 80 GB
cards. Built on the meta device: no weights are allocated, so the real 5B and 14B configurations report in a second
or two. Works for both families (CogVideoX, Wan) through `directanimator.models.family`. Everything here is
computed, nothing measured."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..errors import InputError
from .configs import BUNDLED_BACKBONES, CueFusionConfig, backbone_config, bundled_backbone_names, fingerprint
from .family import BackboneSpec, build_backbone, spec_from_config
from .loader import cast_transformer
from .memory import FP8_STORAGE_DTYPE, STORAGE, store_fp8
from .transformer import (
    DirectAnimatorTransformer,
    check_latent_shape_for,
    latent_frames_for_sample_frames,
    positional_embedding_case,
)

VAE_SPATIAL = 8  # CogVideoX and Wan2.1 VAEs; Wan2.2's 48-channel VAE compresses 16x (`vae_spatial_factor`)
VAE_TEMPORAL = 4
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FF_MULT = 4  # CogVideoX FeedForward inner dim = 4 * inner_dim
GIB = 1024 ** 3
GB = 1e9
# Default windows of the Wan pipelines, in pixel frames at height x width (the frames include the first frame,
# whose latent slot our reference latent takes): Wan2.1-I2V 480P 81 frames at 480x832 (diffusers'
# WanImageToVideoPipeline defaults); Wan2.2-TI2V-5B 121 frames at 704x1280 (its 720P recipe, 24 fps).
WAN_DEFAULT_WINDOWS = {"wan-i2v": (81, 480, 832), "wan-ti2v": (121, 704, 1280), "wan-t2v": (81, 480, 832)}
# Bundled names whose checkpoint was trained at another size than its config's family default.
NAMED_DEFAULT_WINDOWS = {"wan2.1-i2v-14b-720p": (81, 720, 1280)}
WAN_FFN_TENSORS = 2  # Wan's FeedForward keeps the ffn_dim-wide projection and its GELU output

# Memory plan defaults: the CogVideoX-5B recipe's LoRA (training/configs/cogvideox_5b_i2v_lora.toml: rank 128 on
# the attention projections, the training config's default targets).
PLAN_LORA_RANK = 128
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
GPUS_GB = (24, 48, 80)
CUDA_OVERHEAD_GB = 1.5  # CUDA context, allocator fragmentation and kernels workspace, roughly
# Training modes of `memory_plan`: "lora" and "full" keep the frozen weights in bf16; "lora_fp8" stores the frozen
# backbone (and a stage-2 copy teacher) in fp8 e4m3 with bf16 compute, skipping what `memory.store_fp8` skips;
# "lora_fp8_offload" also keeps the frozen blocks on the CPU, onloaded one at a time (`training.frozen`).
PLAN_MODES = ("lora", "lora_fp8", "lora_fp8_offload", "full")
LORA_MODES = ("lora", "lora_fp8", "lora_fp8_offload")
# Frozen block weights on the GPU while a block-offloaded student trains (`training.frozen.FrozenBlockOffload`): the
# block computing or being recomputed, and one more for the handover to the next block (the copies are not streamed
# and the previous block goes back first, so this is an upper bound).
TRAINING_OFFLOAD_BLOCKS = 2

# Sampling plan: cards (GB = 1e9 bytes, as the training plan) and block-offload group sizes tabulated.
SAMPLING_GPUS_GB = (12, 16, 24, 48, 80)
PLAN_BLOCKS_ON_GPU = (1, 4)
GUIDANCE = {"batched": 2, "two passes": 1}  # guidance mode -> batch of one forward
# Scale on info's activation model (`size_report`: "inference peak (one block)"). 1.0: nothing has measured the
# real backbones' sampling peak on a GPU yet (docs/benchmarks.md "GPU smoke" has not run on one; "Sampling" measures
# a tiny model's CPU working memory, which says nothing about a 5B block). Give a measured factor with
# `activation_factor=` (the CLI's --activation-factor) once gpu_smoke reports one.
ACTIVATION_FACTOR = 1.0
ACTIVATION_FACTOR_SOURCE = ("computed (info's one-block activation model x 1.0; no measured factor yet: "
                            "docs/benchmarks.md's GPU smoke has not run on a GPU)")

# The encoders the pipelines load besides the transformer, as their repos ship them (text_encoder/ and
# image_encoder/ config.json); counted on the meta device, listed beside the report but never in its totals:
# `prepare` caches text and image embeddings, so training loads neither.
_T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               feed_forward_proj="gated-gelu")  # CogVideoX: google t5-v1_1-xxl encoder
_UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # Wan: google umt5-xxl encoder
_CLIP_VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                   image_size=224, patch_size=14, hidden_act="gelu")  # Wan2.1 I2V: open-clip ViT-H/14


def vae_spatial_factor(spec: BackboneSpec) -> int:
    """Pixels per latent pixel of the family's VAE: 16 for Wan2.2's 48-channel VAE, else 8."""
    return 16 if spec.family == "wan" and spec.out_channels == 48 else VAE_SPATIAL


@lru_cache(maxsize=None)
def default_report_names() -> list[str]:
    """The bundled backbone names `info` reports by default: one per distinct config and default window (an alias
    such as "wan2.1-i2v-14b-480p", identical to "wan2.1-i2v-14b", is left out)."""
    seen, names = set(), []
    for name in bundled_backbone_names():
        key = (BUNDLED_BACKBONES[name], NAMED_DEFAULT_WINDOWS.get(name))
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


@lru_cache(maxsize=None)
def _encoder_parameters(kind: str) -> int:
    import transformers

    with torch.device("meta"):
        if kind == "t5-xxl":
            model = transformers.T5EncoderModel(transformers.T5Config(**_T5_XXL))
        elif kind == "umt5-xxl":
            model = transformers.UMT5EncoderModel(transformers.UMT5Config(**_UMT5_XXL))
        else:
            model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_CLIP_VIT_H))
    return _count(model)


def _encoders(spec: BackboneSpec) -> dict[str, int]:
    """Parameters of the text (and image) encoder the backbone's pipeline loads."""
    if spec.family == "cogvideox":
        return {"T5-XXL text encoder": _encoder_parameters("t5-xxl")}
    found = {"UMT5-XXL text encoder": _encoder_parameters("umt5-xxl")}
    if spec.image_embed_dim is not None:
        found["CLIP ViT-H/14 image encoder"] = _encoder_parameters("clip-vit-h")
    return found


def _image_tokens(spec: BackboneSpec) -> int:
    """CLIP image tokens in Wan2.1 I2V's cross-attention context (patches + class token = 257), else 0."""
    if spec.image_embed_dim is None:
        return 0
    return (_CLIP_VIT_H["image_size"] // _CLIP_VIT_H["patch_size"]) ** 2 + 1


def _default_window(config: Mapping[str, Any], spec: BackboneSpec, name: str = "") -> tuple[int, int, int]:
    """(latent frames incl. the reference, height px, width px) the backbone was made for."""
    if spec.family == "wan":
        # The pipeline's first latent frame holds the image latent; ours holds the reference latent, so the default
        # window has the pipeline's token count: reference + (latents - 1) driving latents.
        frames, height, width = NAMED_DEFAULT_WINDOWS.get(name.lower(), WAN_DEFAULT_WINDOWS[spec.variant])
        return (frames - 1) // VAE_TEMPORAL + 1, height, width
    if config.get("use_learned_positional_embeddings") or config.get("patch_size_t") is None:
        return (latent_frames_for_sample_frames(config), int(config["sample_height"]) * VAE_SPATIAL,
                int(config["sample_width"]) * VAE_SPATIAL)
    # CogVideoX 1.5 I2V: 81 driving frames (21 latents) + the reference latent = 22, at its 768x1360 default.
    return 22, 768, 1360


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _lora_shapes(backbone: torch.nn.Module, targets: Iterable[str]) -> list[tuple[int, int]]:
    """(in, out) features of every Linear a PEFT LoRA with `targets` attaches to (exact name or name suffix)."""
    targets = tuple(targets)
    return [(m.in_features, m.out_features) for name, m in backbone.named_modules()
            if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]


def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _vae_parameters(spec: BackboneSpec) -> int:
    """Parameters of the VAE the backbone's pipeline loads (CogVideoX: diffusers' AutoencoderKLCogVideoX defaults,
    the layout of the 5B repos; Wan: the bundled 2.1 or 2.2 config), counted on the meta device."""
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan

    from .single_file import bundled_vae_config

    with torch.device("meta"):
        if spec.family == "cogvideox":
            return _count(AutoencoderKLCogVideoX())
        return _count(AutoencoderKLWan(**bundled_vae_config("wan2.2-vae" if spec.out_channels == 48 else "wan2.1-vae")))


def _weights_layout(model: DirectAnimatorTransformer, backbone_params: int, cue_params: int) -> dict:
    """Where the bytes of a meta-device `model` sit, per storage: the backbone outside its blocks ("root"), the
    largest wrapped block (backbone block + its CueFusion), all blocks, and the cue modules outside the backbone
    ("outside": patch embeddings, shared modulation); with the parameter counts the training plan needs.

    bf16 is the loader's cast (`cast_transformer`: modules the backbone class keeps in fp32 stay fp32); fp8 is then
    `memory.store_fp8` itself, applied to the meta model, so the fp8 share follows memory.py's skip rules exactly.
    """
    blocks = list(model.blocks)
    in_blocks = {id(t) for b in blocks for t in _tensors(b)}
    in_backbone = {id(t) for t in _tensors(model.backbone)}
    fusion = {id(t) for b in blocks for t in _tensors(b.fusion)}

    def measure() -> dict:
        everything = _tensors(model)
        return {
            "root": _bytes(t for t in everything if id(t) in in_backbone and id(t) not in in_blocks),
            "block": max(_bytes(_tensors(b)) for b in blocks),
            "blocks": sum(_bytes(_tensors(b)) for b in blocks),
            "outside": _bytes(t for t in everything if id(t) not in in_backbone),
        }

    cast_transformer(model, torch.bfloat16)
    layout: dict[str, Any] = {"bytes": {"bf16": measure()}}
    store_fp8(model, torch.bfloat16)
    layout["bytes"]["fp8"] = measure()
    for storage in STORAGE:
        part = layout["bytes"][storage]
        part["transformer"] = part["root"] + part["blocks"] + part["outside"]

    def fp8_count(tensors: Iterable[torch.Tensor]) -> int:
        return sum(t.numel() for t in tensors if t.dtype == FP8_STORAGE_DTYPE)

    params = list(model.parameters())
    fp8_params = fp8_count(params)
    block_params = [sum(p.numel() for p in b.parameters() if id(p) not in fusion) for b in blocks]
    fp8_layers = [m.weight.numel() for m in model.modules()
                  if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dtype == FP8_STORAGE_DTYPE]
    layout |= {
        "num_blocks": len(blocks),
        "fp8_parameters": fp8_params,
        "fp8_share": fp8_params / sum(p.numel() for p in params),
        # frozen backbone under LoRA training (CueFusion is trained, so not counted here)
        "backbone_parameters": backbone_params,
        "backbone_root_parameters": backbone_params - sum(block_params),
        "backbone_root_fp8_parameters": fp8_count(p for p in params if id(p) in in_backbone and id(p) not in in_blocks),
        "backbone_block_parameters": max(block_params),
        "backbone_block_fp8_parameters": max(fp8_count(b.parameters()) for b in blocks),
        "cue_parameters": cue_params,
        "largest_fp8_layer_parameters": max(fp8_layers, default=0),
    }
    return layout


def size_report(config_name_or_dict: str | Mapping[str, Any] | Path, *, window_latent_frames: int | None = None,
                height: int | None = None, width: int | None = None, batch: int = 1,
                cue_fusion: CueFusionConfig | None = None, lora_targets: Iterable[str] = LORA_TARGETS) -> dict:
    """Parameters, bytes and per-window activations of a CogVideoX or Wan backbone with CueFusion.

    `window_latent_frames` counts the leading reference latent; `height` and `width` are in pixels. Defaults: the
    backbone's own sample size (CogVideoX-5B-I2V: 13 latent frames at 480x720; 1.5: 22 at 768x1360) or the Wan
    pipeline's default window with the reference latent in the image latent's slot (Wan2.1-I2V: 81 frames at
    480x832 = 21 latent frames; Wan2.2-TI2V: 121 frames at 704x1280 = 31).
    """
    config = backbone_config(config_name_or_dict)
    spec = spec_from_config(config)
    name = str(config_name_or_dict) if not isinstance(config_name_or_dict, Mapping) else \
        str(dict(config_name_or_dict).get("_name", "custom config"))
    if batch < 1:
        raise InputError(f"batch={batch}: must be >= 1.")
    with torch.device("meta"):
        backbone = build_backbone(config)
        backbone_params = _count(backbone)
        lora_shapes = _lora_shapes(backbone, lora_targets)
        model = DirectAnimatorTransformer(backbone, config=cue_fusion)
    parts = {
        "patch_embeddings": _count(model.pose_embed) + _count(model.face_embed),
        "modulation": _count(model.shared_modulation)
        + sum(_count(b.fusion.down) + _count(b.fusion.up) for b in model.blocks),
        "text_projection": sum(_count(b.fusion.text_down) + _count(b.fusion.text_up) for b in model.blocks),
    }
    cue_params = sum(parts.values())
    fp = fingerprint(config)
    d, layers = spec.inner_dim, spec.num_layers
    full_rank_linear = layers * (spec.time_embed_dim * 6 * d + 6 * d) + layers * d * d

    vae = vae_spatial_factor(spec)
    f_def, h_def, w_def = _default_window(config, spec, name)
    frames = int(window_latent_frames or f_def)
    height_px, width_px = int(height or h_def), int(width or w_def)
    if height_px % vae or width_px % vae:
        raise InputError(f"size_report: {width_px}x{height_px} px is not a multiple of {vae} (the VAE's factor).")
    h, w = height_px // vae, width_px // vae
    try:
        check_latent_shape_for(config, frames, h, w)
        fits, fit_note = True, "fits"
    except InputError as exc:
        fits, fit_note = False, str(exc)
    p, pt = spec.patch_size, spec.patch_size_t or 1
    vision_tokens = ((frames + pt - 1) // pt) * (h // p) * (w // p)
    text_tokens = spec.max_text_seq_length
    image_tokens = _image_tokens(spec)
    heads = spec.num_attention_heads
    if spec.family == "wan":
        # Wan: self-attention over the vision tokens, cross-attention to the text (+ image) context, FFN of ffn_dim.
        tokens = {"vision": vision_tokens, "text": text_tokens, "image": image_tokens,
                  "total": vision_tokens + text_tokens + image_tokens}
        activations = _wan_activations(spec, int(config["ffn_dim"]), vision_tokens, text_tokens + image_tokens,
                                       batch, per_frame_timesteps=spec.image_conditioning == "first_frame")
    else:
        tokens = {"vision": vision_tokens, "text": text_tokens, "total": vision_tokens + text_tokens}
        activations = _cogvideox_activations(d, layers, heads, vision_tokens, tokens["total"], batch)
    encoders = _encoders(spec)
    layout = _weights_layout(model, backbone_params, cue_params)  # last: it casts the meta model
    return {
        "name": name,
        "config": fp | {"num_attention_heads": heads, "max_text_seq_length": text_tokens},
        "family": spec.family,
        "variant": spec.variant,
        "backbone_parameters": backbone_params,
        "cue_parameters": cue_params,
        "cue_parameters_by_part": parts,
        "cue_fraction": cue_params / backbone_params,
        "full_rank_cue_parameters": full_rank_linear,
        "weights_bytes": {k: (backbone_params + cue_params) * v for k, v in BYTES.items()},
        "cue_weights_bytes": {k: cue_params * v for k, v in BYTES.items()},
        "lora": {"targets": list(lora_targets), "modules": len(lora_shapes),
                 "parameters_per_rank": sum(i + o for i, o in lora_shapes)},
        "encoders": encoders,
        "vae_parameters": _vae_parameters(spec),
        "weights_layout": layout,
        "window": {"latent_frames": frames, "driving_frames": (frames - 2) * VAE_TEMPORAL + 1, "height": height_px,
                   "width": width_px, "latent_height": h, "latent_width": w, "batch": batch, "vae_factor": vae},
        "tokens": tokens,
        "activations": activations,
        "positional_embeddings": positional_embedding_case(config),
        "fits_positional_embeddings": fits,
        "fit_note": fit_note,
    }


def _cogvideox_activations(d: int, layers: int, heads: int, vision_tokens: int, tokens: int, batch: int) -> dict:
    """Activation bytes per precision of a CogVideoX block stack: joint attention over vision + text tokens, MLP of
    4 x inner_dim."""
    activations = {}
    for precision, nbytes in BYTES.items():
        unit = batch * nbytes
        stream = unit * tokens * d  # one [tokens, D] tensor
        block_peak = stream * (1 + 1 + 3 + 1) + unit * tokens * FF_MULT * d * 2  # residual, norm, qkv, out, MLP
        cue = unit * vision_tokens * d * 4  # c_p, c_f and the per-block modulated pair
        activations[precision] = {
            "hidden_states_bytes": stream,
            "attention_sdpa_bytes": stream * 4,  # q, k, v, output; SDPA never materialises the scores
            "attention_scores_naive_bytes": unit * heads * tokens * tokens,
            "mlp_bytes": unit * tokens * FF_MULT * d * 2,
            "cue_tokens_bytes": cue,
            "inference_peak_bytes": block_peak + cue,
            "training_checkpointed_bytes": layers * stream + 3 * (block_peak + cue),
        }
    return activations


def _wan_activations(spec: BackboneSpec, ffn_dim: int, vision_tokens: int, context_tokens: int, batch: int, *,
                     per_frame_timesteps: bool) -> dict:
    """Activation bytes per precision of a Wan block stack: self-attention over the vision tokens, cross-attention
    from them to `context_tokens` (512 text + 257 CLIP image tokens on 2.1 I2V), FFN of `ffn_dim`. With per-frame
    timesteps (TI2V) the time embedding and its 6-way projection are per token and held through the forward."""
    d, layers, heads = spec.inner_dim, spec.num_layers, spec.num_attention_heads
    image_branch = spec.image_embed_dim is not None  # 2.1 I2V: a second cross-attention output for the image keys
    activations = {}
    for precision, nbytes in BYTES.items():
        unit = batch * nbytes
        stream = unit * vision_tokens * d
        context = unit * context_tokens * d  # text (+ image) tokens projected to D, shared by all blocks
        cross = stream * (2 + image_branch) + 2 * context  # q, output(s); k, v of the context
        mlp = unit * vision_tokens * ffn_dim * WAN_FFN_TENSORS
        time = stream * (1 + 6) if per_frame_timesteps else 0  # temb [N, D] and timestep_proj [N, 6, D]
        block_peak = stream * (1 + 1 + 3 + 1) + cross + mlp  # residual, norm, qkv, out; cross-attention; FFN
        cue = unit * vision_tokens * d * 4
        activations[precision] = {
            "hidden_states_bytes": stream,
            "attention_sdpa_bytes": stream * 4,
            "cross_attention_sdpa_bytes": cross,
            "attention_scores_naive_bytes": unit * heads * vision_tokens * vision_tokens,
            "mlp_bytes": mlp,
            "timestep_embedding_bytes": time,
            "cue_tokens_bytes": cue,
            "inference_peak_bytes": block_peak + cue + time + context,
            "training_checkpointed_bytes": layers * stream + 3 * (block_peak + cue) + time + context,
        }
    return activations


def memory_plan(report: Mapping[str, Any], *, lora_rank: int = PLAN_LORA_RANK, modes: Iterable[str] = PLAN_MODES,
                gpus_gb: Iterable[int] = GPUS_GB, overhead_gb: float = CUDA_OVERHEAD_GB) -> list[dict]:
    """Rows (bytes) of single-GPU training memory for a `size_report`: LoRA (rank `lora_rank` on the report's LoRA
    targets) or full fine-tuning, fp32 or 8-bit AdamW, stage 1 and stage 2 (S2X teacher: a frozen copy run to block
    D without a graph, or the student with its LoRA disabled), and whether each fits a GPU of `gpus_gb` GB (1e9
    bytes) with `overhead_gb` for the CUDA context. Planned from the configs, not measured.

    Rules: LoRA and CueFusion tensors trained in fp32 (weights, grads, AdamW m and v); full fine-tuning keeps bf16
    weights and grads with fp32 AdamW plus an fp32 master copy, or 8-bit AdamW states and no master copy. Frozen
    weights (the backbone under LoRA, a copy teacher) by mode (`PLAN_MODES`):

    - "lora", "full": bf16.
    - "lora_fp8": the layers `memory.store_fp8` stores as fp8 take 1 byte, the rest (norms and their modulation
      linears, embeddings, proj_out) bf16; a copy teacher likewise, its CueFusion bf16. Layerwise casting computes
      a layer in bf16: under gradient checkpointing autograd keeps the bf16 weights of the block being recomputed
      until its backward ends (one block, counted in the weights), and a teacher's forward upcasts one layer at a
      time (its largest layer, counted in the teacher).
    - "lora_fp8_offload": as "lora_fp8" with the frozen block weights on the CPU (`training.frozen`),
      `TRAINING_OFFLOAD_BLOCKS` blocks on the GPU (fp8, one of them also as the bf16 copy autograd holds); a copy
      teacher block-offloaded without streams, counted as `sampling_plan`'s streamed one-block offload (one block
      more than it holds). The LoRA and CueFusion tensors stay on the GPU.

    Latents, cues, text and image embeddings cached by `prepare`: no VAE and no encoder is loaded.
    """
    gpus = tuple(gpus_gb)
    backbone, cue = report["backbone_parameters"], report["cue_parameters"]
    lora = lora_rank * report["lora"]["parameters_per_rank"]  # A [r, in] + B [out, r] per target
    acts = report["activations"]["bf16"]
    activations = acts["training_checkpointed_bytes"]
    teacher_acts = acts["inference_peak_bytes"]  # transient, no graph kept
    weights_bf16 = (backbone + cue) * 2
    rows = []
    for mode in modes:
        if mode not in PLAN_MODES:
            raise InputError(f"memory_plan: mode {mode!r}; use one of {list(PLAN_MODES)}.")
        frozen, copy_teacher = _frozen_bytes(report, mode)
        for eight_bit in (False, True):
            if mode in LORA_MODES:
                trained = cue + lora
                weights = frozen + trained * 4  # frozen backbone by mode; trained tensors fp32
                grads = trained * 4
                master = 0
            else:
                trained = backbone + cue
                weights = trained * 2
                grads = trained * 2
                master = 0 if eight_bit else trained * 4  # fp32 master copy for bf16 weights with fp32 AdamW
            states = trained * (2 if eight_bit else 8)
            teachers = [(1, "-", 0), (2, "copy", (weights_bf16 if mode == "full" else copy_teacher) + teacher_acts)]
            if mode in LORA_MODES:
                teachers.append((2, "lora_disabled", teacher_acts))
            for stage, teacher, extra in teachers:
                total = weights + grads + master + states + activations + extra
                rows.append({
                    "mode": mode, "adam": "8-bit" if eight_bit else "fp32", "stage": stage, "teacher": teacher,
                    "trained": trained, "weights": weights, "grads": grads, "master": master, "states": states,
                    "activations": activations, "teacher_bytes": extra, "total": total,
                    "fits": {g: total + overhead_gb * GB <= g * GB for g in gpus},
                })
    return rows


def _frozen_bytes(report: Mapping[str, Any], mode: str) -> tuple[int, int]:
    """(GPU bytes of the frozen backbone under LoRA, of a stage-2 copy teacher's weights) for training `mode`."""
    backbone, cue = report["backbone_parameters"], report["cue_parameters"]
    if mode in ("lora", "full"):
        return backbone * 2, (backbone + cue) * 2
    layout = report["weights_layout"]

    def fp8_bytes(params: int, fp8_params: int) -> int:
        return fp8_params + (params - fp8_params) * 2

    block = layout["backbone_block_parameters"]
    block_fp8 = layout["backbone_block_fp8_parameters"]
    held = block_fp8 * 2  # the bf16 copy of one block's fp8 layers that autograd holds for its backward
    upcast = layout["largest_fp8_layer_parameters"] * 2  # a teacher layer computing in bf16
    if mode == "lora_fp8":
        frozen = fp8_bytes(backbone, layout["fp8_parameters"])
        return frozen + held, frozen + cue * 2 + upcast
    root = fp8_bytes(layout["backbone_root_parameters"], layout["backbone_root_fp8_parameters"])
    student = root + (TRAINING_OFFLOAD_BLOCKS - 1) * fp8_bytes(block, block_fp8) + (block - block_fp8) * 2 + held
    teacher = _resident_transformer_bytes(layout, "fp8", "blocks", 1) + upcast
    return student, teacher


def _resident_transformer_bytes(layout: Mapping[str, Any], storage: str, offload: str, blocks_on_gpu: int) -> int:
    """Transformer bytes on the GPU while it runs: all of it, or under block offload the backbone's root, the cue
    modules outside it and `blocks_on_gpu` blocks, plus one prefetched block when streamed (`blocks_on_gpu` 1: the
    memory options stream then on CUDA)."""
    part = layout["bytes"][storage]
    if offload != "blocks":
        return part["transformer"]
    groups = 2 if blocks_on_gpu == 1 else 1
    on_gpu = min(groups * blocks_on_gpu, layout["num_blocks"])
    return part["root"] + part["outside"] + on_gpu * part["block"]


# Tensors one step-cache context keeps (`directanimator.models.caching`), measured on tiny models of both families
# (tests/test_models_info.py): "hidden" [B, vision tokens, inner_dim] and "text" [B, text tokens, inner_dim] (the
# text stream CogVideoX blocks also return) in the model dtype; "output" the output projection's [B, vision tokens,
# out_channels x patch volume] in fp32 (TaylorSeer's lite mode keeps its value and slope).
CACHE_STATE_TENSORS = {"first_block": {"hidden": 3, "text": 2}, "mag": {"hidden": 1}, "taylorseer": {"output": 2}}


def cache_state_bytes(report: Mapping[str, Any], mode: str, *, batch: int = 1, dtype: str = "bf16") -> int:
    """Bytes one step-cache context (`mode`: first_block | mag | taylorseer) holds at the report's window, for a
    forward of `batch` (2 with batched guidance) in `dtype`. On a GPU the sampler keeps one context's state there
    and parks the others on the CPU."""
    if mode not in CACHE_STATE_TENSORS:
        raise InputError(f"cache_state_bytes: mode {mode!r}; use one of {sorted(CACHE_STATE_TENSORS)}.")
    config, tokens = report["config"], report["tokens"]
    d = int(config["inner_dim"])
    patch = int(config["patch_size"]) ** 2 * int(config.get("patch_size_t") or 1)
    text = tokens["text"] if config.get("family", "cogvideox") == "cogvideox" else 0
    sizes = {"hidden": tokens["vision"] * d * BYTES[dtype], "text": text * d * BYTES[dtype],
             "output": tokens["vision"] * int(config["out_channels"]) * patch * BYTES["fp32"]}
    return batch * sum(count * sizes[kind] for kind, count in CACHE_STATE_TENSORS[mode].items())


def sampling_plan(report: Mapping[str, Any], *, gpus_gb: Iterable[int] = SAMPLING_GPUS_GB,
                  blocks_on_gpu: Iterable[int] = PLAN_BLOCKS_ON_GPU, activation_factor: float = ACTIVATION_FACTOR,
                  overhead_gb: float = CUDA_OVERHEAD_GB) -> list[dict]:
    """Rows (bytes) of the peak GPU memory of sampling one window of a `size_report` (its window and size), for each
    combination of the memory options (`memory.MemoryOptions`): storage bf16 | fp8; offload none | model | blocks
    with each of `blocks_on_gpu`; guidance batched (one forward of batch 2) | two passes (batch 1); and whether the
    peak fits each card of `gpus_gb` GB (1e9 bytes) with `overhead_gb` for the CUDA context.

    Peak = the transformer's weights on the GPU (`_resident_transformer_bytes`; fp8 by memory.py's own skip
    rules) + under fp8 the bf16 copy of the largest fp8 layer while it computes + under offload "none" the VAE and
    (Wan2.1 I2V) CLIP image encoder weights in bf16, which stay on the GPU with the transformer (under "model" and
    "blocks" they are elsewhere while the transformer runs) + `activation_factor` x the report's bf16 one-block
    inference peak at the guidance batch (the activation model is linear in the batch). The text encoder is never
    on the GPU while sampling (prompts are embedded before). Computed, not measured.
    """
    if activation_factor <= 0:
        raise InputError(f"activation_factor={activation_factor}: must be > 0 (1.0 = info's activation model).")
    ks = tuple(blocks_on_gpu)
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise InputError(f"blocks_on_gpu={list(ks)}: give whole numbers of blocks, 1 or more.")
    gpus = tuple(gpus_gb)
    layout = report["weights_layout"]
    per_sample = report["activations"]["bf16"]["inference_peak_bytes"] / report["window"]["batch"]
    others = (report["vae_parameters"] + report["encoders"].get("CLIP ViT-H/14 image encoder", 0)) * BYTES["bf16"]
    offloads = [("none", None), ("model", None)] + [("blocks", k) for k in ks]
    rows = []
    for storage in STORAGE:
        for offload, k in offloads:
            weights = _resident_transformer_bytes(layout, storage, offload, k or 1)
            upcast = layout["largest_fp8_layer_parameters"] * BYTES["bf16"] if storage == "fp8" else 0
            resident_others = others if offload == "none" else 0
            for guidance, batch in GUIDANCE.items():
                activations = round(activation_factor * per_sample * batch)
                peak = weights + upcast + resident_others + activations
                rows.append({
                    "storage": storage, "offload": offload, "blocks_on_gpu": k,
                    "streamed": offload == "blocks" and k == 1, "guidance": guidance, "batch": batch,
                    "transformer_weights": weights + upcast, "other_weights": resident_others,
                    "activations": activations, "peak": peak,
                    "fits": {g: peak + overhead_gb * GB <= g * GB for g in gpus},
                })
    return rows


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _millions(n: float) -> str:
    return f"{n / 1e6:,.1f} M"


TRAINING_MODE_NAMES = {"lora": "frozen bf16", "lora_fp8": "frozen fp8",
                       "lora_fp8_offload": "frozen fp8, blocks offloaded", "full": "full fine-tuning"}


def _plan_rows(report: Mapping[str, Any], lora_rank: int) -> list[tuple[str, str]]:
    rows = []
    for r in memory_plan(report, lora_rank=lora_rank, modes=LORA_MODES):
        teacher = {"-": "", "copy": ", frozen copy teacher to block D",
                   "lora_disabled": ", teacher = student with LoRA off"}[r["teacher"]]
        fits = ", ".join(f"{g} GB {'yes' if ok else 'no'}" for g, ok in r["fits"].items())
        rows.append((f"  LoRA stage {r['stage']}{teacher}, AdamW {r['adam']}, {TRAINING_MODE_NAMES[r['mode']]}",
                     f"{r['total'] / GB:.1f} GB: {fits}"))
    return rows


def format_size_report(report: Mapping[str, Any], *, markdown: bool = False, precision: str = "bf16",
                       lora_rank: int = PLAN_LORA_RANK) -> str:
    """Render `size_report` output (and its LoRA `memory_plan` rows) as plain text or a markdown table."""
    act = report["activations"][precision]
    win = report["window"]
    tok = report["tokens"]
    wan = report.get("family") == "wan"
    if wan:
        context = f"{tok['text']} text" + (f" + {tok['image']} image" if tok["image"] else "")
        token_row = ("tokens (vision; cross-attention context)", f"{tok['vision']:,}; {context}")
    else:
        token_row = ("tokens (vision + text)", f"{tok['vision']:,} + {tok['text']} = {tok['total']:,}")
    rows = [
        ("backbone parameters", _millions(report["backbone_parameters"])),
        ("cue parameters", f"{_millions(report['cue_parameters'])} ({100 * report['cue_fraction']:.2f}% of the backbone)"),
        ("  patch embeddings / modulation / text", " / ".join(_millions(v) for v in report["cue_parameters_by_part"].values())),
        ("  full-rank per-block Linear_l would be", _millions(report["full_rank_cue_parameters"])),
        ("weights fp32 / bf16 / fp16", " / ".join(_gib(report["weights_bytes"][k]) for k in ("fp32", "bf16", "fp16"))),
        ("window", f"{win['latent_frames']} latent frames (reference + {win['driving_frames']} driving frames) at "
                   f"{win['width']}x{win['height']} px, batch {win['batch']}"),
        token_row,
        (f"activations ({precision}): hidden states", _gib(act["hidden_states_bytes"])),
        ("  attention with SDPA (q, k, v, out)", _gib(act["attention_sdpa_bytes"])),
        ("  attention scores without SDPA", _gib(act["attention_scores_naive_bytes"])),
    ]
    if wan:
        rows.append(("  cross-attention with SDPA", _gib(act["cross_attention_sdpa_bytes"])))
        rows.append(("  FFN hidden (ffn_dim)", _gib(act["mlp_bytes"])))
        if act["timestep_embedding_bytes"]:
            rows.append(("  per-token timestep embedding", _gib(act["timestep_embedding_bytes"])))
    else:
        rows.append(("  MLP hidden", _gib(act["mlp_bytes"])))
    rows += [
        ("  cue tokens", _gib(act["cue_tokens_bytes"])),
        ("  inference peak (one block)", _gib(act["inference_peak_bytes"])),
        ("  training, gradient checkpointing", _gib(act["training_checkpointed_bytes"])),
        ("positional embeddings", report["positional_embeddings"]),
        ("window fits", "yes" if report["fits_positional_embeddings"] else f"no: {report['fit_note']}"),
        ("not counted: encoders", "; ".join(f"{k} {_millions(v)} ({_gib(v * 2)} bf16)"
                                            for k, v in report["encoders"].items())
         + " (loaded for sampling; not in the plan, which reads embeddings cached by prepare)"),
        (f"memory plan, one GPU (LoRA rank {lora_rank})",
         f"{report['lora']['modules']} LoRA layers ({', '.join(report['lora']['targets'])}): "
         f"{_millions(lora_rank * report['lora']['parameters_per_rank'])}; frozen bf16 or fp8 "
         f"({100 * report['weights_layout']['fp8_share']:.1f}% of the weights fp8, memory.py's rules) or fp8 with the "
         f"frozen blocks offloaded, trained fp32, gradient checkpointing, window above; GB = 1e9 bytes incl. "
         f"{CUDA_OVERHEAD_GB} GB CUDA overhead in the fit; planned, not measured"),
    ]
    rows += _plan_rows(report, lora_rank)
    if markdown:
        lines = [f"**{report['name']}**", "", "| quantity | value |", "|---|---|"]
        lines += [f"| {k.strip()} | {v} |" for k, v in rows]
        return "\n".join(lines)
    width = max(len(k) for k, _ in rows)
    return "\n".join([report["name"]] + [f"{k:<{width}}  {v}" for k, v in rows])


def _gb(n: float) -> str:
    return f"{n / GB:.1f}"


def _offload_label(row: Mapping[str, Any]) -> str:
    if row["offload"] != "blocks":
        return row["offload"]
    return f"blocks, {row['blocks_on_gpu']} on GPU" + (" + 1 prefetched (streamed)" if row["streamed"] else "")


def format_sampling_plan(report: Mapping[str, Any], rows: list[dict], *, markdown: bool = False,
                         activation_factor: float = ACTIVATION_FACTOR, lora_rank: int = PLAN_LORA_RANK) -> str:
    """Render `sampling_plan` rows of `report` as a table (plain text or markdown), with what is computed and what
    not, followed by the LoRA training plan rows (`memory_plan`)."""
    win = report["window"]
    layout = report["weights_layout"]
    gpus = list(rows[0]["fits"]) if rows else list(SAMPLING_GPUS_GB)
    source = ACTIVATION_FACTOR_SOURCE if activation_factor == ACTIVATION_FACTOR else \
        f"info's one-block activation model x {activation_factor:g} (the factor given)"
    vae_gb = report["vae_parameters"] * BYTES["bf16"] / GB
    others = [f"VAE {vae_gb:.2f} GB"] + [f"{k.split(' image')[0]} {v * BYTES['bf16'] / GB:.2f} GB"
                                         for k, v in report["encoders"].items() if "image encoder" in k]
    head = [
        f"Sampling plan: {report['name']}, one window of {win['latent_frames']} latent frames (reference included) at "
        f"{win['height']}x{win['width']} px, {report['tokens']['vision']:,} vision tokens"
        + ("" if report["fits_positional_embeddings"] else f" (this window does not fit: {report['fit_note']})"),
        f"computed, not measured: weights from the real config on the meta device ({100 * layout['fp8_share']:.1f}% "
        f"of the parameters fp8 under storage fp8, memory.py's skip rules; {layout['num_blocks']} blocks of "
        f"{layout['bytes']['bf16']['block'] / GB:.2f} GB bf16 / {layout['bytes']['fp8']['block'] / GB:.2f} GB fp8); "
        f"activations {source}",
        f"peak = transformer weights on the GPU (+ the bf16 copy of the largest fp8 layer while it computes) + under "
        f"offload none the {' and '.join(others)} bf16 + activations; fit: peak + {CUDA_OVERHEAD_GB} GB CUDA overhead "
        "<= card; GB = 1e9 bytes; the text encoder is not on the GPU while sampling",
        "step cache: + one context's state on the GPU (the idle windows' and branches' are parked on the CPU): "
        + ", ".join(f"{mode} {cache_state_bytes(report, mode) / GB:.2f} GB" for mode in CACHE_STATE_TENSORS)
        + " at batch 1, twice that batched",
        "VAE decode of a window: not modelled here (info has no VAE activation model); under offload model or "
        "blocks the VAE decodes after the transformer is offloaded, so its peak does not add to these rows; under "
        "offload none it decodes beside the resident transformer",
    ]
    columns = ["storage", "offload", "guidance", "transformer weights GB", "VAE + encoders GB", "activations GB",
               "peak GB"] + [f"{g} GB" for g in gpus]
    table = [[r["storage"], _offload_label(r), f"{r['guidance']} (batch {r['batch']})",
              _gb(r["transformer_weights"]), _gb(r["other_weights"]), _gb(r["activations"]), _gb(r["peak"])]
             + ["yes" if r["fits"][g] else "no" for g in gpus] for r in rows]
    training = [(k.strip(), v) for k, v in _plan_rows(report, lora_rank)]
    training_head = (f"Training plan (LoRA rank {lora_rank}, this window, gradient checkpointing; planned, not "
                     "measured; fit includes the CUDA overhead)")
    if markdown:
        lines = [f"**{head[0]}**", ""] + [f"{line[0].upper()}{line[1:]}." for line in head[1:]] + [""]
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row) + " |" for row in table]
        lines += ["", f"{training_head}:", "", "| training | total, fits |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in training]
        return "\n".join(lines)
    widths = [max(len(columns[i]), *(len(row[i]) for row in table)) for i in range(len(columns))]
    lines = head + ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    lines += [training_head] + [f"  {k}: {v}" for k, v in training]
    return "\n".join(lines)

