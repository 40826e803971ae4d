"""The one place that touches ComfyUI: progress bars, interruption, model folders.

Everything here degrades to plain behaviour when ComfyUI is absent, so nodes run in tests without it.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from directanimator.errors import InputError
from directanimator.models.memory import hooks_place_weights

log = logging.getLogger("directanimator.nodes")

try:  # inside a ComfyUI server
    import comfy.model_management as _mm  # type: ignore[import-not-found]
    import comfy.utils as _cu  # type: ignore[import-not-found]
    import folder_paths as _fp  # type: ignore[import-not-found]
except ImportError:  # tests, scripts
    _mm = _cu = _fp = None

IN_COMFYUI = _cu is not None


def check_interrupted() -> None:
    """Raise ComfyUI's interruption exception when the user pressed Cancel; no-op outside ComfyUI."""
    if _mm is not None:
        _mm.throw_exception_if_processing_interrupted()


PREVIEW_MAX_SIDE = 512


def _preview_image(frames):
    """The middle frame of a ``[F, h, w, 3]`` 0..1 preview as ComfyUI's ("JPEG", PIL image, max side) tuple."""
    from PIL import Image

    frame = frames[frames.shape[0] // 2].detach().float().clamp(0, 1).mul(255).byte().cpu().numpy()
    return ("JPEG", Image.fromarray(frame), PREVIEW_MAX_SIDE)


@contextmanager
def comfy_progress(total: int) -> Iterator[Callable[..., None]]:
    """Yield ``on_step(i, preview=None, total=None)``: advances ComfyUI's progress bar to ``i + 1`` of `total` (or
    of the `total` the step reports, for work that knows its own count), shows the optional ``[F, h, w, 3]``
    preview, and honours Cancel (raises ComfyUI's interruption)."""
    total = max(int(total), 1)
    bar = _cu.ProgressBar(total) if _cu is not None else None

    def on_step(i: int, preview=None, total: int = total) -> None:
        check_interrupted()
        if bar is not None:
            image = _preview_image(preview) if preview is not None else None
            bar.update_absolute(min(i + 1, total), total, image)

    yield on_step


def default_device():
    """ComfyUI's torch device for models (honours --cpu), else CUDA when available, else the CPU."""
    if _mm is not None:
        return _mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def manages_models() -> bool:
    """True inside ComfyUI: its model manager places the networks of models loaded without offload."""
    return _mm is not None


def prepare_parts(model, *parts: str) -> None:
    """Before a node runs `parts` ("transformer", "vae", "image_encoder") of an `AnimatorModel`, let ComfyUI's model
    manager act.

    Without offload each part is a model ComfyUI manages like its own: `load_models_gpu` frees VRAM held by other
    models, moves the part to the GPU and keeps it there between runs until another model needs the room or the
    user unloads models. With offload the part moves in and out in `AnimatorModel.use`; ComfyUI is asked only to
    free the memory it needs first. No-op outside ComfyUI.
    """
    if _mm is None:
        return
    # a transformer under block offload: diffusers' hooks move its blocks, ComfyUI must not move it whole
    # (and a part the model does not have, e.g. the CLIP tower of a backbone without image embeddings)
    parts = tuple(part for part in parts
                  if getattr(model, part, None) is not None and not hooks_place_weights(getattr(model, part)))
    if not parts:
        return
    modules = [getattr(model, part) for part in parts]
    if model.offload:
        if model.device.type != "cpu":
            need = max(_mm.module_size(module) for module in modules)
            _mm.free_memory(need * 1.1 + _mm.minimum_inference_memory(), model.device)
        return
    _mm.load_models_gpu([_patcher(module, part, model.device) for module, part in zip(modules, parts)],
                        force_full_load=True)  # diffusers layers are not comfy.ops: no partial loading


_PATCHER = "_directanimator_comfy_patcher"


def _patcher(module, part: str, device):
    """ComfyUI's ModelPatcher of `module`, made once per module and device and kept on the module."""
    patcher = module.__dict__.get(_PATCHER)
    if patcher is not None and patcher.load_device == device:
        return patcher
    import comfy.model_patcher  # type: ignore[import-not-found]

    offload = _mm.unet_offload_device() if part == "transformer" else _mm.vae_offload_device()
    holder = {"vae": DirectAnimatorVAE, "image_encoder": DirectAnimatorCLIPVision}.get(part, DirectAnimatorCFDiT)
    patcher = comfy.model_patcher.ModelPatcher(holder(module, offload), load_device=device,
                                               offload_device=offload)
    module.__dict__[_PATCHER] = patcher  # a plain attribute: not a submodule, not in the state dict
    return patcher


class _Holder(torch.nn.Module):
    """One network held for ComfyUI's ModelPatcher, which logs the class name and sets ``.device`` (a read-only
    property on diffusers models)."""

    def __init__(self, network: torch.nn.Module, device) -> None:
        super().__init__()
        self.network = network
        self.device = device


class DirectAnimatorCFDiT(_Holder):
    """The CueFusion transformer, as ComfyUI's model manager sees it."""


class DirectAnimatorVAE(_Holder):
    """The video VAE, as ComfyUI's model manager sees it."""


class DirectAnimatorCLIPVision(_Holder):
    """Wan2.1 I2V's CLIP vision tower, as ComfyUI's model manager sees it."""


# ComfyUI folder name -> its default sub-folder of models/, for messages that say where a model goes
_SUBDIRS: dict[str, str] = {}
MAX_LISTED = 12  # names shown in an error message


def register_model_folder(name: str, default_subdir: str, extensions: set[str]) -> None:
    """Add ``models/<default_subdir>`` to ComfyUI's model folders under `name` (idempotent)."""
    _SUBDIRS.setdefault(name, default_subdir)
    if _fp is None:
        return
    path = os.path.join(_fp.models_dir, default_subdir)
    if name in _fp.folder_names_and_paths:
        # ComfyUI keeps extensions as a set for file folders but as ["folder"] for "diffusers": never assume.
        paths, exts = _fp.folder_names_and_paths[name]
        if path not in paths:
            paths.append(path)
        missing = set(extensions) - set(exts)
        if missing:
            _fp.folder_names_and_paths[name] = (paths, set(exts) | missing)
    else:
        _fp.folder_names_and_paths[name] = ([path], set(extensions))


def _roots(name: str) -> list[str]:
    """ComfyUI's folders for the model folder `name` (models/<subdir> and extra_model_paths); none outside it."""
    if _fp is None:
        return []
    try:
        return list(_fp.get_folder_paths(name))
    except KeyError:
        return []


def model_files(name: str) -> list[str]:
    """Files ComfyUI knows in the model folder `name`; empty outside ComfyUI."""
    if _fp is None:
        return []
    try:
        return list(_fp.get_filename_list(name))
    except KeyError:
        return []


def model_folders(name: str) -> list[str]:
    """Sub-folders of ComfyUI's model folder `name` that hold a diffusers model (a model_index.json or a
    transformer/ folder); empty outside ComfyUI."""
    found = []
    for root in _roots(name):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isdir(os.path.join(path, "transformer")):
                found.append(entry)
    return found


def folder_hint(name: str) -> str:
    """Where a user puts models of ComfyUI's model folder `name`, for messages."""
    return f"ComfyUI/models/{_SUBDIRS.get(name, name)}"


def _is_plain_name(value: str) -> bool:
    """True for a relative name made of ordinary parts: not absolute, no drive, no '.', '..' or empty part."""
    if not isinstance(value, str) or not value or "\0" in value:
        return False
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value) or os.path.isabs(value):
        return False
    return all(part not in ("", ".", "..") for part in re.split(r"[\\/]", value))


