"""Bilinear resampling of a box of an image onto a rectangle with OpenCV: the CPU path of the face crop and of
the location cue's mask warp.

`sample_box` gives the samples of ``grid_sample(align_corners=False, padding_mode="zeros")`` over the box (see
`face_cue.crop_boxes`), computed by ``cv2.warpAffine``: for a 3-channel face crop about 2.5x faster than torch's
gathers (`face_cue.crop_resize`) on the CPU (for the one-channel mask warp no faster than grid_sample; `resize_box`
is, see `location_cue._warp_masks_fast`). OpenCV rounds each sample position to 1/32 px (INTER_BITS) along each
axis, so a value can differ from the exact bilinear sample by at most 1/32 of the largest difference between
neighbouring pixels (on values in 0..1: at most 0.031 at a hard black/white corner, about 0.02 on uniform noise, a
few 1e-3 on photographs).

`resize_box` is the faster way where a box lies inside the image: ``cv2.resize`` (separable, about 4x faster than
warpAffine for a 100 px face box onto 512x512) of a pixel-aligned window around the box at the box's exact scale,
of which a sub-rectangle is the crop. Its sample positions are those of the box shifted by the window's rounding,
which it accepts only when that is at most 1/64 px along each axis (the largest rounding of warpAffine's), so the
same `VALUE_ERROR` bounds both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# Largest difference between `sample_box` and the exact bilinear sample, as a fraction of the largest difference
# between neighbouring source pixels: half of OpenCV's 1/32 px position step, along each of the two axes.
VALUE_ERROR = 2 * (1.0 / 64.0)
# `resize_box`: the largest accepted shift of the sample positions (source px, per axis), and how many pixels of
# extra window it tries on the leading side to find one within it (about 9 in 10 face boxes on the dance video).
RESIZE_SHIFT = 1.0 / 64.0
RESIZE_MARGIN = 24


def opencv():
    """The cv2 module, or None when OpenCV is not installed (the torch paths are used then)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def sample_box(image: np.ndarray, box: tuple[float, float, float, float], dst: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` ``[H, W]`` or ``[H, W, C]`` float32 over `box` ``(x0, y0, x1, y1)`` (pixel edges)
    written into `dst` ``[h, w]`` / ``[h, w, C]`` float32 (rows contiguous): output pixel ``(i, j)`` reads the image
    at ``(x0 + (j + 0.5) / w * (x1 - x0), y0 + (i + 0.5) / h * (y1 - y0))``; outside the image is 0."""
    cv2 = opencv()
    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = dst.shape[:2]
    step_x, step_y = (x1 - x0) / width, (y1 - y0) / height
    # inverse map, output pixel index -> source pixel index (centres at integers)
    matrix = np.array([[step_x, 0.0, x0 + 0.5 * step_x - 0.5], [0.0, step_y, y0 + 0.5 * step_y - 0.5]])
    out = cv2.warpAffine(image, matrix, (width, height), dst=dst, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if out is not dst and out.ctypes.data != dst.ctypes.data:  # OpenCV could not write into the view
        dst[...] = out
    return dst


@functools.lru_cache(maxsize=256)  # the mask warp asks the same for every frame of a clip
def _resize_axis(start: float, end: float, count: int, size: int,
                 margin: int = RESIZE_MARGIN) -> tuple[int, int, int, int, float] | None:
    """Along one axis of `size` pixels: a window ``[first, stop)`` and an output offset such that resizing the
    window at scale ``count / (end - start)`` (giving `resized` pixels) samples ``[start, end)`` at pixels
    ``offset .. offset + count - 1`` within `RESIZE_SHIFT` px; ``(first, stop, offset, resized, scale)``, or None
    when the box is too close to the image edge or no window within `margin` px is close enough."""
    step = (end - start) / count
    stop = int(np.ceil(end)) + 1  # one pixel beyond the last tap, so OpenCV's edge clamping is never read
    if stop > size:
        return None
    for extra in range(margin):
        first = int(np.floor(start)) - 1 - extra
        if first < 0:
            return None
        offset = int(round((start - first) / step))
        if abs(start - first - offset * step) <= RESIZE_SHIFT:
            resized = int(np.rint((stop - first) / step))  # OpenCV's size for a scale factor: round(width * fx)
            return (first, stop, offset, resized, 1.0 / step) if offset + count <= resized else None
    return None


@dataclass(frozen=True)
class ResizeWindow:
    """How `resize_box` samples a box: ``cv2.resize`` of the source `rows` x `columns` by `scale` ``(fx, fy)``
    gives an image of `size` ``(h, w)`` in which the box's samples start at `offset` ``(y, x)``."""

    rows: slice
    columns: slice
    size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[int, int]


def resize_window(box: tuple[float, float, float, float], height: int, width: int, image_size: tuple[int, ...], *,
                  margin: int = RESIZE_MARGIN) -> ResizeWindow | None:
    """The window by which `resize_box` samples `box` onto ``height x width`` of an image of `image_size`
    ``(H, W, ...)``, or None where it cannot (see `resize_box`)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    along_x = _resize_axis(x0, x1, width, image_size[1], margin)
    along_y = _resize_axis(y0, y1, height, image_size[0], margin)
    if along_x is None or along_y is None:
        return None
    left, right, offset_x, resized_w, scale_x = along_x
    top, bottom, offset_y, resized_h, scale_y = along_y
    return ResizeWindow(slice(top, bottom), slice(left, right), (resized_h, resized_w), (scale_x, scale_y),
                        (offset_y, offset_x))


def resize_into(image: np.ndarray, window: ResizeWindow, dst: np.ndarray) -> bool:
    """``cv2.resize`` of `window` of `image` into `dst` (of ``window.size``, rows may be apart, as a view into a
    wider buffer); False, with `dst` not written, where OpenCV would size the result otherwise (those are not
    the samples meant)."""
    cv2 = opencv()
    fx, fy = window.scale
    out = cv2.resize(image[window.rows, window.columns], (0, 0), dst=dst, fx=fx, fy=fy,
                     interpolation=cv2.INTER_LINEAR)
    if out.shape != dst.shape:
        return False
    if out.ctypes.data != dst.ctypes.data:  # OpenCV could not write into the view
        dst[...] = out
    return True


def resize_box(image: np.ndarray, box: tuple[float, float, float, float], height: int, width: int,
               scratch: list[np.ndarray], *, margin: int = RESIZE_MARGIN) -> np.ndarray | None:
    """`sample_box` of `image` ``[H, W]`` or ``[H, W, C]`` float32 over `box` onto ``[height, width(, C)]`` by
    ``cv2.resize`` (see the module): a view into `scratch` (a list holding one reusable flat float32 buffer, grown
    as needed), or None where the box is not far enough inside the image or no window within `margin` px of it
    aligns (use `sample_box` there)."""
    window = resize_window(box, height, width, image.shape, margin=margin)
    if window is None:
        return None
    shape = (*window.size, *image.shape[2:])
    needed = int(np.prod(shape))
    if not scratch or scratch[0].size < needed:
        scratch[:] = [np.empty(needed, np.float32)]
    resized = scratch[0][:needed].reshape(shape)
    if not resize_into(image, window, resized):
        return None
    offset_y, offset_x = window.offset
    return resized[offset_y:offset_y + height, offset_x:offset_x + width]
