"""Driving Cue Triplet extraction: reference + driving video -> pose, face and location cues and their record."""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..errors import CueError, InputError
from ..tensors import as_frames
from ..video import MAX_LONG_SIDE, SIZE_MULTIPLE, ResizePlan, resize_frames, resize_plan, snap_size
from .boxes import (boxes_with_validity, cue_masks, mask_boxes, mask_centre_columns, median_box, smooth_track,
                    square_boxes)
from .buffers import empty_buffer, zeroed_buffer
from .face_cue import _face_cue, crop_resize
from .face_detection import _detect_faces
from .location_cue import ALIGNED_POSE_NOTE, _location_cue, anchor_frames, fit_similarity, warp_masks
from .pose_cue import _pose_grey
from .resample import opencv
from .segmentation import _bad_frames, _segment_person, frames_uint8, mask_areas
from .types import CueConfig, CueRecord, CueTriplet, FaceTrack, PersonGeometry, Similarity

log = logging.getLogger(__name__)

# Share of the progress reports given to each stage that runs per frame.
SEGMENTATION_SHARE = 0.5
FACE_DETECTION_SHARE = 0.3
# Clips of fewer than twice this many frames build their cues in one pass rather than two halves at once.
MIN_HALF_FRAMES = 4
# The reference is analysed by these when the driving inputs came from the caller ("given").
DEFAULT_SEGMENTER = "mediapipe"
DEFAULT_FACE_DETECTOR = "auto"
# Second look for a reference face the detector missed in the whole picture (small or stylised faces): the head
# region, a square of this fraction of the person's height from the top of its box, enlarged to HEAD_VIEW_PX.
HEAD_REGION = 0.4
HEAD_VIEW_PX = 384


def _cue_frames(x, name: str) -> Tensor:
    """`as_frames`, its errors (0..255 floats among them) raised as CueError like every other cue input error."""
    try:
        return as_frames(x, name=name)
    except CueError:
        raise
    except InputError as error:
        raise CueError(str(error)) from error


def _content(plan: ResizePlan) -> Tensor:
    """Where the picture lies at working size, ``(x0, y0, x1, y1)`` px (inside the black bars)."""
    (top, left), (height, width) = plan.offset, plan.scaled_size
    return torch.tensor([left, top, left + width, top + height], dtype=torch.float32)


def _describe(plan: ResizePlan, name: str) -> str:
    (src_h, src_w), (dst_h, dst_w), (new_h, new_w) = plan.source_size, plan.size, plan.scaled_size
    if plan.is_identity:
        return f"{name}: {src_w}x{src_h} px, already at the working size"
    return (f"{name}: {src_w}x{src_h} px resized to {new_w}x{new_h} and letterboxed into {dst_w}x{dst_h} "
            f"(black bars {dst_w - new_w} px wide, {dst_h - new_h} px high in total)")


def _geometry(plan: ResizePlan) -> dict:
    return {"source_size": list(plan.source_size), "scale": [plan.scale[1], plan.scale[0]],
            "content": _content(plan).tolist()}


def working_size(driving_size: tuple[int, int], config: CueConfig) -> tuple[tuple[int, int], str]:
    """The cue working size ``(H, W)`` for `config`, by `snap_size`'s "aspect" rule, and a note saying how it was
    chosen: `config.height` and `config.width` when both are set; one of them alone keeps the driving aspect for
    the other; neither: the driving size scaled down so that its long side is at most 1024 px. Derived sides are
    rounded to the nearest multiple of 16 (at least 64)."""
    size = snap_size(driving_size, config.height or 0, config.width or 0, rule="aspect")
    if config.height and config.width:
        return size, f"working size {config.width}x{config.height} from the config"
    if config.height:
        return size, f"working size {size[1]}x{size[0]}: height from the config, width from the driving aspect"
    if config.width:
        return size, f"working size {size[1]}x{size[0]}: width from the config, height from the driving aspect"
    scale = min(1.0, MAX_LONG_SIDE / max(driving_size))
    return size, (f"working size {size[1]}x{size[0]}: driving {driving_size[1]}x{driving_size[0]} scaled by "
                  f"{scale:.4g} (long side at most {MAX_LONG_SIDE}), sides rounded to multiples of {SIZE_MULTIPLE}")


