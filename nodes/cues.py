"""Cue nodes: person mask, pose cue, face crop, location cue, the whole triplet, and a preview sheet."""

from __future__ import annotations

from directanimator.cues import (
    CueConfig,
    FaceTrack,
    cue_sheet,
    extract_cues,
    face_cue,
    pose_cue,
    smooth_track,
    square_boxes,
)
from directanimator.cues.face_detection import detect_faces
from directanimator.cues.segmentation import bad_frames, segment_person
from directanimator.cues.preview import contact_sheet, overlay_location
from directanimator.cues.types import ANCHORS
from directanimator.errors import InputError
from directanimator.tensors import as_frames, as_masks

from ._comfy import comfy_progress, find_model, model_files, register_model_folder

CATEGORY = "DirectAnimator/cues"
FACES = "DA_FACES"  # a FaceTrack: per-frame face boxes in pixels of the frames they came from
CUES = "DA_CUES"  # a CueTriplet: the whole Driving Cue Triplet with its record

register_model_folder("sams", "sams", {".pth", ".pt", ".safetensors"})
NO_SAM = "none (use mediapipe)"

_FRAMES = ("IMAGE", {"tooltip": "Driving video frames (IMAGE batch), e.g. from Load Video."})
_CUTOFF = ("FLOAT", {"default": 0.12, "min": 0.01, "max": 1.0, "step": 0.01,
                     "tooltip": "Low-pass cutoff as a fraction of Nyquist. Lower hides more of the driver's "
                                "appearance (less identity leakage); higher keeps more motion detail."})
_FILTER = (["gaussian", "butterworth", "ideal"],
           {"default": "gaussian", "tooltip": "Shape of the low-pass filter. Gaussian has no ringing."})
_DETECTOR = (["auto", "mediapipe", "opencv"],
             {"default": "auto", "tooltip": "Face detector. auto: mediapipe, then OpenCV for the frames it misses."})
_SEGMENTER = (["mediapipe", "sam"],
              {"default": "mediapipe",
               "tooltip": "Person segmentation. sam refines mediapipe's mask with a segment-anything checkpoint "
                          "from models/sams."})
_CELL = ("INT", {"default": 16, "min": 1, "max": 128, "step": 1,
                 "tooltip": "Location-cue grid cell in pixels: the driver's outline is coarsened to this grid."})
_BLUR = ("FLOAT", {"default": 4.0, "min": 0.0, "max": 64.0, "step": 0.5,
                   "tooltip": "Gaussian blur (sigma, pixels) applied after gridding the location masks."})
_ANCHOR = (list(ANCHORS),
           {"default": "first",
            "tooltip": "Which driving frames are put onto the reference person. first: the first frame with a "
                       "person (the result starts where the reference stands and moves as the driver moves from "
                       "there). clip: the driver's median position over the clip (for a driver who starts "
                       "somewhere unusual)."})
_FACE_SCALE = ("FLOAT", {"default": 1.5, "min": 1.0, "max": 4.0, "step": 0.05,
                         "tooltip": "Enlargement of the squared face box before cropping."})


def _sam_input():
    return ([NO_SAM] + model_files("sams"),
            {"default": NO_SAM, "tooltip": "segment-anything checkpoint in models/sams (only for segmenter sam)."})


def _sam_path(name: str) -> str | None:
    """The file of `name`, listed in models/sams; InputError for anything else (absolute paths, '..')."""
    if not name or name == NO_SAM:
        return None
    return find_model("sams", name, what="sam_checkpoint")


def _validate_sam(sam_checkpoint=None):
    """VALIDATE_INPUTS of the nodes with a sam_checkpoint input: taking it, ComfyUI leaves its list check to us."""
    if sam_checkpoint is None:  # linked from another node: checked when it runs
        return True
    try:
        _sam_path(sam_checkpoint)
    except InputError as exc:
        return str(exc)
    return True


