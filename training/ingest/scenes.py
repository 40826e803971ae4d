"""Scene cuts with PySceneDetect's content detector, fed frame by frame during ingest's single decode pass."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# PySceneDetect's own default for ContentDetector (a weighted HSV difference between consecutive frames, 0..255)
DEFAULT_CUT_THRESHOLD = 27.0


class SceneCuts:
    """Feed frames in order to `is_cut`; it says whether a new scene starts at that frame.

    `min_scene_frames` suppresses a second cut sooner than that many frames after the previous one (flashes,
    strobe lights). The detector works on whatever size it is given: small frames are enough for hard cuts.
    """

    def __init__(self, fps: float, *, threshold: float = DEFAULT_CUT_THRESHOLD, min_scene_frames: int = 8):
        from scenedetect import ContentDetector
        from scenedetect.common import FrameTimecode
        from scenedetect.detector import FlashFilter

        # SUPPRESS reports a cut on the frame where it happens; the default MERGE mode reports it frames later,
        # after the frames it would have to buffer here
        self._detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_frames,
                                         filter_mode=FlashFilter.Mode.SUPPRESS)
        self._timecode = FrameTimecode
        self._fps = float(fps)
        self._index = 0

    def is_cut(self, rgb: np.ndarray) -> bool:
        """Whether frame ``[H, W, 3]`` uint8 RGB (the next one in order) starts a new scene; never the first frame."""
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # the detector converts from OpenCV's BGR order
        cuts = self._detector.process_frame(self._timecode(self._index, fps=self._fps), bgr)
        self._index += 1
        return self._index > 1 and bool(cuts)


def scene_starts(frames: Iterable[np.ndarray], fps: float, **options) -> list[int]:
    """Indices of the frames that start a scene (0 first) in `frames`, ``[H, W, 3]`` uint8 RGB each."""
    cuts = SceneCuts(fps, **options)
    return [0] + [i for i, frame in enumerate(frames) if cuts.is_cut(frame)]
