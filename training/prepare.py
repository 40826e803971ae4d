"""`python -m training prepare CONFIG`: cues and VAE latents of every clip, cached as one safetensors file per clip.

Per clip and window: the target latents, the reference latent, the same-identity cue latents and (stage 2) the cue
latents of the pseudo driving clip under `data.pseudo_variants` random similarity transforms (the location cue has
to realign them). World clips with a ground-truth file get exact cues; scene clips (``"person": false`` in the
metadata) get blank cues. Clips already cached under the same key are skipped, so an interrupted prepare resumes;
clips that cannot be read are listed with the reason in ``skipped.jsonl``.

Real-scale footage: only each window's frames are decoded, straight to the working size in uint8
(`training.framing`: `data.fit` crop around the person or letterbox), at `data.fps`; the reference is a frame
outside the target window unless the metadata names an image (`data.reference`); windows take the longest of
`data.lengths` a clip fills where the backbone allows. The VAE runs on `data.device`; under `accelerate launch` or
torchrun each process prepares every `world`-th clip and rank 0 writes the index, the cache equal to one process's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor
from tqdm import tqdm

from directanimator.conditioning import encode_conditioning, pad_frames, plan_frame_count
from directanimator.cues import CueConfig, CueRecord, CueTriplet, Similarity, extract_cues
from directanimator.atomic import atomic_path, save_safetensors
from directanimator.devices import process_device
from directanimator.errors import DirectAnimatorError, InputError
from directanimator.models.configs import backbone_config
from directanimator.models.family import build_backbone, spec_from_config
from directanimator.vae_io import encode_frames
from directanimator.cues.segmentation import segment_person
from directanimator.video import probe_video, read_image, read_video, resize_frames
from directanimator.video.timing import resample_indices

from .config import TrainConfig, add_config_arguments, check_model_sources, load_config, save_config
from .framing import Framing, letterbox_framing, mask_box, person_framing, read_size
from .distributed import on_all_ranks
from .data import (
    PREPARE_INFO,
    SKIPPED,
    cache_folder,
    cache_key,
    cache_material,
    choose_bucket,
    choose_length,
    clip_id,
    vae_folder,
    window_starts,
)
from .precision import warn_without_native_bf16
from .text_encoding import prepare_text
from .world.cues import truth_cue_inputs
from .world.skeleton_map import EstimatorErrors, simulate_estimator, skeleton_maps, skeleton_triplet, to_openpose
from .world.dataset import read_metadata

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model parts
def _local_or_download(source: str) -> Path:
    path = Path(source)
    if path.exists():
        return path
    from directanimator.models.loader import download_backbone

    return download_backbone(source)


def load_vae(config: TrainConfig):
    """The frozen VAE named by `model.vae`, else the backbone folder's ``vae/``: diffusers' AutoencoderKLWan when
    its config names that class (Wan backbones), else AutoencoderKLCogVideoX."""
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan

    from directanimator.models.loader import resolve_dtype

    root = _vae_root(config)
    wan = json.loads((root / "config.json").read_text()).get("_class_name") == "AutoencoderKLWan"
    vae_class = AutoencoderKLWan if wan else AutoencoderKLCogVideoX
    return vae_class.from_pretrained(root, torch_dtype=resolve_dtype(config.model.dtype), use_safetensors=True,
                                     local_files_only=True).eval()


def load_image_encoder(config: TrainConfig, bc: dict, device: torch.device | str = "cpu") -> dict:
    """``{"image_encoder", "image_processor"}``: the frozen CLIP vision tower and its processor of a Wan2.1 I2V
    backbone folder (``image_encoder/``, ``image_processor/``), None for every other backbone."""
    if spec_from_config(bc).image_conditioning != "mask_and_latent":
        return {"image_encoder": None, "image_processor": None}
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from directanimator.models.loader import resolve_dtype

    root = _local_or_download(config.model.backbone)
    if not (root / "image_encoder" / "config.json").is_file() or not (root / "image_processor").is_dir():
        raise InputError(f"model.backbone={config.model.backbone!r}: a Wan image-to-video backbone needs its CLIP "
                         f"image encoder (image_encoder/ and image_processor/ in {root}), as the diffusers "
                         "Wan2.1-I2V folders hold them.")
    encoder = CLIPVisionModel.from_pretrained(root / "image_encoder", torch_dtype=resolve_dtype(config.model.dtype),
                                              local_files_only=True).eval().to(device)
    return {"image_encoder": encoder,
            "image_processor": CLIPImageProcessor.from_pretrained(root / "image_processor", local_files_only=True)}


def _vae_root(config: TrainConfig) -> Path:
    root = vae_folder(_local_or_download(config.model.vae or config.model.backbone))
    if not (root / "config.json").is_file():
        raise InputError(f"model.vae / model.backbone: no VAE folder at {root} (vae/config.json); set model.vae.")
    return root


def reference_to_latent(config: TrainConfig) -> float:
    """Factor from the cached reference latent (image scale) to the diffusion scale, as sampling converts it."""
    vae_config = json.loads((_vae_root(config) / "config.json").read_text())
    scale = float(vae_config.get("scaling_factor", 1.0))
    image_scale = 1.0 / scale if vae_config.get("invert_scale_latents", False) else scale
    return scale / image_scale


def read_backbone_config(config: TrainConfig) -> dict:
    """The backbone's transformer config, without loading its weights."""
    root = _local_or_download(config.model.backbone)
    for candidate in (root / "transformer" / "config.json", root / "config.json"):
        if candidate.is_file():
            return backbone_config(candidate)
    raise InputError(f"model.backbone={config.model.backbone!r}: no transformer/config.json nor config.json there.")


