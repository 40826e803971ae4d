"""`python -m training recipe --out models/demo --scale demo`: the bundled demo model in one command (DESIGN.md 9).

Stages, in a work folder (``--work``, default ``runs/recipe_<scale>``), each skipped on ``--resume`` once its
marker ``markers/<stage>.json`` exists (an interrupted stage continues from its own checkpoints):

1. ``synth``    procedural-world clips with ground truth, cross-identity pairs and pseudo driving clips
2. ``vae``      a small CogVideoX VAE trained from scratch (`training.vae`), then frozen
3. ``backbone`` a diffusers folder: a fresh small `CogVideoXTransformer3DModel` in the CogVideoX 1.5 layout, the
                trained ``vae/`` and a ``scheduler/`` config
4. ``prepare``  cues (exact, from the world's ground truth) and VAE latents of every clip
5. ``stage1``   same-identity training, whole backbone + CueFusion
6. ``pseudo``   the world's own pseudo driving clips (a third identity performing the clip's motion, exact ground
                truth), already cached by ``prepare``
7. ``stage2``   cross-identity training with the S2X loss to the frozen stage-1 model
8. ``export``   ``transformer/`` (trained weights), ``vae/``, ``scheduler/``, ``directanimator.safetensors``
                (CueFusion, null text, scheduler and cue configs) and the bundled demo inputs
9. ``validate`` held-out cross-identity pairs: PSNR/SSIM of the model and of the static-reference baseline
10. ``card``    ``MODEL_CARD.md`` + ``model_card.json``; the size limit is checked, then the folder is moved to --out

Why CogVideoX 1.5's layout: rotary positions only (no learned table), so any working size and length works,
as the demo's real-video path needs; and temporal patches of 2 halve the tokens, so a CPU step costs half.
Why the world's pseudo clips: they are what a perfect stage-1 renderer would produce (another identity, the same
motion, at another place and size), with exact masks, whereas a from-scratch stage-1 model's renders would be
blurred and leak the source identity; `python -m training pseudo render` remains for real data.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from directanimator.atomic import (atomic_path, check_output_folder, claim_output_folder,
                                  replace_output_folder)
from directanimator.demo import CHECKPOINT as CHECKPOINT_NAME, DEMO_DIR, DEMO_JSON, TRUTH  # what the demo reads
from directanimator.cues.types import ANCHORS
from directanimator.errors import InputError

from .config import TrainConfig, _apply, _build, parse_override, read_config_file, validate
from .vae import VAE_DIR, VaeTrainConfig
from .world.pairs import WorldConfig

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SCALES = {"tiny": "demo_tiny.toml", "demo": "demo_full.toml"}
STAGES = ("synth", "vae", "backbone", "prepare", "stage1", "pseudo", "stage2", "export", "validate", "card")
CARD = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
ELAPSED = "recipe_elapsed.json"
RECIPE_JSON = "recipe.json"
# the output markers (directanimator.atomic) of the model folder and of the work folder: only these are replaced
OUT_COMMAND = "python -m training recipe --out"
WORK_COMMAND = "python -m training recipe --work"
# WorldSpec fields passed to WorldConfig (and recorded in the synth marker) only when they differ from its defaults
WORLD_OPTIONS = ("limb_thickness", "close_up_probability", "turn_probability", "moving_background_probability",
                 "plain_clothes", "reference_in_place")


# --------------------------------------------------------------------------- configuration
@dataclass
class WorldSpec:
    clips: int = 600
    val_clips: int = 8
    size: int = 128  # square frame side in px, the working size of the model
    frames: int = 17
    fps: float = 12.0
    identities: int = 200
    seed: int = 0
    format: str = "mp4"
    backgrounds: list = field(default_factory=list)  # backdrop kinds to draw from; empty: all (world/background.py)
    limb_thickness: float = WorldConfig.limb_thickness  # arms and legs this many times as thick
    close_up_probability: float = WorldConfig.close_up_probability
    turn_probability: float = WorldConfig.turn_probability
    moving_background_probability: float = WorldConfig.moving_background_probability
    plain_clothes: bool = WorldConfig.plain_clothes  # one-colour long sleeves and trousers, no accessories
    reference_in_place: bool = WorldConfig.reference_in_place  # same-ID references where the clip starts


@dataclass
class StageSpec:
    steps: int = 1000
    budget_minutes: float = 0.0  # stop at the first checkpoint after this much training time (0: no limit)
    set: list = field(default_factory=list)  # TrainConfig overrides of this stage only, "table.key=value"


@dataclass
class ValidateSpec:
    clips: int = 4
    steps: int = 25
    guidance: float = 3.0
    scheduler: str = "dpm"  # "dpm" or "ddim" (directanimator.sampling.SCHEDULERS)
    seed: int = 0
    samples: int = 1  # the mean of this many results (seeds seed, seed + 1, ...; sampling.sample_latents)
    anchor: str = ""  # the location cue's anchor at inference (CueConfig.anchor); empty: the model's own

    def sampling(self) -> dict:
        """The sampling settings: keyword arguments of `validate_model`, recorded in demo.json and the card."""
        return {"steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler, "seed": self.seed,
                "samples": self.samples, "anchor": self.anchor or None}


@dataclass
class RecipeConfig:
    world: WorldSpec = field(default_factory=WorldSpec)
    vae: VaeTrainConfig = field(default_factory=VaeTrainConfig)
    transformer: dict = field(default_factory=dict)  # CogVideoXTransformer3DModel kwargs (1.5 I2V layout)
    train: dict = field(default_factory=dict)  # a TrainConfig table shared by both stages
    stage1: StageSpec = field(default_factory=StageSpec)
    stage2: StageSpec = field(default_factory=StageSpec)
    validate: ValidateSpec = field(default_factory=ValidateSpec)
    max_megabytes: float = 30.0  # the whole output folder, weights and demo inputs
    train_clips: int = 0  # world clips prepared for the two stages (the first ones); 0: every training clip


def load_recipe(scale: str = "demo", overrides: list[str] | tuple[str, ...] = (), *,
                path: str | Path | None = None) -> RecipeConfig:
    """The recipe of `scale` (``training/configs/demo_<tiny|full>.toml``) or of `path`, with ``KEY=VALUE``
    overrides (``vae.steps=5``, ``stage1.steps=100``, ``train.optim.lr=1e-3``), checked before any work."""
    if path is None:
        if scale not in SCALES:
            raise InputError(f"--scale {scale!r}: use one of {', '.join(SCALES)}.")
        path = CONFIG_DIR / SCALES[scale]
    data = read_config_file(path)
    for text in overrides:
        _apply(data, *parse_override(text))
    return recipe_from_data(data)


def recipe_from_data(data: dict) -> RecipeConfig:
    """A checked RecipeConfig from the tables of a recipe TOML (already read, overrides applied)."""
    data = dict(data)
    raw_transformer, raw_train = data.pop("transformer", {}), data.pop("train", {})
    recipe = _build(RecipeConfig, data, "")
    recipe.transformer, recipe.train = dict(raw_transformer), dict(raw_train)
    recipe.vae.validate()
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: RecipeConfig) -> None:
    """Raise InputError naming the first value that cannot work, before anything is written."""
    w = recipe.world
    if w.clips < 2 or not 1 <= w.val_clips < w.clips:
        raise InputError(f"recipe world.clips={w.clips}, world.val_clips={w.val_clips}: need at least 2 clips and "
                         "1 <= val_clips < clips (the held-out pairs of validation and the demo inputs).")
    from .world.background import BACKGROUND_KINDS

    if set(w.backgrounds) - set(BACKGROUND_KINDS):
        raise InputError(f"recipe world.backgrounds={w.backgrounds}: choose from {', '.join(BACKGROUND_KINDS)}.")
    try:
        world_config(w).validate()
    except InputError as error:
        raise InputError(f"recipe [world]: {error}") from None
    if not 0 <= recipe.train_clips <= w.clips - w.val_clips:
        raise InputError(f"recipe train_clips={recipe.train_clips}: 0 (all) up to world.clips - world.val_clips = "
                         f"{w.clips - w.val_clips}.")
    if w.format not in ("mp4", "png"):
        raise InputError(f"recipe world.format={w.format!r}: 'mp4' or 'png'.")
    if w.size % 16 or w.size < 64:
        raise InputError(f"recipe world.size={w.size}: a multiple of 16, at least 64 px.")
    if w.frames < recipe.vae.frames:
        raise InputError(f"recipe world.frames={w.frames} is shorter than the VAE's training window vae.frames="
                         f"{recipe.vae.frames}; lower vae.frames or render longer clips.")
    needed = {"num_attention_heads", "attention_head_dim", "num_layers"}
    if not needed <= set(recipe.transformer):
        raise InputError(f"recipe [transformer]: needs {sorted(needed)} (CogVideoXTransformer3DModel kwargs); has "
                         f"{sorted(recipe.transformer)}.")
    for name in ("stage1", "stage2"):
        stage = getattr(recipe, name)
        if stage.steps < 1 or stage.budget_minutes < 0:
            raise InputError(f"recipe {name}.steps must be >= 1 and {name}.budget_minutes >= 0.")
        config = stage_config(recipe, Path("work"), name, check_paths=False)
        if stage.budget_minutes and config.optim.schedule != "constant":
            raise InputError(f"recipe {name}.budget_minutes: a time budget stops training early, which a "
                             f"{config.optim.schedule!r} LR schedule over {stage.steps} steps does not expect; use "
                             "train.optim.schedule='constant' (with warmup) or budget_minutes=0.")
    if recipe.validate.clips < 1 or recipe.validate.steps < 1 or recipe.validate.samples < 1:
        raise InputError("recipe validate.clips, validate.steps and validate.samples must be >= 1.")
    from directanimator.sampling import SCHEDULERS

    if recipe.validate.anchor and recipe.validate.anchor not in ANCHORS:
        raise InputError(f"recipe validate.anchor={recipe.validate.anchor!r}: use 'first', 'clip', or leave it out "
                         "for the model's own setting (CueConfig.anchor).")
    if recipe.validate.scheduler not in SCHEDULERS:
        raise InputError(f"recipe validate.scheduler={recipe.validate.scheduler!r}: use one of "
                         f"{', '.join(sorted(SCHEDULERS))}.")


def transformer_config(recipe: RecipeConfig) -> dict:
    """`CogVideoXTransformer3DModel` kwargs: the CogVideoX 1.5 I2V layout at the world's size."""
    latent = recipe.world.size // 8
    base = dict(in_channels=2 * recipe.vae.latent_channels, out_channels=recipe.vae.latent_channels,
                patch_size=2, patch_size_t=2, patch_bias=False, use_rotary_positional_embeddings=True,
                use_learned_positional_embeddings=False, sample_height=latent, sample_width=latent,
                sample_frames=recipe.world.frames, text_embed_dim=32, max_text_seq_length=8)
    return {**base, **recipe.transformer}


