"""Model nodes: one shared loader, the encoder (reference + cues -> conditioning), the sampler and the decoder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from directanimator.conditioning import encode_conditioning
from directanimator.demo import CHECKPOINT as BUNDLED_CHECKPOINT
from directanimator.demo import is_model_folder
from directanimator.errors import InputError
from directanimator.models import AnimatorModel, MemoryOptions, load_model
from directanimator.models.caching import CACHE_MODES
from directanimator.models.loader import download_backbone
from directanimator.models.memory import ATTENTION_BACKENDS, OFFLOAD, STORAGE, check_attention_backend, check_device
from directanimator.plan import frames_from_latents
from directanimator.sampling import AUTO, SCHEDULER_CHOICES, sample_latents
from directanimator.text import fit_text_embeddings

from ._comfy import (
    check_repo_id,
    comfy_progress,
    default_device,
    find_model,
    folder_hint,
    manages_models,
    model_files,
    model_folders,
    prepare_parts,
    register_model_folder,
)
from .cues import CUES

log = logging.getLogger("directanimator.nodes")

CATEGORY = "DirectAnimator"
MODEL = "DA_MODEL"
CONDITIONING = "DA_CONDITIONING"
NO_CHECKPOINT = "none (bare backbone)"
NO_FOLDER = "none (use repo_id)"
NO_FILE = "none"
# ComfyUI's own model folders (folder_paths names) the loader also picks single files from
SINGLE_FILES = {"diffusion_model": "diffusion_models", "vae": "vae", "clip_vision": "clip_vision"}

MAX_WINDOW = 256  # latent frames
# the demo model shipped in this pack (python -m training recipe): offered as a backbone and as a checkpoint
BUNDLED = "directanimator-demo (bundled)"
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"

register_model_folder("directanimator", "directanimator", {".safetensors"})
register_model_folder("diffusers", "diffusers", set())
register_model_folder("sams", "sams", {".pth", ".pt", ".safetensors"})


def _file_stamp(path: str) -> str:
    """Modification time and size of a file, or of the newest file in a folder (a diffusers model).

    Only ever given paths that `_backbone_source` / `_checkpoint_source` / `_single_file` resolved inside the model
    folders (and a single file's sidecar json beside it)."""
    if os.path.isdir(path):
        stamps = [os.stat(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names]
        if not stamps:
            return f"{path}:empty"
        return f"{path}:{max(s.st_mtime_ns for s in stamps)}:{sum(s.st_size for s in stamps)}"
    if os.path.isfile(path):
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"
    return f"{path}:missing"


def _bundled() -> list[str]:
    return [BUNDLED] if is_model_folder(BUNDLED_DIR) else []


def _backbone_source(backbone: str) -> str:
    """The folder of `backbone`: the bundled demo or a diffusers folder listed in models/diffusers; InputError
    for anything else (absolute paths, '..', names not in the list)."""
    if backbone == BUNDLED:
        if not _bundled():
            raise InputError(f"backbone: the bundled demo model is missing from {BUNDLED_DIR}; reinstall the pack.")
        return str(BUNDLED_DIR)
    return find_model("diffusers", backbone, what="backbone", folders=True)


def _checkpoint_source(checkpoint: str) -> str | None:
    """The file of `checkpoint`: none, the bundled demo's, or a file listed in models/directanimator."""
    if checkpoint == NO_CHECKPOINT:
        return None
    if checkpoint == BUNDLED:
        if not _bundled():
            raise InputError(f"checkpoint: the bundled demo model is missing from {BUNDLED_DIR}; reinstall the pack.")
        return str(BUNDLED_DIR / BUNDLED_CHECKPOINT)
    return find_model("directanimator", checkpoint, what="checkpoint")


def _offload_mode(offload) -> str:
    """The loader's `offload` as a MemoryOptions offload mode. Workflows saved before it was a choice hold a
    boolean there (the frontend sets saved widget values by position; the API format sends them as saved): True
    is the whole-model offload it meant, False none."""
    if isinstance(offload, bool):
        return "model" if offload else "none"
    if offload in OFFLOAD:
        return offload
    raise InputError(f"offload is {offload!r}; use one of {list(OFFLOAD)} (true and false from older workflows "
                     "mean model and none).")


def _single_file(input_name: str, value: str | None) -> str | None:
    """The path of a file picked from ComfyUI's own folder for `input_name` (None for 'none')."""
    if value is None or value == NO_FILE:
        return None
    return find_model(SINGLE_FILES[input_name], value, what=input_name)


class DirectAnimatorModelLoader:
    """Backbone (diffusers folder, Hugging Face repo id or single file from models/diffusion_models), optional VAE
    and CLIP vision files, + DirectAnimator checkpoint -> one shared model."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads the backbone (Wan2.1 I2V, Wan2.2 TI2V or CogVideoX I2V; the family is read from the "
                   "weights), its VAE, the CLIP vision tower Wan2.1 I2V needs, and the CueFusion weights once; the "
                   "encoder, sampler and decoder share it. Wan files go where ComfyUI keeps them: the transformer in "
                   "models/diffusion_models, the VAE in models/vae, clip_vision_h in models/clip_vision. Prompts come "
                   "from ComfyUI's CLIP Loader + CLIP Text Encode into DirectAnimator Encode. ComfyUI reuses the "
                   "model across runs while these inputs stay the same.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "backbone": ([NO_FOLDER] + _bundled() + model_folders("diffusers"),
                             {"default": NO_FOLDER, "tooltip": "A Wan or CogVideoX image-to-video diffusers folder "
                                                               "in models/diffusers (transformer/ and vae/ inside; "
                                                               "Wan2.1 I2V also image_encoder/), or the small demo "
                                                               "model bundled with this pack. Not used when "
                                                               "diffusion_model names a file."}),
                "repo_id": ("STRING", {"default": "", "tooltip": "Hugging Face repo id (e.g. "
                                                                 "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers), used when "
                                                                 "backbone and diffusion_model are 'none'; downloaded "
                                                                 "once into the Hugging Face cache unless "
                                                                 "HF_HUB_OFFLINE=1."}),
                "checkpoint": ([NO_CHECKPOINT] + _bundled() + model_files("directanimator"),
                               {"default": NO_CHECKPOINT, "tooltip": "DirectAnimator weights (CueFusion + LoRA or "
                                                                     "full backbone) from models/directanimator; the "
                                                                     "bundled demo's goes with its backbone."}),
                "precision": (["bf16", "fp16", "fp32"], {"default": "bf16",
                                                         "tooltip": "Weights dtype. bf16 for recent GPUs, fp32 on CPU."}),
                "offload": (list(OFFLOAD), {"default": "none", "tooltip": (
                    "none: every network stays on the GPU (fastest; needs room for the whole model). model: each "
                    "network waits on the CPU and moves to the GPU whole while it runs (the transformer's full size "
                    "on the GPU during sampling, a transfer per node). blocks: the transformer's blocks wait on the "
                    "CPU and blocks_on_gpu of them move in at a time (the least GPU memory: a few blocks instead of the "
                    "whole transformer; slower steps, as the weights cross PCIe every step; needs CPU RAM for the "
                    "model). python -m directanimator info --plan tabulates each mode per card.")}),
            },
            "optional": {
                "diffusion_model": ([NO_FILE] + model_files("diffusion_models"),
                                    {"default": NO_FILE, "tooltip": "A backbone file from models/diffusion_models "
                                                                    "(e.g. wan2.1_i2v_480p_14B_bf16.safetensors or "
                                                                    "wan2.2_ti2v_5B_fp16.safetensors, native Wan "
                                                                    "layout); replaces backbone and repo_id. Needs a "
                                                                    "vae file."}),
                "vae": ([NO_FILE] + model_files("vae"),
                        {"default": NO_FILE, "tooltip": "A Wan VAE file from models/vae (wan_2.1_vae for Wan2.1 I2V, "
                                                        "wan2.2_vae for Wan2.2 TI2V); replaces the folder's vae/."}),
                "clip_vision": ([NO_FILE] + model_files("clip_vision"),
                                {"default": NO_FILE, "tooltip": "The CLIP vision tower Wan2.1 I2V embeds the "
                                                                "reference with (clip_vision_h.safetensors from "
                                                                "models/clip_vision); replaces the folder's "
                                                                "image_encoder/."}),
                # after the inputs older workflows saved: the frontend restores widget values by position
                "weights": (list(STORAGE), {"default": "bf16", "tooltip": (
                    "Transformer weight storage. bf16: the weights stay in precision. fp8: the backbone's linear "
                    "layers are stored as float8 e4m3 and computed in precision (about half the transformer's "
                    "weight memory; the video changes within fp8 rounding; norms, embeddings and the cue modules "
                    "stay in precision). Changing it reloads the model.")}),
                "blocks_on_gpu": ("INT", {"default": 1, "min": 1, "max": 64, "step": 1, "tooltip": (
                    "offload blocks only: transformer blocks moved to the GPU at a time. 1 streams one block while "
                    "the next is fetched (least memory); more: fewer, larger transfers and more GPU memory.")}),
                "attention": (list(ATTENTION_BACKENDS), {"default": "native", "tooltip": (
                    "Attention kernel. native: PyTorch SDPA (always there). flash (flash-attn), sage "
                    "(sageattention), xformers: CUDA GPUs with that package installed, usually faster kernels with "
                    "results that match native within their rounding (sage quantizes, so it rounds more).")}),
                "compile": ("BOOLEAN", {"default": False, "tooltip": (
                    "torch.compile each transformer block (one compile reused by every block): faster steps after "
                    "a first run that spends minutes compiling, and again when the size changes.")}),
            },
        }

    # Named arguments only: ComfyUI skips its own checks (ranges, combo lists) for every input a VALIDATE_INPUTS
    # takes, and for all of them when it takes **kwargs. Linked inputs arrive as None. Backbone and checkpoint are
    # taken so that their list check names the folder to use; nothing outside the model folders is looked at.
    # offload is taken to let older workflows' booleans through (ComfyUI's combo check would refuse them), and
    # attention to name a missing package before anything loads; both are checked here instead.
    @classmethod
    def VALIDATE_INPUTS(cls, backbone=None, repo_id=None, checkpoint=None, diffusion_model=NO_FILE, vae=NO_FILE,
                        clip_vision=NO_FILE, offload=None, attention="native"):
        # An optional input left out arrives as its default (NO_FILE); a linked one as None, i.e. given.
        try:
            if offload is not None:
                _offload_mode(offload)
            if attention is not None:
                check_attention_backend(attention)
            for name, value in (("diffusion_model", diffusion_model), ("vae", vae), ("clip_vision", clip_vision)):
                _single_file(name, value)
            uses_file = diffusion_model != NO_FILE  # then backbone and repo_id are not used
            if backbone == NO_FOLDER and repo_id is not None and not uses_file:
                if not repo_id.strip():
                    return (f"Choose a backbone folder from {folder_hint('diffusers')}, a backbone file from "
                            f"{folder_hint('diffusion_models')} (diffusion_model), or type a Hugging Face repo id "
                            "(owner/name).")
                check_repo_id(repo_id)
            elif backbone is not None and backbone != NO_FOLDER:
                _backbone_source(backbone)
            if checkpoint is not None:
                _checkpoint_source(checkpoint)
        except InputError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, backbone, repo_id, checkpoint, precision, offload, diffusion_model=NO_FILE, vae=NO_FILE,
                   clip_vision=NO_FILE, weights="bf16", blocks_on_gpu=1, attention="native", compile=False):
        """Same inputs and the same files on disk: ComfyUI reuses the loaded model; a replaced file reloads it.

        Only files inside the model folders are looked at; a name that does not resolve there stamps as itself
        (validation refuses it, and `load` raises)."""
        stamps = []

        def file_of(input_name):  # a single file and its sidecar config (<file>.json), which the loader reads
            def paths(value):
                path = _single_file(input_name, value)
                return [path, os.path.splitext(path)[0] + ".json"]
            return paths

        for name, none, resolve in ((backbone, NO_FOLDER, lambda value: [_backbone_source(value)]),
                                    (checkpoint, NO_CHECKPOINT, lambda value: [_checkpoint_source(value)]),
                                    (diffusion_model, NO_FILE, file_of("diffusion_model")),
                                    (vae, NO_FILE, file_of("vae")), (clip_vision, NO_FILE, file_of("clip_vision"))):
            if name == none:
                continue
            try:
                stamps.extend(_file_stamp(path) for path in resolve(name))
            except InputError:
                stamps.append(f"refused:{name}")
        try:
            offload = _offload_mode(offload)  # an older workflow's True reuses the model loaded with "model"
        except InputError:
            pass
        return "|".join(stamps) + (f"|{repo_id.strip()}|{precision}|{offload}|{weights}|{blocks_on_gpu}|{attention}"
                                   f"|{compile}")

    def load(self, backbone, repo_id, checkpoint, precision, offload, diffusion_model=NO_FILE, vae=NO_FILE,
             clip_vision=NO_FILE, weights="bf16", blocks_on_gpu=1, attention="native", compile=False):
        memory = MemoryOptions(storage=weights, offload=_offload_mode(offload), blocks_on_gpu=blocks_on_gpu,
                               attention=attention, compile=compile).validate()  # before anything loads
        device = default_device()
        check_device(memory, device)  # e.g. flash attention under ComfyUI's --cpu, before any download
        ckpt = _checkpoint_source(checkpoint)
        vae_file, clip_file = _single_file("vae", vae), _single_file("clip_vision", clip_vision)
        source = _single_file("diffusion_model", diffusion_model)
        if source is None and backbone != NO_FOLDER:
            source = _backbone_source(backbone)
        elif source is None:  # fetched (or found in the HF cache) by repo id, never read relative to ComfyUI's folder
            source = download_backbone(check_repo_id(repo_id))
        parts = dict(vae=vae_file, image_encoder=clip_file, require_image_encoder=True, memory=memory)
        # Inside ComfyUI its model manager moves each network to the device when a node first needs it (except a
        # transformer under block offload, whose blocks diffusers' hooks move); with offload="model" the model
        # moves each network itself.
        place = memory.offload == "model" or not manages_models()
        return (load_model(source, ckpt, dtype=precision, device=device, place=place, **parts),)


class DirectAnimatorEncode:
    """Reference + cue triplet -> conditioning latents (VAE-encoded, on the latent grid)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"
    DESCRIPTION = "VAE-encodes the reference and the three cue videos (tiled when large)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From DirectAnimator Model Loader."}),
                "cues": (CUES, {"tooltip": "From DirectAnimator Cue Triplet."}),
                "fps": ("FLOAT", {"default": 24.0, "min": 1.0, "max": 120.0, "step": 0.5,
                                  "tooltip": "Frame rate of the driving video; the result keeps it."}),
                "tiled": ("BOOLEAN", {"default": False, "tooltip": "Spatial VAE tiling: less memory for large frames."}),
            },
            "optional": {
                "text": ("CONDITIONING", {"tooltip": "Optional prompt conditioning from ComfyUI's CLIP Loader + "
                                                     "CLIP Text Encode (T5-XXL for CogVideoX; UMT5-XXL, type 'wan', "
                                                     "for Wan); replaces the checkpoint's null prompt."}),
            },
        }

    def encode(self, model: AnimatorModel, cues, fps, tiled, text=None):
        prepare_parts(model, "vae", "image_encoder")  # the CLIP tower embeds the reference (Wan2.1 I2V)
        with comfy_progress(1) as progress:
            cond = encode_conditioning(model, cues, fps=fps, tiling=tiled or None)
            progress(0)
        embeds = None
        if text is not None:  # ComfyUI CONDITIONING: [[embeddings [1, L, D], options], ...]; the first entry
            spec = model.spec  # 226 T5 tokens on CogVideoX, 512 UMT5 tokens on Wan
            embeds = fit_text_embeddings(text[0][0], max_length=spec.max_text_seq_length, dim=spec.text_embed_dim,
                                         name="text")
        return ({"conditioning": cond, "text": embeds},)


