"""Previews of a cue triplet: the location overlay video and a contact sheet of all cues."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CueError
from ..tensors import as_frames, as_masks
from ..video import resize_frames
from .types import CueTriplet

# Overlay opacity of the body (red) and face (green) location masks on the reference.
OVERLAY_ALPHA = 0.6
BODY_COLOUR = (1.0, 0.15, 0.1)
FACE_COLOUR = (0.1, 1.0, 0.2)
MAX_TILE_SIDE = 256  # px; tiles are scaled down to this long side
GAP = 4  # px between tiles
BACKGROUND = 0.12
LABEL_SCALE = 2  # each font pixel becomes LABEL_SCALE x LABEL_SCALE
# A 5x7 bitmap font for the row labels (only the letters they use), so no font file is needed.
GLYPHS = {
    "A": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "C": ("01111", "10000", "10000", "10000", "10000", "10000", "01111"),
    "D": ("11110", "10001", "10001", "10001", "10001", "10001", "11110"),
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "F": ("11111", "10000", "10000", "11110", "10000", "10000", "10000"),
    "G": ("01111", "10000", "10000", "10011", "10001", "10001", "01111"),
    "I": ("11111", "00100", "00100", "00100", "00100", "00100", "11111"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "N": ("10001", "11001", "10101", "10011", "10001", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "S": ("01111", "10000", "10000", "01110", "00001", "00001", "11110"),
    "T": ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),
    "V": ("10001", "10001", "10001", "10001", "10001", "01010", "00100"),
    " ": ("00000",) * 7,
}


def overlay_location(
    reference: Tensor | None, body_location: Tensor | None, face_location: Tensor | None = None,
) -> Tensor:
    """Location masks ``[F, H, W]`` drawn on the reference: body red, face green; ``[F, H, W, 3]``.

    `reference` ``[1, h, w, 3]`` is letterboxed to the masks' size when it differs; without it the background is
    dark grey. Either mask may be None (not drawn), not both.
    """
    masks = [m for m in (body_location, face_location) if m is not None]
    if not masks:
        raise CueError("overlay_location: give body_location and/or face_location masks [F, H, W].")
    masks = [as_masks(m, name="location mask") for m in masks]
    count, height, width = masks[0].shape
    for m in masks[1:]:
        if tuple(m.shape[1:]) != (height, width):
            raise CueError(f"overlay_location: body and face location masks differ in size ({width}x{height} "
                           f"and {m.shape[2]}x{m.shape[1]}); pass masks from the same cue extraction.")
        count = max(count, m.shape[0])
    if reference is None:
        base = torch.full((1, height, width, 3), BACKGROUND)
    else:
        base = resize_frames(as_frames(reference, name="reference", check_sizes=False)[:1].cpu(), (height, width))
    out = base.expand(count, -1, -1, -1)
    for mask, colour in ((body_location, BODY_COLOUR), (face_location, FACE_COLOUR)):
        if mask is not None:
            alpha = as_masks(mask, name="location mask").cpu()[..., None] * OVERLAY_ALPHA
            out = out * (1 - alpha) + alpha * out.new_tensor(colour)
    return out.clamp(0.0, 1.0)


def location_overlay(triplet: CueTriplet) -> Tensor:
    """The triplet's location cue drawn on its reference (`overlay_location`); ``[F, H, W, 3]``."""
    return overlay_location(triplet.reference, triplet.body_location, triplet.face_location)


