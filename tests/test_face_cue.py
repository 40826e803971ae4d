"""Face cue and face tracks: boxes from masks, gap filling and smoothing, squared crops, centred face crops."""

import numpy as np
import pytest
import torch

from directanimator.cues import FaceTrack, face_cue, mask_boxes, median_box, smooth_track, square_boxes
from directanimator.cues.face_cue import crop_boxes
from directanimator.cues.resample import VALUE_ERROR
from directanimator.errors import CueError
from helpers import centroid, disc, rectangle


def test_mask_boxes_are_tight_pixel_edge_boxes_and_flag_empty_masks():
    masks = torch.zeros(3, 64, 80)
    masks[0, 10:20, 30:45] = 1.0
    masks[2, 0:64, 79:80] = 0.7
    boxes, valid = mask_boxes(masks)
    assert valid.tolist() == [True, False, True]
    assert boxes[0].tolist() == [30.0, 10.0, 45.0, 20.0]
    assert boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert boxes[2].tolist() == [79.0, 0.0, 80.0, 64.0]
    assert not bool(mask_boxes(masks * 0.4)[1].any())  # below the 0.5 threshold


def test_smooth_track_fills_a_short_gap_by_linear_interpolation():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [40, 0, 50, 10]])
    valid = torch.tensor([True, False, False, False, True])
    track = smooth_track(FaceTrack(boxes, valid), window=1, max_gap=3)
    assert track.valid.all()
    assert torch.allclose(track.boxes[:, 0], torch.tensor([0.0, 10, 20, 30, 40]))
    assert track.detected.tolist() == valid.tolist()  # the raw detections are kept


def test_smooth_track_leaves_long_gaps_and_holds_ends_up_to_max_gap():
    boxes = torch.zeros(10, 4)
    valid = torch.zeros(10, dtype=torch.bool)
    boxes[2], valid[2] = torch.tensor([5.0, 5, 15, 15]), True
    boxes[7], valid[7] = torch.tensor([50.0, 5, 60, 15]), True
    track = smooth_track(FaceTrack(boxes, valid), window=1, max_gap=2)
    # frames 3..6 are a gap of 4 > 2: left invalid; the ends hold for up to 2 frames
    assert track.valid.tolist() == [True, True, True, False, False, False, False, True, True, True]
    assert torch.equal(track.boxes[0], boxes[2]) and torch.equal(track.boxes[9], boxes[7])


def test_smooth_track_reduces_jitter_but_keeps_a_steady_face_in_place():
    steady = torch.tensor([20.0, 30, 60, 70]).repeat(12, 1)
    jitter = torch.tensor([2.0, 0, 2, 0]) * torch.tensor([1.0, -1] * 6)[:, None]
    noisy = steady + jitter
    track = smooth_track(FaceTrack(noisy, torch.ones(12, dtype=torch.bool)), window=5)
    centre_x = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
    noisy_centre_x = (noisy[:, 0] + noisy[:, 2]) / 2
    assert float(centre_x[2:-2].std()) < 0.5 * float(noisy_centre_x.std())
    same = smooth_track(FaceTrack(steady, torch.ones(12, dtype=torch.bool)), window=5)
    assert torch.allclose(same.boxes, steady)


def test_smooth_track_follows_a_face_that_really_moves():
    # frames far apart in time (a subsampled clip): the face is somewhere else in each; no averaging across
    boxes = torch.tensor([[10.0, 10, 30, 30], [60, 10, 80, 30], [110, 10, 130, 30], [60, 50, 80, 70]])
    track = smooth_track(FaceTrack(boxes, torch.ones(4, dtype=torch.bool)), window=5)
    assert torch.allclose(track.boxes, boxes)


def test_smooth_track_does_not_average_in_frames_without_a_face():
    boxes = torch.tensor([[10.0, 10, 20, 20]] * 3 + [[0.0, 0, 0, 0]] * 20)
    valid = torch.tensor([True] * 3 + [False] * 20)
    track = smooth_track(FaceTrack(boxes, valid), window=5, max_gap=0)
    assert torch.allclose(track.boxes[:3], boxes[:3])
    assert not bool(track.valid[3:].any())


