"""Size report of a backbone plus CueFusion: parameters, weight bytes per precision, activation estimate per
context window and whether the window fits the positional embeddings. Built on the meta device: no weights are
allocated, so the real 5B configurations report in well under a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import CogVideoXTransformer3DModel

from ..errors import InputError
from .configs import CueFusionConfig, backbone_config, fingerprint
from .transformer import (
    DirectAnimatorTransformer,
    check_latent_shape_for,
    latent_frames_for_sample_frames,
    positional_embedding_case,
)

VAE_SPATIAL = 8
VAE_TEMPORAL = 4
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FF_MULT = 4  # CogVideoX FeedForward inner dim = 4 * inner_dim
GIB = 1024 ** 3


def _default_window(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(latent frames incl. the reference, height px, width px) the backbone was made for."""
    if config.get("use_learned_positional_embeddings") or config.get("patch_size_t") is None:
        return (latent_frames_for_sample_frames(config), int(config["sample_height"]) * VAE_SPATIAL,
                int(config["sample_width"]) * VAE_SPATIAL)
    # CogVideoX 1.5 I2V: 81 driving frames (21 latents) + the reference latent = 22, at its 768x1360 default.
    return 22, 768, 1360


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def size_report(config_name_or_dict: str | Mapping[str, Any] | Path, *, window_latent_frames: int | None = None,
                height: int | None = None, width: int | None = None, batch: int = 1,
                cue_fusion: CueFusionConfig | None = None) -> dict:
    """Parameters, bytes and per-window activations of a CogVideoX backbone with CueFusion.

    `window_latent_frames` counts the leading reference latent; `height` and `width` are in pixels. Defaults: the
    backbone's own sample size (CogVideoX-5B-I2V: 13 latent frames at 480x720; 1.5: 22 at 768x1360).
    """
    config = backbone_config(config_name_or_dict)
    name = str(config_name_or_dict) if not isinstance(config_name_or_dict, Mapping) else \
        str(dict(config_name_or_dict).get("_name", "custom config"))
    if batch < 1:
        raise InputError(f"batch={batch}: must be >= 1.")
    with torch.device("meta"):
        backbone = CogVideoXTransformer3DModel(**config)
        backbone_params = _count(backbone)
        model = DirectAnimatorTransformer(backbone, config=cue_fusion)
    parts = {
        "patch_embeddings": _count(model.pose_embed) + _count(model.face_embed),
        "modulation": _count(model.shared_modulation)
        + sum(_count(b.fusion.down) + _count(b.fusion.up) for b in backbone.transformer_blocks),
        "text_projection": sum(_count(b.fusion.text_down) + _count(b.fusion.text_up)
                               for b in backbone.transformer_blocks),
    }
    cue_params = sum(parts.values())
    fp = fingerprint(config)
    d, layers = fp["inner_dim"], fp["num_layers"]
    full_rank_linear = layers * (config["time_embed_dim"] * 6 * d + 6 * d) + layers * d * d

    f_def, h_def, w_def = _default_window(config)
    frames = int(window_latent_frames or f_def)
    height_px, width_px = int(height or h_def), int(width or w_def)
    if height_px % VAE_SPATIAL or width_px % VAE_SPATIAL:
        raise InputError(f"size_report: {width_px}x{height_px} px is not a multiple of {VAE_SPATIAL}.")
    h, w = height_px // VAE_SPATIAL, width_px // VAE_SPATIAL
    try:
        check_latent_shape_for(config, frames, h, w)
        fits, fit_note = True, "fits"
    except InputError as exc:
        fits, fit_note = False, str(exc)
    p, pt = fp["patch_size"], fp["patch_size_t"] or 1
    vision_tokens = ((frames + pt - 1) // pt) * (h // p) * (w // p)
    text_tokens = int(config.get("max_text_seq_length", 226))
    tokens = vision_tokens + text_tokens
    heads = int(config["num_attention_heads"])

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
    return {
        "name": name,
        "config": fp | {"num_attention_heads": heads, "max_text_seq_length": text_tokens},
        "backbone_parameters": backbone_params,
        "cue_parameters": cue_params,
        "cue_parameters_by_part": parts,
        "cue_fraction": cue_params / backbone_params,
        "full_rank_cue_parameters": full_rank_linear,
        "weights_bytes": {k: (backbone_params + cue_params) * v for k, v in BYTES.items()},
        "cue_weights_bytes": {k: cue_params * v for k, v in BYTES.items()},
        "window": {"latent_frames": frames, "driving_frames": (frames - 2) * VAE_TEMPORAL + 1, "height": height_px,
                   "width": width_px, "latent_height": h, "latent_width": w, "batch": batch},
        "tokens": {"vision": vision_tokens, "text": text_tokens, "total": tokens},
        "activations": activations,
        "positional_embeddings": positional_embedding_case(config),
        "fits_positional_embeddings": fits,
        "fit_note": fit_note,
    }


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _millions(n: float) -> str:
    return f"{n / 1e6:,.1f} M"


def format_size_report(report: Mapping[str, Any], *, markdown: bool = False, precision: str = "bf16") -> str:
    """Render `size_report` output as plain text or a markdown table."""
    act = report["activations"][precision]
    win = report["window"]
    rows = [
        ("backbone parameters", _millions(report["backbone_parameters"])),
        ("cue parameters", f"{_millions(report['cue_parameters'])} ({100 * report['cue_fraction']:.2f}% of the backbone)"),
        ("  patch embeddings / modulation / text", " / ".join(_millions(v) for v in report["cue_parameters_by_part"].values())),
        ("  full-rank per-block Linear_l would be", _millions(report["full_rank_cue_parameters"])),
        ("weights fp32 / bf16 / fp16", " / ".join(_gib(report["weights_bytes"][k]) for k in ("fp32", "bf16", "fp16"))),
        ("window", f"{win['latent_frames']} latent frames (reference + {win['driving_frames']} driving frames) at "
                   f"{win['width']}x{win['height']} px, batch {win['batch']}"),
        ("tokens (vision + text)", f"{report['tokens']['vision']:,} + {report['tokens']['text']} = {report['tokens']['total']:,}"),
        (f"activations ({precision}): hidden states", _gib(act["hidden_states_bytes"])),
        ("  attention with SDPA (q, k, v, out)", _gib(act["attention_sdpa_bytes"])),
        ("  attention scores without SDPA", _gib(act["attention_scores_naive_bytes"])),
        ("  MLP hidden", _gib(act["mlp_bytes"])),
        ("  cue tokens", _gib(act["cue_tokens_bytes"])),
        ("  inference peak (one block)", _gib(act["inference_peak_bytes"])),
        ("  training, gradient checkpointing", _gib(act["training_checkpointed_bytes"])),
        ("positional embeddings", report["positional_embeddings"]),
        ("window fits", "yes" if report["fits_positional_embeddings"] else f"no: {report['fit_note']}"),
    ]
    if markdown:
        lines = [f"**{report['name']}**", "", "| quantity | value |", "|---|---|"]
        lines += [f"| {k.strip()} | {v} |" for k, v in rows]
        return "\n".join(lines)
    width = max(len(k) for k, _ in rows)
    return "\n".join([report["name"]] + [f"{k:<{width}}  {v}" for k, v in rows])
