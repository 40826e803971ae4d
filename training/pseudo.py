"""Pseudo cross-identity driving clips for stage 2 (DESIGN.md 7), and face-cue identity perturbation.

- ``render``: a stage-1 model re-renders every clip's motion with another identity's reference (the clip's own
  cues, that reference), so the pseudo clip shows someone else performing the clip's motion.
- ``ingest``: clips made by any other animator, matched by file stem to the clips of the metadata.

Both write a new ``metadata.jsonl`` in the output folder: every entry of the source, paths rewritten relative to
the new file (the source folder is only read), with ``pseudo_driving`` and ``pseudo_identity`` set where a
pseudo clip was made or found, and ``pseudo_source`` saying which. Pseudo clips made here have no ground truth:
cue preparation runs detectors on them (the world's own ``pseudo_`` ground truth no longer applies and is
dropped from such entries by ``pseudo_truth: false``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from directanimator.atomic import atomic_path, check_output_folder, claim_output_folder
from directanimator.errors import InputError
from directanimator.plan import sampling_plan
from directanimator.tensors import as_frames
from directanimator.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, probe_video, read_image, read_video, write_video

from .validate import METADATA, metadata_file, read_entries
from .world.cues import truth_cue_inputs

log = logging.getLogger(__name__)

PATH_KEYS = ("clip", "reference", "driving", "pseudo_driving", "cross_reference", "cross_target", "ground_truth")
PSEUDO_DIR = "pseudo"
PSEUDO_COMMAND = "python -m training pseudo"  # the output marker of a pseudo dataset folder (directanimator.atomic)


# ------------------------------------------------------------------------------------------------ metadata


def _rebased(entry: dict, source_root: Path, out_root: Path) -> dict:
    """`entry` with its paths made relative to `out_root` (they were relative to `source_root`)."""
    new = dict(entry)
    for key in PATH_KEYS:
        if key in new:
            new[key] = os.path.relpath(source_root / new[key], out_root)
    return new


def _write_metadata(out_root: Path, entries: list[dict]) -> Path:
    """Write the new metadata.jsonl into `out_root` (claimed by the caller)."""
    path = out_root / METADATA
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def _is_pseudo_set(folder: Path) -> bool:
    """A pseudo dataset written before folders carried output markers: its metadata names pseudo sources."""
    path = folder / METADATA
    try:
        return path.is_file() and '"pseudo_source"' in path.read_text()
    except (OSError, UnicodeDecodeError):  # unreadable, or not text: not a pseudo dataset, so the folder is refused
        return False


def _check_out(source: Path, out_root: Path, *, claim: bool = False) -> None:
    """Refuse an output folder holding the source or files this command did not write; with `claim`, then create
    it and mark it as this command's (where the folder is first written)."""
    if (out_root / METADATA).resolve() == source.resolve():
        raise InputError(f"out: {out_root} holds the source metadata; write the pseudo dataset to a new folder.")
    (claim_output_folder if claim else check_output_folder)(out_root, PSEUDO_COMMAND, legacy=_is_pseudo_set)


def _stem(name: str) -> str:
    path = Path(name)
    return path.stem if path.suffix else path.name


# ------------------------------------------------------------------------------------------------ render


def choose_partners(entries: list[dict], *, seed: int = 0) -> list[int | None]:
    """For each entry, the index of an entry of another identity (unknown identities count as distinct), or None
    when there is none; deterministic in `seed`."""
    partners: list[int | None] = []
    for i, entry in enumerate(entries):
        own = entry.get("identity")
        others = [j for j, other in enumerate(entries)
                  if j != i and (own is None or other.get("identity") is None or other.get("identity") != own)]
        partners.append(random.Random(f"{seed}-{i}").choice(others) if others else None)
    return partners


