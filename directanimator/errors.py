"""One exception family for the library: every message names the input, what was found and the fix."""


class DirectAnimatorError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(DirectAnimatorError, ValueError):
    """A caller-supplied value (tensor, path, option) is unusable."""


class VideoError(InputError):
    """A video file or image folder cannot be read or written."""


class CueError(InputError):
    """Driving-cue extraction cannot proceed with the given frames, masks or options."""


class BackendUnavailableError(DirectAnimatorError, RuntimeError):
    """An optional backend (mediapipe, SAM, OpenCV cascade) is not installed or has no model."""


class CheckpointError(DirectAnimatorError):
    """A model or checkpoint file is missing, corrupted, unsafe or for another backbone."""
