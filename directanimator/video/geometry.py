"""Resize geometry: how a picture maps onto a working frame (`resize_plan`, `resize_frames`) and how big that
frame is (`snap_size`).

Sizes are ``(height, width)`` in pixels, like tensor shapes (the CLI spells them ``HEIGHTxWIDTH``). Resize modes,
defined once here and used everywhere:
``"stretch"`` scales each axis to the target independently (the aspect ratio changes);
``"crop"`` scales uniformly to cover the target, then crops the centre (nothing distorted, edges lost);
``"pad"`` scales uniformly to fit inside the target and letterboxes with black (nothing distorted or lost).
Resampling is bilinear with antialiasing, so downscaling does not alias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..tensors import MIN_SIDE_PX, SIZE_MULTIPLE

RESIZE_MODES = ("stretch", "crop", "pad")
ResizeMode = Literal["stretch", "crop", "pad"]
SIZE_RULES = ("aspect", "source")
SizeRule = Literal["aspect", "source"]

# The "aspect" rule: a derived side is at least MIN_SIDE, and the source's long side is scaled down to at most
# MAX_LONG_SIDE when no side is given.
MIN_SIDE = MIN_SIDE_PX
MAX_LONG_SIDE = 1024


@dataclass(frozen=True)
class ResizePlan:
    """How a ``source_size`` image maps onto ``size``: scale to ``scaled_size``, place its top-left at ``offset``.

    Sizes are ``(height, width)``; ``offset`` is ``(top, left)`` in target pixels and is negative for "crop"
    (the scaled image overhangs the target) and non-negative for "pad" (black bars).
    """

    source_size: tuple[int, int]
    size: tuple[int, int]
    mode: str
    scaled_size: tuple[int, int]
    offset: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Scale factors ``(y, x)`` from source pixels to target pixels."""
        return (self.scaled_size[0] / self.source_size[0], self.scaled_size[1] / self.source_size[1])

    @property
    def is_identity(self) -> bool:
        return self.source_size == self.size

    def map_boxes(self, boxes: Tensor) -> Tensor:
        """Map boxes ``[..., 4]`` ``(x0, y0, x1, y1)`` in source pixels to target pixels."""
        sy, sx = self.scale
        top, left = self.offset
        mul = boxes.new_tensor([sx, sy, sx, sy])
        add = boxes.new_tensor([left, top, left, top])
        return boxes * mul + add

    def unmap_boxes(self, boxes: Tensor) -> Tensor:
        """Inverse of :meth:`map_boxes`: target pixels back to source pixels."""
        sy, sx = self.scale
        top, left = self.offset
        mul = boxes.new_tensor([sx, sy, sx, sy])
        add = boxes.new_tensor([left, top, left, top])
        return (boxes - add) / mul