class _Progress:
    """Turns stage-wise progress into `on_frame(i)` called exactly once for each frame index, in order."""

    def __init__(self, total: int, on_frame: Callable[[int], None] | None):
        self.total, self.on_frame, self.done = total, on_frame, 0
        self.fraction = 0.0  # the furthest point reached, so that a later stage knows where its share starts

    def advance_to(self, fraction: float) -> None:
        self.fraction = max(self.fraction, fraction)
        target = min(self.total, int(math.floor(fraction * self.total + 1e-9)))
        while self.done < target:
            if self.on_frame is not None:
                self.on_frame(self.done)
            self.done += 1

    def stage(self, start: float, end: float) -> Callable[[int], None]:
        def on_frame(i: int) -> None:
            self.advance_to(start + (end - start) * (i + 1) / self.total)

        return on_frame


def _resized_masks(masks: Tensor, plan: ResizePlan) -> Tensor:
    """Validated masks letterboxed by `plan`; already at the working size, they are used as they are."""
    if plan.is_identity:
        return masks
    return resize_frames(masks, plan.size, plan.mode).clamp(0.0, 1.0)


class _Stopped(Exception):
    """Raised inside the background face detection when the foreground work failed or was cancelled."""


def _in_callers_grad_mode(fn: Callable) -> Callable:
    """`fn` wrapped to run in the calling thread's autograd mode. Grad and inference modes are thread-local: a
    worker would otherwise run with grad enabled and outside inference mode, and then may not write into
    tensors the caller made under ``torch.inference_mode()`` (as ComfyUI runs every node)."""
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def wrapped(*args, **kwargs):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(*args, **kwargs)

    return wrapped


def _detections_alongside(
    frames: Tensor, backend: str, segment: Callable[[Callable[[int], None]], Tensor], on_frame: Callable[[int], None],
    images=None,
) -> tuple[Tensor, FaceTrack]:
    """Run face detection on `frames` in a worker thread while `segment(on_frame)` runs in this one.

    The two detectors are separate mediapipe graphs that release the GIL, so on two cores they take about the
    time of the slower one instead of the sum; each sees every frame in order, so the results are those of
    running them one after the other. Progress and cancellation stay on the calling thread: `on_frame` is only
    called here, and an exception in either stops the other (the worker at its next frame).
    """
    stop = threading.Event()

    def check(_index: int) -> None:
        if stop.is_set():
            raise _Stopped

    def report(index: int) -> None:
        if faces.done() and faces.exception() is not None:
            raise faces.exception()
        on_frame(index)

    with _one_thread_per_task(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="directanimator-faces") as pool:
        faces: Future = pool.submit(_in_callers_grad_mode(_detect_faces), frames, backend=backend, on_frame=check,
                                    images=images)
        try:
            masks = segment(report)
        except BaseException:
            stop.set()
            raise
        return masks, faces.result()


@contextmanager
def _one_thread_per_task() -> Iterator[None]:
    """torch and OpenCV without their own worker threads while extract_cues runs two tasks at once, restored
    after. Each task then keeps one core busy instead of splitting every operation between two threads that the
    other task is also waiting for: on the 2-core test VM the triplet took about 10% less CPU time per frame
    (37.8 against 42.9 ms, 48 frames at 512x896). The settings are process-wide: other threads of the process
    that run torch or OpenCV in this window also get one thread."""
    torch_threads = torch.get_num_threads()
    cv2 = opencv()
    cv2_threads = cv2.getNumThreads() if cv2 is not None else None
    torch.set_num_threads(1)
    if cv2 is not None:
        cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        if cv2 is not None:
            cv2.setNumThreads(cv2_threads)


def _in_two_halves(count: int, build: Callable[[int, int], None], *, parallel: bool) -> None:
    """``build(start, stop)`` over frames ``0..count``: the first half in a worker thread, the second here.

    The cue builders work frame by frame into preallocated outputs, mostly in OpenCV and torch calls that
    release the GIL, and each is largely single-threaded (memory-bound), so two halves at once use both cores.
    Each frame is computed exactly as in one pass. Clips shorter than MIN_HALF_FRAMES * 2 run in one pass.
    """
    if not parallel or count < 2 * MIN_HALF_FRAMES:
        build(0, count)
        return
    half = count // 2
    with _one_thread_per_task(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="directanimator-cues") as pool:
        first = pool.submit(_in_callers_grad_mode(build), 0, half)
        build(half, count)
        first.result()