def test_square_boxes_are_enlarged_squares_around_the_centre_and_not_clamped():
    square = square_boxes(torch.tensor([[-4.0, 10, 16, 50]]), scale=1.5)
    assert torch.allclose(square, torch.tensor([[-24.0, 0, 36, 60]]))


def test_median_box_ignores_invalid_frames_and_requires_one():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 2, 12, 12], [100, 100, 200, 200], [4, 4, 14, 14]])
    assert median_box(boxes, torch.tensor([True, True, False, True])).tolist() == [2.0, 2.0, 12.0, 12.0]
    with pytest.raises(CueError, match="no valid box"):
        median_box(boxes, torch.zeros(4, dtype=torch.bool))


def test_face_cue_maps_a_box_onto_the_centred_square_within_a_pixel():
    frames = torch.zeros(1, 96, 160, 3)
    frames[0, 32:36, 52:56] = 1.0  # a 4x4 px mark, centre (54, 34)
    box = torch.tensor([[40.0, 20, 88, 68]])  # 48 px square crop box
    cue = face_cue(frames, box, torch.tensor([True]))
    assert cue.shape == (1, 96, 160, 3)
    # canvas square: side 96 at left 32; the box scales by 2: (54, 34) -> (32 + 2 * 14, 0 + 2 * 14)
    x, y = centroid(cue[0, ..., 0])
    assert abs(x - 60.0) < 1.0 and abs(y - 28.0) < 1.0
    assert float(cue[0, :, :32].abs().max()) == 0.0 and float(cue[0, :, 128:].abs().max()) == 0.0


def test_face_cue_centres_the_face_wherever_it_is():
    size = (96, 128)
    centres = [(30.0, 30.0), (90.0, 50.0), (64.0, 70.0)]
    faces = torch.stack([disc(10, size, centre=c) for c in centres])
    boxes, valid = mask_boxes(faces)
    cue = face_cue(faces[..., None].expand(-1, -1, -1, 3), square_boxes(boxes, scale=1.5), valid)
    for frame in cue:
        x, y = centroid(frame[..., 0])
        assert abs(x - 64.0) < 1.0 and abs(y - 48.0) < 1.0
        assert float(frame[..., 0].sum()) == pytest.approx(float((disc(10 * 96 / 30, size) > 0).sum()), rel=0.1)


def test_face_cue_is_black_outside_the_frame_and_for_frames_without_a_face():
    frames = torch.ones(2, 64, 64, 3)
    boxes = torch.tensor([[-24.0, -24, 24, 24], [10, 10, 30, 30]])  # frame 0: box hangs over the top-left corner
    cue = face_cue(frames, boxes, torch.tensor([True, False]))
    half = 32
    assert float(cue[0, : half - 1, : half - 1].max()) == 0.0
    assert float(cue[0, half + 1 :, half + 1 :].min()) == 1.0
    assert float(cue[1].max()) == 0.0


def test_face_cue_canvas_size_and_input_checks():
    frames = torch.rand(2, 64, 64, 3)
    boxes = torch.tensor([[8.0, 8, 40, 40]] * 2)
    assert face_cue(frames, boxes, torch.ones(2, dtype=torch.bool), size=(80, 120)).shape == (2, 80, 120, 3)
    with pytest.raises(CueError, match=r"boxes \[2, 4\]"):
        face_cue(frames, boxes[:1], torch.ones(1, dtype=torch.bool))
    with pytest.raises(CueError, match="no area"):
        face_cue(frames, torch.tensor([[8.0, 8, 8, 40]] * 2), torch.ones(2, dtype=torch.bool))


def test_face_cue_keeps_a_face_pattern_upright_and_unmirrored():
    frames = torch.zeros(1, 64, 64, 3)
    frames[0] = rectangle((20, 20, 30, 44), (64, 64))[..., None]  # left half of the box lit
    cue = face_cue(frames, torch.tensor([[20.0, 20, 44, 44]]), torch.tensor([True]))
    assert float(cue[0, 10:54, 5:20, 0].mean()) > 0.95 and float(cue[0, 10:54, 40:60, 0].mean()) < 0.05


