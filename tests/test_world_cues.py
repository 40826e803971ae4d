"""Cue extraction on world puppets: the exact path through ground-truth masks and boxes, and what detectors see."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from directanimator.cues import CueConfig, extract_cues, grid_soften, pose_cue
from directanimator.cues.face_detection import available_backends, detect_faces
from directanimator.cues.segmentation import segment_person
from training.world import WorldConfig, exact_cues, ground_truth, make_sample, truth_cue_inputs

WORLD = WorldConfig(height=128, width=128, num_frames=5, turn_probability=0.0, close_up_probability=0.0,
                    pseudo=False)  # fmt: skip
GIVEN = CueConfig(segmenter="given", face_detector="given")


def cues_for(sample, *, cross: bool):
    """Cue triplet of the sample's clip for its own (or the cross-identity) reference, from ground truth."""
    return exact_cues(sample.cross_reference if cross else sample.reference, sample.clip, GIVEN)


def centroids(masks: torch.Tensor) -> torch.Tensor:
    """Centre of mass ``[F, 2]`` (x, y) px of masks ``[F, H, W]``."""
    height, width = masks.shape[1:]
    ys = torch.arange(height, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, None, :] + 0.5
    total = masks.sum((1, 2)).clamp(min=1e-6)
    return torch.stack([(masks * xs).sum((1, 2)) / total, (masks * ys).sum((1, 2)) / total], dim=1)


@pytest.fixture(scope="module")
def sample():
    return make_sample(4, WORLD, seed=2)


def test_ground_truth_masks_and_boxes_drive_cue_extraction_without_detectors(sample):
    triplet = cues_for(sample, cross=False)
    record = triplet.record
    assert record.backends["segmenter"] == "given" and record.backends["face_detector"] == "given"
    assert record.backends["reference_segmenter"] == "given" and record.backends["reference_face_detector"] == "given"
    # the pose cue is exactly the low-passed grey foreground under the ground-truth mask
    expected = pose_cue(sample.clip.frames, mask=sample.clip.person_masks, cutoff=GIVEN.cutoff)
    torch.testing.assert_close(triplet.pose, expected, atol=1e-6, rtol=0)
    assert torch.equal(record.face_valid, sample.clip.face_valid)
    centre = (record.face_boxes[:, :2] + record.face_boxes[:, 2:]) / 2
    truth = (sample.clip.face_boxes[:, :2] + sample.clip.face_boxes[:, 2:]) / 2
    torch.testing.assert_close(centre[record.face_valid], truth[record.face_valid], atol=1e-3, rtol=0)


def test_exported_ground_truth_gives_the_same_cues(sample):
    stored = {key: value.clone() for key, value in ground_truth(sample).items()}  # uint8 masks, as on disk
    inputs = truth_cue_inputs(stored, reference="cross_reference_")
    from_file = extract_cues(sample.cross_reference.frames, sample.clip.frames, GIVEN, **inputs)
    live = cues_for(sample, cross=True)
    torch.testing.assert_close(from_file.pose, live.pose, atol=3e-3, rtol=0)  # masks quantised to 1/255
    torch.testing.assert_close(from_file.body_location, live.body_location, atol=3e-3, rtol=0)
    assert torch.equal(from_file.record.face_valid, live.record.face_valid)


def test_pose_cue_lives_on_the_ground_truth_person(sample):
    triplet = cues_for(sample, cross=False)
    brightness = triplet.pose.mean(-1)
    near = F.max_pool2d(sample.clip.person_masks[:, None], 13, stride=1, padding=6)[:, 0] > 0
    assert float(brightness[~near].max()) < 0.02  # blurred by the low-pass, but nothing far from the person
    assert float(brightness[sample.clip.person_masks > 0.99].mean()) > 0.05


def test_cross_identity_location_cue_lands_on_the_ground_truth_target(sample):
    triplet = cues_for(sample, cross=True)
    target = sample.cross_target.person_masks
    expected = grid_soften(target, cell=GIVEN.grid_cell, blur=GIVEN.grid_blur)
    located, wanted = triplet.body_location > 0.5, expected > 0.5
    iou = (located & wanted).flatten(1).sum(1) / (located | wanted).flatten(1).sum(1)
    assert float(iou.min()) > 0.5
    # and clearly better than leaving the driving person where it stands
    unmoved = grid_soften(sample.clip.person_masks, cell=GIVEN.grid_cell, blur=GIVEN.grid_blur) > 0.5
    unmoved_iou = (unmoved & wanted).flatten(1).sum(1) / (unmoved | wanted).flatten(1).sum(1)
    assert float(iou.mean()) > float(unmoved_iou.mean()) + 0.1
    error = (centroids(triplet.body_location) - centroids(target)).norm(dim=1)
    assert float(error.max()) < 0.1 * WORLD.height