def stage_config(recipe: RecipeConfig, work: Path, stage: str, *, check_paths: bool = True,
                 checkpoint: str = "") -> TrainConfig:
    """The TrainConfig of `stage` ("stage1" or "stage2"): the shared [train] table, the stage's steps and
    overrides, and the paths of the work folder."""
    spec: StageSpec = getattr(recipe, stage)
    data = json.loads(json.dumps(recipe.train))
    paths = {"model.backbone": str(work / "backbone"), "data.metadata": str(work / "world"),
             "data.cache": str(work / "cache"), "data.frames": recipe.world.frames,
             "data.buckets": [[recipe.world.size, recipe.world.size]], "run.out_dir": str(work / "runs"),
             "run.name": stage, "run.steps": spec.steps, "model.checkpoint": checkpoint,
             "cues.height": recipe.world.size, "cues.width": recipe.world.size}
    for key, value in paths.items():
        _apply(data, key.split("."), value)
    for text in spec.set:
        _apply(data, *parse_override(text))
    return validate(_build(TrainConfig, data, ""), check_paths=check_paths)


# --------------------------------------------------------------------------- stages
class Markers:
    """``work/markers/<stage>.json``: a stage is complete when its marker exists; it holds the stage's numbers."""

    def __init__(self, work: Path):
        self.folder = work / "markers"

    def done(self, stage: str) -> dict | None:
        path = self.folder / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def write(self, stage: str, record: dict) -> None:
        with atomic_path(self.folder / f"{stage}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")


