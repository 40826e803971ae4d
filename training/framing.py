"""Where a clip window sits in its working frame (`data.fit`): letterboxed whole, or cropped around the person.

A `Framing` resizes the source (aspect kept) to `scaled` and takes a `window` of it, which may overhang the scaled
image (the overhang is black, as in a letterbox), then resizes the window to the bucket `size`. Frames, masks,
boxes and points go through the same framing, so ground truth stays exact. Clips are decoded straight to
`scaled` (`read_size`), never at source resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from directanimator.video import resize_frames, resize_plan



@dataclass(frozen=True)
class Framing:
    """Source ``(H, W)`` -> resized to `scaled` -> `window` ``(top, left, height, width)`` of it -> `size`."""

    source: tuple[int, int]
    scaled: tuple[int, int]
    window: tuple[int, int, int, int]
    size: tuple[int, int]

    def place(self, frames: Tensor) -> Tensor:
        """Frames ``[F, h, w, C]`` or masks ``[F, h, w]`` already at `scaled` -> the framed ``size``."""
        top, left, height, width = self.window
        out = _crop_padded(frames, top, left, height, width)
        return out if (height, width) == self.size else resize_frames(out, self.size, "stretch")

    def apply(self, frames: Tensor) -> Tensor:
        """Frames or masks at any resolution of the source (ground-truth masks at source size) -> ``size``."""
        if tuple(frames.shape[1:3]) != self.scaled:
            frames = resize_frames(frames, self.scaled, "stretch")
        return self.place(frames)

    def map_points(self, points: Tensor) -> Tensor:
        """``[..., 2]`` (x, y) source pixels -> output pixels."""
        (h, w), (sh, sw) = self.source, self.scaled
        top, left, height, width = self.window
        th, tw = self.size
        kx, ky = sw / w * tw / width, sh / h * th / height
        return (points - points.new_tensor([left * w / sw, top * h / sh])) * points.new_tensor([kx, ky])

    def map_boxes(self, boxes: Tensor) -> Tensor:
        """``[..., 4]`` (x0, y0, x1, y1) source pixels -> output pixels."""
        return self.map_points(boxes.float().reshape(*boxes.shape[:-1], 2, 2)).reshape(boxes.shape)


def _crop_padded(frames: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    """``frames[:, top:top+height, left:left+width]`` with the part outside the frame black (0)."""
    h, w = frames.shape[1:3]
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return frames[:, top:top + height, left:left + width]
    out = frames.new_zeros((frames.shape[0], height, width, *frames.shape[3:]))
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + height, h), min(left + width, w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = frames[:, y0:y1, x0:x1]
    return out


def read_size(source: tuple[int, int], size: tuple[int, int], fit: str) -> tuple[int, int]:
    """The size to decode a `source`-sized clip at for `fit`: every framing of it is a window of that image."""
    return resize_plan(source, size, "crop" if fit == "crop" else "pad").scaled_size


def letterbox_framing(source: tuple[int, int], size: tuple[int, int]) -> Framing:
    """The whole frame, aspect kept, black bars (exactly `resize_frames(..., "pad")`)."""
    plan = resize_plan(source, size, "pad")
    return Framing(source, plan.scaled_size, (-plan.offset[0], -plan.offset[1], *size), size)


def mask_box(masks: Tensor, threshold: float = 0.5) -> Tensor | None:
    """The box ``(x0, y0, x1, y1)`` in pixels around every pixel above `threshold` in any of `masks` ``[F, H, W]``,
    or None when all are empty."""
    hit = masks > threshold
    rows, cols = hit.any(dim=(0, 2)), hit.any(dim=(0, 1))
    if not bool(rows.any()):
        return None
    ys, xs = torch.nonzero(rows)[:, 0], torch.nonzero(cols)[:, 0]
    return torch.tensor([float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)])


# room kept around the person's box in a crop, each side: the box comes from a mask (the segmenter's, thresholded
# at 0.5 on a 256 px copy) whose soft edge can fall inside thin limbs, so fingertips and hair would touch or leave the
# frame; a fraction of the box, at least MARGIN_PX working-size pixels
MARGIN = 0.04
MARGIN_PX = 2


def _place(centre: float, length: int, frame: int) -> int:
    if length >= frame:  # wider than the frame on this side: centred, black either side (as a letterbox)
        return (frame - length) // 2
    return min(max(round(centre - length / 2), 0), frame - length)


def person_framing(source: tuple[int, int], size: tuple[int, int], person_box: Tensor | None) -> Framing:
    """A crop of the bucket's aspect centred on `person_box` (source pixels: the person over the whole window) grown
    by a margin (`MARGIN`), as large as the frame allows; widened towards a letterbox when the person does not fit,
    so nobody is cut. No box (no person found, a scene clip): the centre crop."""
    plan = resize_plan(source, size, "crop")
    (sh, sw), (th, tw) = plan.scaled_size, size
    if person_box is None:
        return Framing(source, plan.scaled_size, (-plan.offset[0], -plan.offset[1], th, tw), size)
    kx, ky = sw / source[1], sh / source[0]
    bx0, by0, bx1, by1 = (float(v) for v in person_box)
    # (a crop window is the working size in scaled px, so MARGIN_PX is the same in either)
    mx, my = max(MARGIN * (bx1 - bx0) * kx, MARGIN_PX), max(MARGIN * (by1 - by0) * ky, MARGIN_PX)
    x0, y0 = max(0, math.floor(bx0 * kx - mx)), max(0, math.floor(by0 * ky - my))
    x1, y1 = min(sw, math.ceil(bx1 * kx + mx)), min(sh, math.ceil(by1 * ky + my))
    grow = max(1.0, (x1 - x0) / tw, (y1 - y0) / th)
    height, width = max(th, math.ceil(th * grow - 1e-6)), max(tw, math.ceil(tw * grow - 1e-6))
    top, left = _place((y0 + y1) / 2, height, sh), _place((x0 + x1) / 2, width, sw)
    return Framing(source, plan.scaled_size, (top, left, height, width), size)
