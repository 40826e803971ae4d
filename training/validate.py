"""Sample held-out pairs with the project's inference and score them against ground truth.

Held out: entries with ``"split": "val"``, then the ground-truth cross-identity pairs of the other entries (no
training stage ever sees a cross target). A pair with a cross-identity pair animates its cross reference with
the clip's motion and is scored against the cross target; otherwise the clip's own reference re-renders the clip
(self-reconstruction). Cues come from the ground truth when the entry has it (the exact path, docs/world.md),
else from the cue config's detectors. Writes ``<stem>.mp4``, ``<stem>_sheet.png`` (reference | driving | result |
ground truth, first / middle / last frame) and appends one line per clip to ``validation.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from directanimator.atomic import atomic_path, check_output_folder, claim_output_folder, holding
from directanimator.cues import CueConfig, CueTriplet, extract_cues
from directanimator.errors import InputError
from directanimator.pipeline import animate_triplet
from directanimator.plan import sampling_plan
from directanimator.sampling import AUTO, SCHEDULER_CHOICES, resolve_scheduler
from directanimator.video import read_image, read_video, resize_frames, write_image, write_video

from directanimator.metrics import summary
from .world.cues import truth_cue_inputs
from .world.dataset import METADATA, metadata_file, read_metadata as read_entries  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

RESULTS = "validation.jsonl"
SHEET_FRAMES = 3  # rows of the sheet: first, middle and last frame


def held_out_entries(entries: list[dict], *, max_clips: int) -> list[dict]:
    """Validation entries first, then entries with a ground-truth cross-identity pair; at most `max_clips`."""
    val = [e for e in entries if e.get("split") == "val"]
    cross = [e for e in entries if e.get("split") != "val" and "cross_target" in e]
    return (val + cross)[:max_clips]


@dataclass
class ValidationPair:
    """One held-out pair: inputs, optional ground truth and where its cues come from."""

    name: str
    kind: str  # "cross" (reference of another identity, scored against the cross target) or "same"
    reference: Tensor  # [1, H, W, 3]
    driving: Tensor  # [F, H, W, 3]
    target: Tensor | None  # [F, H, W, 3] or None
    fps: float
    truth: dict | None  # extract_cues keyword arguments from ground truth, or None (detectors run)


def load_pair(root: Path, entry: dict) -> ValidationPair:
    """Read the files of one metadata entry into a `ValidationPair`."""
    fps = float(entry["fps"])
    clip = read_video(root / entry["clip"], fps=fps).frames
    driving = read_video(root / entry["driving"], fps=fps).frames if "driving" in entry else clip
    truth = load_file(str(root / entry["ground_truth"])) if "ground_truth" in entry else None
    name = Path(entry["clip"]).stem
    if "cross_target" in entry and "cross_reference" in entry:
        reference = read_image(root / entry["cross_reference"])
        target = read_video(root / entry["cross_target"], fps=fps).frames
        cue_inputs = truth_cue_inputs(truth, reference="cross_reference_") if truth is not None else None
        return ValidationPair(name, "cross", reference, driving, target, fps, cue_inputs)
    reference = read_image(root / entry["reference"]) if "reference" in entry else clip[:1]
    has_reference_truth = truth is not None and "reference" in entry and "reference_person_masks" in truth
    cue_inputs = truth_cue_inputs(truth) if has_reference_truth else None
    return ValidationPair(name, "same", reference, driving, clip, fps, cue_inputs)


def pair_triplet(pair: ValidationPair, config: CueConfig) -> CueTriplet:
    """The pair's cue triplet: from ground truth when known (no detector runs), else from the config's detectors."""
    if pair.truth is None:
        return extract_cues(pair.reference, pair.driving, config)
    return extract_cues(pair.reference, pair.driving, replace(config, segmenter="given", face_detector="given"),
                        **pair.truth)


def sheet(reference: Tensor, driving: Tensor, result: Tensor, target: Tensor | None, *,
          rows: int = SHEET_FRAMES) -> Tensor:
    """``[1, rows*H, 4*W, 3]``: reference | driving | result | ground truth (black without) for a few frames."""
    h, w = result.shape[1:3]
    count = result.shape[0]
    picks = sorted({round(i * (count - 1) / max(rows - 1, 1)) for i in range(rows)})
    ref = resize_frames(reference.float(), (h, w), "pad")[0]
    drv = resize_frames(driving.float(), (h, w), "pad")
    tgt = resize_frames(target.float(), (h, w), "pad") if target is not None else torch.zeros_like(result)
    lines = [torch.cat([ref, drv[i], result[i], tgt[i]], dim=1) for i in picks]
    return torch.cat(lines, dim=0)[None].clamp(0, 1)


def _number(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None  # identical frames: PSNR inf -> null


def validate_model(model, metadata_path: str | Path, out_dir: str | Path, *, max_clips: int = 4, steps: int = 10,
                   seed: int = 0, guidance: float = 3.0, scheduler: str = AUTO, samples: int = 1,
                   cue_config: CueConfig | None = None, step: int | None = None,
                   anchor: str | None = None) -> list[dict]:
    """Sample up to `max_clips` held-out pairs with `model` (an `AnimatorModel`) and write videos, sheets and
    ``validation.jsonl`` under `out_dir`; returns the new records. `step` (the training step) is recorded and
    names the files, so the trainer can call this repeatedly into one folder. `anchor` overrides the cue
    config's location anchor (`CueConfig.anchor`)."""
    if max_clips < 1:
        raise InputError(f"max_clips={max_clips}: validate at least one clip.")
    file = metadata_file(metadata_path)
    root = file.parent
    entries = held_out_entries(read_entries(file), max_clips=max_clips)
    if not entries:
        raise InputError(
            f"{file}: no held-out pairs: no entry has \"split\": \"val\" or a cross-identity pair. Export validation "
            "clips (python -m training synth --val-clips N) or mark entries as val."
        )
    config = sampling_plan(model, cue_config=cue_config, anchor=anchor or None).cue_config
    scheduler = resolve_scheduler(model, scheduler)  # "auto": the backbone's own ("dpm" CogVideoX, "unipc" Wan)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"step{step:07d}_" if step is not None else ""
    transformer = model.transformer
    was_training = transformer.training
    transformer.eval()
    records = []
    try:
        for entry in entries:
            pair = load_pair(root, entry)
            started = time.perf_counter()
            triplet = pair_triplet(pair, config)
            with torch.no_grad():
                result = animate_triplet(model, triplet, steps=steps, guidance=guidance, seed=seed, fps=pair.fps,
                                         scheduler=scheduler, samples=samples)
            frames = result.frames
            target = resize_frames(pair.target.float(), tuple(frames.shape[1:3]), "pad") \
                if pair.target is not None else None
            stem = f"{prefix}{pair.name}"
            write_video(out / f"{stem}.mp4", frames, pair.fps)
            write_image(out / f"{stem}_sheet.png", sheet(pair.reference, pair.driving, frames, pair.target))
            record = {"clip": entry["clip"], "kind": pair.kind, "split": entry.get("split", "train"),
                      "video": f"{stem}.mp4", "sheet": f"{stem}_sheet.png", "frames": int(frames.shape[0]),
                      "steps": steps, "guidance": guidance, "scheduler": scheduler, "seed": seed,
                      "samples": samples, "anchor": config.anchor,
                      "exact_cues": pair.truth is not None, "seconds": round(time.perf_counter() - started, 3)}
            if step is not None:
                record["step"] = step
            if target is not None:
                scores = summary(frames, target)
                record.update(psnr=_number(scores["psnr"]), ssim=_number(scores["ssim"]))
            records.append(record)
            log.info("validated %s (%s): %s", entry["clip"], pair.kind,
                     ", ".join(f"{k} {record[k]}" for k in ("psnr", "ssim") if k in record) or "no ground truth")
    finally:
        transformer.train(was_training)
    results = out / RESULTS
    previous = results.read_text() if results.exists() else ""
    with atomic_path(results) as tmp:
        tmp.write_text(previous + "".join(json.dumps(r) + "\n" for r in records))
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import add_renamed_argument

    add_renamed_argument(parser, "--backbone", old="--model", key="model.backbone", required=True,
                         help="backbone: diffusers folder, single file or repo id")
    parser.add_argument("--checkpoint", default=None, help="DirectAnimator checkpoint (.safetensors)")
    add_renamed_argument(parser, "--metadata", old="--data", key="data.metadata", required=True,
                         help="dataset folder or its metadata.jsonl")
    parser.add_argument("--out", required=True, help="output folder (videos, sheets, validation.jsonl)")
    parser.add_argument("--max-clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--scheduler", choices=SCHEDULER_CHOICES, default=AUTO,
                        help="sampler; 'auto' is the backbone's own ('dpm' on CogVideoX, 'unipc' on Wan)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1,
                        help="score the mean of this many results (seeds seed, seed + 1, ...)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cpu")


VALIDATE_COMMAND = "python -m training validate"  # the output marker of a --out folder validate wrote


def run(args: argparse.Namespace) -> int:
    from directanimator.models import load_model

    metadata_file(args.metadata)  # fail before loading the model
    check_output_folder(args.out, VALIDATE_COMMAND, legacy=holding(RESULTS))
    model = load_model(args.backbone, args.checkpoint, dtype=args.dtype, device=args.device)
    claim_output_folder(args.out, VALIDATE_COMMAND, legacy=holding(RESULTS))
    records = validate_model(model, args.metadata, args.out, max_clips=args.max_clips, steps=args.steps,
                             seed=args.seed, guidance=args.guidance, scheduler=args.scheduler, samples=args.samples)
    scored = [r for r in records if r.get("psnr") is not None]
    if scored:
        log.info("mean over %d clips: PSNR %.2f dB, SSIM %.4f", len(scored),
                 sum(r["psnr"] for r in scored) / len(scored), sum(r["ssim"] for r in scored) / len(scored))
    return 0
