"""Person segmentation: mediapipe selfie segmentation (bundled weights, the default) or SAM prompted by it.

Also flags frames whose mask is empty or jumps in area against its neighbours (DESIGN.md 4, "Person mask").
"""

from __future__ import annotations

import importlib
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BackendUnavailableError, CueError
from ..tensors import as_frames, as_masks
from .boxes import BOX_THRESHOLD, above_box
from .buffers import empty_buffer
from .resample import opencv

log = logging.getLogger(__name__)

SegmentationBackend = Literal["mediapipe", "sam"]

MEDIAPIPE_INSTALL_HINT = (
    'install mediapipe 0.10.21 (`pip install "mediapipe==0.10.21"`, Python 3.9 to 3.12; newer releases ship '
    "no bundled models)"
)

# Selfie segmentation has a square general model (256x256 input) and a landscape one (256x144). The graph
# stretches the frame to the model input, so the model whose input shape is closest to the frame distorts
# people least: the landscape model only for frames clearly wider than tall. On the portrait dance video the
# square model also gave cleaner legs and arms.
LANDSCAPE_MODEL_MIN_ASPECT = 1.33  # width / height; between 1 (square model) and 16/9 (landscape model)
# Mask values below this are set to 0. The selfie model's sigmoid gives the background values down to 1e-40
# (float32 denormals, about 1% of a frame's pixels on the dance video), and arithmetic on denormals is many
# times slower on x86: they made the pose cue's filtering about 30% slower. 2^-24 is below float32's resolution
# next to 1, so no mask value that could matter changes.
MASK_FLOOR = 2.0**-24
# Rows per strip where one frame goes through several per-pixel passes (`frames_uint8`, `_clip_mask`): a strip
# of a 512 px wide frame stays in the core's cache between the passes, a whole frame does not.
STRIP_ROWS = 64


def mediapipe_solution(name: str):
    """Import and return ``mediapipe.solutions.<name>``; raise BackendUnavailableError naming what to install."""
    try:
        module = importlib.import_module(f"mediapipe.python.solutions.{name}")
    except Exception as exc:  # ImportError, or a broken protobuf/numpy pairing raising at import time
        raise BackendUnavailableError(
            f"mediapipe {name.replace('_', ' ')} is unavailable ({type(exc).__name__}: {exc}); "
            f"{MEDIAPIPE_INSTALL_HINT}."
        ) from exc
    package_dir = Path(module.__file__).resolve().parents[2]  # .../mediapipe
    models = {
        "selfie_segmentation": "modules/selfie_segmentation/selfie_segmentation.tflite",
        "face_detection": "modules/face_detection/face_detection_full_range_sparse.tflite",
    }
    model = models.get(name)
    if model is not None and not (package_dir / model).is_file():
        raise BackendUnavailableError(
            f"mediapipe {name.replace('_', ' ')}: the bundled model {model} is missing from {package_dir}; "
            f"{MEDIAPIPE_INSTALL_HINT}."
        )
    return module


