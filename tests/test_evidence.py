"""benchmarks.evidence: the measurements behind benchmarks.claims, checked on inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.evidence import (colour_histogram, colour_similarity, foreground_iou, mediapipe_skeleton,
                               steps_to_level)


def test_foreground_iou_is_one_for_an_exact_result_and_drops_with_a_shift():
    torch.manual_seed(0)
    plate = torch.rand(2, 64, 64, 3) * 0.2
    masks = torch.zeros(2, 64, 64)
    masks[:, 16:48, 20:40] = 1.0
    person = torch.tensor([0.9, 0.1, 0.1])
    exact = torch.where(masks[..., None] > 0.5, person, plate)
    shifted = torch.where(torch.roll(masks, 10, dims=2)[..., None] > 0.5, person, plate)
    assert foreground_iou(exact, plate, masks) == pytest.approx(1.0)
    assert foreground_iou(shifted, plate, masks) == pytest.approx(10 / 30, abs=1e-6)
    assert foreground_iou(plate, plate, masks) == 0.0


def test_colour_similarity_is_one_for_the_same_colours_and_zero_for_disjoint_ones():
    masks = torch.ones(1, 64, 64)
    red, blue = torch.zeros(1, 64, 64, 3), torch.zeros(1, 64, 64, 3)
    red[..., 0], blue[..., 2] = 0.9, 0.9
    half = red.clone()
    half[:, :32] = blue[:, :32]
    h_red, h_blue, h_half = (colour_histogram(x, masks) for x in (red, blue, half))
    assert colour_similarity(h_red, h_red) == pytest.approx(1.0)
    assert colour_similarity(h_red, h_blue) == 0.0
    assert colour_similarity(h_half, h_red) == pytest.approx(0.5)
    only_red = torch.zeros(1, 64, 64)
    only_red[:, 32:] = 1.0
    assert colour_similarity(colour_histogram(half, only_red), h_red) == pytest.approx(1.0)


def test_steps_to_level_finds_the_first_step_at_or_below_the_level():
    assert steps_to_level([0, 10, 20, 30], [1.0, 0.6, 0.4, 0.5], 0.5) == 20
    assert steps_to_level([0, 10], [1.0, 0.9], 0.5) is None


def test_mediapipe_skeleton_finds_a_puppet_in_openpose_order():
    pytest.importorskip("mediapipe")
    from training.world import WorldConfig
    from training.world.pairs import make_sample
    from training.world.skeleton_map import to_openpose

    world = WorldConfig(height=256, width=256, num_frames=4, turn_probability=0.0, close_up_probability=0.0,
                        cross_id=False, pseudo=False)
    clip = make_sample(2, world, seed=3).clip
    points, shown = mediapipe_skeleton(clip.frames)
    truth, truth_shown = to_openpose(clip.joints.numpy(), clip.joint_visible.numpy())
    assert points.shape == (4, 18, 2) and shown.shape == (4, 18)
    both = shown & truth_shown
    body = [1, 2, 5, 8, 11]  # neck, shoulders, hips: large, unambiguous joints
    assert both[:, body].sum() >= 12
    error = np.linalg.norm(points - truth, axis=-1)[:, body][both[:, body]]
    assert np.median(error) < 20.0  # px at 256: the right joints, left and right not swapped


def test_static_baseline_letterboxes_the_reference_and_repeats_it_over_the_target():
    from directanimator.metrics import static_baseline

    reference = torch.full((1, 32, 16, 3), 0.5)  # portrait: letterboxed into the square target between black bars
    target = torch.zeros(2, 32, 32, 3)
    target[0, :, 8:24] = 0.6  # off by 0.1 on half the pixels: MSE 0.005, 23.01 dB
    target[1, :, 8:24] = 0.7  # off by 0.2: MSE 0.02, 16.99 dB
    scores = static_baseline(reference, target)
    assert scores["psnr"] == pytest.approx((10 * np.log10(1 / 0.005) + 10 * np.log10(1 / 0.02)) / 2, abs=1e-3)
    assert 0.0 < scores["ssim"] < 1.0


def test_motion_scores_measure_error_and_pose_reliance_over_the_pixels_that_move():
    from directanimator.demo import motion_scores
    from directanimator.metrics import moving_difference, moving_pixels

    reference = torch.full((1, 8, 8, 3), 0.5)
    target = torch.full((3, 8, 8, 3), 0.5)
    target[1, 2:4, 2:4, 0] = 0.9  # 4 pixels move in one channel by 0.4
    target[2, 5:7, 1:3] = 0.1  # 4 pixels move in every channel by 0.4
    target[2, 0, 0] = 0.55  # under the 0.1 threshold: still
    moving = moving_pixels(reference.expand_as(target), target)
    assert moving.shape == (3, 8, 8) and int(moving.sum()) == 8 and not bool(moving[0].any())
    assert not bool(moving[2, 0, 0])
    result = target.clone()
    result[1, 2:4, 2:4] += 0.1  # 0.1 off in every channel of half the moving pixels
    scores = motion_scores(reference, target, result, without_pose=result)
    assert scores["moving_share"] == pytest.approx(8 / 192)
    assert scores["moving_error"] == pytest.approx(0.05)
    # the static reference is off by 0.4 in one channel of half of them, in all three of the other half
    assert scores["baseline_moving_error"] == pytest.approx((0.4 / 3 + 0.4) / 2)
    assert scores["pose_moves"] == 0.0
    assert motion_scores(reference, target, result, without_pose=target)["pose_moves"] == pytest.approx(0.05)
    assert moving_difference(result, target, torch.zeros(3, 8, 8, dtype=torch.bool)) == 0.0  # nothing moves
