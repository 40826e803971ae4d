"""Pose cue: grey foreground, low-pass filtered in the frequency domain (DESIGN.md 4)."""

import pytest
import torch

from directanimator.cues import low_pass, pose_cue
from directanimator.cues.pose_cue import reduced_plan, transfer_function
from directanimator.errors import CueError
from helpers import DANCE, DANCE_SIZE, disc, grating, iou, needs_real_data, power_above

FILTERS = ["gaussian", "ideal", "butterworth"]


@pytest.mark.parametrize("filter", FILTERS)
def test_low_pass_keeps_the_mean(filter):
    torch.manual_seed(0)
    image = torch.rand(2, 70, 90)  # odd-shaped, random content right up to the borders
    out = low_pass(image, cutoff=0.05, filter=filter)
    assert out.shape == image.shape
    assert torch.allclose(out.mean(dim=(-2, -1)), image.mean(dim=(-2, -1)), atol=1e-4)


@pytest.mark.parametrize("filter", FILTERS)
def test_low_pass_removes_fine_texture_but_keeps_silhouette(filter):
    stripes = grating(period_px=3, size=(128, 128))  # clothing-like texture at 2/3 of Nyquist
    blob = disc(radius=30, size=(128, 128))  # body-like silhouette
    textured = blob * stripes
    out = low_pass(textured, cutoff=0.1, filter=filter)
    assert power_above(out, 0.3) < 0.01 * power_above(textured, 0.3)
    assert iou(out > 0.2, blob > 0.5) > 0.9


