"""`python -m training prepare CONFIG`: cues and VAE latents of every clip, cached as one safetensors file per clip.

Per clip and window: the target latents, the reference latent, the same-identity cue latents and (stage 2) the cue
latents of the pseudo driving clip under `data.pseudo_variants` random similarity transforms (the location cue has
to realign them). World clips with a ground-truth file get exact cues; scene clips (``"person": false`` in the
metadata) get blank cues. Clips already cached under the same key are skipped, so an interrupted prepare resumes;
clips that cannot be read are listed with the reason in ``skipped.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
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
from directanimator.atomic import save_safetensors
from directanimator.errors import DirectAnimatorError, InputError
from directanimator.models.configs import backbone_config
from directanimator.vae_io import encode_frames
from directanimator.video import read_image, read_video, resize_frames

from .config import TrainConfig, add_config_arguments, check_model_sources, load_config, save_config
from .data import (
    PREPARE_INFO,
    SKIPPED,
    cache_folder,
    cache_key,
    cache_material,
    choose_bucket,
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
    """The frozen VAE named by `model.vae`, else the backbone folder's ``vae/``."""
    from diffusers import AutoencoderKLCogVideoX

    from directanimator.models.loader import resolve_dtype

    root = _vae_root(config)
    return AutoencoderKLCogVideoX.from_pretrained(root, torch_dtype=resolve_dtype(config.model.dtype),
                                                  use_safetensors=True, local_files_only=True).eval()


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
    """A weightless DirectAnimatorTransformer: enough for `encode_conditioning`'s size rules."""
    from diffusers import CogVideoXTransformer3DModel

    from directanimator.models import DirectAnimatorTransformer

    with torch.device("meta"):
        return DirectAnimatorTransformer(CogVideoXTransformer3DModel(**bc))


