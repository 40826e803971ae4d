"""The model card: ``model_card.json`` (the recipe and every stage's numbers) and ``MODEL_CARD.md``, its text,
rendered from one template; each optional line comes from a small helper that returns it or nothing."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict
from pathlib import Path
from string import Template

import torch

from .config import WORLD_OPTIONS, RecipeConfig

CARD = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
STAGES = ("synth", "vae", "backbone", "prepare", "stage1", "pseudo", "stage2", "export", "validate", "card")

TEMPLATE = Template("""\
# DirectAnimator demo model

A small DirectAnimator (CogVideoX classes, CueFusion, Same2X) trained from scratch on the CPU on the project's \
procedural world (docs/world.md). It shows the whole method end to end at toy scale; it is not a general animator \
and has never seen real people.

Reproduce (one command):

```bash
$command
```

${run_as}## Configuration

- VAE: `AutoencoderKLCogVideoX` $vae_channels, ${latent_channels}-channel latents, 8x spatial / 4x temporal \
compression, $vae_parameters M parameters, scaling factor $scaling_factor; trained first, then frozen.
- Transformer: `CogVideoXTransformer3DModel`, $layout, $transformer_parameters M parameters (stored in bf16); \
CueFusion $cue_parameters M parameters.
- Working size ${size}x${size} px, $frames frames at $fps fps.

## Data

- $clips procedural-world clips ($val_clips held out), identity pool of $identities, seed $seed, $format; exact \
cues from the world's ground truth; pseudo pairs: the world's own pseudo driving clips.
${world_settings}
## Training

| stage | steps (target) | wall time | first loss | final losses |
|---|---|---|---|---|
$vae_row
$stage1_row
$stage2_row

Wall time per stage: $wall_times.
${vae_reused}${prepare_note}
## Metrics

- VAE held-out reconstruction PSNR: $vae_psnr dB ($vae_clips clips).
- Held-out pairs ($pairs, $kinds; $sampling_steps $scheduler sampling step(s), guidance \
$guidance${samples}${anchor}):

| | PSNR (dB) | SSIM |
|---|---|---|
| this model | $psnr | $ssim |
| static reference (the reference repeated) | $baseline_psnr | $baseline_ssim |

${note}Size: $megabytes MB in total (limit $max_megabytes MB). Machine: $cpus CPUs, torch $torch.
""")


def model_card_text(card: dict) -> str:
    """MODEL_CARD.md from the recipe's numbers (`model_card.json`)."""
    s, r = card["stages"], card["recipe"]
    world, vae, backbone, val = (s.get(k) or {} for k in ("synth", "vae", "backbone", "validate"))
    final = vae.get("final") or {}
    return TEMPLATE.substitute(
        command=card["command"], run_as=_run_as_paragraph(card),
        vae_channels=r["vae"]["block_out_channels"], latent_channels=r["vae"]["latent_channels"],
        vae_parameters=f"{vae.get('parameters', 0) / 1e6:.2f}", scaling_factor=_fmt(vae.get("scaling_factor"), 4),
        layout=backbone.get("layout", ""), transformer_parameters=f"{backbone.get('parameters', 0) / 1e6:.2f}",
        cue_parameters=f"{(s.get('export') or {}).get('cue_parameters', 0) / 1e6:.2f}",
        size=world.get("size"), frames=world.get("frames"), fps=world.get("fps"),
        clips=world.get("clips"), val_clips=world.get("val_clips"), identities=world.get("identities"),
        seed=world.get("seed"), format=world.get("format"), world_settings=_world_settings_line(world),
        vae_row=f"| VAE | {vae.get('steps')} ({vae.get('target_steps')}) | {_fmt(vae.get('seconds'), 0)} s | | "
                f"l1 {_fmt(final.get('l1'), 4)}, kl {_fmt(final.get('kl'), 3)} |",
        stage1_row=_stage_row("stage 1 (same-ID)", s.get("stage1") or {}),
        stage2_row=_stage_row("stage 2 (cross-ID, S2X)", s.get("stage2") or {}),
        wall_times=", ".join(f"{k} {_fmt((s.get(k) or {}).get('seconds'), 0)} s" for k in STAGES if k != "card"),
        vae_reused=_vae_reused_line(vae), prepare_note=_prepare_note_line(s.get("prepare") or {}),
        vae_psnr=_fmt(vae.get("held_out_psnr"), 2), vae_clips=vae.get("held_out_clips"),
        pairs=val.get("clips"), kinds=", ".join(val.get("kinds") or []), sampling_steps=val.get("steps"),
        scheduler=val.get("scheduler", "dpm"), guidance=val.get("guidance"), samples=_samples_clause(val),
        anchor=_anchor_clause(val), psnr=_fmt(val.get("psnr"), 2), ssim=_fmt(val.get("ssim"), 4),
        baseline_psnr=_fmt(val.get("baseline_psnr"), 2), baseline_ssim=_fmt(val.get("baseline_ssim"), 4),
        note=_note_paragraph(val), megabytes=_fmt(card.get("megabytes"), 2), max_megabytes=r["max_megabytes"],
        cpus=card["machine"]["cpus"], torch=card["machine"]["torch"])


