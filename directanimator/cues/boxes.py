"""Boxes from masks, face-track smoothing and gap filling, squared crop boxes, clip medians.

Boxes are ``(x0, y0, x1, y1)`` in continuous pixel coordinates: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``,
so a mask whose foreground spans columns 10..19 has ``x0 = 10`` and ``x1 = 20``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CueError, InputError
from ..tensors import as_masks
from .resample import opencv
from .types import FaceTrack

# Temporal smoothing averages a neighbour's face box only when its centre lies within this fraction of the
# box side from the frame's own: detector jitter is a few percent, real motion between kept frames can be more.
MAX_SMOOTH_SHIFT = 0.25
# A mask pixel belongs to the person box when its value is above this (`mask_boxes`, and the segmentation's boxes
# taken on the way, `segmentation._clip_mask`).
BOX_THRESHOLD = 0.5


def cue_masks(mask, frames: Tensor, *, name: str = "mask") -> Tensor:
    """`mask` as ``[F, H, W]`` matching `frames` ``[F, H, W, 3]``; a size or count mismatch raises CueError."""
    try:
        return as_masks(mask, like=frames, name=name).to(frames.device)
    except CueError:
        raise
    except InputError as error:
        raise CueError(str(error)) from error


def mask_boxes(masks: Tensor, *, threshold: float = BOX_THRESHOLD) -> tuple[Tensor, Tensor]:
    """Tight box of the pixels above `threshold` in each mask ``[F, H, W]``.

    Returns ``boxes [F, 4]`` (pixel edges, see the module docstring) and ``valid [F]`` bool; empty masks give
    a zero box and ``valid = False``.
    """
    if masks.ndim != 3:
        raise CueError(f"masks: expected [F, H, W], got shape {tuple(masks.shape)}.")
    if (masks.device.type == "cpu" and masks.dtype == torch.float32 and not masks.requires_grad
            and opencv() is not None):
        return _mask_boxes_opencv(masks, threshold)
    # a row or column holds foreground when its maximum is above the threshold (no full-size boolean mask)
    rows = masks.amax(dim=2) > threshold  # [F, H]
    cols = masks.amax(dim=1) > threshold  # [F, W]
    valid = rows.any(dim=1)
    height, width = rows.shape[1], cols.shape[1]
    # argmax of a 0/1 tensor returns the first maximum: the first foreground row/column
    y0 = rows.to(torch.uint8).argmax(dim=1)
    y1 = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x0 = cols.to(torch.uint8).argmax(dim=1)
    x1 = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    boxes = torch.where(valid[:, None], boxes, torch.zeros_like(boxes))
    return boxes, valid


def _mask_boxes_opencv(masks: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """`mask_boxes` of CPU float32 masks frame by frame: OpenCV's comparison into one reused byte image and its
    bounding rectangle, the same boxes in half the time of the two torch reductions (one read of each mask)."""
    cv2 = opencv()
    count, height, width = masks.shape
    source = masks.detach().contiguous().numpy()
    above = np.empty((height, width), np.uint8)
    boxes = np.zeros((count, 4), np.float32)
    for i in range(count):
        cv2.compare(source[i], float(threshold), cv2.CMP_GT, dst=above)
        boxes[i] = above_box(above)
    return boxes_with_validity(boxes)


def above_box(above: np.ndarray) -> tuple[int, int, int, int]:
    """The box ``(x0, y0, x1, y1)`` of the non-zero pixels of a uint8 image (OpenCV's bounding rectangle), zeros
    when there are none."""
    x, y, w, h = opencv().boundingRect(above)
    return (x, y, x + w, y + h) if w > 0 and h > 0 else (0, 0, 0, 0)


def boxes_with_validity(boxes: np.ndarray) -> tuple[Tensor, Tensor]:
    """`mask_boxes`' result from its boxes ``[F, 4]`` float32 (zeros for an empty mask)."""
    boxes = torch.from_numpy(boxes)
    return boxes, boxes[:, 2] > boxes[:, 0]


def mask_centre_columns(masks: Tensor) -> tuple[Tensor, Tensor]:
    """The x ``[F]`` (px, continuous coordinates) that splits each mask's ``[F, H, W]`` mass into equal left and
    right halves, and ``valid [F]`` (a non-empty mask).

    This is the body's centre line: an outstretched arm moves a box edge by its whole length but this line only by
    the arm's share of the mask, so the torso and legs decide where a person stands.
    """
    if masks.ndim != 3:
        raise CueError(f"masks: expected [F, H, W], got shape {tuple(masks.shape)}.")
    masks = masks.to(torch.float32)
    low, high = torch.aminmax(masks)
    if not (float(low) >= 0.0 and float(high) <= 1.0):  # a read pass costs less than a clamped full-size copy
        masks = masks.clamp(0.0, 1.0)
    columns = masks.sum(dim=1)  # [F, W]
    cumulative = columns.cumsum(dim=1)
    total = cumulative[:, -1]
    valid = total > 0
    half = (total / 2)[:, None]
    index = (cumulative < half).sum(dim=1).clamp(max=columns.shape[1] - 1)  # first column reaching the half
    before = torch.where(index > 0, cumulative.gather(1, (index - 1).clamp(min=0)[:, None])[:, 0],
                         torch.zeros_like(total))
    mass = columns.gather(1, index[:, None])[:, 0]
    x = index.to(torch.float32) + ((half[:, 0] - before) / mass.clamp(min=1e-12)).clamp(0.0, 1.0)
    return torch.where(valid, x, torch.zeros_like(x)), valid


def _neighbour_indices(valid: Tensor) -> tuple[Tensor, Tensor]:
    """For each frame, the index of the nearest valid frame at or before it (-1: none) and at or after it (F: none)."""
    count = valid.shape[0]
    index = torch.arange(count, device=valid.device)
    prev = torch.where(valid, index, torch.full_like(index, -1)).cummax(dim=0).values
    flipped = torch.where(valid, index, torch.full_like(index, count)).flip(0)
    nxt = flipped.cummin(dim=0).values.flip(0)
    return prev, nxt


def _box_to_cwh(boxes: Tensor) -> Tensor:
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    return torch.cat([centre, size], dim=1)


def _cwh_to_box(cwh: Tensor) -> Tensor:
    half = cwh[:, 2:] / 2
    return torch.cat([cwh[:, :2] - half, cwh[:, :2] + half], dim=1)


def _smooth_boxes(boxes: Tensor, valid: Tensor, window: int) -> Tensor:
    """Average centre and size over a centred window of valid frames whose face has not moved far (see
    `MAX_SMOOTH_SHIFT`), so jitter is removed but real motion is not dragged behind."""
    cwh = _box_to_cwh(boxes)
    before, after = (window - 1) // 2, window // 2
    padded = F.pad(cwh.T, (before, after)).T  # [F + window - 1, 4]
    padded_valid = F.pad(valid.to(boxes.dtype), (before, after))
    neighbours = padded.unfold(0, window, 1).permute(0, 2, 1)  # [F, window, 4]
    neighbour_valid = padded_valid.unfold(0, window, 1) > 0  # [F, window]
    side = cwh[:, 2:].amax(dim=1).clamp(min=1e-6)  # [F]
    shift = (neighbours[..., :2] - cwh[:, None, :2]).abs().amax(dim=-1) / side[:, None]
    weight = (neighbour_valid & (shift <= MAX_SMOOTH_SHIFT)).to(boxes.dtype)
    weight[:, before] = 1.0  # the frame itself always counts
    smoothed = (neighbours * weight[..., None]).sum(dim=1) / weight.sum(dim=1, keepdim=True)
    return torch.where(valid[:, None], _cwh_to_box(smoothed), boxes)


def smooth_track(track: FaceTrack, *, window: int = 5, max_gap: int = 12) -> FaceTrack:
    """Fill short gaps of a face track, then smooth it over time.

    A run of at most `max_gap` missed frames between two detections is filled by linear interpolation of the
    two neighbouring boxes; at the clip ends the nearest detection is held for up to `max_gap` frames. Longer
    runs stay invalid. Then box centre and size are averaged over a centred window of `window` frames, using
    valid frames only, and only those whose box centre is within `MAX_SMOOTH_SHIFT` box sides of the frame's
    own (jitter is averaged away, a face that really moves is followed). ``detected`` keeps the raw detections.
    """
    if window < 1 or max_gap < 0:
        raise CueError(f"smooth_track: window={window} must be >= 1 and max_gap={max_gap} >= 0.")
    boxes = track.boxes.to(torch.float32)
    valid = track.valid.to(torch.bool)
    count = boxes.shape[0]
    if count == 0 or not bool(valid.any()):
        return FaceTrack(boxes.clone(), valid.clone(), detected=track.detected, backend=track.backend)

    index = torch.arange(count, device=boxes.device)
    prev, nxt = _neighbour_indices(valid)
    has_prev, has_next = prev >= 0, nxt < count
    prev_c, next_c = prev.clamp(min=0), nxt.clamp(max=count - 1)
    interior = ~valid & has_prev & has_next & ((nxt - prev - 1) <= max_gap)
    head = ~valid & ~has_prev & has_next & ((nxt - index) <= max_gap)
    tail = ~valid & has_prev & ~has_next & ((index - prev) <= max_gap)

    span = (nxt - prev).clamp(min=1).to(boxes.dtype)
    weight = ((index - prev).to(boxes.dtype) / span)[:, None]
    interpolated = boxes[prev_c] * (1 - weight) + boxes[next_c] * weight
    filled = torch.where(interior[:, None], interpolated, boxes)
    filled = torch.where(head[:, None], boxes[next_c], filled)
    filled = torch.where(tail[:, None], boxes[prev_c], filled)
    filled_valid = valid | interior | head | tail

    if window > 1:
        filled = _smooth_boxes(filled, filled_valid, window)

    filled = torch.where(filled_valid[:, None], filled, torch.zeros_like(filled))
    return FaceTrack(filled, filled_valid, detected=track.detected.clone(), backend=track.backend)


def square_boxes(boxes: Tensor, *, scale: float = 1.5) -> Tensor:
    """Squares of side ``max(w, h) * scale`` around the box centres; not clamped to the image (crops pad black)."""
    if scale <= 0:
        raise CueError(f"square_boxes: scale={scale} must be positive.")
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    side = (boxes[..., 2:] - boxes[..., :2]).amax(dim=-1, keepdim=True) * scale
    return torch.cat([centre - side / 2, centre + side / 2], dim=-1)


def median_box(boxes: Tensor, valid: Tensor) -> Tensor:
    """Per-coordinate median ``[4]`` of the valid boxes ``[F, 4]``; raises CueError when none is valid."""
    valid = valid.to(torch.bool)
    if not bool(valid.any()):
        raise CueError("median_box: no valid box in the clip (no person or face was found in any frame).")
    return boxes[valid].to(torch.float32).quantile(0.5, dim=0)
