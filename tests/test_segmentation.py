"""Person segmentation: mediapipe masks, SAM loading and prompting, bad-frame flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from directanimator.cues.face_detection import detect_faces
from directanimator.cues.sam import (
    OFFICIAL_ARCHS,
    SamArch,
    build_sam,
    infer_sam_arch,
    load_sam,
    sam_prompts,
    sam_segment,
    save_sam_checkpoint,
)
from directanimator.cues.segmentation import bad_frames, mask_areas, segment_person, selfie_model_for
from directanimator.errors import CheckpointError, CueError, InputError
from helpers import DANCE_SIZE, check_on_frame, dance_frames, real_reference

WORKING_SIZE = DANCE_SIZE

TINY_SAM = SamArch(
    encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,), img_size=128,
    window_size=4, prompt_embed_dim=32, mask_in_chans=4, decoder_depth=1, decoder_mlp_dim=64, decoder_num_heads=2,
    iou_head_hidden_dim=32,
)


@pytest.fixture(scope="module")
def dance():
    return dance_frames()


reference = real_reference


@pytest.fixture(scope="module")
def tiny_sam_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_sam_checkpoint(build_sam(TINY_SAM), tmp_path_factory.mktemp("sams") / "tiny.safetensors", TINY_SAM)


def person_mask(size=(200, 120)) -> np.ndarray:
    """A standing figure: head disc, torso, two legs with a gap between them."""
    ys, xs = np.mgrid[: size[0], : size[1]]
    head = (ys - 30) ** 2 + (xs - 60) ** 2 < 15**2
    torso = (ys >= 45) & (ys < 110) & (xs >= 35) & (xs < 85)
    legs = (ys >= 110) & (ys < 190) & (((xs >= 35) & (xs < 55)) | ((xs >= 65) & (xs < 85)))
    return (head | torso | legs).astype(np.float32)


# --- mediapipe masks on synthetic frames ---------------------------------------------------------------------------


def test_real_masks_have_no_denormal_background():
    # the selfie model gives the background values down to 1e-40 (denormals, slow to compute with): flushed to 0
    from directanimator.cues.segmentation import MASK_FLOOR

    mask = segment_person(reference("ref_real_person.jpg"))
    assert float(mask.max()) > 0.9 and float((mask == 0).float().mean()) > 0.3
    assert not bool(((mask > 0) & (mask <= MASK_FLOOR)).any())


def test_frames_converted_once_give_the_same_masks_and_faces():
    # extract_cues converts the frames to uint8 once for both detectors (frames_uint8)
    from directanimator.cues.face_detection import _detect_faces
    from directanimator.cues.segmentation import _segment_person, frame_uint8, frames_uint8

    frames = torch.cat([reference("ref_real_person.jpg"), torch.rand(1, *DANCE_SIZE, 3)])
    images = frames_uint8(frames)
    assert images.dtype == np.uint8 and images.shape == (2, *DANCE_SIZE, 3)
    assert all(np.array_equal(images[i], frame_uint8(frames[i])) for i in range(2))
    assert torch.equal(_segment_person(frames, images=images), segment_person(frames))
    shared, alone = _detect_faces(frames, images=images), detect_faces(frames)
    assert torch.equal(shared.boxes, alone.boxes) and torch.equal(shared.valid, alone.valid) and bool(alone.valid[0])


def test_frames_converted_with_their_luma_strip_by_strip_are_the_whole_frame_conversions():
    # with `luma`, frames_uint8 converts each frame in strips of STRIP_ROWS rows (both conversions of a strip while
    # it is in cache): the same bytes and luma as converting whole frames; 150 rows end in a partial strip
    import cv2

    from directanimator.cues.segmentation import STRIP_ROWS, frame_uint8, frames_uint8

    frames = torch.rand(2, 150, 70, 3)
    assert 150 % STRIP_ROWS != 0 and 150 > STRIP_ROWS
    luma = torch.full((2, 150, 70), float("nan"))
    images = frames_uint8(frames, luma=luma)
    for i in range(2):
        np.testing.assert_array_equal(images[i], frame_uint8(frames[i]))
        np.testing.assert_array_equal(luma[i].numpy(), cv2.cvtColor(frames[i].numpy(), cv2.COLOR_RGB2GRAY))


def test_person_boxes_taken_by_the_segmentation_are_mask_boxes():
    # extract_cues has the segmentation take each mask's person box while the mask is in cache: mask_boxes' boxes,
    # zeros for an empty mask (the black frame)
    from directanimator.cues import mask_boxes
    from directanimator.cues.segmentation import _segment_person

    frames = torch.cat([reference("ref_real_person.jpg"), torch.zeros(1, *DANCE_SIZE, 3)])
    boxes = np.full((2, 4), np.nan, np.float32)
    masks = _segment_person(frames, boxes=boxes)
    expected, valid = mask_boxes(masks)
    assert torch.equal(torch.from_numpy(boxes), expected) and valid.tolist() == [True, False]


def test_black_frames_give_empty_masks_of_the_frame_size():
    masks = segment_person(torch.zeros(2, 96, 128, 3))
    assert masks.shape == (2, 96, 128) and masks.dtype == torch.float32
    assert float(masks.max()) < 0.01


@pytest.mark.parametrize("channels", [1, 4])
def test_grey_and_rgba_frames_are_accepted(channels):
    masks = segment_person(torch.zeros(1, 80, 64, channels))
    assert masks.shape == (1, 80, 64)


def test_bad_inputs_raise_before_any_work():
    with pytest.raises(InputError, match="colour channels"):
        segment_person(torch.zeros(2, 3, 96, 96))  # channels first
    with pytest.raises(InputError, match="at least 64"):
        segment_person(torch.zeros(1, 32, 32, 3))
    with pytest.raises(CueError, match="backend"):
        segment_person(torch.zeros(1, 64, 64, 3), backend="grabcut")
    with pytest.raises(CueError, match="sam_checkpoint"):
        segment_person(torch.zeros(1, 64, 64, 3), backend="sam")
    with pytest.raises(CueError, match="threshold"):
        segment_person(torch.zeros(1, 64, 64, 3), threshold=1.5)


def test_on_frame_is_called_per_frame_and_can_stop_the_run():
    check_on_frame(segment_person)


def test_model_choice_follows_the_frame_shape():
    assert selfie_model_for(896, 512) == 0  # portrait: the square model stretches least
    assert selfie_model_for(512, 512) == 0
    assert selfie_model_for(480, 854) == 1  # 16:9 landscape


# --- bad frames ----------------------------------------------------------------------------------------------------


def growing_masks(areas: list[float], size=(100, 100)) -> torch.Tensor:
    """One mask per frame, a box of exactly the given area fraction."""
    masks = torch.zeros(len(areas), *size)
    for i, area in enumerate(areas):
        masks[i].view(-1)[: round(area * size[0] * size[1])] = 1.0
    return masks


def test_empty_mask_is_a_bad_frame():
    flags = bad_frames(growing_masks([0.2, 0.2, 0.0, 0.2, 0.2]))
    assert flags.tolist() == [False, False, True, False, False]


def test_single_frame_area_jump_is_flagged_but_not_its_neighbours():
    flags = bad_frames(growing_masks([0.20, 0.21, 0.05, 0.20, 0.22, 0.21]))
    assert flags.tolist() == [False, False, True, False, False, False]
    flags = bad_frames(growing_masks([0.20, 0.21, 0.45, 0.20, 0.22]))  # a spurious blob doubling the area
    assert flags.tolist() == [False, False, True, False, False]


def test_jump_at_the_first_frame_is_flagged():
    assert bad_frames(growing_masks([0.05, 0.2, 0.2, 0.2])).tolist() == [True, False, False, False]


def test_smooth_growth_and_a_lasting_change_are_not_flagged():
    growth = [0.05 * 1.3**i for i in range(10)]  # the person walking towards the camera, 30% per frame
    assert not bad_frames(growing_masks(growth)).any()
    step = [0.1, 0.1, 0.1, 0.3, 0.3, 0.3]  # a lasting change (e.g. the dancer spreads her arms)
    assert not bad_frames(growing_masks(step)).any()


def test_two_frame_glitch_needs_a_wider_window():
    areas = [0.2, 0.2, 0.2, 0.05, 0.05, 0.2, 0.2, 0.2]
    assert not bad_frames(growing_masks(areas)).any()
    assert bad_frames(growing_masks(areas), radius=2).tolist() == [False] * 3 + [True, True] + [False] * 3


def test_one_frame_video_gets_only_the_empty_test():
    assert bad_frames(growing_masks([0.3])).tolist() == [False]
    assert bad_frames(growing_masks([0.0])).tolist() == [True]
    assert bad_frames(growing_masks([0.001])).tolist() == [True]  # below min_area


def test_bad_frames_checks_its_options():
    with pytest.raises(CueError, match="area_jump"):
        bad_frames(growing_masks([0.2, 0.2]), area_jump=0)
    with pytest.raises(CueError, match="min_area"):
        bad_frames(growing_masks([0.2, 0.2]), min_area=2)
    with pytest.raises(InputError, match="shape"):
        bad_frames(torch.zeros(2, 3, 4, 5, 6))


# --- SAM -----------------------------------------------------------------------------------------------------------


def test_prompt_box_and_points_come_from_the_guide_mask():
    mask = person_mask()
    mask[4:8, 4:8] = 1.0  # a speck of background the guide segmenter mistook for person
    prompt = sam_prompts(mask)
    x0, y0, x1, y1 = prompt.box
    # the figure spans x 35..85, y 15..190; the box adds 5% margins and ignores the speck
    assert 32 <= x0 < 35 and 85 < x1 <= 88 and 6 <= y0 < 15 and 190 < y1 <= 200
    positives = prompt.points[prompt.labels == 1]
    negatives = prompt.points[prompt.labels == 0]
    assert len(positives) == 3 and len(negatives) >= 1
    inside = person_mask()[positives[:, 1].astype(int), positives[:, 0].astype(int)]
    assert inside.all()
    assert positives[:, 1].min() < 60 and positives[:, 1].max() > 130  # spread from head to legs
    assert (person_mask()[negatives[:, 1].astype(int), negatives[:, 0].astype(int)] == 0).all()
    assert ((negatives >= prompt.box[:2]) & (negatives <= prompt.box[2:])).all()


def test_prompt_points_sit_in_the_middle_of_a_box_shaped_mask():
    mask = np.zeros((96, 80), np.float32)
    mask[20:80, 20:60] = 1.0
    prompt = sam_prompts(mask)
    assert np.allclose(prompt.box, [18, 17, 62, 83])
    assert np.allclose(prompt.points[:, 0], 40, atol=1)  # centred horizontally, not at the left edge
    assert np.allclose(prompt.points[:, 1], [30, 50, 70], atol=1)  # one per band
    assert (prompt.labels == 1).all()  # no pixel of the box is far enough from the mask for a negative


def test_empty_guide_gives_no_prompt():
    assert sam_prompts(np.zeros((64, 64), np.float32)) is None
    assert sam_prompts(np.full((64, 64), 0.4, np.float32), threshold=0.5) is None


def test_tiny_sam_checkpoint_round_trips_with_its_architecture(tiny_sam_path):
    model = load_sam(tiny_sam_path, device="cpu")
    assert model.image_encoder.patch_embed.proj.out_channels == 64
    assert len(model.image_encoder.blocks) == 2 and model.image_encoder.img_size == 128
    assert len(model.mask_decoder.transformer.layers) == 1
    torch.manual_seed(0)
    expected = build_sam(TINY_SAM).state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert load_sam(tiny_sam_path, device="cpu") is model  # cached per path


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_model_type_is_inferred_from_tensor_shapes(name):
    with torch.device("meta"):  # shapes only, no memory
        state = build_sam(OFFICIAL_ARCHS[name]).state_dict()
    assert infer_sam_arch(state) == (name, OFFICIAL_ARCHS[name])


def test_checkpoint_of_unknown_architecture_is_refused_with_the_fix(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "custom.pth"
    torch.save(build_sam(TINY_SAM).state_dict(), path)  # plain state dict, no architecture metadata
    with pytest.raises(CheckpointError, match=r"width 64 with 2 blocks.*sam_arch"):
        load_sam(path, device="cpu")


def test_pickled_model_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save(build_sam(TINY_SAM), path)  # a whole pickled module: loading it could run code
    with pytest.raises(CheckpointError, match="weights-only"):
        load_sam(path, device="cpu")


def test_missing_or_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_sam(tmp_path / "absent.pth")
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="not a segment-anything"):
        load_sam(other, device="cpu")
    wrong = tmp_path / "sam.ckpt"
    wrong.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="extension"):
        load_sam(wrong)


def test_sam_masks_have_frame_shape_and_range_and_stay_empty_without_a_guide(tiny_sam_path):
    torch.manual_seed(0)
    frames = torch.rand(3, 96, 80, 3)
    guides = torch.zeros(3, 96, 80)
    guides[0, 20:80, 20:60] = 1.0
    guides[2] = torch.from_numpy(person_mask((96, 80)))
    seen = []
    masks = sam_segment(frames, guides, checkpoint=tiny_sam_path, device="cpu", on_frame=seen.append)
    assert masks.shape == (3, 96, 80) and seen == [0, 1, 2]
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert float(masks[1].abs().max()) == 0.0  # nobody in the guide: no prompt, empty mask
    assert float(masks[0].std()) > 0  # a real prediction, not a constant fill


def test_segment_person_with_sam_on_a_real_photo(tiny_sam_path):
    person = reference("ref_real_person.jpg")[:, ::4, ::4].contiguous()  # 128x224, fast for the tiny SAM
    masks = segment_person(person, backend="sam", sam_checkpoint=str(tiny_sam_path), device="cpu")
    assert masks.shape == (1, 224, 128)
    assert 0 <= float(masks.min()) and float(masks.max()) <= 1 and float(masks.std()) > 0


# --- real footage --------------------------------------------------------------------------------------------------


@pytest.mark.real_data
@pytest.mark.slow
def test_person_mask_covers_the_dancer_and_not_the_background(dance):
    masks = segment_person(dance)
    assert masks.shape == dance.shape[:3]
    areas = mask_areas(masks)
    assert 0.12 < float(areas.min()) and float(areas.max()) < 0.40  # a standing full-body dancer in portrait
    faces = detect_faces(dance, backend="mediapipe")
    assert faces.valid.float().mean() > 0.95
    on_face = [float(masks[i, int(y0):int(y1), int(x0):int(x1)].mean())
               for i, (x0, y0, x1, y1) in enumerate(faces.boxes.tolist()) if faces.valid[i]]
    assert np.median(on_face) > 0.9
    corners = torch.cat([masks[:, :120, :60].flatten(1), masks[:, :120, -60:].flatten(1)], dim=1)
    assert float(corners.mean()) < 0.01  # sky
    assert float(masks[:, :, :30].mean()) < 0.02 and float(masks[:, :, -30:].mean()) < 0.02  # far sides
    assert float(bad_frames(masks).float().mean()) <= 0.05


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["ref_real_person.jpg", "ref_anime_character.jpg"])
def test_reference_pictures_get_a_person_mask_around_the_face(name):
    image = reference(name)
    mask = segment_person(image)[0]
    face = detect_faces(image)
    assert bool(face.valid[0])
    x0, y0, x1, y1 = (int(v) for v in face.boxes[0].tolist())
    assert float(mask[y0:y1, x0:x1].mean()) > 0.8
    assert 0.1 < float(mask.mean()) < 0.5
    assert float(mask[:, :25].mean()) < 0.15 and float(mask[:, -25:].mean()) < 0.15


def test_mask_clipping_matches_numpy_clip_and_floor():
    # the OpenCV passes that clip each mask give exactly np.clip to 0..1 and the denormal floor
    from directanimator.cues.segmentation import MASK_FLOOR, _clip_mask

    rng = np.random.default_rng(0)
    mask = (rng.standard_normal((37, 53)) * 0.8 + 0.5).astype(np.float32)
    mask[0, :6] = [1e-40, -1e-40, MASK_FLOOR, 2 * MASK_FLOOR, 1.0, -0.0]
    expected = np.clip(mask, 0.0, 1.0)
    expected[expected <= MASK_FLOOR] = 0.0
    out = np.full_like(mask, np.nan)
    _clip_mask(mask, out)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 3] == 2 * MASK_FLOOR and out.min() == 0.0 and out.max() == 1.0
    # in strips of STRIP_ROWS rows, with the person box taken on the way (the box of the pixels above 0.5)
    tall = np.concatenate([mask] * 3)  # 111 rows: a partial strip at the end
    out = np.full_like(tall, np.nan)
    box = _clip_mask(tall, out, np.empty(tall.shape, np.uint8))
    np.testing.assert_array_equal(out, np.concatenate([expected] * 3))
    rows, columns = np.nonzero(out > 0.5)
    assert box == (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)


def test_zeroed_buffers_are_zero_writable_and_outlive_their_mapping():
    # large zeroed buffers are mapped for huge pages: zeros, writable, kept alive by the tensor alone
    import gc

    from directanimator.cues.buffers import HUGE_PAGE_MIN_BYTES, zeroed_buffer

    small, large = zeroed_buffer(2, 8, 8), zeroed_buffer(3, 512, 1024)
    assert large.numel() * 4 >= HUGE_PAGE_MIN_BYTES and large.dtype == torch.float32
    assert float(small.abs().max()) == 0.0 and float(large.abs().max()) == 0.0
    part = large[1, 100:200]
    del large
    gc.collect()
    part += 2.5
    assert float(part.mean()) == 2.5


def _huge_page_advice(array: np.ndarray) -> bool:
    """Whether the mapping holding `array` was advised for huge pages (the "hg" flag of /proc/self/smaps)."""
    address, advised, inside = array.ctypes.data, None, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, stop = (int(v, 16) for v in head.split("-"))
                inside = start <= address < stop
            elif inside and head == "VmFlags:":
                advised = "hg" in line.split()[1:]
    return bool(advised)


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads the mapping flags from /proc (Linux)")
def test_sparse_zeroed_buffers_are_not_advised_for_huge_pages():
    # a buffer of which only small windows are written (the face location) keeps 4 KiB pages: a huge page is
    # zeroed whole at its first write; the face canvas (mostly written) asks for huge pages
    from directanimator.cues.buffers import zeroed_buffer

    canvas, sparse = zeroed_buffer(3, 512, 1024), zeroed_buffer(3, 512, 1024, sparse=True)
    assert _huge_page_advice(canvas.numpy()) and not _huge_page_advice(sparse.numpy())
    sparse[1, 10:20, 30:40] = 0.5
    assert float(sparse.sum()) == 50.0 and float(sparse[0].abs().max()) == 0.0