def card_record(recipe: RecipeConfig, stages: dict, work: Path, command: str, run_as: str = "") -> dict:
    """`model_card.json` without its size: the reproduce command (and the one that ran, when it differs), the
    recipe, every stage's numbers with their paths made relative to the work folder, and the machine."""
    return {"command": command, **({"run_as": run_as} if run_as and run_as != command else {}),
            "recipe": asdict(recipe), "stages": relative_paths(stages, work),
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "torch": torch.__version__}}


def relative_paths(value, work: Path):
    """`value` (a stage record) with every absolute path, and every ``checkpoint``, relative to the work folder; an
    absolute path outside it keeps only its name. A card names no folder of the machine that made it."""
    if isinstance(value, dict):
        return {k: _relative(v, work) if k == "checkpoint" and isinstance(v, str) else relative_paths(v, work)
                for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, work) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return _relative(value, work)
    return value


def _relative(path: str, work: Path) -> str:
    if not path:
        return path
    resolved, root = Path(path).resolve(), work.resolve()
    return resolved.relative_to(root).as_posix() if root in resolved.parents else Path(path).name


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _stage_row(name: str, stage: dict) -> str:
    """A training stage's row of the card's table."""
    losses = ", ".join(f"{k} {_fmt(v, 4)}" for k, v in (stage.get("final_losses") or {}).items())
    return (f"| {name} | {stage.get('steps')} ({stage.get('target_steps')}) | {_fmt(stage.get('seconds'), 0)} s | "
            f"{_fmt(stage.get('first_loss'), 4)} | {losses} |")


def _run_as_paragraph(card: dict) -> str:
    """The command that made the folder, when it is not the reproduce command (else nothing)."""
    if not card.get("run_as"):
        return ""
    return (f"This folder was made by `{card['run_as']}` (a work folder of the training machine; `--resume` "
            "continues a run exactly, so it does not change the result).\n\n")


def _world_settings_line(synth: dict) -> str:
    """The world settings a synth marker records beyond WorldConfig's defaults (none: nothing)."""
    given = [f"{name} = {json.dumps(synth[name])}" for name in WORLD_OPTIONS if name in synth]  # as in the TOML
    return f"- World settings other than the defaults (docs/world.md): {', '.join(given)}.\n" if given else ""


def _vae_reused_line(vae: dict) -> str:
    """Where a carried-over VAE stage came from (else nothing)."""
    if not vae.get("reused_from"):
        return ""
    return f"The VAE stage was carried over from {vae['reused_from']}: its marker and weights, unchanged.\n"


def _prepare_note_line(prepare: dict) -> str:
    """The sentence on a prepare stage that found part of its clips already cached (else nothing)."""
    counts = [v for v in prepare.values() if isinstance(v, dict)]  # one entry per cache (stage 2 may have its own)
    cached, done = (sum(int(c.get(k) or 0) for c in counts) for k in ("cached", "done"))
    if not cached:
        return ""
    return (f"prepare's wall time covers the {done} clips it prepared; the other {cached} of the {cached + done} "
            "were already in the cache (same cache key) and were not prepared again.\n")


def _samples_clause(val: dict) -> str:
    return f", the mean of {val['samples']} samples" if (val.get("samples") or 1) > 1 else ""


def _anchor_clause(val: dict) -> str:
    return f"; location anchor: {val['anchor']}" if val.get("anchor") else ""


def _note_paragraph(val: dict) -> str:
    return f"{val['note']}\n\n" if val.get("note") else ""
