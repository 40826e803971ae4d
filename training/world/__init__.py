"""A procedural animation world with exact ground truth: articulated 2D puppets, dance-like motion,
same-identity, cross-identity and pseudo-driving pairs, degradations, skeleton maps, export and Datasets."""

from .background import BACKGROUND_KINDS, Background, render_background, sample_background
from .cues import exact_cue_inputs, exact_cues, truth_cue_inputs
from .dataset import ExportedWorldDataset, WorldDataset, read_metadata, sample_to_dict
from .degrade import (
    DEGRADATIONS,
    Degradation,
    degrade,
    jpeg,
    low_light,
    low_resolution,
    noise,
    occluders,
    parse_degradations,
    shutter_seconds,
)
from .export import export_sample, export_world, ground_truth
from .identity import Face, Identity, Pattern, sample_identity
from .motion import Motion, sample_motion
from .pairs import (
    CrossIdPair,
    SameIdPair,
    Scene,
    WorldConfig,
    WorldSample,
    cross_id_pair,
    make_sample,
    perform,
    pool_identity,
    role_rng,
    pseudo_driving,
    render_scene,
    same_id_pair,
    sample_placement,
    sample_scene,
)
from .preview import preview_sheet, truth_overlay
from .render import RenderedClip, face_boxes, render_clip
from .skeleton import (
    BONES,
    DOF_NAMES,
    JOINT_INDEX,
    JOINT_NAMES,
    Body,
    Placement,
    PoseSequence,
    Proportions,
    forward_kinematics,
)
from .skeleton_map import OPENPOSE_JOINTS, EstimatorErrors, render_skeleton, simulate_estimator, to_openpose

__all__ = [
    "BACKGROUND_KINDS", "BONES", "DEGRADATIONS", "DOF_NAMES", "JOINT_INDEX", "JOINT_NAMES", "OPENPOSE_JOINTS",
    "Background", "Body", "CrossIdPair", "Degradation", "EstimatorErrors", "ExportedWorldDataset", "Face",
    "Identity", "Motion", "Pattern", "Placement", "PoseSequence", "Proportions", "RenderedClip", "SameIdPair",
    "Scene", "WorldConfig", "WorldDataset", "WorldSample",
    "cross_id_pair", "degrade", "exact_cue_inputs", "exact_cues", "export_sample", "export_world", "face_boxes",
    "forward_kinematics", "ground_truth", "jpeg", "low_light", "low_resolution", "make_sample", "noise",
    "occluders", "parse_degradations", "perform", "pool_identity", "preview_sheet", "pseudo_driving",
    "read_metadata", "render_background", "render_clip", "render_scene", "render_skeleton", "role_rng",
    "same_id_pair", "sample_background", "sample_identity", "sample_motion", "sample_placement", "sample_scene",
    "sample_to_dict", "shutter_seconds", "simulate_estimator", "to_openpose", "truth_cue_inputs", "truth_overlay",
]  # fmt: skip
