"""Driving Cue Triplet: pose, face and location cues from a driving video, aligned to a reference (DESIGN.md 4)."""

from .boxes import mask_boxes, mask_centre_columns, median_box, smooth_track, square_boxes
from .extract import extract_cues, working_size
from .face_cue import face_cue
from .location_cue import align_pose_cue, anchor_frames, fit_similarity, grid_soften, location_cue, warp_masks
from .pose_cue import low_pass, pose_cue
from .preview import contact_sheet, cue_sheet, location_overlay, overlay_location
from .types import CueConfig, CueRecord, CueTriplet, FaceTrack, PersonGeometry, Similarity

__all__ = [
    "CueConfig",
    "CueRecord",
    "CueTriplet",
    "FaceTrack",
    "PersonGeometry",
    "Similarity",
    "align_pose_cue",
    "anchor_frames",
    "contact_sheet",
    "cue_sheet",
    "extract_cues",
    "face_cue",
    "fit_similarity",
    "grid_soften",
    "location_cue",
    "location_overlay",
    "low_pass",
    "mask_boxes",
    "mask_centre_columns",
    "median_box",
    "overlay_location",
    "pose_cue",
    "smooth_track",
    "square_boxes",
    "warp_masks",
    "working_size",
]