class DirectAnimatorSampler:
    """Conditioning -> video latents, with guidance, seeds and context windows for long videos."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "sample"
    DESCRIPTION = ("Denoises the video latents. Long videos run in overlapping context windows, each carrying the "
                   "reference frame, so memory depends on the window, not the length.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From DirectAnimator Model Loader."}),
                "conditioning": (CONDITIONING, {"tooltip": "From DirectAnimator Encode."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200, "step": 1, "tooltip": "Denoising steps."}),
                "guidance": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                       "tooltip": "Cue guidance scale; 1 disables guidance (one pass per step)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                                 "tooltip": "Noise seed; the same seed and inputs give the same video."}),
                "scheduler": (list(SCHEDULER_CHOICES),
                              {"default": AUTO, "tooltip": "auto: the backbone's own (DPM for CogVideoX, UniPC for "
                                                           "Wan). dpm / ddim for CogVideoX; unipc / euler (flow "
                                                           "matching, with the backbone's flow shift) for Wan."}),
                "window": ("INT", {"default": 0, "min": 0, "max": MAX_WINDOW, "step": 1,
                                   "tooltip": "Context window in latent frames (4 video frames each); 0: the whole "
                                              "video, or the backbone's fixed length (12 for CogVideoX-5B-I2V)."}),
                "overlap": ("INT", {"default": 3, "min": 0, "max": MAX_WINDOW, "step": 1,
                                    "tooltip": "Latent frames shared by neighbouring windows, blended with ramps."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "Below 1 refines the optional input latent instead of starting "
                                                 "from noise."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "Latents to refine when denoise < 1."}),
                "average_of": ("INT", {"default": 1, "min": 1, "max": 64, "step": 1,
                                       "tooltip": "The mean of this many results (seeds seed, seed + 1, ...). Helps "
                                                  "one-step estimates of a small model (the bundled demo model); "
                                                  "blurs multi-step samples."}),
                "cache": (list(CACHE_MODES), {"default": "off", "tooltip": (
                    "Step cache (diffusers' hooks): reuse the blocks' work on steps where it changes little. "
                    "first_block and mag skip about half the steps, taylorseer extrapolates; each window and "
                    "guidance branch keeps its own state, so cues are never mixed. Faster, slightly different.")}),
                "cache_threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.01, "tooltip": (
                    "0: the cache's default. first_block: relative change (0.05), mag: accumulated error (0.06), "
                    "taylorseer: refresh interval in whole steps (5). Higher skips more.")}),
                "batch_guidance": ("BOOLEAN", {"default": False, "tooltip": (
                    "Run the cued and the bare branch of guidance as one batch of 2: faster, twice the activation "
                    "memory.")}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, window=None, overlap=None):
        if window is None or overlap is None:  # linked from another node: checked by the sampler itself
            return True
        if not 0 <= window <= MAX_WINDOW:
            return f"window is {window}; use 0 (whole video) up to {MAX_WINDOW} latent frames."
        if not 0 <= overlap <= MAX_WINDOW:
            return f"overlap is {overlap}; use 0 up to {MAX_WINDOW} latent frames."
        if window and overlap >= window:
            return f"overlap ({overlap}) must be smaller than window ({window}); lower it or raise the window."
        return True

    def sample(self, model, conditioning, steps, guidance, seed, scheduler, window, overlap, denoise, latent=None,
               average_of=1, cache="off", cache_threshold=0.0, batch_guidance=False):
        cond = conditioning["conditioning"]
        init = None
        if denoise < 1.0:
            if latent is None:
                raise InputError("denoise < 1 needs a latent to refine: connect one, or set denoise to 1.")
            init = to_transformer_layout(latent["samples"])
        prepare_parts(model, "transformer")
        with comfy_progress(steps * average_of) as progress:  # the sampler reports the steps it really runs
            samples = sample_latents(
                model, cond, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler,
                window=window or None, overlap=overlap if window else None, denoise=denoise, init_latents=init,
                text_embeds=conditioning.get("text"), samples=average_of, cache=cache,
                cache_threshold=cache_threshold or None, batch_guidance=batch_guidance,
                callback=lambda step, total, preview: progress(step, preview, total))
        return ({"samples": to_comfy_layout(samples.cpu()), "num_frames": cond.num_frames, "fps": cond.fps},)


class DirectAnimatorDecode:
    """Video latents -> IMAGE frames (the reference frame dropped, exactly the driving frame count) and fps."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "fps")
    FUNCTION = "decode"
    DESCRIPTION = "Decodes in temporal chunks with optional spatial tiling; feeds Create Video or Video Combine."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From DirectAnimator Model Loader."}),
            "latent": ("LATENT", {"tooltip": "From DirectAnimator Sampler."}),
            "tiled": ("BOOLEAN", {"default": False, "tooltip": "Spatial tiling: less memory for large frames."}),
        }}

    def decode(self, model, latent, tiled):
        samples = to_transformer_layout(latent["samples"])
        chunks = max(1, samples.shape[1] - 1)
        prepare_parts(model, "vae")
        with comfy_progress(chunks) as progress:
            frames = frames_from_latents(model, samples, num_frames=latent.get("num_frames") or None,
                                         tiling=tiled or None,
                                         on_chunk=lambda done, total: progress(max(0, done - 1), total=total))
        return (frames, float(latent.get("fps") or 24.0))


