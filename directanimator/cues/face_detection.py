"""Face detection backends: mediapipe full-range face detection (default) and an OpenCV Haar cascade fallback.

`detect_faces` gives raw per-frame face boxes (no smoothing, no gap filling: the face-cue builder does that).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import BackendUnavailableError, CueError
from ..tensors import as_frames
from .segmentation import MEDIAPIPE_CACHE, MEDIAPIPE_INSTALL_HINT, frame_uint8, mediapipe_solution
from .types import FaceTrack

log = logging.getLogger(__name__)

FaceBackend = Literal["auto", "mediapipe", "opencv"]
Detection = tuple[np.ndarray, float]  # box (x0, y0, x1, y1) px, confidence
Detector = Callable[[np.ndarray], "Detection | None"]

# Full-range model: the short-range one (faces within ~2 m, selfie framing) found 3 of 96 faces on a full-body
# dance video at 512x896, several of them wrong; the full-range one found 96 of 96 at about 6 ms per frame.
MEDIAPIPE_MODEL_SELECTION = 1
MEDIAPIPE_MIN_CONFIDENCE = 0.5

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_SCALE_FACTOR = 1.1
HAAR_MIN_NEIGHBORS = 5
HAAR_MIN_FACE_PX = 24  # the cascade's own window
HAAR_MAX_SIDE_PX = 1024  # larger frames are downscaled first: the cascade's cost grows with the pixel count
# Haar boxes are looser than mediapipe's and sit higher (forehead to chin rather than brows to chin). Measured on
# 94 frames of the real dance video where both found the face: Haar side = 1.22 x mediapipe side, Haar centre
# 0.135 mediapipe sides above. Converting keeps a track that mixes both backends from jumping.
HAAR_SIDE_TO_TIGHT = 1.0 / 1.22
HAAR_CENTRE_SHIFT_DOWN = 0.135  # in tight-box sides

# OpenCV 4.12 and later need numpy 2, which mediapipe 0.10.21 refuses: 4.11 is the OpenCV 4 that fits beside it
OPENCV_INSTALL_HINT = (
    'install OpenCV 4 (`pip install "opencv-python-headless>=4.8,<4.12"`; OpenCV 5 wheels ship no Haar cascades)'
)
# when another package's OpenCV 5 (VideoHelperSuite's opencv-python 5.x) has overwritten cv2/: both wheels write
# it, the last installed wins, and pip sees the pack's OpenCV 4 as installed already
OPENCV_RESTORE_HINT = (
    'put OpenCV 4 back with `pip install --force-reinstall --no-deps "opencv-python-headless>=4.8,<4.12"` '
    "(the packages that installed OpenCV 5 run on 4.x too)"
)


def _opencv_cascade():
    try:
        import cv2
    except Exception as exc:  # not installed, or a broken install
        raise BackendUnavailableError(
            f"OpenCV face detection is unavailable (cv2 does not import: {type(exc).__name__}: {exc}); "
            f"{OPENCV_INSTALL_HINT}."
        ) from exc
    version = str(getattr(cv2, "__version__", "of unknown version"))
    try:
        path = cv2.data.haarcascades + HAAR_CASCADE
        cascade = cv2.CascadeClassifier(path)
    except Exception as exc:  # no cv2.data (OpenCV 5), no CascadeClassifier (headless 5)
        hint = OPENCV_RESTORE_HINT if version.startswith("5") else OPENCV_INSTALL_HINT
        raise BackendUnavailableError(
            f"OpenCV face detection is unavailable: the installed cv2 {version} has no Haar cascade "
            f"({type(exc).__name__}: {exc}); OpenCV 5 wheels ship none, and they replace the pack's OpenCV 4 when "
            f"another package (e.g. VideoHelperSuite) installs one. Use OpenCV 4: {hint}."
        ) from exc
    if cascade.empty():
        raise BackendUnavailableError(
            f"OpenCV face detection: the cascade {HAAR_CASCADE} could not be loaded from {path} (cv2 {version}); "
            f"{OPENCV_INSTALL_HINT}."
        )
    return cascade


def _clip_box(box: np.ndarray, height: int, width: int) -> np.ndarray | None:
    box = np.clip(box, 0.0, [width, height, width, height]).astype(np.float32)
    return box if box[2] - box[0] >= 2 and box[3] - box[1] >= 2 else None


def _best(candidates: list[tuple[np.ndarray, float]]) -> Detection | None:
    """Most confident candidate; the larger one on a tie."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[1], (c[0][2] - c[0][0]) * (c[0][3] - c[0][1])))