def find_model(name: str, value: str, *, what: str, folders: bool = False) -> str:
    """Full path of `value`, one of the names listed for ComfyUI's model folder `name` (sub-folders holding a
    diffusers model when `folders`, else files); the path is inside one of that folder's roots.

    Anything else (an absolute path, '..', a name not listed) raises InputError naming the folder to use. Nothing
    outside the model folders is looked at, so the message cannot tell whether a path elsewhere exists.
    """
    hint = folder_hint(name)
    listed = model_folders(name) if folders else model_files(name)
    if _is_plain_name(value) and value in listed:
        for root in _roots(name):
            path = os.path.join(root, value)
            if os.path.isdir(path) if folders else os.path.isfile(path):
                return path
    kind = "a diffusers model folder" if folders else "a model file"
    shown = ", ".join(listed[:MAX_LISTED]) + (", ..." if len(listed) > MAX_LISTED else "")
    found = f"it has: {shown}" if listed else "it is empty" if _fp is not None else "ComfyUI is not running"
    raise InputError(f"{what} {value!r} is not {kind} in {hint} ({found}). Put it in {hint} and refresh the page "
                     "(R), then pick it from the list; paths elsewhere are not loaded.")


# Hugging Face repo ids: owner/name, each part of letters, digits, '-', '_', '.', not starting or ending with '-'
# or '.', no '--' or '..', at most 96 characters (huggingface_hub's validate_repo_id).
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")


def check_repo_id(value: str, *, what: str = "repo_id") -> str:
    """`value` stripped when it has the form of a Hugging Face repo id (owner/name); else InputError."""
    repo = value.strip()
    if not _REPO_ID.match(repo) or "--" in repo or ".." in repo or repo.endswith(".git"):
        raise InputError(f"{what} {value!r} is not a Hugging Face repo id: use owner/name, e.g. "
                         "THUDM/CogVideoX-5b-I2V (letters, digits, '-', '_', '.'). For a model on disk, put its "
                         f"folder in {folder_hint('diffusers')} and pick it as the backbone.")
    return repo
