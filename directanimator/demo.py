"""The demo: the bundled model (``models/demo``, made by ``python -m training recipe``) animates its bundled
reference character with its bundled driving clip, or any reference with any driving video.

Bundled inputs (``<model>/demo/``): ``reference.png``, ``driving.mp4``, ``target.mp4`` (the ground truth: the
reference's identity performing the driving motion), ``truth.safetensors`` (person masks and face boxes, so the
cues are exact and no detector runs) and ``demo.json`` (fps, frames, sampling settings). With them, the result is
scored (PSNR, SSIM) against the ground truth, next to the static-reference baseline (the reference repeated).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

from .atomic import check_output_folder, claim_output_folder, holding
from .devices import usable_device
from .errors import InputError
from .metrics import moving_difference, moving_pixels, static_baseline, static_frames, summary

if TYPE_CHECKING:
    from .cues import CueConfig

log = logging.getLogger(__name__)

CHECKPOINT = "directanimator.safetensors"
DEMO_DIR = "demo"
DEMO_JSON = "demo.json"
TRUTH = "truth.safetensors"
RESULT = "result.mp4"
SHEET = "sheet.png"
METRICS = "metrics.json"
SHEET_COLUMNS = 6


@dataclass
class DemoResult:
    """What the demo wrote and measured; `metrics` is empty without ground truth."""

    out: Path
    frames: Tensor  # [F, H, W, 3] 0..1
    fps: float
    exact_cues: bool
    metrics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DemoSettings:
    """The sampling and clip settings of a model folder's ``demo/demo.json``; a missing key keeps its default."""

    steps: int = 25
    guidance: float = 3.0
    seed: int = 0
    scheduler: str = "dpm"
    samples: int = 1
    frames: int | None = None  # driving frames read (None: the whole clip)
    fps: float = 12.0  # used when the driving video has no frame rate
    size: int | None = None  # working size when the checkpoint names none
    anchor: str | None = None  # the location cue's anchor (CueConfig.anchor; None: the model's own)

    @classmethod
    def read(cls, path: str | Path) -> "DemoSettings":
        """The settings in `path` (defaults for an absent file); keys it does not know (the clip's source) are
        ignored, a value of the wrong type is an InputError naming the file."""
        path = Path(path)
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON ({error}); write the model folder again with "
                             "`python -m training recipe`.") from error
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object of settings, found {type(data).__name__}.")
        values = {}
        for f in fields(cls):
            if data.get(f.name) is None:
                continue
            kind = {"scheduler": str, "anchor": str, "guidance": float, "fps": float}.get(f.name, int)
            try:
                values[f.name] = kind(data[f.name])
            except (TypeError, ValueError) as error:
                raise InputError(f"{path}: {f.name}={data[f.name]!r} is not a {kind.__name__}; fix the file or "
                                 "write the model folder again with `python -m training recipe`.") from error
        settings = cls(**values)
        from .sampling import check_sampling_settings

        try:
            check_sampling_settings(steps=settings.steps, guidance=settings.guidance, scheduler=settings.scheduler,
                                    samples=settings.samples)
        except InputError as error:
            raise InputError(f"{path}: {error}") from None
        from .cues.types import ANCHORS

        if settings.anchor is not None and settings.anchor not in ANCHORS:
            raise InputError(f"{path}: anchor={settings.anchor!r}: use 'first' or 'clip' (CueConfig.anchor), or leave "
                             "it out for the model's own setting.")
        return settings

    def override(self, **values) -> "DemoSettings":
        """These settings with every value in `values` that is not None put in."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def demo_cue_config(saved: dict | None, settings: DemoSettings, cues: Mapping[str, Any] | None = None) -> CueConfig:
    """The cue options the demo samples with: the model's (`saved`), its demo settings' anchor and size (when the
    model names no size), then the caller's `cues` options (CueConfig fields, e.g. from --size, --cutoff); `run_demo`
    adds the backbone's size rule through `plan.sampling_plan`."""
    from .plan import cue_config_for

    return cue_config_for(saved, anchor=settings.anchor, default_size=settings.size, options=cues)


def is_model_folder(path: str | Path) -> bool:
    """True when `path` holds a demo model: transformer/, vae/ and the DirectAnimator checkpoint."""
    path = Path(path)
    return (path / "transformer" / "config.json").is_file() and (path / "vae" / "config.json").is_file() \
        and (path / CHECKPOINT).is_file()


