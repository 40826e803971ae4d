"""A contact sheet of world samples: what was rendered and its ground truth, one sample per row."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .pairs import WorldSample
from .raster import Canvas, capsule, capsule_box, coverage, ellipse, ellipse_box
from .render import RenderedClip
from .skeleton_map import render_skeleton, to_openpose

COLUMNS = ("reference", "first", "middle", "last", "ground truth", "skeleton", "cross reference",
           "cross target", "pseudo driving")  # fmt: skip
PERSON_TINT = np.array([0.1, 0.9, 0.2], np.float32)
FACE_TINT = np.array([0.95, 0.2, 0.2], np.float32)
BOX_COLOUR = np.array([1.0, 1.0, 0.0], np.float32)
SEPARATOR_PX = 2


def truth_overlay(clip: RenderedClip, index: int) -> np.ndarray:
    """Frame `index` dimmed, the person mask tinted green, the face mask red, the face box yellow, joints white."""
    frame = clip.frames[index].numpy()
    person = clip.person_masks[index].numpy()[..., None]
    face = clip.face_masks[index].numpy()[..., None]
    image = 0.5 * frame + 0.35 * person * PERSON_TINT + 0.5 * face * (FACE_TINT - 0.35 * PERSON_TINT)
    canvas = Canvas.from_image(np.clip(image, 0, 1), track_masks=False)
    side = min(canvas.height, canvas.width)
    if bool(clip.face_valid[index]):
        x0, y0, x1, y1 = clip.face_boxes[index].tolist()
        r = max(side / 256.0, 0.5)
        for ax, ay, bx, by in ((x0, y0, x1, y0), (x1, y0, x1, y1), (x1, y1, x0, y1), (x0, y1, x0, y0)):
            win = canvas.window(*capsule_box(ax, ay, bx, by, r, r))
            if win is not None:
                canvas.paint(win, coverage(capsule(win, ax, ay, bx, by, r, r)[0]), BOX_COLOUR)
    radius = max(side / 128.0, 0.7)
    for (x, y), shown in zip(clip.joints[index].tolist(), clip.joint_visible[index].tolist()):
        win = canvas.window(*ellipse_box(x, y, radius, radius)) if shown else None
        if win is not None:
            canvas.paint(win, coverage(ellipse(win, x, y, radius, radius)[0]), np.ones(3, np.float32))
    return canvas.image()


def _row(sample: WorldSample) -> list[np.ndarray]:
    clip = sample.driving
    count = len(clip)
    middle = count // 2
    height, width = clip.frames.shape[1:3]
    blank = np.zeros((height, width, 3), np.float32)
    keypoints, visible = to_openpose(sample.clip.joints[middle:middle + 1].numpy(),
                                     sample.clip.joint_visible[middle:middle + 1].numpy())  # fmt: skip
    tiles = [
        sample.reference.frames[0].numpy(), clip.frames[0].numpy(), clip.frames[middle].numpy(),
        clip.frames[count - 1].numpy(), truth_overlay(sample.clip, middle),
        render_skeleton(keypoints, visible, height=height, width=width)[0].numpy(),
        sample.cross_reference.frames[0].numpy() if sample.cross_reference is not None else blank,
        sample.cross_target.frames[middle].numpy() if sample.cross_target is not None else blank,
        sample.pseudo_driving.frames[middle].numpy() if sample.pseudo_driving is not None else blank,
    ]  # fmt: skip
    return tiles


def preview_sheet(samples: list[WorldSample]) -> Tensor:
    """One row per sample, columns as in COLUMNS, white separators: ``[1, H', W', 3]`` float32."""
    rows = []
    for sample in samples:
        tiles = _row(sample)
        height = tiles[0].shape[0]
        gap = np.ones((height, SEPARATOR_PX, 3), np.float32)
        row = [t for tile in tiles for t in (tile, gap)][:-1]
        rows.append(np.concatenate(row, axis=1))
        rows.append(np.ones((SEPARATOR_PX, rows[-1].shape[1], 3), np.float32))
    sheet = np.concatenate(rows[:-1], axis=0)
    return torch.from_numpy(np.ascontiguousarray(sheet))[None]
