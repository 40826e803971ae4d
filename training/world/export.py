"""Writing world samples in the training data format: videos, reference images, ground truth, metadata.jsonl.

See docs/data_format.md. Every file is written atomically; metadata.jsonl is written last, so a folder with a
metadata file is complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from safetensors.torch import save_file
from torch import Tensor

from directanimator.atomic import atomic_path, check_output_folder, claim_output_folder
from directanimator.errors import InputError
from directanimator.video import write_image, write_video

from .dataset import METADATA
from .pairs import WorldConfig, WorldSample, make_sample
from .preview import preview_sheet
from .render import RenderedClip
from .skeleton import JOINT_NAMES

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
FORMATS = ("mp4", "png")
PREVIEW = "preview.png"
WORLD_CONFIG = "world.json"
WORLD_COMMAND = "python -m training synth"  # the output marker of an export folder (directanimator.atomic)


def _is_world_export(folder: Path) -> bool:
    """An export folder written before folders carried output markers: it holds the world's settings."""
    return (folder / WORLD_CONFIG).is_file()


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_clip(path: Path, frames: Tensor, fps: float, fmt: str) -> str:
    """Write frames as ``path.mp4`` or as a folder ``path/`` of PNGs (00000.png, ...); returns the name used."""
    if fmt == "mp4":
        target = path.with_suffix(".mp4")
        write_video(target, frames, fps)
        return target.name

    def folder(tmp: Path) -> None:
        tmp.mkdir()
        for i, frame in enumerate(frames):
            write_image(tmp / f"{i:05d}.png", frame)

    if path.exists():
        shutil.rmtree(path)
    _atomic(path, folder)
    return path.name


def ground_truth(sample: WorldSample) -> dict[str, Tensor]:
    """All ground truth of a sample, keys prefixed by role: ``""`` (the clip), ``reference_``,
    ``cross_reference_``, ``cross_target_``, ``pseudo_``."""
    parts: list[tuple[str, RenderedClip | None]] = [
        ("", sample.clip), ("reference_", sample.reference), ("cross_reference_", sample.cross_reference),
        ("cross_target_", sample.cross_target), ("pseudo_", sample.pseudo_driving),
    ]  # fmt: skip
    out = {}
    for prefix, clip in parts:
        if clip is not None:
            out.update({f"{prefix}{key}": value for key, value in clip.ground_truth().items()})
    return out


def export_sample(root: Path, sample: WorldSample, config: WorldConfig, *, seed: int, fmt: str = "mp4",
                  split: str = "train") -> dict:
    """Write one sample's files under `root`; returns its metadata entry (paths relative to `root`)."""
    if fmt not in FORMATS:
        raise InputError(f"format {fmt!r}: use one of {', '.join(FORMATS)}.")
    stem = f"{sample.index:06d}"
    fps = float(config.fps)
    for folder in ("videos", "refs", "gt"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    entry = {
        "clip": f"videos/{write_clip(root / 'videos' / stem, sample.clip.frames, fps, fmt)}",
        "fps": fps, "identity": sample.clip.identity, "num_frames": len(sample.clip),
        "height": config.height, "width": config.width, "split": split,
    }  # fmt: skip
    write_image(root / "refs" / f"{stem}.png", sample.reference.frames)
    entry["reference"] = f"refs/{stem}.png"
    if sample.driving is not sample.clip:
        (root / "driving").mkdir(exist_ok=True)
        entry["driving"] = f"driving/{write_clip(root / 'driving' / stem, sample.driving.frames, fps, fmt)}"
        entry["degradations"] = {d.name: d.strength for d in config.degradations}
    if sample.pseudo_driving is not None:
        (root / "pseudo").mkdir(exist_ok=True)
        name = write_clip(root / "pseudo" / stem, sample.pseudo_driving.frames, fps, fmt)
        entry["pseudo_driving"] = f"pseudo/{name}"
        entry["pseudo_identity"] = sample.pseudo_driving.identity
    if sample.cross_target is not None:
        (root / "cross").mkdir(exist_ok=True)
        write_image(root / "cross" / f"{stem}_reference.png", sample.cross_reference.frames)
        entry["cross_reference"] = f"cross/{stem}_reference.png"
        entry["cross_target"] = f"cross/{write_clip(root / 'cross' / stem, sample.cross_target.frames, fps, fmt)}"
        entry["cross_identity"] = sample.cross_target.identity
    truth = ground_truth(sample)
    header = {"format_version": FORMAT_VERSION, "joint_names": json.dumps(JOINT_NAMES), "source": "world"}
    _atomic(root / "gt" / f"{stem}.safetensors", lambda tmp: save_file(truth, str(tmp), metadata=header))
    entry["ground_truth"] = f"gt/{stem}.safetensors"
    entry["seed"] = int(seed)
    entry["index"] = int(sample.index)
    return entry


def export_world(root: str | Path, config: WorldConfig, *, clips: int, seed: int = 0, fmt: str = "mp4",
                 val_clips: int = 0, preview_rows: int = 4, overwrite: bool = False,
                 on_clip: Callable[[int], None] | None = None) -> list[dict]:
    """Render `clips` samples and write them under `root` with metadata.jsonl, world.json and preview.png.

    The last `val_clips` clips get ``"split": "val"``. `on_clip(i)` is called after each clip is written.
    """
    root = Path(root)
    config.validate()
    if clips < 1:
        raise InputError(f"clips={clips}: export at least one clip.")
    if not 0 <= val_clips <= clips:
        raise InputError(f"val_clips={val_clips}: must be between 0 and the number of clips ({clips}).")
    if fmt not in FORMATS:
        raise InputError(f"format {fmt!r}: use one of {', '.join(FORMATS)}.")
    # files of an earlier export are overwritten (and PNG clip folders replaced): only in a folder it wrote
    check_output_folder(root, WORLD_COMMAND, legacy=_is_world_export)
    if (root / METADATA).exists() and not overwrite:
        raise InputError(f"{root / METADATA} already exists. Choose another --out folder or pass --overwrite.")
    claim_output_folder(root, WORLD_COMMAND, legacy=_is_world_export)
    entries, previews = [], []
    for index in range(clips):
        sample = make_sample(index, config, seed=seed)
        split = "val" if index >= clips - val_clips else "train"
        entries.append(export_sample(root, sample, config, seed=seed, fmt=fmt, split=split))
        if len(previews) < preview_rows:
            previews.append(sample)
        if on_clip is not None:
            on_clip(index)
    if previews:
        write_image(root / PREVIEW, preview_sheet(previews))
    settings = {"format_version": FORMAT_VERSION, "seed": seed, "clips": clips, "format": fmt,
                "config": {**asdict(config), "degradations": [asdict(d) for d in config.degradations]}}  # fmt: skip
    _atomic(root / WORLD_CONFIG, lambda tmp: tmp.write_text(json.dumps(settings, indent=1)))
    text = "".join(json.dumps(entry) + "\n" for entry in entries)
    _atomic(root / METADATA, lambda tmp: tmp.write_text(text))
    log.info("wrote %d clips to %s", clips, root)
    return entries

