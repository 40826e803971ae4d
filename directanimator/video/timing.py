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
