"""Interop nodes: a driving video from a core VIDEO or from any IMAGE batch (VideoHelperSuite's loaders, Load Image
batches) -> frames at the working size, with their frame rate.

The results of the model nodes are plain IMAGE + FLOAT fps, which core Create Video and VideoHelperSuite's Video
Combine (``frame_rate``) take directly, so no output node is needed here.
"""

from __future__ import annotations

import logging
from fractions import Fraction

from directanimator.errors import InputError
from directanimator.tensors import as_frames
from directanimator.video import RESIZE_MODES, SIZE_MULTIPLE, read_video, resize_frames, snap_size

from ._comfy import comfy_progress

log = logging.getLogger("directanimator.nodes")

CATEGORY = "DirectAnimator/video"
DEFAULT_FPS = 24.0


def _side(default: int, what: str):
    return ("INT", {"default": default, "min": 0, "max": 4096, "step": SIZE_MULTIPLE,
                    "tooltip": f"Working {what} in pixels, a multiple of {SIZE_MULTIPLE}; 0 keeps the source "
                               f"{what} rounded down to a multiple of {SIZE_MULTIPLE}."})


class DirectAnimatorDrivingVideo:
    """A driving video (core VIDEO, or IMAGE frames from any loader) -> frames at a working size, and their fps."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("frames", "fps", "frame_count")
    FUNCTION = "run"
    DESCRIPTION = ("Takes a core VIDEO (Load Video) or an IMAGE batch (e.g. VideoHelperSuite Load Video), keeps "
                   "every stride-th frame from start, at most max_frames, and resizes them to a multiple of 16 "
                   "without distortion. fps is the source rate divided by the stride.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "width": _side(512, "width"),
                "height": _side(896, "height"),
                "resize": (list(RESIZE_MODES), {"default": "pad",
                                                "tooltip": "pad: fit and letterbox (nothing cut); crop: cover and "
                                                           "cut the edges; stretch: change the aspect ratio."}),
                "start": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "step": 1,
                                  "tooltip": "First source frame kept."}),
                "stride": ("INT", {"default": 1, "min": 1, "max": 64, "step": 1,
                                   "tooltip": "Keep every stride-th source frame (2 halves the frame rate)."}),
                "max_frames": ("INT", {"default": 0, "min": 0, "max": 100_000, "step": 1,
                                       "tooltip": "At most this many frames after the stride; 0 keeps all."}),
            },
            "optional": {
                "video": ("VIDEO", {"tooltip": "A core VIDEO, e.g. from Load Video. Use this or frames."}),
                "frames": ("IMAGE", {"tooltip": "Driving frames from any node (e.g. VideoHelperSuite Load Video). "
                                                "Use this or video."}),
                "frames_fps": ("FLOAT", {"default": DEFAULT_FPS, "min": 1.0, "max": 240.0, "step": 0.001,
                                         "tooltip": "Frame rate of the frames input (ignored for video, which "
                                                    "knows its own rate)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None):
        for name, value in (("width", width), ("height", height)):
            if value is None:  # linked from another node: checked when it runs
                continue
            if value < 0 or value > 4096 or value % SIZE_MULTIPLE:
                return (f"{name} is {value}; use 0 (the source's, rounded) or a multiple of {SIZE_MULTIPLE} "
                        f"up to 4096, e.g. {max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)}.")
        return True

    def run(self, width, height, resize, start, stride, max_frames, video=None, frames=None,
            frames_fps=DEFAULT_FPS):
        if (video is None) == (frames is None):
            raise InputError("DirectAnimator Driving Video: connect exactly one of video (a core VIDEO) or frames "
                             f"(an IMAGE batch); got {'both' if video is not None else 'neither'}.")
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
            raise InputError(f"width x height = {width}x{height}: use multiples of {SIZE_MULTIPLE} (or 0).")
        limit = max_frames or None
        if video is not None:
            source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
            if isinstance(source, str):  # a file: decode only the kept frames, resizing as they come
                w, h = video.get_dimensions()
                size = snap_size((h, w), height, width, rule="source")
                clip = read_video(source, start=start, stride=stride, max_frames=limit, size=size, resize=resize)
                return (clip.frames, float(clip.fps), clip.num_frames)
            components = video.get_components()
            all_frames, rate = components.images, float(Fraction(components.frame_rate))
        else:
            all_frames, rate = as_frames(frames, name="frames"), float(frames_fps)
        kept = all_frames[start::stride]
        if limit is not None:
            kept = kept[:limit]
        if kept.shape[0] == 0:
            raise InputError(f"start={start}: the driving video has only {all_frames.shape[0]} frames; lower start.")
        size = snap_size((int(kept.shape[1]), int(kept.shape[2])), height, width, rule="source")
        with comfy_progress(1) as progress:
            out = resize_frames(kept.float(), size, resize)
            progress(0)
        return (out.contiguous(), rate / stride, int(out.shape[0]))


NODE_CLASS_MAPPINGS = {"DirectAnimatorDrivingVideo": DirectAnimatorDrivingVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"DirectAnimatorDrivingVideo": "DirectAnimator Driving Video"}