class _CachedSolutions:
    """Per-process cache of mediapipe solution graphs; each one is used by one caller at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple, tuple[object, threading.Lock]] = {}

    @contextmanager
    def use(self, key: tuple, factory: Callable[[], object]) -> Iterator[object]:
        with self._lock:
            if key not in self._items:
                self._items[key] = (factory(), threading.Lock())
            solution, lock = self._items[key]
        with lock:
            yield solution


MEDIAPIPE_CACHE = _CachedSolutions()


def frames_uint8(frames: Tensor, *, luma: Tensor | None = None) -> np.ndarray:
    """Frames ``[F, H, W, 3]`` float 0..1 -> one uint8 array ``[F, H, W, 3]`` (each by `frame_uint8`), for
    detectors that read the same frames (extract_cues converts once for segmentation and face detection).

    `luma` ``[F, H, W]`` (contiguous CPU float32) also receives each frame's BT.601 luma as the pose cue computes
    it (OpenCV's RGB -> grey), from the same read of the frame while it is in cache; with OpenCV only."""
    out = np.empty((*frames.shape[:3], 3), np.uint8)
    cv2 = opencv()
    if luma is None or cv2 is None:
        for i in range(frames.shape[0]):
            frame_uint8(frames[i], out=out[i])
        return out
    luma_np = luma.numpy()
    for i in range(frames.shape[0]):
        frame = np.ascontiguousarray(frames[i].detach().cpu().numpy(), dtype=np.float32)
        # both conversions strip by strip, the second reading the rows the first just read (in cache): a third
        # less time than two passes over each frame (the values are per pixel, the same either way)
        for top in range(0, frame.shape[0], STRIP_ROWS):
            rows = slice(top, top + STRIP_ROWS)
            cv2.convertScaleAbs(frame[rows], dst=out[i, rows], alpha=255.0)
            cv2.cvtColor(frame[rows], cv2.COLOR_RGB2GRAY, dst=luma_np[i, rows])
    return out


def frame_uint8(frame: Tensor, out: np.ndarray | None = None) -> np.ndarray:
    """One frame ``[H, W, 3]`` float 0..1 -> contiguous uint8 RGB numpy array, as the detectors want it (into
    `out` when given)."""
    # torch's float -> uint8 cast took 36 ms for a 512x896 frame on the 2-core test machine; OpenCV's saturating
    # convert takes 0.4 ms (numpy 1.5 ms), which matters at the 25 fps the cue extraction aims for.
    array = np.ascontiguousarray(frame.detach().cpu().numpy(), dtype=np.float32)
    try:
        import cv2
    except ImportError:
        converted = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if out is None:
            return converted
        out[...] = converted
        return out
    return cv2.convertScaleAbs(array, dst=out, alpha=255.0)  # rounds and saturates to 0..255


def selfie_model_for(height: int, width: int) -> int:
    """mediapipe selfie-segmentation ``model_selection`` for a frame size: 0 square/portrait, 1 landscape."""
    return 1 if width >= LANDSCAPE_MODEL_MIN_ASPECT * height else 0


@contextmanager
def mediapipe_segmenter(height: int, width: int) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
    """Yield ``segment(rgb_uint8 [H, W, 3]) -> float32 [H, W]`` person probability, using a cached graph."""
    module = mediapipe_solution("selfie_segmentation")
    model_selection = selfie_model_for(height, width)

    def factory():
        log.debug("Creating mediapipe selfie segmentation (model_selection=%d)", model_selection)
        return module.SelfieSegmentation(model_selection=model_selection)

    with MEDIAPIPE_CACHE.use(("selfie_segmentation", model_selection), factory) as solution:

        def segment(image: np.ndarray) -> np.ndarray:
            mask = solution.process(image).segmentation_mask
            if mask is None:  # mediapipe returns None when the graph produced no packet
                return np.zeros(image.shape[:2], np.float32)
            return mask

        yield segment


def segment_person(
    frames: Tensor,
    *,
    backend: SegmentationBackend = "mediapipe",
    sam_checkpoint: str | None = None,
    threshold: float = 0.5,
    on_frame: Callable[[int], None] | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """Soft person masks ``[F, H, W]`` in 0..1 for `frames` ``[F, H, W, 3]``, on the frames' device.

    backend "mediapipe": selfie segmentation, returned as is. "sam": a segment-anything checkpoint
    (`sam_checkpoint`, .pth/.pt/.safetensors) prompted per frame with the box and points of the mediapipe mask
    at level `threshold`; frames where mediapipe finds nobody stay empty. `device` only applies to SAM
    (default: CUDA when available). `on_frame(i)` is called after each frame and may raise to stop.
    """
    return _segment_person(as_frames(frames, name="frames"), backend=backend, sam_checkpoint=sam_checkpoint,
                           threshold=threshold, on_frame=on_frame, device=device)


def _segment_person(
    frames: Tensor,
    *,
    backend: SegmentationBackend = "mediapipe",
    sam_checkpoint: str | None = None,
    threshold: float = 0.5,
    on_frame: Callable[[int], None] | None = None,
    device: str | torch.device | None = None,
    images: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> Tensor:
    """`segment_person` on frames already checked by `as_frames` (extract_cues checks them once for all stages);
    `images`: the frames already converted by `frames_uint8`; `boxes` ``[F, 4]`` float32 receives each mask's
    person box as `boxes.mask_boxes` gives it (zeros for an empty mask), taken while the mask is in cache (with
    OpenCV; without, `boxes` is left to the caller)."""
    if backend not in ("mediapipe", "sam"):
        raise CueError(f"segment_person: backend={backend!r} is not known; use 'mediapipe' or 'sam'.")
    if not 0.0 < threshold < 1.0:
        raise CueError(f"segment_person: threshold={threshold} must be between 0 and 1 (exclusive), e.g. 0.5.")
    num_frames, height, width = frames.shape[:3]

    sam = None
    if backend == "sam":
        if not sam_checkpoint:
            raise CueError(
                "segment_person: backend='sam' needs sam_checkpoint, the path of a segment-anything checkpoint "
                "(e.g. models/sams/sam_vit_b_01ec64.pth); or use backend='mediapipe'."
            )
        from .sam import SamSegmenter  # segment_anything (and torchvision) only when SAM is asked for

        sam = SamSegmenter(sam_checkpoint, device=device)  # loads and validates before any frame is processed

    masks = empty_buffer(num_frames, height, width)
    out = masks.numpy()  # filled in place: numpy copies are cheaper here than torch ops (no fresh tensors)
    above = np.empty((height, width), np.uint8) if boxes is not None else None
    with mediapipe_segmenter(height, width) as segment:
        for i in range(num_frames):
            image = frame_uint8(frames[i]) if images is None else images[i]
            guide = segment(image)
            mask = guide if sam is None else sam(image, guide, threshold=threshold)
            box = _clip_mask(mask, out[i], above)
            if box is not None:
                boxes[i] = box
            if on_frame is not None:
                on_frame(i)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("segment_person(%s): %d frames, mean area %.3f", backend, num_frames, float(masks.mean()))
    return masks.to(frames.device)


def _clip_mask(mask: np.ndarray, out: np.ndarray, above: np.ndarray | None = None) -> tuple | None:
    """`mask` clipped to 0..1 into `out`, values up to MASK_FLOOR set to 0. With `above` (a uint8 image of the
    mask's size) and OpenCV, also the person box of `out` as `boxes.mask_boxes` finds it ``(x0, y0, x1, y1)``,
    zeros when empty; else None."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None or mask.dtype != np.float32 or mask.shape != out.shape:
        np.clip(mask, 0.0, 1.0, out=out)
        out[out <= MASK_FLOOR] = 0.0
        return None
    # two passes, as np.clip then the floor would give (truncate at 1; zero up to the floor, negatives included),
    # in half the time of numpy's clip; strip by strip with the box's comparison (`_mask_boxes_opencv`'s), so
    # the later passes read rows still in cache
    for top in range(0, out.shape[0], STRIP_ROWS):
        rows = slice(top, top + STRIP_ROWS)
        cv2.threshold(mask[rows], 1.0, 1.0, cv2.THRESH_TRUNC, dst=out[rows])
        cv2.threshold(out[rows], MASK_FLOOR, 0.0, cv2.THRESH_TOZERO, dst=out[rows])
        if above is not None:
            cv2.compare(out[rows], BOX_THRESHOLD, cv2.CMP_GT, dst=above[rows])
    return None if above is None else above_box(above)


def mask_areas(masks: Tensor) -> Tensor:
    """Soft area of each mask ``[F, H, W]`` as a fraction of the frame, ``[F]``."""
    return masks.flatten(1).mean(dim=1)


def bad_frames(masks: Tensor, *, area_jump: float = 0.5, min_area: float = 0.002, radius: int = 1) -> Tensor:
    """Flag frames ``[F]`` bool whose person mask is unusable.

    A frame is bad when its soft mask area is below `min_area` (fraction of the frame), or when it differs by more
    than `area_jump` (relative) from the median area of the window of `radius` frames either side of it (the frame
    itself included, edges mirrored). The median ignores a single-frame glitch (two with ``radius=2``), so the
    glitch's neighbours are not flagged with it, and it follows steady growth or shrinking without flagging it.
    One-frame videos get the empty-mask test only.
    """
    masks = as_masks(masks, name="masks")
    if area_jump <= 0:
        raise CueError(f"bad_frames: area_jump={area_jump} must be positive (a relative change, e.g. 0.5).")
    if not 0.0 <= min_area < 1.0:
        raise CueError(f"bad_frames: min_area={min_area} must be a fraction of the frame in [0, 1), e.g. 0.002.")
    if radius < 1:
        raise CueError(f"bad_frames: radius={radius} must be at least 1 frame.")
    return _bad_frames(mask_areas(masks), area_jump=area_jump, min_area=min_area, radius=radius)


def _bad_frames(areas: Tensor, *, area_jump: float = 0.5, min_area: float = 0.002, radius: int = 1) -> Tensor:
    """`bad_frames` from the masks' areas ``[F]`` (`mask_areas`), for masks already checked (extract_cues: one
    read of the masks fewer; the options checked by the caller)."""
    bad = areas < min_area
    num_frames = areas.shape[0]
    if num_frames < 2:
        return bad
    pad = min(radius, num_frames - 1)  # reflection needs pad < length
    padded = F.pad(areas[None, None], (pad, pad), mode="reflect")[0, 0]
    windows = padded.unfold(0, 2 * pad + 1, 1)  # [F, 2 * pad + 1]
    reference = windows.median(dim=1).values
    change = (areas - reference).abs() / reference.clamp_min(max(min_area, 1e-6))
    return bad | (change > area_jump)