@contextmanager
def mediapipe_face_detector() -> Iterator[Detector]:
    """Yield ``detect(rgb_uint8 [H, W, 3]) -> (box px, score) | None`` using mediapipe full-range detection."""
    module = mediapipe_solution("face_detection")

    def factory():
        return module.FaceDetection(model_selection=MEDIAPIPE_MODEL_SELECTION,
                                    min_detection_confidence=MEDIAPIPE_MIN_CONFIDENCE)

    with MEDIAPIPE_CACHE.use(("face_detection", MEDIAPIPE_MODEL_SELECTION), factory) as solution:

        def detect(image: np.ndarray) -> Detection | None:
            height, width = image.shape[:2]
            candidates = []
            for detection in solution.process(image).detections or ():
                rel = detection.location_data.relative_bounding_box
                box = np.array([rel.xmin, rel.ymin, rel.xmin + rel.width, rel.ymin + rel.height]) * [
                    width, height, width, height]
                box = _clip_box(box, height, width)
                if box is not None:
                    candidates.append((box, float(detection.score[0])))
            return _best(candidates)

        yield detect


_cascade_lock = threading.Lock()  # one user of the cascade at a time
_cascade_load_lock = threading.Lock()
# The cascade of this process, or why it cannot load. OpenCV does not change under a running process, so the
# cascade file is read once, and an unavailable fallback is reported once rather than on every call.
_cascade: tuple[object | None, str | None] | None = None


def _shared_cascade():
    """This process's cascade, loaded on first use; BackendUnavailableError with the reason when it cannot be."""
    global _cascade
    with _cascade_load_lock:
        if _cascade is None:
            try:
                _cascade = (_opencv_cascade(), None)
            except BackendUnavailableError as exc:
                _cascade = (None, str(exc))
        cascade, reason = _cascade
    if cascade is None:
        raise BackendUnavailableError(reason)
    return cascade


@contextmanager
def opencv_face_detector() -> Iterator[Detector]:
    """Yield ``detect(rgb_uint8 [H, W, 3]) -> (box px, score) | None`` using OpenCV's frontal-face Haar cascade.

    Boxes are converted to mediapipe-like tight boxes; the score is the cascade's level weight (not 0..1).
    """
    cascade = _shared_cascade()
    import cv2

    def detect(image: np.ndarray) -> Detection | None:
        height, width = image.shape[:2]
        scale = min(1.0, HAAR_MAX_SIDE_PX / max(height, width))
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        rects, _, weights = cascade.detectMultiScale3(
            grey, scaleFactor=HAAR_SCALE_FACTOR, minNeighbors=HAAR_MIN_NEIGHBORS,
            minSize=(HAAR_MIN_FACE_PX, HAAR_MIN_FACE_PX), outputRejectLevels=True,
        )
        candidates = []
        for (x, y, w, h), weight in zip(np.asarray(rects, np.float64).reshape(-1, 4), np.ravel(weights)):
            side = w / scale * HAAR_SIDE_TO_TIGHT
            cx = (x + w / 2) / scale
            cy = (y + h / 2) / scale + HAAR_CENTRE_SHIFT_DOWN * side
            box = _clip_box(np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]), height, width)
            if box is not None:
                candidates.append((box, float(weight)))
        return _best(candidates)

    with _cascade_lock:
        yield detect


def detect_faces(
    frames: Tensor,
    *,
    backend: FaceBackend = "auto",
    on_frame: Callable[[int], None] | None = None,
) -> FaceTrack:
    """Raw face box per frame of `frames` ``[F, H, W, 3]``: ``boxes [F, 4]`` px, ``valid`` where a face was found.

    backend "mediapipe" (full-range model), "opencv" (Haar cascade, boxes converted to mediapipe's tightness) or
    "auto": mediapipe, and OpenCV for the frames mediapipe misses; whichever is installed when only one is.
    The most confident face is kept when there are several. ``track.backend`` names the backend(s) that found
    faces ("mediapipe", "opencv", "mediapipe+opencv"; the requested one when none was found). `on_frame(i)` is
    called after each frame and may raise to stop.
    """
    return _detect_faces(as_frames(frames, name="frames"), backend=backend, on_frame=on_frame)