def _face_track(boxes, valid, count: int, name: str) -> FaceTrack:
    if isinstance(boxes, FaceTrack):
        track = boxes
    else:
        boxes = torch.as_tensor(boxes, dtype=torch.float32).cpu()
        valid = torch.ones(boxes.shape[0], dtype=torch.bool) if valid is None else torch.as_tensor(valid).cpu()
        if boxes.ndim != 2 or boxes.shape[1] != 4 or valid.reshape(-1).shape[0] != boxes.shape[0]:
            raise CueError(
                f"{name}: expected face boxes [F, 4] (x0, y0, x1, y1 px) and flags [F], got "
                f"{tuple(boxes.shape)} and {tuple(valid.shape)}."
            )
        track = FaceTrack(boxes, valid.reshape(-1).to(torch.bool), backend="given")
    if track.boxes.shape[0] != count:
        raise CueError(f"{name}: {track.boxes.shape[0]} face boxes for {count} driving frames; give one per frame.")
    return track


def _reference_face(ref: Tensor, person_box: Tensor, backend: str) -> tuple[Tensor | None, str, bool]:
    """The reference's face box (px), the backend that found it, and whether only the head-region view did.

    A single picture can afford a second look: detectors miss small or stylised faces at the working size, so
    when the whole picture gives none, the top of the person box is enlarged and searched again.
    """
    track = _detect_faces(ref, backend=backend)
    if bool(track.valid[0]):
        return track.boxes[0].float().cpu(), track.backend or backend, False
    x0, y0, x1, y1 = (float(v) for v in person_box)
    side = max(HEAD_REGION * (y1 - y0), 1.0)
    centre = (x0 + x1) / 2
    head = torch.tensor([centre - side / 2, y0 - 0.1 * side, centre + side / 2, y0 + 0.9 * side])
    view = crop_resize(ref[0].cpu(), head, HEAD_VIEW_PX, HEAD_VIEW_PX)[None]
    track = _detect_faces(view.contiguous(), backend=backend)
    if not bool(track.valid[0]):
        return None, track.backend or backend, False
    scale = side / HEAD_VIEW_PX
    box = track.boxes[0].float().cpu() * scale + torch.tensor([head[0], head[1], head[0], head[1]])
    return box, track.backend or backend, True


# ------------------------------------------------------------------------------------------------ stages
# extract_cues runs these in order; each takes what the earlier ones found and appends its decisions to `notes`.


@dataclass
class _Inputs:
    """The caller's inputs, checked: frames on the driving device, given masks and face boxes at the inputs' sizes."""

    reference: Tensor  # [1, h', w', 3]
    driving: Tensor  # [F, h, w, 3]
    driving_mask: Tensor | None
    reference_mask: Tensor | None
    driving_faces: FaceTrack | None  # source pixels
    reference_face: Tensor | None  # (x0, y0, x1, y1) source pixels


@dataclass(frozen=True)
class _Frame:
    """The working frame: its size and how each input is letterboxed into it."""

    size: tuple[int, int]
    driving: ResizePlan
    reference: ResizePlan


@dataclass
class _Reference:
    """The reference at the working size, its person mask and boxes, and the backends that found them."""

    frame: Tensor  # [1, H, W, 3]
    mask: Tensor  # [1, H, W]
    person_box: Tensor  # [4] px
    face_box: Tensor | None  # [4] px, None when no face was found
    segmenter: str
    face_detector: str


@dataclass
class _Driving:
    """The driving frames at the working size, their person masks and boxes, and the face track."""

    frames: Tensor  # [F, H, W, 3]
    masks: Tensor  # [F, H, W]
    person_boxes: Tensor  # [F, 4] px
    person_valid: Tensor  # [F]
    bad: Tensor  # [F] frames whose pose cue is blanked
    track: FaceTrack  # gap-filled (and, when detected, smoothed)
    face_valid: Tensor  # [F], on the frames' device
    face_tight: Tensor  # [F, 4] face boxes px
    face_crop: Tensor  # [F, 4] the squared, enlarged boxes the face cue crops
    segmenter: str
    luma: Tensor | None = None  # [F, H, W] each frame's luma, written while converting the frames; the pose buffer


