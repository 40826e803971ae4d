"""Frame timing: which source frames show the moments of a clip resampled to another frame rate."""

from __future__ import annotations

import math

from ..errors import VideoError


def resample_indices(source_fps: float, target_fps: float, source_frames: int, *, start: int = 0,
                     count: int | None = None) -> list[int]:
    """Indices of the source frames nearest to the times ``start / source_fps + k / target_fps``.

    Lowering the rate drops frames evenly, raising it repeats them; equal rates give ``start, start + 1, ...``.
    ``count`` limits the result (default: every target frame before the source ends).
    """
    for name, value in (("source_fps", source_fps), ("target_fps", target_fps)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise VideoError(f"{name} must be a positive number of frames per second, got {value!r}.")
    if source_frames < 0 or start < 0:
        raise VideoError(f"source_frames ({source_frames}) and start ({start}) must be >= 0.")
    step = source_fps / target_fps
    available = max(0, math.floor((source_frames - start - 1) / step + 1e-9) + 1) if source_frames > start else 0
    n = available if count is None else min(count, available)
    # the small epsilon keeps exact halves (2 -> 1 fps on even frames) on the earlier frame, deterministically
    return [min(source_frames - 1, start + int(math.floor(k * step + 0.5 - 1e-9))) for k in range(n)]


def clip_span(source_fps: float, target_fps: float, count: int) -> tuple[int, int]:
    """``(span, advance)`` in source frames for a clip of `count` frames at `target_fps`: `span` is the fewest
    source frames from which `resample_indices` gives all `count` (the clip's last moment lies inside them), and the
    next back-to-back clip starts `advance` frames after the first, so that clips follow each other every
    ``count / target_fps`` seconds."""
    if not isinstance(count, int) or count < 1:
        raise VideoError(f"count must be a whole number of frames >= 1, got {count!r}.")
    step = source_fps / target_fps
    # the last target moment must lie inside the source, which can need a frame or two past the nearest one picked
    span = resample_indices(source_fps, target_fps, math.ceil(count * step) + 2, count=count)[-1] + 1
    while len(resample_indices(source_fps, target_fps, span, count=count)) < count:
        span += 1
    return span, int(math.floor(count * step + 0.5 - 1e-9))
