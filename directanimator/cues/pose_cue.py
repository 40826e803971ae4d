"""Pose cue: the driving person's grey foreground, low-pass filtered in the frequency domain (DESIGN.md 4)."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import CueError
from ..tensors import as_frames
from .boxes import cue_masks
from .buffers import clip_below_one, clip_unit, empty_buffer
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
# The Gaussian filter is separable; when its exact spatial kernel (see `_gaussian_taps`) is short, a separable
# convolution of the mirrored image computes the same result as the DCT, about 10x faster on the CPU. Taps whose
# magnitudes sum to less than SPATIAL_TAIL are dropped (at most that much error per axis, on values in 0..1);
# kernels longer than SPATIAL_MAX_RADIUS px either side fall back to the DCT. With these, cutoffs from about
# 0.025 to 0.15 of Nyquist (the default 0.12: 12 px) run spatially; higher cutoffs keep a gain well above zero at
# Nyquist, whose kernel decays too slowly, and lower ones have wide kernels.
SPATIAL_TAIL = 1e-7
SPATIAL_MAX_RADIUS = 64
# The pose cue's Gaussian low-pass holds almost nothing above a fraction of Nyquist, so by default it is computed
# on a grid reduced by 2^L (`reduced_plan`): OpenCV's image pyramid down L levels, the rest of the Gaussian there,
# and back up. L is the largest for which the filter's gain at the reduced grid's Nyquist is at most
# REDUCED_MAX_GAIN (the default cutoff 0.12: gain 0.0024 at half resolution, L = 1; cutoffs up to about 0.064:
# L = 2) and the reduced image keeps at least REDUCED_MIN_SIDE px a side. The pyramid's binomial filters are
# Gaussians to within a few 1e-3 of the passband, and their variance is taken off the Gaussian computed on the
# reduced grid, so the result is the full-resolution filter to within about 0.005 on values in 0..1 (measured
# on the real dance video; tests/test_pose_cue.py). Borders: the image is first mirrored by REDUCED_PAD px per
# reduction, the even extension the DCT implies, so the pyramid's own border rule never reaches the picture.
REDUCED_MAX_GAIN = 0.005
REDUCED_MIN_SIDE = 16
REDUCED_PAD = 8  # px of the reduced grid
REDUCED_MAX_LEVELS = 3
# the Gaussian left for the reduced grid must be at least this wide (reduced px^2) to be sampled as taps
REDUCED_MIN_VARIANCE = 0.25
# Variance (px^2 per axis, in the pixels of its input) of the binomial [1 4 6 4 1] / 16 of cv2.pyrDown and
# cv2.pyrUp's interpolation.
PYRAMID_VARIANCE = 1.0


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


def _opencv():
    """The cv2 module, or None when OpenCV is not installed (the torch paths are used then)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


@functools.lru_cache(maxsize=64)
def _gaussian_taps(length: int, cutoff: float) -> np.ndarray | None:
    """The Gaussian low-pass along one axis of `length` samples as symmetric spatial taps ``[2r + 1]`` float32.

    The DCT filter is the circular convolution of the mirrored signal (period ``2 * length``) with the inverse
    DFT of the gain on that grid; the Gaussian gain ``exp(-k (rho/c)^2)`` is the product of one such gain per
    axis, so this kernel, applied along rows and then columns with mirrored borders, is the same filter. Taps
    beyond radius r are dropped (their magnitudes sum to less than SPATIAL_TAIL) and the rest renormalised, so
    the mean is kept. None when r would exceed SPATIAL_MAX_RADIUS or ``length - 1`` (use the DCT).
    """
    freq = np.fft.rfftfreq(2 * length)  # cycles per pixel
    gain = np.exp(-GAUSSIAN_K * (freq / 0.5 / cutoff) ** 2)
    kernel = np.fft.irfft(gain, n=2 * length)  # real, even: kernel[m] == kernel[2 * length - m]
    magnitude = np.abs(kernel[: length + 1])
    magnitude[1:length] *= 2.0  # taps m and -m
    beyond = np.cumsum(magnitude[::-1])[::-1]  # beyond[r] = weight of the taps with |m| >= r
    limit = min(SPATIAL_MAX_RADIUS, length - 1)
    small = np.nonzero(beyond[1 : limit + 2] < SPATIAL_TAIL)[0]
    if small.size == 0:
        return None
    radius = int(small[0])  # taps with |m| > radius carry less than SPATIAL_TAIL
    taps = np.concatenate([kernel[radius:0:-1], kernel[: radius + 1]])
    return (taps / taps.sum()).astype(np.float32)