def _synth(recipe: RecipeConfig, work: Path) -> dict:
    from .world import export_world

    w = recipe.world
    config = world_config(w)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # rendering is numpy; one torch thread writes faster (docs/world.md)
    try:  # a marker-less folder is an interrupted export: render it again
        export_world(work / "world", config, clips=w.clips, seed=w.seed, fmt=w.format, val_clips=w.val_clips,
                     overwrite=True)
    finally:
        torch.set_num_threads(threads)
    return {"clips": w.clips, "val_clips": w.val_clips, "size": w.size, "frames": w.frames, "fps": w.fps,
            "identities": w.identities, "seed": w.seed, "format": w.format, "backgrounds": list(config.backgrounds),
            **_world_options(w)}


def _world_options(w: WorldSpec) -> dict:
    """The world settings that differ from WorldConfig's defaults: a default world's synth marker reads as before."""
    return {name: getattr(w, name) for name in WORLD_OPTIONS if getattr(w, name) != getattr(WorldConfig, name)}


def _world_options_lines(synth: dict) -> list[str]:
    """A card line for the world settings a synth marker records beyond WorldConfig's defaults (none: no line)."""
    given = [f"{name} = {json.dumps(synth[name])}" for name in WORLD_OPTIONS if name in synth]  # as in the TOML
    return [f"- World settings other than the defaults (docs/world.md): {', '.join(given)}."] if given else []


def world_config(w: WorldSpec):
    """The WorldConfig that `w` renders."""
    return WorldConfig(height=w.size, width=w.size, num_frames=w.frames, fps=w.fps, identities=w.identities,
                       **({"backgrounds": tuple(w.backgrounds)} if w.backgrounds else {}), **_world_options(w))