def _checked_inputs(reference, driving, config: CueConfig, driving_mask, driving_face_boxes, driving_face_valid,
                    reference_mask, reference_face_box) -> _Inputs:
    """Every input checked before any work, with an error naming it and the fix."""
    reference = _cue_frames(reference, "reference")
    driving = _cue_frames(driving, "driving")
    if reference.shape[0] != 1:
        raise CueError(
            f"reference: expected one image [1, H, W, 3], got {reference.shape[0]} frames. Pick one frame."
        )
    reference = reference.to(driving.device)
    count = driving.shape[0]
    if config.segmenter == "given" and driving_mask is None:
        raise CueError("driving_mask: the segmenter is 'given' but no driving mask was passed. Pass one mask per "
                       "driving frame, or choose the 'mediapipe' or 'sam' segmenter.")
    if config.face_detector == "given" and driving_face_boxes is None:
        raise CueError("driving_face_boxes: the face detector is 'given' but no boxes were passed. Pass one box per "
                       "driving frame, or choose the 'auto', 'mediapipe' or 'opencv' face detector.")
    d_mask = None if driving_mask is None else cue_masks(driving_mask, driving, name="driving_mask")
    r_mask = None if reference_mask is None else cue_masks(reference_mask, reference, name="reference_mask")
    d_track = None if driving_face_boxes is None else _face_track(
        driving_face_boxes, driving_face_valid, count, "driving_face_boxes")
    r_face = None
    if reference_face_box is not None:
        r_face = torch.as_tensor(reference_face_box, dtype=torch.float32).cpu().reshape(-1)
        if r_face.shape[0] != 4 or not (r_face[2] > r_face[0] and r_face[3] > r_face[1]):
            raise CueError(f"reference_face_box: expected one box (x0, y0, x1, y1) px with area, got "
                           f"{r_face.tolist()}.")
    return _Inputs(reference, driving, d_mask, r_mask, d_track, r_face)


def _working_frame(inputs: _Inputs, config: CueConfig, notes: list[str]) -> _Frame:
    """The working size (`working_size`) and the letterbox of each input into it."""
    size, size_note = working_size(tuple(inputs.driving.shape[1:3]), config)
    frame = _Frame(size, resize_plan(tuple(inputs.driving.shape[1:3]), size, "pad"),
                   resize_plan(tuple(inputs.reference.shape[1:3]), size, "pad"))
    notes += [size_note, _describe(frame.driving, "driving"), _describe(frame.reference, "reference")]
    return frame


def _reference_backends(config: CueConfig) -> tuple[str, str]:
    """The segmenter and face detector for the parts of the reference not given ("given" falls back)."""
    return (config.segmenter if config.segmenter != "given" else DEFAULT_SEGMENTER,
            config.face_detector if config.face_detector != "given" else DEFAULT_FACE_DETECTOR)


def _analyse_reference(inputs: _Inputs, frame: _Frame, config: CueConfig, notes: list[str]) -> _Reference:
    """Mask, person box and face box of the reference; first, so that no person there fails before the driving
    work."""
    seg_backend, face_backend = _reference_backends(config)
    ref = resize_frames(inputs.reference, frame.size, "pad")
    if inputs.reference_mask is not None:
        mask, segmenter = _resized_masks(inputs.reference_mask, frame.reference), "given"
    else:
        mask = _segment_person(ref, backend=seg_backend, sam_checkpoint=config.sam_checkpoint)
        mask, segmenter = mask.to(inputs.driving.device), seg_backend
    person, has_person = mask_boxes(mask)
    if not bool(has_person[0]):
        raise CueError("no person found in the reference; pass a reference mask or choose an image with a "
                       "visible person")
    person = person[0]
    if inputs.reference_face is not None:
        face, face_detector = frame.reference.map_boxes(inputs.reference_face), "given"
    else:
        face, face_detector, found_in_head = _reference_face(ref, person, face_backend)
        if found_in_head:
            notes.append("reference: face found in the enlarged head region (not in the whole picture)")
        if face is None:
            notes.append("reference: no face found; the location transform uses the body boxes only and the "
                         "reference face cue is black")
    return _Reference(ref, mask, person, face, segmenter, face_detector)


