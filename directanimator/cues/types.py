"""Data types shared by the cue builders: configuration, face tracks, transforms, the triplet and its record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal, get_args

import torch
from torch import Tensor

from ..errors import CueError

FilterType = Literal["gaussian", "ideal", "butterworth"]
SegmenterName = Literal["mediapipe", "sam", "given"]
FaceDetectorName = Literal["auto", "mediapipe", "opencv", "given"]
AnchorName = Literal["first", "clip"]
ANCHORS: tuple[str, ...] = get_args(AnchorName)  # the location anchors, for checks and choices


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

    def validate(self) -> "CueConfig":
        """Raise CueError on an option out of range; return self."""
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 64 or value % 16):
                raise CueError(f"CueConfig.{name}={value}: must be a multiple of 16 and at least 64.")
        if not 0.0 < self.cutoff <= 1.0:
            raise CueError(f"CueConfig.cutoff={self.cutoff}: must be in (0, 1], a fraction of Nyquist.")
        if self.filter not in ("gaussian", "ideal", "butterworth"):
            raise CueError(f"CueConfig.filter={self.filter!r}: use 'gaussian', 'ideal' or 'butterworth'.")
        if self.segmenter not in ("mediapipe", "sam", "given"):
            raise CueError(f"CueConfig.segmenter={self.segmenter!r}: use 'mediapipe', 'sam' or 'given'.")
        if self.segmenter == "sam" and not self.sam_checkpoint:
            raise CueError("CueConfig.segmenter='sam' needs sam_checkpoint, the path of a segment-anything checkpoint.")
        if self.face_detector not in ("auto", "mediapipe", "opencv", "given"):
            raise CueError(
                f"CueConfig.face_detector={self.face_detector!r}: use 'auto', 'mediapipe', 'opencv' or 'given'."
            )
        if self.anchor not in ANCHORS:
            raise CueError(f"CueConfig.anchor={self.anchor!r}: use 'first' (the first good driving frame) or 'clip' "
                           "(the median over the clip).")
        if self.face_scale < 1.0:
            raise CueError(f"CueConfig.face_scale={self.face_scale}: must be at least 1.0.")
        if self.grid_cell < 1 or self.grid_blur < 0 or self.face_smooth < 1 or self.max_face_gap < 0:
            raise CueError("CueConfig: grid_cell and face_smooth must be >= 1; grid_blur and max_face_gap >= 0.")
        if not 0.0 < self.area_jump:
            raise CueError(f"CueConfig.area_jump={self.area_jump}: must be positive.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_saved(cls, saved: dict | None) -> "CueConfig":
        """The config a checkpoint or training cache recorded (`to_dict`); keys this version does not know are
        dropped, and options it did not record take their defaults."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (saved or {}).items() if k in known})


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
    ``record.pose_aligned``);
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