def _check_size(size, name: str, error: type[InputError] = InputError) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
        ok = height >= 1 and width >= 1 and (height, width) == tuple(size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise error(f"{name}: expected (height, width) as two positive whole numbers of pixels, got {size!r}.")
    return height, width


def _check_mode(mode, name: str, error: type[InputError] = InputError) -> str:
    if mode not in RESIZE_MODES:
        raise error(f"{name}: unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}.")
    return mode


def resize_plan(source_size: tuple[int, int], size: tuple[int, int], mode: ResizeMode = "pad") -> ResizePlan:
    """Geometry of resizing a ``source_size`` image to ``size`` (both ``(height, width)``) with ``mode``."""
    h, w = _check_size(source_size, "source_size")
    th, tw = _check_size(size, "size")
    _check_mode(mode, "mode")
    if mode == "stretch" or (h, w) == (th, tw):
        return ResizePlan((h, w), (th, tw), mode, (th, tw), (0, 0))
    if mode == "crop":
        s = max(th / h, tw / w)
        sh, sw = max(th, round(h * s)), max(tw, round(w * s))
        return ResizePlan((h, w), (th, tw), mode, (sh, sw), (-((sh - th) // 2), -((sw - tw) // 2)))
    s = min(th / h, tw / w)
    sh, sw = min(th, max(1, round(h * s))), min(tw, max(1, round(w * s)))
    return ResizePlan((h, w), (th, tw), mode, (sh, sw), ((th - sh) // 2, (tw - sw) // 2))


def resize_frames(frames: Tensor, size: tuple[int, int], mode: ResizeMode = "pad", *, fill: float = 0.0) -> Tensor:
    """Resize frames ``[F, H, W, C]`` (or masks ``[F, H, W]``) to ``size`` ``(height, width)``.

    ``mode`` is "stretch", "crop" (cover, centre crop) or "pad" (fit, letterbox with ``fill`` in 0..1); see
    :func:`resize_plan` for the exact geometry. Float or uint8 input; the result has the input's dtype.
    """
    if not isinstance(frames, Tensor):
        raise InputError(f"frames: expected a torch tensor, got {type(frames).__name__}.")
    masks = frames.ndim == 3
    x = frames[..., None] if masks else frames
    if x.ndim != 4:
        raise InputError(
            f"frames: expected [F, H, W, C] frames or [F, H, W] masks, got shape {tuple(frames.shape)}."
        )
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        raise InputError(f"frames: expected float (0..1) or uint8 values, got dtype {x.dtype}.")
    plan = resize_plan((x.shape[1], x.shape[2]), size, mode)
    if plan.is_identity:
        return frames
    y = x.permute(0, 3, 1, 2)  # channels-last memory: the fast path of antialiased interpolate, uint8 included
    if plan.scaled_size != plan.source_size:
        y = F.interpolate(y, size=plan.scaled_size, mode="bilinear", antialias=True, align_corners=False)
    (th, tw), (top, left), (sh, sw) = plan.size, plan.offset, plan.scaled_size
    if top < 0 or left < 0:
        y = y[:, :, -top : -top + th, -left : -left + tw]
    elif (sh, sw) != (th, tw):
        value = round(fill * 255) if y.dtype == torch.uint8 else fill
        canvas = y.new_full((y.shape[0], y.shape[1], th, tw), value)
        canvas[:, :, top : top + sh, left : left + sw] = y
        y = canvas
    out = y.permute(0, 2, 3, 1).contiguous()
    return out[..., 0] if masks else out



def snap_size(source: tuple[int, int], height: int = 0, width: int = 0, *, rule: SizeRule = "aspect",
              max_long_side: int = MAX_LONG_SIDE, name: str = "video") -> tuple[int, int]:
    """The working ``(height, width)`` for a ``source`` ``(height, width)`` picture: `height` and `width` where
    given (non-zero, taken as they are), the other sides by `rule`:

    - ``"aspect"`` (cue extraction, CLI, pipeline): one side given, the other follows the source's aspect ratio;
      neither, the source scaled down so that its long side is at most `max_long_side` px (never up). Derived
      sides are rounded to the nearest multiple of 16, and at least 64.
    - ``"source"`` (the Driving Video node, which then pads or crops into the size): a side not given is the
      source's own, rounded down to a multiple of 16 (never scaled, never capped); InputError, naming `name`,
      when that leaves less than 16 px.
    """
    src_h, src_w = source
    if rule == "source":
        h = height or src_h // SIZE_MULTIPLE * SIZE_MULTIPLE
        w = width or src_w // SIZE_MULTIPLE * SIZE_MULTIPLE
        if h < SIZE_MULTIPLE or w < SIZE_MULTIPLE:
            raise InputError(f"{name}: the source is {src_w}x{src_h} px, too small for a working size of "
                             f"{SIZE_MULTIPLE} px multiples; use a larger video or set width and height.")
        return h, w
    if rule != "aspect":
        raise InputError(f"rule: unknown size rule {rule!r}; use one of {', '.join(SIZE_RULES)}.")

    def snap(value: float) -> int:
        return max(MIN_SIDE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)

    if height and width:
        return height, width
    if height:
        return height, snap(height * src_w / src_h)
    if width:
        return snap(width * src_h / src_w), width
    scale = min(1.0, max_long_side / max(src_h, src_w))
    return snap(src_h * scale), snap(src_w * scale)
