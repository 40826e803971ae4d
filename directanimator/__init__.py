"""DirectAnimator: animate a reference image from a raw driving video through the Driving Cue Triplet."""

from .errors import (
    BackendUnavailableError,
    CheckpointError,
    CueError,
    DirectAnimatorError,
    InputError,
    VideoError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "CueError",
    "DirectAnimatorError",
    "InputError",
    "VideoError",
    "__version__",
]