def _analyse_driving(inputs: _Inputs, frame: _Frame, config: CueConfig, progress: _Progress,
                     notes: list[str]) -> _Driving:
    """Person masks, bad frames and the face track of the driving frames: segmentation and face detection (at
    once, when both run), reported as SEGMENTATION_SHARE and FACE_DETECTION_SHARE of the progress."""
    device, count = inputs.driving.device, inputs.driving.shape[0]
    seg_backend = _reference_backends(config)[0]
    drv = resize_frames(inputs.driving, frame.size, "pad")
    detecting = inputs.driving_faces is None
    seg_end = SEGMENTATION_SHARE if inputs.driving_mask is None else 0.0
    face_end = seg_end + (FACE_DETECTION_SHARE if detecting else 0.0)
    raw = None
    luma = None
    boxes = None  # the person boxes, when the segmentation takes them
    if inputs.driving_mask is not None:
        masks, segmenter = _resized_masks(inputs.driving_mask, frame.driving), "given"
    else:
        # both detectors read the same uint8 frames: converted once for the two, and the pose cue's luma taken
        # from the same read of each frame (later it reads that instead of the frames)
        if detecting and device.type == "cpu" and config.filter == "gaussian" and opencv() is not None:
            luma = empty_buffer(count, *frame.size)
        images = frames_uint8(drv, luma=luma) if detecting else None
        if device.type == "cpu" and opencv() is not None:
            boxes = np.zeros((count, 4), np.float32)

        def segment(report: Callable[[int], None]) -> Tensor:
            return _segment_person(drv, backend=seg_backend, sam_checkpoint=config.sam_checkpoint, on_frame=report,
                                   images=images, boxes=boxes)

        if detecting:  # both detectors at once; the segmentation's progress stands for both
            masks, raw = _detections_alongside(drv, config.face_detector, segment, progress.stage(0.0, face_end),
                                               images=images)
        else:
            masks = segment(progress.stage(0.0, seg_end))
        masks, segmenter = masks.to(device), seg_backend
    progress.advance_to(seg_end)
    if boxes is not None:  # as mask_boxes(masks) gives them, taken by the segmentation (one read of the masks fewer)
        person_boxes, person_valid = boxes_with_validity(boxes)
    else:
        person_boxes, person_valid = mask_boxes(masks)
    if not bool(person_valid.any()):
        raise CueError(f"driving: no person found in any of the {count} frames. Pass a driving mask, or use a "
                       "video in which a person is visible (try the other segmenter).")
    bad = _bad_frames(mask_areas(masks), area_jump=config.area_jump).to(device=device, dtype=torch.bool).reshape(-1)
    if bool(bad.any()):
        notes.append(f"driving: {int(bad.sum())} of {count} frames have an empty or jumping person mask; "
                     "their pose cue is blank")

    if not detecting:
        given = inputs.driving_faces
        raw = FaceTrack(frame.driving.map_boxes(given.boxes.float().cpu()), given.valid.cpu().to(torch.bool),
                        detected=given.detected.cpu(), backend=given.backend or "given")
        track = smooth_track(raw, window=1, max_gap=config.max_face_gap)
    else:
        if raw is None:
            raw = _detect_faces(drv, backend=config.face_detector, on_frame=progress.stage(seg_end, face_end))
        track = smooth_track(FaceTrack(raw.boxes.float().cpu(), raw.valid.cpu().to(torch.bool),
                                       detected=raw.detected.cpu(), backend=raw.backend),
                             window=config.face_smooth, max_gap=config.max_face_gap)
    progress.advance_to(face_end)
    face_valid = track.valid.to(device)
    face_tight = track.boxes.to(device)
    if not bool(face_valid.any()):
        notes.append("driving: no face found in any frame; the face cue is black and the face location zero")
    else:
        filled = int(face_valid.sum()) - int((track.detected.to(torch.bool) & track.valid).sum())
        if filled:
            notes.append(f"driving: face boxes filled across short gaps in {filled} frames")
    return _Driving(drv, masks, person_boxes, person_valid, bad, track, face_valid, face_tight,
                    square_boxes(face_tight, scale=config.face_scale), segmenter, luma)


