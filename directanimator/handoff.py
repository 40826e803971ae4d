"""Colour consistency at context-window handoff: how far consecutive windows disagree on the frames they share.

Long videos are sampled in overlapping context windows (`directanimator.sampling`); at every step each window
predicts its frames and the predictions are blended with ramped weights. Where two windows overlap, each has its
own estimate of the shared frames; when they disagree in colour, the blend hides the seam but the clip's colour
moves from one window's version to the other's over the overlap (users see it as colour drift between windows).

`window_handoff` samples exactly as `sample_latents` does and keeps each window's own clean estimate at the last
step (the mean over `samples`, as the result is). Each window's estimate is decoded alone, as the clip it is
(reference frame dropped), and each video latent frame is rendered as the mean of the pixel frames it decodes to
(`latent_frame_images`: the first latent of a clip decodes to one frame, the others to `temporal_compression`).
For consecutive windows A = [a0, a1) and B = [b0, b1) with b0 < a1, the shared latent frames [b0, a1) are
compared: `metrics.colour_difference` (mean colour per frame, mean |difference| over frames and channels) and
`metrics.pixel_difference` (mean |difference| per pixel).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .conditioning import Conditioning, using
from .errors import InputError
from .metrics import colour_difference, pixel_difference
from .sampling import WindowEstimate, sample_latents
from .vae_io import decode_latents, temporal_compression

log = logging.getLogger(__name__)

REFERENCE_FRAMES = 1  # the leading reference latent of every window


@dataclass(frozen=True)
class Handoff:
    """Consecutive windows `left` and `right` (indices into `spans`) and their disagreement on the shared frames."""

    left: int
    right: int
    shared: tuple[int, int]  # [start, end) in video latent frames
    colour: float  # metrics.colour_difference of the two renderings of the shared frames, 0..1
    pixel: float  # metrics.pixel_difference, 0..1


@dataclass
class HandoffReport:
    """What `window_handoff` measured; `latents` is the sampled result (``[1, 1 + N, C, h, w]``, as from
    `sample_latents`), so the caller can decode it without sampling again."""

    spans: tuple[tuple[int, int], ...]
    handoffs: list[Handoff] = field(default_factory=list)
    latents: Tensor | None = None

    @property
    def mean_colour(self) -> float:
        """Mean of the handoffs' colour differences (0 with one window)."""
        return sum(h.colour for h in self.handoffs) / len(self.handoffs) if self.handoffs else 0.0

    @property
    def max_colour(self) -> float:
        return max((h.colour for h in self.handoffs), default=0.0)

    @property
    def mean_pixel(self) -> float:
        return sum(h.pixel for h in self.handoffs) / len(self.handoffs) if self.handoffs else 0.0


def latent_frame_images(model, latents: Tensor, *, tiling: bool | None = None) -> Tensor:
    """``[N, H, W, 3]`` 0..1: latents ``[1, 1 + N, C, h, w]`` (reference first, diffusion scale) decoded as one clip
    with the reference dropped, each video latent frame rendered as the mean of the pixel frames it decodes to
    (the first: frame 0; latent j >= 1: frames ``c (j - 1) + 1 .. c j`` with c the temporal compression)."""
    if latents.ndim != 5 or latents.shape[0] != 1 or latents.shape[1] <= REFERENCE_FRAMES:
        raise InputError(f"latents: expected [1, 1 + N, C, h, w] with N >= 1 video latent frames, got "
                         f"{tuple(latents.shape)}.")
    with using(model, "vae") as vae:
        frames = decode_latents(vae, latents[:, REFERENCE_FRAMES:], tiling=tiling)
        compression = temporal_compression(vae)
    n = latents.shape[1] - REFERENCE_FRAMES
    images = [frames[:1].mean(0)] + [frames[compression * (j - 1) + 1: compression * j + 1].mean(0)
                                     for j in range(1, n)]
    return torch.stack(images)


def window_handoff(model, cond: Conditioning, *, tiling: bool | None = None, **sampling) -> HandoffReport:
    """Sample `cond` with `sampling` (`sample_latents` keywords: steps, guidance, seed, window, overlap, samples,
    ...) and measure every handoff between consecutive windows (module docstring). With one window the report
    has no handoffs. `tiling`: spatial VAE tiling of the decodes."""
    if "on_window" in sampling:
        raise InputError("window_handoff: on_window is its own; leave it out of the sampling options.")
    last: dict[int, Tensor] = {}
    counts: dict[int, int] = {}
    spans: dict[int, tuple[int, int]] = {}

    def keep(estimate: WindowEstimate) -> None:
        if estimate.step != estimate.steps - 1:
            return
        clean = estimate.clean.detach().float().cpu()
        last[estimate.window] = clean if estimate.window not in last else last[estimate.window] + clean
        counts[estimate.window] = counts.get(estimate.window, 0) + 1
        spans[estimate.window] = estimate.span

    latents = sample_latents(model, cond, on_window=keep, **sampling)
    order = sorted(spans)
    report = HandoffReport(spans=tuple(spans[k] for k in order), latents=latents)
    images = {}
    for k in order:
        images[k] = latent_frame_images(model, last[k] / counts[k], tiling=tiling)
    for left, right in zip(order, order[1:]):
        (a0, a1), (b0, _) = spans[left], spans[right]
        if b0 >= a1:
            continue  # windows that do not overlap share no frames
        a = images[left][b0 - a0: a1 - a0]
        b = images[right][: a1 - b0]
        report.handoffs.append(Handoff(left=left, right=right, shared=(b0, a1), colour=colour_difference(a, b),
                                       pixel=pixel_difference(a, b)))
    if report.handoffs:
        log.info("window handoff: mean colour difference %.4f (max %.4f) over %d handoffs", report.mean_colour,
                 report.max_colour, len(report.handoffs))
    return report
