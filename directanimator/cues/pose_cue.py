"""Pose cue: the driving person's grey foreground, low-pass filtered in the frequency domain (DESIGN.md 4)."""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from torch import Tensor

from ..errors import CueError
from ..tensors import as_frames
from .boxes import cue_masks
from .segmentation import segment_person
from .types import FilterType

log = logging.getLogger(__name__)

# ITU-R BT.601 luma weights
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Every filter has gain 1/sqrt(2) (-3 dB, half power) at the cutoff; for the Gaussian
# H(rho) = exp(-GAUSSIAN_K * (rho / cutoff)^2) that needs GAUSSIAN_K = ln(2) / 2.
GAUSSIAN_K = math.log(2.0) / 2.0
# Frames filtered per FFT batch: bounds the memory of the complex intermediates.
FFT_CHUNK = 8


def check_filter(*, cutoff: float, filter: str, order: int) -> None:
    """Raise CueError when a low-pass option is out of range."""
    if not 0.0 < cutoff <= 1.0:
        raise CueError(f"cutoff={cutoff}: must be in (0, 1], a fraction of Nyquist. Try 0.12.")
    if filter not in ("gaussian", "ideal", "butterworth"):
        raise CueError(f"filter={filter!r}: use 'gaussian', 'ideal' or 'butterworth'.")
    if filter == "butterworth" and order < 1:
        raise CueError(f"order={order}: the Butterworth order must be at least 1. Try 2.")


def transfer_function(
    height: int, width: int, *, cutoff: float, filter: FilterType = "gaussian", order: int = 2,
    device: torch.device | str | None = None,
) -> Tensor:
    """Radial low-pass gain ``[height, width // 2 + 1]`` on the `torch.fft.rfft2` grid of a ``height x width`` signal.

    ``rho = |f| / 0.5`` is the radial frequency as a fraction of Nyquist (1 on the axes' Nyquist, up to sqrt(2) in
    the corners). At ``rho = cutoff`` every filter has gain 1/sqrt(2): ideal is 1 up to the cutoff and 0 after;
    gaussian is ``exp(-ln2/2 * (rho/cutoff)^2)``; butterworth is ``1 / sqrt(1 + (rho/cutoff)^(2*order))``.
    The gain at DC is exactly 1 for all three.
    """
    check_filter(cutoff=cutoff, filter=filter, order=order)
    fy = torch.fft.fftfreq(height, device=device)
    fx = torch.fft.rfftfreq(width, device=device)
    rho = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5
    ratio = rho / cutoff
    if filter == "gaussian":
        return torch.exp(-GAUSSIAN_K * ratio**2)
    if filter == "butterworth":
        return torch.rsqrt(1.0 + ratio ** (2 * order))
    return (ratio <= 1.0).to(torch.float32)  # ideal


def _twiddle(n: int, count: int, dim: int, ndim: int, device: torch.device) -> Tensor:
    """``exp(-i pi k / 2n)`` for ``k < count``, shaped to broadcast along `dim`."""
    k = torch.arange(count, device=device, dtype=torch.float32)
    shape = [1] * ndim
    shape[dim] = count
    return torch.polar(torch.ones_like(k), -math.pi * k / (2 * n)).view(shape)


def _every_other(x: Tensor, dim: int, start: int) -> Tensor:
    return x[(slice(None),) * dim + (slice(start, None, 2),)]