def _fit_location(driving: _Driving, reference: _Reference, frame: _Frame, config: CueConfig,
                  notes: list[str]) -> Similarity:
    """The location transform: the driving person (on the anchor frames) onto the reference person."""
    anchored = anchor_frames(driving.person_valid, config.anchor, bad=driving.bad)
    if config.anchor == "first":
        notes.append(f"location transform: anchored on driving frame {int(torch.nonzero(anchored)[0, 0])} "
                     "(the first good one; CueConfig.anchor)")
    anchored_face = driving.face_valid.cpu() & anchored
    # the fit reads the centre columns of the anchored frames only (one frame by default): the others stay 0
    centres = torch.zeros(anchored.shape[0])
    if bool(anchored.any()):
        centres[anchored] = mask_centre_columns(driving.masks[anchored.to(driving.masks.device)])[0].cpu()
    return fit_similarity(
        PersonGeometry(driving.person_boxes.cpu(), anchored,
                       face=(median_box(driving.face_tight.cpu(), anchored_face) if bool(anchored_face.any())
                             else None),
                       area=_content(frame.driving), centres=centres),
        PersonGeometry.picture(reference.person_box.cpu(), face=reference.face_box, area=_content(frame.reference),
                               centre=float(mask_centre_columns(reference.mask)[0][0])),
        notes=notes,
    )


def _filtering(config: CueConfig) -> dict:
    """The pose cue's low-pass options."""
    return dict(cutoff=config.cutoff, filter=config.filter, order=config.butterworth_order)