def _truth_inputs(path: Path) -> dict[str, Tensor]:
    """`extract_cues` keyword arguments from a bundled ``truth.safetensors`` (uint8 masks)."""
    from safetensors.torch import load_file

    truth = load_file(str(path))
    try:
        inputs = {"driving_mask": truth["driving_mask"].float() / 255.0,
                  "driving_face_boxes": truth["driving_face_boxes"].float(),
                  "driving_face_valid": truth["driving_face_valid"].bool(),
                  "reference_mask": truth["reference_mask"].float() / 255.0,
                  "reference_face_box": truth["reference_face_box"].float() if "reference_face_box" in truth else None}
    except KeyError as error:
        raise InputError(f"demo ground truth {path}: no {error.args[0]!r} (has {sorted(truth)}); write the model "
                         "folder again with `python -m training recipe`.") from error
    return inputs


def motion_scores(reference: Tensor, target: Tensor, result: Tensor, without_pose: Tensor) -> dict[str, float]:
    """Whether `result` follows the motion, over the pixels where the truth `target` differs from the still
    `reference` (`metrics.moving_pixels`): their share of the clip, the result's and the static reference's mean
    absolute error there, and how far the result sampled with a blanked pose cue (`without_pose`) is from it."""
    static = static_frames(reference, target)
    moving = moving_pixels(static, target)
    return {"moving_share": float(moving.float().mean()),
            "moving_error": moving_difference(result, target, moving),
            "baseline_moving_error": moving_difference(static, target, moving),
            "pose_moves": moving_difference(without_pose, result, moving)}


def demo_sheet(reference: Tensor, driving: Tensor, triplet, result: Tensor, target: Tensor | None, *,
               columns: int = SHEET_COLUMNS) -> Tensor:
    """``[1, H', W', 3]``: rows reference, driving, pose, face, location cues, result ("generated") and, when
    known, the ground truth ("target"), `columns` frames spread over the clip, all at the result's size."""
    from .cues import contact_sheet, location_overlay
    from .video import resize_frames

    size = tuple(result.shape[1:3])
    rows = [("reference", resize_frames(reference.float(), size, "pad")),
            ("driving", resize_frames(driving.float(), size, "pad")),
            ("pose", triplet.pose), ("face", triplet.face), ("location", location_overlay(triplet)),
            ("generated", result)]  # the preview font has no U or H: "generated" and "target" it can spell
    if target is not None:
        rows.append(("target", resize_frames(target.float(), size, "pad")))
    return contact_sheet(rows, columns=columns, size=size)


DEMO_COMMAND = "python -m directanimator demo"  # the output marker of the folder the demo writes


