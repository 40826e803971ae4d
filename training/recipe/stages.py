"""The recipe's stages, each a function of the recipe and the work folder that returns its numbers (the stage's
marker, and the model card's source); `training.recipe.cli.run_recipe` runs them in order."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from directanimator.atomic import atomic_path, check_output_folder, replace_output_folder
from directanimator.demo import CHECKPOINT as CHECKPOINT_NAME, DEMO_DIR, DEMO_JSON, TRUTH  # what the demo reads
from directanimator.errors import InputError

from ..vae import VAE_DIR
from .card import CARD, CARD_JSON, STAGES, card_record, model_card_text
from .config import RecipeConfig, StageSpec, _world_options, stage_config, transformer_config, world_config

log = logging.getLogger("training.recipe")

ELAPSED = "recipe_elapsed.json"
RECIPE_JSON = "recipe.json"
# the output markers (directanimator.atomic) of the model folder and of the work folder: only these are replaced
OUT_COMMAND = "python -m training recipe --out"
WORK_COMMAND = "python -m training recipe --work"


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
    from ..world import export_world

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


def _vae(recipe: RecipeConfig, work: Path) -> dict:
    from ..vae import clips_from_folder, train_vae

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
    from ..data import cache_key
    from ..prepare import prepare

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
    from ..checkpointing import step_dirs
    from ..trainer import read_metrics

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
    from ..stage1 import train_stage1

    return run_stage(recipe, work, "stage1", train_stage1)


def _pseudo(recipe: RecipeConfig, work: Path) -> dict:
    from ..validate import read_entries

    entries = read_entries(work / "world")
    count = sum(1 for e in entries if "pseudo_driving" in e)
    if not count:
        raise InputError(f"{work / 'world'}: no pseudo driving clips; the world export must keep pseudo=True.")
    return {"source": "world", "clips": count,
            "why": "exact pseudo pairs: a third identity performing the clip's motion elsewhere and at another size"}


def _stage2(recipe: RecipeConfig, work: Path, markers: Markers) -> dict:
    from ..stage2 import train_stage2

    return run_stage(recipe, work, "stage2", train_stage2, checkpoint=markers.done("stage1")["checkpoint"])


def _export(recipe: RecipeConfig, work: Path, markers: Markers) -> dict:
    from diffusers import CogVideoXTransformer3DModel

    from directanimator.models import load_model

    from ..export import export_model

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

    from ..validate import read_entries

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

    from ..validate import held_out_entries, load_pair, read_entries, validate_model

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
    card = card_record(recipe, numbers, work, command, run_as)
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