def to_comfy_layout(samples: torch.Tensor) -> torch.Tensor:
    """``[B, F', C, h, w]`` (transformer) -> ``[B, C, F', h, w]`` (ComfyUI video LATENT)."""
    return samples.permute(0, 2, 1, 3, 4).contiguous()


def to_transformer_layout(samples: torch.Tensor) -> torch.Tensor:
    """``[B, C, F', h, w]`` (ComfyUI video LATENT) -> ``[B, F', C, h, w]``."""
    if samples.ndim != 5:
        raise InputError(f"latent: expected a video latent [B, C, F, h, w], got shape {tuple(samples.shape)}. "
                         "Use the latent from DirectAnimator Sampler.")
    return samples.permute(0, 2, 1, 3, 4).contiguous()


NODE_CLASS_MAPPINGS = {
    "DirectAnimatorModelLoader": DirectAnimatorModelLoader,
    "DirectAnimatorEncode": DirectAnimatorEncode,
    "DirectAnimatorSampler": DirectAnimatorSampler,
    "DirectAnimatorDecode": DirectAnimatorDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DirectAnimatorModelLoader": "DirectAnimator Model Loader",
    "DirectAnimatorEncode": "DirectAnimator Encode",
    "DirectAnimatorSampler": "DirectAnimator Sampler",
    "DirectAnimatorDecode": "DirectAnimator Decode",
}