@pytest.mark.parametrize("size", [None, (80, 120), (120, 80)], ids=["frame-size", "landscape", "portrait"])
def test_face_cue_samples_exactly_like_grid_sample_crops(size):
    # the face cue reads only each box's pixels; it must give grid_sample's bilinear crops (crop_boxes)
    torch.manual_seed(0)
    frames = torch.rand(5, 96, 64, 3)
    boxes = torch.tensor([[10.3, 20.7, 40.1, 50.5], [-20.0, -10, 30, 40], [50, 80, 90, 120], [1.5, 2.5, 3.5, 4.5],
                          [200, 200, 230, 230]])  # inside, over the top-left corner, bottom-right, tiny, outside
    valid = torch.tensor([True, True, True, True, False])
    cue = face_cue(frames, boxes, valid, size=size, exact=True)
    fast = face_cue(frames, boxes, valid, size=size)  # OpenCV's sampling: positions rounded to 1/32 px
    out_h, out_w = size or (96, 64)
    side = min(out_h, out_w)
    top, left = (out_h - side) // 2, (out_w - side) // 2
    expected = torch.zeros(5, out_h, out_w, 3)
    crops = crop_boxes(frames[valid].permute(0, 3, 1, 2), boxes[valid], side, side).permute(0, 2, 3, 1)
    expected[valid, top:top + side, left:left + side] = crops.clamp(0.0, 1.0)
    assert torch.allclose(cue, expected, atol=1e-5)
    # uniform noise: neighbouring pixels differ by up to 1, so the bound is VALUE_ERROR itself
    assert torch.allclose(fast, expected, atol=VALUE_ERROR, rtol=0)
    assert float((fast - expected).abs().mean()) < 2e-3
    black = torch.ones_like(expected, dtype=torch.bool)
    black[valid, top:top + side, left:left + side] = False
    assert not fast[black].any()  # bars and faceless frames stay exactly black


def test_face_cue_on_a_real_picture_stays_within_the_sampling_bound():
    # OpenCV's crop against the exact bilinear one on a photograph: far inside VALUE_ERROR
    from helpers import real_reference

    picture = real_reference("ref_real_person.jpg")  # 512x896
    boxes = torch.tensor([[180.3, 60.7, 331.1, 211.5]])  # a fractional square box around the head region
    fast = face_cue(picture, boxes, torch.tensor([True]))
    exact = face_cue(picture, boxes, torch.tensor([True]), exact=True)
    error = (fast - exact).abs()
    assert float(exact.max()) > 0.5 and float(error.max()) < 0.02 and float(error.mean()) < 1e-3


def test_resize_box_samples_the_box_within_the_bound_and_declines_boxes_at_the_edge():
    # cv2.resize of an aligned window: within VALUE_ERROR of the exact bilinear crop on uniform noise
    from directanimator.cues.face_cue import crop_resize
    from directanimator.cues.resample import RESIZE_SHIFT, resize_box

    torch.manual_seed(0)
    image = torch.rand(120, 100, 3)
    scratch: list[np.ndarray] = []
    used = 0
    for shift in np.linspace(0.0, 1.0, 17):
        box = (30.0 + shift, 40.3 + 0.7 * shift, 50.3 + shift, 60.6 + 0.7 * shift)  # 0.317 px steps
        crop = resize_box(image.numpy(), box, 64, 64, scratch)
        if crop is None:
            continue
        used += 1
        exact = crop_resize(image, torch.tensor(box), 64, 64).numpy()
        assert crop.shape == (64, 64, 3) and np.abs(crop - exact).max() <= VALUE_ERROR
    assert used >= 14 and RESIZE_SHIFT <= VALUE_ERROR / 2
    assert resize_box(image.numpy(), (0.5, 10.0, 40.5, 50.0), 64, 64, scratch) is None  # needs a pixel left of it
    assert resize_box(image.numpy(), (60.0, 79.0, 100.0, 119.0), 64, 64, scratch) is None  # and one past it