def spatial_taps(height: int, width: int, *, cutoff: float, filter: FilterType) -> tuple | None:
    """``(row taps, column taps)`` when `low_pass` of a ``height x width`` image runs as a separable spatial
    convolution (Gaussian filter, short exact kernel, OpenCV available), else None (the DCT is used)."""
    if filter != "gaussian" or _opencv() is None:
        return None
    along_x = _gaussian_taps(int(width), float(cutoff))
    along_y = _gaussian_taps(int(height), float(cutoff))
    if along_x is None or along_y is None:
        return None
    return along_x, along_y


def _filter_spatial(image: np.ndarray, taps: tuple, out: np.ndarray | None = None) -> np.ndarray:
    """One ``[H, W]`` float32 image through the separable kernel; borders mirrored with the edge sample repeated
    (``cba|abcd|dcb``), the even extension the DCT implies."""
    cv2 = _opencv()
    along_x, along_y = taps
    return cv2.sepFilter2D(image, cv2.CV_32F, along_x, along_y, dst=out, borderType=cv2.BORDER_REFLECT)


def gaussian_sigma(cutoff: float) -> float:
    """Standard deviation in px of the spatial Gaussian whose transfer function is the "gaussian" filter at
    `cutoff`: ``exp(-ln2/2 (rho/cutoff)^2)`` with ``rho = 2 f`` is ``exp(-2 pi^2 sigma^2 f^2)``."""
    return math.sqrt(math.log(2.0)) / (math.pi * cutoff)


@dataclass(frozen=True)
class ReducedPlan:
    """How `reduced_low_pass` filters an image: `levels` pyramid steps, the Gaussian `taps` applied on the reduced
    grid (both axes), and the mirrored border added first (``(top, bottom, left, right)`` px, so that the padded
    sides divide by ``2^levels``)."""

    levels: int
    taps: np.ndarray
    pad: tuple[int, int, int, int]