def render_pseudo(model, metadata_path: str | Path, out_dir: str | Path, *, steps: int = 25, guidance: float = 3.0,
                  seed: int = 0, split: str | None = "train", max_clips: int | None = None) -> list[dict]:
    """Re-render each clip's motion (entries of `split`; None: all) with another identity's reference using
    `model` (an `AnimatorModel`, the stage-1 model) and write ``pseudo/<stem>.mp4`` and a new metadata.jsonl in
    `out_dir`. Cues come from ground truth when the entries have it. Returns the new entries."""
    from directanimator.cues import extract_cues
    from directanimator.pipeline import animate_triplet

    source = metadata_file(metadata_path)
    out_root = Path(out_dir)
    root = source.parent
    entries = read_entries(source)
    todo = [i for i, e in enumerate(entries) if split is None or e.get("split", "train") == split]
    if max_clips is not None:
        todo = todo[:max_clips]
    partners = choose_partners(entries, seed=seed)
    if not todo:
        raise InputError(f"{source}: no entries with split {split!r} to make pseudo clips for.")
    config = sampling_plan(model).cue_config
    _check_out(source, out_root, claim=True)  # before the first clip is rendered (the command checked it already)
    (out_root / PSEUDO_DIR).mkdir(exist_ok=True)
    made: dict[int, tuple[str, str]] = {}
    for i in todo:
        entry, partner = entries[i], partners[i]
        if partner is None:
            log.warning("%s: no clip of another identity; no pseudo clip", entry["clip"])
            continue
        other = entries[partner]
        fps = float(entry["fps"])
        driving = read_video(root / entry.get("driving", entry["clip"]), fps=fps).frames
        reference = read_image(root / other["reference"]) if "reference" in other else \
            read_video(root / other["clip"], fps=float(other["fps"]), max_frames=1).frames
        kwargs: dict = {}
        if "ground_truth" in entry and "ground_truth" in other:
            truth = load_file(str(root / entry["ground_truth"]))
            ref_truth = load_file(str(root / other["ground_truth"]))
            if "reference" in other and "reference_person_masks" in ref_truth:
                joined = {**{k: v for k, v in truth.items() if not k.startswith("reference_")},
                          **{k: v for k, v in ref_truth.items() if k.startswith("reference_")}}
                kwargs = truth_cue_inputs(joined)
        cue_config = replace(config, segmenter="given", face_detector="given") if kwargs else config
        triplet = extract_cues(reference, driving, cue_config, **kwargs)
        with torch.no_grad():
            result = animate_triplet(model, triplet, steps=steps, guidance=guidance, seed=seed + i, fps=fps)
        name = f"{PSEUDO_DIR}/{_stem(entry['clip'])}.mp4"
        write_video(out_root / name, result.frames, fps)
        made[i] = (name, str(other.get("identity", _stem(other["clip"]))))
        log.info("pseudo clip %s: %s performed by %s", name, entry["clip"], made[i][1])
    new_entries = []
    for i, entry in enumerate(entries):
        new = _rebased(entry, root, out_root)
        if i in made:
            new["pseudo_driving"], new["pseudo_identity"] = made[i]
            new["pseudo_source"] = "directanimator"
            new["pseudo_truth"] = False
        new_entries.append(new)
    _write_metadata(out_root, new_entries)
    return new_entries


# ------------------------------------------------------------------------------------------------ ingest


def _candidates(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()):
            found.setdefault(path.name, path)
        elif path.suffix.lower() in VIDEO_EXTENSIONS:
            found.setdefault(path.stem, path)
    return found


def _frame_count(path: Path, fps: float) -> int:
    info = probe_video(path, fps=fps)
    return int(info["frame_count"]) if info["frame_count_exact"] else read_video(path, fps=fps).num_frames


def ingest_pseudo(metadata_path: str | Path, folder: str | Path, out_dir: str | Path, *,
                  identity: str | None = None, source_name: str | None = None) -> list[dict]:
    """Attach clips of `folder` (videos or PNG folders named like the clips: ``000000.mp4`` for
    ``videos/000000.mp4``) as pseudo driving clips; write a new metadata.jsonl in `out_dir`.

    Frame counts are checked against the clips before anything is written. `identity` labels the pseudo
    performer (default: ``"<folder name>"``); `source_name` goes to ``pseudo_source`` (default the folder name).
    """
    source = metadata_file(metadata_path)
    out_root = Path(out_dir)
    _check_out(source, out_root)
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder {folder}: not a folder. Give the folder of generated pseudo driving clips.")
    root = source.parent
    entries = read_entries(source)
    found = _candidates(folder)
    by_stem = {_stem(e["clip"]): i for i, e in enumerate(entries)}
    matched = {by_stem[s]: p for s, p in found.items() if s in by_stem}
    unused = sorted(set(found) - set(by_stem))
    if not matched:
        raise InputError(
            f"folder {folder}: none of its {len(found)} clips is named like a clip of {source} (e.g. "
            f"{next(iter(by_stem), '?')!r}). Name each generated clip by the stem of the clip whose motion it shows."
        )
    bad = []
    for i, path in matched.items():
        count, want = _frame_count(path, float(entries[i]["fps"])), entries[i].get("num_frames")
        want = want or _frame_count(root / entries[i]["clip"], float(entries[i]["fps"]))
        if count != want:
            bad.append(f"{path.name}: {count} frames, clip has {want}")
    if bad:
        raise InputError(f"folder {folder}: frame counts differ from the clips ({'; '.join(bad[:3])}). A pseudo "
                         "driving clip must show the same motion frame for frame.")
    if unused:
        log.warning("%d clips of %s match no clip of the metadata, e.g. %s", len(unused), folder, unused[:3])
    label = identity or folder.name
    new_entries = []
    for i, entry in enumerate(entries):
        new = _rebased(entry, root, out_root)
        if i in matched:
            new["pseudo_driving"] = os.path.relpath(matched[i], out_root)
            new["pseudo_identity"] = label
            new["pseudo_source"] = source_name or folder.name
            new["pseudo_truth"] = False
        new_entries.append(new)
    claim_output_folder(out_root, PSEUDO_COMMAND, legacy=_is_pseudo_set)  # checked at the start; first written now
    _write_metadata(out_root, new_entries)
    log.info("attached %d pseudo clips from %s (%d clips without one)", len(matched), folder,
             len(entries) - len(matched))
    return new_entries


