"""Streaming a source video frame by frame at a reduced size, for ingest's single pass over each source."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from directanimator.errors import VideoError
from directanimator.video import GIF_EXTENSIONS, probe_video, read_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceInfo:
    """What ingest needs to know about a source before decoding it: rate, displayed size, frame count."""

    fps: float
    height: int
    width: int
    frame_count: int | None
    duration: float | None
    # False when the container stores no count (mkv, webm) and `frame_count` is duration x average rate: an estimate
    # that a variable-rate video misses by any amount
    frame_count_exact: bool = False


def source_info(path: Path) -> SourceInfo:
    """Probe `path` (VideoError when it cannot be opened or holds no video)."""
    probe = probe_video(path)
    return SourceInfo(fps=float(probe["fps"]), height=int(probe["height"]), width=int(probe["width"]),
                      frame_count=probe.get("frame_count"), duration=probe.get("duration"),
                      frame_count_exact=bool(probe.get("frame_count_exact")))


def output_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(height, width)`` scaled so that the long side is at most `max_side` (never up), both even (H.264)."""
    scale = min(1.0, max_side / max(height, width))
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def stream_frames(path: Path, size: tuple[int, int], *, threads: int = 0) -> Iterator[np.ndarray]:
    """Yield every frame of `path` as ``[H, W, 3]`` uint8 RGB at `size` ``(height, width)``, display rotation applied.

    Written here rather than with `read_video`, which returns all frames at once and decodes from the beginning
    for every `start`: a long source would be held whole in memory, or decoded once per clip. GIFs (short, with
    per-frame delays that `read_video` already turns into a constant rate) are read whole through `read_video`.
    `threads` decoder threads (0: FFmpeg's choice). VideoError when the file cannot be decoded.
    """
    if path.suffix.lower() in GIF_EXTENSIONS:
        frames = read_video(path, size=size, resize="stretch", dtype=torch.uint8).frames
        yield from frames.numpy()
        return
    import av

    height, width = size
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError(f"video {path}: cannot be opened ({exc}); the file is damaged or not a video.") from exc
    try:
        if not container.streams.video:
            raise VideoError(f"video {path}: holds no video stream.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        for frame in container.decode(stream):
            turns = round(frame.rotation / 90) % 4
            # scale in the stored orientation, then turn (VideoFrame.rotation is counter-clockwise, like np.rot90)
            stored = (width, height) if turns % 2 else (height, width)
            rgb = frame.to_ndarray(format="rgb24", height=stored[0], width=stored[1], interpolation="AREA")
            yield np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
    except av.error.FFmpegError as exc:
        raise VideoError(f"video {path}: decoding failed ({exc}); the file is damaged or truncated.") from exc
    finally:
        container.close()
