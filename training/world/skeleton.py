"""The puppet's joint tree: joint names, body proportions, pose sequences and planar forward kinematics.

Body coordinates: ``u`` towards the character's left, ``v`` down, in units of standing height, pelvis at the
origin. A body turned by yaw ``psi`` about the vertical axis is drawn with ``x = u * cos(psi)`` (orthographic
view of a flat puppet), so a back-facing character (``psi = pi``) shows its left side on the image left.
The head is a short cylinder: face points sit at fixed angles around it and turn with ``body_yaw + head_yaw``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from directanimator.errors import InputError

JOINT_NAMES = (
    "pelvis", "neck", "head", "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "left_elbow", "left_wrist", "left_hand",
    "right_shoulder", "right_elbow", "right_wrist", "right_hand",
    "left_hip", "left_knee", "left_ankle", "left_toe",
    "right_hip", "right_knee", "right_ankle", "right_toe",
)  # fmt: skip
JOINT_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}
NUM_JOINTS = len(JOINT_NAMES)
FACE_JOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
BONES = (
    ("pelvis", "neck"), ("neck", "head"),
    ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("left_wrist", "left_hand"),
    ("neck", "right_shoulder"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("right_wrist", "right_hand"),
    ("pelvis", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"), ("left_ankle", "left_toe"),
    ("pelvis", "right_hip"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"), ("right_ankle", "right_toe"),
)  # fmt: skip

# Joint-angle degrees of freedom (radians) and their limits. Limb angles are measured from "down"; positive
# turns a limb outwards (away from the body's midline), negative across the body.
DOF_LIMITS = {
    "lean": (-0.3, 0.3),
    "head_roll": (-0.35, 0.35),
    "left_shoulder": (-2.0, 2.9), "left_elbow": (-2.9, 0.8), "left_wrist": (-0.6, 0.6),
    "right_shoulder": (-2.0, 2.9), "right_elbow": (-2.9, 0.8), "right_wrist": (-0.6, 0.6),
    "left_hip": (-0.3, 0.8), "left_knee": (-0.2, 1.5), "left_ankle": (-0.4, 0.4),
    "right_hip": (-0.3, 0.8), "right_knee": (-0.2, 1.5), "right_ankle": (-0.4, 0.4),
}  # fmt: skip
DOF_NAMES = tuple(DOF_LIMITS)
DOF_INDEX = {name: i for i, name in enumerate(DOF_NAMES)}

# Angles around the head cylinder (0 = nose, positive = the character's left) of the face points.
EYE_ANGLE = 0.42
EAR_ANGLE = np.pi / 2
FOOT_OUTWARD = 1.25  # rest angle of a foot from its shin, radians (feet point outwards in a frontal view)
FACE_VISIBLE_DEPTH = 0.3  # cos(total head yaw) above which the face is visible (and counts as a face)


@dataclass(frozen=True)
class Proportions:
    """Segment lengths and half-thicknesses in units of standing height (see `normalised`)."""

    head_rx: float = 0.062
    head_ry: float = 0.075
    neck: float = 0.035
    torso: float = 0.29
    shoulder_width: float = 0.105  # half-width, pelvis-neck axis to shoulder joint
    hip_width: float = 0.06
    upper_arm: float = 0.165
    forearm: float = 0.145
    hand: float = 0.06
    thigh: float = 0.24
    shin: float = 0.23
    foot: float = 0.06
    arm_thickness: float = 0.022  # radius of the upper arm; the forearm tapers from it
    leg_thickness: float = 0.034
    torso_thickness: float = 0.025  # rounding radius of the torso outline

    @property
    def head_top(self) -> float:
        """Distance from the pelvis up to the top of the head, standing straight."""
        return self.torso + self.neck + 2.0 * self.head_ry

    @property
    def sole(self) -> float:
        """Distance from the pelvis down to the soles, standing straight."""
        return 0.03 + self.thigh + self.shin + 0.6 * self.leg_thickness

    def normalised(self) -> "Proportions":
        """The same body scaled so that its standing height (head top to soles) is exactly 1."""
        total = self.head_top + self.sole
        return replace(self, **{f.name: getattr(self, f.name) / total for f in fields(self)})


@dataclass
class PoseSequence:
    """Everything that moves, per frame, independent of who moves: the output of `Motion.sample`.

    angles ``[F, D]`` (see DOF_NAMES); root ``[F, 2]`` pelvis offset in units of the placement height;
    scale ``[F]`` size factor; body_yaw, head_yaw ``[F]`` radians; mouth ``[F]`` opening 0..1; eyes ``[F]``
    openness 0..1 (0 = blink); brows ``[F]`` raise -1..1.
    """

    angles: np.ndarray
    root: np.ndarray
    scale: np.ndarray
    body_yaw: np.ndarray
    head_yaw: np.ndarray
    mouth: np.ndarray
    eyes: np.ndarray
    brows: np.ndarray

    def __len__(self) -> int:
        return int(self.angles.shape[0])

    def frame(self, index) -> "PoseSequence":
        """Frames selected by an index, slice or index array, as a new PoseSequence."""
        index = [index] if isinstance(index, (int, np.integer)) else index
        return PoseSequence(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def rest(cls, num_frames: int = 1) -> "PoseSequence":
        """Standing still, facing the camera, arms slightly out, eyes open."""
        angles = np.zeros((num_frames, len(DOF_NAMES)))
        for side in ("left", "right"):
            angles[:, DOF_INDEX[f"{side}_shoulder"]] = 0.25
            angles[:, DOF_INDEX[f"{side}_hip"]] = 0.08
        zeros = np.zeros(num_frames)
        return cls(angles, np.zeros((num_frames, 2)), np.ones(num_frames), zeros.copy(), zeros.copy(),
                   zeros.copy(), np.ones(num_frames), zeros.copy())


@dataclass(frozen=True)
class Placement:
    """Where a character stands, as canvas fractions: pelvis at ``(x * W, y * H)``, standing height ``height * H``."""

    x: float = 0.5
    y: float = 0.55
    height: float = 0.7

    def pixels(self, height: int, width: int) -> tuple[float, float, float]:
        """Pelvis x, pelvis y and standing height in pixels on a ``height x width`` canvas."""
        return self.x * width, self.y * height, self.height * height


@dataclass
class Body:
    """Posed geometry in pixels, per frame: what the renderer draws and what the ground truth reports.

    joints ``[F, J, 2]`` (x, y) px; joint_visible ``[F, J]`` (face points hidden when turned away; inside the
    canvas is not checked here); unit ``[F]`` px per unit of standing height; facing ``[F]`` = cos(body yaw);
    head_yaw ``[F]`` total head yaw; head_roll ``[F]`` head rotation in the image, radians.
    """

    joints: np.ndarray
    joint_visible: np.ndarray
    unit: np.ndarray
    facing: np.ndarray
    head_yaw: np.ndarray
    head_roll: np.ndarray

    def __len__(self) -> int:
        return int(self.joints.shape[0])


def _direction(angle: np.ndarray) -> np.ndarray:
    """Unit vectors ``[..., 2]`` at `angle` from straight down, positive towards +u."""
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1)


def _check_pose(pose: PoseSequence) -> None:
    count = len(pose)
    if pose.angles.ndim != 2 or pose.angles.shape[1] != len(DOF_NAMES):
        raise InputError(
            f"pose.angles: expected [F, {len(DOF_NAMES)}] joint angles ({', '.join(DOF_NAMES)}), "
            f"got shape {pose.angles.shape}. Build poses with Motion.sample or PoseSequence.rest."
        )
    for name in ("scale", "body_yaw", "head_yaw", "mouth", "eyes", "brows"):
        if getattr(pose, name).shape != (count,):
            raise InputError(f"pose.{name}: expected shape ({count},), got {getattr(pose, name).shape}.")
    if pose.root.shape != (count, 2):
        raise InputError(f"pose.root: expected shape ({count}, 2), got {pose.root.shape}.")


def forward_kinematics(proportions: Proportions, pose: PoseSequence, placement: Placement, *,
                       height: int, width: int) -> Body:
    """Joint positions in pixels for every frame of `pose`, with feet kept on the ground line.

    The lowest sole is brought back to the standing sole height each frame (so bent knees lower the pelvis
    instead of lifting the feet); `pose.root` then moves the whole body, and `pose.scale` scales it about
    the pelvis.
    """
    _check_pose(pose)
    p = proportions
    a = {name: pose.angles[:, i] for i, name in enumerate(DOF_NAMES)}
    count = len(pose)
    body = np.zeros((count, NUM_JOINTS, 2))
    lean = a["lean"]
    up = -_direction(lean)  # pelvis -> neck
    side = np.stack([np.cos(lean), -np.sin(lean)], axis=-1)  # towards +u, perpendicular to the spine
    down = -up
    J = JOINT_INDEX
    body[:, J["neck"]] = p.torso * up
    head_angle = lean + a["head_roll"]
    head_base = body[:, J["neck"]] - p.neck * _direction(lean + 0.5 * a["head_roll"])
    body[:, J["head"]] = head_base - p.head_ry * _direction(head_angle)
    shoulder_drop = 0.15 * p.torso_thickness
    for sign, name in ((1.0, "left"), (-1.0, "right")):
        shoulder = body[:, J["neck"]] + sign * p.shoulder_width * side + shoulder_drop * down
        upper = lean + sign * a[f"{name}_shoulder"]
        fore = upper + sign * a[f"{name}_elbow"]
        hand = fore + sign * a[f"{name}_wrist"]
        elbow = shoulder + p.upper_arm * _direction(upper)
        wrist = elbow + p.forearm * _direction(fore)
        body[:, J[f"{name}_shoulder"]] = shoulder
        body[:, J[f"{name}_elbow"]] = elbow
        body[:, J[f"{name}_wrist"]] = wrist
        body[:, J[f"{name}_hand"]] = wrist + p.hand * _direction(hand)
        hip = sign * p.hip_width * np.stack([np.ones(count), np.zeros(count)], axis=-1) + [0.0, 0.03]
        thigh = sign * a[f"{name}_hip"]
        shin = thigh - sign * a[f"{name}_knee"]
        foot = shin + sign * (FOOT_OUTWARD + a[f"{name}_ankle"])
        knee = hip + p.thigh * _direction(thigh)
        ankle = knee + p.shin * _direction(shin)
        body[:, J[f"{name}_hip"]] = hip
        body[:, J[f"{name}_knee"]] = knee
        body[:, J[f"{name}_ankle"]] = ankle
        body[:, J[f"{name}_toe"]] = ankle + p.foot * _direction(foot)
    # ground contact: the lowest of ankles and toes goes back to where a straight leg's ankle would be
    feet = body[:, [J["left_ankle"], J["left_toe"], J["right_ankle"], J["right_toe"]], 1].max(axis=1)
    body[:, :, 1] += (0.03 + p.thigh + p.shin) - feet[:, None]

    pelvis_x, pelvis_y, height_px = placement.pixels(height, width)
    unit = height_px * pose.scale
    facing = np.cos(pose.body_yaw)
    origin = np.stack([pelvis_x + pose.root[:, 0] * height_px, pelvis_y + pose.root[:, 1] * height_px], axis=-1)
    joints = np.empty_like(body)
    joints[..., 0] = origin[:, None, 0] + (unit * facing)[:, None] * body[..., 0]
    joints[..., 1] = origin[:, None, 1] + unit[:, None] * body[..., 1]

    # Head cylinder, in image space: a rotation by `a` in body space shows as a rotation by sign(facing) * a.
    yaw = pose.body_yaw + pose.head_yaw
    roll = head_angle * np.where(facing < 0, -1.0, 1.0)
    right = np.stack([np.cos(roll), -np.sin(roll)], axis=-1)  # head-local +x in the image
    below = _direction(roll)  # head-local +y (down) in the image
    visible = np.ones((count, NUM_JOINTS), dtype=bool)
    face_points = (  # name, angle around the head, height (fraction of head_ry), radius (fraction of head_rx)
        ("nose", 0.0, 0.15, 1.0),
        ("left_eye", EYE_ANGLE, -0.12, 0.9),
        ("right_eye", -EYE_ANGLE, -0.12, 0.9),
        ("left_ear", EAR_ANGLE, 0.0, 1.0),
        ("right_ear", -EAR_ANGLE, 0.0, 1.0),
    )
    for name, angle, dy, radius in face_points:
        local_x = (unit * radius * p.head_rx * np.sin(angle + yaw))[:, None]
        local_y = (unit * dy * p.head_ry)[:, None]
        joints[:, J[name]] = joints[:, J["head"]] + local_x * right + local_y * below
        depth = np.cos(angle + yaw)
        visible[:, J[name]] = depth > (-0.25 if name.endswith("ear") else FACE_VISIBLE_DEPTH)
    return Body(joints, visible, unit, facing, yaw, roll)