def test_face_cue_on_real_dance_frames_stays_within_the_sampling_bound():
    # real footage, face-sized fractional boxes (about 100 px onto 512, like the dance video's face track): the
    # fast CPU crops (mostly cv2.resize) against the exact bilinear ones
    from directanimator.cues.resample import resize_box
    from helpers import dance_frames

    frames = dance_frames()[:24]
    steps = torch.linspace(0.0, 1.0, 24)[:, None]
    boxes = torch.tensor([[200.1, 101.7, 300.2, 201.9]]) + steps * torch.tensor([[5.3, -2.9, 8.1, 0.4]])
    valid = torch.ones(24, dtype=torch.bool)
    fast = face_cue(frames, boxes, valid)
    exact = face_cue(frames, boxes, valid, exact=True)
    error = (fast - exact).abs()
    assert float(exact.max()) > 0.5 and float(error.max()) < 0.02 and float(error.mean()) < 1e-3
    scratch: list[np.ndarray] = []
    resized = sum(resize_box(frames[i].numpy(), boxes[i].tolist(), 512, 512, scratch) is not None for i in range(24))
    assert resized >= 12  # the fast path is the one mostly taken (91 of the dance video's 96 face boxes)


def test_clip_unit_is_numpy_clip_in_place_and_into_views():
    from directanimator.cues.buffers import clip_unit

    rng = np.random.default_rng(1)
    image = (rng.standard_normal((40, 30, 3)) * 0.7 + 0.5).astype(np.float32)
    expected = np.clip(image, 0.0, 1.0)
    canvas = np.full((50, 40, 3), 7.0, np.float32)
    view = canvas[5:45, 4:34]  # rows not contiguous with each other, as the face square in a landscape canvas
    assert clip_unit(image, view) is view
    np.testing.assert_array_equal(view, expected)
    assert (canvas[:5] == 7.0).all() and (canvas[:, :4] == 7.0).all()  # nothing written outside the view
    clip_unit(image, image)
    np.testing.assert_array_equal(image, expected)


def test_clip_below_one_is_numpy_clip_for_non_negative_images():
    # face crops and the pose filter cannot go negative (non-negative weights on 0..1 values): one pass truncates
    from directanimator.cues.buffers import clip_below_one

    rng = np.random.default_rng(2)
    image = (rng.random((40, 30, 3)) * 1.2).astype(np.float32)
    canvas = np.full((50, 40, 3), 7.0, np.float32)
    view = canvas[5:45, 4:34]
    assert clip_below_one(image, view) is view
    np.testing.assert_array_equal(view, np.clip(image, 0.0, 1.0))
    assert (canvas[:5] == 7.0).all() and (canvas[:, :4] == 7.0).all()


def test_face_crops_of_unit_frames_stay_in_range_at_the_extremes():
    # black-and-white frames (the largest rounding of bilinear samples) still give crops within 0..1
    frames = (torch.rand(4, 96, 128, 3) > 0.5).float()
    boxes = torch.tensor([[10.0, 12, 40, 42], [-8, -6, 20, 22], [60.3, 30.7, 127.9, 95.2], [0, 0, 128, 96]])
    cue = face_cue(frames, boxes, torch.ones(4, dtype=torch.bool))
    assert float(cue.min()) >= 0.0 and float(cue.max()) <= 1.0 and float(cue.max()) == 1.0


def test_mask_boxes_by_opencv_equal_the_row_and_column_maxima():
    # on CPU float32 masks the boxes come from OpenCV's comparison and bounding rectangle; float64 masks take the
    # torch reductions: the same boxes, including values exactly at the threshold and empty masks
    generator = torch.Generator().manual_seed(4)
    masks = (torch.rand(12, 37, 53, generator=generator) > 0.995).float() * torch.rand(12, 37, 53, generator=generator)
    masks[3] = 0.0
    masks[4] = 0.5  # exactly at the threshold: not foreground
    masks[5] = 0.0
    masks[5, 36, 52] = 0.75  # one corner pixel
    masks[6] = 0.0
    masks[6, :, 10:12] = 1.0  # a full-height bar
    boxes, valid = mask_boxes(masks)
    expected_boxes, expected_valid = mask_boxes(masks.double())
    assert torch.equal(boxes, expected_boxes.float()) and torch.equal(valid, expected_valid)
    assert valid.tolist()[3:7] == [False, False, True, True]
    assert boxes[5].tolist() == [52.0, 36.0, 53.0, 37.0] and boxes[6].tolist() == [10.0, 0.0, 12.0, 37.0]