# ------------------------------------------------------------------------------------------------ face perturbation

MAX_GAIN = 0.25  # per-channel colour gain range at strength 1: x(1 +- 0.25)
MAX_CONTRAST = 0.3  # contrast change around the face's mean grey
MAX_SATURATION = 0.5
MAX_ROTATION_DEG = 8.0
MAX_SCALE = 0.08  # anisotropic scale change: face shape (wider, longer)
MAX_SHIFT = 0.04  # fraction of the frame


def perturb_face_cue(face: Tensor, *, strength: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Perturb the identity of a face-cue clip ``[F, H, W, 3]`` (0..1): colour jitter (per-channel gains,
    contrast, saturation) and a slight warp (rotation, anisotropic scale, shift), one draw per clip so the
    expression over time is kept. Blank (no-face) frames stay blank. `strength` 0 returns the input."""
    face = as_frames(face, name="face", check_sizes=False)
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"strength: {strength}; expected 0..1 (0: no change, 1: the largest perturbation).")
    if strength == 0.0:
        return face

    def uniform(*shape: int) -> Tensor:
        return (torch.rand(shape, generator=generator) * 2 - 1) * strength

    x = face.float().permute(0, 3, 1, 2)  # [F, 3, H, W]
    f, _, h, w = x.shape
    present = (x.flatten(1).amax(1) > 0).view(f, 1, 1, 1).to(x.dtype)
    # Colour: gains per channel, contrast and saturation around the clip's grey.
    gains = (1 + MAX_GAIN * uniform(3)).view(1, 3, 1, 1)
    contrast, saturation = 1 + MAX_CONTRAST * uniform(1), 1 + MAX_SATURATION * uniform(1)
    x = x * gains
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * saturation
    mean = (grey * present).sum() / (present.sum() * h * w).clamp_min(1)
    x = mean + (x - mean) * contrast
    # Shape: one affine warp for the whole clip, about the frame centre (the face cue is centred).
    angle = math.radians(MAX_ROTATION_DEG) * float(uniform(1))
    sx, sy = 1 + MAX_SCALE * float(uniform(1)), 1 + MAX_SCALE * float(uniform(1))
    tx, ty = 2 * MAX_SHIFT * float(uniform(1)), 2 * MAX_SHIFT * float(uniform(1))
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos / sx, -sin / sx, tx], [sin / sy, cos / sy, ty]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(f, 2, 3), (f, 3, h, w), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = (x * present).clamp(0, 1).permute(0, 2, 3, 1)
    return out.to(face.dtype)


# ------------------------------------------------------------------------------------------------ command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import add_renamed_argument

    sub = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    render = sub.add_parser("render", help="re-render each clip's motion with another identity (stage-1 model)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_renamed_argument(render, "--backbone", old="--model", key="model.backbone", required=True,
                         help="backbone: diffusers folder, single file or repo id")
    render.add_argument("--checkpoint", default=None, help="stage-1 DirectAnimator checkpoint (.safetensors)")
    add_renamed_argument(render, "--metadata", old="--data", key="data.metadata", required=True,
                         help="dataset folder or its metadata.jsonl")
    render.add_argument("--out", required=True, help="new dataset folder (pseudo clips + metadata.jsonl)")
    render.add_argument("--steps", type=int, default=25)
    render.add_argument("--guidance", type=float, default=3.0)
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--split", default="train", help="entries to make pseudo clips for ('all' for every one)")
    render.add_argument("--max-clips", type=int, default=None)
    render.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    render.add_argument("--device", default="cpu")
    ingest = sub.add_parser("ingest", help="attach clips made by another animator, matched by file stem",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_renamed_argument(ingest, "--metadata", old="--data", key="data.metadata", required=True,
                         help="dataset folder or its metadata.jsonl")
    ingest.add_argument("--folder", required=True, help="folder of generated clips named like the dataset's clips")
    ingest.add_argument("--out", required=True, help="new dataset folder (metadata.jsonl)")
    ingest.add_argument("--identity", default=None, help="label of the pseudo performer (default: folder name)")


def run(args: argparse.Namespace) -> int:
    if args.mode == "ingest":
        entries = ingest_pseudo(args.metadata, args.folder, args.out, identity=args.identity)
    else:
        from directanimator.models import load_model

        _check_out(metadata_file(args.metadata), Path(args.out))  # before loading the model
        model = load_model(args.backbone, args.checkpoint, dtype=args.dtype, device=args.device)
        entries = render_pseudo(model, args.metadata, args.out, steps=args.steps, guidance=args.guidance,
                                seed=args.seed, split=None if args.split == "all" else args.split,
                                max_clips=args.max_clips)
    log.info("wrote %s (%d entries, %d with pseudo clips)", Path(args.out) / METADATA, len(entries),
             sum("pseudo_source" in e for e in entries))
    return 0
