"""Writes that leave either the complete new file or nothing (DESIGN.md 8): a temporary name, then a rename; and
output folders that a command replaces only when it wrote them (a marker file says which command did)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from torch import Tensor

from .errors import InputError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (a file or a folder); it replaces `path` when the block ends
    without an error and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def save_safetensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file` through `atomic_path`."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


# --------------------------------------------------------------------------- output folders
def check_output(path: str | Path, *, name: str = "--out", folder: bool = True) -> Path:
    """`path` as a Path, or an InputError when nothing can be written there: an existing file where a `folder` is
    written, an existing folder where a file is, or a file where a parent folder would have to be made."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{name} {path}: is an existing file, but this writes a folder there. Give a folder path "
                         "(a new or an existing folder).")
    if not folder and path.is_dir():
        raise InputError(f"{name} {path}: is an existing folder, but this writes a file there. Give a file path "
                         "(e.g. one inside that folder).")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{name} {path}: {parent} is a file, so no folder can be made there. Choose another path.")
    return path


OUTPUT_MARKER = ".directanimator-output.json"  # {"command": ...}: this folder is that command's to replace


def output_command(folder: str | Path) -> str | None:
    """The command recorded in `folder`'s output marker, or None when it has none (or an unreadable one)."""
    try:
        return str(json.loads((Path(folder) / OUTPUT_MARKER).read_text())["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_output(folder: str | Path, command: str) -> None:
    """Write `folder`'s output marker: `command` may replace this folder and what it holds."""
    with atomic_path(Path(folder) / OUTPUT_MARKER) as tmp:
        tmp.write_text(json.dumps({"command": command}) + "\n")


def holding(*names: str) -> Callable[[Path], bool]:
    """A `legacy` test for the folder functions below: the folder holds every file of `names` (the files a command
    always wrote before folders carried output markers)."""
    return lambda folder: all((Path(folder) / name).is_file() for name in names)


def check_output_folder(folder: str | Path, command: str, *, option: str = "--out",
                        legacy: Callable[[Path], bool] | None = None) -> Path:
    """Raise InputError unless `command` may write into `folder` and replace what it wrote there: the folder is
    absent, empty, or carries `command`'s output marker (or, written before markers existed, `legacy(folder)`
    recognises it). Reads only; call it before any long work."""
    folder = check_output(folder, name=option, folder=True)  # not a file, nor under one
    # the marker's own temporary (another process marking the folder right now) does not make it non-empty
    if not folder.is_dir() or all(p.name.startswith(f".{OUTPUT_MARKER}.") for p in folder.iterdir()):
        return folder
    found = output_command(folder)
    if found == command or (found is None and legacy is not None and legacy(folder)):
        return folder
    whose = f"it was written by `{found}`" if found else f"it holds files that `{command}` did not write"
    raise InputError(f"{option} {folder}: the folder is not empty and {whose}; `{command}` replaces its own output "
                     "only, so that nothing else is deleted. Give a new or empty folder (or delete this one "
                     "yourself if nothing in it is needed).")


def claim_output_folder(folder: str | Path, command: str, *, option: str = "--out",
                        legacy: Callable[[Path], bool] | None = None) -> Path:
    """`check_output_folder`, then create `folder` and mark it as `command`'s output."""
    folder = check_output_folder(folder, command, option=option, legacy=legacy)
    folder.mkdir(parents=True, exist_ok=True)
    if output_command(folder) != command:
        mark_output(folder, command)
    return folder


@contextmanager
def replace_output_folder(folder: str | Path, command: str, *, option: str = "--out",
                          legacy: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a new temporary folder beside `folder` to fill; when the block ends without an error it is marked as
    `command`'s output and takes the place of `folder`. An existing `folder` is checked (`check_output_folder`)
    before and again at the swap, so only a folder this command wrote is ever removed."""
    folder = check_output_folder(folder, command, option=option, legacy=legacy).resolve()  # "." has no name
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = folder.with_name(f".{folder.name}.{tag}.tmp"), folder.with_name(f".{folder.name}.{tag}.old")
    tmp.mkdir()
    try:
        yield tmp
        mark_output(tmp, command)
        check_output_folder(folder, command, option=option, legacy=legacy)  # it may have changed meanwhile
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:
            if old.exists():
                os.replace(old, folder)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