def _vae(recipe: RecipeConfig, work: Path) -> dict:
    from .vae import clips_from_folder, train_vae

    v = recipe.vae
    pool = clips_from_folder(work / "world", max_clips=v.max_clips, val_clips=v.val_clips)
    report = train_vae(pool, work / "vae", v, resume=True)  # the work folder is ours: always continue
    return {k: report[k] for k in ("steps", "target_steps", "stopped_by_budget", "seconds", "parameters",
                                   "megabytes", "scaling_factor", "held_out_psnr", "held_out_clips", "final")}


def _backbone(recipe: RecipeConfig, work: Path) -> dict:
    from diffusers import CogVideoXTransformer3DModel

    from directanimator.models.loader import DEFAULT_SCHEDULER_CONFIG

    folder, tmp = work / "backbone", work / ".backbone.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    torch.manual_seed(recipe.world.seed)
    model = CogVideoXTransformer3DModel(**transformer_config(recipe))
    model.save_pretrained(tmp / "transformer", safe_serialization=True)
    shutil.copytree(work / "vae" / VAE_DIR, tmp / "vae")
    (tmp / "scheduler").mkdir(parents=True)
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(DEFAULT_SCHEDULER_CONFIG, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return {"parameters": sum(p.numel() for p in model.parameters()), "config": transformer_config(recipe),
            "layout": "CogVideoX 1.5 (rotary positions, temporal patch 2)"}


def _prepare(recipe: RecipeConfig, work: Path) -> dict:
    from .data import cache_key
    from .prepare import prepare

    # the VAE saw every clip, the transformer sees the first `train_clips`; a stage whose `set` overrides change the
    # cached tensors (e.g. cues.align_pose in stage 2 only) gets a cache of its own
    configs = {cache_key(c): c for c in (stage_config(recipe, work, s) for s in ("stage1", "stage2"))}
    counts = {}
    for config in configs.values():
        count = prepare(config, limit=recipe.train_clips or None)
        if count["skipped"]:
            raise InputError(f"prepare skipped {count['skipped']} clips (see {count['folder']}/skipped.jsonl); fix "
                             "the data and run the recipe again with --resume.")
        name = "train" if not counts else "train (stage 2)"
        counts[name] = {k: v for k, v in count.items() if k != "folder"}
    return counts


def run_stage(recipe: RecipeConfig, work: Path, stage: str, train: Callable, *, checkpoint: str = "") -> dict:
    """Train `stage` to its steps (continuing its own checkpoints); with a time budget, in chunks of
    ``run.save_every`` steps, stopping after the chunk that exhausts it. Returns its numbers."""
    from .checkpointing import step_dirs
    from .trainer import read_metrics

    spec: StageSpec = getattr(recipe, stage)
    config = stage_config(recipe, work, stage, checkpoint=checkpoint)
    run_dir = config.run_dir
    clock = run_dir / ELAPSED  # training seconds of earlier invocations: the budget and the card span resumes
    before = json.loads(clock.read_text())["seconds"] if clock.is_file() else 0.0
    started = time.perf_counter()

    def trained() -> float:
        return round(before + time.perf_counter() - started, 1)

    stopped = False
    while True:
        done = step_dirs(run_dir)[-1][0] if step_dirs(run_dir) else 0
        if done >= spec.steps:
            break
        if spec.budget_minutes and trained() > spec.budget_minutes * 60:
            log.warning("%s: time budget of %.1f min used up at step %d of %d", stage, spec.budget_minutes, done,
                        spec.steps)
            stopped = True
            break
        # the resumed trajectory equals the uninterrupted one (training/checkpointing.py), so chunks change nothing
        config.run.steps = min(spec.steps, done + config.run.save_every) if spec.budget_minutes else spec.steps
        train(config, resume="latest")
        with atomic_path(clock) as tmp:
            tmp.write_text(json.dumps({"seconds": trained()}))
    final = step_dirs(run_dir)[-1]
    records = read_metrics(run_dir)
    tail = records[-max(1, min(len(records), 10)):]
    losses = {k: round(sum(r[k] for r in tail) / len(tail), 5) for k in ("loss", "denoise", "s2x") if k in tail[0]}
    return {"steps": final[0], "target_steps": spec.steps, "stopped_by_budget": stopped,
            "seconds": trained(),
            "checkpoint": str(final[1] / "model.safetensors"), "final_losses": losses,
            "first_loss": round(records[0]["loss"], 5) if records else None,
            "settings": {"lr": config.optim.lr, "batch_size": config.run.batch_size, "train": config.model.train,
                         "frames": config.data.frames, "size": config.data.buckets[0],
                         **({"lambda": config.stage2.lambda_value, "depth": config.stage2.depth}
                            if stage == "stage2" else {})}}


def _stage1(recipe: RecipeConfig, work: Path) -> dict:
    from .stage1 import train_stage1

    return run_stage(recipe, work, "stage1", train_stage1)


def _pseudo(recipe: RecipeConfig, work: Path) -> dict:
    from .validate import read_entries

    entries = read_entries(work / "world")
    count = sum(1 for e in entries if "pseudo_driving" in e)
    if not count:
        raise InputError(f"{work / 'world'}: no pseudo driving clips; the world export must keep pseudo=True.")
    return {"source": "world", "clips": count,
            "why": "exact pseudo pairs: a third identity performing the clip's motion elsewhere and at another size"}


def _stage2(recipe: RecipeConfig, work: Path, markers: Markers) -> dict:
    from .stage2 import train_stage2

    return run_stage(recipe, work, "stage2", train_stage2, checkpoint=markers.done("stage1")["checkpoint"])


def _export(recipe: RecipeConfig, work: Path, markers: Markers) -> dict:
    from diffusers import CogVideoXTransformer3DModel

    from directanimator.models import load_model

    from .export import export_model

    staging = work / "export"
    if staging.exists():
        shutil.rmtree(staging)
    model = load_model(work / "backbone", markers.done("stage2")["checkpoint"], dtype="fp32")
    transformer = model.transformer
    plain = CogVideoXTransformer3DModel(**transformer_config(recipe))
    plain.load_state_dict(transformer.backbone_state_dict())  # the trained backbone, without CueFusion wrappers
    # stored in bf16 (half the bytes; loading upcasts to the dtype asked for): on the held-out pairs the demo's
    # scores move by under 0.001. torch's own `to`: diffusers' warns about fp32-only modules, which this class has none
    torch.nn.Module.to(plain, torch.bfloat16).save_pretrained(staging / "transformer", safe_serialization=True)
    shutil.copytree(work / "backbone" / "vae", staging / "vae")
    shutil.copytree(work / "backbone" / "scheduler", staging / "scheduler")
    extra = {"recipe": "python -m training recipe"}
    if "timesteps" in model.info["extra"]:  # the trained timesteps: sampling warns below them
        extra["timesteps"] = model.info["extra"]["timesteps"]
    export_model(transformer, staging / CHECKPOINT_NAME, weights="none", null_text=model.null_text,
                 scheduler_config=model.scheduler_config, cue_config=model.cue_config,
                 backbone_name="directanimator-demo", extra=extra)
    demo = write_demo_inputs(work / "world", staging / DEMO_DIR, recipe)
    return {"cue_parameters": sum(p.numel() for p in transformer.cue_parameters()), "demo": demo}


def _touches_border(masks: torch.Tensor) -> bool:
    """Whether a person mask ``[F, H, W]`` reaches the frame edge in any frame (the figure is cut)."""
    m = masks > 0.5
    return bool(m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())


def demo_entry(world: Path, entries: list[dict]) -> tuple[dict, dict]:
    """The held-out cross-identity pair the demo shows, with its ground truth: the first whose driver and
    reference are whole figures (the main use case: neither mask touches the frame edge), else the first."""
    from safetensors.torch import load_file

    pairs = [e for e in entries if e.get("split") == "val" and "cross_target" in e]
    if not pairs:
        raise InputError(f"{world}: no held-out cross-identity pair for the demo inputs.")
    first = None
    for entry in pairs:
        truth = load_file(str(world / entry["ground_truth"]))
        first = first or (entry, truth)
        if not (_touches_border(truth["person_masks"]) or _touches_border(truth["cross_reference_person_masks"])):
            return entry, truth
    return first


def write_demo_inputs(world: Path, dest: Path, recipe: RecipeConfig) -> dict:
    """A held-out cross-identity pair (`demo_entry`) as the demo's inputs: ``reference.png`` (identity B),
    ``driving.mp4`` (identity A), ``target.mp4`` (B performing A's motion: the ground truth),
    ``truth.safetensors`` (masks and face boxes for exact cues) and ``demo.json``."""
    from safetensors.torch import save_file

    from directanimator.video import read_image, read_video, write_image, write_video

    from .validate import read_entries

    entry, truth = demo_entry(world, read_entries(world))
    fps = float(entry["fps"])
    dest.mkdir(parents=True, exist_ok=True)
    write_image(dest / "reference.png", read_image(world / entry["cross_reference"]))
    write_video(dest / "driving.mp4", read_video(world / entry["clip"], fps=fps).frames, fps)
    write_video(dest / "target.mp4", read_video(world / entry["cross_target"], fps=fps).frames, fps)
    bundled = {"driving_mask": truth["person_masks"], "driving_face_boxes": truth["face_boxes"],
               "driving_face_valid": truth["face_valid"], "reference_mask": truth["cross_reference_person_masks"]}
    if bool(truth["cross_reference_face_valid"][0]):
        bundled["reference_face_box"] = truth["cross_reference_face_boxes"][0]
    save_file({k: v.contiguous() for k, v in bundled.items()}, str(dest / TRUTH), metadata={"source": "world"})
    v = recipe.validate
    info = {"fps": fps, "frames": int(entry.get("num_frames", recipe.world.frames)), "size": recipe.world.size,
            **v.sampling(), "source_clip": entry["clip"], "driving_identity": entry.get("identity"),
            "reference_identity": entry.get("cross_identity")}
    (dest / DEMO_JSON).write_text(json.dumps(info, indent=1) + "\n")
    return info


def _validate(recipe: RecipeConfig, work: Path) -> dict:
    from directanimator.models import load_model
    from directanimator.video import resize_frames

    from directanimator.metrics import static_baseline

    from .validate import held_out_entries, load_pair, read_entries, validate_model

    v = recipe.validate
    staging = work / "export"
    out = work / "validation"
    if out.exists():
        shutil.rmtree(out)
    model = load_model(staging, staging / CHECKPOINT_NAME, dtype="fp32")
    records = validate_model(model, work / "world", out, max_clips=v.clips, **v.sampling())
    entries = held_out_entries(read_entries(work / "world"), max_clips=v.clips)
    for record, entry in zip(records, entries):
        pair = load_pair(work / "world", entry)
        size = (recipe.world.size, recipe.world.size)
        base = static_baseline(pair.reference, resize_frames(pair.target.float(), size, "pad"))
        record["baseline_psnr"], record["baseline_ssim"] = round(base["psnr"], 4), round(base["ssim"], 4)
    scored = [r for r in records if r.get("psnr") is not None]

    def mean(key: str) -> float | None:
        return round(sum(r[key] for r in scored) / len(scored), 4) if scored else None

    return {"clips": len(records), "kinds": sorted({r["kind"] for r in records}), **v.sampling(),
            "psnr": mean("psnr"), "ssim": mean("ssim"), "baseline_psnr": mean("baseline_psnr"),
            "baseline_ssim": mean("baseline_ssim"), "records": records}


def folder_megabytes(folder: Path) -> dict[str, float]:
    """Size of every file under `folder` in MB (2**20 bytes), by relative path."""
    return {str(p.relative_to(folder)): round(p.stat().st_size / 2**20, 4)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _card(recipe: RecipeConfig, work: Path, markers: Markers, out: Path, command: str, run_as: str = "") -> dict:
    staging = work / "export"
    numbers = {stage: markers.done(stage) for stage in STAGES if stage != "card"}
    card = {"command": command, **({"run_as": run_as} if run_as and run_as != command else {}),
            "recipe": asdict(recipe), "stages": numbers,
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "torch": torch.__version__}}
    text = model_card_text(card)
    (staging / CARD).write_text(text)
    (staging / CARD_JSON).write_text(json.dumps(card, indent=1) + "\n")
    sizes = folder_megabytes(staging)
    total = sum(sizes.values())
    if total > recipe.max_megabytes:
        big = sorted(sizes.items(), key=lambda kv: -kv[1])[:4]
        raise InputError(f"model folder {staging}: {total:.1f} MB, over the limit of {recipe.max_megabytes} MB "
                         f"(largest: {big}). Make the VAE or the transformer smaller ([vae], [transformer]) and run "
                         "the recipe again with --resume after deleting the markers from 'vae' or 'backbone' on.")
    card["megabytes"] = round(total, 3)
    (staging / CARD_JSON).write_text(json.dumps(card, indent=1) + "\n")
    (staging / CARD).write_text(model_card_text(card))
    with replace_output_folder(out, OUT_COMMAND, legacy=_is_model_folder) as tmp:
        shutil.copytree(staging, tmp, dirs_exist_ok=True)
    return {"megabytes": round(total, 3), "out": str(out)}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _prepare_time_note(prepare: dict) -> list[str]:
    """The card's sentence on a prepare stage that found part of its clips already cached (none otherwise)."""
    counts = [v for v in prepare.values() if isinstance(v, dict)]  # one entry per cache (stage 2 may have its own)
    cached, done = (sum(int(c.get(k) or 0) for c in counts) for k in ("cached", "done"))
    if not cached:
        return []
    return [f"prepare's wall time covers the {done} clips it prepared; the other {cached} of the {cached + done} "
            "were already in the cache (same cache key) and were not prepared again."]


def model_card_text(card: dict) -> str:
    """MODEL_CARD.md from the recipe's numbers."""
    s, r = card["stages"], card["recipe"]
    world, vae, backbone, s1, s2, val = (s.get(k) or {} for k in ("synth", "vae", "backbone", "stage1", "stage2",
                                                                   "validate"))
    export = s.get("export") or {}
    lines = [
        "# DirectAnimator demo model",
        "",
        "A small DirectAnimator (CogVideoX classes, CueFusion, Same2X) trained from scratch on the CPU on the "
        "project's procedural world (docs/world.md). It shows the whole method end to end at toy scale; it is "
        "not a general animator and has never seen real people.",
        "",
        "Reproduce (one command):",
        "",
        "```bash",
        card["command"],
        "```",
        "",
        *([f"This folder was made by `{card['run_as']}` (a work folder of the training machine; `--resume` "
           "continues a run exactly, so it does not change the result).", ""] if card.get("run_as") else []),
        "## Configuration",
        "",
        f"- VAE: `AutoencoderKLCogVideoX` {r['vae']['block_out_channels']}, {r['vae']['latent_channels']}-channel "
        f"latents, 8x spatial / 4x temporal compression, {vae.get('parameters', 0) / 1e6:.2f} M parameters, "
        f"scaling factor {_fmt(vae.get('scaling_factor'), 4)}; trained first, then frozen.",
        f"- Transformer: `CogVideoXTransformer3DModel`, {backbone.get('layout', '')}, "
        f"{backbone.get('parameters', 0) / 1e6:.2f} M parameters (stored in bf16); CueFusion "
        f"{export.get('cue_parameters', 0) / 1e6:.2f} M parameters.",
        f"- Working size {world.get('size')}x{world.get('size')} px, {world.get('frames')} frames at "
        f"{world.get('fps')} fps.",
        "",
        "## Data",
        "",
        f"- {world.get('clips')} procedural-world clips ({world.get('val_clips')} held out), identity pool of "
        f"{world.get('identities')}, seed {world.get('seed')}, {world.get('format')}; exact cues from the world's "
        "ground truth; pseudo pairs: the world's own pseudo driving clips.",
        *_world_options_lines(world),
        "",
        "## Training",
        "",
        "| stage | steps (target) | wall time | first loss | final losses |",
        "|---|---|---|---|---|",
        f"| VAE | {vae.get('steps')} ({vae.get('target_steps')}) | {_fmt(vae.get('seconds'), 0)} s | | "
        f"l1 {_fmt((vae.get('final') or {}).get('l1'), 4)}, kl {_fmt((vae.get('final') or {}).get('kl'), 3)} |",
    ]
    for name, stage in (("stage 1 (same-ID)", s1), ("stage 2 (cross-ID, S2X)", s2)):
        losses = ", ".join(f"{k} {_fmt(v, 4)}" for k, v in (stage.get("final_losses") or {}).items())
        lines.append(f"| {name} | {stage.get('steps')} ({stage.get('target_steps')}) | "
                     f"{_fmt(stage.get('seconds'), 0)} s | {_fmt(stage.get('first_loss'), 4)} | {losses} |")
    lines += [
        "",
        "Wall time per stage: " + ", ".join(f"{k} {_fmt((s.get(k) or {}).get('seconds'), 0)} s" for k in STAGES
                                            if k != "card") + ".",
        *([f"The VAE stage was carried over from {vae['reused_from']}: its marker and weights, unchanged."]
          if vae.get("reused_from") else []),
        *_prepare_time_note(s.get("prepare") or {}),
        "",
        "## Metrics",
        "",
        f"- VAE held-out reconstruction PSNR: {_fmt(vae.get('held_out_psnr'), 2)} dB "
        f"({vae.get('held_out_clips')} clips).",
        f"- Held-out pairs ({val.get('clips')}, {', '.join(val.get('kinds') or [])}; {val.get('steps')} "
        f"{val.get('scheduler', 'dpm')} sampling step(s), guidance {val.get('guidance')}"
        f"{', the mean of %d samples' % val['samples'] if (val.get('samples') or 1) > 1 else ''}"
        f"{'; location anchor: %s' % val['anchor'] if val.get('anchor') else ''}):",
        "",
        "| | PSNR (dB) | SSIM |",
        "|---|---|---|",
        f"| this model | {_fmt(val.get('psnr'), 2)} | {_fmt(val.get('ssim'), 4)} |",
        f"| static reference (the reference repeated) | {_fmt(val.get('baseline_psnr'), 2)} | "
        f"{_fmt(val.get('baseline_ssim'), 4)} |",
        "",
        *([val["note"], ""] if val.get("note") else []),
        f"Size: {_fmt(card.get('megabytes'), 2)} MB in total (limit {r['max_megabytes']} MB). "
        f"Machine: {card['machine']['cpus']} CPUs, torch {card['machine']['torch']}.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver
def run_recipe(out: str | Path, *, scale: str = "demo", overrides: list[str] | tuple[str, ...] = (),
               work: str | Path | None = None, resume: bool = False, config_path: str | Path | None = None) -> dict:
    """Run every stage (skipping completed ones with `resume`) and write the model folder `out`; returns the
    model card's numbers. The card's reproduce line is the recipe command line of these arguments without `work`
    and `resume`; the line with them is recorded beside it when they are given."""
    recipe = load_recipe(scale, overrides, path=config_path)
    reproduce = recipe_command(out, scale, overrides, config_path=config_path)
    run_as = recipe_command(out, scale, overrides, config_path=config_path, work=work, resume=resume)
    work = Path(work) if work is not None else Path("runs") / f"recipe_{scale}"
    out = Path(out)
    check_folders(out, work)
    markers = Markers(work)
    if markers.folder.is_dir() and any(markers.folder.iterdir()) and not resume:
        raise InputError(f"work folder {work} holds a previous recipe run; pass --resume to continue it or choose "
                         "another --work folder.")
    claim_output_folder(work, WORK_COMMAND, option="--work", legacy=_is_work_folder)
    (work / RECIPE_JSON).write_text(json.dumps(asdict(recipe), indent=1) + "\n")
    steps: dict[str, Callable[[], dict]] = {
        "synth": lambda: _synth(recipe, work), "vae": lambda: _vae(recipe, work),
        "backbone": lambda: _backbone(recipe, work), "prepare": lambda: _prepare(recipe, work),
        "stage1": lambda: _stage1(recipe, work), "pseudo": lambda: _pseudo(recipe, work),
        "stage2": lambda: _stage2(recipe, work, markers), "export": lambda: _export(recipe, work, markers),
        "validate": lambda: _validate(recipe, work),
        "card": lambda: _card(recipe, work, markers, out, reproduce, run_as),
    }
    for stage in STAGES:
        if markers.done(stage) is not None and stage != "card":
            log.info("recipe: %s already done (marker in %s)", stage, markers.folder)
            continue
        log.info("recipe: %s", stage)
        started = time.perf_counter()
        record = steps[stage]()
        record.setdefault("seconds", round(time.perf_counter() - started, 1))  # trained stages count resumes
        markers.write(stage, record)
    card = json.loads((out / CARD_JSON).read_text())
    val = card["stages"]["validate"]
    log.info("recipe done: %s (%.1f MB); held-out PSNR %s dB (static reference %s), SSIM %s (%s)", out,
             card["megabytes"], val["psnr"], val["baseline_psnr"], val["ssim"], val["baseline_ssim"])
    return card


def _is_model_folder(folder: Path) -> bool:
    """A model folder the recipe wrote before folders carried output markers: its card names the recipe."""
    try:
        return json.loads((folder / CARD_JSON).read_text())["command"].startswith("python -m training recipe")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _is_work_folder(folder: Path) -> bool:
    """A work folder the recipe wrote before folders carried output markers: its recipe.json is a recipe's."""
    try:
        return {"world", "vae", "stage1", "stage2"} <= set(json.loads((folder / RECIPE_JSON).read_text()))
    except (OSError, ValueError, TypeError):
        return False


def check_folders(out: Path, work: Path) -> None:
    """Raise InputError, before any work, unless the model folder `out` and the work folder `work` are the recipe's
    to write: each absent, empty or the recipe's own earlier output; and neither inside the other's place."""
    a, b = out.resolve(), work.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise InputError(f"--out {out} and --work {work}: one lies inside the other, so replacing the model folder "
                         "or cleaning the work folder would delete the other; give two separate folders.")
    check_output_folder(out, OUT_COMMAND, legacy=_is_model_folder)
    check_output_folder(work, WORK_COMMAND, option="--work", legacy=_is_work_folder)


def recipe_command(out: str | Path, scale: str, overrides, *, config_path: str | Path | None = None,
                   work: str | Path | None = None, resume: bool = False) -> str:
    """The `python -m training recipe` command line of these arguments (``--work`` and ``--resume`` only when
    given: they say where and how a run was done, not what it makes)."""
    parts = ["python", "-m", "training", "recipe", "--out", str(out), "--scale", scale]
    if config_path is not None:
        parts += ["--config", str(config_path)]
    for text in overrides:
        parts += ["--set", text]
    if work is not None:
        parts += ["--work", str(work)]
    if resume:
        parts.append("--resume")
    return shlex.join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="model folder to write (e.g. models/demo)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo",
                        help="tiny: a one-minute smoke run; demo: the real configuration (DESIGN.md 9)")
    parser.add_argument("--config", default=None, help="a recipe TOML instead of the --scale one")
    parser.add_argument("--work", default=None, help="work folder (default runs/recipe_<scale>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set stage1.steps=200 --set train.optim.lr=1e-3")
    parser.add_argument("--resume", action="store_true", help="continue a previous run in the work folder")


def run(args: argparse.Namespace) -> int:
    run_recipe(args.out, scale=args.scale, overrides=args.overrides, work=args.work, resume=args.resume,
               config_path=args.config)
    return 0
