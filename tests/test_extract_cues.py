"""extract_cues end to end: synthetic puppets with ground-truth masks and boxes (no detectors), errors, previews,
and the real footage with the detectors when ../shared/data/real is present."""

from dataclasses import replace

import pytest
import torch

from directanimator.cues import (
    CueConfig, align_pose_cue, contact_sheet, cue_sheet, extract_cues, location_overlay, overlay_location, working_size,
)
from directanimator.errors import CueError, InputError
from helpers import REAL_DATA, centroid, disc, figure, mass_inside

SIZE = (96, 128)  # working size (H, W)
CENTRES = (40.0, 50.0, 60.0, 70.0, 80.0)
CONFIG = CueConfig(height=SIZE[0], width=SIZE[1], grid_cell=8, grid_blur=2.0, segmenter="given", face_detector="given")
SPREAD = 8 + 3 * 2.0  # how far grid softening (cell 8, blur 2) can spread a mask, px


def puppet_clip(size=SIZE, scale=1.0):
    """A red figure with a yellow face walking right over a grey floor: frames, masks, face boxes."""
    frames, masks, faces = [], [], []
    for cx in CENTRES:
        mask, face = figure(size, top=12 * scale, centre_x=cx * scale, height=70 * scale)
        frame = torch.full((*size, 3), 0.3)
        frame = frame * (1 - mask[..., None]) + mask[..., None] * torch.tensor([0.9, 0.2, 0.2])
        head = disc(float(face[2] - face[0]) / 2, size, centre=((face[0] + face[2]) / 2, (face[1] + face[3]) / 2))
        frame[..., 1] = torch.maximum(frame[..., 1], head)  # a yellow face: the only bright green
        frames.append(frame)
        masks.append(mask)
        faces.append(face)
    return torch.stack(frames), torch.stack(masks), torch.stack(faces)


def puppet_reference(size=(200, 120)):
    """A taller portrait picture of another figure: image [1, H, W, 3], mask [1, H, W], face box [4]."""
    mask, face = figure(size, top=30, centre_x=60, height=150)
    image = torch.full((1, *size, 3), 0.8) * (1 - mask[..., None]) + mask[..., None] * torch.tensor([0.1, 0.3, 0.9])
    return image, mask[None], face


def extract(driving=None, masks=None, faces=None, face_valid=None, **kwargs):
    frames, clip_masks, clip_faces = puppet_clip()
    reference, reference_mask, reference_face = puppet_reference()
    options = dict(driving_mask=clip_masks if masks is None else masks,
                   driving_face_boxes=clip_faces if faces is None else faces, driving_face_valid=face_valid,
                   reference_mask=reference_mask, reference_face_box=reference_face)
    options.update(kwargs)
    return extract_cues(reference, frames if driving is None else driving, options.pop("config", CONFIG), **options)


