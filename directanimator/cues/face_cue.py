"""Face cue: the driving face cropped by its (squared, enlarged) box and centred on the cue canvas (DESIGN.md 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CueError
from ..tensors import as_frames


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


def face_cue(
    frames: Tensor, boxes: Tensor, valid: Tensor, *, size: tuple[int, int] | None = None,
) -> Tensor:
    """Face crops centred on a black ``H x W`` canvas: returns ``[F, H, W, 3]`` in 0..1.

    `boxes` ``[F, 4]`` are the crop boxes in pixels of `frames` (already squared and enlarged, see
    `square_boxes`); each is resized into the centred square of side ``min(H, W)``. Box parts outside the
    frame and frames with ``valid [F]`` False are black. `size` is ``(H, W)``, default the frames' size.
    """
    frames = as_frames(frames, name="frames")
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
    canvas = frames.new_zeros(count, out_h, out_w, 3)
    if bool(valid.any()):
        crops = crop_boxes(frames[valid].permute(0, 3, 1, 2), boxes[valid], side, side)
        canvas[valid, top:top + side, left:left + side] = crops.permute(0, 2, 3, 1).clamp(0.0, 1.0)
    return canvas
