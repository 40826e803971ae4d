"""Finding a folder's videos and naming them: ids, identities, splits, sidecar captions, resume keys."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from directanimator.errors import InputError
from directanimator.video import GIF_EXTENSIONS, VIDEO_EXTENSIONS

from .config import IngestConfig

SOURCE_EXTENSIONS = VIDEO_EXTENSIONS + GIF_EXTENSIONS
CAPTION_SUFFIX = ".txt"


@dataclass(frozen=True)
class Source:
    """One video of the source folder."""

    path: Path  # absolute
    rel: str  # path inside the source folder, with forward slashes

    @property
    def id(self) -> str:
        """16 hex digits naming this source's files in the output (from its path in the source folder)."""
        return hashlib.sha256(self.rel.encode()).hexdigest()[:16]

    def key(self, config: IngestConfig) -> str:
        """Changes when the file (path, size, modification time) or a setting changes: its result is then redone."""
        stat = self.path.stat()
        material = [str(self.path), stat.st_size, stat.st_mtime_ns, config.key()]
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:24]

    def identity(self, config: IngestConfig, root: Path) -> str:
        """The metadata `identity`: one per source file, or one per parent folder."""
        if config.identity == "folder":
            parent = Path(self.rel).parent
            return root.name if str(parent) == "." else parent.as_posix()
        return f"{self.path.stem}-{self.id[:6]}"

    def split(self, config: IngestConfig) -> str:
        """``"val"`` for a `val_fraction` share of sources (by a hash of the path: stable across runs), else train."""
        return "val" if int(self.id[:8], 16) / 16**8 < config.val_fraction else "train"

    def caption(self) -> str | None:
        """The text of a sidecar ``NAME.txt`` beside ``NAME.mp4``, when there is one and it is not empty."""
        sidecar = self.path.with_suffix(CAPTION_SUFFIX)
        if not sidecar.is_file():
            return None
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
        return text or None


def find_sources(folder: str | Path, *, skip: Path | None = None) -> list[Source]:
    """Every video under `folder` (recursively; hidden files and folders, and `skip`, left out), in path order.

    InputError when `folder` is missing, not a folder, or holds no videos."""
    root = Path(folder)
    if not root.exists():
        raise InputError(f"SOURCE_DIR {root}: no such folder. Give the folder that holds your videos.")
    if not root.is_dir():
        raise InputError(f"SOURCE_DIR {root}: is a file, not a folder. Put the video(s) in a folder and give that.")
    root = root.resolve()
    skip = skip.resolve() if skip is not None else None
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in SOURCE_EXTENSIONS:
            continue
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_file():
            found.append(Source(path=path, rel=rel.as_posix()))
    if not found:
        raise InputError(f"SOURCE_DIR {root}: holds no videos ({', '.join(e[1:] for e in SOURCE_EXTENSIONS)}, "
                         "searched in every subfolder). Point it at the folder that holds them.")
    return found
