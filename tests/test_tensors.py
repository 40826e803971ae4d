"""Frame and mask validation: NaN and inf refused, out-of-range values clamped, valid tensors passed through."""

import numpy as np
import pytest
import torch

from directanimator.errors import InputError
from directanimator.tensors import as_frames, as_masks


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_are_refused_naming_the_input(bad):
    frames = torch.rand(2, 64, 64, 3)
    frames[1, 10, 20, 2] = bad
    with pytest.raises(InputError, match="driving: contains NaN or infinite"):
        as_frames(frames, name="driving")
    masks = torch.rand(2, 64, 64)
    masks[0, 5, 5] = bad
    with pytest.raises(InputError, match="mask: contains NaN or infinite"):
        as_masks(masks, name="mask")


def test_out_of_range_values_are_clamped_in_a_copy():
    frames = torch.rand(1, 64, 64, 3)
    frames[0, 0, 0] = torch.tensor([-0.5, 1.5, 0.25])
    original = frames.clone()
    out = as_frames(frames)
    assert out[0, 0, 0].tolist() == [0.0, 1.0, 0.25]
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(frames, original)  # the caller's tensor is untouched
    masks = torch.full((2, 64, 64), 2.0)
    assert float(as_masks(masks).max()) == 1.0 and float(masks.max()) == 2.0


def test_valid_float_tensors_are_passed_through_without_a_copy():
    # each cue stage validates its inputs: a full-size copy per call was most of the cost
    frames = torch.rand(3, 64, 80, 3)
    assert as_frames(frames) is frames
    masks = torch.rand(3, 64, 80)
    assert as_masks(masks, like=frames) is masks
    # anything that needs converting still yields a new, contiguous float32 tensor in 0..1
    strided = frames.transpose(1, 2)
    assert as_frames(strided).is_contiguous() and torch.equal(as_frames(strided), strided)
    grey = as_frames(torch.rand(2, 64, 80, 1))
    assert grey.shape == (2, 64, 80, 3) and grey.is_contiguous()
    assert as_masks(masks[:1], like=frames).shape == (3, 64, 80)


def test_uint8_and_numpy_inputs_are_scaled_to_0_1():
    image = np.full((64, 64, 3), 255, dtype=np.uint8)
    image[0, 0] = 0
    out = as_frames(image)
    assert out.dtype == torch.float32 and out.shape == (1, 64, 64, 3)
    assert float(out[0, 0, 0, 0]) == 0.0 and float(out[0, 1, 1, 0]) == 1.0


def test_very_large_and_tiny_frames_are_refused_with_the_fix():
    with pytest.raises(InputError, match="at most 4096 px per side.*Resize the input first"):
        as_frames(torch.zeros(1, 4100, 64, 3))
    with pytest.raises(InputError, match="at least 64 px per side.*Upscale"):
        as_frames(torch.zeros(1, 63, 200, 3))
    assert as_frames(torch.zeros(1, 4096, 64, 3)).shape == (1, 4096, 64, 3)
