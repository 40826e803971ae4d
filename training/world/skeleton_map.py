"""OpenPose-style skeleton maps from joints, and simulated pose-estimator errors, for skeleton-driven baselines.

The map uses the 18 COCO keypoints (OpenPose body order) and the usual 17 coloured limbs on black.
`EstimatorErrors` reproduces what real estimators get wrong on dance videos: left-right swaps, dropped limbs,
jitter and front-back confusion, so baselines can be trained and compared on realistic skeletons.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from directanimator.cues.types import CueTriplet
from directanimator.errors import InputError

from .raster import Canvas, capsule, capsule_box, coverage, ellipse, ellipse_box
from .skeleton import FACE_JOINTS, JOINT_INDEX, NUM_JOINTS

OPENPOSE_JOINTS = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
OPENPOSE_FROM_WORLD = np.array([JOINT_INDEX[name] for name in OPENPOSE_JOINTS])
# limbs as pairs of OpenPose indices, in OpenPose's drawing order
OPENPOSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
# one hue per keypoint, red through the spectrum to magenta (the OpenPose convention)
OPENPOSE_COLOURS = np.array([
    [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
    [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
    [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85],
], dtype=np.float32) / 255.0  # fmt: skip
LIMB_OPACITY = 0.6
# left/right partner of each OpenPose keypoint
OPENPOSE_MIRROR = np.array([OPENPOSE_JOINTS.index(n.replace("left_", "#").replace("right_", "left_")
                                                  .replace("#", "right_")) for n in OPENPOSE_JOINTS])  # fmt: skip
ARM_LEG_GROUPS = (  # OpenPose indices of the left and right side of each limb group
    ((5, 6, 7), (2, 3, 4)),
    ((11, 12, 13), (8, 9, 10)),
)
LIMB_CHAINS = ((2, 3, 4), (5, 6, 7), (8, 9, 10), (11, 12, 13))  # droppable limbs: shoulder/hip, elbow/knee, end
_FACE_OPENPOSE = [OPENPOSE_JOINTS.index(n) for n in FACE_JOINTS]


def to_openpose(joints, visible) -> tuple[np.ndarray, np.ndarray]:
    """World joints ``[F, J, 2]`` and visibility ``[F, J]`` as OpenPose keypoints ``[F, 18, 2]`` and ``[F, 18]``."""
    joints = np.asarray(joints, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 2) or visible.shape != joints.shape[:2]:
        raise InputError(
            f"joints: expected [F, {NUM_JOINTS}, 2] with visibility [F, {NUM_JOINTS}], got {joints.shape} and "
            f"{visible.shape}. Pass RenderedClip.joints and RenderedClip.joint_visible."
        )
    return joints[:, OPENPOSE_FROM_WORLD], visible[:, OPENPOSE_FROM_WORLD]


@dataclass(frozen=True)
class EstimatorErrors:
    """Per-frame error rates of a simulated pose estimator (probabilities in 0..1, jitter in px)."""

    swap: float = 0.05  # one arm or leg pair labelled left for right
    drop: float = 0.05  # per limb: its joints missing
    jitter: float = 1.0  # Gaussian noise on every keypoint, px
    front_back: float = 0.03  # the whole body mirrored (back read as front or the reverse), face points flipped

    def __post_init__(self) -> None:
        for name in ("swap", "drop", "front_back"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"EstimatorErrors.{name}={getattr(self, name)}: must be a probability in 0..1.")
        if self.jitter < 0:
            raise InputError(f"EstimatorErrors.jitter={self.jitter}: must be >= 0 px.")


def simulate_estimator(keypoints, visible, errors: EstimatorErrors, *, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
    """OpenPose keypoints ``[F, 18, 2]`` and visibility ``[F, 18]`` as an imperfect estimator would report them."""
    points = np.array(keypoints, dtype=np.float64, copy=True)
    shown = np.array(visible, dtype=bool, copy=True)
    count = points.shape[0]
    if errors.jitter > 0:
        points += rng.normal(0.0, errors.jitter, size=points.shape)
    for f in range(count):
        if rng.uniform() < errors.front_back:
            points[f] = points[f, OPENPOSE_MIRROR]
            shown[f] = shown[f, OPENPOSE_MIRROR]
            # a back read as a front invents a face (at the head-cylinder points); a front read as a back loses it
            shown[f, _FACE_OPENPOSE] = not shown[f, _FACE_OPENPOSE].any()
        if rng.uniform() < errors.swap:
            left, right = ARM_LEG_GROUPS[int(rng.integers(len(ARM_LEG_GROUPS)))]
            left, right = list(left), list(right)
            points[f, left + right] = points[f, right + left]
            shown[f, left + right] = shown[f, right + left]
        for chain in LIMB_CHAINS:
            if rng.uniform() < errors.drop:
                shown[f, list(chain[1:])] = False
    return points, shown


def render_skeleton(keypoints, visible, *, height: int, width: int, line_width: float | None = None) -> Tensor:
    """OpenPose-style maps ``[F, H, W, 3]`` float32: coloured limbs (60 % opaque) and keypoint discs on black.

    `line_width` defaults to 1/64 of the shorter side (4 px at 256), as OpenPose's renderer scales.
    """
    points = np.asarray(keypoints, dtype=np.float64)
    shown = np.asarray(visible, dtype=bool)
    if points.ndim != 3 or points.shape[1:] != (len(OPENPOSE_JOINTS), 2) or shown.shape != points.shape[:2]:
        raise InputError(
            f"keypoints: expected OpenPose [F, 18, 2] with visibility [F, 18], got {points.shape} and "
            f"{shown.shape}. Convert world joints with to_openpose first."
        )
    radius = (line_width if line_width is not None else min(height, width) / 64.0) / 2.0
    radius = max(radius, 0.5)
    out = np.zeros((points.shape[0], 3, height, width), np.float32)
    for f in range(points.shape[0]):
        canvas = Canvas(out[f], track_masks=False, in_place=True)
        for k, (a, b) in enumerate(OPENPOSE_LIMBS):
            if not (shown[f, a] and shown[f, b]):
                continue
            (ax, ay), (bx, by) = points[f, a], points[f, b]
            win = canvas.window(*capsule_box(ax, ay, bx, by, radius, radius))
            if win is not None:
                dist = capsule(win, ax, ay, bx, by, radius, radius)[0]
                canvas.paint(win, LIMB_OPACITY * coverage(dist), OPENPOSE_COLOURS[k])
        for k in range(len(OPENPOSE_JOINTS)):
            if not shown[f, k]:
                continue
            x, y = points[f, k]
            win = canvas.window(*ellipse_box(x, y, 2 * radius, 2 * radius))
            if win is not None:
                canvas.paint(win, coverage(ellipse(win, x, y, 2 * radius, 2 * radius)[0]), OPENPOSE_COLOURS[k])
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 2, 3, 1)))


def letterbox_points(points, source: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Pixel points ``[..., 2]`` of a ``source`` (h, w) frame at ``size`` (H, W) after an aspect-keeping resize with
    centred bars (`directanimator.video.resize_frames` mode "pad")."""
    (h, w), (height, width) = source, size
    scale = min(height / h, width / w)
    offset = np.array([(width - w * scale) / 2.0, (height - h * scale) / 2.0])
    return np.asarray(points, dtype=np.float64) * scale + offset