@pytest.mark.parametrize("filter", FILTERS)
def test_higher_cutoff_keeps_more_detail(filter):
    torch.manual_seed(0)
    image = disc(20, (96, 96)) * torch.rand(96, 96)
    errors = [float((low_pass(image, cutoff=c, filter=filter) - image).pow(2).mean()) for c in (0.05, 0.1, 0.2, 0.4)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_every_filter_has_half_power_at_the_cutoff():
    # the cutoff means the same for the three filters: gain 1/sqrt(2) at rho = cutoff (ideal: its edge)
    size = 400  # rfft grid step 1/400 cycles/px = 0.005 of Nyquist; rho = 0.2 is bin 40 on the x axis
    for filter in ("gaussian", "butterworth"):
        gain = transfer_function(size, size, cutoff=0.2, filter=filter)
        assert float(gain[0, 0]) == 1.0
        assert float(gain[0, 40]) == pytest.approx(2**-0.5, abs=1e-5)
    ideal = transfer_function(size, size, cutoff=0.2, filter="ideal")
    assert float(ideal[0, 40]) == 1.0 and float(ideal[0, 41]) == 0.0


@pytest.mark.parametrize("size", [(37, 50), (8, 7), (1, 9)])
def test_low_pass_equals_the_fft_filter_of_the_mirrored_image(size):
    # the definition: filter the even extension (image mirrored to 2H x 2W) on the FFT grid, keep the first quadrant
    torch.manual_seed(0)
    image = torch.rand(2, *size)
    height, width = size
    mirrored = torch.cat([image, image.flip(-1)], dim=-1)
    mirrored = torch.cat([mirrored, mirrored.flip(-2)], dim=-2)
    for filter in FILTERS:
        gain = transfer_function(2 * height, 2 * width, cutoff=0.1, filter=filter)
        expected = torch.fft.irfft2(torch.fft.rfft2(mirrored) * gain, s=(2 * height, 2 * width))[:, :height, :width]
        assert torch.allclose(low_pass(image, cutoff=0.1, filter=filter), expected, atol=1e-5)


def test_low_pass_does_not_wrap_one_border_onto_the_other():
    # a bright column at the left edge must not leak to the right edge (a plain FFT would wrap it around)
    image = torch.zeros(64, 96)
    image[:, :4] = 1.0
    out = low_pass(image, cutoff=0.05)
    assert float(out[:, -8:].abs().max()) < 1e-3


def test_pose_cue_is_the_luma_of_the_masked_foreground():
    frames = torch.zeros(2, 64, 80, 3)
    frames[..., 0] = 1.0  # pure red: BT.601 luma 0.299
    mask = torch.ones(2, 64, 80)
    mask[1] = 0.0  # frame 1: nobody
    cue = pose_cue(frames, mask=mask, cutoff=0.2)
    assert cue.shape == (2, 64, 80, 3)
    assert torch.allclose(cue[0], torch.full_like(cue[0], 0.299), atol=1e-4)
    assert float(cue[1].abs().max()) < 1e-6
    assert torch.equal(cue[..., 0], cue[..., 1]) and torch.equal(cue[..., 1], cue[..., 2])


def test_pose_cue_stays_in_range_and_blanks_bad_frames():
    torch.manual_seed(0)
    frames = torch.rand(3, 64, 64, 3)
    mask = disc(20, (64, 64))  # one mask for every frame
    cue = pose_cue(frames, mask=mask, cutoff=0.5, filter="ideal", bad=torch.tensor([False, True, False]))
    assert float(cue.min()) >= 0.0 and float(cue.max()) <= 1.0
    assert float(cue[1].abs().max()) == 0.0
    assert float(cue[0].abs().max()) > 0.1
    # away from the disc the foreground is gone
    assert float(cue[0, :6, :6].abs().max()) < 0.05


def test_pose_cue_reports_each_frame():
    seen = []
    pose_cue(torch.rand(3, 64, 64, 3), mask=torch.ones(3, 64, 64), on_frame=seen.append)
    assert seen == [0, 1, 2]


def test_pose_cue_rejects_a_mask_of_another_size():
    with pytest.raises(CueError, match=r"64x48.*80x64|80x64.*64x48"):
        pose_cue(torch.rand(2, 64, 80, 3), mask=torch.ones(2, 48, 64))


def test_pose_cue_rejects_bad_options_and_flags():
    frames, mask = torch.rand(2, 64, 64, 3), torch.ones(2, 64, 64)
    with pytest.raises(CueError, match="cutoff"):
        pose_cue(frames, mask=mask, cutoff=0.0)
    with pytest.raises(CueError, match="filter"):
        pose_cue(frames, mask=mask, filter="box")
    with pytest.raises(CueError, match="3 flags for 2 frames"):
        pose_cue(frames, mask=mask, bad=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(CueError, match="given"):
        pose_cue(frames, segmenter="given")


def mirrored_fft_low_pass(image: torch.Tensor, cutoff: float, filter: str = "gaussian") -> torch.Tensor:
    """The definition of `low_pass`: filter the image mirrored to 2H x 2W on the FFT grid, keep the first quadrant."""
    height, width = image.shape[-2:]
    mirrored = torch.cat([image, image.flip(-1)], dim=-1)
    mirrored = torch.cat([mirrored, mirrored.flip(-2)], dim=-2)
    gain = transfer_function(2 * height, 2 * width, cutoff=cutoff, filter=filter)
    return torch.fft.irfft2(torch.fft.rfft2(mirrored) * gain, s=(2 * height, 2 * width))[..., :height, :width]


@pytest.mark.parametrize("size", [(96, 128), (130, 40)])
@pytest.mark.parametrize("cutoff", [0.03, 0.12, 0.15, 0.3])
def test_low_pass_equals_the_mirrored_fft_filter_at_working_sizes(size, cutoff):
    # low Gaussian cutoffs run as a separable spatial convolution (its kernel is short), the others and sizes
    # smaller than the kernel as a DCT: each must be the same filter
    torch.manual_seed(0)
    image = torch.rand(2, *size)
    expected = mirrored_fft_low_pass(image, cutoff)
    out = low_pass(image, cutoff=cutoff)
    assert torch.allclose(out, expected, atol=2e-6)
    assert torch.allclose(out.mean(dim=(-2, -1)), image.mean(dim=(-2, -1)), atol=1e-6)


@pytest.mark.parametrize("filter, cutoff", [("gaussian", 0.12), ("gaussian", 0.5), ("butterworth", 0.12)])
def test_pose_cue_is_the_clamped_low_pass_of_the_masked_luma(filter, cutoff):
    torch.manual_seed(0)
    frames = torch.rand(3, 80, 96, 3)
    frames[..., 1] = 1.0  # bright, hard-edged foreground: the sharper filters overshoot 0..1 and are clamped
    mask = disc(30, (80, 96))
    bad = torch.tensor([False, True, False])
    # full_resolution: the exact filter (by default a Gaussian of a low cutoff runs on a reduced grid, tested below)
    cue = pose_cue(frames, mask=mask, cutoff=cutoff, filter=filter, bad=bad, full_resolution=True)
    luma = 0.299 * frames[..., 0] + 0.587 * frames[..., 1] + 0.114 * frames[..., 2]
    expected = mirrored_fft_low_pass(luma * mask, cutoff, filter).clamp(0.0, 1.0)
    expected[1] = 0.0
    assert cue.shape == (3, 80, 96, 3) and cue.is_contiguous()
    for channel in range(3):
        assert torch.allclose(cue[..., channel], expected, atol=2e-6)


# The reduced-grid Gaussian (reduced_plan) must stay the full-resolution filter within this much, on values in
# 0..1: below one 8-bit grey level (1/255). Measured on the real dance video: 0.0031 at the default cutoff.
REDUCED_TOLERANCE = 0.0035


@pytest.fixture(scope="module")
def dance_foreground():
    """8 frames of the real dance video at 512x896, a third of a second apart, and their mediapipe person masks."""
    needs_real_data()
    from directanimator.cues.segmentation import segment_person
    from directanimator.video import read_video

    frames = read_video(DANCE, max_frames=8, stride=8, size=DANCE_SIZE, resize="stretch").frames
    return frames, segment_person(frames)


@pytest.mark.parametrize("cutoff", [0.03, 0.06, 0.12])
def test_reduced_pose_cue_matches_the_full_resolution_filter_on_real_footage(cutoff, dance_foreground):
    frames, masks = dance_foreground
    plan = reduced_plan(*DANCE_SIZE, cutoff)
    assert plan is not None and plan.levels == {0.03: 3, 0.06: 2, 0.12: 1}[cutoff]
    reduced = pose_cue(frames, mask=masks, cutoff=cutoff)
    exact = pose_cue(frames, mask=masks, cutoff=cutoff, full_resolution=True)
    error = (reduced - exact).abs()
    assert float(error.max()) < REDUCED_TOLERANCE
    assert float(error.mean()) < 2e-4
    assert float(exact.max()) > 0.3  # a real person, not an empty picture


def test_reduced_pose_cue_keeps_the_borders_of_the_mirrored_filter():
    # a bright foreground touching every border: the reduced grid must mirror the picture as the DCT does
    torch.manual_seed(0)
    frames = torch.rand(2, 96, 160, 3) * 0.2 + 0.8
    mask = torch.ones(96, 160)
    mask[30:60, 50:110] = 0.0  # an inner hole with hard edges
    reduced = pose_cue(frames, mask=mask)
    exact = pose_cue(frames, mask=mask, full_resolution=True)
    assert reduced_plan(96, 160, 0.12) is not None
    assert float((reduced - exact).abs().max()) < 0.01
    assert float((reduced - exact)[:, :8].abs().max()) < 0.005 and float((reduced - exact)[:, -8:].abs().max()) < 0.005


def test_reduced_grid_only_for_cutoffs_it_holds():
    assert reduced_plan(896, 512, 0.15) is None  # gain 0.02 at half resolution's Nyquist: full resolution
    assert reduced_plan(24, 40, 0.12) is None  # too small to reduce
    plan = reduced_plan(90, 130, 0.12)  # odd multiples: the padding makes the sides divide by 2
    assert plan.levels == 1 and (90 + plan.pad[0] + plan.pad[1]) % 2 == 0 and (130 + plan.pad[2] + plan.pad[3]) % 2 == 0


@pytest.mark.parametrize("size", [(96, 160), (90, 131)])
def test_reduced_filter_fills_the_mirrored_border_in_place_as_copy_make_border_does(size):
    # the pose builder writes the grey foreground straight into the padded buffer and mirrors the border there
    import numpy as np

    from directanimator.cues.pose_cue import _ReducedFilter, reduced_low_pass

    plan = reduced_plan(*size, 0.12)
    image = np.random.default_rng(0).random(size, dtype=np.float32)
    in_place = _ReducedFilter(plan, *size)
    in_place.input[...] = image
    np.testing.assert_array_equal(in_place(), reduced_low_pass(image, plan))
    assert in_place.non_negative and float(in_place().min()) >= 0.0


def test_pose_cue_from_the_luma_taken_with_the_uint8_frames_is_the_same():
    # extract_cues takes each frame's luma while converting it to uint8 (frames_uint8(luma=...)); the pose
    # builder then reads that luma instead of the frames and overwrites it with the cue
    from directanimator.cues.pose_cue import _pose_grey
    from directanimator.cues.segmentation import frames_uint8

    torch.manual_seed(0)
    frames, masks = torch.rand(3, 96, 128, 3), torch.rand(3, 96, 128)
    bad = torch.tensor([False, True, False])
    options = dict(cutoff=0.12, filter="gaussian", order=2, bad=bad, on_frame=None)
    expected = _pose_grey(frames, masks, **options)
    luma = torch.empty(3, 96, 128)
    frames_uint8(frames, luma=luma)
    assert torch.allclose(luma, 0.299 * frames[..., 0] + 0.587 * frames[..., 1] + 0.114 * frames[..., 2], atol=1e-5)
    cue = _pose_grey(frames, masks, out=luma, luma_in_out=True, **options)
    assert cue is luma and torch.equal(cue, expected)