class DirectAnimatorPersonMask:
    """Driving frames -> soft person mask per frame."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    FUNCTION = "run"
    DESCRIPTION = "Segments the person in every frame (mediapipe selfie segmentation, optionally refined by SAM)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": _FRAMES,
            "segmenter": _SEGMENTER,
            "sam_checkpoint": _sam_input(),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, sam_checkpoint=None):
        return _validate_sam(sam_checkpoint)

    def run(self, frames, segmenter, sam_checkpoint):
        with comfy_progress(len(frames)) as progress:
            mask = segment_person(frames, backend=segmenter, sam_checkpoint=_sam_path(sam_checkpoint),
                                  on_frame=progress)
        return (mask,)


class DirectAnimatorPoseCue:
    """Driving frames -> pose cue: grey foreground, low-pass filtered."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("pose_cue",)
    FUNCTION = "run"
    DESCRIPTION = "Grey person foreground, FFT low-pass filtered: motion and silhouette stay, clothing texture goes."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": _FRAMES,
                "cutoff": _CUTOFF,
                "filter": _FILTER,
                "blank_bad_frames": ("BOOLEAN", {"default": True,
                                                 "tooltip": "Blank frames whose mask is empty or jumps in area "
                                                            "against its neighbours (the model fills them)."}),
            },
            "optional": {"mask": ("MASK", {"tooltip": "Person mask from any node; computed with mediapipe "
                                                      "when absent."})},
        }

    def run(self, frames, cutoff, filter, blank_bad_frames, mask=None):
        frames = as_frames(frames, name="frames")
        with comfy_progress(2 * len(frames) if mask is None else len(frames)) as progress:
            if mask is None:
                mask = segment_person(frames, on_frame=progress)
                offset = len(frames)
            else:
                mask, offset = as_masks(mask, like=frames, name="mask"), 0
            bad = bad_frames(mask) if blank_bad_frames else None
            cue = pose_cue(frames, mask=mask, cutoff=cutoff, filter=filter, bad=bad,
                           on_frame=lambda i: progress(offset + i))
        return (cue,)


class DirectAnimatorFaceCrop:
    """Driving frames -> face cue: the face cropped, centred and resized on a canvas of the frames' size."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", FACES)
    RETURN_NAMES = ("face_cue", "faces")
    FUNCTION = "run"
    DESCRIPTION = "Detects, smooths and gap-fills the face box, then crops the face into a centred square."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": _FRAMES,
            "detector": _DETECTOR,
            "scale": _FACE_SCALE,
            "smoothing": ("INT", {"default": 5, "min": 1, "max": 31, "step": 1,
                                  "tooltip": "Frames in the temporal smoothing window of the face box."}),
            "max_gap": ("INT", {"default": 12, "min": 0, "max": 120, "step": 1,
                                "tooltip": "Longest run of frames without a detection that is filled by "
                                           "interpolating the neighbouring boxes."}),
        }}

    def run(self, frames, detector, scale, smoothing, max_gap):
        frames = as_frames(frames, name="frames")
        with comfy_progress(len(frames)) as progress:
            raw = detect_faces(frames, backend=detector, on_frame=progress)
        track = smooth_track(raw, window=smoothing, max_gap=max_gap)
        cue = face_cue(frames, square_boxes(track.boxes, scale=scale), track.valid)
        return (cue, track)


def _cue_config(frames, **options) -> CueConfig:
    height, width = int(frames.shape[1]), int(frames.shape[2])
    return CueConfig(height=height, width=width, **options)


class DirectAnimatorLocationCue:
    """Reference + driving frames -> soft body and face masks moved onto where the reference stands."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK", "MASK", "IMAGE")
    RETURN_NAMES = ("body_location", "face_location", "reference")
    FUNCTION = "run"
    DESCRIPTION = ("Aligns the driving person onto the reference person (one scale + shift per clip) and "
                   "coarsens the masks on a grid. Outputs are at the frames' size; the reference is letterboxed "
                   "to it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": ("IMAGE", {"tooltip": "The reference character image (first image is used)."}),
                "frames": _FRAMES,
                "grid_cell": _CELL,
                "grid_blur": _BLUR,
                "detector": _DETECTOR,
                "anchor": _ANCHOR,
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Driving person mask from any node; mediapipe when absent."}),
                "faces": (FACES, {"tooltip": "Face boxes from DirectAnimator Face Crop; detected when absent."}),
                "reference_mask": ("MASK", {"tooltip": "Person mask of the reference; mediapipe when absent."}),
            },
        }

    def run(self, reference, frames, grid_cell, grid_blur, detector, anchor="first", mask=None, faces=None,
            reference_mask=None):
        frames = as_frames(frames, name="frames")
        config = _cue_config(frames, segmenter="mediapipe" if mask is None else "given",
                             face_detector=detector if faces is None else "given",
                             grid_cell=grid_cell, grid_blur=grid_blur, anchor=anchor)
        with comfy_progress(len(frames)) as progress:
            triplet = extract_cues(reference[:1], frames, config, driving_mask=mask,
                                   driving_face_boxes=faces if isinstance(faces, FaceTrack) else None,
                                   reference_mask=reference_mask, on_frame=progress)
        return (triplet.body_location, triplet.face_location, triplet.reference)


