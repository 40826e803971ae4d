"""Data types shared by the cue builders: configuration, face tracks, transforms, the triplet and its record."""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from ..errors import CueError
from ..tensors import MAX_SIDE_PX, MIN_SIDE_PX, SIZE_MULTIPLE

FilterType = Literal["gaussian", "ideal", "butterworth"]
SegmenterName = Literal["mediapipe", "sam", "given"]
FaceDetectorName = Literal["auto", "mediapipe", "opencv", "given"]
AnchorName = Literal["first", "clip"]
ANCHORS: tuple[str, ...] = get_args(AnchorName)  # the location anchors, for checks and choices
FILTERS: tuple[str, ...] = get_args(FilterType)

log = logging.getLogger(__name__)


@dataclass
class CueConfig:
    """Every option of Driving Cue Triplet extraction; serialised into training caches and checkpoints."""

    height: int | None = None  # working size in px (multiple of 16); None: from the driving video
    width: int | None = None
    segmenter: SegmenterName = "mediapipe"
    sam_checkpoint: str | None = None  # path to a segment-anything checkpoint (.pth/.pt/.safetensors)
    face_detector: FaceDetectorName = "auto"  # auto: mediapipe, then OpenCV for the frames it misses
    cutoff: float = 0.12  # pose-cue low-pass cutoff, fraction of Nyquist
    filter: FilterType = "gaussian"
    butterworth_order: int = 2
    # warp the pose cue by the location cue's transform, so it stands where the result's body will stand (the
    # paper leaves it in driving pixels; docs/model.md)
    align_pose: bool = False
    # which driving frames the location transform puts onto the reference: "first", the first good frame (the
    # result starts where the reference stands and moves from there as the driver moves from its first frame), or
    # "clip", the median over the clip (DESIGN.md 4's first reading; docs/world.md has both measured)
    anchor: AnchorName = "first"
    face_scale: float = 1.5  # enlargement of the squared face box before cropping
    face_smooth: int = 5  # frames in the temporal smoothing window of face boxes
    max_face_gap: int = 12  # longest run of missed frames filled by interpolation
    grid_cell: int = 16  # location-cue grid cell, px
    grid_blur: float = 4.0  # Gaussian sigma after gridding, px
    area_jump: float = 0.5  # relative mask-area change against neighbours that marks a frame bad

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "CueConfig":
        """Raise CueError naming the first option of the wrong type or out of range; return self.

        Runs when the config is built; call it again after changing a field in place."""
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_int(value) or value < MIN_SIDE_PX or value > MAX_SIDE_PX or value % SIZE_MULTIPLE:
                nearest = min(MAX_SIDE_PX, max(MIN_SIDE_PX, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)) \
                    if _is_number(value) and math.isfinite(value) else MIN_SIDE_PX
                raise CueError(f"CueConfig.{name}={value!r}: must be a multiple of {SIZE_MULTIPLE} and at least "
                               f"{MIN_SIDE_PX} px (at most {MAX_SIDE_PX}), e.g. {nearest}; or None to derive it "
                               "from the driving video.")
        for name in ("butterworth_order", "face_smooth", "max_face_gap", "grid_cell"):
            if not _is_int(getattr(self, name)):
                raise CueError(f"CueConfig.{name}={getattr(self, name)!r}: must be a whole number.")
        for name in ("cutoff", "face_scale", "grid_blur", "area_jump"):
            if not _is_number(getattr(self, name)):
                raise CueError(f"CueConfig.{name}={getattr(self, name)!r}: must be a number.")
        if not isinstance(self.align_pose, bool):
            raise CueError(f"CueConfig.align_pose={self.align_pose!r}: must be true or false.")
        if self.sam_checkpoint is not None and not isinstance(self.sam_checkpoint, (str, os.PathLike)):
            raise CueError(f"CueConfig.sam_checkpoint={self.sam_checkpoint!r}: must be a file path or None.")
        if not 0.0 < self.cutoff <= 1.0:
            raise CueError(f"CueConfig.cutoff={self.cutoff}: must be in (0, 1], a fraction of Nyquist.")
        if self.filter not in FILTERS:
            raise CueError(f"CueConfig.filter={self.filter!r}: use 'gaussian', 'ideal' or 'butterworth'.")
        if self.butterworth_order < 1:
            raise CueError(f"CueConfig.butterworth_order={self.butterworth_order}: must be at least 1.")
        if self.segmenter not in get_args(SegmenterName):
            raise CueError(f"CueConfig.segmenter={self.segmenter!r}: use 'mediapipe', 'sam' or 'given'.")
        if self.segmenter == "sam" and not self.sam_checkpoint:
            raise CueError("CueConfig.segmenter='sam' needs sam_checkpoint, the path of a segment-anything checkpoint.")
        if self.face_detector not in get_args(FaceDetectorName):
            raise CueError(
                f"CueConfig.face_detector={self.face_detector!r}: use 'auto', 'mediapipe', 'opencv' or 'given'."
            )
        if self.anchor not in ANCHORS:
            raise CueError(f"CueConfig.anchor={self.anchor!r}: use 'first' (the first good driving frame) or 'clip' "
                           "(the median over the clip).")
        if not self.face_scale >= 1.0:
            raise CueError(f"CueConfig.face_scale={self.face_scale}: must be at least 1.0.")
        for name, low, what in (("grid_cell", 1, "px"), ("face_smooth", 1, "frames"), ("grid_blur", 0, "px"),
                                ("max_face_gap", 0, "frames")):
            if not getattr(self, name) >= low:
                raise CueError(f"CueConfig.{name}={getattr(self, name)}: must be at least {low} ({what}).")
        if not 0.0 < self.area_jump < math.inf:
            raise CueError(f"CueConfig.area_jump={self.area_jump}: must be a positive number.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "cue config") -> "CueConfig":
        """The config of `data` (a user's settings); a key that is not an option is a CueError naming it."""
        if not isinstance(data, Mapping):
            raise CueError(f"{name}: expected a mapping of CueConfig options, got {type(data).__name__}.")
        known = list(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise CueError(f"{name}: unknown option {key!r}.{hint} CueConfig options: {', '.join(known)}.")
        return cls(**data)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any] | None, *, name: str = "saved cue config") -> "CueConfig":
        """The config a checkpoint or training cache recorded (`to_dict`); keys this version does not know are
        dropped with a warning naming them, and options it did not record take their defaults."""
        saved = dict(saved or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in saved if k not in known)
        if unknown:
            log.warning("%s: ignoring option(s) this version does not know: %s (made by another version?)", name,
                        ", ".join(unknown))
        try:
            return cls(**{k: v for k, v in saved.items() if k in known})
        except CueError as error:
            raise CueError(f"{name}: {error}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class FaceTrack:
    """Face boxes over a clip: ``boxes [F, 4]`` float pixels (x0, y0, x1, y1) and ``valid [F]`` bool."""

    boxes: Tensor
    valid: Tensor
    detected: Tensor | None = None  # raw detections before gap filling, ``[F]`` bool
    backend: str = ""

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4 or self.valid.shape != self.boxes.shape[:1]:
            raise CueError(f"FaceTrack: boxes must be [F, 4] and valid [F], got {tuple(self.boxes.shape)}.")
        if self.detected is None:
            self.detected = self.valid.clone()


@dataclass
class Similarity:
    """``x' = scale * x + tx``, ``y' = scale * y + ty`` in pixels: driving coordinates to reference coordinates."""

    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    def apply_boxes(self, boxes: Tensor) -> Tensor:
        """Map boxes ``[..., 4]`` (x0, y0, x1, y1)."""
        offset = boxes.new_tensor([self.tx, self.ty, self.tx, self.ty])
        return boxes * self.scale + offset

    def apply_points(self, points: Tensor) -> Tensor:
        """Map points ``[..., 2]`` (x, y)."""
        return points * self.scale + points.new_tensor([self.tx, self.ty])

    def inverse(self) -> "Similarity":
        return Similarity(1.0 / self.scale, -self.tx / self.scale, -self.ty / self.scale)


@dataclass(frozen=True)
class PersonGeometry:
    """Where a person stands, in working-frame pixels: what `fit_similarity` compares between driving and reference.

    A clip has one box per frame and `valid` picks the frames the fit uses (`anchor_frames`), reduced to their
    median; one picture (the reference) is a clip of one frame, made by :meth:`picture`.
    """

    boxes: Tensor  # [F, 4] person boxes (x0, y0, x1, y1) px
    valid: Tensor | None = None  # [F] bool: the frames to fit on; None: every frame
    face: Tensor | None = None  # one face box (x0, y0, x1, y1) px (a clip's: e.g. the median over `valid`)
    # the content rectangle (x0, y0, x1, y1) px, e.g. inside a letterbox or (0, 0, W, H): a box side on its border
    # is cut (the person goes on outside the picture); None: no side counts as cut
    area: Tensor | tuple[float, float, float, float] | None = None
    centres: Tensor | None = None  # [F] body centre columns px (`mask_centre_columns`); None: box rules only

    @classmethod
    def picture(cls, box, *, face=None, area=None, centre: float | None = None) -> "PersonGeometry":
        """The person of one picture: its box ``(x0, y0, x1, y1)`` px and, optionally, face, area and centre column."""
        return cls(boxes=torch.as_tensor(box, dtype=torch.float32).reshape(1, -1), face=face, area=area,
                   centres=None if centre is None else torch.tensor([float(centre)]))


@dataclass
class CueRecord:
    """What cue extraction found and decided, for previews, debugging and training caches."""

    person_boxes: Tensor  # [F, 4] driving person box per frame (px, working size)
    person_valid: Tensor  # [F] bool
    face_boxes: Tensor  # [F, 4] smoothed, gap-filled, squared and enlarged face crop boxes
    face_valid: Tensor  # [F] bool
    bad_frames: Tensor  # [F] bool: empty mask or area jump; pose cue blanked
    transform: Similarity  # driving -> reference
    reference_person_box: Tensor  # [4]
    reference_face_box: Tensor | None  # [4] or None when the reference has no detectable face
    backends: dict = field(default_factory=dict)  # {"segmenter": ..., "face_detector": ...}
    notes: list = field(default_factory=list)  # human-readable adjustments (resizes, fallbacks)
    pose_aligned: bool = False  # the pose cue was warped by `transform` (CueConfig.align_pose)
    # working size and letterbox of each input: {"working_size": [H, W], "driving": {...}, "reference": {...}},
    # each with "source_size" [h, w], "scale" [sx, sy] and "content" [x0, y0, x1, y1] px at working size
    geometry: dict = field(default_factory=dict)


# the driving-frame tensors of each cue, for CueTriplet.blanked
BLANKABLE = {"pose": ("pose",), "face": ("face",), "location": ("body_location", "face_location")}


@dataclass
class CueTriplet:
    """The Driving Cue Triplet at working size ``H x W``, plus its record.

    pose: ``[F, H, W, 3]`` grey low-passed foreground (driving coordinates; reference coordinates when
    ``record.pose_aligned``); from `extract_cues` its three channels are one channel repeated as a view (stride 0
    on the last dimension, as `Tensor.expand` makes): read it freely, ``.contiguous()`` before writing into it;
    face: ``[F, H, W, 3]`` centred face crops, black where no face was found (``record.face_valid``);
    body_location, face_location: ``[F, H, W]`` soft masks in reference coordinates;
    reference: ``[1, H, W, 3]`` the reference at working size; reference_mask: ``[1, H, W]`` its person mask;
    reference_pose, reference_face ``[1, H, W, 3]`` and reference_body_location, reference_face_location
    ``[1, H, W]``: the reference's own cues, which condition the leading reference latent frame (DESIGN.md 5).
    """

    pose: Tensor
    face: Tensor
    body_location: Tensor
    face_location: Tensor
    reference: Tensor
    reference_mask: Tensor
    reference_pose: Tensor
    reference_face: Tensor
    reference_body_location: Tensor
    reference_face_location: Tensor
    record: CueRecord

    TENSOR_FIELDS = (
        "pose", "face", "body_location", "face_location", "reference", "reference_mask",
        "reference_pose", "reference_face", "reference_body_location", "reference_face_location",
    )

    @property
    def num_frames(self) -> int:
        return int(self.pose.shape[0])

    def blanked(self, cue: str) -> "CueTriplet":
        """A copy with one cue of the driving frames set to zero: "pose", "face" or "location" (both location
        masks). The reference's own cues stay: what a model's result owes to that cue is the difference."""
        fields = BLANKABLE.get(cue)
        if fields is None:
            raise CueError(f"cannot blank cue {cue!r}: choose one of {', '.join(BLANKABLE)}")
        return replace(self, **{name: torch.zeros_like(getattr(self, name)) for name in fields})

    def to(self, device: torch.device | str) -> "CueTriplet":
        for name in self.TENSOR_FIELDS:
            setattr(self, name, getattr(self, name).to(device))
        return self