@pytest.mark.parametrize("anchor", ["first", "clip"])
def test_extract_cues_end_to_end_with_ground_truth_masks_and_boxes(anchor):
    triplet = extract(config=CueConfig(**{**CONFIG.to_dict(), "anchor": anchor}))
    count, (height, width) = len(CENTRES), SIZE
    assert triplet.pose.shape == triplet.face.shape == (count, height, width, 3)
    assert triplet.body_location.shape == triplet.face_location.shape == (count, height, width)
    assert triplet.reference.shape == triplet.reference_pose.shape == triplet.reference_face.shape == (1, height, width, 3)
    assert triplet.reference_mask.shape == triplet.reference_body_location.shape == (1, height, width)
    for name in triplet.TENSOR_FIELDS:
        value = getattr(triplet, name)
        assert value.dtype == torch.float32 and float(value.min()) >= 0.0 and float(value.max()) <= 1.0, name

    record = triplet.record
    assert record.backends["segmenter"] == "given" and record.backends["face_detector"] == "given"
    assert record.person_valid.all() and record.face_valid.all() and not record.bad_frames.any()
    # the 200x120 portrait reference is letterboxed: scale 0.48, 58 px wide, bars left and right
    assert record.geometry["reference"]["content"] == [35.0, 0.0, 93.0, 96.0]
    assert any("letterboxed" in note for note in record.notes)
    reference_box = record.reference_person_box
    assert torch.allclose(reference_box, torch.tensor([35.0 + 0.48 * 22.5, 0.48 * 30, 35 + 0.48 * 97.5, 0.48 * 180]),
                          atol=1.5)

    # the anchor frame (the first, or the median position: the middle frame) lands on the reference's person and
    # face; the other frames move with the driver, scaled by the transform
    anchored = 0 if anchor == "first" else len(CENTRES) // 2
    assert mass_inside(triplet.body_location[anchored], reference_box, margin=SPREAD) > 0.99
    assert mass_inside(triplet.face_location[anchored], record.reference_face_box, margin=SPREAD) > 0.99
    assert (anchor == "first") == any("anchored on driving frame 0" in note for note in record.notes)
    half_cell = CONFIG.grid_cell / 2  # gridding moves a centroid by at most half a cell
    reference_face_centre = (record.reference_face_box[:2] + record.reference_face_box[2:]) / 2
    for i, cx in enumerate(CENTRES):
        x, _ = centroid(triplet.face_location[i])
        expected = float(reference_face_centre[0]) + record.transform.scale * (cx - CENTRES[anchored])
        assert abs(x - expected) < half_cell
    assert mass_inside(triplet.reference_body_location[0], reference_box, margin=SPREAD) > 0.99
    # the pose cue stays where the driver is (driving coordinates) and the face cue is centred
    for i, cx in enumerate(CENTRES):
        x, _ = centroid(triplet.pose[i, ..., 0])
        assert abs(x - cx) < 3.0
        fx, fy = centroid((triplet.face[i, ..., 1] > 0.5).float())
        assert abs(fx - width / 2) < 1.0 and abs(fy - height / 2) < 1.0


def _driving() -> dict:
    frames, masks, faces = puppet_clip()
    return dict(driving=frames, driving_mask=masks, driving_face_boxes=faces)


def test_align_pose_moves_the_pose_cue_onto_where_the_location_cue_puts_the_body():
    # a smaller reference figure standing at the right: the driver (x 40..80) must move right and shrink
    mask, face = figure(SIZE, top=30, centre_x=100, height=56)
    reference = torch.full((1, *SIZE, 3), 0.8) * (1 - mask[..., None]) + mask[..., None] * torch.tensor([0.1, 0.3, 0.9])
    options = dict(reference=reference, reference_mask=mask[None], reference_face_box=face)
    # anchored on the clip's median, so the walk (x 40..80) stays inside the picture once moved right
    config = CueConfig(**{**CONFIG.to_dict(), "anchor": "clip"})
    plain = extract_cues(config=config, **_driving(), **options)
    aligned = extract_cues(config=replace(config, align_pose=True), **_driving(), **options)
    t = aligned.record.transform
    assert t.scale < 0.9 and t.tx > 30
    assert aligned.record.pose_aligned and not plain.record.pose_aligned
    assert any("align_pose" in note for note in aligned.record.notes)

    def inside(triplet, i):  # share of the pose cue's mass inside the body location
        weight = triplet.pose[i, ..., 0]
        return float((weight * (triplet.body_location[i] > 0.5)).sum() / weight.sum())

    for i, cx in enumerate(CENTRES):  # the driver's centre line, mapped into the reference picture
        x, _ = centroid(aligned.pose[i, ..., 0])
        assert abs(x - (t.scale * cx + t.tx)) < 3.0
        assert inside(aligned, i) > 0.9 and inside(plain, i) < 0.5
    assert torch.equal(aligned.pose[..., 0], aligned.pose[..., 2])  # still grey
    # aligning afterwards is the same warp; an aligned triplet is left as it is
    later = align_pose_cue(plain)
    torch.testing.assert_close(later.pose, aligned.pose)
    assert later.record.pose_aligned and not plain.record.pose_aligned
    assert align_pose_cue(aligned) is aligned
    for name in ("face", "body_location", "face_location", "reference_pose"):
        assert torch.equal(getattr(aligned, name), getattr(plain, name)), name


def test_driving_masks_and_boxes_at_the_source_size_are_letterboxed_with_the_frames():
    frames, masks, faces = puppet_clip(size=(150, 200), scale=150 / 96)  # same scene, larger source
    triplet = extract(driving=frames, masks=masks, faces=faces)
    small = extract()
    # 200x150 -> 128x96 exactly: the same cues as extracting at the working size directly
    assert torch.allclose(triplet.record.face_boxes, small.record.face_boxes, atol=1.0)
    assert (triplet.body_location - small.body_location).abs().mean() < 0.02
    assert triplet.record.geometry["driving"]["source_size"] == [150, 200]


