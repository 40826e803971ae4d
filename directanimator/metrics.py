"""Frame-quality metrics against ground truth: PSNR and SSIM (Gaussian window, Wang et al. 2004), batched in torch.

Frames are ``[F, H, W, 3]`` float 0..1 (DESIGN.md 3). Both metrics are computed per frame and averaged over frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError
from .tensors import as_frames

__all__ = ["colour_difference", "frame_colours", "frame_psnr", "frame_ssim", "moving_difference", "moving_pixels",
           "pixel_difference", "psnr", "ssim", "static_frames", "summary"]

SSIM_WINDOW = 11  # Gaussian window side in px (Wang et al.)
SSIM_SIGMA = 1.5  # its standard deviation in px
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MOVING_THRESHOLD = 0.1  # a pixel moves when some channel of the truth differs from the reference by more


def _pair(prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    prediction = as_frames(prediction, name="prediction", check_sizes=False).float()
    target = as_frames(target, name="target", check_sizes=False).float()
    if prediction.shape != target.shape:
        raise InputError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)}: expected the same [F, H, W, 3] "
            "shape; resize and trim the result to the ground truth's size and length first."
        )
    return prediction, target.to(prediction.device)


def frame_psnr(prediction: Tensor, target: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Per-frame PSNR in dB, ``[F]``; ``inf`` for identical frames."""
    prediction, target = _pair(prediction, target)
    mse = (prediction - target).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse)  # mse 0 -> inf


def psnr(prediction: Tensor, target: Tensor, *, data_range: float = 1.0) -> float:
    """Mean over frames of the per-frame PSNR in dB (``inf`` when every frame is identical)."""
    return float(frame_psnr(prediction, target, data_range=data_range).mean())


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma ** 2))
    return g / g.sum()


def frame_ssim(prediction: Tensor, target: Tensor, *, data_range: float = 1.0, window: int = SSIM_WINDOW,
               sigma: float = SSIM_SIGMA) -> Tensor:
    """Per-frame SSIM ``[F]``: Gaussian-weighted local statistics over valid window positions, per colour
    channel, averaged over positions and channels. Frames smaller than the window use a window of their size."""
    prediction, target = _pair(prediction, target)
    if window < 1 or window % 2 == 0:
        raise InputError(f"window: {window}; expected an odd window side in px (default {SSIM_WINDOW}).")
    f, h, w, c = prediction.shape
    size_h, size_w = min(window, h), min(window, w)
    gh = _gaussian_window(size_h, sigma, prediction.device)
    gw = _gaussian_window(size_w, sigma, prediction.device)
    # float64 moments: E[x^2] - E[x]^2 in float32 leaves ~1e-7 of false variance, visible against C2 ~ 1e-3.
    x = prediction.double().permute(0, 3, 1, 2).reshape(f * c, 1, h, w)
    y = target.double().permute(0, 3, 1, 2).reshape(f * c, 1, h, w)

    def blur(t: Tensor) -> Tensor:  # separable Gaussian, 'valid' positions only
        t = F.conv2d(t, gh.view(1, 1, -1, 1))
        return F.conv2d(t, gw.view(1, 1, 1, -1))

    stats = blur(torch.cat([x, y, x * x, y * y, x * y], dim=0)).chunk(5, dim=0)
    mu_x, mu_y, xx, yy, xy = stats
    var_x = xx - mu_x.square()
    var_y = yy - mu_y.square()
    cov = xy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(f, c, -1).mean(dim=(1, 2)).float()


def ssim(prediction: Tensor, target: Tensor, *, data_range: float = 1.0) -> float:
    """Mean over frames of the per-frame SSIM (1 for identical frames)."""
    return float(frame_ssim(prediction, target, data_range=data_range).mean())


def summary(prediction: Tensor, target: Tensor) -> dict[str, float]:
    """``{"psnr": dB, "ssim": ...}`` of a clip against its ground truth (PSNR may be ``inf``)."""
    return {"psnr": psnr(prediction, target), "ssim": ssim(prediction, target)}


def static_baseline(reference: Tensor, target: Tensor) -> dict[str, float]:
    """`summary` of the static-reference baseline: `reference` ``[1, H, W, 3]``, letterboxed to the size of `target`
    ``[F, h, w, 3]``, repeated over all its frames. An animation must beat this to show it follows the motion."""
    return summary(static_frames(reference, target), target)


def static_frames(reference: Tensor, target: Tensor) -> Tensor:
    """The static-reference baseline itself: `reference` ``[1, H, W, 3]`` letterboxed to the size of `target`
    ``[F, h, w, 3]`` and repeated over its frames (a view, ``[F, h, w, 3]``)."""
    from .video import resize_frames

    reference = as_frames(reference, name="reference", check_sizes=False).float()
    return resize_frames(reference, tuple(target.shape[1:3]), "pad").expand_as(target)


def moving_pixels(static: Tensor, target: Tensor, *, threshold: float = MOVING_THRESHOLD) -> Tensor:
    """``[F, H, W]`` bool: the pixels an animation has to change, where some channel of the truth `target` differs
    from the `static` reference frames by more than `threshold`."""
    static, target = _pair(static, target)
    return (target - static).abs().amax(-1) > threshold


def moving_difference(a: Tensor, b: Tensor, moving: Tensor) -> float:
    """Mean absolute difference (0..1 per channel) of frames `a` and `b` over the `moving` pixels; 0 when none move.

    Whole-frame PSNR rewards a blurred figure at the right place; over the moving pixels a result that does not
    follow the motion stays as far from the truth as the reference is, and blanking its pose cue moves it little.
    """
    a, b = _pair(a, b)
    if not bool(moving.any()):
        return 0.0
    return float((a - b).abs()[moving.to(a.device)].mean())


def frame_colours(frames: Tensor) -> Tensor:
    """``[F, 3]``: the mean colour (R, G, B, 0..1) of each frame of `frames` ``[F, H, W, 3]``."""
    return as_frames(frames, name="frames", check_sizes=False).float().mean(dim=(1, 2))


def colour_difference(a: Tensor, b: Tensor) -> float:
    """Mean colour difference of two renderings of the same frames ``[F, H, W, 3]``: ``mean over frames f and
    channels c of |mean_px a[f, :, :, c] - mean_px b[f, :, :, c]|``, on the 0..1 scale (x255 for 8-bit levels).

    A colour cast or a brightness shift of one rendering shows in full; motion that keeps the frame's colours
    (a figure moving over a plain background) shows little, which `pixel_difference` shows instead.
    """
    a, b = _pair(a, b)
    return float((frame_colours(a) - frame_colours(b)).abs().mean())


def pixel_difference(a: Tensor, b: Tensor) -> float:
    """Mean absolute difference per pixel and channel of two renderings of the same frames ``[F, H, W, 3]`` (0..1)."""
    a, b = _pair(a, b)
    return float((a - b).abs().mean())
