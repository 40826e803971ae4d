"""The paper's claims measured on the procedural world's ground truth, every number side by side in one run.

    python -m benchmarks.claims                      # full size (about an hour on 2 CPU cores); writes docs/evidence.md
    python -m benchmarks.claims --scale tiny --work /tmp/claims --out /tmp/evidence --vae DIR   # smoke test

One recipe (training/recipe/) at 64x64 px and 9 frames (benchmarks/claims_full.toml) with the bundled demo
model's VAE, then:

1. Same2X convergence: from one stage-1 model, stage 2 with the S2X loss and without it (lambda 0), for several
   seeds (each seed: its own data order, noise and dropout, shared by the pair; one set of cached pseudo cues). The cross-identity
   loss is the denoising loss on held-out cross-identity pairs at fixed timesteps and noise, at every checkpoint;
   "steps to the level" is when a curve first reaches the final loss of the run without S2X of the same seed.
   Cross-identity PSNR/SSIM of both at the last (equal) step.
2. Robustness: the same backbone trained for stage 1 on the cue triplet and on skeleton maps (ground-truth joints
   through a simulated estimator: swaps, dropped limbs, jitter, front-back errors). At test time both see a
   degraded driving clip through real estimators at `detect_size` px: mediapipe selfie segmentation and face
   detection for the cues, mediapipe Pose for the skeleton; scored against the clean clip (same identity).
3. Cross-identity quality: stage 1 only against stage 1 + 2 (with and without S2X), and the static reference.
4. FFT cutoff: the stage 1 + 2 model's results as the pose cue's cutoff varies at inference: identity leakage
   (colour-histogram similarity of the result to the driving identity, inside the target's mask) and motion
   accuracy (IoU of the result's foreground against the known background with the ground-truth mask).

Work goes to --work (resumable: finished trainings and measurements are kept); --fresh starts over.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from directanimator.errors import InputError
from directanimator.models import load_model
from directanimator.video import resize_frames
from training.checkpointing import step_dirs
from training.config import read_config_file, validate
from training.recipe import Markers, RecipeConfig, recipe_from_data, stage_config
from training.vae import VAE_DIR

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("claims")
CONFIGS = {"full": ROOT / "benchmarks" / "claims_full.toml", "tiny": ROOT / "benchmarks" / "claims_tiny.toml"}
DEFAULT_VAE = ROOT / "models" / "demo" / "vae"


@dataclass
class ClaimsSpec:
    seeds: int = 3
    s2x_lambda: float = 0.5  # (stage2.lambda_value of the S2X runs comes from [stage2.stage2]; this is a check)
    eval_pairs: int = 8
    eval_timesteps: list = field(default_factory=lambda: [100, 300, 500, 700, 900])
    sample_steps: int = 20
    guidance: float = 3.0
    detect_size: int = 256
    robust_clips: int = 6
    degradations: list = field(default_factory=lambda: ["occluders", "motion_blur", "low_light", "low_resolution"])
    strengths: list = field(default_factory=lambda: [0.0, 0.33, 0.67, 1.0])
    cutoffs: list = field(default_factory=lambda: [0.03, 0.06, 0.12, 0.25, 0.5, 1.0])


def load_claims(path: Path, overrides: list[str]) -> tuple[RecipeConfig, ClaimsSpec]:
    from training.config import apply_overrides, build_config

    data = apply_overrides(read_config_file(path), overrides)
    spec = build_config(ClaimsSpec, data.pop("claims", {}), "claims")
    if spec.seeds < 1 or spec.eval_pairs < 1 or spec.robust_clips < 1 or not spec.eval_timesteps:
        raise InputError("claims.seeds, eval_pairs, robust_clips must be >= 1 and eval_timesteps non-empty.")
    if spec.detect_size % 16 or spec.detect_size < 64:
        raise InputError(f"claims.detect_size={spec.detect_size}: a multiple of 16, at least 64 px.")
    return recipe_from_data(data), spec


# --------------------------------------------------------------------------- results kept in the work folder
class Results:
    def __init__(self, work: Path):
        self.folder = work / "results"
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, compute):
        path = self.folder / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        started = time.perf_counter()
        value = compute()
        value["seconds"] = round(time.perf_counter() - started, 1)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(value, indent=1) + "\n")
        tmp.replace(path)
        return value


# --------------------------------------------------------------------------- training
def setup(recipe: RecipeConfig, work: Path, vae: Path) -> None:
    """World, the given VAE, a fresh backbone and the cue cache (each once)."""
    from training.recipe import stages as R

    if not (vae / "config.json").is_file():
        raise InputError(f"--vae {vae}: not a diffusers VAE folder (no config.json). Train the demo model first "
                         "(python -m training recipe --out models/demo) or pass another AutoencoderKLCogVideoX.")
    recipe.vae.latent_channels = int(json.loads((vae / "config.json").read_text())["latent_channels"])
    markers = Markers(work)
    for stage, run in (("synth", lambda: R._synth(recipe, work)), ("vae", lambda: _copy_vae(vae, work)),
                       ("backbone", lambda: R._backbone(recipe, work)), ("prepare", lambda: R._prepare(recipe, work))):
        if markers.done(stage) is None:
            log.info("claims setup: %s", stage)
            markers.write(stage, run())


def _copy_vae(vae: Path, work: Path) -> dict:
    dest = work / "vae" / VAE_DIR
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(vae, dest)
    return {"source": str(vae)}


def final_checkpoint(run_dir: Path) -> Path:
    return step_dirs(run_dir)[-1][1] / "model.safetensors"


def train(config, trainer, steps: int) -> Path:
    """Train `config` to `steps` (continuing its checkpoints) and return its final model file."""
    done = step_dirs(config.run_dir)
    if not done or done[-1][0] < steps:
        config.run.steps = steps
        trainer(config, resume="latest")
    return final_checkpoint(config.run_dir)


def train_all(recipe: RecipeConfig, spec: ClaimsSpec, work: Path) -> dict:
    """Stage 1 on cues, stage 1 on skeleton maps, and stage 2 with and without S2X for every seed."""
    from training.prepare import prepare
    from training.stage1 import train_stage1
    from training.stage2 import train_stage2

    runs: dict = {}
    cues = stage_config(recipe, work, "stage1")
    runs["stage1"] = str(train(cues, train_stage1, recipe.stage1.steps))
    skeleton = stage_config(recipe, work, "stage1")
    skeleton.data.pose_source, skeleton.data.pseudo, skeleton.run.name = "skeleton", False, "stage1_skeleton"
    validate(skeleton)
    prepare(skeleton)
    runs["stage1_skeleton"] = str(train(skeleton, train_stage1, recipe.stage1.steps))
    for seed in range(spec.seeds):
        for mode in ("s2x", "plain"):
            config = stage_config(recipe, work, "stage2", checkpoint=runs["stage1"])
            config.run.seed, config.run.name = seed, f"stage2_{mode}_seed{seed}"
            config.data.seed = 0  # the seeds vary training (order, noise, dropout), not the cached pseudo cues
            if mode == "plain":
                config.stage2.lambda_value = 0.0
            elif config.stage2.lambda_value <= 0:
                raise InputError("claims: [stage2.stage2] must give lambda_value > 0 for the S2X runs.")
            validate(config)
            prepare(config)  # (already cached by the recipe's prepare: same key)
            runs[config.run.name] = str(train(config, train_stage2, recipe.stage2.steps))
    return runs


# --------------------------------------------------------------------------- measurements
def _model(work: Path, checkpoint: str | Path):
    model = load_model(work / "backbone", checkpoint, dtype="fp32")
    model.transformer.eval()
    return model


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def measure_s2x(recipe: RecipeConfig, spec: ClaimsSpec, work: Path, runs: dict) -> dict:
    from benchmarks.evidence import cross_pairs, eval_loss, sample_scores, steps_to_level
    from training.prepare import reference_to_latent

    base = _model(work, runs["stage1"])
    pairs = cross_pairs(base, work / "world", count=spec.eval_pairs)
    factor = reference_to_latent(stage_config(recipe, work, "stage1"))
    start = eval_loss(base.transformer, pairs, base.scheduler_config, timesteps=spec.eval_timesteps,
                      reference_factor=factor)
    curves: dict = {}
    for seed in range(spec.seeds):
        for mode in ("s2x", "plain"):
            name = f"stage2_{mode}_seed{seed}"
            steps, losses = [0], [start]
            for step, folder in tqdm(step_dirs(Path(runs[name]).parents[2]), desc=name, unit="ckpt"):
                model = _model(work, folder / "model.safetensors")
                steps.append(step)
                losses.append(eval_loss(model.transformer, pairs, model.scheduler_config,
                                        timesteps=spec.eval_timesteps, reference_factor=factor))
            curves[name] = {"steps": steps, "losses": losses}
    per_seed, sampled = [], {}
    for seed in range(spec.seeds):
        s2x, plain = curves[f"stage2_s2x_seed{seed}"], curves[f"stage2_plain_seed{seed}"]
        level = plain["losses"][-1]
        with_s2x = steps_to_level(s2x["steps"], s2x["losses"], level)
        without = steps_to_level(plain["steps"], plain["losses"], level)
        scores = {}
        for mode in ("s2x", "plain"):
            checkpoint = runs[f"stage2_{mode}_seed{seed}"]
            found = sample_scores(_model(work, checkpoint), pairs, steps=spec.sample_steps, guidance=spec.guidance)
            sampled[str(checkpoint)] = [{"psnr": r["psnr"], "ssim": r["ssim"]} for r in found]
            scores[mode] = {"psnr": statistics.fmean(r["psnr"] for r in found),
                            "ssim": statistics.fmean(r["ssim"] for r in found)}
        per_seed.append({"seed": seed, "level": level, "steps_with_s2x": with_s2x, "steps_without": without,
                         "speedup": (without / with_s2x) if with_s2x and without else None,
                         "final_loss_s2x": s2x["losses"][-1], "final_loss_plain": level, **{
                             f"{k}_{mode}": v for mode, d in scores.items() for k, v in d.items()}})
    return {"start_loss": start, "curves": curves, "per_seed": per_seed, "pairs": len(pairs),
            "timesteps": spec.eval_timesteps, "steps": recipe.stage2.steps, "sampled": sampled}


def measure_cross(spec: ClaimsSpec, work: Path, runs: dict, sampled: dict | None = None) -> dict:
    """Stage 1 against stage 1 + 2 on the held-out cross-ID pairs; `sampled` holds the scores of checkpoints
    already sampled on the same pairs (measure_s2x's), which are not sampled again."""
    from benchmarks.evidence import cross_pairs, sample_scores, static_scores

    out: dict = {}
    stage1 = _model(work, runs["stage1"])
    pairs = cross_pairs(stage1, work / "world", count=spec.eval_pairs)
    static = static_scores(pairs)
    out["static reference"] = {"psnr": [s["psnr"] for s in static], "ssim": [s["ssim"] for s in static]}
    models = {"stage 1": [runs["stage1"]],
              "stage 1 + 2 (S2X)": [runs[f"stage2_s2x_seed{s}"] for s in range(spec.seeds)],
              "stage 1 + 2 (no S2X)": [runs[f"stage2_plain_seed{s}"] for s in range(spec.seeds)]}
    for label, checkpoints in models.items():
        psnr, ssim = [], []
        for checkpoint in checkpoints:
            found = (sampled or {}).get(str(checkpoint)) or sample_scores(
                _model(work, checkpoint), pairs, steps=spec.sample_steps, guidance=spec.guidance)
            psnr += [r["psnr"] for r in found]
            ssim += [r["ssim"] for r in found]
        out[label] = {"psnr": psnr, "ssim": ssim}
    return {"models": out, "pairs": len(pairs)}


def world_config(recipe: RecipeConfig, size: int, **extra):
    """The exported world's WorldConfig (as `training.recipe._synth` builds it) at another size."""
    from training.recipe import world_config as recipe_world

    return replace(recipe_world(recipe.world), height=size, width=size, **extra)


def robust_clips(recipe: RecipeConfig, spec: ClaimsSpec, work: Path) -> list[int]:
    from training.validate import read_entries

    entries = [e for e in read_entries(work / "world") if e.get("split") == "val"]
    return [int(e["index"]) for e in entries[:spec.robust_clips]]


def measure_robustness(recipe: RecipeConfig, spec: ClaimsSpec, work: Path, runs: dict) -> dict:
    from benchmarks.evidence import cue_path_triplet, mediapipe_skeleton
    from directanimator.errors import CueError
    from directanimator.metrics import summary
    from directanimator.pipeline import animate_triplet
    from directanimator.plan import sampling_plan
    from training.world.cues import exact_cues
    from training.world.degrade import Degradation
    from training.world.pairs import make_sample
    from training.world.skeleton_map import skeleton_maps, skeleton_triplet

    w, size = recipe.world, recipe.world.size
    cue_model, skeleton_model = _model(work, runs["stage1"]), _model(work, runs["stage1_skeleton"])
    config = sampling_plan(cue_model).cue_config
    detect = (spec.detect_size, spec.detect_size)
    rows = []
    settings = [(name, s) for name in spec.degradations for s in spec.strengths if s > 0] + [("clean", 0.0)]
    for index in robust_clips(recipe, spec, work):
        for name, strength in tqdm(settings, desc=f"robustness clip {index}", unit="setting"):
            degradations = (Degradation(name, strength),) if strength > 0 else ()
            world = world_config(recipe, detect[0], cross_id=False, pseudo=False, degradations=degradations)
            sample = make_sample(index, world, seed=w.seed)
            target = resize_frames(sample.clip.frames, (size, size), "pad")
            reference, driving = sample.reference.frames, sample.driving.frames
            row = {"clip": index, "degradation": name, "strength": strength}
            try:
                triplet = cue_path_triplet(reference, driving, config)
                with torch.no_grad():
                    result = animate_triplet(cue_model, triplet, steps=spec.sample_steps, guidance=spec.guidance,
                                             seed=0, fps=w.fps).frames
                row["cues_failed"] = False
            except CueError as error:  # no person found at all: the user gets nothing animated
                log.warning("clip %d %s=%.2f: cue extraction failed (%s); scored as the static reference", index,
                            name, strength, error)
                result = resize_frames(reference, (size, size), "pad").expand_as(target)
                row["cues_failed"] = True
            row.update({f"cues_{k}": v for k, v in summary(result, target).items()})
            points, shown = mediapipe_skeleton(driving)
            ref_points, ref_shown = mediapipe_skeleton(reference, video=False)
            base = exact_cues(sample.reference, sample.driving, replace(config, height=size, width=size))
            triplet = skeleton_triplet(base, skeleton_maps(points, shown, source=detect, size=(size, size)),
                                       skeleton_maps(ref_points, ref_shown, source=detect, size=(size, size)))
            with torch.no_grad():
                result = animate_triplet(skeleton_model, triplet, steps=spec.sample_steps, guidance=spec.guidance,
                                         seed=0, fps=w.fps).frames
            row.update({f"skeleton_{k}": v for k, v in summary(result, target).items()})
            row["skeleton_frames_found"] = int(shown.any(axis=1).sum())
            rows.append(row)
    return {"rows": rows, "detect_size": spec.detect_size}


def measure_cutoff(recipe: RecipeConfig, spec: ClaimsSpec, work: Path, runs: dict) -> dict:
    from benchmarks.evidence import colour_histogram, colour_similarity, cross_pairs, foreground_iou, sample_scores
    from directanimator.plan import sampling_plan
    from training.validate import held_out_entries, pair_triplet, read_entries
    from training.world.background import render_background
    from training.world.pairs import make_sample

    w = recipe.world
    model = _model(work, runs["stage2_s2x_seed0"])
    pairs = cross_pairs(model, work / "world", count=spec.eval_pairs)
    entries = [e for e in held_out_entries(read_entries(work / "world"), max_clips=10**6)
               if "cross_target" in e][:len(pairs)]
    world = world_config(recipe, w.size)
    truths, plates = [], []
    for entry, item in zip(entries, pairs):
        truth = load_file(str(work / "world" / entry["ground_truth"]))
        masks = truth["cross_target_person_masks"].float() / 255.0
        scene = make_sample(int(entry["index"]), world, seed=w.seed).scenes["cross"]
        plate = torch.from_numpy(render_background(scene.background, world.times(), height=w.size, width=w.size))
        driving_masks = truth["person_masks"].float() / 255.0
        truths.append({"target_masks": masks, "driving": colour_histogram(item.pair.driving.float(), driving_masks),
                       "reference": colour_histogram(item.target, masks)})
        plates.append(plate)
    base = sampling_plan(model).cue_config
    rows = []
    for cutoff in tqdm(spec.cutoffs, desc="cutoff", unit="cutoff"):
        config = replace(base, cutoff=float(cutoff))
        triplets = [pair_triplet(item.pair, config) for item in pairs]
        found = sample_scores(model, pairs, steps=spec.sample_steps, guidance=spec.guidance, triplets=triplets)
        for k, (result, truth, plate) in enumerate(zip(found, truths, plates)):
            frames = result["frames"]
            hist = colour_histogram(frames, truth["target_masks"])
            rows.append({"cutoff": float(cutoff), "pair": k, "psnr": result["psnr"], "ssim": result["ssim"],
                         "iou": foreground_iou(frames, plate, truth["target_masks"]),
                         "driving_similarity": colour_similarity(hist, truth["driving"]),
                         "reference_similarity": colour_similarity(hist, truth["reference"]),
                         "truth_driving_similarity": colour_similarity(truth["reference"], truth["driving"])})
    return {"rows": rows, "trained_cutoff": base.cutoff, "pairs": len(pairs)}


# --------------------------------------------------------------------------- report
def _plots(out: Path, s2x: dict, cross: dict, robust: dict, cutoff: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "evidence"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def save(fig, key: str, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        files[key] = f"evidence/{name}"

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in sorted(s2x["curves"].items()):
        s2x_run = "_s2x_" in name
        ax.plot(curve["steps"], curve["losses"], color="tab:blue" if s2x_run else "tab:orange",
                linestyle="-" if s2x_run else "--", alpha=0.8, label=name.replace("stage2_", ""))
    ax.set_xlabel("stage-2 step")
    ax.set_ylabel("held-out cross-ID denoising loss")
    ax.set_title("Same2X: stage 2 with S2X (solid) and without (dashed)")
    ax.legend(fontsize=7)
    save(fig, "s2x", "s2x_convergence.png")

    rows = robust["rows"]
    names = [n for n in dict.fromkeys(r["degradation"] for r in rows) if n != "clean"]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for path, colour in (("cues", "tab:blue"), ("skeleton", "tab:red")):
            xs, ys = _robust_curve(rows, name, path)
            ax.plot(xs, ys, marker="o", color=colour, label="cue triplet" if path == "cues" else "skeleton")
        ax.set_title(name)
        ax.set_xlabel("strength")
    axes[0][0].set_ylabel("PSNR vs clean clip (dB)")
    axes[0][0].legend(fontsize=7)
    save(fig, "robust", "robustness.png")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    labels = list(cross["models"])
    means = [statistics.fmean(cross["models"][k]["psnr"]) for k in labels]
    sds = [statistics.stdev(cross["models"][k]["psnr"]) if len(cross["models"][k]["psnr"]) > 1 else 0 for k in labels]
    ax.bar(range(len(labels)), means, yerr=sds, color=["grey", "tab:orange", "tab:blue", "tab:purple"][:len(labels)])
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("cross-ID PSNR (dB)")
    ax.set_ylim(min(means) - 3, max(means) + 2)
    save(fig, "cross", "cross_id.png")

    table = _cutoff_table(cutoff["rows"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [r["cutoff"] for r in table]
    ax.plot(xs, [r["driving_similarity"] for r in table], marker="o", color="tab:red",
            label="colour similarity to the driving identity (leakage)")
    ax.plot(xs, [r["reference_similarity"] for r in table], marker="o", color="tab:green",
            label="colour similarity to the reference identity")
    ax.plot(xs, [r["iou"] for r in table], marker="s", color="tab:blue", label="mask IoU with ground truth")
    ax.axvline(cutoff["trained_cutoff"], color="grey", linestyle=":", label="trained cutoff")
    ax.set_xscale("log")
    ax.set_xlabel("pose-cue cutoff (fraction of Nyquist)")
    ax.legend(fontsize=7)
    save(fig, "cutoff", "cutoff.png")
    return files


def _robust_curve(rows: list[dict], name: str, path: str) -> tuple[list[float], list[float]]:
    clean = [r[f"{path}_psnr"] for r in rows if r["degradation"] == "clean"]
    xs, ys = [0.0], [statistics.fmean(clean)]
    for strength in sorted({r["strength"] for r in rows if r["degradation"] == name}):
        xs.append(strength)
        ys.append(statistics.fmean(r[f"{path}_psnr"] for r in rows
                                   if r["degradation"] == name and r["strength"] == strength))
    return xs, ys


def _cutoff_table(rows: list[dict]) -> list[dict]:
    out = []
    for cutoff in sorted({r["cutoff"] for r in rows}):
        part = [r for r in rows if r["cutoff"] == cutoff]
        out.append({"cutoff": cutoff, **{k: statistics.fmean(r[k] for r in part) for k in (
            "psnr", "ssim", "iou", "driving_similarity", "reference_similarity", "truth_driving_similarity")}})
    return out


def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _shown(path: str) -> str:
    """A path as the report shows it: relative to the checkout when inside it (the report is committed)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def _x(value) -> str:
    text = _f(value, 2)
    return text if text == "n/a" else f"{text}x"


def report(out: Path, work: Path, recipe: RecipeConfig, spec: ClaimsSpec, runs: dict, s2x: dict, cross: dict,
           robust: dict, cutoff: dict, command: str, seconds: float) -> Path:
    files = _plots(out, s2x, cross, robust, cutoff)
    vae_config = json.loads((work / "vae" / VAE_DIR / "config.json").read_text())
    vae_source, vae_scale = _shown(Markers(work).done("vae")["source"]), _f(vae_config.get("scaling_factor"), 4)
    seeds = s2x["per_seed"]
    speedups = [s["speedup"] for s in seeds if s["speedup"] is not None]
    reached = sum(1 for s in seeds if s["steps_with_s2x"] is not None)
    sp_mean, sp_sd = _mean_sd(speedups)
    lines = [
        "# Evidence: the paper's claims measured on ground truth",
        "",
        f"Made by `{command}` on {datetime.date.today().isoformat()} ({seconds / 60:.0f} min on "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, Python {platform.python_version()}). "
        "Every number below comes from that one run; `benchmarks/claims.py` explains the protocol.",
        "",
        "**Scale.** These are toy models: a "
        f"{recipe.transformer['num_layers']}-block CogVideoX 1.5-layout transformer "
        f"({recipe.transformer['num_attention_heads']} heads x {recipe.transformer['attention_head_dim']}) with "
        f"CueFusion, trained from scratch on {recipe.world.clips} procedural-world clips at "
        f"{recipe.world.size}x{recipe.world.size} px and {recipe.world.frames} frames, stage 1 for "
        f"{recipe.stage1.steps} steps and stage 2 for {recipe.stage2.steps} steps, with the frozen VAE of "
        f"`{vae_source}` (scaling factor {vae_scale}). "
        "They show whether each mechanism works in this implementation, not the paper's absolute numbers.",
        "",
        "## 1. Same2X convergence (S2X loss on and off, same stage-1 start)",
        "",
        f"![S2X convergence]({files['s2x']})",
        "",
        f"Cross-identity loss: denoising loss on {s2x['pairs']} held-out cross-identity pairs at timesteps "
        f"{s2x['timesteps']}, fixed noise; the stage-1 start is {_f(s2x['start_loss'], 4)}. Level: the final loss "
        "of the run without S2X of the same seed.",
        "",
        "| seed | final loss, S2X | final loss, no S2X | steps to the level, S2X | steps to the level, no S2X | "
        "speed-up | PSNR S2X | PSNR no S2X | SSIM S2X | SSIM no S2X |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in seeds:
        lines.append(f"| {s['seed']} | {_f(s['final_loss_s2x'], 4)} | {_f(s['final_loss_plain'], 4)} | "
                     f"{_f(s['steps_with_s2x']) if s['steps_with_s2x'] is not None else 'not reached'} | "
                     f"{_f(s['steps_without'])} | {_x(s['speedup'])} | {_f(s['psnr_s2x'], 2)} | "
                     f"{_f(s['psnr_plain'], 2)} | {_f(s['ssim_s2x'], 4)} | {_f(s['ssim_plain'], 4)} |")
    d_psnr = [s["psnr_s2x"] - s["psnr_plain"] for s in seeds]
    lines += [
        "",
        f"S2X reached the no-S2X run's final level in {reached} of {len(seeds)} seeds; speed-up "
        f"{_x(sp_mean)} ± {_f(sp_sd, 2)} (mean ± sd over the seeds where it did; the paper reports 6.7x). "
        f"Cross-ID PSNR at equal steps, S2X minus no S2X: {_f(_mean_sd(d_psnr)[0], 2)} ± {_f(_mean_sd(d_psnr)[1], 2)}"
        " dB.",
        "",
        "## 2. Robustness where skeletons fail (cue triplet against skeleton maps)",
        "",
        f"![Robustness]({files['robust']})",
        "",
        f"Same backbone and steps; stage 1 trained on the cue triplet or on skeleton maps. Test: {len(robust_clips_of(robust))} "
        f"held-out same-identity clips, the driving clip degraded, real estimators at {robust['detect_size']} px "
        "(mediapipe selfie segmentation + face detection for the cues, mediapipe Pose for the skeleton), PSNR/SSIM "
        "against the clean clip.",
        "",
        "| degradation | strength | PSNR cues | PSNR skeleton | SSIM cues | SSIM skeleton | cue extraction failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in _robust_table(robust["rows"]):
        lines.append(f"| {row['degradation']} | {row['strength']:.2f} | {_f(row['cues_psnr'], 2)} | "
                     f"{_f(row['skeleton_psnr'], 2)} | {_f(row['cues_ssim'], 4)} | {_f(row['skeleton_ssim'], 4)} | "
                     f"{row['cues_failed']} |")
    drops = _robust_drops(robust["rows"])
    lines += ["", "Mean PSNR drop from the clean clip to the strongest setting of each degradation (dB; smaller is "
              "more robust):", "", "| degradation | cue triplet | skeleton |", "|---|---|---|"]
    for name, (cue_drop, skel_drop) in drops.items():
        lines.append(f"| {name} | {_f(cue_drop, 2)} | {_f(skel_drop, 2)} |")
    fewer = sum(1 for cue_drop, skel_drop in drops.values() if cue_drop < skel_drop)
    spans = {path: max(r[f"{path}_psnr"] for r in _robust_table(robust["rows"]))
             - min(r[f"{path}_psnr"] for r in _robust_table(robust["rows"])) for path in ("cues", "skeleton")}
    lines += ["", f"The cue triplet lost less than the skeleton under {fewer} of {len(drops)} degradations. Range of "
              f"the mean PSNR over all settings: {_f(spans['cues'], 2)} dB for the cue model, "
              f"{_f(spans['skeleton'], 2)} dB for the skeleton model (a range near zero means the model's output "
              "hardly depends on its driving input at all)."]
    lines += [
        "",
        "## 3. Cross-identity quality: stage 1 only against stage 1 + 2",
        "",
        f"![Cross-ID]({files['cross']})",
        "",
        f"{cross['pairs']} held-out cross-identity pairs (reference of B, driving clip of A, ground truth B performing "
        f"A's motion), {spec.sample_steps} sampling steps, guidance {spec.guidance}; stage-2 rows pool the seeds.",
        "",
        "| model | PSNR (dB) | SSIM |",
        "|---|---|---|",
    ]
    for label, scores in cross["models"].items():
        p, s = _mean_sd(scores["psnr"]), _mean_sd(scores["ssim"])
        lines.append(f"| {label} | {_f(p[0], 2)} ± {_f(p[1], 2)} | {_f(s[0], 4)} ± {_f(s[1], 4)} |")
    table = _cutoff_table(cutoff["rows"])
    lines += [
        "",
        "## 4. The FFT cutoff: identity leakage against motion accuracy",
        "",
        f"![Cutoff]({files['cutoff']})",
        "",
        f"The stage 1 + 2 (S2X, seed 0) model, trained at cutoff {cutoff['trained_cutoff']}, on {cutoff['pairs']} "
        "held-out cross-identity pairs with the pose cue's cutoff changed at inference. Leakage: histogram "
        "intersection of the result's colours inside the ground-truth mask with the driving identity's colours "
        "(the ground truth itself scores the value in the last column); fidelity: the same with the reference "
        "identity's; motion: IoU of the result's foreground (differing from the known background plate) with the "
        "ground-truth mask.",
        "",
        "| cutoff | leakage (to driver) | fidelity (to reference) | mask IoU | PSNR | ground truth's similarity to driver |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(f"| {row['cutoff']} | {_f(row['driving_similarity'])} | {_f(row['reference_similarity'])} | "
                     f"{_f(row['iou'])} | {_f(row['psnr'], 2)} | {_f(row['truth_driving_similarity'])} |")
    if table:
        lines += ["", f"From cutoff {table[0]['cutoff']} to {table[-1]['cutoff']}: leakage "
                  f"{_f(table[0]['driving_similarity'])} -> {_f(table[-1]['driving_similarity'])}, mask IoU "
                  f"{_f(table[0]['iou'])} -> {_f(table[-1]['iou'])}."]
    lines += ["", "Limits: the cutoff is varied at inference only (one model trained at one cutoff), so far from the "
              "trained value the model also sees unfamiliar cues; the puppets are flat-shaded, so leakage shows as "
              "colour rather than texture.", ""]
    lines += ["## Runs", "", "| run | checkpoint |", "|---|---|"]
    lines += [f"| {name} | `{Path(path).parents[2].name}/{Path(path).parents[0].name}` |"
              for name, path in runs.items() if name != "seconds"]
    lines.append("")
    path = out / "evidence.md"
    path.write_text("\n".join(lines))
    return path


def robust_clips_of(robust: dict) -> list[int]:
    return sorted({r["clip"] for r in robust["rows"]})


def _robust_table(rows: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["degradation"], r["strength"]) for r in rows):
        part = [r for r in rows if (r["degradation"], r["strength"]) == key]
        out.append({"degradation": key[0], "strength": key[1], "cues_failed": sum(r["cues_failed"] for r in part),
                    **{k: statistics.fmean(r[k] for r in part) for k in ("cues_psnr", "skeleton_psnr", "cues_ssim",
                                                                         "skeleton_ssim")}})
    return out


def _robust_drops(rows: list[dict]) -> dict[str, tuple[float, float]]:
    out = {}
    names = [n for n in dict.fromkeys(r["degradation"] for r in rows) if n != "clean"]
    for name in names:
        drops = []
        for path in ("cues", "skeleton"):
            xs, ys = _robust_curve(rows, name, path)
            drops.append(ys[0] - ys[-1])
        out[name] = (drops[0], drops[1])
    return out


# --------------------------------------------------------------------------- driver
def run_claims(*, scale: str = "full", config: Path | None = None, work: Path, out: Path, vae: Path,
               overrides: list[str] = (), fresh: bool = False, command: str = "") -> Path:
    recipe, spec = load_claims(config or CONFIGS[scale], list(overrides))
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "claims.json").write_text(json.dumps({"recipe": asdict(recipe), "claims": asdict(spec)}, indent=1))
    started = time.perf_counter()
    setup(recipe, work, vae)
    results = Results(work)
    runs = results.get("runs", lambda: train_all(recipe, spec, work))
    s2x = results.get("s2x", lambda: measure_s2x(recipe, spec, work, runs))
    cross = results.get("cross", lambda: measure_cross(spec, work, runs, s2x.get("sampled")))
    robust = results.get("robustness", lambda: measure_robustness(recipe, spec, work, runs))
    cutoff = results.get("cutoff", lambda: measure_cutoff(recipe, spec, work, runs))
    out.mkdir(parents=True, exist_ok=True)
    total = sum(r.get("seconds", 0) for r in (runs, s2x, cross, robust, cutoff)) or time.perf_counter() - started
    path = report(out, work, recipe, spec, runs, s2x, cross, robust, cutoff,
                  command or f"python -m benchmarks.claims --scale {scale}", total)
    log.info("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scale", choices=sorted(CONFIGS), default="full")
    parser.add_argument("--config", type=Path, default=None, help="a claims TOML instead of the --scale one")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default runs/claims_<scale>)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder of evidence.md and evidence/*.png")
    parser.add_argument("--vae", type=Path, default=DEFAULT_VAE, help="a trained AutoencoderKLCogVideoX folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    work = args.work or ROOT / "runs" / f"claims_{args.scale}"
    try:
        run_claims(scale=args.scale, config=args.config, work=work, out=args.out, vae=args.vae,
                   overrides=args.overrides, fresh=args.fresh,
                   command=" ".join(["python -m benchmarks.claims", *(argv if argv is not None else sys.argv[1:])]))
    except InputError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
