"""ComfyUI's model folder table (its `folder_paths` module) for node tests, with the folders this pack registers."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

import nodes._comfy as comfy_shim

# what nodes/model.py and nodes/cues.py register at import (ComfyUI itself keeps "diffusers" with ["folder"])
PACK_FOLDERS = {"directanimator": {".safetensors"}, "sams": {".pth", ".pt", ".safetensors"}}
# ComfyUI's own file folders the model loader picks from, with ComfyUI's folder_paths.supported_pt_extensions
COMFY_FILE_FOLDERS = ("diffusion_models", "vae", "clip_vision", "text_encoders")
SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


class FolderPaths:
    """ComfyUI's folder_paths as far as a pack sees it: the folder table, each folder's roots, the files in them
    listed as ComfyUI lists them (recursively, relative to the root, filtered by extension)."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = str(models_dir)
        self.folder_names_and_paths = {"diffusers": ([str(models_dir / "diffusers")], ["folder"])}
        for name in COMFY_FILE_FOLDERS:
            self.folder_names_and_paths[name] = ([str(models_dir / name)], set(SUPPORTED_PT_EXTENSIONS))

    def get_folder_paths(self, name: str) -> list[str]:
        return list(self.folder_names_and_paths[name][0])

    def get_filename_list(self, name: str) -> list[str]:
        roots, extensions = self.folder_names_and_paths[name]
        found = []
        for root in roots:
            for folder, _, names in os.walk(root, followlinks=True):
                for file in names:
                    if os.path.splitext(file)[1] in extensions:
                        found.append(os.path.relpath(os.path.join(folder, file), root).replace(os.sep, "/"))
        return sorted(found)


@contextmanager
def comfy_model_folders(models_dir: Path) -> Iterator[Path]:
    """Run the nodes as inside a ComfyUI whose models folder is `models_dir` (its sub-folders made, empty)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(comfy_shim, "_fp", FolderPaths(models_dir))
        comfy_shim.register_model_folder("diffusers", "diffusers", set())
        for name, extensions in PACK_FOLDERS.items():
            comfy_shim.register_model_folder(name, name, extensions)
        for name in ("diffusers", *PACK_FOLDERS, *COMFY_FILE_FOLDERS):
            (models_dir / name).mkdir(parents=True, exist_ok=True)
        yield models_dir
