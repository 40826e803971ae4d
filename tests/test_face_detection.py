"""Face detection: mediapipe full-range, the OpenCV Haar fallback, "auto", and backend availability."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from directanimator.cues import face_detection
from directanimator.cues.face_detection import available_backends, detect_faces
from directanimator.cues.types import FaceTrack
from directanimator.errors import BackendUnavailableError, CueError, InputError
from helpers import DANCE_SIZE, check_on_frame, dance_frames, real_reference

WORKING_SIZE = DANCE_SIZE


@pytest.fixture(scope="module")
def dance():
    return dance_frames()


reference = real_reference


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a new process would: no cascade loaded yet, no backend reported missing."""
    monkeypatch.setattr(face_detection, "_cascade", None)
    monkeypatch.setattr(face_detection, "_said_off", set())


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes ``[..., 4]``."""
    lo = torch.maximum(a[..., :2], b[..., :2])
    hi = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    area = lambda t: (t[..., 2:] - t[..., :2]).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def mediapipe_missing(*_args, **_kwargs):
    raise BackendUnavailableError('mediapipe is unavailable; install "mediapipe==0.10.21"')


def opencv_missing(*_args, **_kwargs):
    raise BackendUnavailableError("OpenCV face detection is unavailable; install OpenCV 4")


# --- synthetic frames ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "mediapipe", "opencv"])
def test_black_frames_have_no_face_and_no_crash(backend):
    track = detect_faces(torch.zeros(3, 96, 128, 3), backend=backend)
    assert isinstance(track, FaceTrack)
    assert track.boxes.shape == (3, 4) and track.valid.shape == (3,)
    assert not track.valid.any() and not track.detected.any()
    assert float(track.boxes.abs().max()) == 0.0


def test_bad_inputs_raise():
    with pytest.raises(CueError, match="backend"):
        detect_faces(torch.zeros(1, 64, 64, 3), backend="dlib")
    with pytest.raises(InputError, match="colour channels"):
        detect_faces(torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError, match="at most 4096"):
        detect_faces(torch.zeros(1, 64, 5000, 3))


def test_grey_and_rgba_frames_are_accepted():
    assert detect_faces(torch.zeros(2, 64, 80, 1)).boxes.shape == (2, 4)
    assert detect_faces(torch.zeros(2, 64, 80, 4), backend="opencv").valid.shape == (2,)


def test_on_frame_is_called_per_frame_and_can_stop_the_run():
    check_on_frame(detect_faces)


def test_available_backends_names_all_four_and_agrees_with_detect_faces():
    available = available_backends()
    assert set(available) == {"segmentation/mediapipe", "segmentation/sam", "face/mediapipe", "face/opencv"}
    for name in ("mediapipe", "opencv"):
        if available[f"face/{name}"]:
            detect_faces(torch.zeros(1, 64, 64, 3), backend=name)
        else:
            with pytest.raises(BackendUnavailableError):
                detect_faces(torch.zeros(1, 64, 64, 3), backend=name)


def test_missing_mediapipe_is_reported_with_the_fix_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(face_detection, "mediapipe_solution", mediapipe_missing)
    assert available_backends()["face/mediapipe"] is False
    with pytest.raises(BackendUnavailableError, match="mediapipe==0.10.21"):
        detect_faces(torch.zeros(1, 64, 64, 3), backend="mediapipe")
    track = detect_faces(torch.zeros(1, 64, 64, 3), backend="auto")  # OpenCV alone
    assert not track.valid.any()


def test_no_backend_at_all_names_both_installs(monkeypatch):
    monkeypatch.setattr(face_detection, "mediapipe_solution", mediapipe_missing)
    monkeypatch.setattr(face_detection, "_opencv_cascade", opencv_missing)
    with pytest.raises(BackendUnavailableError, match=r"mediapipe.*opencv"):
        detect_faces(torch.zeros(1, 64, 64, 3), backend="auto")


def opencv_5():
    """The installed cv2 as OpenCV 5 wheels have it (e.g. VideoHelperSuite's opencv-python 5.1 beside the pack):
    no cv2.data with the Haar cascade files and no CascadeClassifier; everything else as it is."""
    import cv2

    module = types.ModuleType("cv2")
    module.__version__ = "5.1.0"
    gone = {"data", "CascadeClassifier"}

    def attribute(name):
        if name in gone:
            raise AttributeError(f"module 'cv2' has no attribute '{name}'")
        return getattr(cv2, name)

    module.__getattr__ = attribute
    return module


def test_opencv_5_turns_the_fallback_off_with_one_warning_per_process(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cv2", opencv_5())
    loads = []
    load = face_detection._opencv_cascade
    monkeypatch.setattr(face_detection, "_opencv_cascade", lambda: loads.append(1) or load())
    caplog.set_level(logging.DEBUG, logger=face_detection.__name__)
    for _ in range(3):  # e.g. three clips, or the face node run three times
        track = detect_faces(torch.zeros(2, 64, 64, 3), backend="auto")  # mediapipe alone, no error
        assert track.boxes.shape == (2, 4)
    said = [r for r in caplog.records if "OpenCV" in r.getMessage() or "opencv" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelno == logging.WARNING
    assert "5.1.0" in said[0].getMessage() and "Haar" in said[0].getMessage()  # why, and what to install
    assert len(loads) == 1  # the cascade is not looked for again on every call
    with pytest.raises(BackendUnavailableError, match="OpenCV 4"):  # asked for by name: an error, every time
        detect_faces(torch.zeros(1, 64, 64, 3), backend="opencv")


def test_the_cascade_is_loaded_once_per_process(monkeypatch):
    loads = []
    load = face_detection._opencv_cascade
    monkeypatch.setattr(face_detection, "_opencv_cascade", lambda: loads.append(1) or load())
    for _ in range(3):
        detect_faces(torch.zeros(1, 64, 64, 3), backend="opencv")
        detect_faces(torch.zeros(1, 64, 64, 3), backend="auto")
    assert len(loads) == 1


# --- real footage --------------------------------------------------------------------------------------------------


@pytest.mark.real_data
@pytest.mark.slow
def test_dancer_face_is_found_in_nearly_every_frame(dance):
    track = detect_faces(dance)  # auto
    assert track.backend.startswith("mediapipe")
    assert float(track.valid.float().mean()) >= 0.95
    boxes = track.boxes[track.valid]
    sides = boxes[:, 2:] - boxes[:, :2]
    assert ((sides > 0.06 * 512) & (sides < 0.25 * 512)).all()  # a small face in a full-body shot
    centres_y = (boxes[:, 1] + boxes[:, 3]) / 2
    assert (centres_y < 0.3 * 896).all()  # at the top of the frame, where the head is
    # one face followed, no jumps to something else: between kept frames (3 source frames apart, fast dance
    # moves reach 0.9 face sides) the box centre moves less than 1.5 face sides
    pairs = track.valid[1:] & track.valid[:-1]
    centres = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
    step = (centres[1:] - centres[:-1]).norm(dim=1) / (track.boxes[:-1, 2] - track.boxes[:-1, 0]).clamp_min(1)
    assert float(step[pairs].max()) < 1.5


@pytest.mark.real_data
@pytest.mark.slow
def test_opencv_boxes_match_mediapipe_tightness(dance):
    frames = dance[::12]  # 8 frames: the cascade is the slow one
    haar = detect_faces(frames, backend="opencv")
    mp = detect_faces(frames, backend="mediapipe")
    both = haar.valid & mp.valid
    assert int(both.sum()) >= 6
    # converted Haar boxes overlap mediapipe's at IoU ~0.9 (raw Haar boxes: ~0.6); the cascade may pick a
    # wrong face-like patch now and then (1 of these 8 frames)
    assert float((iou(haar.boxes, mp.boxes)[both] > 0.75).float().mean()) >= 0.75


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["ref_real_person.jpg", "ref_anime_character.jpg"])
def test_reference_faces_are_found(name):
    image = reference(name)
    track = detect_faces(image)  # auto: mediapipe, OpenCV if it misses (the cascade misses the anime face)
    assert bool(track.valid[0])
    x0, y0, x1, y1 = track.boxes[0].tolist()
    assert (y0 + y1) / 2 < 896 / 3 and 0.2 * 512 < (x0 + x1) / 2 < 0.8 * 512
    assert 0.04 * 512 < x1 - x0 < 0.4 * 512