def _driving_cues(driving: _Driving, transform: Similarity, size: tuple[int, int], config: CueConfig,
                  progress: _Progress) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pose, face, body-location and face-location cues of the driving frames, the two halves of the clip at once
    on the CPU; the rest of the progress."""
    drv, masks, bad = driving.frames, driving.masks, driving.bad
    count, device, start = drv.shape[0], drv.device, progress.fraction
    # the frames and masks were checked once; the builders take them as they are
    filtering = _filtering(config)
    # one grey channel (three as a view below), written over the luma when that was taken with the frames
    pose = empty_buffer(count, *size, device=device) if driving.luma is None else driving.luma
    face = zeroed_buffer(count, *size, 3, device=device)  # its black bars are never written
    body_location = empty_buffer(count, *size, device=device)
    # zero but for a window around each face
    face_location = zeroed_buffer(count, *size, device=device, sparse=True)

    def build(first: int, stop: int) -> None:
        part = slice(first, stop)
        report = stop == count  # the calling thread's part (the worker's ends at count // 2): progress from it
        _pose_grey(drv[part], masks[part], bad=bad[part], on_frame=None, out=pose[part],
                   luma_in_out=driving.luma is not None, **filtering)
        if config.align_pose:
            pose[part] = warp_masks(pose[part], transform, size)
        if report:
            progress.advance_to(start + (1.0 - start) / 3)
        _face_cue(drv[part], driving.face_crop[part], driving.face_valid[part], out=face[part],
                  out_zeroed=True)
        if report:
            progress.advance_to(start + 2 * (1.0 - start) / 3)
        _location_cue(masks[part], driving.face_tight[part], driving.face_valid[part], transform, out_size=size,
                      cell=config.grid_cell, blur=config.grid_blur, out=(body_location[part], face_location[part]),
                      face_zeroed=True)

    _in_two_halves(count, build, parallel=device.type == "cpu")
    return _three_channels(pose), face, body_location, face_location


def _three_channels(grey: Tensor) -> Tensor:
    """The grey pose cue ``[F, H, W]`` as ``[F, H, W, 3]``: a view repeating its one channel (the pose cue is
    grey; materialising three copies was a third of the triplet's memory traffic)."""
    return grey[..., None].expand(-1, -1, -1, 3)


def _reference_cues(reference: _Reference, size: tuple[int, int], config: CueConfig,
                    device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The reference's own pose, face and location cues (its location transform is the identity)."""
    face_box = torch.zeros(1, 4, device=device) if reference.face_box is None else reference.face_box.to(device)[None]
    face_ok = torch.tensor([reference.face_box is not None], device=device)
    pose = _three_channels(_pose_grey(reference.frame, reference.mask, bad=None, on_frame=None, **_filtering(config)))
    face = _face_cue(reference.frame, square_boxes(face_box, scale=config.face_scale), face_ok)
    body_location, face_location = _location_cue(reference.mask, face_box, face_ok, Similarity(), out_size=size,
                                                  cell=config.grid_cell, blur=config.grid_blur)
    return pose, face, body_location, face_location


def _record(driving: _Driving, reference: _Reference, frame: _Frame, transform: Similarity, config: CueConfig,
            notes: list[str]) -> CueRecord:
    face_crop, face_valid = driving.face_crop, driving.face_valid
    return CueRecord(
        person_boxes=driving.person_boxes.cpu(),
        person_valid=driving.person_valid.cpu(),
        face_boxes=torch.where(face_valid[:, None], face_crop, torch.zeros_like(face_crop)).cpu(),
        face_valid=face_valid.cpu(),
        bad_frames=driving.bad.cpu(),
        transform=transform,
        reference_person_box=reference.person_box.cpu(),
        reference_face_box=None if reference.face_box is None else reference.face_box.cpu(),
        backends={"segmenter": driving.segmenter, "face_detector": driving.track.backend or "given",
                  "reference_segmenter": reference.segmenter, "reference_face_detector": reference.face_detector},
        notes=notes,
        pose_aligned=config.align_pose,
        geometry={"working_size": list(frame.size), "driving": _geometry(frame.driving),
                  "reference": _geometry(frame.reference)},
    )


def extract_cues(
    reference: Tensor,
    driving: Tensor,
    config: CueConfig | None = None,
    *,
    driving_mask: Tensor | None = None,
    driving_face_boxes: Tensor | FaceTrack | None = None,
    driving_face_valid: Tensor | None = None,
    reference_mask: Tensor | None = None,
    reference_face_box: Tensor | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> CueTriplet:
    """Build the Driving Cue Triplet of `driving` ``[F, h, w, 3]`` for `reference` ``[1, h', w', 3]`` (any sizes).

    Both are letterboxed (resized, aspect kept, black bars) to the working size of `working_size`; the decision
    is in ``record.notes`` and ``record.geometry``. Person masks come from `driving_mask` / `reference_mask` when
    given (at the inputs' own sizes), else from `config.segmenter`; face boxes from `driving_face_boxes` (+
    `driving_face_valid`) / `reference_face_box` (source pixels), else from `config.face_detector`. Given driving
    face boxes are gap-filled but not smoothed (ground truth stays exact); detected ones are also smoothed.
    The reference is analysed with the same backends as the driving video ("given" falls back to mediapipe and
    auto for the parts of the reference not given).

    No face in any driving frame is not an error: the face cue is black and the face location zero (a note says
    so). No person in the reference or in every driving frame raises CueError, and so do float frames or masks
    with values above 2 (0..255 data: divide by 255). `on_frame(i)` is called once per
    driving frame index, in order, as the work advances, always from the calling thread.

    On the CPU, segmentation and face detection run at once (face detection in a worker thread), and then the
    cue builders work on the two halves of the clip at once: the results are those of one step after the other.
    Inputs already at the working size are not copied, so the triplet's ``reference`` may be `reference` itself.
    """
    config = (config or CueConfig()).validate()
    inputs = _checked_inputs(reference, driving, config, driving_mask, driving_face_boxes, driving_face_valid,
                             reference_mask, reference_face_box)
    notes: list[str] = []
    frame = _working_frame(inputs, config, notes)
    progress = _Progress(inputs.driving.shape[0], on_frame)
    ref = _analyse_reference(inputs, frame, config, notes)
    drv = _analyse_driving(inputs, frame, config, progress, notes)
    transform = _fit_location(drv, ref, frame, config, notes)
    pose, face, body_location, face_location = _driving_cues(drv, transform, frame.size, config, progress)
    if config.align_pose:
        notes.append(ALIGNED_POSE_NOTE)
    ref_pose, ref_face, ref_body_location, ref_face_location = _reference_cues(ref, frame.size, config,
                                                                               inputs.driving.device)
    progress.advance_to(1.0)
    for note in notes:
        log.debug("cues: %s", note)
    return CueTriplet(
        pose=pose, face=face, body_location=body_location, face_location=face_location,
        reference=ref.frame, reference_mask=ref.mask, reference_pose=ref_pose, reference_face=ref_face,
        reference_body_location=ref_body_location, reference_face_location=ref_face_location,
        record=_record(drv, ref, frame, transform, config, notes),
    )