def test_no_face_anywhere_gives_a_blank_face_cue_and_zero_face_location():
    faces = torch.zeros(len(CENTRES), 4)
    triplet = extract(faces=faces, face_valid=torch.zeros(len(CENTRES), dtype=torch.bool))
    assert float(triplet.face.abs().max()) == 0.0 and float(triplet.face_location.abs().max()) == 0.0
    assert float(triplet.body_location.max()) > 0.9
    assert any("no face" in note for note in triplet.record.notes)


def test_short_face_gaps_are_filled():
    valid = torch.tensor([True, False, False, True, True])
    triplet = extract(face_valid=valid)
    assert triplet.record.face_valid.all()
    assert any("gaps" in note for note in triplet.record.notes)


def test_one_frame_video_and_progress_once_per_frame():
    frames, masks, faces = puppet_clip()
    seen = []
    triplet = extract(driving=frames[:1], masks=masks[:1], faces=faces[:1], on_frame=seen.append)
    assert triplet.num_frames == 1 and seen == [0]
    seen = []
    extract(on_frame=seen.append)
    assert seen == list(range(len(CENTRES)))


def test_rgba_and_grey_inputs_are_accepted():
    frames, masks, faces = puppet_clip()
    rgba = torch.cat([frames, torch.ones(*frames.shape[:3], 1)], dim=-1)
    reference, reference_mask, reference_face = puppet_reference()
    grey = reference.mean(dim=-1)[0]  # [H, W]
    triplet = extract_cues(grey, rgba, CONFIG, driving_mask=masks, driving_face_boxes=faces,
                           reference_mask=reference_mask, reference_face_box=reference_face)
    assert triplet.pose.shape == (len(CENTRES), *SIZE, 3) and triplet.reference.shape == (1, *SIZE, 3)


def test_bad_frames_are_flagged_and_blanked():
    frames, masks, faces = puppet_clip()
    masks = masks.clone()
    masks[2] = 0.0  # segmentation failed on frame 2
    triplet = extract(masks=masks)
    assert triplet.record.bad_frames.tolist() == [False, False, True, False, False]
    assert float(triplet.pose[2].abs().max()) == 0.0 and float(triplet.pose[1].max()) > 0.1


def test_errors_are_raised_before_the_work_with_the_fix():
    frames, masks, faces = puppet_clip()
    with pytest.raises(CueError, match=r"driving_mask.*128x96|driving_mask.*96x128"):
        extract(masks=masks[:, :64, :64])
    with pytest.raises(CueError, match="no person found in any of the 5 frames"):
        extract(masks=torch.zeros_like(masks))
    with pytest.raises(CueError, match="no person found in the reference; pass a reference mask"):
        extract(reference_mask=torch.zeros(1, 200, 120))
    with pytest.raises(InputError, match="at least 64 px"):
        extract(driving=frames[:, :48, :60], masks=masks[:, :48, :60])
    with pytest.raises(CueError, match="one image"):
        extract_cues(frames[:2], frames, CONFIG, driving_mask=masks, driving_face_boxes=faces)
    with pytest.raises(CueError, match="segmenter is 'given'"):
        extract(driving_mask=None)
    with pytest.raises(CueError, match="face detector is 'given'"):
        extract(driving_face_boxes=None)
    with pytest.raises(CueError, match="4 face boxes for 5"):
        extract(faces=faces[:4])
    with pytest.raises(CueError, match="multiple of 16"):
        extract(config=CueConfig(height=100, width=128))


def test_working_size_rule():
    assert working_size((1920, 1080), CueConfig())[0] == (1024, 576)  # long side 1024, multiples of 16
    assert working_size((100, 130), CueConfig())[0] == (96, 128)  # never upscaled, rounded to 16
    assert working_size((1080, 1920), CueConfig(height=480))[0] == (480, 848)
    assert working_size((1080, 1920), CueConfig(height=480, width=720))[0] == (480, 720)


