"""Synthetic shapes and measurements for the cue tests: gratings, discs, stick figures, spectra, overlaps."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def pixel_centres(size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``ys [H, 1]`` and ``xs [1, W]`` (pixel (i, j) covers [j, j+1) x [i, i+1))."""
    height, width = size
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    return ys, xs


def grating(period_px: float, size: tuple[int, int] = (128, 128), *, vertical: bool = True) -> Tensor:
    """Stripes ``[H, W]`` in 0..1 with the given period: a clothing-like fine texture."""
    ys, xs = pixel_centres(size)
    coordinate = xs if vertical else ys
    return (0.5 + 0.5 * torch.cos(2 * math.pi * coordinate / period_px)).expand(size).clone()


def stripes(width_px: int, size: tuple[int, int]) -> Tensor:
    """Hard 0/1 stripes ``[H, W]``: `width_px` columns on, `width_px` off."""
    _, xs = pixel_centres(size)
    return ((xs.floor() // width_px) % 2 == 0).float().expand(size).clone()


def disc(radius: float, size: tuple[int, int] = (128, 128), centre: tuple[float, float] | None = None) -> Tensor:
    """A filled disc ``[H, W]`` (1 inside, 0 outside); `centre` is (x, y), default the image centre."""
    ys, xs = pixel_centres(size)
    cx, cy = centre if centre is not None else (size[1] / 2, size[0] / 2)
    return (((xs - cx) ** 2 + (ys - cy) ** 2) <= radius**2).float()


def rectangle(box: tuple[float, float, float, float], size: tuple[int, int]) -> Tensor:
    """A filled box ``[H, W]`` covering the pixels whose centres lie in (x0, y0, x1, y1)."""
    ys, xs = pixel_centres(size)
    x0, y0, x1, y1 = box
    return ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).float()


def figure(size: tuple[int, int], *, top: float, centre_x: float, height: float) -> tuple[Tensor, Tensor]:
    """A stick figure ``[H, W]`` mask standing `height` px tall from `top`, and its face box ``[4]``.

    Head (disc), torso, arms out to +-0.25 height, two legs; its box is
    ``(centre_x - 0.25 h, top, centre_x + 0.25 h, top + h)``, the face box ``(cx - 0.08 h, top, cx + 0.08 h, top + 0.16 h)``.
    """
    h, cx = height, centre_x
    head_r = 0.08 * h
    mask = disc(head_r, size, centre=(cx, top + head_r))
    parts = [
        (cx - 0.12 * h, top + 0.16 * h, cx + 0.12 * h, top + 0.55 * h),  # torso
        (cx - 0.25 * h, top + 0.18 * h, cx + 0.25 * h, top + 0.24 * h),  # arms
        (cx - 0.10 * h, top + 0.55 * h, cx - 0.02 * h, top + h),  # legs
        (cx + 0.02 * h, top + 0.55 * h, cx + 0.10 * h, top + h),
    ]
    for box in parts:
        mask = torch.maximum(mask, rectangle(box, size))
    face = torch.tensor([cx - head_r, top, cx + head_r, top + 2 * head_r])
    return mask, face


def figure_box(*, top: float, centre_x: float, height: float) -> Tensor:
    """The box of `figure` with the same arguments."""
    return torch.tensor([centre_x - 0.25 * height, top, centre_x + 0.25 * height, top + height])


def radial_frequency(size: tuple[int, int]) -> Tensor:
    """``|f|`` as a fraction of Nyquist on the `torch.fft.rfft2` grid ``[H, W // 2 + 1]``."""
    fy = torch.fft.fftfreq(size[0])
    fx = torch.fft.rfftfreq(size[1])
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5


def power_above(image: Tensor, freq: float) -> float:
    """Spectral power of `image` ``[H, W]`` at radial frequencies above `freq` (fraction of Nyquist)."""
    spectrum = torch.fft.rfft2(image.to(torch.float32)).abs() ** 2
    return float(spectrum[radial_frequency(tuple(image.shape[-2:])) > freq].sum())


def iou(a: Tensor, b: Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / max(1, float((a | b).sum()))


def centroid(weights: Tensor) -> tuple[float, float]:
    """Weighted centre (x, y) of ``[H, W]`` weights in pixel coordinates."""
    ys, xs = pixel_centres(tuple(weights.shape))
    total = float(weights.sum())
    return float((weights * xs).sum()) / total, float((weights * ys).sum()) / total


def mass_inside(weights: Tensor, box: Tensor, *, margin: float = 0.0) -> float:
    """Share of the total of ``[H, W]`` `weights` inside `box` grown by `margin` px on every side."""
    x0, y0, x1, y1 = (float(v) for v in box)
    inside = rectangle((x0 - margin, y0 - margin, x1 + margin, y1 + margin), tuple(weights.shape))
    return float((weights * inside).sum()) / max(float(weights.sum()), 1e-12)


DANCE = REAL_DATA / "dance_1080x1920_24fps.mp4"
DANCE_SIZE = (896, 512)  # (height, width) working size of the 1080x1920 portrait dance video


def needs_real_data() -> None:
    """Skip the calling test when ../shared/data/real is absent."""
    if not DANCE.is_file():
        import pytest

        pytest.skip(f"real footage not found at {REAL_DATA} (see ../shared/data/real/SOURCES.md)")


def dance_frames() -> Tensor:
    """Every 3rd frame of the real dance video at 512x896 (96 frames); skips without the footage."""
    needs_real_data()
    from directanimator.video import read_video

    return read_video(DANCE, stride=3, size=DANCE_SIZE, resize="stretch").frames


def real_reference(name: str) -> Tensor:
    """A reference picture of ../shared/data/real at 512x896; skips without the footage."""
    needs_real_data()
    from directanimator.video import read_image

    return read_image(REAL_DATA / name, size=DANCE_SIZE, resize="stretch")


def check_on_frame(run) -> None:
    """`run(frames, on_frame=...)` reports every frame index in order, and an exception raised by `on_frame` (a
    cancelled ComfyUI prompt) stops the run and reaches the caller."""
    seen = []
    run(torch.zeros(3, 64, 64, 3), on_frame=seen.append)
    assert seen == [0, 1, 2]

    class Cancelled(Exception):
        pass

    def cancel_at_second(i: int) -> None:
        if i == 1:
            raise Cancelled

    try:
        run(torch.zeros(4, 64, 64, 3), on_frame=cancel_at_second)
    except Cancelled:
        return
    raise AssertionError("an exception raised by on_frame did not stop the run")
