"""Videos, image folders and single images: resize geometry and working sizes (`geometry`), reading and probing
(`reading`), atomic writing (`writing`).

Frames are ``[F, H, W, 3]`` float32 in 0..1 (ComfyUI IMAGE), a single image ``[1, H, W, 3]``; sizes are
``(height, width)`` in pixels.
"""

from .geometry import (
    MAX_LONG_SIDE, MIN_SIDE, RESIZE_MODES, SIZE_MULTIPLE, SIZE_RULES, ResizeMode, ResizePlan, SizeRule,
    resize_frames, resize_plan, snap_size,
)
from .reading import (
    GIF_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoClip, check_video_sides, probe_video, read_image,
    read_video,
)
from .writing import WRITE_VIDEO_EXTENSIONS, write_image, write_video

__all__ = [
    "GIF_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MAX_LONG_SIDE",
    "MIN_SIDE",
    "RESIZE_MODES",
    "SIZE_MULTIPLE",
    "SIZE_RULES",
    "VIDEO_EXTENSIONS",
    "WRITE_VIDEO_EXTENSIONS",
    "ResizeMode",
    "ResizePlan",
    "SizeRule",
    "VideoClip",
    "check_video_sides",
    "probe_video",
    "read_image",
    "read_video",
    "resize_frames",
    "resize_plan",
    "snap_size",
    "write_image",
    "write_video",
]