def test_cue_sheet_and_location_overlay():
    # the clip anchor keeps the first frame's body location off the blue reference figure: red on the backdrop
    triplet = extract(config=CueConfig(**{**CONFIG.to_dict(), "anchor": "clip"}))
    overlay = location_overlay(triplet)
    assert overlay.shape == (len(CENTRES), *SIZE, 3)
    body = triplet.body_location[0] > 0.99
    assert float(overlay[0][body][:, 0].mean()) > float(overlay[0][body][:, 2].mean()) + 0.3  # body is red
    frames, _, _ = puppet_clip(size=(150, 200), scale=150 / 96)
    sheet = cue_sheet(triplet, driving=frames, columns=3)
    without = cue_sheet(triplet, columns=3, labels=False)
    assert sheet.ndim == 4 and sheet.shape[0] == 1 and sheet.shape[-1] == 3
    assert sheet.shape[1] > without.shape[1] and sheet.shape[2] > without.shape[2]  # a driving row and labels
    assert without.shape[1] == 3 * 96 + 4 * 4 and without.shape[2] == 3 * 128 + 2 * 4 + 2 * 4
    with pytest.raises(CueError, match="2 frames"):
        cue_sheet(triplet, driving=frames[:2])
    # the same sheet from separate cue outputs (the preview node without a bundle)
    rows = [("driving", frames), ("pose", triplet.pose), ("face", triplet.face),
            ("location", overlay_location(triplet.reference, triplet.body_location, triplet.face_location))]
    assert torch.allclose(contact_sheet(rows, columns=3), sheet)
    only_faces = overlay_location(None, None, triplet.face_location)
    assert only_faces.shape == (len(CENTRES), *SIZE, 3)
    with pytest.raises(CueError, match="body_location and/or face_location"):
        overlay_location(triplet.reference, None, None)


@pytest.fixture(scope="module")
def dance_clip():
    if not (REAL_DATA / "dance_1080x1920_24fps.mp4").is_file():
        pytest.skip(f"real footage not found in {REAL_DATA}")
    from directanimator.cues.face_detection import available_backends
    from directanimator.video import read_video

    if not available_backends().get("face/mediapipe"):
        pytest.skip("mediapipe is not installed: the default detectors cannot run")
    return read_video(REAL_DATA / "dance_1080x1920_24fps.mp4", max_frames=9, stride=32).frames


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("reference_name", ["ref_anime_character.jpg", "ref_real_person.jpg"])
def test_real_dance_lands_on_both_references(dance_clip, reference_name):
    from directanimator.video import read_image

    reference = read_image(REAL_DATA / reference_name)
    config = CueConfig(height=512, width=288)
    triplet = extract_cues(reference, dance_clip, config)
    record = triplet.record
    assert record.backends["segmenter"] == "mediapipe"
    assert record.person_valid.all() and int(record.face_valid.sum()) >= 7
    assert record.reference_face_box is not None
    margin = config.grid_cell + 3 * config.grid_blur
    body = triplet.body_location.sum(dim=0)
    assert mass_inside(body, record.reference_person_box, margin=margin) > 0.8
    # the driving face lands on the reference's face (it moves with the dancer's head around it)
    faces = triplet.face_location.sum(dim=0)
    assert mass_inside(faces, record.reference_face_box, margin=margin + 16) > 0.8


# --- the two detectors run at once (segmentation here, face detection in a worker thread) ---------------------------


def needs_mediapipe():
    from directanimator.cues.face_detection import available_backends

    backends = available_backends()
    if not (backends["segmentation/mediapipe"] and backends["face/mediapipe"]):
        pytest.skip("mediapipe is not installed: the detectors cannot run")


DETECTING = CueConfig(height=SIZE[0], width=SIZE[1], grid_cell=8, grid_blur=2.0)  # mediapipe + auto


def face_workers() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("directanimator-faces")]


def test_cancelling_while_both_detectors_run_stops_the_face_worker():
    needs_mediapipe()

    class Cancelled(Exception):
        pass

    def cancel(_index):
        raise Cancelled

    with pytest.raises(Cancelled):
        extract(config=DETECTING, driving_mask=None, driving_face_boxes=None, on_frame=cancel)
    assert face_workers() == []  # stopped and joined before the exception reached the caller


def test_a_face_detector_failure_in_the_worker_reaches_the_caller(monkeypatch):
    needs_mediapipe()
    from directanimator.cues import extract as extract_module
    from directanimator.errors import BackendUnavailableError

    def broken(*_args, **_kwargs):
        raise BackendUnavailableError("face detector broken for this test")

    monkeypatch.setattr(extract_module, "_detect_faces", broken)
    with pytest.raises(BackendUnavailableError, match="broken for this test"):
        extract(config=DETECTING, driving_mask=None, driving_face_boxes=None)
    assert face_workers() == []


