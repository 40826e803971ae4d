"""The one place that touches ComfyUI: progress bars, interruption, model folders.

Everything here degrades to plain behaviour when ComfyUI is absent, so nodes run in tests without it.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator

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


@contextmanager
def comfy_progress(total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``on_step(i)``: advances ComfyUI's progress bar to ``i + 1`` of `total` and honours Cancel."""
    bar = _cu.ProgressBar(max(int(total), 1)) if _cu is not None else None

    def on_step(i: int, preview=None) -> None:
        check_interrupted()
        if bar is not None:
            if preview is not None:
                bar.update_absolute(i + 1, total, preview)
            else:
                bar.update_absolute(i + 1, total)

    yield on_step


def register_model_folder(name: str, default_subdir: str, extensions: set[str]) -> None:
    """Add ``models/<default_subdir>`` to ComfyUI's model folders under `name` (idempotent)."""
    if _fp is None:
        return
    path = os.path.join(_fp.models_dir, default_subdir)
    if name in _fp.folder_names_and_paths:
        paths, exts = _fp.folder_names_and_paths[name]
        if path not in paths:
            paths.append(path)
        exts.update(extensions)
    else:
        _fp.folder_names_and_paths[name] = ([path], set(extensions))


def model_files(name: str) -> list[str]:
    """Files ComfyUI knows in the model folder `name`; empty outside ComfyUI."""
    if _fp is None:
        return []
    try:
        return list(_fp.get_filename_list(name))
    except KeyError:
        return []


def model_path(name: str, filename: str) -> str | None:
    """Full path of `filename` in ComfyUI's model folder `name`, or None."""
    if _fp is None:
        return None
    return _fp.get_full_path(name, filename)