def check_frames(config: TrainConfig, bc: dict) -> None:
    """Raise InputError unless `data.frames` is a length the backbone takes as it is (no padding)."""
    from directanimator.conditioning import fixed_latent_frames

    fixed = fixed_latent_frames(SimpleNamespace(**bc))
    want = plan_frame_count(config.data.frames, patch_size_t=bc.get("patch_size_t"),
                            min_video_latents=fixed - 1 if fixed else 1)
    if want != config.data.frames:
        raise InputError(
            f"config data.frames={config.data.frames}: this backbone needs {want} driving frames per sample "
            f"(temporal patch size {bc.get('patch_size_t')}, fixed latent length {fixed}); set data.frames={want}."
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


def _slice_truth(inputs: dict, index: Tensor) -> dict:
    out = dict(inputs)
    for key in ("driving_mask", "driving_face_boxes", "driving_face_valid"):
        out[key] = inputs[key][index]
    return out


def _reference_truth(truth: dict, has_reference: bool) -> dict:
    """Ground truth with a ``reference_`` role: the reference image's, or the clip's frame 0 when it is the reference."""
    if has_reference:
        return truth
    extra = {f"reference_{k}": truth[k][:1] for k in ("person_masks", "face_boxes", "face_valid", "joints",
                                                       "joint_visible") if k in truth}
    return {**truth, **extra}


def extract_clip(job: dict) -> dict:
    """Cue triplets of one clip's windows (run in a worker): ``{"windows": [...]}`` or ``{"error": reason}``."""
    try:
        return {"windows": _extract(job)}
    except (DirectAnimatorError, OSError, RuntimeError, ValueError, KeyError) as error:
        return {"error": f"{type(error).__name__}: {error}"}


def _extract(job: dict) -> list[dict]:
    root, entry = Path(job["root"]), job["entry"]
    cues = CueConfig(**job["cues"])
    frames, stride, size = job["frames"], job["stride"], tuple(job["bucket"])
    fps = float(entry["fps"])
    target = read_video(root / entry["clip"], fps=fps).frames
    driving = read_video(root / entry["driving"], fps=fps).frames if "driving" in entry else target
    reference = read_image(root / entry["reference"]) if "reference" in entry else target[:1]
    pseudo = None
    if job["pseudo"] and "pseudo_driving" in entry:
        pseudo = read_video(root / entry["pseudo_driving"], fps=fps).frames
    truth = None
    if job["ground_truth"] and "ground_truth" in entry:
        truth = _reference_truth(load_file(str(root / entry["ground_truth"])), "reference" in entry)
    scene = entry.get("person") is False
    config = CueConfig(**{**cues.to_dict(), "height": size[0], "width": size[1]})
    exact = CueConfig(**{**config.to_dict(), "segmenter": "given", "face_detector": "given"})
    gen = torch.Generator().manual_seed(int(job["seed"]) * 7919 + int(job["id"][:8], 16))
    np_rng = np.random.default_rng(int(job["seed"]) * 7919 + int(job["id"][:8], 16))
    out = []
    for start in window_starts(len(target), frames, stride, job["max_windows"]):
        index = torch.arange(start, start + (frames - 1) * stride + 1, stride).clamp(max=len(target) - 1)
        window: dict = {"target": resize_frames(target[index], size, "pad")}
        if scene:
            window["cues"] = _blank_triplet(reference, frames, size)
        elif truth is not None:
            inputs = _slice_truth(truth_cue_inputs(truth), index.clamp(max=len(driving) - 1))
            window["cues"] = extract_cues(reference, driving[index.clamp(max=len(driving) - 1)], exact, **inputs)
            if job.get("pose_source", "cues") == "skeleton":
                window["cues"] = _skeleton_cues(window["cues"], truth, index.clamp(max=len(driving) - 1),
                                                source=tuple(driving.shape[1:3]),
                                                reference_source=tuple(reference.shape[1:3]), size=size,
                                                errors=job["skeleton_errors"], rng=np_rng)
        else:
            window["cues"] = extract_cues(reference, driving[index.clamp(max=len(driving) - 1)], config)
        variants = []
        if pseudo is not None:
            p_index = index.clamp(max=len(pseudo) - 1)
            for _ in range(job["pseudo_variants"]):
                move = random_similarity(tuple(pseudo.shape[1:3]), job["align_scale"], job["align_shift"], gen)
                if scene:
                    variants.append(_blank_triplet(reference, frames, size))
                elif truth is not None and "pseudo_person_masks" in truth and entry.get("pseudo_truth", True):
                    inputs = truth_cue_inputs(truth, driving="pseudo_")
                    moved, mask, boxes = realign(pseudo[p_index], inputs["driving_mask"][p_index],
                                                 inputs["driving_face_boxes"][p_index], move)
                    inputs = {**inputs, "driving_mask": mask, "driving_face_boxes": boxes,
                              "driving_face_valid": inputs["driving_face_valid"][p_index]}
                    variants.append(extract_cues(reference, moved, exact, **inputs))
                else:
                    moved, _, _ = realign(pseudo[p_index], None, None, move)
                    variants.append(extract_cues(reference, moved, config))
        window["pseudo"] = variants
        out.append(window)
    return out


def _skeleton_cues(triplet: CueTriplet, truth: dict, index: Tensor, *, source: tuple[int, int],
                   reference_source: tuple[int, int], size: tuple[int, int], errors: list,
                   rng: np.random.Generator) -> CueTriplet:
    """The skeleton baseline's conditioning: ground-truth joints through a simulated estimator, as maps."""
    if "joints" not in truth or "reference_joints" not in truth:
        raise InputError("data.pose_source='skeleton': the ground-truth file has no joints (world exports have).")
    estimator = EstimatorErrors(*errors)
    points, shown = simulate_estimator(*to_openpose(truth["joints"][index].numpy(),
                                                    truth["joint_visible"][index].numpy()), estimator, rng=rng)
    ref_points, ref_shown = simulate_estimator(*to_openpose(truth["reference_joints"][:1].numpy(),
                                                            truth["reference_joint_visible"][:1].numpy()),
                                               estimator, rng=rng)
    return skeleton_triplet(triplet, skeleton_maps(points, shown, source=source, size=size),
                            skeleton_maps(ref_points, ref_shown, source=reference_source, size=size))


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
    """VAE-encode the extracted windows of a clip into the tensors of its cache file."""
    tensors: dict[str, Tensor] = {}
    for k, window in enumerate(windows):
        cond = encode_conditioning(model, window["cues"])
        target = pad_frames(window["target"], cond.padded_frames)
        latents = encode_frames(model.vae, target, name="target")
        tensors[f"w{k}.target"] = latents[0].float().cpu().contiguous()
        tensors[f"w{k}.reference"] = cond.reference[0].float().cpu().contiguous()
        tensors.update(_cue_tensors(cond, f"w{k}.cues."))
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


def prepare(config: TrainConfig, *, limit: int | None = None) -> dict:
    """Fill the cache of `config`; returns counts ``{"cached", "done", "skipped", "folder"}``."""
    entries = entries_to_prepare(config, limit)
    check_model_sources(config, checkpoint=False)  # prepare needs the backbone's VAE and config, not a checkpoint
    bc = read_backbone_config(config)
    check_frames(config, bc)
    folder = cache_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"key": cache_key(config), "material": cache_material(config),
            "reference_to_latent": reference_to_latent(config)}
    (folder / PREPARE_INFO).write_text(json.dumps(info, indent=1))
    captions = prepare_text(config, bc, entries, folder)

    d = config.data
    todo, cached = [], 0
    for entry in entries:
        cid = clip_id(entry)
        if (folder / f"{cid}.safetensors").is_file():
            cached += 1
            continue
        height, width = entry.get("height"), entry.get("width")
        bucket = choose_bucket(int(height), int(width), d.buckets) if height and width else tuple(d.buckets[0])
        todo.append({"root": str(config.data_root), "entry": entry, "id": cid, "cues": config.cues.to_dict(),
                     "frames": d.frames, "stride": d.stride, "bucket": list(bucket), "max_windows": d.max_windows,
                     "ground_truth": d.ground_truth, "pseudo": d.pseudo, "pseudo_variants": d.pseudo_variants,
                     "pose_source": d.pose_source, "skeleton_errors": d.skeleton_errors,
                     "align_scale": d.align_scale, "align_shift": d.align_shift, "seed": config.data_seed})
    log.info("prepare: %d clips, %d already cached in %s, %d to do", len(entries), cached, folder, len(todo))
    skipped, done = [], 0
    if todo:
        vae = load_vae(config)
        model = SimpleNamespace(vae=vae, transformer=meta_transformer(bc))
        encoding = encode_autocast(vae, d.encode_precision)  # re-entered for every clip
        executor = None
        if d.workers > 0:
            executor = ProcessPoolExecutor(d.workers, mp_context=multiprocessing.get_context("spawn"))
            results = executor.map(extract_clip, todo)
        else:
            results = map(extract_clip, todo)
        try:
            for job, result in tqdm(zip(todo, results), total=len(todo), desc="prepare", unit="clip"):
                entry = job["entry"]
                if "error" not in result:
                    try:
                        with encoding:
                            tensors = encode_clip(model, result["windows"], text=captions(entry))
                    except (DirectAnimatorError, OSError, RuntimeError, ValueError, KeyError) as error:
                        result = {"error": f"{type(error).__name__}: {error}"}
                if "error" in result:
                    log.warning("prepare: skipping %s: %s", entry["clip"], result["error"])
                    skipped.append({"clip": entry["clip"], "id": job["id"], "reason": result["error"]})
                    continue
                meta = {"bucket": json.dumps(job["bucket"]), "windows": str(len(result["windows"])),
                        "pseudo_variants": str(len(result["windows"][0]["pseudo"])), "key": info["key"],
                        "clip": entry["clip"], "identity": str(entry.get("identity", ""))}
                save_safetensors(tensors, folder / f"{job['id']}.safetensors", meta)
                done += 1
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
    text = "".join(json.dumps(s) + "\n" for s in skipped)
    tmp = folder / f".{SKIPPED}.tmp"
    tmp.write_text(text)
    tmp.replace(folder / SKIPPED)
    log.info("prepare: %d encoded, %d skipped (listed in %s)", done, len(skipped), folder / SKIPPED)
    return {"cached": cached, "done": done, "skipped": len(skipped), "folder": str(folder)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="prepare only the first N metadata entries")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    entries_to_prepare(config, args.limit)  # an empty training set fails before the cache folder is made
    save_config(config, cache_folder(config) / "config.json")
    result = prepare(config, limit=args.limit)
    if result["done"] + result["cached"] == 0:
        raise InputError(f"prepare: none of the {result['skipped']} clips could be prepared; the reason for each "
                         f"is in {Path(result['folder']) / SKIPPED}.")
    return 0