@pytest.mark.real_data
@pytest.mark.slow
def test_concurrent_detection_gives_what_the_detectors_give_one_after_the_other(dance_clip):
    from directanimator.cues import mask_boxes, smooth_track, square_boxes
    from directanimator.cues.face_detection import detect_faces
    from directanimator.cues.segmentation import segment_person
    from directanimator.video import read_image, resize_frames

    config = CueConfig(height=512, width=288)
    frames = resize_frames(dance_clip, (512, 288), "pad")
    triplet = extract_cues(read_image(REAL_DATA / "ref_real_person.jpg"), frames, config)
    boxes, valid = mask_boxes(segment_person(frames))
    assert torch.equal(triplet.record.person_boxes, boxes) and torch.equal(triplet.record.person_valid, valid)
    track = smooth_track(detect_faces(frames), window=config.face_smooth, max_gap=config.max_face_gap)
    assert torch.equal(triplet.record.face_valid, track.valid)
    crop = square_boxes(track.boxes, scale=config.face_scale)[track.valid]
    assert torch.allclose(triplet.record.face_boxes[track.valid], crop)


@pytest.mark.slow
def test_reference_face_missed_in_the_whole_picture_is_found_in_the_head_region(dance_clip):
    """mediapipe misses the anime reference's face at 512x896 in the whole picture; the head view finds it."""
    from directanimator.cues.face_detection import detect_faces
    from directanimator.video import read_image

    reference = read_image(REAL_DATA / "ref_anime_character.jpg", size=(896, 512))
    assert not bool(detect_faces(reference, backend="mediapipe").valid[0])  # the case this fallback exists for
    driving = torch.nn.functional.interpolate(dance_clip[:3].permute(0, 3, 1, 2), size=(896, 512))
    triplet = extract_cues(reference, driving.permute(0, 2, 3, 1), CueConfig(height=896, width=512))
    face = triplet.record.reference_face_box
    assert face is not None and any("head region" in note for note in triplet.record.notes)
    x0, y0, x1, y1 = face.tolist()
    person = triplet.record.reference_person_box.tolist()
    assert person[0] <= x0 < x1 <= person[2] and person[1] <= y0 < y1 <= person[1] + 0.3 * (person[3] - person[1])
    assert 40 < x1 - x0 < 120  # a head-sized box at this size


def test_extract_cues_under_inference_mode_as_comfyui_runs_nodes():
    """ComfyUI runs nodes under torch.inference_mode(); the worker threads must run in the same mode."""
    frames, masks, faces = puppet_clip()
    count = 2 * 8  # long enough for the two-halves path
    frames, masks, faces = (x[:1].expand(count, *x.shape[1:]).contiguous() for x in (frames, masks, faces))
    with torch.inference_mode():
        triplet = extract(driving=frames, masks=masks, faces=faces)
    assert triplet.pose.shape[0] == count and bool(triplet.record.face_valid.all())


def test_the_two_halves_run_with_one_library_thread_each_and_the_settings_come_back(monkeypatch):
    # the cue builders run on the two halves of the clip at once; inside, torch and OpenCV keep one thread each
    import cv2

    from directanimator.cues import extract as extract_module

    seen = []
    build_pose = extract_module._pose_grey

    def recording(*args, **kwargs):
        seen.append((torch.get_num_threads(), cv2.getNumThreads()))
        return build_pose(*args, **kwargs)

    monkeypatch.setattr(extract_module, "_pose_grey", recording)
    frames, masks, faces = (torch.cat([x, x]) for x in puppet_clip())  # 10 frames: two halves of 5
    before = (torch.get_num_threads(), cv2.getNumThreads())
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    try:
        triplet = extract(driving=frames, masks=masks, faces=faces)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 2)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
    assert seen[:2] == [(1, 1), (1, 1)]  # the two halves; the reference's own cues come after, with both threads
    assert seen[2] == (2, 2)
    assert triplet.pose.shape[0] == 10
    # the pose cue is one grey channel shown three times (a view), its values the same in each
    assert triplet.pose.stride(-1) == 0 and torch.equal(triplet.pose[..., 0], triplet.pose[..., 2])