def meta_transformer(bc: dict):
    """A weightless DirectAnimatorTransformer of the backbone's family: enough for `encode_conditioning`'s size
    rules."""
    from directanimator.models import DirectAnimatorTransformer

    with torch.device("meta"):
        return DirectAnimatorTransformer(build_backbone(bc))


def check_frames(config: TrainConfig, bc: dict) -> None:
    """Raise InputError unless `data.frames` is a length the backbone takes as it is (no padding)."""
    from directanimator.conditioning import fixed_latent_frames

    spec = spec_from_config(bc)
    fixed = fixed_latent_frames(spec)
    want = plan_frame_count(config.data.frames, patch_size_t=spec.patch_size_t,
                            min_video_latents=fixed - 1 if fixed else 1)
    if want != config.data.frames:
        raise InputError(
            f"config data.frames={config.data.frames}: this backbone needs {want} driving frames per sample "
            f"(temporal patch size {spec.patch_size_t}, fixed latent length {fixed}); set data.frames={want}."
        )


# --------------------------------------------------------------------------- cue extraction (worker side)
def realign(frames: Tensor, masks: Tensor | None, boxes: Tensor | None, transform: Similarity
            ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Apply a pixel similarity ``x' = s x + t`` to frames ``[F, H, W, 3]``, masks ``[F, H, W]`` and boxes; the
    uncovered border is black."""
    f, h, w, _ = frames.shape
    s, tx, ty = transform.scale, transform.tx, transform.ty
    # output pixel x' samples the input at x = (x' - t) / s, in align_corners=False normalised coordinates
    theta = torch.tensor([[1 / s, 0.0, 1 / s - 2 * tx / (s * w) - 1], [0.0, 1 / s, 1 / s - 2 * ty / (s * h) - 1]])
    grid = F.affine_grid(theta.expand(f, 2, 3), [f, 1, h, w], align_corners=False)
    out = F.grid_sample(frames.permute(0, 3, 1, 2), grid, align_corners=False).permute(0, 2, 3, 1).clamp(0, 1)
    if masks is not None:
        masks = F.grid_sample(masks[:, None].float(), grid, align_corners=False)[:, 0].clamp(0, 1)
    if boxes is not None:
        boxes = transform.apply_boxes(boxes.float())
    return out, masks, boxes


def random_similarity(size: tuple[int, int], scale_range: list[float], shift: float, gen: torch.Generator
                      ) -> Similarity:
    """A similarity about the frame centre: scale in `scale_range`, shift up to `shift` of each side."""
    h, w = size
    u = torch.rand(3, generator=gen).tolist()
    s = scale_range[0] + (scale_range[1] - scale_range[0]) * u[0]
    dx, dy = (2 * u[1] - 1) * shift * w, (2 * u[2] - 1) * shift * h
    return Similarity(s, w / 2 * (1 - s) + dx, h / 2 * (1 - s) + dy)


def _blank_triplet(reference: Tensor, count: int, size: tuple[int, int]) -> CueTriplet:
    """Blank cues for a scene without people (X-Dyna): black cue videos and empty location masks."""
    h, w = size
    ref = resize_frames(reference, size, "pad")
    zeros3, zeros = torch.zeros(count, h, w, 3), torch.zeros(count, h, w)
    record = CueRecord(person_boxes=torch.zeros(count, 4), person_valid=torch.zeros(count, dtype=torch.bool),
                       face_boxes=torch.zeros(count, 4), face_valid=torch.zeros(count, dtype=torch.bool),
                       bad_frames=torch.zeros(count, dtype=torch.bool), transform=Similarity(),
                       reference_person_box=torch.zeros(4), reference_face_box=None,
                       notes=["scene clip: blank cues"])
    return CueTriplet(pose=zeros3, face=zeros3.clone(), body_location=zeros, face_location=zeros.clone(),
                      reference=ref, reference_mask=torch.zeros(1, h, w), reference_pose=torch.zeros(1, h, w, 3),
                      reference_face=torch.zeros(1, h, w, 3), reference_body_location=torch.zeros(1, h, w),
                      reference_face_location=torch.zeros(1, h, w), record=record)


REFERENCE_SEED = 104_729  # offsets the reference draw's seed from the realignments' (same clip, own stream)


def clip_timeline(num_frames: int, clip_fps: float, fps: float) -> list[int]:
    """Source frame indices of a `num_frames` clip at `clip_fps` resampled to `fps` (0: the clip's own rate)."""
    if not fps or abs(fps - clip_fps) < 1e-9:
        return list(range(num_frames))
    return resample_indices(clip_fps, fps, num_frames)


def window_indices(timeline: list[int], frames: int, stride: int, max_windows: int) -> list[list[int]]:
    """The source frames of each window (`window_starts` on the resampled timeline; none for a clip shorter than
    one window, which prepare skips rather than padding it with a frozen last frame)."""
    return [[timeline[start + k * stride] for k in range(frames)]
            for start in window_starts(len(timeline), frames, stride, max_windows)]


def check_length(clip: str, available: int, frames: int, stride: int, rate: float) -> None:
    """Raise InputError when a clip of `available` frames (at `rate` fps) is shorter than one window."""
    span = (frames - 1) * stride + 1
    if available < span:
        raise InputError(
            f"{clip}: {available} frames at {rate:g} fps (data.fps) is shorter than one window of {span} frames "
            f"(data.frames={frames}, data.stride={stride}); padding it would train on a frozen last frame. Ingest "
            "the clip with more --frames, or lower data.fps / data.frames.")


def reference_index(mode: str, num_frames: int, window: list[int], gen: torch.Generator) -> tuple[int, str | None]:
    """The clip frame that is the reference of `window` under `data.reference` `mode`, and a note when there is no
    frame outside the window (then the window's first frame is the reference)."""
    if mode == "first":
        return 0, None
    lo, hi = min(window), max(window)
    before, after = list(range(0, lo)), list(range(hi + 1, num_frames))
    if not before and not after:
        return lo, (f"no frame outside the target window (frames {lo}..{hi} of {num_frames}); its first frame is "
                    "the reference. Longer clips (or a smaller data.frames / data.stride) give references in "
                    "another pose")
    if mode == "random_outside":
        candidates = before + after
        return candidates[int(torch.randint(len(candidates), (1,), generator=gen))], None
    longest = before if len(before) >= len(after) else after
    return longest[len(longest) // 2], None


READ_GAP = 32  # frames between two wanted ones past which a second read (from the start) beats decoding the gap


def _read_frames(path: Path, indices: list[int], size: tuple[int, int], fps: float) -> Tensor:
    """Source frames `indices` of a clip decoded straight to `size` as uint8 ``[len(indices), H, W, 3]``: each run
    of nearby wanted frames in one read (a window's range), a frame far from them (the reference) in its own."""
    order = sorted(set(indices))
    groups = [[order[0]]]
    for i in order[1:]:
        if i - groups[-1][-1] > READ_GAP:
            groups.append([i])
        else:
            groups[-1].append(i)
    got = {}
    for group in groups:
        span = read_video(path, start=group[0], max_frames=group[-1] - group[0] + 1, size=size, resize="stretch",
                          fps=fps, dtype=torch.uint8).frames
        for i in group:  # a stored frame count a frame or two long (edit lists) repeats the last decoded frame
            got[i] = span[min(i - group[0], len(span) - 1)]
    return torch.stack([got[i] for i in indices])


COUNT_SIZE = (16, 16)  # frames are decoded this small when a container stores no exact frame count


def _frame_count(path: Path, probe: dict) -> int:
    """The clip's frame count: the stored one, else counted by decoding it once at a tiny size (windows are planned
    from it, so an estimate from the duration would not do)."""
    if probe["frame_count_exact"] and probe["frame_count"]:
        return int(probe["frame_count"])
    return read_video(path, size=COUNT_SIZE, resize="stretch", fps=probe["fps"], dtype=torch.uint8).num_frames


def _to_float(frames: Tensor) -> Tensor:
    """uint8 frames -> float32 0..1, the values `read_video` gives in float32."""
    return frames.float().div_(255.0)


def _reference_inputs(truth: dict | None, has_file: bool, at: int | None, framing: Framing) -> dict:
    """Ground truth of the reference: the reference image's own (``reference_`` role), or frame `at` of the clip
    through the window's framing."""
    if truth is None:
        return {}
    if has_file:
        inputs = truth_cue_inputs(truth)
        return {"reference_mask": inputs["reference_mask"], "reference_face_box": inputs["reference_face_box"]}
    mask = framing.apply(truth["person_masks"][at:at + 1].float() / 255.0)
    valid = bool(truth["face_valid"][at])
    return {"reference_mask": mask, "reference_face_box": framing.map_boxes(truth["face_boxes"][at]) if valid else None}


PERSON_SIDE = 256  # long side (px) the person is looked for at when framing a crop; mediapipe works at 256 anyway


def _window_framing(fit: str, source: tuple[int, int], size: tuple[int, int], *, scene: bool, truth: dict | None,
                    rows: list[int], frames_scaled: Tensor, cues: CueConfig) -> Framing:
    """The framing of a window (its frames and the reference: source indices `rows`, decoded `frames_scaled`): the
    person's box over all of them comes from the ground truth, else from the segmenter on a small copy."""
    if fit == "letterbox":
        return letterbox_framing(source, size)
    if scene:
        return person_framing(source, size, None)
    if truth is not None:
        return person_framing(source, size, mask_box(truth["person_masks"][rows], threshold=127))
    h, w = frames_scaled.shape[1:3]
    k = min(1.0, PERSON_SIDE / max(h, w))
    small = resize_frames(frames_scaled, (max(1, round(h * k)), max(1, round(w * k))), "stretch")
    backend = cues.segmenter if cues.segmenter in ("mediapipe", "sam") else "mediapipe"
    box = mask_box(segment_person(_to_float(small), backend=backend, sam_checkpoint=cues.sam_checkpoint))
    if box is not None:
        sh, sw = small.shape[1:3]
        box = box * torch.tensor([source[1] / sw, source[0] / sh, source[1] / sw, source[0] / sh])
    return person_framing(source, size, box)


def extract_clip(job: dict) -> dict:
    """Cue triplets of one clip's windows (run in a worker): ``{"windows": [...], "reference_fallback": n}`` (`n`:
    windows with no frame outside them, whose first frame is the reference) or ``{"error": reason}``."""
    try:
        windows = _extract(job)
        return {"windows": windows, "reference_fallback": sum(w.pop("reference_note") is not None for w in windows)}
    except (DirectAnimatorError, OSError, RuntimeError, ValueError, KeyError, IndexError, TypeError) as error:
        # one odd metadata entry (a missing or mistyped field, ground truth shorter than its clip) skips that clip
        return {"error": f"{type(error).__name__}: {error}"}


def _extract(job: dict) -> list[dict]:
    root, entry = Path(job["root"]), job["entry"]
    cues = CueConfig(**job["cues"])
    frames, stride, size = job["frames"], job["stride"], tuple(job["bucket"])
    fit, mode = job.get("fit", "letterbox"), job.get("reference", "first")
    fps = float(entry["fps"])
    has_file = "reference" in entry
    if mode == "file" and not has_file:
        raise InputError(f"data.reference='file': the entry of {entry['clip']} names no reference image. Add its "
                         "`reference` to the metadata, or use data.reference='outside'.")
    clip = root / entry["clip"]
    probe = probe_video(clip, fps=fps)
    source, num = (int(probe["height"]), int(probe["width"])), _frame_count(clip, probe)
    file_reference = read_image(root / entry["reference"]) if has_file else None
    pseudo_path = root / entry["pseudo_driving"] if job["pseudo"] and "pseudo_driving" in entry else None
    truth = load_file(str(root / entry["ground_truth"])) if job["ground_truth"] and "ground_truth" in entry else None
    scene = entry.get("person") is False
    config = CueConfig(**{**cues.to_dict(), "height": size[0], "width": size[1]})
    exact = CueConfig(**{**config.to_dict(), "segmenter": "given", "face_detector": "given"})
    seed = int(job["seed"]) * 7919 + int(job["id"][:8], 16)
    gen, np_rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    reference_gen = torch.Generator().manual_seed(seed + REFERENCE_SEED)
    decode = read_size(source, size, fit)
    timeline = clip_timeline(num, fps, float(job.get("fps", 0.0)))
    if job.get("lengths"):
        frames = choose_length((len(timeline) - 1) // stride + 1, job["lengths"])
    check_length(entry["clip"], len(timeline), frames, stride, float(job.get("fps", 0.0)) or fps)
    out = []
    for index in window_indices(timeline, frames, stride, job["max_windows"]):
        at, note = None, None
        if not has_file:
            at, note = reference_index(mode, num, index, reference_gen)
        rows = index + ([at] if at is not None else [])
        target_scaled = _read_frames(clip, rows, decode, fps)
        driving_scaled = _read_frames(root / entry["driving"], rows, decode, fps) if "driving" in entry else \
            target_scaled
        framing = _window_framing(fit, source, size, scene=scene, truth=truth, rows=rows,
                                  frames_scaled=driving_scaled, cues=cues)
        reference = file_reference if has_file else _to_float(framing.place(target_scaled[frames:]))
        driving = _to_float(framing.place(driving_scaled[:frames]))
        window: dict = {"target": _to_float(framing.place(target_scaled[:frames])), "reference_note": note,
                        "sources": {"frames": index, "reference": at, "framing": list(framing.window)}}
        del target_scaled, driving_scaled
        reference_truth = _reference_inputs(truth, has_file, at, framing)
        if scene:
            window["cues"] = _blank_triplet(reference, frames, size)
        elif truth is not None:
            inputs = truth_cue_inputs(truth, reference="")  # the driving keys only; the reference's above
            sel = torch.tensor(index)
            inputs = {"driving_mask": framing.apply(inputs["driving_mask"][sel]),
                      "driving_face_boxes": framing.map_boxes(inputs["driving_face_boxes"][sel]),
                      "driving_face_valid": inputs["driving_face_valid"][sel], **reference_truth}
            window["cues"] = extract_cues(reference, driving, exact, **inputs)
            if job.get("pose_source", "cues") == "skeleton":
                window["cues"] = _skeleton_cues(window["cues"], truth, sel, at, framing, has_file=has_file,
                                                reference_source=tuple(reference.shape[1:3]),
                                                errors=job["skeleton_errors"], rng=np_rng)
        else:
            window["cues"] = extract_cues(reference, driving, config)
        window["pseudo"] = _pseudo_variants(job, entry, pseudo_path, index, reference, fps, size, gen,
                                            scene=scene, truth=truth, reference_truth=reference_truth,
                                            config=config, exact=exact)
        out.append(window)
    return out


def _pseudo_variants(job: dict, entry: dict, path: Path | None, index: list[int], reference: Tensor, fps: float,
                     size: tuple[int, int], gen: torch.Generator, *, scene: bool, truth: dict | None,
                     reference_truth: dict, config: CueConfig, exact: CueConfig
                     ) -> list[CueTriplet]:
    """The pseudo driving clip's cue triplets of a window under `data.pseudo_variants` random realignments. The
    pseudo clip is letterboxed whole (its person stands anywhere: a crop could cut them)."""
    if path is None:
        return []
    probe = probe_video(path, fps=fps)
    framing = letterbox_framing((int(probe["height"]), int(probe["width"])), size)
    p_index = [min(i, _frame_count(path, probe) - 1) for i in index]
    pseudo = _to_float(framing.place(_read_frames(path, p_index, framing.scaled, fps)))
    frames = len(index)
    variants = []
    for _ in range(job["pseudo_variants"]):
        move = random_similarity(size, job["align_scale"], job["align_shift"], gen)
        if scene:
            variants.append(_blank_triplet(reference, frames, size))
        elif truth is not None and "pseudo_person_masks" in truth and entry.get("pseudo_truth", True):
            inputs = truth_cue_inputs(truth, driving="pseudo_", reference="")
            sel = torch.tensor(p_index)
            moved, mask, boxes = realign(pseudo, framing.apply(inputs["driving_mask"][sel]),
                                         framing.map_boxes(inputs["driving_face_boxes"][sel]), move)
            inputs = {"driving_mask": mask, "driving_face_boxes": boxes,
                      "driving_face_valid": inputs["driving_face_valid"][sel], **reference_truth}
            variants.append(extract_cues(reference, moved, exact, **inputs))
        else:
            moved, _, _ = realign(pseudo, None, None, move)
            variants.append(extract_cues(reference, moved, config))
    return variants


def _skeleton_cues(triplet: CueTriplet, truth: dict, index: Tensor, at: int | None, framing: Framing, *,
                   has_file: bool, reference_source: tuple[int, int], errors: list, rng: np.random.Generator
                   ) -> CueTriplet:
    """The skeleton baseline's conditioning: ground-truth joints through a simulated estimator, as maps."""
    if "joints" not in truth or (has_file and "reference_joints" not in truth):
        raise InputError("data.pose_source='skeleton': the ground-truth file has no joints (world exports have).")
    size = framing.size
    estimator = EstimatorErrors(*errors)
    joints = framing.map_points(truth["joints"][index].float())
    points, shown = simulate_estimator(*to_openpose(joints.numpy(), truth["joint_visible"][index].numpy()),
                                       estimator, rng=rng)
    if has_file:
        ref_joints, ref_visible, ref_source = truth["reference_joints"][:1], truth["reference_joint_visible"][:1], \
            reference_source
    else:
        ref_joints = framing.map_points(truth["joints"][at:at + 1].float())
        ref_visible, ref_source = truth["joint_visible"][at:at + 1], size
    ref_points, ref_shown = simulate_estimator(*to_openpose(ref_joints.numpy(), ref_visible.numpy()), estimator,
                                               rng=rng)
    return skeleton_triplet(triplet, skeleton_maps(points, shown, source=size, size=size),
                            skeleton_maps(ref_points, ref_shown, source=ref_source, size=size))


# --------------------------------------------------------------------------- encoding (main process)
def _cue_tensors(cond, prefix: str) -> dict[str, Tensor]:
    c = cond.cues
    return {f"{prefix}{name}": getattr(c, name)[0].float().cpu().contiguous()
            for name in ("pose", "face", "body_mask", "face_mask")}


def encode_autocast(vae, precision: str):
    """The context prepare encodes in: bf16 autocast on the VAE's device for ``"bf16"`` (a warning on a CPU
    without native bf16, where it is slower), else none."""
    if precision != "bf16":
        return contextlib.nullcontext()
    device = next(vae.parameters()).device
    if device.type == "cpu":
        warn_without_native_bf16("data.encode_precision='bf16'", "the VAE encodes", "data.encode_precision='fp32'")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def encode_clip(model, windows: list[dict], *, text: Tensor | None = None) -> dict[str, Tensor]:
    """VAE-encode the extracted windows of a clip into the tensors of its cache file. On Wan2.1 I2V each window also
    keeps its image conditioning as the pipeline builds it (`directanimator.conditioning.image_window`: the 4-channel
    first-frame mask and the latent of [reference, grey frames...] encoded in one VAE call, ``w{k}.image``, which
    depends on the reference and the window length) and the reference's CLIP embedding (``w{k}.image_embeds``)."""
    tensors: dict[str, Tensor] = {}
    wan_i2v = model.transformer.spec.image_conditioning == "mask_and_latent"
    for k, window in enumerate(windows):
        cond = encode_conditioning(model, window["cues"])
        target = pad_frames(window["target"], cond.padded_frames)
        latents = encode_frames(model.vae, target, name="target")
        tensors[f"w{k}.target"] = latents[0].float().cpu().contiguous()
        tensors[f"w{k}.reference"] = cond.reference[0].float().cpu().contiguous()
        tensors.update(_cue_tensors(cond, f"w{k}.cues."))
        if wan_i2v:
            from directanimator.conditioning import image_window

            image = image_window(model, cond, 1 + int(latents.shape[1]))
            tensors[f"w{k}.image"] = image[0].float().cpu().contiguous()
            tensors[f"w{k}.image_embeds"] = cond.image_embeds[0].float().cpu().contiguous()
        for v, triplet in enumerate(window["pseudo"]):
            tensors.update(_cue_tensors(encode_conditioning(model, triplet), f"w{k}.pseudo{v}."))
    if text is not None:
        tensors["text_embeds"] = text.float().contiguous()
    return tensors


def entries_to_prepare(config: TrainConfig, limit: int | None = None) -> list[dict]:
    """The metadata entries prepare works on (the first `limit`); InputError when there are none."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: prepare at least one metadata entry (leave it out for all of them).")
    entries = read_metadata(config.data_root)
    if not entries:
        raise InputError(f"data.metadata: {config.metadata_path} has no entries (one JSON object per line, "
                         "docs/data_format.md). Export data into it first (python -m training synth --out DIR) or "
                         "point data.metadata at a filled one.")
    return entries if limit is None else entries[:limit]


def clip_job(config: TrainConfig, entry: dict, order: int = 0) -> dict:
    """What `extract_clip` needs to cut and frame the windows of metadata `entry` (picklable, for the workers)."""
    d = config.data
    height, width = entry.get("height"), entry.get("width")
    bucket = choose_bucket(int(height), int(width), d.buckets) if height and width else tuple(d.buckets[0])
    return {"root": str(config.data_root), "entry": entry, "id": clip_id(entry), "order": order,
            "cues": config.cues.to_dict(), "frames": d.frames, "stride": d.stride, "bucket": list(bucket),
            "max_windows": d.max_windows, "fit": d.fit, "fps": d.fps, "reference": d.reference,
            "lengths": sorted(set(d.lengths) | {d.frames}) if d.lengths else [],
            "ground_truth": d.ground_truth, "pseudo": d.pseudo, "pseudo_variants": d.pseudo_variants,
            "pose_source": d.pose_source, "skeleton_errors": d.skeleton_errors,
            "align_scale": d.align_scale, "align_shift": d.align_shift, "seed": config.data_seed}


def check_buckets(config: TrainConfig, bc: dict) -> None:
    """Raise InputError when `data.buckets` or `data.lengths` hold a size or length the backbone cannot take: a
    backbone with learned positional embeddings (CogVideoX-5B-I2V) has exactly one of each; rotary-only backbones
    (CogVideoX 1.5) take any, so clips may be bucketed by aspect and length."""
    learned = spec_from_config(bc).use_learned_positional_embeddings
    if learned and config.data.lengths:
        raise InputError(f"config data.lengths={config.data.lengths!r}: this backbone has learned positional "
                         "embeddings for one window length (use_learned_positional_embeddings in its transformer "
                         "config); leave data.lengths empty and set data.frames alone. Length buckets need a "
                         "rotary-only backbone (CogVideoX 1.5).")
    for length in config.data.lengths:
        try:
            check_frames(replace(config, data=replace(config.data, frames=length)), bc)
        except InputError as error:
            raise InputError(str(error).replace("data.frames", "data.lengths")) from None
    if spec_from_config(bc).family == "wan":
        check_wan_sizes(config, bc)
    if not learned:
        return
    factor = 8  # the CogVideoX VAE's spatial compression: the config's sample size is in latent cells
    size = [int(bc["sample_height"]) * factor, int(bc["sample_width"]) * factor]
    if any(list(b) != size for b in config.data.buckets):
        raise InputError(
            f"config data.buckets={config.data.buckets!r}: this backbone has learned positional embeddings for "
            f"{size[0]}x{size[1]} px only (use_learned_positional_embeddings in its transformer config), so every "
            f"clip must be prepared at that size. Set data.buckets=[[{size[0]}, {size[1]}]]; data.fit "
            "('crop' or 'letterbox') fits clips of any aspect into it. Aspect buckets need a rotary-only backbone "
            "(CogVideoX 1.5)."
        )


def check_wan_sizes(config: TrainConfig, bc: dict) -> None:
    """Raise InputError, before any clip is read, when a bucket of `data.buckets` or a window length is not a latent
    size the Wan backbone takes: sides in multiples of the VAE's factor times the patch (32 px with Wan2.2's 16x VAE),
    and no axis past its rotary table (`directanimator.models.transformer.check_latent_shape_for`)."""
    from types import SimpleNamespace as Config

    from directanimator.models.transformer import check_latent_shape_for
    from directanimator.vae_io import latent_frames_for, spatial_compression, temporal_compression

    vae = Config(config=Config(**json.loads((_vae_root(config) / "config.json").read_text())))
    factor, step = spatial_compression(vae), temporal_compression(vae)
    cell = factor * spec_from_config(bc).patch_size
    for length in sorted(set(config.data.lengths) | {config.data.frames}):
        for h, w in config.data.buckets:
            if h % cell or w % cell:
                raise InputError(f"config data.buckets: {h}x{w} px is not a multiple of {cell} px, the VAE's factor "
                                 f"{factor} times the backbone's patch size; use sizes in steps of {cell} px.")
            try:  # the reference latent leads the window's latents
                check_latent_shape_for(bc, 1 + latent_frames_for(length, compression=step), h // factor, w // factor)
            except InputError as error:
                raise InputError(f"config data.buckets={[h, w]} with a window of {length} frames: {error}") from None


def _process_group(timeout_minutes: float):
    """accelerate's process state when this runs under `accelerate launch` / torchrun (WORLD_SIZE > 1), else None.
    Its collectives wait `timeout_minutes` (run.dist_timeout_minutes) for the slowest process: rank 0 encodes every
    caption with T5-XXL before the first of them, far past NCCL's 10-minute default on a large set."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState
    from accelerate.utils import InitProcessGroupKwargs

    handler = InitProcessGroupKwargs(timeout=timedelta(minutes=timeout_minutes))
    return PartialState(cpu=not torch.cuda.is_available(), **handler.to_kwargs())


def _gather(state, value):
    """`value` of every process, in rank order (one process: ``[value]``)."""
    if state is None:
        return [value]
    import torch.distributed as dist

    out = [None] * state.num_processes
    dist.all_gather_object(out, value)
    return out


def prepare(config: TrainConfig, *, limit: int | None = None) -> dict:
    """Fill the cache of `config`; returns counts ``{"cached", "done", "skipped", "folder"}``.

    Under a multi-process launch each process prepares every `world`-th clip still to do (its own VAE on its own
    GPU); rank 0 writes ``prepare.json``, the null text and ``skipped.jsonl``, so the cache equals a one-process
    one. The counts returned are the totals, on every process."""
    entries = entries_to_prepare(config, limit)
    check_model_sources(config, checkpoint=False)  # prepare needs the backbone's VAE and config, not a checkpoint
    bc = read_backbone_config(config)
    check_frames(config, bc)
    check_buckets(config, bc)
    d = config.data
    device = process_device(d.device, name="data.device")
    state = _process_group(config.run.dist_timeout_minutes)
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    folder = cache_folder(config)
    info = {"key": cache_key(config), "material": cache_material(config),
            "reference_to_latent": reference_to_latent(config)}

    def first_text():
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / PREPARE_INFO) as tmp:
            tmp.write_text(json.dumps(info, indent=1))
        return prepare_text(config, bc, entries, folder)

    # rank 0 makes the folder and the text embeddings while the others wait; an error there (a text encoder of the
    # wrong width, a caption that is no string) reaches every process at once instead of leaving them waiting out
    # the timeout (on_all_ranks is also the barrier: the null text exists before the other processes look)
    captions = on_all_ranks(first_text, only_main=True)
    captions = on_all_ranks(lambda: captions if rank == 0 else prepare_text(config, bc, entries, folder))

    todo, cached = [], 0
    for order, entry in enumerate(entries):
        cid = clip_id(entry)
        if (folder / f"{cid}.safetensors").is_file():
            cached += 1
            continue
        todo.append(clip_job(config, entry, order))
    if state is not None:
        state.wait_for_everyone()  # every process listed the same clips before any of them writes one
    share = todo[rank::world]
    log.info("prepare: %d clips, %d already cached in %s, %d to do%s", len(entries), cached, folder, len(todo),
             f" ({len(share)} by process {rank} of {world})" if world > 1 else "")
    skipped, done, fallback = [], 0, 0
    if share:
        vae = load_vae(config).to(device)
        model = SimpleNamespace(vae=vae, transformer=meta_transformer(bc), **load_image_encoder(config, bc, device))
        encoding = encode_autocast(vae, d.encode_precision)  # re-entered for every clip
        executor = None
        if d.workers > 0:
            executor = ProcessPoolExecutor(d.workers, mp_context=multiprocessing.get_context("spawn"))
            results = executor.map(extract_clip, share)
        else:
            results = map(extract_clip, share)
        try:
            for job, result in tqdm(zip(share, results), total=len(share), unit="clip",
                                    desc="prepare" if world == 1 else f"prepare {rank}/{world}"):
                entry = job["entry"]
                if "error" not in result:
                    try:
                        with torch.no_grad(), encoding:
                            tensors = encode_clip(model, result["windows"], text=captions(entry))
                    except (DirectAnimatorError, OSError, RuntimeError, ValueError, KeyError) as error:
                        result = {"error": f"{type(error).__name__}: {error}"}
                if "error" in result:
                    log.warning("prepare: skipping %s: %s", entry["clip"], result["error"])
                    skipped.append({"clip": entry["clip"], "id": job["id"], "reason": result["error"],
                                    "order": job["order"]})
                    continue
                fallback += bool(result["reference_fallback"])
                meta = {"bucket": json.dumps(job["bucket"]), "windows": str(len(result["windows"])),
                        "sources": json.dumps([w["sources"] for w in result["windows"]]),
                        **({"frames": str(len(result["windows"][0]["target"]))} if job["lengths"] else {}),
                        "pseudo_variants": str(len(result["windows"][0]["pseudo"])), "key": info["key"],
                        "clip": entry["clip"], "identity": str(entry.get("identity", ""))}
                save_safetensors(tensors, folder / f"{job['id']}.safetensors", meta)
                done += 1
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
    counts = _gather(state, (done, skipped, fallback))
    done, fallback = sum(c[0] for c in counts), sum(c[2] for c in counts)
    skipped = sorted((s for c in counts for s in c[1]), key=lambda s: s.pop("order"))
    if rank == 0 and fallback:
        log.warning("prepare: %d of the %d clips encoded have a window covering the whole clip, with no frame outside "
                    "it: their reference is the window's first frame (data.reference=%r). Longer clips (or a smaller "
                    "data.frames / data.stride) give references in another pose.", fallback, done, d.reference)
    if rank == 0:
        with atomic_path(folder / SKIPPED) as tmp:
            tmp.write_text("".join(json.dumps(s) + "\n" for s in skipped))
        log.info("prepare: %d encoded, %d skipped (listed in %s)", done, len(skipped), folder / SKIPPED)
    if state is not None:
        state.wait_for_everyone()  # skipped.jsonl is complete before any process reads the cache
    return {"cached": cached, "done": done, "skipped": len(skipped), "folder": str(folder)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="prepare only the first N metadata entries")
    parser.add_argument("--device", default=None,
                        help="device of the VAE (data.device): auto (the GPU when there is one), cpu, cuda, cuda:N")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"data.device={json.dumps(args.device)}"] if args.device else [])
    config = load_config(args.config, overrides)
    entries_to_prepare(config, args.limit)  # an empty training set fails before the cache folder is made
    process_device(config.data.device, name="data.device")  # an unusable device fails before the cache folder is made
    if int(os.environ.get("RANK", "0")) == 0:
        save_config(config, cache_folder(config) / "config.json")
    result = prepare(config, limit=args.limit)
    if result["done"] + result["cached"] == 0:
        raise InputError(f"prepare: none of the {result['skipped']} clips could be prepared; the reason for each "
                         f"is in {Path(result['folder']) / SKIPPED}.")
    return 0
