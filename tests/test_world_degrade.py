"""Degradations of world clips: each changes what it should and nothing else; strength 0 changes nothing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from directanimator.errors import InputError
from training.world import (
    Background,
    Degradation,
    Placement,
    WorldConfig,
    degrade,
    jpeg,
    low_light,
    low_resolution,
    make_sample,
    noise,
    occluders,
    parse_degradations,
    render_clip,
    sample_identity,
    sample_motion,
    shutter_seconds,
)
from training.world.motion import Motion

SMALL = WorldConfig(height=64, width=64, num_frames=5, fps=12.0, cross_id=False, pseudo=False)


@pytest.fixture(scope="module")
def clip():
    return make_sample(1, SMALL).clip


def laplacian_energy(frames: torch.Tensor) -> float:
    x = frames.mean(-1)
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float(lap.pow(2).mean())


@pytest.mark.parametrize("name", ["occluders", "low_light", "low_resolution", "noise", "jpeg"])
def test_strength_zero_leaves_frames_bit_identical(clip, name):
    out = degrade(clip.frames, Degradation(name, 0.0), rng=np.random.default_rng(0), person_masks=clip.person_masks)
    assert torch.equal(out, clip.frames)


def test_occluders_cover_the_person_and_leave_every_other_pixel_untouched(clip):
    out, cover = occluders(clip.frames, 0.7, rng=np.random.default_rng(0), person_masks=clip.person_masks)
    assert cover.shape == clip.person_masks.shape
    untouched = cover == 0
    assert torch.equal(out[untouched], clip.frames[untouched])
    solid = cover == 1
    assert bool(((out - clip.frames).abs().amax(-1)[solid] > 0).float().mean() > 0.9)
    assert float((cover * clip.person_masks).sum()) > 0.1 * float(clip.person_masks.sum())


def test_motion_blur_smears_only_what_moves():
    rng = np.random.default_rng(4)
    who = sample_identity(rng, "b")
    backdrop = Background(kind="stripes", colours=((0.8, 0.8, 0.2), (0.2, 0.3, 0.8), (0, 0, 0)), scale=0.1)
    times = np.array([0.25, 0.5])
    exposure = shutter_seconds(1.0, 12.0)
    kwargs = dict(height=64, width=64)

    still = Motion.still()
    sharp_still = render_clip(who, still, Placement(), backdrop, times, **kwargs)
    blurred_still = render_clip(who, still, Placement(), backdrop, times, shutter=exposure, **kwargs)
    torch.testing.assert_close(blurred_still.frames, sharp_still.frames, atol=1e-6, rtol=0)

    dance = sample_motion(rng, duration=1.0, energy=1.5)
    sharp = render_clip(who, dance, Placement(), backdrop, times, **kwargs)
    blurred = render_clip(who, dance, Placement(), backdrop, times, shutter=exposure, **kwargs)
    for name in ("person_masks", "face_masks", "joints", "face_boxes"):
        assert torch.equal(getattr(blurred, name), getattr(sharp, name)), name
    # pixels the person never touches during the exposure keep the static background exactly
    swept = torch.zeros(2, 64, 64)
    for offset in np.linspace(-0.5, 0.5, 11) * exposure:
        moment = render_clip(who, dance, Placement(), backdrop, times + offset, **kwargs)
        swept = torch.maximum(swept, moment.person_masks)
    swept = torch.nn.functional.max_pool2d(swept[:, None], 5, stride=1, padding=2)[:, 0]
    changed = (blurred.frames - sharp.frames).abs().amax(-1) > 1e-6
    assert bool(changed.any())
    assert not bool((changed & (swept == 0)).any())


def test_low_light_darkens_each_pixel_by_its_own_value_only(clip):
    out = low_light(clip.frames, 0.6)
    assert bool((out <= clip.frames + 1e-7).all())
    assert float(out.mean()) < 0.6 * float(clip.frames.mean())
    values, order = clip.frames.flatten().sort()
    assert bool((out.flatten()[order].diff() >= -1e-7).all())  # monotone: brighter stays brighter
    poked = clip.frames.clone()
    poked[0, 10, 10] = 1.0
    differs = (low_light(poked, 0.6) - out).abs().amax(-1) > 0
    assert int(differs.sum()) <= 1  # no spatial mixing


def test_low_resolution_removes_detail_but_keeps_size_and_coarse_content(clip):
    out = low_resolution(clip.frames, 0.5)
    assert out.shape == clip.frames.shape
    assert laplacian_energy(out) < 0.3 * laplacian_energy(clip.frames)
    coarse = torch.nn.functional.avg_pool2d(clip.frames.permute(0, 3, 1, 2), 16)
    coarse_out = torch.nn.functional.avg_pool2d(out.permute(0, 3, 1, 2), 16)
    assert float((coarse - coarse_out).abs().max()) < 0.08


def test_noise_is_zero_mean_uncorrelated_and_scaled_by_strength():
    grey = torch.full((2, 64, 64, 3), 0.5)
    residual = noise(grey, 0.5, rng=np.random.default_rng(0)) - grey
    assert abs(float(residual.mean())) < 0.003
    assert float(residual.std()) == pytest.approx(0.075, rel=0.05)
    neighbours = torch.corrcoef(torch.stack([residual[:, :, 1:].flatten(), residual[:, :, :-1].flatten()]))[0, 1]
    assert abs(float(neighbours)) < 0.05
    again = noise(grey, 0.5, rng=np.random.default_rng(0)) - grey
    assert torch.equal(residual, again)


def test_jpeg_error_grows_with_strength_and_keeps_brightness_and_rough_colours(clip):
    errors = [float((jpeg(clip.frames, s) - clip.frames).pow(2).mean()) for s in (0.1, 0.5, 1.0)]
    assert errors[0] < errors[1] < errors[2]
    strong = jpeg(clip.frames, 1.0)
    torch.testing.assert_close(strong.mean(dim=(1, 2, 3)), clip.frames.mean(dim=(1, 2, 3)), atol=0.02, rtol=0)
    torch.testing.assert_close(strong.mean(dim=(1, 2)), clip.frames.mean(dim=(1, 2)), atol=0.08, rtol=0)
    assert torch.equal((strong * 255).round() / 255, strong)  # decoded 8-bit values


def test_world_degrades_the_driving_clip_only():
    degraded = replace(SMALL, degradations=parse_degradations("noise=0.4,occluders=0.5,motion_blur=0.5"))
    clean, dirty = make_sample(0, SMALL), make_sample(0, degraded)
    assert torch.equal(dirty.clip.frames, clean.clip.frames)
    assert torch.equal(dirty.clip.person_masks, clean.clip.person_masks)
    assert not torch.equal(dirty.driving.frames, clean.driving.frames)
    assert torch.equal(dirty.driving.person_masks, clean.clip.person_masks)


def test_degradation_names_and_strengths_are_checked():
    assert parse_degradations("noise=0.3, jpeg") == (Degradation("noise", 0.3), Degradation("jpeg", 0.5))
    with pytest.raises(InputError, match="unknown"):
        parse_degradations("fog=0.2")
    with pytest.raises(InputError, match="outside 0..1"):
        Degradation("noise", 1.5)
    with pytest.raises(InputError, match="motion blur is rendered"):
        degrade(torch.zeros(1, 64, 64, 3), Degradation("motion_blur", 0.5), rng=np.random.default_rng(0))
