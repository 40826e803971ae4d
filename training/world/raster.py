"""Anti-aliased coverage rasterisation of capsules, ellipses, rings and convex polygons, with masks.

Each shape is a signed distance field evaluated only inside its bounding box; coverage is
``clip(0.5 - distance_px, 0, 1)``, i.e. about one pixel of anti-aliasing. Pixel ``(i, j)`` covers
``[j, j+1) x [i, i+1)`` and is sampled at its centre. Everything is float32 numpy; colour is planar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

_EPS = 1e-6


class Layer(Enum):
    """What a painted shape counts as in the ground-truth masks."""

    SCENE = 0  # not the person (occluding objects, background props)
    BODY = 1  # the person; hides the face below it
    FACE = 2  # the person's visible face


@dataclass
class Window:
    """The part of the canvas a shape can touch: slices and the pixel-centre coordinates inside them."""

    rows: slice
    cols: slice
    px: np.ndarray  # [1, w] x of pixel centres
    py: np.ndarray  # [h, 1] y of pixel centres


class Canvas:
    """A planar RGB image ``[3, H, W]`` being painted, with the person and visible-face coverage painted so far.

    Planar storage keeps every operation on long contiguous rows (an ``[H, W, 3]`` layout makes numpy
    broadcast over an inner axis of 3, several times slower).
    """

    def __init__(self, planes: np.ndarray, *, track_masks: bool = True, person: np.ndarray | None = None,
                 face: np.ndarray | None = None, in_place: bool = False):
        """Paint on a copy of `planes` ``[3, H, W]`` (or on them, with `in_place`, when they are float32).

        `person` and `face` ``[H, W]`` float32 zeros may be given to receive the masks in place.
        """
        if in_place and planes.dtype == np.float32:
            self.rgb = planes
        else:
            self.rgb = np.array(planes, dtype=np.float32, copy=True)
        self.height, self.width = self.rgb.shape[1:]
        if track_masks:
            self.person = np.zeros((self.height, self.width), np.float32) if person is None else person
            self.face = np.zeros((self.height, self.width), np.float32) if face is None else face
        else:
            self.person = self.face = None
        self._face_rows = self._face_cols = (0, 0)  # extent of the face painted so far (nothing to hide outside)
        self._xs = np.arange(self.width, dtype=np.float32)[None] + 0.5
        self._ys = np.arange(self.height, dtype=np.float32)[:, None] + 0.5

    @classmethod
    def from_image(cls, image: np.ndarray, **kwargs) -> "Canvas":
        """A canvas over a copy of an ``[H, W, 3]`` image."""
        return cls(np.ascontiguousarray(np.moveaxis(np.asarray(image, np.float32), -1, 0)), in_place=True, **kwargs)

    def image(self) -> np.ndarray:
        """The painted image as ``[H, W, 3]`` float32."""
        return np.ascontiguousarray(np.moveaxis(self.rgb, 0, -1))

    def window(self, x0: float, y0: float, x1: float, y1: float) -> Window | None:
        """Pixels whose centres may be within one pixel of the box; None when it misses the canvas."""
        if not (math.isfinite(x0) and math.isfinite(y0) and math.isfinite(x1) and math.isfinite(y1)):
            return None
        c0, c1 = max(int(math.floor(x0)) - 1, 0), min(int(math.ceil(x1)) + 1, self.width)
        r0, r1 = max(int(math.floor(y0)) - 1, 0), min(int(math.ceil(y1)) + 1, self.height)
        if c0 >= c1 or r0 >= r1:
            return None
        return Window(slice(r0, r1), slice(c0, c1), self._xs[:, c0:c1], self._ys[r0:r1])

    def paint(self, win: Window, coverage: np.ndarray, colour, layer: Layer = Layer.BODY) -> None:
        """Composite `colour` (``[3]`` or planar ``[3, h, w]``) over the window with `coverage` ``[h, w]`` (0..1)."""
        colour = np.asarray(colour, dtype=np.float32)
        if colour.ndim == 1:
            colour = colour[:, None, None]
        planes = self.rgb[:, win.rows, win.cols]
        planes += coverage * (colour - planes)
        if self.person is None:
            return
        if layer is Layer.FACE:
            face = self.face[win.rows, win.cols]
            face += coverage * (1.0 - face)
            (r0, r1), (c0, c1) = self._face_rows, self._face_cols
            if r0 == r1:
                r0, r1, c0, c1 = win.rows.start, win.rows.stop, win.cols.start, win.cols.stop
            self._face_rows = (min(r0, win.rows.start), max(r1, win.rows.stop))
            self._face_cols = (min(c0, win.cols.start), max(c1, win.cols.stop))
        elif (win.rows.start < self._face_rows[1] and self._face_rows[0] < win.rows.stop
              and win.cols.start < self._face_cols[1] and self._face_cols[0] < win.cols.stop):
            face = self.face[win.rows, win.cols]
            face *= 1.0 - coverage
        if layer is not Layer.SCENE:
            person = self.person[win.rows, win.cols]
            person += coverage * (1.0 - person)


def coverage(distance: np.ndarray) -> np.ndarray:
    """Pixel coverage from a signed distance in pixels (negative inside)."""
    out = np.subtract(0.5, distance)
    np.maximum(out, 0.0, out=out)
    return np.minimum(out, 1.0, out=out)


def capsule(win: Window, ax: float, ay: float, bx: float, by: float, ra: float, rb: float):
    """Signed distance to a tapered capsule from (ax, ay) radius `ra` to (bx, by) radius `rb`.

    Returns ``(distance, along, across)``: `along` in pixels from `a` towards `b` (clamped to the segment),
    `across` the signed perpendicular offset in pixels, for texturing.
    """
    dx, dy = bx - ax, by - ay
    length = math.sqrt(dx * dx + dy * dy)
    qx = win.px - ax
    qy = win.py - ay
    if length < _EPS:
        dist = np.sqrt(qx * qx + qy * qy)
        return dist - ra, np.zeros_like(dist), np.zeros_like(dist) + qx
    ux, uy = dx / length, dy / length
    along = np.minimum(np.maximum(qx * ux + qy * uy, 0.0), length)
    ex = qx - along * ux
    ey = qy - along * uy
    dist = np.sqrt(ex * ex + ey * ey) - (ra + (rb - ra) / length * along)
    return dist, along, qx * uy - qy * ux


def capsule_box(ax, ay, bx, by, ra, rb) -> tuple[float, float, float, float]:
    r = max(ra, rb)
    return min(ax, bx) - r, min(ay, by) - r, max(ax, bx) + r, max(ay, by) + r


def ellipse(win: Window, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0):
    """Approximate signed distance (exact on the outline, first order near it) to a rotated ellipse.

    Returns ``(distance, lx, ly)`` where ``lx, ly`` are the pixel's coordinates in the ellipse frame
    divided by the radii (so ``lx**2 + ly**2 < 1`` inside). Positive `angle` turns the ellipse's x axis
    towards -y (anticlockwise on screen).
    """
    c, s = math.cos(angle), math.sin(angle)
    qx = win.px - cx
    qy = win.py - cy
    lx = (qx * c - qy * s) / max(rx, _EPS)
    ly = (qx * s + qy * c) / max(ry, _EPS)
    k = np.sqrt(lx * lx + ly * ly)
    g = np.sqrt((lx / max(rx, _EPS)) ** 2 + (ly / max(ry, _EPS)) ** 2)
    # k / |grad k| lies between the two radii; clamping also removes the 0/0 at the centre
    scale = np.minimum(np.maximum(k / np.maximum(g, _EPS), min(rx, ry)), max(rx, ry))
    return (k - 1.0) * scale, lx, ly


def ellipse_box(cx, cy, rx, ry, angle=0.0) -> tuple[float, float, float, float]:
    c, s = math.cos(angle), math.sin(angle)
    hx = math.sqrt((rx * c) ** 2 + (ry * s) ** 2)
    hy = math.sqrt((rx * s) ** 2 + (ry * c) ** 2)
    return cx - hx, cy - hy, cx + hx, cy + hy


def convex(win: Window, points: np.ndarray, radius: float = 0.0) -> np.ndarray:
    """Signed distance (max of edge half-planes, minus `radius` for rounded corners) to a convex polygon."""
    pts = [(float(x), float(y)) for x, y in np.asarray(points, dtype=np.float64)]
    edges = list(zip(pts, pts[1:] + pts[:1]))
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in edges)
    orient = 1.0 if area > 0 else -1.0
    dist = None
    for (x0, y0), (x1, y1) in edges:
        ex, ey = x1 - x0, y1 - y0
        norm = math.hypot(ex, ey)
        if norm < _EPS:
            continue
        nx, ny = orient * ey / norm, -orient * ex / norm  # outward normal
        d = (win.px - x0) * nx + (win.py - y0) * ny
        dist = d if dist is None else np.maximum(dist, d, out=dist)
    if dist is None:
        return np.full((win.py.shape[0], win.px.shape[1]), np.inf, np.float32)
    return dist - radius


def convex_box(points: np.ndarray, radius: float = 0.0) -> tuple[float, float, float, float]:
    pts = np.asarray(points)
    return (float(pts[:, 0].min() - radius), float(pts[:, 1].min() - radius),
            float(pts[:, 0].max() + radius), float(pts[:, 1].max() + radius))  # fmt: skip


def half_plane(win: Window, x: float, y: float, nx: float, ny: float) -> np.ndarray:
    """Signed distance to the half-plane behind the line through (x, y) with unit normal (nx, ny)."""
    return (win.px - x) * nx + (win.py - y) * ny
