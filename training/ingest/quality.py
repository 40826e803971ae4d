"""Whether a clip is usable training data, by the cue stack: one person, a face, motion, light and focus.

The checks run on a few frames of each clip (`IngestConfig.check_frames`, evenly spaced) at a reduced size
(`IngestConfig.check_side` px on the long side), which costs a few milliseconds per checked frame beside the
seconds a clip costs to decode and encode.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from directanimator.cues.face_detection import MEDIAPIPE_MIN_CONFIDENCE, MEDIAPIPE_MODEL_SELECTION
from directanimator.cues.segmentation import MEDIAPIPE_CACHE, mediapipe_segmenter, mediapipe_solution

from .config import IngestConfig

MASK_LEVEL = 0.5  # person probability above which a pixel belongs to the person mask


@dataclass(frozen=True)
class ClipStats:
    """Measurements of a clip's checked frames; fractions are of those frames."""

    people: list[int]  # people seen in each checked frame: the larger of faces found and body-mask components
    faces: list[int]  # faces found in each checked frame
    one_person: float  # fraction with exactly one person
    no_person: float  # fraction with nobody
    face: float  # fraction with a face
    motion: float  # mean 1 - IoU of the person masks of consecutive checked frames
    brightness: float  # mean luma, 0..1
    sharpness: float  # median of var(Laplacian of grey) / var(grey) at the check size

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _count_faces(detector, image: np.ndarray) -> int:
    return len(detector.process(image).detections or ())


def _components(mask: np.ndarray, config: IngestConfig) -> int:
    """Separate bodies in a person mask: connected blobs at least `min_body_area` of the frame and
    `second_body_ratio` of the largest (so a hand that the mask cuts off at the wrist is not a second person)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats((mask > MASK_LEVEL).astype(np.uint8), connectivity=8)
    areas = stats[1:count, cv2.CC_STAT_AREA].astype(np.float64) / mask.size
    if areas.size == 0:
        return 0
    keep = (areas >= config.min_body_area) & (areas >= config.second_body_ratio * areas.max())
    return int(keep.sum())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def measure_clip(frames: np.ndarray, config: IngestConfig) -> ClipStats:
    """Measure checked frames ``[N, H, W, 3]`` uint8 RGB (already at the check size) of one clip."""
    height, width = frames.shape[1:3]
    faces_module = mediapipe_solution("face_detection")
    people, faces, masks, sharpness = [], [], [], []
    with ExitStack() as stack:
        segment = stack.enter_context(mediapipe_segmenter(height, width))
        # every detection, not the most confident one that directanimator.cues.detect_faces keeps: two faces mean
        # two people; the same graph and model as the cue stack's face detector (shared through its cache)
        detector = stack.enter_context(MEDIAPIPE_CACHE.use(
            ("face_detection", MEDIAPIPE_MODEL_SELECTION),
            lambda: faces_module.FaceDetection(model_selection=MEDIAPIPE_MODEL_SELECTION,
                                               min_detection_confidence=MEDIAPIPE_MIN_CONFIDENCE)))
        for image in frames:
            image = np.ascontiguousarray(image)
            mask = segment(image)
            n_faces = _count_faces(detector, image)
            faces.append(n_faces)
            people.append(max(n_faces, _components(mask, config)))
            masks.append(mask > MASK_LEVEL)
            grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            # relative to the frame's own contrast, so that a dim or low-contrast but focused frame is not "blurred"
            sharpness.append(float(cv2.Laplacian(grey, cv2.CV_64F).var() / max(float(grey.var()), 1.0)))
    luma = frames.astype(np.float32).mean(axis=(0, 1, 2)) / 255.0
    pairs = [(a, b) for a, b in zip(masks, masks[1:]) if a.any() and b.any()]
    people_arr = np.asarray(people)
    return ClipStats(
        people=people, faces=faces,
        one_person=float((people_arr == 1).mean()), no_person=float((people_arr == 0).mean()),
        face=float((np.asarray(faces) > 0).mean()),
        motion=float(np.mean([1.0 - _iou(a, b) for a, b in pairs])) if pairs else 0.0,
        brightness=float(luma @ np.array([0.299, 0.587, 0.114], np.float32)),
        sharpness=float(np.median(sharpness)),
    )


def rejection(stats: ClipStats, config: IngestConfig) -> str | None:
    """Why the clip is not kept (one short reason, the first check it fails), or None when it is kept."""
    if stats.brightness < config.min_brightness:
        return f"too dark (mean luma {stats.brightness:.2f} < {config.min_brightness})"
    if stats.one_person < config.min_one_person:
        several = 1.0 - stats.one_person - stats.no_person
        what = "no person" if stats.no_person >= several else "more than one person"
        return (f"{what} (exactly one person in {stats.one_person:.0%} of the checked frames < "
                f"{config.min_one_person:.0%}; people per frame {stats.people})")
    if stats.face < config.min_face:
        return f"no face (a face in {stats.face:.0%} of the checked frames < {config.min_face:.0%})"
    if stats.motion < config.min_motion:
        return f"too little motion (mask change {stats.motion:.3f} < {config.min_motion})"
    if stats.sharpness < config.min_sharpness:
        return f"too blurred (sharpness {stats.sharpness:.3f} < {config.min_sharpness})"
    return None