def run_demo(model_dir: str | Path, *, out: str | Path = "out/demo", reference: str | Path | None = None,
             driving: str | Path | None = None, frames: int | None = None, stride: int = 1,
             steps: int | None = None, guidance: float | None = None, seed: int | None = None,
             scheduler: str | None = None, samples: int | None = None, device: str = "cpu",
             segmenter: str = "mediapipe",
             face_detector: str = "auto", sam_checkpoint: str | None = None, anchor: str | None = None,
             cues: Mapping[str, Any] | None = None,
             on_step: Callable[[int, int], None] | None = None) -> DemoResult:
    """Animate with the model folder `model_dir`: its bundled inputs by default (exact cues from their ground
    truth, scored against the ground-truth target and the static-reference baseline), or `reference` / `driving`
    files (cue detectors: the real path). `anchor` overrides the model's location anchor (`CueConfig.anchor`);
    `cues` overrides any other of its cue options (CueConfig fields: height and width, cutoff, filter, grid_cell).
    Every option and path is checked before the model loads. Writes ``result.mp4``, ``sheet.png`` and
    ``metrics.json`` into `out`."""
    from .cues import CueConfig, extract_cues
    from .models import load_model
    from .pipeline import animate_triplet
    from .plan import sampling_plan
    from .tensors import MAX_SIDE_PX
    from .video import check_video_sides, read_image, read_video, resize_frames, write_image, write_video

    model_dir = Path(model_dir)
    if not is_model_folder(model_dir):
        raise InputError(f"--model {model_dir}: not a demo model folder (transformer/, vae/ and {CHECKPOINT}). "
                         "Make one with `python -m training recipe --out models/demo`.")
    out = check_output_folder(out, DEMO_COMMAND, legacy=holding(RESULT, SHEET, METRICS))
    usable_device(device)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InputError(f"--stride {stride!r}: keep every n-th driving frame with n a whole number >= 1 (1 keeps "
                         "every frame).")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
        raise InputError(f"--frames {frames!r}: read at most this many driving frames, a whole number >= 1.")
    cues = dict(cues or {})
    CueConfig.from_dict(cues, name="cue options")  # unknown names and bad values fail here, not after loading
    CueConfig(segmenter=segmenter, face_detector=face_detector, sam_checkpoint=sam_checkpoint)
    bundle = model_dir / DEMO_DIR
    settings = DemoSettings.read(bundle / DEMO_JSON).override(steps=steps, guidance=guidance, seed=seed,
                                                             scheduler=scheduler, samples=samples, frames=frames,
                                                             anchor=anchor)
    bundled = driving is None and reference is None and (bundle / "driving.mp4").is_file()
    reference_path = Path(reference) if reference is not None else bundle / "reference.png"
    driving_path = Path(driving) if driving is not None else bundle / "driving.mp4"
    for name, path in (("--reference", reference_path), ("--driving", driving_path)):
        if not path.exists():
            raise InputError(f"{name} {path}: no such file. Give an existing file, or leave it out to use the model "
                             f"folder's bundled input in {bundle}.")
    reference_image = read_image(reference_path, max_side=MAX_SIDE_PX)  # letterboxed to the working size anyway
    check_video_sides(driving_path, name="--driving")  # before the model loads and before decoding
    clip = read_video(driving_path, max_frames=settings.frames, stride=stride)
    fps = float(clip.fps or settings.fps)
    model = load_model(model_dir, model_dir / CHECKPOINT, dtype="fp32", device=device)
    config = sampling_plan(model, anchor=settings.anchor, default_size=settings.size, options=cues).cue_config
    truth_file = bundle / TRUTH
    exact = bundled and truth_file.is_file()
    if exact:
        config = replace(config, segmenter="given", face_detector="given")
        triplet = extract_cues(reference_image, clip.frames, config, **_truth_inputs(truth_file))
    else:
        config = replace(config, segmenter=segmenter, face_detector=face_detector,
                         sam_checkpoint=sam_checkpoint)
        triplet = extract_cues(reference_image, clip.frames, config)
    log.info("demo: %d driving frames at %.3g fps, working size %dx%d, %s cues, %d %s steps, guidance %.3g, "
             "mean of %d sample(s)", triplet.num_frames, fps, triplet.pose.shape[2], triplet.pose.shape[1],
             "exact (bundled ground truth)" if exact else "detected", settings.steps, settings.scheduler,
             settings.guidance, settings.samples)
    callback = (lambda step, total, preview: on_step(step, total)) if on_step is not None else None
    with torch.no_grad():
        result = animate_triplet(model, triplet, steps=settings.steps, guidance=settings.guidance,
                                 seed=settings.seed, fps=fps, scheduler=settings.scheduler, callback=callback,
                                 samples=settings.samples)
    frames_out = result.frames
    target = None
    if bundled and (bundle / "target.mp4").is_file():
        target = read_video(bundle / "target.mp4", max_frames=settings.frames, stride=stride).frames
        target = resize_frames(target.float(), tuple(frames_out.shape[1:3]), "pad")[: frames_out.shape[0]]
    metrics: dict = {}
    if target is not None:
        model_scores, base_scores = summary(frames_out, target), static_baseline(reference_image, target)
        metrics = {"psnr": model_scores["psnr"], "ssim": model_scores["ssim"],
                   "baseline_psnr": base_scores["psnr"], "baseline_ssim": base_scores["ssim"]}
        log.info("demo: sampling again with the pose cue blanked (does the result follow it?)")
        with torch.no_grad():
            without_pose = animate_triplet(model, triplet.blanked("pose"),
                                           steps=settings.steps, guidance=settings.guidance, seed=settings.seed,
                                           fps=fps, scheduler=settings.scheduler, samples=settings.samples).frames
        metrics.update(motion_scores(reference_image, target, frames_out, without_pose[: frames_out.shape[0]]))
    claim_output_folder(out, DEMO_COMMAND, legacy=holding(RESULT, SHEET, METRICS))
    write_video(out / RESULT, frames_out, fps)
    write_image(out / SHEET, demo_sheet(reference_image, clip.frames, triplet, frames_out, target))
    record = {"model": str(model_dir), "reference": str(reference_path), "driving": str(driving_path),
              "frames": int(frames_out.shape[0]), "fps": fps, "steps": settings.steps,
              "guidance": settings.guidance, "seed": settings.seed, "scheduler": settings.scheduler,
              "samples": settings.samples, "exact_cues": exact, **metrics}
    (out / METRICS).write_text(json.dumps(record, indent=1) + "\n")
    for note in result.notes:
        log.info("note: %s", note)
    return DemoResult(out=out, frames=frames_out, fps=fps, exact_cues=exact, metrics=metrics, notes=result.notes)
