"""Location cue: one similarity per clip onto the reference person, exact warping, grid softening."""

import math

import pytest
import torch
import torch.nn.functional as F

from directanimator.cues import (
    CueConfig, PersonGeometry, Similarity, anchor_frames, fit_similarity, grid_soften, location_cue, mask_boxes,
    mask_centre_columns, warp_masks,
)
from directanimator.cues.location_cue import render_ellipses
from directanimator.errors import CueError
from helpers import centroid, disc, figure, figure_box, iou, mass_inside, rectangle, stripes


def face_centre(box: torch.Tensor) -> torch.Tensor:
    return (box[:2] + box[2:]) / 2


def clip_of(box: torch.Tensor, frames: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """`frames` copies of `box`, plus one invalid frame holding a wild box that must be ignored."""
    boxes = torch.cat([box.repeat(frames, 1), torch.tensor([[0.0, 0, 500, 500]])])
    valid = torch.tensor([True] * frames + [False])
    return boxes, valid


@pytest.mark.parametrize(
    "scale, shift",
    [(1.8, (10.0, -30.0)), (0.45, (40.0, 25.0)), (1.0, (70.0, 12.0))],
    ids=["reference-larger", "reference-smaller", "reference-off-centre"],
)
def test_transform_maps_the_driving_box_onto_the_reference_box(scale, shift):
    driving = torch.tensor([40.0, 20, 90, 120])
    reference = Similarity(scale, *shift).apply_boxes(driving)
    boxes, valid = clip_of(driving)
    frame = (0, 0, 400, 400)
    t = fit_similarity(PersonGeometry(boxes, valid, area=frame), PersonGeometry.picture(reference, area=frame))
    assert torch.allclose(t.apply_boxes(driving), reference, atol=1.0)


def test_transform_uses_the_median_box_of_the_clip():
    boxes = torch.tensor([[40.0, 20, 90, 120], [42, 20, 92, 120], [38, 20, 88, 120], [200, 20, 250, 120]])
    t = fit_similarity(PersonGeometry(boxes, torch.ones(4, dtype=torch.bool)),
                       PersonGeometry.picture(torch.tensor([140.0, 20, 190, 120])))
    assert t.scale == pytest.approx(1.0) and abs(t.tx - 99.0) < 1.0  # the outlier frame moved nothing


def test_anchor_frames_pick_the_first_good_person_frame_or_the_whole_clip():
    valid = torch.tensor([False, True, True, True, True])
    bad = torch.tensor([False, True, False, False, False])
    assert anchor_frames(valid, "first").tolist() == [False, True, False, False, False]
    assert anchor_frames(valid, "first", bad=bad).tolist() == [False, False, True, False, False]  # frame 1 is bad
    assert anchor_frames(valid, "first", bad=valid).tolist() == [False, True, False, False, False]  # all bad
    assert anchor_frames(valid, "clip", bad=bad).tolist() == valid.tolist()
    assert not anchor_frames(torch.zeros(3, dtype=torch.bool), "first").any()
    with pytest.raises(CueError, match="anchor='middle'"):
        anchor_frames(valid, "middle")


def test_the_first_frame_anchor_puts_the_drivers_start_on_the_reference():
    # a driver walking right from x 40 to 100: anchored on the first frame its start lands on the reference box,
    # anchored on the clip its median position does
    boxes = torch.tensor([[40.0 + 15 * i, 20, 90 + 15 * i, 120] for i in range(5)])
    valid = torch.ones(5, dtype=torch.bool)
    reference = torch.tensor([140.0, 20, 190, 120])
    first = fit_similarity(PersonGeometry(boxes, anchor_frames(valid, "first")), PersonGeometry.picture(reference))
    clip = fit_similarity(PersonGeometry(boxes, anchor_frames(valid, "clip")), PersonGeometry.picture(reference))
    assert torch.allclose(first.apply_boxes(boxes[0]), reference, atol=0.5)
    assert torch.allclose(clip.apply_boxes(boxes[2]), reference, atol=0.5)
    assert first.tx == pytest.approx(clip.tx + 30.0)


def test_cue_config_anchor_is_checked_and_saved_configs_without_it_take_the_default():
    with pytest.raises(CueError, match="anchor='median'"):
        CueConfig(anchor="median").validate()
    assert CueConfig.from_saved({"grid_cell": 8, "removed_option": 1}) == CueConfig(grid_cell=8)
    assert CueConfig.from_saved(None).anchor == "first"
    assert CueConfig.from_saved(CueConfig(anchor="clip").to_dict()).anchor == "clip"


@pytest.mark.parametrize("with_faces", [True, False], ids=["faces-known", "no-faces"])
def test_legs_cut_by_the_bottom_edge_still_put_head_and_shoulders_on_the_reference(with_faces):
    size = (128, 128)
    driving_mask, driving_face = figure(size, top=10, centre_x=40, height=100)
    # the reference person is 1.6x larger and stands low: the picture ends at mid-thigh
    reference_mask, reference_face = figure(size, top=20, centre_x=70, height=160)
    reference_box, ok = mask_boxes(reference_mask[None])
    assert bool(ok[0]) and float(reference_box[0, 3]) == 128.0  # touches the bottom edge
    boxes, valid = mask_boxes(driving_mask[None].expand(4, -1, -1))
    notes = []
    frame = (0, 0, size[1], size[0])
    t = fit_similarity(
        PersonGeometry(boxes, valid, face=driving_face if with_faces else None, area=frame),
        PersonGeometry.picture(reference_box[0], face=reference_face if with_faces else None, area=frame),
        notes=notes,
    )
    assert t.scale == pytest.approx(1.6, abs=0.03)
    assert ("face size" if with_faces else "body width") in notes[0]
    mapped = t.apply_boxes(boxes[0])
    assert torch.allclose(mapped[:3], reference_box[0, :3], atol=1.5)  # left, top, right edges
    assert torch.allclose(t.apply_boxes(driving_face), reference_face, atol=1.5)
    warped = warp_masks(driving_mask[None], t, size)[0]
    upper = slice(20, 20 + 64)  # head, arms and torso of the reference
    assert iou(warped[upper] > 0.5, reference_mask[upper] > 0.5) > 0.9


def test_the_face_refines_horizontal_placement():
    size = (160, 160)
    driving_mask, driving_face = figure(size, top=20, centre_x=60, height=100)
    driving_mask = torch.maximum(driving_mask, rectangle((80, 40, 110, 46), size))  # one arm stretched out
    reference_mask, reference_face = figure(size, top=10, centre_x=90, height=120)
    boxes, valid = mask_boxes(driving_mask[None])
    reference_box = mask_boxes(reference_mask[None])[0][0]
    with_face = fit_similarity(PersonGeometry(boxes, valid, face=driving_face),
                               PersonGeometry.picture(reference_box, face=reference_face))
    without = fit_similarity(PersonGeometry(boxes, valid), PersonGeometry.picture(reference_box))
    assert torch.allclose(face_centre(with_face.apply_boxes(driving_face)), face_centre(reference_face), atol=1.0)
    assert with_face.scale == pytest.approx(1.2, abs=0.02)  # still from the body height
    # the box alone centres the outstretched arm's box, which puts the head off by several pixels
    assert abs(float(face_centre(without.apply_boxes(driving_face))[0] - face_centre(reference_face)[0])) > 4.0


def test_a_face_pair_far_from_the_bodies_is_ignored():
    driving = torch.tensor([40.0, 20, 90, 120])
    boxes, valid = clip_of(driving)
    reference = torch.tensor([140.0, 20, 190, 120])
    notes = []
    t = fit_similarity(PersonGeometry(boxes, valid, face=torch.tensor([55.0, 20, 75, 40])),
                       PersonGeometry.picture(reference, face=torch.tensor([0.0, 0, 20, 20])), notes=notes)
    assert torch.allclose(t.apply_boxes(driving), reference, atol=1.0)
    assert "ignored" in notes[0]


def test_mask_centre_columns_split_the_mass_in_half():
    masks = torch.zeros(3, 4, 10)
    masks[0, :, 2:6] = 1.0  # columns 2..5: the halves meet at x = 4
    masks[1, :, 3] = 1.0  # one column: its middle
    masks[1, :2, 8] = 0.5  # a little mass far right moves the line by a fraction of a column
    x, valid = mask_centre_columns(masks)
    assert valid.tolist() == [True, True, False]
    assert x[0] == pytest.approx(4.0)
    assert x[1] == pytest.approx(3 + 2.5 / 4)  # half of the mass 5 is reached 2.5 / 4 into column 3
    assert x[2] == 0.0


def arm_out(size, centre_x, top, height, length):
    """`figure` with its right arm stretched out by `length` px."""
    mask, face = figure(size, top=top, centre_x=centre_x, height=height)
    arm = (centre_x + 0.25 * height, top + 0.18 * height, centre_x + 0.25 * height + length, top + 0.24 * height)
    return torch.maximum(mask, rectangle(arm, size)), face


def test_body_centre_lines_put_the_torso_on_the_reference_when_an_arm_reaches_out():
    size = (160, 160)
    driving_mask, _ = arm_out(size, 50.0, 20.0, 100.0, 50.0)
    reference_mask, _ = figure(size, top=10, centre_x=90, height=120)
    boxes, valid = mask_boxes(driving_mask[None])
    reference_box = mask_boxes(reference_mask[None])[0][0]
    centres = mask_centre_columns(driving_mask[None])[0]
    reference_centre = float(mask_centre_columns(reference_mask[None])[0][0])
    notes = []
    t = fit_similarity(PersonGeometry(boxes, valid, centres=centres),
                       PersonGeometry.picture(reference_box, centre=reference_centre), notes=notes)
    boxed = fit_similarity(PersonGeometry(boxes, valid), PersonGeometry.picture(reference_box))
    assert "x: body centre lines" in notes[0]
    assert t.scale == pytest.approx(1.2, abs=0.02)  # the height still sets the scale
    # the torso's centre (x = 50) lands within 3 px of the reference's (x = 90): the arm's share of the mask
    # moves the line by 2.4 px; the box rule centres the arm's box instead and puts the torso 30 px off
    assert abs(50.0 * t.scale + t.tx - 90.0) < 3.0
    assert abs(50.0 * boxed.scale + boxed.tx - 90.0) > 20.0
    torso = slice(10 + 20, 10 + 66)
    warped = warp_masks(driving_mask[None], t, size)[0]
    assert iou(warped[torso, :110] > 0.5, reference_mask[torso, :110] > 0.5) > 0.85


def test_body_centre_lines_hold_when_the_arm_leaves_the_picture():
    size = (160, 160)
    driving_mask, _ = arm_out(size, 110.0, 20.0, 100.0, 60.0)  # the arm runs out of the right edge
    reference_mask, _ = figure(size, top=20, centre_x=60, height=100)
    boxes, valid = mask_boxes(driving_mask[None])
    notes = []
    frame = (0, 0, size[1], size[0])
    t = fit_similarity(PersonGeometry(boxes, valid, area=frame, centres=mask_centre_columns(driving_mask[None])[0]),
                       PersonGeometry.picture(mask_boxes(reference_mask[None])[0][0], area=frame,
                                              centre=float(mask_centre_columns(reference_mask[None])[0][0])),
                       notes=notes)
    assert "x: body centre lines" in notes[0] and "right" in notes[0]  # the cut side is reported
    assert abs(110.0 * t.scale + t.tx - 60.0) < 3.0  # the torso still lands on the reference's


def test_body_centre_lines_must_match_the_frames():
    boxes, valid = clip_of(torch.tensor([40.0, 20, 90, 120]))
    with pytest.raises(CueError, match="driving centres"):
        fit_similarity(PersonGeometry(boxes, valid, centres=torch.zeros(3)),
                       PersonGeometry.picture(torch.tensor([10.0, 10, 60, 110]), centre=30.0))


def test_fit_similarity_rejects_clips_without_a_person():
    boxes, valid = clip_of(torch.tensor([40.0, 20, 90, 120]))
    with pytest.raises(CueError, match="no person"):
        fit_similarity(PersonGeometry(boxes, torch.zeros_like(valid)),
                       PersonGeometry.picture(torch.tensor([0.0, 0, 10, 10])))
    with pytest.raises(CueError, match="reference box"):
        fit_similarity(PersonGeometry(boxes, valid), PersonGeometry.picture(torch.tensor([10.0, 10, 10, 40])))


@pytest.mark.parametrize(
    "transform",
    [Similarity(1.5, 10.0, -20.0), Similarity(0.7, 33.0, 5.0), Similarity(0.3, 60.0, 40.0), Similarity(2.5, -90, -60)],
    ids=["up", "down", "far-down", "up-cut"],
)
def test_warp_masks_agrees_with_apply_boxes(transform):
    size = (120, 140)
    box = torch.tensor([30.0, 20, 100, 110])
    mask = rectangle(tuple(box.tolist()), size)[None]
    out_size = (130, 150)
    warped = warp_masks(mask, transform, out_size)
    assert warped.shape == (1, *out_size)
    expected = transform.apply_boxes(box)
    expected = torch.stack([expected[0].clamp(0, 150), expected[1].clamp(0, 130),
                            expected[2].clamp(0, 150), expected[3].clamp(0, 130)])
    found, ok = mask_boxes(warped)
    assert bool(ok[0]) and torch.allclose(found[0], expected, atol=1.0), (found[0], expected)


def test_grid_softening_flattens_detail_smaller_than_a_cell():
    size = (128, 128)
    region = rectangle((32, 32, 96, 96), size)  # cell-aligned for cell=16
    textured = region * stripes(2, size)  # 2 px stripes
    assert torch.equal(grid_soften(textured[None], cell=16, blur=4.0), grid_soften(region[None], cell=16, blur=4.0))
    soft = grid_soften(textured[None], cell=16, blur=4.0)[0]
    inside = soft[32 + 12:96 - 12, 32 + 12:96 - 12]  # more than 3 sigma from the region's border
    assert float(inside.min()) > 0.999
    assert float(grid_soften(textured[None], cell=16, blur=0.0)[0, 32:96, 32:96].min()) == 1.0


def test_grid_softening_keeps_a_large_blob_where_it_was():
    blob = disc(24, (128, 160), centre=(70.0, 61.0))
    soft = grid_soften(blob[None], cell=16, blur=4.0)[0]
    (x, y), (bx, by) = centroid(soft), centroid(blob)
    assert abs(x - bx) < 8 and abs(y - by) < 8  # within half a cell
    assert mass_inside(soft, torch.tensor([46.0, 37, 94, 85]), margin=16 + 8) > 0.99
    assert float(soft[61, 70]) == pytest.approx(1.0)


def test_grid_soften_handles_partial_cells_at_the_border():
    mask = torch.zeros(1, 70, 90)
    mask[0, 66:, 86:] = 1.0  # a corner smaller than a cell, in the partial last cells
    soft = grid_soften(mask, cell=16, blur=0.0)[0]
    assert float(soft[64:, 80:].min()) == 1.0 and float(soft[:64].max()) == 0.0 and float(soft[:, :80].max()) == 0.0


def test_location_cue_moves_body_and_face_onto_the_reference():
    size = (128, 128)
    masks = torch.stack([figure(size, top=10, centre_x=cx, height=90)[0] for cx in (35.0, 40.0, 45.0)])
    faces = torch.stack([figure(size, top=10, centre_x=cx, height=90)[1] for cx in (35.0, 40.0, 45.0)])
    valid = torch.tensor([True, True, False])
    t = Similarity(0.8, 50.0, 20.0)
    body, face = location_cue(masks, faces, valid, t, out_size=(112, 144), cell=8, blur=2.0)
    assert body.shape == face.shape == (3, 112, 144)
    assert float(body.min()) >= 0.0 and float(body.max()) <= 1.0
    for i in range(2):
        person = t.apply_boxes(figure_box(top=10, centre_x=35.0 + 5 * i, height=90))
        assert mass_inside(body[i], person, margin=8 + 6) > 0.99
        assert mass_inside(face[i], t.apply_boxes(faces[i]), margin=8 + 6) > 0.99
        assert float(face[i].max()) == pytest.approx(1.0)
    assert float(face[2].max()) == 0.0  # no face in frame 2


def soften_by_definition(masks: torch.Tensor, cell: int, blur: float) -> torch.Tensor:
    """Grid softening spelled out at full size: cell maxima, nearest upsampling, separable Gaussian (radius
    ceil(3 sigma), replicated borders), clamp."""
    height, width = masks.shape[-2:]
    x = masks
    if cell > 1:
        pooled = F.max_pool2d(x[:, None], kernel_size=cell, stride=cell, ceil_mode=True)[:, 0]
        x = pooled.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)[:, :height, :width]
    if blur > 0:
        radius = max(1, math.ceil(3 * blur))
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / blur) ** 2)
        taps = taps / taps.sum()
        x = F.conv2d(F.pad(x[:, None], (radius, radius, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), taps.view(1, 1, -1, 1))[:, 0]
    return x.clamp(0.0, 1.0)


@pytest.mark.parametrize("cell", [1, 2, 4, 16, 33])
@pytest.mark.parametrize("blur", [0.0, 2.5, 4.0])
def test_grid_soften_equals_pooling_upsampling_and_blurring(cell, blur):
    torch.manual_seed(0)
    masks = (torch.rand(2, 70, 90) > 0.97).float()  # sparse dots: every cell and border case differs
    masks[1, 40:70, 60:90] = 0.6
    assert torch.allclose(grid_soften(masks, cell=cell, blur=blur), soften_by_definition(masks, cell, blur),
                          atol=1e-6)


@pytest.mark.parametrize("cell", [2, 8])
def test_location_cue_equals_softening_the_warped_and_rendered_masks(cell):
    # the location cue pools warped masks in batches and the face ellipse straight from its box: the same
    # numbers as softening full-size renders (the body's of OpenCV's warp, which is within VALUE_ERROR of the exact
    # one, and so is its softening: cell maxima and weights summing to 1 move no value further); 11 frames span
    # more than one warp batch
    from directanimator.cues.location_cue import _warp_masks_fast
    from directanimator.cues.resample import VALUE_ERROR

    torch.manual_seed(0)
    size, out_size = (96, 80), (112, 72)
    masks = torch.stack([figure(size, top=8 + i, centre_x=30.0 + 2 * i, height=80)[0] for i in range(11)])
    faces = torch.stack([figure(size, top=8 + i, centre_x=30.0 + 2 * i, height=80)[1] for i in range(11)])
    faces[3] = torch.tensor([-10.0, -6, 9.5, 12.3])  # a face cut by the corner
    valid = torch.ones(11, dtype=torch.bool)
    valid[5] = False
    t = Similarity(0.85, 12.5, 20.25)
    body, face = location_cue(masks, faces, valid, t, out_size=out_size, cell=cell, blur=2.0)
    expected_body = soften_by_definition(_warp_masks_fast(masks, t, out_size), cell, 2.0)
    expected_face = soften_by_definition(render_ellipses(t.apply_boxes(faces), valid, out_size), cell, 2.0)
    assert torch.allclose(body, expected_body, atol=1e-6)
    exact_body = soften_by_definition(warp_masks(masks, t, out_size), cell, 2.0)
    assert float((body - exact_body).abs().max()) <= VALUE_ERROR + 1e-6
    assert torch.allclose(face, expected_face, atol=1e-6)
    assert float(face[5].max()) == 0.0 and float(face[3].max()) > 0.5


def test_cell_maxima_equal_max_pooling_on_tiling_and_partial_cells():
    # the view reductions used when the cells tile the image give max_pool2d's values; other sizes use max_pool2d
    import torch.nn.functional as F

    from directanimator.cues.location_cue import _cell_maxima

    generator = torch.Generator().manual_seed(3)
    for height, width, cell in ((64, 48, 16), (37, 50, 8), (32, 32, 4)):
        masks = torch.rand(3, height, width, generator=generator)
        expected = F.max_pool2d(masks[:, None], kernel_size=cell, stride=cell, ceil_mode=True)[:, 0]
        assert torch.equal(_cell_maxima(masks, cell), expected)


@pytest.mark.parametrize("t", [Similarity(1.0846, -46.758, 10.818), Similarity(0.73, 40.2, 60.9),
                               Similarity(1.37, -150.5, -90.25), Similarity(0.4, 5.0, 7.0)],
                         ids=["dance-video-fit", "shrink", "grow-past-the-edge", "area-averaged"])
def test_fast_mask_warp_is_the_exact_warp_within_the_bound_on_real_masks(t):
    # the location cue's OpenCV warp (cv2.resize of an aligned window, exact border strips) against warp_masks on
    # the real person mask: within VALUE_ERROR everywhere, far inside it in practice, and identical after pooling
    # and softening up to float rounding
    from directanimator.cues.location_cue import _cell_maxima, _location_cue, _warp_masks_fast
    from directanimator.cues.resample import VALUE_ERROR
    from directanimator.cues.segmentation import segment_person
    from helpers import real_reference

    mask = segment_person(real_reference("ref_real_person.jpg"))  # [1, 896, 512] soft mask
    masks = torch.cat([mask, mask.flip(-1), mask.roll(37, dims=1)])
    exact = warp_masks(masks, t, (896, 512))
    fast = _warp_masks_fast(masks, t, (896, 512))
    assert float(exact.max()) > 0.5
    assert torch.equal(fast, exact) == (t.scale <= 0.5)  # OpenCV's path, except where masks are area-averaged
    assert float((fast - exact).abs().max()) <= VALUE_ERROR and float((fast - exact).abs().mean()) < 1e-4
    assert float((_cell_maxima(fast, 16) - _cell_maxima(exact, 16)).abs().max()) < 0.01  # ~0.003 measured
    boxes, valid = torch.tensor([[200.0, 100, 300, 200]] * 3), torch.ones(3, dtype=torch.bool)
    body, _ = _location_cue(masks, boxes, valid, t, out_size=(896, 512), cell=16, blur=4.0)
    assert torch.allclose(body, grid_soften(exact, cell=16, blur=4.0), atol=0.01, rtol=0)


@pytest.mark.parametrize("cell, blur", [(16, 4.0), (8, 2.5), (4, 0.0), (33, 4.0)])
def test_sparse_softening_equals_the_full_matrix_products(cell, blur):
    # the face location softens only the cells around each face (`_soften_sparse`): the same numbers as the two
    # full matrix products, zero elsewhere, also for faces cut by a border and for frames without one
    from directanimator.cues.location_cue import _soften_pooled, _soften_sparse, pooled_ellipses

    size = (150, 100)
    boxes = torch.tensor([[30.0, 40, 60, 80], [-12, -9, 14, 20], [80, 120, 120, 170], [40, 50, 70, 90],
                          [0, 0, 100, 150]])
    valid = torch.tensor([True, True, True, False, True])
    pooled = pooled_ellipses(boxes, valid, size, cell)
    expected = _soften_pooled(pooled, size, cell, blur)
    sparse = _soften_sparse(pooled, size, cell, blur)
    assert torch.allclose(sparse, expected, atol=1e-6)
    assert float(sparse[3].abs().max()) == 0.0 and float(expected[0].max()) > 0.5
    assert bool((sparse[0][expected[0] == 0] == 0).all())
    stale = torch.full((5, *size), 7.0)  # an output that is not zero yet: the parts outside the faces are cleared
    assert torch.allclose(_soften_sparse(pooled, size, cell, blur, out=stale), expected, atol=1e-6)


def test_location_cue_into_given_buffers_equals_the_plain_call():
    # extract_cues writes the face location into zeroed memory and only around the faces (face_zeroed)
    from directanimator.cues.buffers import empty_buffer, zeroed_buffer
    from directanimator.cues.location_cue import _location_cue

    masks = torch.stack([figure((96, 80), top=8 + i, centre_x=30.0 + 2 * i, height=80)[0] for i in range(11)])
    faces = torch.stack([figure((96, 80), top=8 + i, centre_x=30.0 + 2 * i, height=80)[1] for i in range(11)])
    valid = torch.ones(11, dtype=torch.bool)
    valid[4] = False
    t = Similarity(1.1, -5.0, 3.5)
    body, face = location_cue(masks, faces, valid, t, out_size=(112, 80))
    for out_face, zeroed in ((zeroed_buffer(11, 112, 80), True), (torch.full((11, 112, 80), 3.0), False)):
        out = (empty_buffer(11, 112, 80), out_face)
        got = _location_cue(masks, faces, valid, t, out_size=(112, 80), cell=16, blur=4.0, out=out, face_zeroed=zeroed)
        assert got[0] is out[0] and got[1] is out[1]
        assert torch.equal(got[0], body) and torch.allclose(got[1], face, atol=1e-6)


@pytest.mark.parametrize("t", [Similarity(1.0846, -46.758, 10.818), Similarity(0.73, 40.2, 60.9),
                               Similarity(1.37, -150.5, -90.25)], ids=["dance-video-fit", "shrink", "grow"])
def test_mask_warp_resized_straight_into_a_padded_buffer_is_the_same(t):
    # location_cue has OpenCV resize each window straight into a buffer with room around the frame (`padded`):
    # the same values as resizing into scratch and copying the interior, a view into that buffer, whose cell
    # maxima (rows apart) are max pooling's
    import numpy as np

    from directanimator.cues.location_cue import _cell_maxima, _warp_masks_fast

    generator = torch.Generator().manual_seed(5)
    masks = F.avg_pool2d(torch.rand(3, 1, 448, 256, generator=generator), 5, 1, 2)[:, 0]  # smooth, 0..1
    padded: list = []
    into_padded = _warp_masks_fast(masks, t, (448, 256), padded=padded)
    assert len(padded) == 1 and np.shares_memory(into_padded.numpy(), padded[0])
    assert torch.equal(into_padded, _warp_masks_fast(masks, t, (448, 256)))  # a fresh buffer: the same
    # the interior as resize_box gives it (resizing into scratch, the interior copied out)
    from directanimator.cues.location_cue import WARP_RESIZE_MARGIN, _aligned_interior
    from directanimator.cues.resample import resize_box

    inverse = t.inverse()
    top, bottom = _aligned_interior(inverse.ty, inverse.scale, 448, 448)
    left, right = _aligned_interior(inverse.tx, inverse.scale, 256, 256)
    box = (inverse.tx + left * inverse.scale, inverse.ty + top * inverse.scale,
           inverse.tx + right * inverse.scale, inverse.ty + bottom * inverse.scale)
    for i in range(3):
        crop = resize_box(masks[i].numpy(), box, bottom - top, right - left, [], margin=WARP_RESIZE_MARGIN)
        assert np.array_equal(into_padded[i, top:bottom, left:right].numpy(), crop), i
    pooled = F.max_pool2d(into_padded[:, None], kernel_size=16, stride=16, ceil_mode=True)[:, 0]
    assert torch.equal(_cell_maxima(into_padded, 16), pooled)
    again = _warp_masks_fast(masks[:2], t, (448, 256), padded=padded)  # a shorter batch reuses the buffer
    assert np.shares_memory(again.numpy(), padded[0]) and torch.equal(again, into_padded[:2])


def test_the_resized_interior_reaches_as_close_to_the_border_as_an_aligned_window_allows():
    # the mask warp's exact border strips are several times slower per pixel than OpenCV's resize: the interior
    # starts at the first output pixel whose box finds an aligned window inside the image, not a whole
    # WARP_RESIZE_MARGIN in (the dance video's fit: 15 rows instead of 83 at the top, no column at the left)
    from directanimator.cues.location_cue import _aligned_interior, _interior
    from directanimator.cues.resample import resize_window

    inverse = Similarity(1.084636154578321, -46.75832362819318, 10.818344116210938).inverse()
    rows, columns = (_aligned_interior(inverse.ty, inverse.scale, 896, 896),
                     _aligned_interior(inverse.tx, inverse.scale, 512, 512))
    assert _interior(inverse.ty, inverse.scale, 896, 896) == (83, 896) and rows == (15, 896)
    assert _interior(inverse.tx, inverse.scale, 512, 512) == (25, 506) and columns == (0, 506)
    box = (inverse.tx + columns[0] * inverse.scale, inverse.ty + rows[0] * inverse.scale,
           inverse.tx + columns[1] * inverse.scale, inverse.ty + rows[1] * inverse.scale)
    assert resize_window(box, rows[1] - rows[0], columns[1] - columns[0], (896, 512), margin=64) is not None
