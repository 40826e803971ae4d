"""Ingest settings: one record, from defaults, an ``[ingest]`` TOML table and command-line flags, checked once."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from directanimator.errors import InputError
from directanimator.video.writing import X264_PRESETS

from .scenes import DEFAULT_CUT_THRESHOLD

IDENTITY_RULES = ("file", "folder")


@dataclass(frozen=True)
class IngestConfig:
    """How a folder of videos becomes clips.

    The quality thresholds were measured on the real dance video (shared/data/real/dance_1080x1920_24fps.mp4:
    1080x1920, 24 fps, 12 s, one dancer in front of a light wall, static camera, motion blur on fast arms): its 3
    clips of 49 frames at 16 fps, checked on 9 frames each at 512 px, gave exactly one person and a face in every
    checked frame, mask change 0.10 to 0.26, mean luma 0.80 and sharpness 0.11 (0.15 decoded straight at 512 px);
    the same frames side by side twice gave 2 people in every checked frame, one frame repeated 0 motion. Each
    threshold sits well below the dance's values, so that ordinary footage passes and only a clearly failing clip
    is dropped."""

    frames: int = 49  # clip length in frames (4k + 1: the VAE's rule); 49 is CogVideoX's training length
    # 16 fps: CogVideoX 1.5 and Wan train at 16 fps, and one rate for every clip keeps the motion per frame
    # comparable across sources of 24, 30 or 60 fps; 49 frames then cover 3 s, one dance phrase. 0 keeps the
    # source rate, and so does a source slower than `fps` (its frames are never repeated).
    fps: float = 16.0
    min_side: int = 360  # px, short side of the source; below it the 480x720 working size is upscaled > 1.33x
    max_side: int = 720  # px, long side of the written clips (the 480x720 working size's long side); never upscaled
    crf: int = 18  # H.264 quality of the written clips (18: visually lossless)
    preset: str = "veryfast"  # H.264 speed preset: 4x as fast as "medium" at a similar size; encoding was a third of
    #                           the time of an ingest with "medium"
    cut_threshold: float = DEFAULT_CUT_THRESHOLD  # PySceneDetect ContentDetector threshold (its default)
    min_scene_seconds: float = 0.5  # a second cut sooner than this after a cut is ignored (flashes)
    check_frames: int = 9  # frames checked per clip, evenly spaced
    # px, long side of checked frames: mediapipe's full-range face model found the dancer's face in every checked
    # frame at 512 and at 384 px; 512 leaves room for wider shots with smaller faces
    check_side: int = 512
    min_one_person: float = 0.8  # fraction of checked frames with exactly one person
    min_face: float = 0.5  # fraction of checked frames with a face (dancers turn away; the face cue fills gaps)
    min_motion: float = 0.03  # mean change (1 - IoU) of the person mask between checked frames; dance 0.10+, still 0
    min_brightness: float = 0.15  # mean luma 0..1; dance 0.80, the dance at 15 % of its levels 0.12
    # median var(Laplacian) / var(grey) at check_side; dance 0.11 to 0.15 (with its motion blur), the dance under a
    # Gaussian blur of sigma 1.5 px 0.008, of 3 px 0.0015
    min_sharpness: float = 0.02
    min_body_area: float = 0.01  # fraction of the frame a mask blob needs to count as a body
    second_body_ratio: float = 0.25  # ... and its area relative to the largest blob
    val_fraction: float = 0.0  # share of sources (whole sources, by a hash of their path) given split "val"
    identity: str = "file"  # identity label: "file" (one per source) or "folder" (one per parent folder)

    def check(self) -> IngestConfig:
        """Raise InputError naming the first setting that cannot work; return self."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(f"ingest {message}")

        need(self.frames >= 1 and (self.frames - 1) % 4 == 0,
             f"frames={self.frames}: the VAE needs 4k+1 frames (9, 17, 33, 49, ...); use "
             f"{max(1, (self.frames - 1) // 4 * 4 + 1)} or {(self.frames - 1) // 4 * 4 + 5}.")
        need(self.fps >= 0, f"fps={self.fps}: a positive rate in frames per second, or 0 to keep each source's rate.")
        need(self.min_side >= 16, f"min_side={self.min_side}: at least 16 px.")
        need(self.max_side >= 64, f"max_side={self.max_side}: at least 64 px.")
        need(0 <= self.crf <= 51, f"crf={self.crf}: 0 (lossless) to 51 (worst); 18 is visually lossless.")
        need(self.preset in X264_PRESETS, f"preset={self.preset!r}: one of {', '.join(X264_PRESETS)}.")
        need(self.cut_threshold > 0, f"cut_threshold={self.cut_threshold}: positive (PySceneDetect's default is 27).")
        need(self.min_scene_seconds >= 0, f"min_scene_seconds={self.min_scene_seconds}: seconds >= 0.")
        need(self.check_frames >= 2, f"check_frames={self.check_frames}: at least 2 (motion compares frames).")
        need(self.check_side >= 64, f"check_side={self.check_side}: at least 64 px.")
        for name in ("min_one_person", "min_face", "min_motion", "min_brightness", "min_body_area",
                     "second_body_ratio", "val_fraction"):
            value = getattr(self, name)
            need(0.0 <= value <= 1.0, f"{name}={value}: a fraction in [0, 1].")
        need(self.min_sharpness >= 0, f"min_sharpness={self.min_sharpness}: >= 0.")
        need(self.identity in IDENTITY_RULES, f"identity={self.identity!r}: use one of {', '.join(IDENTITY_RULES)}.")
        return self

    def key(self) -> str:
        """A short hash of every setting: a source ingested under another key is ingested again."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self)


def config_table(path: str | Path) -> dict:
    """The ``[ingest]`` table of a TOML file (empty when it has none); InputError for an unreadable file."""
    from training.config import read_config_file

    data = read_config_file(path)
    table = data.get("ingest", {})
    if not isinstance(table, dict):
        raise InputError(f"config {path}: [ingest] must be a table of settings, got {table!r}.")
    return table


def build_ingest_config(table: dict | None = None, **flags) -> IngestConfig:
    """IngestConfig from a raw ``[ingest]`` table (keys and types checked) with `flags` (not None) put over it."""
    from training.config import build_config

    config = build_config(IngestConfig, dict(table or {}), "ingest")
    known = {f.name for f in fields(IngestConfig)}
    unknown = set(flags) - known
    if unknown:
        raise InputError(f"ingest: unknown settings {sorted(unknown)}; known: {', '.join(sorted(known))}.")
    return replace(config, **{k: v for k, v in flags.items() if v is not None}).check()
