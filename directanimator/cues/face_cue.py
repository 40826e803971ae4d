"""Face cue: the driving face cropped by its (squared, enlarged) box and centred on the cue canvas (DESIGN.md 4)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CueError
from ..tensors import as_frames
from .buffers import clip_below_one, zeroed_buffer
from .resample import opencv, resize_box, sample_box


def crop_boxes(images: Tensor, boxes: Tensor, out_height: int, out_width: int) -> Tensor:
    """Bilinear crops of `images` ``[F, C, H, W]`` by `boxes` ``[F, 4]`` (pixel edges) to ``[F, C, out_h, out_w]``.

    Output pixel centres sample the box at ``x0 + (j + 0.5) / out_w * (x1 - x0)``; outside the image is black.
    """
    count, _, height, width = images.shape
    steps_x = (torch.arange(out_width, device=images.device, dtype=torch.float32) + 0.5) / out_width
    steps_y = (torch.arange(out_height, device=images.device, dtype=torch.float32) + 0.5) / out_height
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    xs = boxes[:, 0:1] + steps_x[None] * (boxes[:, 2:3] - boxes[:, 0:1])  # [F, out_w] source pixels
    ys = boxes[:, 1:2] + steps_y[None] * (boxes[:, 3:4] - boxes[:, 1:2])  # [F, out_h]
    # grid_sample with align_corners=False: normalised -1 and 1 are the outer pixel edges 0 and W
    gx = (2.0 * xs / width - 1.0)[:, None, :].expand(count, out_height, out_width)
    gy = (2.0 * ys / height - 1.0)[:, :, None].expand(count, out_height, out_width)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _axis_taps(start: float, end: float, count: int, size: int) -> tuple[int, int, Tensor, Tensor]:
    """Bilinear sampling of `count` pixels across ``[start, end)`` (pixel edges) of an axis of `size` pixels, as
    ``grid_sample(align_corners=False, padding_mode="zeros")`` samples it.

    Returns ``(first, n, index [2, count], weight [2, count])``: each output pixel reads source pixels
    ``first + index`` (all within ``first .. first + n - 1``, inside the image) with those weights; taps that
    fall outside the image get weight 0 (read as black).
    """
    steps = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    centre = start + steps * (end - start) - 0.5  # sample positions in pixel-centre coordinates
    left = torch.floor(centre)
    right_weight = centre - left
    left = left.to(torch.int64)
    index = torch.stack([left, left + 1])
    weight = torch.stack([1.0 - right_weight, right_weight])
    inside = (index >= 0) & (index < size)
    first = int(index[0].min().clamp(0, size - 1))
    last = int(index[1].max().clamp(0, size - 1))
    count_source = last - first + 1
    index = (index - first).clamp(0, count_source - 1)
    return first, count_source, index, torch.where(inside, weight, 0.0).to(torch.float32)


def crop_resize(image: Tensor, box: Tensor, out_height: int, out_width: int, *, out: Tensor | None = None) -> Tensor:
    """One bilinear crop of `image` ``[H, W, C]`` by `box` (pixel edges) to ``[out_h, out_w, C]``; black outside.

    The same samples as `crop_boxes` (grid_sample), computed on the box's own pixels only and channels last:
    two taps along x, then two along y. `out` (contiguous) receives the result.
    """
    height, width, channels = image.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    left, count_x, index_x, weight_x = _axis_taps(x0, x1, out_width, width)
    top, count_y, index_y, weight_y = _axis_taps(y0, y1, out_height, height)
    patch = image[top:top + count_y, left:left + count_x]  # [h, w, C], a view
    columns = (patch.index_select(1, index_x[0]) * weight_x[0, None, :, None]
               + patch.index_select(1, index_x[1]) * weight_x[1, None, :, None]).reshape(count_y, -1)
    if out is None:
        out = image.new_empty(out_height, out_width, channels)
    flat = out.view(out_height, out_width * channels)
    torch.mul(columns.index_select(0, index_y[0]), weight_y[0, :, None], out=flat)
    flat.addcmul_(columns.index_select(0, index_y[1]), weight_y[1, :, None])
    return out


def face_cue(
    frames: Tensor, boxes: Tensor, valid: Tensor, *, size: tuple[int, int] | None = None, exact: bool = False,
) -> Tensor:
    """Face crops centred on a black ``H x W`` canvas: returns ``[F, H, W, 3]`` in 0..1.

    `boxes` ``[F, 4]`` are the crop boxes in pixels of `frames` (already squared and enlarged, see
    `square_boxes`); each is resized into the centred square of side ``min(H, W)`` by bilinear sampling (as
    `crop_boxes`). Box parts outside the frame and frames with ``valid [F]`` False are black. `size` is
    ``(H, W)``, default the frames' size. On the CPU the sampling is OpenCV's, whose sample positions are
    within 1/64 px of the exact ones (`resample.resize_box`, `resample.sample_box`); `exact` samples exactly as
    `crop_boxes` (slower).
    """
    return _face_cue(as_frames(frames, name="frames"), boxes, valid, size=size, exact=exact)


def _face_cue(frames: Tensor, boxes: Tensor, valid: Tensor, *, size: tuple[int, int] | None = None,
              out: Tensor | None = None, out_zeroed: bool = False, exact: bool = False) -> Tensor:
    """`face_cue` on frames already checked by `as_frames` (extract_cues checks them once for all stages); `out`
    ``[F, H, W, 3]`` (contiguous, on the frames' device) receives the cue when given (`out_zeroed`: it is all
    zeros already, e.g. from `buffers.zeroed_buffer`, so the black parts are not written). On the CPU the crops are
    OpenCV's (`resample.resize_box`, else `resample.sample_box`; within 1/32 of the neighbouring pixels'
    difference of the exact bilinear samples) unless `exact` or OpenCV is missing."""
    count, height, width = frames.shape[:3]
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=frames.device)
    valid = torch.as_tensor(valid, device=frames.device).to(torch.bool).reshape(-1)
    if boxes.shape != (count, 4) or valid.shape[0] != count:
        raise CueError(
            f"face boxes: expected boxes [{count}, 4] and valid [{count}] for {count} frames, got "
            f"{tuple(boxes.shape)} and {tuple(valid.shape)}. Give one box and one flag per frame."
        )
    out_h, out_w = (height, width) if size is None else (int(size[0]), int(size[1]))
    if out_h < 1 or out_w < 1:
        raise CueError(f"face cue size: {out_w}x{out_h} px is empty; give (height, width) of at least 1 px.")
    sizes = boxes[:, 2:] - boxes[:, :2]
    degenerate = valid & ~(sizes > 0).all(dim=1)
    if bool(degenerate.any()):
        index = int(degenerate.nonzero()[0])
        raise CueError(
            f"face boxes: frame {index} is marked valid but its box {boxes[index].tolist()} has no area. "
            "Mark it invalid or give (x0, y0, x1, y1) with x1 > x0 and y1 > y0."
        )
    side = min(out_h, out_w)
    top, left = (out_h - side) // 2, (out_w - side) // 2
    if frames.device.type != "cpu" or frames.requires_grad:  # one batched grid_sample
        canvas = frames.new_zeros(count, out_h, out_w, 3) if out is None else out.zero_()
        if bool(valid.any()):
            crops = crop_boxes(frames[valid].permute(0, 3, 1, 2), boxes[valid], side, side)
            canvas[valid, top:top + side, left:left + side] = crops.permute(0, 2, 3, 1).clamp(0.0, 1.0)
        return canvas

    # CPU: one frame at a time, reading only the box; the canvas is written once (bars, crop)
    if out is None:
        canvas, out_zeroed = zeroed_buffer(count, out_h, out_w, 3), True
    else:
        canvas = out
    if not out_zeroed:
        canvas[:, :top] = 0.0
        canvas[:, top + side:] = 0.0
        canvas[:, top:top + side, :left] = 0.0
        canvas[:, top:top + side, left + side:] = 0.0
    square = canvas[:, top:top + side, left:left + side]
    flags, box_list = valid.tolist(), boxes.tolist()
    if not exact and opencv() is not None:
        frames_np, square_np = frames.detach().numpy(), square.numpy()
        scratch: list[np.ndarray] = []  # resize_box's buffer, reused across the frames
        for i in range(count):
            if flags[i]:
                image = np.ascontiguousarray(frames_np[i])
                crop = resize_box(image, box_list[i], side, side, scratch)
                if crop is None:
                    crop = sample_box(image, box_list[i], square_np[i])
                # bilinear samples of 0..1 frames (non-negative weights) can only round above 1
                clip_below_one(crop, square_np[i])
            elif not out_zeroed:
                square_np[i] = 0.0
        return canvas
    direct = left == 0 and side == out_w  # the square spans whole canvas rows: contiguous, written in place
    for i in range(count):
        if not flags[i]:
            square[i] = 0.0
            continue
        crop = crop_resize(frames[i], torch.tensor(box_list[i]), side, side, out=square[i] if direct else None)
        if not direct:
            square[i] = crop
        square[i].clamp_(0.0, 1.0)
    return canvas