def _detect_faces(
    frames: Tensor, *, backend: FaceBackend = "auto", on_frame: Callable[[int], None] | None = None,
    images: np.ndarray | None = None,
) -> FaceTrack:
    """`detect_faces` on frames already checked by `as_frames` (extract_cues checks them once for all stages);
    `images`: the frames already converted by `segmentation.frames_uint8`."""
    if backend not in ("auto", "mediapipe", "opencv"):
        raise CueError(f"detect_faces: backend={backend!r} is not known; use 'auto', 'mediapipe' or 'opencv'.")
    names = ["mediapipe", "opencv"] if backend == "auto" else [backend]
    if backend == "auto":
        names = [n for n in names if _usable(n)]
        if not names:
            raise BackendUnavailableError(
                f"detect_faces: no face detector can run here; {MEDIAPIPE_INSTALL_HINT} or {OPENCV_INSTALL_HINT}."
            )
    openers = {"mediapipe": mediapipe_face_detector, "opencv": opencv_face_detector}

    num_frames = frames.shape[0]
    boxes = np.zeros((num_frames, 4), np.float32)
    found_by = np.full(num_frames, -1)
    with _open_all([openers[n] for n in names]) as detectors:
        for i in range(num_frames):
            image = frame_uint8(frames[i]) if images is None else images[i]
            for k, detect in enumerate(detectors):
                found = detect(image)
                if found is not None:
                    boxes[i] = found[0]
                    found_by[i] = k
                    break
            if on_frame is not None:
                on_frame(i)
    valid = torch.from_numpy(found_by >= 0)
    used = [n for k, n in enumerate(names) if (found_by == k).any()]
    counts = ", ".join(f"{n}: {(found_by == k).sum()}" for k, n in enumerate(names))
    log.debug("detect_faces(%s): faces in %d of %d frames (%s)", backend, int(valid.sum()), num_frames, counts)
    return FaceTrack(boxes=torch.from_numpy(boxes), valid=valid, backend="+".join(used) or backend)


@contextmanager
def _open_all(openers: list[Callable]) -> Iterator[list[Detector]]:
    if not openers:
        yield []
        return
    with openers[0]() as first, _open_all(openers[1:]) as rest:
        yield [first, *rest]


def _check(name: str, probe: Callable[[], object]) -> bool:
    try:
        probe()
    except BackendUnavailableError as exc:
        log.info("Backend %s unavailable: %s", name, exc)
        return False
    return True


_FACE_PROBES: dict[str, Callable[[], object]] = {
    "mediapipe": lambda: mediapipe_solution("face_detection"),
    "opencv": lambda: _shared_cascade(),
}
_said_off: set[str] = set()  # face backends whose absence "auto" has already logged in this process


def _usable(name: str) -> bool:
    """Whether face backend `name` can run; the first time it cannot, a warning says why (once per process:
    "auto" runs per clip and per node, and OpenCV 5 beside the pack, e.g. from VideoHelperSuite, stays)."""
    try:
        _FACE_PROBES[name]()
    except BackendUnavailableError as exc:
        if name not in _said_off:
            _said_off.add(name)
            log.warning("Face detection 'auto' runs without %s in this process: %s", name, exc)
        return False
    return True


def available_backends() -> dict[str, bool]:
    """Which backends can run here: ``segmentation/mediapipe``, ``segmentation/sam``, ``face/mediapipe``,
    ``face/opencv``. Reasons for the missing ones are logged (INFO). SAM still needs a user checkpoint."""
    from .sam import _segment_anything

    return {
        "segmentation/mediapipe": _check("segmentation/mediapipe", lambda: mediapipe_solution("selfie_segmentation")),
        "segmentation/sam": _check("segmentation/sam", _segment_anything),
        **{f"face/{name}": _check(f"face/{name}", probe) for name, probe in _FACE_PROBES.items()},
    }

