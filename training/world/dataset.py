"""torch Datasets over the world: rendered on the fly by index, or read back from an exported folder."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import Dataset

from directanimator.errors import InputError
from directanimator.video import read_image, read_video

from .pairs import WorldConfig, WorldSample, make_sample
from .render import RenderedClip

METADATA = "metadata.jsonl"


def _clip_fields(clip: RenderedClip, prefix: str, *, frames_key: str | None = None) -> dict[str, Tensor]:
    """A rendered clip's frames and ground truth as flat dictionary entries named ``{prefix}{field}``."""
    out = {frames_key or f"{prefix}frames": clip.frames}
    for key, value in (("person_masks", clip.person_masks), ("face_masks", clip.face_masks),
                       ("joints", clip.joints), ("joint_visible", clip.joint_visible),
                       ("face_boxes", clip.face_boxes), ("face_valid", clip.face_valid)):  # fmt: skip
        out[f"{prefix}{key}"] = value
    return out


def sample_to_dict(sample: WorldSample) -> dict:
    """Flatten a WorldSample into the dictionary a DataLoader collates.

    Keys: ``driving`` (input clip, degraded when configured), ``target`` (the clean clip) with its ground truth
    (``person_masks``, ``face_masks``, ``joints``, ``joint_visible``, ``face_boxes``, ``face_valid``),
    ``reference`` ``[1, H, W, 3]`` with ``reference_*`` ground truth, ``identity``; when rendered,
    ``cross_reference`` / ``cross_target`` (+ ``cross_reference_*``, ``cross_target_*``, ``cross_identity``) and
    ``pseudo_driving`` (+ ``pseudo_*``, ``pseudo_identity``).
    """
    out: dict = {"index": sample.index, "driving": sample.driving.frames, "identity": sample.clip.identity}
    out.update(_clip_fields(sample.clip, "", frames_key="target"))
    out.update(_clip_fields(sample.reference, "reference_", frames_key="reference"))
    if sample.cross_target is not None:
        out.update(_clip_fields(sample.cross_reference, "cross_reference_", frames_key="cross_reference"))
        out.update(_clip_fields(sample.cross_target, "cross_target_", frames_key="cross_target"))
        out["cross_identity"] = sample.cross_target.identity
    if sample.pseudo_driving is not None:
        out.update(_clip_fields(sample.pseudo_driving, "pseudo_", frames_key="pseudo_driving"))
        out["pseudo_identity"] = sample.pseudo_driving.identity
    return out


class WorldDataset(Dataset):
    """`length` samples rendered on the fly; item `i` depends only on `(seed, i)` and the config."""

    def __init__(self, length: int, config: WorldConfig = WorldConfig(), *, seed: int = 0):
        if length < 1:
            raise InputError(f"WorldDataset: length={length}; need at least one sample.")
        self.length = int(length)
        self.config = config.validate()
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> WorldSample:
        """The full WorldSample (scenes, poses) behind item `index`."""
        if not 0 <= index < self.length:
            raise IndexError(f"WorldDataset: index {index} out of range 0..{self.length - 1}.")
        return make_sample(index, self.config, seed=self.seed)

    def __getitem__(self, index: int) -> dict:
        return sample_to_dict(self.sample(index))


def metadata_file(path: str | Path) -> Path:
    """``path`` itself when it is a file, else ``path/metadata.jsonl``; raises InputError when absent."""
    path = Path(path)
    file = path if path.is_file() else path / METADATA
    if not file.is_file():
        raise InputError(f"{path}: no metadata file ({file}). Give a dataset folder or its metadata.jsonl "
                         "(docs/data_format.md), e.g. one written by `python -m training synth --out DIR`.")
    return file


def read_metadata(path: str | Path) -> list[dict]:
    """The entries of a metadata file (or of a folder's ``metadata.jsonl``), in order; InputError names a bad line."""
    file = metadata_file(path)
    entries = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{file}, line {number}: not valid JSON ({error.msg}).") from error
        missing = [k for k in ("clip", "fps") if k not in entry]
        if missing:
            raise InputError(f"{file}, line {number}: missing {', '.join(missing)} (see docs/data_format.md).")
        entries.append(entry)
    return entries


class ExportedWorldDataset(Dataset):
    """Items of an exported folder (docs/data_format.md), with the same keys as WorldDataset where present."""

    def __init__(self, root: str | Path, *, split: str | None = None):
        self.root = Path(root)
        self.entries = [e for e in read_metadata(self.root) if split is None or e.get("split") == split]
        if not self.entries:
            raise InputError(f"{self.root / METADATA}: no entries with split {split!r}.")

    def __len__(self) -> int:
        return len(self.entries)

    def _video(self, name: str, fps: float) -> Tensor:
        return read_video(self.root / name, fps=fps).frames

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        fps = float(entry["fps"])
        target = self._video(entry["clip"], fps)
        out: dict = {"index": index, "target": target, "identity": entry.get("identity", "")}
        out["driving"] = self._video(entry["driving"], fps) if "driving" in entry else target
        out["reference"] = read_image(self.root / entry["reference"]) if "reference" in entry else target[:1]
        if "ground_truth" in entry:
            truth = load_file(str(self.root / entry["ground_truth"]))
            for key, value in truth.items():
                if key.endswith("masks") or key.endswith("_mask"):
                    value = value.float() / 255.0
                elif key.endswith("valid") or key.endswith("visible"):
                    value = value.bool()
                out[key] = value
        if "cross_target" in entry:
            out["cross_target"] = self._video(entry["cross_target"], fps)
            out["cross_reference"] = read_image(self.root / entry["cross_reference"])
            out["cross_identity"] = entry.get("cross_identity", "")
        if "pseudo_driving" in entry:
            out["pseudo_driving"] = self._video(entry["pseudo_driving"], fps)
            out["pseudo_identity"] = entry.get("pseudo_identity", "")
        return out