def _label(text: str, height: int) -> Tensor:
    """White text on the background, ``[height, w, 3]``, vertically centred."""
    glyphs = [GLYPHS.get(char, GLYPHS[" "]) for char in text.upper()]
    # one blank column after each letter
    glyph = torch.tensor([[int(bit) for g in glyphs for bit in g[row] + "0"] for row in range(7)],
                         dtype=torch.float32)
    glyph = glyph.repeat_interleave(LABEL_SCALE, 0).repeat_interleave(LABEL_SCALE, 1)
    out = torch.full((height, glyph.shape[1] + 2 * GAP, 3), BACKGROUND)
    top = max(0, (height - glyph.shape[0]) // 2)
    visible = glyph[: height - top]
    out[top:top + visible.shape[0], GAP:GAP + visible.shape[1]] = torch.maximum(
        out[top:top + visible.shape[0], GAP:GAP + visible.shape[1]], visible[..., None])
    return out


def contact_sheet(
    rows: list[tuple[str, Tensor]], *, columns: int = 6, labels: bool = True, size: tuple[int, int] | None = None,
) -> Tensor:
    """Named rows of frames ``[F, H, W, 3]`` (or masks ``[F, H, W]``) as one sheet ``[1, H', W', 3]``.

    Each row shows `columns` frames spread evenly over its own length. Frames are letterboxed to `size`
    ``(H, W)`` (default: the smallest row's size), then tiles are scaled so their long side is at most 256 px.
    `labels` writes the row names in a built-in bitmap font.
    """
    if columns < 1:
        raise CueError(f"contact_sheet: columns={columns} must be at least 1.")
    if not rows:
        raise CueError("contact_sheet: no rows to show; give at least one (name, frames) pair.")
    rows = [(name, as_frames(frames, name=name, check_sizes=False).cpu()) for name, frames in rows]
    if size is None:
        size = min((tuple(f.shape[1:3]) for _, f in rows), key=lambda hw: hw[0] * hw[1])
    height, width = size
    picked = min(columns, max(f.shape[0] for _, f in rows))
    scale = min(1.0, MAX_TILE_SIDE / max(height, width))
    tile = (max(1, round(height * scale)), max(1, round(width * scale)))
    strips = []
    for name, frames in rows:
        index = torch.linspace(0, frames.shape[0] - 1, picked).round().long()
        tiles = resize_frames(frames[index], (height, width), "pad").permute(0, 3, 1, 2)
        if tuple(tiles.shape[-2:]) != tile:
            tiles = F.interpolate(tiles, size=tile, mode="bilinear", antialias=True, align_corners=False)
        tiles = tiles.permute(0, 2, 3, 1).clamp(0.0, 1.0)
        strip = torch.full((tile[0], picked * tile[1] + (picked - 1) * GAP, 3), BACKGROUND)
        for i in range(picked):
            x = i * (tile[1] + GAP)
            strip[:, x:x + tile[1]] = tiles[i]
        strips.append((name, strip))
    label_width = max(_label(name, tile[0]).shape[1] for name, _ in strips) if labels else 0
    sheet_width = label_width + strips[0][1].shape[1] + 2 * GAP
    sheet = torch.full((len(strips) * (tile[0] + GAP) + GAP, sheet_width, 3), BACKGROUND)
    for row, (name, strip) in enumerate(strips):
        y = GAP + row * (tile[0] + GAP)
        if labels:
            text = _label(name, tile[0])
            sheet[y:y + tile[0], :text.shape[1]] = text
        sheet[y:y + tile[0], label_width + GAP:label_width + GAP + strip.shape[1]] = strip
    return sheet[None]


def cue_sheet(triplet: CueTriplet, *, driving: Tensor | None = None, columns: int = 6, labels: bool = True) -> Tensor:
    """A contact sheet ``[1, H', W', 3]`` of a triplet: driving frames (when given, at any size: letterboxed as
    extract_cues did), pose cue, face cue and the location overlay, `columns` frames spread over the clip."""
    count, height, width = triplet.pose.shape[:3]
    rows = []
    if driving is not None:
        driving = as_frames(driving, name="driving", check_sizes=False)
        if driving.shape[0] != count:
            raise CueError(f"driving: {driving.shape[0]} frames but the cue triplet has {count}. Pass the frames "
                           "the cues were extracted from.")
        rows.append(("driving", driving))
    rows += [("pose", triplet.pose), ("face", triplet.face), ("location", location_overlay(triplet))]
    return contact_sheet(rows, columns=columns, labels=labels, size=(height, width))