def skeleton_maps(keypoints, visible, *, source: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """OpenPose maps ``[F, H, W, 3]`` at working `size` of keypoints measured on `source`-sized frames."""
    return render_skeleton(letterbox_points(keypoints, source, size), visible, height=size[0], width=size[1])


def skeleton_triplet(triplet: CueTriplet, maps: Tensor, reference_map: Tensor) -> CueTriplet:
    """The skeleton-driven baseline's conditioning in the triplet's slots: the pose cue and the reference's own pose
    cue are skeleton maps (``[F, H, W, 3]`` and ``[1, H, W, 3]`` at the triplet's size); the face cue and both
    location cues are blank, as a skeleton carries neither. The reference image is kept."""
    if maps.shape != triplet.pose.shape or reference_map.shape != triplet.reference_pose.shape:
        raise InputError(f"skeleton maps {tuple(maps.shape)} / reference map {tuple(reference_map.shape)}: expected "
                         f"the triplet's pose shapes {tuple(triplet.pose.shape)} / {tuple(triplet.reference_pose.shape)}.")
    record = replace(triplet.record, notes=[*triplet.record.notes, "pose slot: skeleton maps; face and location blank"])
    return CueTriplet(
        pose=maps.to(triplet.pose), face=torch.zeros_like(triplet.face),
        body_location=torch.zeros_like(triplet.body_location), face_location=torch.zeros_like(triplet.face_location),
        reference=triplet.reference, reference_mask=triplet.reference_mask,
        reference_pose=reference_map.to(triplet.reference_pose), reference_face=torch.zeros_like(triplet.reference_face),
        reference_body_location=torch.zeros_like(triplet.reference_body_location),
        reference_face_location=torch.zeros_like(triplet.reference_face_location), record=record,
    )