@functools.lru_cache(maxsize=64)
def reduced_plan(height: int, width: int, cutoff: float) -> ReducedPlan | None:
    """The reduced-grid plan of the Gaussian low-pass at `cutoff` for ``height x width`` images, or None when no
    reduction qualifies (high cutoffs, tiny images, no OpenCV): see REDUCED_MAX_GAIN."""
    if _opencv() is None:
        return None
    sigma2 = gaussian_sigma(cutoff) ** 2
    levels = 0
    for level in range(1, REDUCED_MAX_LEVELS + 1):
        factor = 2**level
        rho = 1.0 / factor  # the reduced grid's Nyquist, as a fraction of the full grid's
        gain = math.exp(-GAUSSIAN_K * (rho / cutoff) ** 2)
        # variance the pyramid itself adds (down and up, each level), in full-resolution px^2
        pyramid = 2.0 * PYRAMID_VARIANCE * (4**level - 1) / 3.0
        residual = (sigma2 - pyramid) / factor**2  # the Gaussian left for the reduced grid, reduced px^2
        if gain > REDUCED_MAX_GAIN or residual < REDUCED_MIN_VARIANCE or min(height, width) < REDUCED_MIN_SIDE * factor:
            break
        levels = level
    if levels == 0:
        return None
    factor = 2**levels
    sigma = math.sqrt((sigma2 - 2.0 * PYRAMID_VARIANCE * (factor**2 - 1) / 3.0) / factor**2)  # reduced px
    radius = max(1, int(math.ceil(4.0 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    pad = REDUCED_PAD * factor
    return ReducedPlan(levels, (taps / taps.sum()).astype(np.float32),
                       (pad, pad + (-height) % factor, pad, pad + (-width) % factor))


def reduced_low_pass(image: np.ndarray, plan: ReducedPlan, work: "ReducedWork | None" = None) -> np.ndarray:
    """One ``[H, W]`` float32 image through the Gaussian low-pass of `plan` on the reduced grid, back at
    ``H x W`` (a view into a padded buffer of `work`, overwritten by its next call). Within about 0.005 of
    `low_pass` on pose-cue images (values 0..1). `work` (for this image size) keeps the buffers between calls:
    fresh full-size buffers per frame cost more to page in than the filtering."""
    cv2 = _opencv()
    if work is None:
        work = ReducedWork(plan, *image.shape)
    cv2.copyMakeBorder(image, *plan.pad, cv2.BORDER_REFLECT, dst=work.down[0])
    return _reduced_from_padded(plan, work, image.shape)


def _reduced_from_padded(plan: ReducedPlan, work: "ReducedWork", shape: tuple[int, int]) -> np.ndarray:
    """The rest of `reduced_low_pass` once ``work.down[0]`` holds the padded image."""
    cv2 = _opencv()
    top, _, left, _ = plan.pad
    for level in range(plan.levels):
        cv2.pyrDown(work.down[level], dst=work.down[level + 1])
    x = cv2.sepFilter2D(work.down[-1], cv2.CV_32F, plan.taps, plan.taps, dst=work.filtered,
                        borderType=cv2.BORDER_REFLECT)
    for level in range(plan.levels - 1, -1, -1):
        x = cv2.pyrUp(x, dst=work.up[level])
    return x[top:top + shape[0], left:left + shape[1]]


class ReducedWork:
    """The buffers of `reduced_low_pass` for ``height x width`` images: the padded image and each pyramid level,
    down and up."""

    def __init__(self, plan: ReducedPlan, height: int, width: int) -> None:
        top, bottom, left, right = plan.pad
        shape = (height + top + bottom, width + left + right)
        self.down = [np.empty((shape[0] >> level, shape[1] >> level), np.float32) for level in range(plan.levels + 1)]
        self.up = [np.empty_like(level) for level in self.down[:-1]]
        self.filtered = np.empty_like(self.down[-1])
        self.picture = self.down[0][top:top + height, left:left + width]  # where the image goes, inside the border


class _ReducedFilter:
    """`reduced_low_pass` for `_pose_grey_opencv`: the grey foreground is written straight into the padded buffer
    (`input`), whose mirrored border is then filled in place, as copyMakeBorder's BORDER_REFLECT would (one
    frame-sized copy fewer). Every kernel on this path (the pyramid's binomials, the Gaussian taps) is
    non-negative, so a non-negative image stays non-negative."""

    non_negative = True

    def __init__(self, plan: ReducedPlan, height: int, width: int) -> None:
        self.plan, self.shape = plan, (height, width)
        self.work = ReducedWork(plan, height, width)
        self.input = self.work.picture

    def __call__(self) -> np.ndarray:
        padded, (height, width) = self.work.down[0], self.shape
        top, bottom, left, right = self.plan.pad
        rows = slice(top, top + height)
        # BORDER_REFLECT (``cba|abc``): the columns of the picture rows first, then whole rows, corners included
        padded[rows, :left] = padded[rows, left:2 * left][:, ::-1]
        padded[rows, left + width:] = padded[rows, left + width - right:left + width][:, ::-1]
        padded[:top] = padded[top:2 * top][::-1]
        padded[top + height:] = padded[top + height - bottom:top + height][::-1]
        return _reduced_from_padded(self.plan, self.work, self.shape)


class _SpatialFilter:
    """`_filter_spatial` for `_pose_grey_opencv`, reading `input`; its exact Gaussian taps may be negative."""

    non_negative = False

    def __init__(self, taps: tuple, height: int, width: int) -> None:
        self.taps, self.input = taps, np.empty((height, width), np.float32)

    def __call__(self) -> np.ndarray:
        return _filter_spatial(self.input, self.taps)


def low_pass(
    x: Tensor, *, cutoff: float = 0.12, filter: FilterType = "gaussian", order: int = 2,
) -> Tensor:
    """Low-pass filter the last two dimensions of `x` ``[..., H, W]`` with a radial transfer function.

    See `transfer_function` for the meaning of `cutoff` (fraction of Nyquist, -3 dB point) and `filter`.
    The filter acts on the image's even (mirrored ``2H x 2W``) extension, so there is no wrap-around between
    opposite borders and the mean is kept exactly; it is computed with a 2-D DCT, which equals the FFT of the
    mirrored image at a quarter of its size. A Gaussian whose exact spatial kernel is short (the default cutoff
    at any size of 13 px or more) runs as the equivalent separable convolution instead (see `_gaussian_taps`;
    the two agree within 1e-6). No clamping is applied.
    """
    if x.ndim < 2:
        raise CueError(f"low_pass: expected [..., H, W], got shape {tuple(x.shape)}.")
    height, width = x.shape[-2], x.shape[-1]
    check_filter(cutoff=cutoff, filter=filter, order=order)
    cpu_only = x.device.type == "cpu" and not x.requires_grad  # the OpenCV path has no autograd
    taps = spatial_taps(height, width, cutoff=cutoff, filter=filter) if cpu_only else None
    if taps is not None:
        flat = x.reshape(-1, height, width).to(torch.float32).numpy()
        out = np.empty_like(flat)
        for i in range(flat.shape[0]):
            _filter_spatial(flat[i], taps, out[i])
        return torch.from_numpy(out).reshape(x.shape)
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
    full_resolution: bool = False,
) -> Tensor:
    """Grey foreground of `frames` ``[F, H, W, 3]``, low-pass filtered; returns ``[F, H, W, 3]`` in 0..1.

    `mask` ``[F, H, W]`` (or one ``[H, W]`` for all frames) is the person mask; when None it is computed with
    `segment_person` (`segmenter`: "mediapipe" or "sam" with `sam_checkpoint`). Frames flagged in `bad` ``[F]``
    are blanked to 0. `cutoff` is a fraction of Nyquist (see `transfer_function`): lower removes more appearance.
    `on_frame(i)` is called once per frame. On the CPU a Gaussian filter is computed at the reduced resolution
    its cutoff needs (`reduced_plan`; within about 0.005 of the full-resolution filter) unless
    `full_resolution`, which gives `low_pass` exactly.
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
    return _pose_cue(frames, masks, cutoff=cutoff, filter=filter, order=order, bad=bad, on_frame=report,
                     full_resolution=full_resolution)


def _pose_cue(
    frames: Tensor, masks: Tensor, *, cutoff: float, filter: FilterType, order: int, bad: Tensor | None,
    on_frame: Callable[[int], None] | None, out: Tensor | None = None, full_resolution: bool = False,
) -> Tensor:
    """`pose_cue` on checked inputs: frames from `as_frames`, masks ``[F, H, W]`` in 0..1 on their device, `bad`
    ``[F]`` bool or None. `out` ``[F, H, W, 3]`` (contiguous, on the frames' device) receives the cue when given."""
    grey_out = _pose_grey(frames, masks, cutoff=cutoff, filter=filter, order=order, bad=bad, on_frame=on_frame,
                          full_resolution=full_resolution)
    if out is None:
        out = empty_buffer(*grey_out.shape, 3, device=frames.device)
    cv2 = _opencv()
    if cv2 is None or out.device.type != "cpu" or out.requires_grad:
        return out.copy_(grey_out[..., None].expand(-1, -1, -1, 3))
    grey_np, out_np = grey_out.numpy(), out.numpy()
    for i in range(grey_np.shape[0]):  # torch's copy of a stride-0 channel view took 5x longer
        cv2.cvtColor(grey_np[i], cv2.COLOR_GRAY2RGB, dst=out_np[i])
    return out


def _pose_grey(
    frames: Tensor, masks: Tensor, *, cutoff: float, filter: FilterType, order: int, bad: Tensor | None,
    on_frame: Callable[[int], None] | None, out: Tensor | None = None, full_resolution: bool = False,
    luma_in_out: bool = False,
) -> Tensor:
    """The pose cue's one grey channel ``[F, H, W]`` (extract_cues replicates it to three channels as a view, see
    `CueTriplet`); the inputs as for `_pose_cue`, `out` ``[F, H, W]`` contiguous when given. `luma_in_out`: `out`
    holds each frame's luma already (`segmentation.frames_uint8` wrote it while converting the frames), which the
    OpenCV path reads instead of the frames (a third of the bytes) and overwrites with the cue."""
    count, height, width = frames.shape[:3]
    if out is None:
        out = empty_buffer(count, height, width, device=frames.device)
    cpu_only = frames.device.type == "cpu" and not (frames.requires_grad or masks.requires_grad)
    if cpu_only and filter == "gaussian":
        plan = None if full_resolution else reduced_plan(height, width, float(cutoff))
        if plan is not None:
            return _pose_grey_opencv(frames, masks, bad, _ReducedFilter(plan, height, width), on_frame, out,
                                     luma_in_out)
        taps = spatial_taps(height, width, cutoff=cutoff, filter=filter)
        if taps is not None:
            return _pose_grey_opencv(frames, masks, bad, _SpatialFilter(taps, height, width), on_frame, out,
                                     luma_in_out)

    for start in range(0, count, FFT_CHUNK):
        stop = min(start + FFT_CHUNK, count)
        foreground = grey(frames[start:stop]) * masks[start:stop]
        out[start:stop] = low_pass(foreground, cutoff=cutoff, filter=filter, order=order).clamp(0.0, 1.0)
        if on_frame is not None:
            for i in range(start, stop):
                on_frame(i)
    if bad is not None and bool(bad.any()):
        out[bad] = 0.0
        log.debug("pose cue: %d bad frames blanked", int(bad.sum()))
    return out


def _into(result: np.ndarray, dst: np.ndarray) -> None:
    """Make sure an OpenCV call's `result` is in `dst` (a view OpenCV could not write into gets a copy)."""
    if result.ctypes.data != dst.ctypes.data:
        dst[...] = result


def _pose_grey_opencv(frames: Tensor, masks: Tensor, bad: Tensor | None, low_pass: "_ReducedFilter | _SpatialFilter",
                      report: Callable[[int], None] | None, out: Tensor, luma_in_out: bool = False) -> Tensor:
    """`_pose_grey` frame by frame with OpenCV into `out` ``[F, H, W]``: luma (read from `out` when `luma_in_out`),
    mask (into ``low_pass.input``), the low-pass, clamp, each in one pass over a frame-sized buffer (torch's
    temporaries cost more than the filtering). The grey foreground of 0..1 frames and masks is non-negative, so
    after a filter that keeps it so only the upper bound needs clamping."""
    cv2 = _opencv()
    count = frames.shape[0]
    frames_np, masks_np, out_np = frames.numpy(), masks.numpy(), out.numpy()
    skip = [False] * count if bad is None else bad.cpu().tolist()
    luma = low_pass.input
    for i in range(count):
        if skip[i]:
            out_np[i] = 0.0
        else:
            # OpenCV's float RGB -> grey uses the BT.601 weights of LUMA_WEIGHTS
            if luma_in_out:
                _into(cv2.multiply(out_np[i], masks_np[i], dst=luma), luma)
            else:
                _into(cv2.cvtColor(frames_np[i], cv2.COLOR_RGB2GRAY, dst=luma), luma)
                _into(cv2.multiply(luma, masks_np[i], dst=luma), luma)
            if low_pass.non_negative:
                clip_below_one(low_pass(), out_np[i])
            else:
                clip_unit(low_pass(), out_np[i])
        if report is not None:
            report(i)
    if any(skip):
        log.debug("pose cue: %d bad frames blanked", sum(skip))
    return out
