"""Measurements behind `benchmarks.claims`: scores of trained models against the procedural world's ground truth.

- `EvalPair` / `cross_pairs`: held-out cross-identity pairs, encoded once (cues, reference and target latents).
- `eval_loss`: the denoising loss of a transformer on those pairs at fixed timesteps and fixed noise, so curves of
  different runs and checkpoints are comparable point by point.
- `sample_scores`: PSNR/SSIM of sampled results against the ground truth.
- `mediapipe_skeleton`: a real pose estimator (mediapipe Pose) as OpenPose keypoints, for skeleton baselines.
- `foreground_iou`, `colour_similarity`: motion accuracy and identity leakage of a result.
- `steps_to_level`: when a loss curve first reaches a level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from directanimator.conditioning import encode_conditioning, pad_frames
from directanimator.cues import CueConfig, CueTriplet, extract_cues
from directanimator.cues.face_detection import detect_faces
from directanimator.cues.segmentation import frame_uint8, mediapipe_solution, segment_person
from directanimator.errors import InputError
from directanimator.metrics import static_baseline, summary
from directanimator.pipeline import animate_triplet
from directanimator.plan import sampling_plan
from directanimator.sampling import make_scheduler
from directanimator.tensors import as_frames, as_masks
from directanimator.vae_io import encode_frames
from directanimator.video import resize_frames

from training.data import Batch
from training.trainer import denoising_loss, noised_batch
from training.validate import ValidationPair, held_out_entries, load_pair, pair_triplet, read_entries

log = logging.getLogger(__name__)

# mediapipe Pose's 33 landmarks in OpenPose's 18-keypoint order (skeleton_map.OPENPOSE_JOINTS); -1: the neck,
# which mediapipe lacks and OpenPose places between the shoulders
MEDIAPIPE_FOR_OPENPOSE = (0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
VISIBILITY = 0.5  # mediapipe landmark visibility above which a keypoint is drawn


@dataclass
class EvalPair:
    """One held-out pair: its inputs (for sampling) and its encoded latents (for the loss)."""

    pair: ValidationPair
    triplet: CueTriplet
    target: Tensor  # [F, H, W, 3] ground truth at working size
    batch: Batch  # reference, cues and target latents, no dropout


def encode_pair(model, pair: ValidationPair, triplet: CueTriplet) -> EvalPair:
    """Encode `triplet` and the pair's target with `model`'s VAE into a one-sample training `Batch`."""
    cond = encode_conditioning(model, triplet, fps=pair.fps)
    size = tuple(triplet.pose.shape[1:3])
    target = resize_frames(pair.target.float(), size, "pad")
    latents = encode_frames(model.vae, pad_frames(target, cond.padded_frames), name="target")
    text = model.null_text.float().reshape(1, -1, model.null_text.shape[-1])
    batch = Batch(target=latents.float().cpu(), reference=cond.reference.float().cpu(), cues=cond.cues.to("cpu"),
                  text=text.cpu(), drop_cues=torch.zeros(1, dtype=torch.bool),
                  drop_reference=torch.zeros(1, dtype=torch.bool))
    return EvalPair(pair, triplet, target, batch)


def cross_pairs(model, world: str | Path, *, count: int) -> list[EvalPair]:
    """The first `count` held-out cross-identity pairs of an exported world, with exact cues, encoded by `model`."""
    root = Path(world)
    entries = [e for e in held_out_entries(read_entries(root), max_clips=10**6) if "cross_target" in e][:count]
    if not entries:
        raise InputError(f"{root}: no held-out cross-identity pairs; export the world with val clips and cross_id.")
    config = sampling_plan(model).cue_config
    out = []
    with torch.no_grad():
        for entry in entries:
            pair = load_pair(root, entry)
            out.append(encode_pair(model, pair, pair_triplet(pair, config)))
    return out


def eval_loss(transformer, pairs: list[EvalPair], scheduler_config: dict, *, timesteps: list[int],
              reference_factor: float, seed: int = 0) -> float:
    """Mean velocity MSE of `transformer` (a DirectAnimatorTransformer; its own target for a residual model) over
    `pairs` x `timesteps`, with noise fixed by (`seed`, pair, t)."""
    if not pairs or not timesteps:
        raise InputError("eval_loss: needs at least one pair and one timestep.")
    scheduler = make_scheduler("ddim", scheduler_config)
    device = next(transformer.parameters()).device
    was_training = transformer.training
    transformer.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for p, item in enumerate(pairs):
                batch = item.batch.to(device)
                for t in timesteps:
                    gen = torch.Generator().manual_seed(seed * 1_000_003 + p * 1009 + int(t))
                    noised = noised_batch(batch, scheduler, gen, reference_factor=reference_factor,
                                          t_range=(int(t), int(t) + 1),
                                          residual=transformer.cue_config.residual_reference)
                    prediction = transformer(noised.inputs, batch.text, noised.timesteps, cues=batch.cues,
                                             cue_weight=noised.cue_weight)
                    total += float(denoising_loss(prediction, noised.target))
                    count += 1
    finally:
        transformer.train(was_training)
    return total / count


def sample_scores(model, pairs: list[EvalPair], *, steps: int, guidance: float, seed: int = 0,
                  triplets: list[CueTriplet] | None = None) -> list[dict]:
    """Sample every pair (or the given `triplets` for them) and score it against its ground truth:
    ``[{"psnr", "ssim", "frames": Tensor}]``."""
    out = []
    with torch.no_grad():
        for k, item in enumerate(pairs):
            triplet = triplets[k] if triplets is not None else item.triplet
            result = animate_triplet(model, triplet, steps=steps, guidance=guidance, seed=seed, fps=item.pair.fps)
            scores = summary(result.frames, item.target)
            out.append({"psnr": scores["psnr"], "ssim": scores["ssim"], "frames": result.frames})
    return out


def static_scores(pairs: list[EvalPair]) -> list[dict]:
    """The static-reference baseline of each pair."""
    return [static_baseline(item.pair.reference, item.target) for item in pairs]


def mediapipe_skeleton(frames: Tensor, *, video: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """mediapipe Pose on `frames` ``[F, H, W, 3]``: OpenPose keypoints ``[F, 18, 2]`` px and visibility ``[F, 18]``
    (nothing visible in frames where no body was found). `video` tracks across frames as on a real clip."""
    frames = as_frames(frames, name="frames")
    module = mediapipe_solution("pose")
    count, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    points = np.zeros((count, len(MEDIAPIPE_FOR_OPENPOSE), 2))
    shown = np.zeros((count, len(MEDIAPIPE_FOR_OPENPOSE)), bool)
    # a tracking graph carries state from clip to clip, so each clip gets a fresh one
    pose = module.Pose(static_image_mode=not video, model_complexity=1)
    try:
        for f in range(count):
            found = pose.process(frame_uint8(frames[f])).pose_landmarks
            if found is None:
                continue
            marks = found.landmark
            xy = np.array([[m.x * width, m.y * height] for m in marks])
            vis = np.array([m.visibility for m in marks]) >= VISIBILITY
            inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
            for k, m in enumerate(MEDIAPIPE_FOR_OPENPOSE):
                if m >= 0:
                    points[f, k], shown[f, k] = xy[m], vis[m] and inside[m]
            points[f, 1] = (xy[11] + xy[12]) / 2.0
            shown[f, 1] = shown[f, 2] and shown[f, 5]
    finally:
        pose.close()
    return points, shown


def foreground_iou(result: Tensor, background: Tensor, truth_masks: Tensor, *, threshold: float = 0.12) -> float:
    """Mean per-frame IoU of the result's foreground (pixels differing from the known `background` plate by more
    than `threshold` in any channel) with the ground-truth person masks (> 0.5)."""
    result, background = as_frames(result, name="result"), as_frames(background, name="background")
    truth = as_masks(truth_masks, name="truth_masks") > 0.5
    if result.shape != background.shape or truth.shape != result.shape[:3]:
        raise InputError(f"foreground_iou: result {tuple(result.shape)}, background {tuple(background.shape)} and "
                         f"masks {tuple(truth.shape)} must share [F, H, W].")
    found = (result.float() - background.float()).abs().amax(dim=-1) > threshold
    inter = (found & truth).flatten(1).sum(1).float()
    union = (found | truth).flatten(1).sum(1).float().clamp(min=1)
    return float((inter / union).mean())


def colour_histogram(frames: Tensor, masks: Tensor, *, bins: int = 6) -> Tensor:
    """Normalised RGB histogram (`bins`^3) of the pixels of `frames` where `masks` > 0.5."""
    frames, masks = as_frames(frames, name="frames"), as_masks(masks, name="masks")
    pixels = frames.float()[masks > 0.5]
    if pixels.numel() == 0:
        return torch.full((bins ** 3,), 1.0 / bins ** 3)
    index = (pixels.clamp(0, 1 - 1e-6) * bins).long()
    flat = (index[:, 0] * bins + index[:, 1]) * bins + index[:, 2]
    hist = torch.bincount(flat, minlength=bins ** 3).float()
    return hist / hist.sum()


def colour_similarity(a: Tensor, b: Tensor) -> float:
    """Histogram intersection of two normalised histograms: 1 for the same colours, 0 for disjoint ones."""
    return float(torch.minimum(a, b).sum())


def steps_to_level(steps: list[int], losses: list[float], level: float) -> int | None:
    """The first step whose loss is at or below `level` (None if the curve never gets there)."""
    for step, loss in zip(steps, losses):
        if loss <= level:
            return int(step)
    return None


@torch.no_grad()
def cue_path_triplet(reference: Tensor, driving: Tensor, config: CueConfig, *, segmenter: str = "mediapipe",
                     faces: str = "mediapipe") -> CueTriplet:
    """The cue triplet as a user gets it: person masks and face boxes detected on the frames at their own size
    (before the resize to the working size), then `extract_cues` with them."""
    masks = segment_person(driving, backend=segmenter)
    track = detect_faces(driving, backend=faces)
    ref_mask = segment_person(reference, backend=segmenter)
    ref_track = detect_faces(reference, backend=faces)
    given = replace(config, segmenter="given", face_detector="given")
    return extract_cues(reference, driving, given, driving_mask=masks, driving_face_boxes=track.boxes,
                        driving_face_valid=track.valid, reference_mask=ref_mask,
                        reference_face_box=ref_track.boxes[0] if bool(ref_track.valid[0]) else None)


__all__ = ["EvalPair", "colour_histogram", "colour_similarity", "cross_pairs", "cue_path_triplet",
           "encode_pair", "eval_loss", "foreground_iou", "mediapipe_skeleton", "sample_scores", "static_scores",
           "steps_to_level"]
