"""Validation and conversion of frames and masks to the project's tensor conventions.

frames: ``[F, H, W, 3]`` float32 in 0..1 (ComfyUI IMAGE); masks: ``[F, H, W]`` float32 in 0..1 (ComfyUI MASK).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .errors import InputError

MIN_SIDE_PX = 64
MAX_SIDE_PX = 4096
SIZE_MULTIPLE = 16  # working sides: the VAE's factor 8 times the transformer's patch size 2
# Float values above this are not the small overshoot of a bicubic resize (clamped to 1) but 0..255 data passed as
# float: refused, since clamping would turn the picture white.
BYTE_SCALE_LIMIT = 2.0


def _to_tensor(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise InputError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}.")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if t.dtype == torch.bool:
        return t.float()
    if not t.is_floating_point():
        raise InputError(f"{name}: expected float (0..1) or uint8 (0..255) values, got dtype {t.dtype}.")
    return t.float()


def check_size(height: int, width: int, name: str) -> None:
    """Raise when a frame size is outside what the cue detectors and VAE handle."""
    if min(height, width) < MIN_SIDE_PX:
        raise InputError(
            f"{name}: frames are {width}x{height} px; at least {MIN_SIDE_PX} px per side is needed. "
            "Upscale the input or use a larger source."
        )
    if max(height, width) > MAX_SIDE_PX:
        raise InputError(
            f"{name}: frames are {width}x{height} px; at most {MAX_SIDE_PX} px per side is supported. "
            "Resize the input first (e.g. ImageScale in ComfyUI, or --size on the command line)."
        )


def _checked_unit_range(t: Tensor, name: str) -> Tensor:
    """Raise on NaN/inf and on 0..255 data; clamp to 0..1 only when needed; contiguous. Returns `t` itself when nothing changes.

    One read-only pass (``aminmax``; NaN propagates to both ends) instead of ``isfinite`` + ``clamp``, which each
    wrote a full-size copy: every cue stage validates its inputs, and those copies cost ~20 ms per 512x896 frame.
    """
    if t.numel() == 0:
        return t.contiguous()
    lo, hi = (float(v) for v in torch.aminmax(t.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{name}: contains NaN or infinite values.")
    if hi > BYTE_SCALE_LIMIT:
        raise InputError(f"{name}: float values up to {hi:g}, but frames and masks are 0..1 (ComfyUI IMAGE/MASK); "
                         "these look like 0..255. Divide by 255 (or pass uint8 values).")
    if lo < 0.0 or hi > 1.0:
        t = t.clamp(0.0, 1.0)
    return t.contiguous()


def as_frames(x, *, name: str = "frames", check_sizes: bool = True) -> Tensor:
    """Return `x` as ``[F, H, W, 3]`` float32 in 0..1 (values outside are clamped; NaN or inf raise).

    Accepts ``[H, W, C]`` (one frame) or ``[F, H, W, C]`` with C = 3, 1 (grey, replicated) or 4 (RGBA,
    composited onto black), float 0..1 or uint8. ``[F, H, W]`` is read as grey frames. A float32 contiguous
    ``[F, H, W, 3]`` tensor already in 0..1 is returned as is (not copied): do not modify the result in place.
    """
    t = _to_tensor(x, name)
    if t.ndim == 2:
        t = t[None, ..., None]
    elif t.ndim == 3:
        t = t[None] if t.shape[-1] in (1, 3, 4) else t[..., None]
    if t.ndim != 4:
        raise InputError(f"{name}: expected frames of shape [F, H, W, 3], got shape {tuple(x.shape)}.")
    channels = t.shape[-1]
    if channels == 1:
        t = t.expand(-1, -1, -1, 3)
    elif channels == 4:
        t = t[..., :3] * t[..., 3:4]
    elif channels != 3:
        raise InputError(
            f"{name}: expected 3 colour channels last ([F, H, W, 3]), got shape {tuple(t.shape)}. "
            "Channels-first tensors must be permuted to channels-last."
        )
    if t.shape[0] == 0:
        raise InputError(f"{name}: the video has no frames.")
    if check_sizes:
        check_size(t.shape[1], t.shape[2], name)
    return _checked_unit_range(t, name)


def as_masks(x, *, like: Tensor | None = None, name: str = "mask") -> Tensor:
    """Return `x` as ``[F, H, W]`` float32 in 0..1 (clamped; NaN or inf raise), matching `like` (frames
    ``[F, H, W, 3]``) when given.

    Accepts ``[H, W]``, ``[F, H, W]`` or ``[F, H, W, 1]``; a single mask is repeated over all frames of `like`.
    Like `as_frames`, a float32 contiguous ``[F, H, W]`` tensor in 0..1 is returned as is, not copied.
    """
    t = _to_tensor(x, name)
    if t.ndim == 4 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"{name}: expected masks of shape [F, H, W], got shape {tuple(x.shape)}.")
    if like is not None:
        frames, height, width = like.shape[0], like.shape[1], like.shape[2]
        if tuple(t.shape[1:]) != (height, width):
            raise InputError(
                f"{name}: masks are {t.shape[2]}x{t.shape[1]} px but the frames are {width}x{height} px. "
                "Resize the mask to the frame size (e.g. a mask resize node) or pass frames of the mask's size."
            )
        if t.shape[0] == 1 and frames > 1:
            t = t.expand(frames, -1, -1)
        elif t.shape[0] != frames:
            raise InputError(
                f"{name}: {t.shape[0]} masks for {frames} frames. Give one mask per frame, or a single mask."
            )
    return _checked_unit_range(t, name)
