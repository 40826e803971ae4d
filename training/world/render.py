"""Drawing a posed puppet over a backdrop, with exact ground truth: joints, face boxes, person and face masks."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from directanimator.errors import InputError

from .background import Background, background_planes
from .identity import Identity
from .motion import Motion
from .raster import (
    Canvas, Layer, capsule, capsule_box, convex, convex_box, coverage, ellipse, ellipse_box, half_plane,
)  # fmt: skip
from .skeleton import (
    EYE_ANGLE, FACE_VISIBLE_DEPTH, JOINT_INDEX as J, Body, Placement, PoseSequence, forward_kinematics,
)  # fmt: skip

MIN_SIZE, MAX_SIZE = 16, 1024  # canvas side limits, px (64..512 is the supported training range)
SCLERA = np.array([0.96, 0.96, 0.94], np.float32)
MOUTH_INSIDE = np.array([0.3, 0.06, 0.08], np.float32)
MIN_LINE_PX = 0.6  # thinnest stroke drawn (brows, eyelids, glasses), px


@dataclass
class RenderedClip:
    """A rendered clip and its ground truth, in the project's tensor conventions (DESIGN.md 3).

    frames ``[F, H, W, 3]`` float32 0..1; person_masks, face_masks ``[F, H, W]`` float32 0..1 (soft at the
    one-pixel anti-aliased edges; the face mask is the visible part of the head when the face is towards the
    camera); joints ``[F, J, 2]`` px (see skeleton.JOINT_NAMES); joint_visible ``[F, J]`` bool (inside the
    canvas and, for face points, on the camera side); face_boxes ``[F, 4]`` (x0, y0, x1, y1) px, the head
    outline's box; face_valid ``[F]`` bool (face towards the camera and the box on the canvas).
    """

    frames: Tensor
    person_masks: Tensor
    face_masks: Tensor
    joints: Tensor
    joint_visible: Tensor
    face_boxes: Tensor
    face_valid: Tensor
    identity: str
    times: np.ndarray
    pose: PoseSequence
    placement: Placement

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def ground_truth(self) -> dict[str, Tensor]:
        """The lossless ground truth as stored on disk: masks as uint8 0..255, boxes and joints float32."""
        return {
            "joints": self.joints.contiguous(),
            "joint_visible": self.joint_visible.to(torch.uint8).contiguous(),
            "face_boxes": self.face_boxes.contiguous(),
            "face_valid": self.face_valid.to(torch.uint8).contiguous(),
            "person_masks": (self.person_masks * 255.0).round().to(torch.uint8).contiguous(),
            "face_masks": (self.face_masks * 255.0).round().to(torch.uint8).contiguous(),
        }


def _shade(colour, factor: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) * factor, 0.0, 1.0)


class _Painter:
    """Draws one frame of one character onto a canvas."""

    def __init__(self, canvas: Canvas, identity: Identity, body: Body, pose: PoseSequence, index: int):
        self.c = canvas
        self.id = identity
        self.p = identity.proportions
        self.j = body.joints[index]
        self.u = float(body.unit[index])
        self.facing = float(body.facing[index])
        self.yaw = float(body.head_yaw[index])
        self.roll = float(body.head_roll[index])
        self.mouth = float(pose.mouth[index])
        self.eyes = float(pose.eyes[index])
        self.brows = float(pose.brows[index])
        self.face_on = math.cos(self.yaw) > FACE_VISIBLE_DEPTH
        self.head_layer = Layer.FACE if self.face_on else Layer.BODY
        self.skin = np.asarray(identity.skin, np.float32)
        pelvis = self.j[J["pelvis"]]
        spine = self.j[J["neck"]] - pelvis
        length = max(float(np.hypot(*spine)), 1e-6)
        self.up = spine / length
        self.across = np.array([-self.up[1], self.up[0]])  # image-space perpendicular of the spine
        self.width_factor = max(abs(self.facing), 0.45)  # a side view still shows a torso

    # -- primitives ---------------------------------------------------------------------------------
    def limb(self, a: str | np.ndarray, b: str | np.ndarray, ra: float, rb: float, paint, layer=Layer.BODY, *,
             on_head: bool = False):
        """A tapered capsule between two joints (names or points), radii in body units; `paint` is a colour
        or a Pattern textured along the limb. `on_head` clips it to the head outline (face features)."""
        pa = self.j[J[a]] if isinstance(a, str) else a
        pb = self.j[J[b]] if isinstance(b, str) else b
        ra_px, rb_px = ra * self.u, rb * self.u
        win = self.c.window(*capsule_box(pa[0], pa[1], pb[0], pb[1], ra_px, rb_px))
        if win is None:
            return
        dist, along, across = capsule(win, float(pa[0]), float(pa[1]), float(pb[0]), float(pb[1]), ra_px, rb_px)
        if on_head:
            dist = np.maximum(dist, self.head_distance(win))
        colour = paint.colour(across / self.u, along / self.u, self.u) if hasattr(paint, "colour") else paint
        self.c.paint(win, coverage(dist), colour, layer)

    def polygon(self, points: np.ndarray, radius: float, paint, layer=Layer.BODY):
        radius_px = radius * self.u
        win = self.c.window(*convex_box(points, radius_px))
        if win is None:
            return
        dist = convex(win, points, radius_px)
        if hasattr(paint, "colour"):
            pelvis = self.j[J["pelvis"]]
            lu = (win.px - pelvis[0]) * (np.sign(self.facing) or 1.0) / self.u
            lv = (win.py - pelvis[1]) / self.u
            paint = paint.colour(lu, lv, self.u)
        self.c.paint(win, coverage(dist), paint, layer)

    def oval(self, centre, rx: float, ry: float, colour, layer=Layer.BODY, *, angle: float | None = None,
             on_head: bool = False):
        """An ellipse with radii in pixels, turned with the head unless `angle` is given; see `limb`."""
        angle = self.roll if angle is None else angle
        win = self.c.window(*ellipse_box(centre[0], centre[1], rx, ry, angle))
        if win is None:
            return
        dist, _, _ = ellipse(win, float(centre[0]), float(centre[1]), rx, ry, angle)
        if on_head:
            dist = np.maximum(dist, self.head_distance(win))
        self.c.paint(win, coverage(dist), colour, layer)

    def head_distance(self, win) -> np.ndarray:
        """Signed distance to the head outline: face features never leave it, so the face stays in its box."""
        head = self.j[J["head"]]
        rx, ry = self.p.head_rx * self.u, self.p.head_ry * self.u
        return ellipse(win, float(head[0]), float(head[1]), rx, ry, self.roll)[0]

    def head_point(self, x: float, y: float) -> np.ndarray:
        """Head-local offset (px, x right and y down in the head's own frame) to an image point."""
        c, s = math.cos(self.roll), math.sin(self.roll)
        head = self.j[J["head"]]
        return np.array([head[0] + x * c + y * s, head[1] - x * s + y * c])

    # -- body parts ---------------------------------------------------------------------------------
    def legs(self):
        p, idt = self.p, self.id
        leg = p.leg_thickness
        thigh_paint = self.skin if idt.legwear == "skirt" else idt.trousers
        shin_paint = idt.trousers if idt.legwear == "trousers" else self.skin
        for side in ("left", "right"):
            self.limb(f"{side}_hip", f"{side}_knee", 1.1 * leg, 0.85 * leg, thigh_paint)
            self.limb(f"{side}_knee", f"{side}_ankle", 0.85 * leg, 0.6 * leg, shin_paint)
            self.limb(f"{side}_ankle", f"{side}_toe", 0.55 * leg, 0.5 * leg, np.asarray(idt.shoes, np.float32))

    def hips(self):
        p, idt = self.p, self.id
        pelvis = self.j[J["pelvis"]]
        hw = self.width_factor * (p.hip_width + p.leg_thickness) * self.u
        waist = pelvis + 0.04 * self.u * self.up
        crotch = pelvis - 0.07 * self.u * self.up
        quad = np.array([waist + hw * self.across, waist - hw * self.across,
                         crotch - hw * self.across, crotch + hw * self.across])  # fmt: skip
        paint = self.skin if idt.legwear == "skirt" else idt.trousers
        self.polygon(quad, 0.01, paint)

    def skirt(self):
        p = self.p
        pelvis = self.j[J["pelvis"]]
        hw = self.width_factor * (p.hip_width + p.leg_thickness) * self.u
        waist = pelvis + 0.05 * self.u * self.up
        hem = pelvis - 0.75 * p.thigh * self.u * self.up
        flare = hw * 1.6
        quad = np.array([waist + hw * self.across, waist - hw * self.across,
                         hem - flare * self.across, hem + flare * self.across])  # fmt: skip
        self.polygon(quad, 0.008, self.id.trousers)

    def torso(self):
        p = self.p
        pelvis, neck = self.j[J["pelvis"]], self.j[J["neck"]]
        sw = self.width_factor * p.shoulder_width * self.u
        hw = self.width_factor * (p.hip_width + p.leg_thickness) * self.u
        top = neck - p.torso_thickness * 0.5 * self.u * self.up
        bottom = pelvis + 0.02 * self.u * self.up
        quad = np.array([top + sw * self.across, top - sw * self.across,
                         bottom - hw * self.across, bottom + hw * self.across])  # fmt: skip
        self.polygon(quad, p.torso_thickness, self.id.shirt)

    def arm(self, side: str):
        p, idt = self.p, self.id
        r = p.arm_thickness
        upper_paint = self.skin if idt.sleeves == "none" else idt.shirt
        fore_paint = idt.shirt if idt.sleeves == "long" else self.skin
        self.limb(f"{side}_shoulder", f"{side}_elbow", 1.1 * r, 0.9 * r, upper_paint)
        self.limb(f"{side}_elbow", f"{side}_wrist", 0.9 * r, 0.7 * r, fore_paint)
        self.limb(f"{side}_wrist", f"{side}_hand", 0.8 * r, 1.0 * r, self.skin)

    def neck(self):
        base = self.head_point(0.0, 0.6 * self.p.head_ry * self.u)
        self.limb("neck", base, 0.4 * self.p.head_rx, 0.38 * self.p.head_rx, self.skin)

    def long_hair(self):
        if self.id.hair_style not in ("long", "bob"):
            return
        p = self.p
        length = (1.9 if self.id.hair_style == "long" else 1.1) * p.head_ry * self.u
        top = self.head_point(0.0, 0.0)
        bottom = self.head_point(0.0, length)
        self.limb(top, bottom, 1.1 * p.head_rx, 1.0 * p.head_rx, np.asarray(self.id.hair_colour, np.float32))

    def head(self):
        p, idt, u = self.p, self.id, self.u
        rx, ry = p.head_rx * u, p.head_ry * u
        hair = self.skin if idt.hair_style == "bald" else np.asarray(idt.hair_colour, np.float32)
        ear_colour = _shade(self.skin, 0.92)
        for side, sign in (("left", 1.0), ("right", -1.0)):
            depth = math.cos(sign * math.pi / 2 + self.yaw)
            if depth > -0.25:
                self.oval(self.j[J[f"{side}_ear"]], 0.2 * rx, 0.3 * ry, ear_colour)  # person, not face
        head = self.j[J["head"]]
        self.oval(head, rx, ry, hair, self.head_layer)
        cos_y, sin_y = math.cos(self.yaw), math.sin(self.yaw)
        if cos_y <= 0.05:
            return  # the back of the head
        # the face: an oval turned with the head yaw, below the hairline, shaded towards its rim
        face_rx = rx * 0.86 * (0.35 + 0.65 * cos_y)
        face_ry = ry * 0.9
        centre = self.head_point(sin_y * 0.45 * rx, 0.08 * ry)
        win = self.c.window(*ellipse_box(centre[0], centre[1], face_rx, face_ry, self.roll))
        if win is not None:
            dist, lx, ly = ellipse(win, float(centre[0]), float(centre[1]), face_rx, face_ry, self.roll)
            if idt.hair_style != "bald":
                line = self.head_point(0.0, idt.hairline * ry)
                dist = np.maximum(dist, half_plane(win, line[0], line[1], -math.sin(self.roll), -math.cos(self.roll)))
            dist = np.maximum(dist, self.head_distance(win))
            rim = np.minimum(np.maximum((np.sqrt(lx * lx + ly * ly) - 0.55) * 0.35, 0.0), 0.15)
            self.c.paint(win, coverage(dist), self.skin[:, None, None] * (1.0 - rim)[None], self.head_layer)
        if not self.face_on:
            return
        self.face_features(rx, ry, cos_y, sin_y)

    def face_features(self, rx: float, ry: float, cos_y: float, sin_y: float):
        idt, face = self.id, self.id.face
        dark = _shade(self.skin, 0.55)
        brow_colour = _shade(idt.hair_colour, 0.8) if idt.hair_style != "bald" else _shade(self.skin, 0.35)
        line = max(MIN_LINE_PX, 0.05 * ry)
        for side, sign in (("left", 1.0), ("right", -1.0)):
            depth = math.cos(sign * EYE_ANGLE + self.yaw)
            if depth <= FACE_VISIBLE_DEPTH:
                continue
            eye = self.j[J[f"{side}_eye"]]
            ex = face.eye_size * rx * max(depth, 0.3)
            ey = 0.65 * face.eye_size * rx
            if self.eyes > 0.3:
                self.oval(eye, ex, max(ey * self.eyes, 0.5 * line), SCLERA, self.head_layer, on_head=True)
                iris = min(ex, ey * self.eyes) * 0.75
                self.oval(eye + 0.25 * ex * sin_y * np.array([math.cos(self.roll), -math.sin(self.roll)]), iris,
                          iris, np.asarray(face.eye_colour, np.float32), self.head_layer, on_head=True)
            else:
                offset = np.array([math.cos(self.roll), -math.sin(self.roll)]) * ex
                self.limb(eye - offset, eye + offset, line / self.u, line / self.u, dark, self.head_layer, on_head=True)
            # brows: raised by expression, slanted by identity
            lift = (0.28 + 0.08 * self.brows) * ry
            brow_centre = eye - lift * np.array([math.sin(self.roll), math.cos(self.roll)])
            slant = face.brow_slant * sign
            half = 1.2 * ex * np.array([math.cos(self.roll + slant), -math.sin(self.roll + slant)])
            thick = max(0.5 * MIN_LINE_PX, 0.5 * face.brow_thickness * ry) / self.u
            self.limb(brow_centre - half, brow_centre + half, thick, thick, brow_colour, self.head_layer, on_head=True)
            if "glasses" in idt.accessories:
                self._ring(eye, 1.7 * face.eye_size * rx, 1.5 * face.eye_size * rx, line)
        if "glasses" in idt.accessories:
            left, right = self.j[J["left_eye"]], self.j[J["right_eye"]]
            self.limb(left, right, 0.5 * line / self.u, 0.5 * line / self.u,
                      np.asarray(idt.accessory_colour, np.float32) * 0.5, self.head_layer, on_head=True)
        if face.nose:
            nose = self.j[J["nose"]]
            self.oval(nose, 0.1 * rx, 0.12 * ry, _shade(self.skin, 0.82), self.head_layer, on_head=True)
        mouth = self.head_point(sin_y * 0.95 * rx, face.mouth_height * ry)
        mx = face.mouth_width * rx * max(cos_y, 0.3)
        opening = self.mouth
        self.oval(mouth, mx, max(0.05 * ry + 0.2 * ry * opening, 0.5 * line),
                  np.asarray(face.lip_colour, np.float32), self.head_layer, on_head=True)
        if opening > 0.15:
            self.oval(mouth, 0.8 * mx, 0.18 * ry * opening, MOUTH_INSIDE, self.head_layer, on_head=True)

    def _ring(self, centre, rx: float, ry: float, thickness: float):
        win = self.c.window(*ellipse_box(centre[0], centre[1], rx + thickness, ry + thickness, self.roll))
        if win is None:
            return
        dist, _, _ = ellipse(win, float(centre[0]), float(centre[1]), rx, ry, self.roll)
        dist = np.maximum(np.abs(dist) - 0.5 * thickness, self.head_distance(win))
        colour = np.asarray(self.id.accessory_colour, np.float32) * 0.5
        self.c.paint(win, coverage(dist), colour, self.head_layer)

    def hat(self):
        p, u = self.p, self.u
        rx, ry = p.head_rx * u, p.head_ry * u
        colour = np.asarray(self.id.accessory_colour, np.float32)
        crown = self.head_point(0.0, -0.55 * ry)
        win = self.c.window(*ellipse_box(crown[0], crown[1], 0.95 * rx, 0.75 * ry, self.roll))
        if win is not None:
            dist, _, _ = ellipse(win, float(crown[0]), float(crown[1]), 0.95 * rx, 0.75 * ry, self.roll)
            brim = self.head_point(0.0, -0.5 * ry)
            dist = np.maximum(dist, half_plane(win, brim[0], brim[1], math.sin(self.roll), math.cos(self.roll)))
            self.c.paint(win, coverage(dist), colour, Layer.BODY)
        left, right = self.head_point(-1.3 * rx, -0.5 * ry), self.head_point(1.3 * rx, -0.5 * ry)
        self.limb(left, right, 0.06 * p.head_ry, 0.06 * p.head_ry, _shade(colour, 0.8))

    def accessories_on_body(self):
        idt, p = self.id, self.p
        colour = np.asarray(idt.accessory_colour, np.float32)
        if "belt" in idt.accessories:
            pelvis = self.j[J["pelvis"]]
            hw = self.width_factor * (p.hip_width + p.leg_thickness + 0.01) * self.u
            waist = pelvis + 0.035 * self.u * self.up
            self.limb(waist + hw * self.across, waist - hw * self.across, 0.012, 0.012, colour)
        if "bag" in idt.accessories:
            self.limb("left_shoulder", "right_hip", 0.008, 0.008, _shade(colour, 0.7))
            self.oval(self.j[J["right_hip"]], 0.06 * self.u, 0.05 * self.u, colour, Layer.BODY, angle=0.0)

    def scarf(self):
        if "scarf" in self.id.accessories:
            neck = self.j[J["neck"]] + 0.01 * self.u * self.up
            half = 0.7 * self.p.shoulder_width * self.width_factor * self.u * self.across
            self.limb(neck + half, neck - half, 0.025, 0.025, np.asarray(self.id.accessory_colour, np.float32))

    def draw(self):
        """Back to front: a front view puts the arms over the body and face; a back view hides them behind it."""
        front = self.facing >= 0.0
        if front:
            self.long_hair()
        else:
            self.arm("left")
            self.arm("right")
        self.legs()
        self.hips()
        self.torso()
        if self.id.legwear == "skirt":
            self.skirt()
        self.accessories_on_body()
        self.neck()
        self.scarf()
        if not front:
            self.long_hair()
        self.head()
        if "hat" in self.id.accessories:
            self.hat()
        if front:
            self.arm("left")
            self.arm("right")


def draw_character(canvas: Canvas, identity: Identity, body: Body, pose: PoseSequence, index: int) -> None:
    """Paint frame `index` of a posed character (from `forward_kinematics`) onto `canvas`."""
    _Painter(canvas, identity, body, pose, index).draw()


def face_boxes(identity: Identity, body: Body) -> np.ndarray:
    """Boxes ``[F, 4]`` (x0, y0, x1, y1) px of the head outline, turned with the head roll."""
    p = identity.proportions
    rx, ry = p.head_rx * body.unit, p.head_ry * body.unit
    c, s = np.cos(body.head_roll), np.sin(body.head_roll)
    hx = np.sqrt((rx * c) ** 2 + (ry * s) ** 2)
    hy = np.sqrt((rx * s) ** 2 + (ry * c) ** 2)
    head = body.joints[:, J["head"]]
    return np.stack([head[:, 0] - hx, head[:, 1] - hy, head[:, 0] + hx, head[:, 1] + hy], axis=-1)


def check_canvas(height: int, width: int) -> None:
    if not (MIN_SIZE <= height <= MAX_SIZE and MIN_SIZE <= width <= MAX_SIZE):
        raise InputError(
            f"canvas: {width}x{height} px requested; the world renders {MIN_SIZE} to {MAX_SIZE} px per side "
            "(64 to 512 is the supported range). Pick a size inside it."
        )


def render_clip(identity: Identity, motion: Motion, placement: Placement, background: Background, times, *,
                height: int, width: int, shutter: float = 0.0, blur_samples: int = 5,
                in_place: bool = False) -> RenderedClip:
    """Render `identity` performing `motion` at `times` (seconds) over `background`, with its ground truth.

    `shutter` is the exposure in seconds: above 0 each frame averages `blur_samples` renders spread over it
    (true motion blur: only what moves is smeared). Masks, joints and boxes are those of the frame time.
    `in_place` drops the motion's travel and zoom (root offset 0, scale 1: where and how large it stands at time
    0) and keeps everything else of the pose; it takes no `shutter`.
    """
    check_canvas(height, width)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if times.size == 0:
        raise InputError("times: no frame times given; pass at least one time in seconds.")
    if shutter < 0 or blur_samples < 1:
        raise InputError(f"shutter={shutter}, blur_samples={blur_samples}: expected shutter >= 0 and samples >= 1.")
    if in_place and shutter > 0:
        raise InputError("render_clip: in_place renders still poses; give it no shutter (motion blur).")
    pose = motion.sample(times)
    if in_place:
        pose = replace(pose, root=np.zeros_like(pose.root), scale=np.ones_like(pose.scale))
    body = forward_kinematics(identity.proportions, pose, placement, height=height, width=width)
    planes = background_planes(background, times, height=height, width=width)  # painted in place
    count = len(times)
    person = np.zeros((count, height, width), np.float32)
    face = np.zeros((count, height, width), np.float32)
    for i in range(count):
        draw_character(Canvas(planes[i], person=person[i], face=face[i], in_place=True), identity, body, pose, i)
    frames = np.ascontiguousarray(planes.transpose(0, 2, 3, 1))
    if shutter > 0 and blur_samples > 1:
        frames = _motion_blurred(identity, motion, placement, background, times, frames, height=height,
                                 width=width, shutter=shutter, samples=blur_samples)  # fmt: skip
    boxes = face_boxes(identity, body)
    on_canvas = (boxes[:, 2] > 0) & (boxes[:, 0] < width) & (boxes[:, 3] > 0) & (boxes[:, 1] < height)
    face_valid = (np.cos(body.head_yaw) > FACE_VISIBLE_DEPTH) & on_canvas
    joints = body.joints
    inside = (joints[..., 0] >= 0) & (joints[..., 0] < width) & (joints[..., 1] >= 0) & (joints[..., 1] < height)
    return RenderedClip(
        frames=torch.from_numpy(frames), person_masks=torch.from_numpy(person), face_masks=torch.from_numpy(face),
        joints=torch.from_numpy(joints.astype(np.float32)),
        joint_visible=torch.from_numpy(body.joint_visible & inside),
        face_boxes=torch.from_numpy(boxes.astype(np.float32)), face_valid=torch.from_numpy(face_valid),
        identity=identity.name, times=times, pose=pose, placement=placement,
    )  # fmt: skip


def _motion_blurred(identity, motion, placement, background, times, sharp, *, height, width, shutter, samples):
    """Average of `samples` renders over the exposure around each frame time (the middle one is `sharp`)."""
    offsets = (np.arange(samples) / (samples - 1) - 0.5) * shutter
    total = np.zeros_like(sharp, dtype=np.float64)
    for k, offset in enumerate(offsets):
        if samples % 2 == 1 and k == samples // 2:
            total += sharp
            continue
        sub_times = times + offset
        pose = motion.sample(sub_times)
        body = forward_kinematics(identity.proportions, pose, placement, height=height, width=width)
        planes = background_planes(background, sub_times, height=height, width=width)
        for i in range(len(times)):
            draw_character(Canvas(planes[i], track_masks=False, in_place=True), identity, body, pose, i)
        total += planes.transpose(0, 2, 3, 1)
    return (total / samples).astype(np.float32)