class DirectAnimatorCueTriplet:
    """Reference + driving frames -> the whole Driving Cue Triplet, for the encoder and for inspection."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (CUES, "IMAGE", "IMAGE", "MASK", "MASK", "IMAGE")
    RETURN_NAMES = ("cues", "pose_cue", "face_cue", "body_location", "face_location", "reference")
    FUNCTION = "run"
    DESCRIPTION = "Pose, face and location cues in one pass, at the frames' size (a multiple of 16)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": ("IMAGE", {"tooltip": "The reference character image (first image is used)."}),
                "frames": _FRAMES,
                "cutoff": _CUTOFF,
                "filter": _FILTER,
                "segmenter": _SEGMENTER,
                "sam_checkpoint": _sam_input(),
                "detector": _DETECTOR,
                "face_scale": _FACE_SCALE,
                "grid_cell": _CELL,
                "grid_blur": _BLUR,
                "anchor": _ANCHOR,
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Driving person mask from any node; replaces the segmenter."}),
                "reference_mask": ("MASK", {"tooltip": "Person mask of the reference; replaces the segmenter."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, sam_checkpoint=None):
        return _validate_sam(sam_checkpoint)

    def run(self, reference, frames, cutoff, filter, segmenter, sam_checkpoint, detector, face_scale, grid_cell,
            grid_blur, anchor="first", mask=None, reference_mask=None):
        frames = as_frames(frames, name="frames")
        config = _cue_config(frames, segmenter="given" if mask is not None else segmenter,
                             sam_checkpoint=_sam_path(sam_checkpoint), face_detector=detector, cutoff=cutoff,
                             filter=filter, face_scale=face_scale, grid_cell=grid_cell, grid_blur=grid_blur,
                             anchor=anchor)
        with comfy_progress(len(frames)) as progress:
            t = extract_cues(reference[:1], frames, config, driving_mask=mask, reference_mask=reference_mask,
                             on_frame=progress)
        return (t, t.pose, t.face, t.body_location, t.face_location, t.reference)


class DirectAnimatorCuePreview:
    """Cues -> one IMAGE contact sheet: driving frames, pose cue, face cue and the location overlay."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("sheet",)
    FUNCTION = "run"
    DESCRIPTION = "A contact sheet of the cues, from a DA_CUES bundle or from the separate cue outputs."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "columns": ("INT", {"default": 6, "min": 1, "max": 32, "step": 1,
                                    "tooltip": "Frames shown per row, spread evenly over the clip."}),
            },
            "optional": {
                "cues": (CUES, {"tooltip": "The bundle from DirectAnimator Cue Triplet (takes precedence)."}),
                "frames": ("IMAGE", {"tooltip": "Driving frames, shown in the first row."}),
                "pose_cue": ("IMAGE", {"tooltip": "Pose cue from DirectAnimator Pose Cue."}),
                "face_cue": ("IMAGE", {"tooltip": "Face cue from DirectAnimator Face Crop."}),
                "body_location": ("MASK", {"tooltip": "Body location mask from DirectAnimator Location Cue."}),
                "face_location": ("MASK", {"tooltip": "Face location mask from DirectAnimator Location Cue."}),
                "reference": ("IMAGE", {"tooltip": "Reference at the cue size, under the location masks."}),
            },
        }

    def run(self, columns, cues=None, frames=None, pose_cue=None, face_cue=None, body_location=None,
            face_location=None, reference=None):
        if cues is not None:
            return (cue_sheet(cues, driving=frames, columns=columns),)
        rows = [("driving", frames), ("pose", pose_cue), ("face", face_cue)]
        if body_location is not None or face_location is not None:
            rows.append(("location", overlay_location(reference, body_location, face_location)))
        return (contact_sheet([(name, x) for name, x in rows if x is not None], columns=columns),)


NODE_CLASS_MAPPINGS = {
    "DirectAnimatorPersonMask": DirectAnimatorPersonMask,
    "DirectAnimatorPoseCue": DirectAnimatorPoseCue,
    "DirectAnimatorFaceCrop": DirectAnimatorFaceCrop,
    "DirectAnimatorLocationCue": DirectAnimatorLocationCue,
    "DirectAnimatorCueTriplet": DirectAnimatorCueTriplet,
    "DirectAnimatorCuePreview": DirectAnimatorCuePreview,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DirectAnimatorPersonMask": "DirectAnimator Person Mask",
    "DirectAnimatorPoseCue": "DirectAnimator Pose Cue",
    "DirectAnimatorFaceCrop": "DirectAnimator Face Crop",
    "DirectAnimatorLocationCue": "DirectAnimator Location Cue",
    "DirectAnimatorCueTriplet": "DirectAnimator Cue Triplet",
    "DirectAnimatorCuePreview": "DirectAnimator Cue Preview",
}