def _dct(x: Tensor, dim: int) -> Tensor:
    """Unnormalised DCT-II along `dim` (non-negative) with one real FFT of the same length (Makhoul's reordering).

    With ``v`` the even samples followed by the odd ones reversed and ``P_k = exp(-i pi k / 2N) rfft(v)_k``:
    ``X_k = Re P_k`` and ``X_(N-k) = -Im P_k``.
    """
    n = x.shape[dim]
    v = torch.cat([_every_other(x, dim, 0), _every_other(x, dim, 1).flip(dim)], dim=dim)
    spectrum = torch.fft.rfft(v, dim=dim)
    p = spectrum * _twiddle(n, spectrum.shape[dim], dim, x.ndim, x.device)
    return torch.cat([p.real, -p.imag.narrow(dim, 1, (n - 1) // 2).flip(dim)], dim=dim)


def _idct(coefficients: Tensor, dim: int) -> Tensor:
    """Inverse of `_dct` along `dim`: ``P_k = X_k - i X_(N-k)`` (``X_N = 0``), then an inverse real FFT."""
    n = coefficients.shape[dim]
    count = n // 2 + 1
    zero = torch.zeros_like(coefficients.narrow(dim, 0, 1))
    mirrored = torch.cat([zero, coefficients.flip(dim).narrow(dim, 0, count - 1)], dim=dim)
    p = torch.complex(coefficients.narrow(dim, 0, count), -mirrored)
    v = torch.fft.irfft(p * _twiddle(n, count, dim, coefficients.ndim, coefficients.device).conj(), n=n, dim=dim)
    half = (n + 1) // 2
    out = torch.empty_like(v)
    out[(slice(None),) * dim + (slice(0, None, 2),)] = v.narrow(dim, 0, half)
    out[(slice(None),) * dim + (slice(1, None, 2),)] = v.narrow(dim, half, n - half).flip(dim)
    return out


def low_pass(
    x: Tensor, *, cutoff: float = 0.12, filter: FilterType = "gaussian", order: int = 2,
) -> Tensor:
    """Low-pass filter the last two dimensions of `x` ``[..., H, W]`` with a radial transfer function.

    See `transfer_function` for the meaning of `cutoff` (fraction of Nyquist, -3 dB point) and `filter`.
    The filter acts on the image's even (mirrored ``2H x 2W``) extension, so there is no wrap-around between
    opposite borders and the mean is kept exactly; it is computed with a 2-D DCT, which equals the FFT of the
    mirrored image at a quarter of its size. No clamping is applied.
    """
    if x.ndim < 2:
        raise CueError(f"low_pass: expected [..., H, W], got shape {tuple(x.shape)}.")
    height, width = x.shape[-2], x.shape[-1]
    # the DCT bins (k/2H, k/2W) are the first quadrant of the mirrored image's DFT grid
    gain = transfer_function(2 * height, 2 * width, cutoff=cutoff, filter=filter, order=order, device=x.device)
    gain = gain[:height, :width]
    flat = x.reshape(-1, height, width).to(torch.float32)
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], FFT_CHUNK):
        coefficients = _dct(_dct(flat[start:start + FFT_CHUNK], 2), 1) * gain
        out[start:start + FFT_CHUNK] = _idct(_idct(coefficients, 1), 2)
    return out.reshape(x.shape)


def grey(frames: Tensor) -> Tensor:
    """ITU-R BT.601 luma ``[F, H, W]`` of frames ``[F, H, W, 3]``."""
    weights = frames.new_tensor(LUMA_WEIGHTS)
    return (frames * weights).sum(dim=-1)


def pose_cue(
    frames: Tensor,
    *,
    mask: Tensor | None = None,
    cutoff: float = 0.12,
    filter: FilterType = "gaussian",
    order: int = 2,
    bad: Tensor | None = None,
    segmenter: str = "mediapipe",
    sam_checkpoint: str | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> Tensor:
    """Grey foreground of `frames` ``[F, H, W, 3]``, low-pass filtered; returns ``[F, H, W, 3]`` in 0..1.

    `mask` ``[F, H, W]`` (or one ``[H, W]`` for all frames) is the person mask; when None it is computed with
    `segment_person` (`segmenter`: "mediapipe" or "sam" with `sam_checkpoint`). Frames flagged in `bad` ``[F]``
    are blanked to 0. `cutoff` is a fraction of Nyquist (see `transfer_function`): lower removes more appearance.
    `on_frame(i)` is called once per frame.
    """
    frames = as_frames(frames, name="frames")
    check_filter(cutoff=cutoff, filter=filter, order=order)
    count = frames.shape[0]
    if bad is not None:
        bad = torch.as_tensor(bad, device=frames.device).to(torch.bool).reshape(-1)
        if bad.shape[0] != count:
            raise CueError(f"bad: {bad.shape[0]} flags for {count} frames. Give one flag per frame.")
    report = on_frame  # frames are reported once: by the segmenter when it runs, else by the filtering
    if mask is None:
        if segmenter == "given":
            raise CueError("mask: segmenter 'given' needs a person mask. Pass mask, or use 'mediapipe' or 'sam'.")
        mask = segment_person(frames, backend=segmenter, sam_checkpoint=sam_checkpoint, on_frame=on_frame)
        report = None
    masks = cue_masks(mask, frames, name="mask")

    out = torch.empty(count, frames.shape[1], frames.shape[2], device=frames.device)
    for start in range(0, count, FFT_CHUNK):
        stop = min(start + FFT_CHUNK, count)
        foreground = grey(frames[start:stop]) * masks[start:stop]
        out[start:stop] = low_pass(foreground, cutoff=cutoff, filter=filter, order=order).clamp(0.0, 1.0)
        if report is not None:
            for i in range(start, stop):
                report(i)
    if bad is not None and bool(bad.any()):
        out[bad] = 0.0
        log.debug("pose cue: %d bad frames blanked", int(bad.sum()))
    return out[..., None].expand(-1, -1, -1, 3).contiguous()
