"""Location cue: driving body and face masks moved onto the reference person, then coarsened on a grid (DESIGN.md 4)."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CueError
from .boxes import median_box
from .buffers import clip_below_one, empty_buffer, zeroed_buffer
from .resample import _resize_axis, opencv, resize_into, resize_window
from .types import ANCHORS, CueTriplet, PersonGeometry, Similarity

log = logging.getLogger(__name__)

# A box edge within this many pixels (or this fraction of the image side, if larger) of the image border
# is taken as cut by the border: the person continues outside the picture.
EDGE_TOLERANCE_PX = 2.0
EDGE_TOLERANCE_FRACTION = 0.01
# The face may move the body horizontally by at most this fraction of the reference box width; a larger
# disagreement means one of the face detections is wrong, and the body box is trusted instead.
FACE_SHIFT_LIMIT = 0.25
# Width of the soft edge of a rendered face ellipse, px.
FACE_EDGE_PX = 1.0
# Grid softening with cells of at least this many px runs as two small matrix products on the pooled grid (see
# `_soften_matrix`); smaller cells make those matrices nearly square, and a separable convolution is cheaper.
MATRIX_MIN_CELL = 4
# The record's note on a pose cue warped by the location transform (extraction with align_pose, `align_pose_cue`).
ALIGNED_POSE_NOTE = "pose cue: moved onto the reference by the location transform (align_pose)"
# Driving masks warped per batch in `location_cue`.
WARP_CHUNK = 8
# How far (px) `resample.resize_window` may widen its window to align the mask warp's samples: a wider window costs
# little next to the whole frame, and the mask warp's scale is often near 1, where alignments are sparse.
WARP_RESIZE_MARGIN = 64


def _as_box(box, name: str) -> Tensor:
    box = torch.as_tensor(box, dtype=torch.float32).reshape(-1)
    if box.shape[0] != 4 or not bool(torch.isfinite(box).all()):
        raise CueError(f"{name}: expected one box (x0, y0, x1, y1) in pixels, got {box.tolist()}.")
    if not (box[2] > box[0] and box[3] > box[1]):
        raise CueError(f"{name}: box {box.tolist()} has no area; x1 > x0 and y1 > y0 are needed.")
    return box


def _cut_edges(box: Tensor, area: Tensor) -> dict[str, bool]:
    """Which sides of `box` touch the border of `area` (the picture's content rectangle)."""
    tol_x = max(EDGE_TOLERANCE_PX, EDGE_TOLERANCE_FRACTION * float(area[2] - area[0]))
    tol_y = max(EDGE_TOLERANCE_PX, EDGE_TOLERANCE_FRACTION * float(area[3] - area[1]))
    return {
        "left": float(box[0] - area[0]) <= tol_x,
        "top": float(box[1] - area[1]) <= tol_y,
        "right": float(area[2] - box[2]) <= tol_x,
        "bottom": float(area[3] - box[3]) <= tol_y,
    }


def _face_size(box: Tensor) -> float:
    return math.sqrt(float(box[2] - box[0]) * float(box[3] - box[1]))


def _anchor_offset(d_lo: float, d_hi: float, r_lo: float, r_hi: float, scale: float,
                   cut_lo: bool, cut_hi: bool) -> float:
    """Translation along one axis: align the edge neither picture cuts, or the centres when both or neither are cut."""
    if cut_hi and not cut_lo:
        return r_lo - scale * d_lo
    if cut_lo and not cut_hi:
        return r_hi - scale * d_hi
    return (r_lo + r_hi) / 2 - scale * (d_lo + d_hi) / 2


def _fitted(person: PersonGeometry, name: str) -> tuple[Tensor, Tensor | None, Tensor | None, float | None]:
    """`person` reduced to what the fit compares: its (median) box, face box, content area, and (median) body centre
    column, each checked."""
    boxes = torch.as_tensor(person.boxes, dtype=torch.float32).cpu()
    valid = (torch.ones(boxes.shape[:1], dtype=torch.bool) if person.valid is None or boxes.ndim != 2
             else torch.as_tensor(person.valid).to(torch.bool).cpu())
    if boxes.ndim != 2 or boxes.shape[1] != 4 or valid.shape != boxes.shape[:1]:
        raise CueError(
            f"{name} boxes: expected boxes [F, 4] and valid [F], got {tuple(boxes.shape)} and {tuple(valid.shape)}."
        )
    if not bool(valid.any()):
        raise CueError(f"{name} boxes: no person box in any {name} frame; check the {name} masks.")
    box = _as_box(median_box(boxes, valid), f"{name} box" if boxes.shape[0] == 1 else f"{name} median box")
    face = None if person.face is None else _as_box(torch.as_tensor(person.face).cpu(), f"{name} face")
    area = None if person.area is None else torch.as_tensor(person.area, dtype=torch.float32).cpu()
    centre = None
    if person.centres is not None:
        centres = torch.as_tensor(person.centres, dtype=torch.float32).cpu().reshape(-1)
        if centres.shape != valid.shape:
            raise CueError(f"{name} centres: expected [{valid.shape[0]}] values (one per frame), got "
                           f"{tuple(centres.shape)}.")
        if not bool(torch.isfinite(centres[valid]).all()):
            raise CueError("body centre lines: got a non-finite value; they come from mask_centre_columns.")
        centre = float(centres[valid].quantile(0.5))
    return box, face, area, centre


def anchor_frames(valid: Tensor, anchor: str = "first", *, bad: Tensor | None = None) -> Tensor:
    """The driving frames ``[F]`` (bool) whose person the location transform puts onto the reference.

    ``"first"``: the first frame with a person that is not `bad` (``[F]``, e.g. from `bad_frames`; when every
    person frame is bad, the first person frame). ``"clip"``: every frame with a person (`fit_similarity` then
    takes medians over the clip). `valid` ``[F]`` marks the frames with a person.
    """
    valid = torch.as_tensor(valid).to(torch.bool).reshape(-1).cpu()
    if anchor == "clip":
        return valid
    if anchor not in ANCHORS:
        raise CueError(f"anchor={anchor!r}: use 'first' (the first good driving frame) or 'clip' (the whole clip).")
    good = valid if bad is None else valid & ~torch.as_tensor(bad).to(torch.bool).reshape(-1).cpu()
    pick = good if bool(good.any()) else valid
    chosen = torch.zeros_like(valid)
    if bool(pick.any()):
        chosen[int(torch.nonzero(pick)[0, 0])] = True
    return chosen


def fit_similarity(driving: PersonGeometry, reference: PersonGeometry, *, notes: list | None = None) -> Similarity:
    """One scale + translation for the clip, taking the `driving` person onto the `reference` person.

    The driving boxes (over the frames `driving.valid` picks: `anchor_frames`) are reduced to their median box D;
    R is the reference's box. A side of a box is "cut" when it touches the border of its picture's `area`; with
    no area, nothing counts as cut. Faces are used when both geometries have one.

    Scale: body height ``R_h / D_h`` when no top or bottom is cut; else the face size ratio when both faces are
    known; else the width ratio when no left or right side is cut; else the visible height ratio.
    Translation, horizontally: the body centre lines (`centres`, the median over the fitted frames) when both
    have them: they follow the torso where box edges follow an outstretched arm, also when the arm leaves the
    picture. Else the face centres when both faces are known, else the uncut edge or the box centres.
    Vertically: the uncut edge (e.g. the tops when legs are cut by the bottom edge) or the centres, or the face
    centres when the height could not be used. A face alignment that would move the body by more than a quarter
    of the reference width (height) is ignored. The rule used is appended to `notes`.
    """
    d, d_face, d_area, d_centre_x = _fitted(driving, "driving")
    r, r_face, r_area, r_centre_x = _fitted(reference, "reference")
    faces = d_face is not None and r_face is not None

    none_cut = {"left": False, "top": False, "right": False, "bottom": False}
    d_cut = none_cut if d_area is None else _cut_edges(d, d_area)
    r_cut = none_cut if r_area is None else _cut_edges(r, r_area)
    cut = {side: d_cut[side] or r_cut[side] for side in none_cut}
    vertical_ok = not (cut["top"] or cut["bottom"])
    horizontal_ok = not (cut["left"] or cut["right"])

    d_w, d_h = float(d[2] - d[0]), float(d[3] - d[1])
    r_w, r_h = float(r[2] - r[0]), float(r[3] - r[1])
    if vertical_ok:
        scale, rule = r_h / d_h, "body height"
    elif faces:
        scale, rule = _face_size(r_face) / _face_size(d_face), "face size (a body is cut at the top or bottom)"
    elif horizontal_ok:
        scale, rule = r_w / d_w, "body width (a body is cut at the top or bottom, no face pair)"
    else:
        scale, rule = r_h / d_h, "visible body height (bodies cut on several sides, no face pair)"

    tx = _anchor_offset(float(d[0]), float(d[2]), float(r[0]), float(r[2]), scale, cut["left"], cut["right"])
    ty = _anchor_offset(float(d[1]), float(d[3]), float(r[1]), float(r[3]), scale, cut["top"], cut["bottom"])
    anchor_x, anchor_y = "box edges", "box edges"
    if d_centre_x is not None and r_centre_x is not None:
        tx, anchor_x = r_centre_x - scale * d_centre_x, "body centre lines"
    if faces:
        d_centre = (d_face[:2] + d_face[2:]) / 2
        r_centre = (r_face[:2] + r_face[2:]) / 2
        face_tx = float(r_centre[0] - scale * d_centre[0])
        face_ty = float(r_centre[1] - scale * d_centre[1])
        if anchor_x == "box edges":
            if abs(face_tx - tx) <= FACE_SHIFT_LIMIT * r_w:
                tx, anchor_x = face_tx, "face centres"
            else:
                anchor_x = "box edges (the face pair disagrees with the body boxes; ignored)"
        if not vertical_ok and abs(face_ty - ty) <= FACE_SHIFT_LIMIT * r_h:
            ty, anchor_y = face_ty, "face centres"
    anchor = f"x: {anchor_x}, y: {anchor_y}"
    message = (
        f"location transform: scale {scale:.4f} from {rule}, translation ({tx:.1f}, {ty:.1f}) px from {anchor}; "
        f"cut sides: {[side for side, value in cut.items() if value] or 'none'}"
    )
    log.debug(message)
    if notes is not None:
        notes.append(message)
    return Similarity(scale=float(scale), tx=float(tx), ty=float(ty))


def warp_masks(masks: Tensor, t: Similarity, out_size: tuple[int, int]) -> Tensor:
    """Masks ``[F, H, W]`` in driving pixels resampled to reference pixels ``[F, H', W']`` by `t`; outside is 0.

    A box warps to ``t.apply_boxes(box)``. When shrinking by more than 2x, masks are first area-averaged by the
    integer factor ``floor(1 / scale)`` so that thin parts are not aliased away.
    """
    if masks.ndim != 3:
        raise CueError(f"masks: expected [F, H, W], got shape {tuple(masks.shape)}.")
    if not t.scale > 0:
        raise CueError(f"transform: scale={t.scale} must be positive.")
    out_h, out_w = int(out_size[0]), int(out_size[1])
    masks = masks.to(torch.float32)[:, None]
    factor = max(1, int(math.floor(1.0 / t.scale)))
    if factor > 1:
        pad_h, pad_w = (-masks.shape[-2]) % factor, (-masks.shape[-1]) % factor
        masks = F.avg_pool2d(F.pad(masks, (0, pad_w, 0, pad_h)), factor)
    return _warp_window(masks, t, factor, (out_h, out_w), slice(0, out_h), slice(0, out_w))


def _warp_window(masks: Tensor, t: Similarity, factor: int, out_size: tuple[int, int], rows: slice,
                 columns: slice) -> Tensor:
    """`warp_masks` of ``[F, 1, h, w]`` masks (already area-averaged by `factor`) on the output pixels `rows` x
    `columns` only: exactly those pixels of the whole warp (each is sampled at the same grid position)."""
    out_h, out_w = out_size
    height, width = masks.shape[-2], masks.shape[-1]
    inverse = t.inverse()
    u = (torch.arange(out_w, device=masks.device, dtype=torch.float32) + 0.5)[columns]
    v = (torch.arange(out_h, device=masks.device, dtype=torch.float32) + 0.5)[rows]
    xs = (u * inverse.scale + inverse.tx) / factor  # source position in (pooled) pixels
    ys = (v * inverse.scale + inverse.ty) / factor
    gx = (2.0 * xs / width - 1.0)[None, :].expand(ys.shape[0], xs.shape[0])
    gy = (2.0 * ys / height - 1.0)[:, None].expand(ys.shape[0], xs.shape[0])
    grid = torch.stack([gx, gy], dim=-1)[None].expand(masks.shape[0], -1, -1, -1)
    return F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def _interior(offset: float, step: float, source: int, count: int) -> tuple[int, int]:
    """Output pixels ``[lo, hi)`` along one axis whose samples lie at least ``WARP_RESIZE_MARGIN + 2`` px inside the
    `source` pixels (where `resample.resize_window` can take them); output pixel o covers source edges
    ``offset + o * step`` .. ``offset + (o + 1) * step``."""
    lo = max(0, int(math.ceil((WARP_RESIZE_MARGIN + 2 - offset) / step)))
    hi = min(count, int(math.floor((source - 2 - offset) / step)))
    return lo, max(lo, hi)


@functools.lru_cache(maxsize=64)
def _aligned_interior(offset: float, step: float, source: int, count: int) -> tuple[int, int]:
    """`_interior`, its leading end moved out to the first output pixel from which `resample.resize_window` finds an
    aligned window inside the image (the window needs some pixels before the box's first sample, but rarely the
    whole WARP_RESIZE_MARGIN that `_interior` leaves for it): fewer pixels in the border strips, which the exact
    warp samples several times slower. Along the dance video's fit, the top strip shrinks from 83 rows to 15 and
    the left one from 25 columns to none."""
    lo, hi = _interior(offset, step, source, count)
    first = max(0, int(math.ceil((1.0 - offset) / step)))  # the box's first sample at least 1 px inside
    for candidate in range(first, lo):
        if _resize_axis(offset + candidate * step, offset + hi * step, hi - candidate, source,
                        WARP_RESIZE_MARGIN) is not None:
            return candidate, hi
    return lo, hi


def _warp_masks_fast(masks: Tensor, t: Similarity, out_size: tuple[int, int], *,
                     padded: list[np.ndarray] | None = None) -> Tensor:
    """`warp_masks` of CPU masks ``[F, H, W]`` in 0..1 with OpenCV: the interior by `resample.resize_window` (sample
    positions within 1/64 px of the exact ones, so each value within `resample.VALUE_ERROR` of `warp_masks`), the
    border strips, where the warp reads the zero padding, by `warp_masks`' own sampling (exact). OpenCV resizes
    each frame's window straight into a buffer with room around the frame, of which the result is a view (rows not
    contiguous); `padded`, a list holding that buffer, lets `location_cue` reuse it across its batches."""
    out_h, out_w = out_size
    inverse = t.inverse()
    top, bottom = _aligned_interior(inverse.ty, inverse.scale, masks.shape[1], out_h)
    left, right = _aligned_interior(inverse.tx, inverse.scale, masks.shape[2], out_w)
    if (1.0 / t.scale >= 2.0 or masks.device.type != "cpu" or masks.requires_grad or opencv() is None
            or bottom - top < 1 or right - left < 1):
        return warp_masks(masks, t, out_size)
    source = masks.to(torch.float32).contiguous()
    source_np = source.numpy()
    box = (inverse.tx + left * inverse.scale, inverse.ty + top * inverse.scale,
           inverse.tx + right * inverse.scale, inverse.ty + bottom * inverse.scale)
    window = resize_window(box, bottom - top, right - left, source_np.shape[1:], margin=WARP_RESIZE_MARGIN)
    if window is None:  # no aligned window: the exact warp throughout
        return warp_masks(masks, t, out_size)
    # the resized window lies at (top - offset_y, left - offset_x) in output pixels: the buffer extends the frame
    # wherever the window reaches beyond it; what the window writes outside the interior is the strips' (written
    # below) or the margin's (never read)
    (size_h, size_w), (offset_y, offset_x) = window.size, window.offset
    y0, x0 = top - offset_y, left - offset_x
    pad_top, pad_left = max(0, -y0), max(0, -x0)
    shape = (pad_top + max(out_h, y0 + size_h), pad_left + max(out_w, x0 + size_w))
    padded = [] if padded is None else padded
    if not padded or padded[0].shape[1:] != shape or padded[0].shape[0] < masks.shape[0]:
        padded[:] = [np.empty((masks.shape[0], *shape), np.float32)]
    buffer = padded[0][:masks.shape[0]]
    out_np = buffer[:, pad_top:pad_top + out_h, pad_left:pad_left + out_w]
    rows, columns = slice(pad_top + y0, pad_top + y0 + size_h), slice(pad_left + x0, pad_left + x0 + size_w)
    for i in range(masks.shape[0]):
        if not resize_into(source_np[i], window, buffer[i, rows, columns]):  # not the samples meant
            return warp_masks(masks, t, out_size)
    out = torch.from_numpy(out_np)
    strips = [(slice(0, top), slice(0, out_w)), (slice(bottom, out_h), slice(0, out_w)),
              (slice(top, bottom), slice(0, left)), (slice(top, bottom), slice(right, out_w))]
    for rows, columns in strips:
        if rows.stop > rows.start and columns.stop > columns.start:
            out[:, rows, columns] = _warp_window(source[:, None], t, 1, out_size, rows, columns)
    return out


def aligned_pose(pose: Tensor, t: Similarity) -> Tensor:
    """A grey pose cue ``[F, H, W, 3]`` in driving pixels moved to reference pixels by `t` (same size)."""
    return warp_masks(pose[..., 0], t, tuple(pose.shape[1:3]))[..., None].expand(-1, -1, -1, 3)


def align_pose_cue(triplet: CueTriplet) -> CueTriplet:
    """`triplet` with its pose cue moved onto the reference by its location transform (what
    ``CueConfig.align_pose`` does during extraction); returned unchanged when already aligned."""
    if triplet.record.pose_aligned:
        return triplet
    record = replace(triplet.record, pose_aligned=True,
                     notes=[*triplet.record.notes, ALIGNED_POSE_NOTE])
    return replace(triplet, pose=aligned_pose(triplet.pose, triplet.record.transform).contiguous(), record=record)


def _blur_kernel(sigma: float) -> tuple[int, Tensor]:
    """Radius ``max(1, ceil(3 sigma))`` and the normalised Gaussian taps ``[2r + 1]`` (float32)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return radius, kernel / kernel.sum()


def _opencv():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def gaussian_blur(masks: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[F, H, W]`` with standard deviation `sigma` px; borders replicate."""
    if sigma <= 0:
        return masks
    radius, kernel = _blur_kernel(sigma)
    cv2 = _opencv()
    if cv2 is not None and masks.device.type == "cpu" and not masks.requires_grad:
        # OpenCV's separable filter: ~20x faster than torch's single-channel conv2d on the CPU, same taps
        taps = kernel.numpy()
        source = masks.to(torch.float32).contiguous().numpy()
        out = np.empty_like(source)
        for i in range(source.shape[0]):
            cv2.sepFilter2D(source[i], cv2.CV_32F, taps, taps, dst=out[i], borderType=cv2.BORDER_REPLICATE)
        return torch.from_numpy(out)
    kernel = kernel.to(masks.device)
    x = masks[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


@functools.lru_cache(maxsize=16)
def _soften_matrix(length: int, cell: int, sigma: float, device: str) -> Tensor:
    """``[length, ceil(length / cell)]``: one axis of grid softening as a matrix acting on pooled cells.

    Nearest upsampling by `cell` px (cropped to `length`) followed by the Gaussian blur of `gaussian_blur`
    (radius ``ceil(3 sigma)``, replicated borders) is linear, so it is one matrix: row i holds the blur weights
    of pixel i gathered per cell.
    """
    cells = -(-length // cell)
    pixels = torch.arange(length)
    if sigma <= 0:
        matrix = torch.zeros(length, cells, dtype=torch.float64)
        matrix[pixels, pixels // cell] = 1.0
        return matrix.to(device=device, dtype=torch.float32)
    radius, kernel = _blur_kernel(sigma)
    matrix = torch.zeros(length, cells, dtype=torch.float64)
    for offset in range(-radius, radius + 1):
        source = (pixels + offset).clamp(0, length - 1)  # replicated border
        matrix.index_put_((pixels, source // cell), kernel[offset + radius].double().expand(length), accumulate=True)
    return matrix.to(device=device, dtype=torch.float32)


def _soften_pooled(pooled: Tensor, size: tuple[int, int], cell: int, blur: float, *,
                   out: Tensor | None = None) -> Tensor:
    """Grid softening from cell maxima ``[F, ceil(H / cell), ceil(W / cell)]`` to ``[F, H, W]`` in 0..1 (into
    `out`, contiguous, when given)."""
    height, width = size
    if cell < MATRIX_MIN_CELL:
        x = pooled
        if cell > 1:
            x = pooled.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)[:, :height, :width]
        softened = gaussian_blur(x.contiguous(), blur).clamp(0.0, 1.0)
        return softened if out is None else out.copy_(softened)
    device = str(pooled.device)
    rows = _soften_matrix(height, cell, float(blur), device)
    columns = _soften_matrix(width, cell, float(blur), device)
    if pooled.device.type == "cpu" and not pooled.requires_grad and opencv() is not None:
        # frame by frame, each clamped while it is in cache (the products of a whole clip then a clamp pass over
        # it were two trips through memory); the matrices and cell maxima are non-negative, so only the upper
        # bound needs clamping
        if out is None:
            out = empty_buffer(pooled.shape[0], height, width)
        out_np = out.numpy()
        for i in range(pooled.shape[0]):
            torch.matmul(torch.matmul(rows, pooled[i]), columns.T, out=out[i])
            clip_below_one(out_np[i], out_np[i])
        return out
    # rows first: (H x Hc) @ (Hc x Wc), then @ (Wc x W), about 60% of the multiplications of the other order
    if out is None:
        out = torch.matmul(torch.matmul(rows, pooled), columns.T)
    else:
        torch.matmul(torch.matmul(rows, pooled), columns.T, out=out)
    return out.clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=16)
def _soften_reach(length: int, cell: int, sigma: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """For each cell of `_soften_matrix` ``(length, cell, sigma)``, the first and one past the last pixel its column
    reaches (its nonzero rows)."""
    reached = _soften_matrix(length, cell, sigma, "cpu") != 0  # [length, cells]
    pixels = torch.arange(length)[:, None].expand_as(reached)
    first = torch.where(reached, pixels, length).amin(dim=0)
    stop = torch.where(reached, pixels + 1, 0).amax(dim=0)
    return tuple(first.tolist()), tuple(stop.tolist())


def _soften_sparse(pooled: Tensor, size: tuple[int, int], cell: int, blur: float, *, out: Tensor | None = None,
                   out_zeroed: bool = False) -> Tensor:
    """`_soften_pooled` (cells of MATRIX_MIN_CELL px or more) for cell maxima that are zero outside a small
    window per frame, such as the face ellipse: each frame's two matrix products run on its nonzero cells only,
    into the pixels they reach; everything else is 0, as the full products give (zero cells add exact zeros).
    `out_zeroed`: `out` is all zeros already, and only the reached pixels are written."""
    height, width = size
    count = pooled.shape[0]
    if out is None:
        out, out_zeroed = zeroed_buffer(count, height, width, device=pooled.device, sparse=True), True
    elif not out_zeroed:
        out.zero_()
    device = str(pooled.device)
    rows = _soften_matrix(height, cell, float(blur), device)
    columns = _soften_matrix(width, cell, float(blur), device)
    row_reach, column_reach = _soften_reach(height, cell, float(blur)), _soften_reach(width, cell, float(blur))
    lit_rows, lit_columns = pooled.amax(dim=2) > 0, pooled.amax(dim=1) > 0  # [F, Hc], [F, Wc]
    row_any, column_any = lit_rows.any(dim=1).tolist(), lit_columns.any(dim=1).tolist()
    for i in range(count):
        if not (row_any[i] and column_any[i]):
            continue
        r0, r1 = _lit_span(lit_rows[i])
        c0, c1 = _lit_span(lit_columns[i])
        y0, y1 = min(row_reach[0][r0:r1]), max(row_reach[1][r0:r1])
        x0, x1 = min(column_reach[0][c0:c1]), max(column_reach[1][c0:c1])
        window = torch.matmul(torch.matmul(rows[y0:y1, r0:r1], pooled[i, r0:r1, c0:c1]), columns[x0:x1, c0:c1].T)
        out[i, y0:y1, x0:x1] = window.clamp_(0.0, 1.0)
    return out


def _lit_span(lit: Tensor) -> tuple[int, int]:
    """First and one past the last True index of a 1-D bool tensor with at least one True."""
    index = torch.nonzero(lit)[:, 0]
    return int(index[0]), int(index[-1]) + 1


def _cell_maxima(masks: Tensor, cell: int) -> Tensor:
    """Maximum of ``[F, H, W]`` over `cell` x `cell` px cells from the top-left pixel, partial cells at the right
    and bottom: ``[F, ceil(H / cell), ceil(W / cell)]``, as ``max_pool2d(ceil_mode=True)``. When the cells tile the
    image, as two reductions of a view, rows of cells first (the same values, in a fifth of max_pool2d's time on
    the CPU for 16 px cells at 512x896)."""
    count, height, width = masks.shape
    if height % cell or width % cell or masks.stride(2) != 1:  # whole rows apart (a view into a wider buffer) is fine
        return F.max_pool2d(masks[:, None], kernel_size=cell, stride=cell, ceil_mode=True)[:, 0]
    rows = masks.view(count, height // cell, cell, width).amax(dim=2)  # [F, Hc, W]
    return rows.view(count, height // cell, width // cell, cell).amax(dim=3)


def grid_soften(masks: Tensor, *, cell: int = 16, blur: float = 4.0) -> Tensor:
    """Coarse silhouette of masks ``[F, H, W]``: max over `cell` x `cell` px cells (the grid starts at the top-left
    pixel, partial cells at the right and bottom), nearest upsampling, then a Gaussian blur of sigma `blur` px
    (replicated borders). Detail smaller than a cell vanishes; every foreground pixel keeps its cell lit.

    For cells of 4 px or more the upsampling and blur run as one matrix per axis applied to the cell maxima
    (see `_soften_matrix`): the same linear map, computed without the full-size intermediates.
    """
    if masks.ndim != 3:
        raise CueError(f"masks: expected [F, H, W], got shape {tuple(masks.shape)}.")
    if cell < 1 or blur < 0:
        raise CueError(f"grid_soften: cell={cell} must be >= 1 and blur={blur} >= 0.")
    height, width = masks.shape[-2:]
    x = masks.to(torch.float32)
    if cell > 1:
        x = _cell_maxima(x, cell)
    return _soften_pooled(x, (height, width), cell, blur)


def _ellipse_geometry(boxes: Tensor) -> tuple[Tensor, Tensor]:
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [F, 2]
    radii = ((boxes[:, 2:] - boxes[:, :2]) / 2).clamp(min=1e-3)
    return centre, radii


def _ellipse_value(squared_distance: Tensor, radii: Tensor, valid: Tensor) -> Tensor:
    """The mask value at normalised squared distance ``[F, h, w]`` (1 on the ellipse) with a soft 1 px edge."""
    # (1 - distance) * smaller radius approximates the signed distance to the outline in pixels
    inside_px = (1.0 - torch.sqrt(squared_distance)) * radii.amin(dim=1)[:, None, None]
    masks = (inside_px / FACE_EDGE_PX + 0.5).clamp(0.0, 1.0)
    return masks * valid[:, None, None]


def render_ellipses(boxes: Tensor, valid: Tensor, size: tuple[int, int]) -> Tensor:
    """Filled ellipses inscribed in `boxes` ``[F, 4]`` on ``[F, H, W]`` canvases, with a soft 1 px edge; invalid
    frames are empty."""
    height, width = int(size[0]), int(size[1])
    centre, radii = _ellipse_geometry(boxes)
    valid = torch.as_tensor(valid, device=centre.device).to(torch.bool).reshape(-1)
    xs = torch.arange(width, device=centre.device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=centre.device, dtype=torch.float32) + 0.5
    nx = ((xs[None] - centre[:, 0:1]) / radii[:, 0:1])[:, None, :]  # [F, 1, W]
    ny = ((ys[None] - centre[:, 1:2]) / radii[:, 1:2])[:, :, None]  # [F, H, 1]
    return _ellipse_value(nx**2 + ny**2, radii, valid)


def _cell_minima(values: Tensor, cell: int) -> Tensor:
    """Minimum of ``[F, n]`` over runs of `cell` entries (the last run may be shorter): ``[F, ceil(n / cell)]``."""
    pad = (-values.shape[1]) % cell
    padded = F.pad(values, (0, pad), value=math.inf)
    return padded.view(values.shape[0], -1, cell).amin(dim=2)


def pooled_ellipses(boxes: Tensor, valid: Tensor, size: tuple[int, int], cell: int) -> Tensor:
    """`render_ellipses` max-pooled over `cell` x `cell` px cells (as `grid_soften` pools), ``[F, ceil(H / cell),
    ceil(W / cell)]``, computed without rendering: the value falls with the normalised squared distance
    ``nx^2 + ny^2``, whose minimum over a cell is the sum of the minima of ``nx^2`` over its columns and ``ny^2``
    over its rows, so each cell's maximum is the value at that sum (the same floats as pooling the render)."""
    height, width = int(size[0]), int(size[1])
    centre, radii = _ellipse_geometry(boxes)
    valid = torch.as_tensor(valid, device=centre.device).to(torch.bool).reshape(-1)
    xs = torch.arange(width, device=centre.device, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=centre.device, dtype=torch.float32) + 0.5
    nx2 = _cell_minima(((xs[None] - centre[:, 0:1]) / radii[:, 0:1]) ** 2, cell)  # [F, Wc]
    ny2 = _cell_minima(((ys[None] - centre[:, 1:2]) / radii[:, 1:2]) ** 2, cell)  # [F, Hc]
    return _ellipse_value(ny2[:, :, None] + nx2[:, None, :], radii, valid)


def location_cue(
    body_masks: Tensor,
    face_boxes: Tensor,
    face_valid: Tensor,
    transform: Similarity,
    *,
    out_size: tuple[int, int],
    cell: int = 16,
    blur: float = 4.0,
) -> tuple[Tensor, Tensor]:
    """Body and face location masks ``[F, H, W]`` in reference coordinates (`out_size` = ``(H, W)``).

    `body_masks` ``[F, h, w]`` and the face boxes ``[F, 4]`` (tight face boxes, not the enlarged crop boxes) are
    in driving pixels. The face is an ellipse inscribed in its box, drawn at the box mapped by `transform` (which
    equals warping a rendered mask). Both are then grid-softened (`cell`, `blur`): the results are
    ``grid_soften(warp_masks(...))`` and ``grid_soften(render_ellipses(...))``, computed from the cell maxima
    without holding full-size intermediates. On the CPU with cells > 1 the body masks are warped by OpenCV where
    it can (`_warp_masks_fast`): each value within `resample.VALUE_ERROR` (0.031) of ``warp_masks``, in practice
    within 0.004 after softening (96 frames of the dance video: at most 0.0032 from softening ``warp_masks``, mean
    4e-5).
    """
    if body_masks.ndim != 3:
        raise CueError(f"body masks: expected [F, H, W], got shape {tuple(body_masks.shape)}.")
    count = body_masks.shape[0]
    face_boxes = torch.as_tensor(face_boxes, dtype=torch.float32, device=body_masks.device)
    face_valid = torch.as_tensor(face_valid, device=body_masks.device).to(torch.bool).reshape(-1)
    if face_boxes.shape != (count, 4) or face_valid.shape[0] != count:
        raise CueError(
            f"face boxes: expected [{count}, 4] boxes and [{count}] flags for {count} masks, got "
            f"{tuple(face_boxes.shape)} and {tuple(face_valid.shape)}."
        )
    if cell < 1 or blur < 0:
        raise CueError(f"location cue: cell={cell} must be >= 1 and blur={blur} >= 0.")
    return _location_cue(body_masks, face_boxes, face_valid, transform, out_size=out_size, cell=cell, blur=blur)


def _location_cue(
    body_masks: Tensor, face_boxes: Tensor, face_valid: Tensor, transform: Similarity, *,
    out_size: tuple[int, int], cell: int, blur: float, out: tuple[Tensor, Tensor] | None = None,
    face_zeroed: bool = False,
) -> tuple[Tensor, Tensor]:
    """`location_cue` on checked inputs (boxes ``[F, 4]`` and flags ``[F]`` on the masks' device); `out` (body,
    face) ``[F, H, W]`` contiguous tensors receive the result when given (`face_zeroed`: the face one is all zeros
    already, e.g. from `buffers.zeroed_buffer`, so its zero parts are not written)."""
    count = body_masks.shape[0]
    size = (int(out_size[0]), int(out_size[1]))
    if out is None:
        out = (empty_buffer(count, *size, device=body_masks.device),
               zeroed_buffer(count, *size, device=body_masks.device, sparse=cell >= MATRIX_MIN_CELL))
        face_zeroed = True
    body_out, face_out = out
    if cell > 1:
        # warped and pooled a few frames at a time into one reused buffer: the full-size warped masks are never
        # all held, and fresh memory for each batch would have to be paged in (that costs more here than the warp)
        padded: list[np.ndarray] = []  # OpenCV resizes into it (`_warp_masks_fast`); a short last batch gets its own
        pooled = torch.cat([
            _cell_maxima(_warp_masks_fast(body_masks[start:start + WARP_CHUNK], transform, size, padded=padded), cell)
            for start in range(0, count, WARP_CHUNK)])
    else:
        pooled = warp_masks(body_masks, transform, size)
    body = _soften_pooled(pooled, size, cell, blur, out=body_out)
    # the face ellipse is pooled straight from its geometry (`pooled_ellipses`), never rendered at full size
    face = pooled_ellipses(transform.apply_boxes(face_boxes), face_valid, size, cell)
    if cell >= MATRIX_MIN_CELL:
        return body, _soften_sparse(face, size, cell, blur, out=face_out, out_zeroed=face_zeroed)
    return body, _soften_pooled(face, size, cell, blur, out=face_out)