@pytest.mark.skipif(not available_backends()["face/mediapipe"], reason="mediapipe face detection is not installed")
def test_mediapipe_finds_most_puppet_faces_in_close_ups():
    clip = make_sample(0, replace(WORLD, close_up_probability=1.0, cross_id=False), seed=1).clip
    track = detect_faces(clip.frames, backend="mediapipe")
    centre = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
    inside = ((centre >= clip.face_boxes[:, :2]) & (centre <= clip.face_boxes[:, 2:])).all(1)
    assert int((track.valid & inside & clip.face_valid).sum()) >= 3


@pytest.mark.skipif(not available_backends()["segmentation/mediapipe"], reason="mediapipe is not installed")
def test_mediapipe_selfie_segmentation_roughly_finds_the_puppet():
    clip = make_sample(1, replace(WORLD, cross_id=False), seed=1).clip
    found, truth = segment_person(clip.frames) > 0.5, clip.person_masks > 0.5
    iou = (found & truth).sum() / (found | truth).sum()
    assert float(iou) > 0.4


@pytest.mark.parametrize("close_ups", [0.0, 1.0], ids=["full-body", "close-ups"])
@pytest.mark.slow
def test_the_first_frame_anchor_puts_the_location_cue_where_the_cross_identity_target_stands(close_ups):
    """On world cross pairs (B's reference, A's motion, B doing it as ground truth), the driving masks warped by the
    fitted transform overlap the target's masks clearly better with the body centre lines than with the box rule
    (an arm stretched out widens the box, not the centre line), and better again when the driver's first frame is
    fitted instead of the clip's medians: world motions travel and zoom from where the clip is placed, and the
    reference shows its identity's first frame. extract_cues fits the first frame by default (CueConfig.anchor)."""
    from directanimator.cues import PersonGeometry, anchor_frames, fit_similarity, mask_boxes, mask_centre_columns
    from directanimator.cues import median_box, warp_masks
    from training.world import cross_id_pair

    config = WorldConfig(height=128, width=128, num_frames=9, close_up_probability=close_ups, pseudo=False)

    def overlap(driving, target, transform):
        warped = warp_masks(driving, transform, (128, 128)) > 0.5
        target = target > 0.5
        return float(((warped & target).sum((1, 2)) / (warped | target).sum((1, 2)).clamp(min=1)).mean())

    scores = {"box": [], "centre": [], "first": []}
    for index in range(16):
        pair = cross_id_pair(index, config, seed=3)
        drv, ref = pair.driving, pair.reference
        boxes, valid = mask_boxes(drv.person_masks)
        reference_box = mask_boxes(ref.person_masks)[0][0]
        first = anchor_frames(valid, "first")
        frame = (0, 0, 128, 128)
        reference_face = ref.face_boxes[0] if bool(ref.face_valid[0]) else None
        centre = float(mask_centre_columns(ref.person_masks)[0][0])

        def driving(frames, centres=None):
            known = drv.face_valid & frames
            return PersonGeometry(boxes, frames, face=median_box(drv.face_boxes, known) if bool(known.any()) else None,
                                  area=frame, centres=centres)

        boxed = PersonGeometry.picture(reference_box, face=reference_face, area=frame)
        centred = PersonGeometry.picture(reference_box, face=reference_face, area=frame, centre=centre)
        driving_centres = mask_centre_columns(drv.person_masks)[0]
        rules = {"box": fit_similarity(driving(valid), boxed),
                 "centre": fit_similarity(driving(valid, driving_centres), centred),
                 "first": fit_similarity(driving(first, driving_centres), centred)}
        # extract_cues fits these rules (on close-ups its smoothed face track refines x, so compare whole figures)
        for anchor, rule in (("first", rules["first"]), ("clip", rules["centre"])) if not close_ups else ():
            used = exact_cues(ref, drv, replace(GIVEN, anchor=anchor)).record.transform
            assert (used.scale, used.tx, used.ty) == pytest.approx((rule.scale, rule.tx, rule.ty), abs=1e-4), anchor
        for name, rule in rules.items():
            scores[name].append(overlap(drv.person_masks, pair.target.person_masks, rule))
    mean = {name: sum(values) / len(values) for name, values in scores.items()}
    assert mean["first"] > mean["centre"] + 0.05, mean
    if not close_ups:  # a close-up's box is cut by the picture: centre lines and box edges agree more often there
        assert mean["centre"] > mean["box"] + 0.03, mean
