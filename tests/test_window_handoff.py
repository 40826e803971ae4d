"""Context-window handoff: the colour metrics on frames whose answer is known, each window's own clean estimate as
the sampler reports it (exactly what it blends, on CogVideoX's v-prediction and Wan's flow matching), and the
handoff measurement over consecutive windows on tiny models of the real classes."""

from __future__ import annotations

import pytest
import torch

from directanimator.conditioning import encode_conditioning
from directanimator.errors import InputError
from directanimator.handoff import latent_frame_images, window_handoff
from directanimator.metrics import colour_difference, frame_colours, pixel_difference
from directanimator.models.loader import AnimatorModel
from directanimator.plan import frames_from_latents
from directanimator.sampling import plan_windows, sample_latents
from directanimator.vae_io import PREVIEW_RANGE
from tests.tiny import (
    SMALL,
    TEXT_DIM,
    WAN_TEXT_LEN,
    synthetic_triplet,
    tiny_animator,
    tiny_animator_model,
    tiny_wan_vae,
)

PREVIEW_SCALE = 1e-3  # keeps latent previews far inside their clamp, so a preview is a linear map of the latents


def _frames(seed: int, shape=(3, 8, 8, 3)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 0.8


# ------------------------------------------------------------------------------------------------ the metrics
def test_a_colour_cast_shows_in_full_in_the_colour_difference():
    frames = _frames(0)
    cast = frames.clone()
    cast[..., 0] += 0.12  # red raised by 0.12 everywhere: mean colour moves by 0.12 in one of three channels
    assert colour_difference(frames, cast) == pytest.approx(0.04, abs=1e-6)
    assert pixel_difference(frames, cast) == pytest.approx(0.04, abs=1e-6)
    assert frame_colours(cast)[:, 0] - frame_colours(frames)[:, 0] == pytest.approx(torch.full((3,), 0.12), abs=1e-6)


def test_pixels_moved_around_keep_the_colour_but_not_the_pixels():
    frames = _frames(1)
    moved = frames.flip(1).flip(2)  # the same pixels in other places: the same mean colour per frame
    assert colour_difference(frames, moved) == pytest.approx(0.0, abs=1e-6)
    assert pixel_difference(frames, moved) > 0.1


def test_colour_difference_refuses_frames_of_different_shapes():
    with pytest.raises(InputError, match="same"):
        colour_difference(_frames(0), _frames(0, (2, 8, 8, 3)))


# ------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def cog():
    """CogVideoX 1.5 layout (any length), random cue modules, 7 video latent frames (25 driving frames)."""
    model = tiny_animator_model("1.5", randomize_cues=True)
    return model, encode_conditioning(model, synthetic_triplet(25, height=SMALL, width=SMALL, seed=2), tiling=False)


@pytest.fixture(scope="module")
def wan():
    """Wan2.2 TI2V layout (flow matching, clean first frame), random cue modules, 4 video latent frames."""
    model = AnimatorModel(transformer=tiny_animator("wan-ti2v", randomize_cues=True), vae=tiny_wan_vae("2.2"),
                          null_text=torch.randn(1, WAN_TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(3)),
                          scheduler_config={}, cue_config={}, name="tiny-wan-ti2v")
    return model, encode_conditioning(model, synthetic_triplet(13, height=64, width=64, seed=1))


def _blend(estimates: list, plan, frames: int) -> torch.Tensor:
    """The video frames of the windows' estimates blended with the plan's ramped weights."""
    total = torch.zeros_like(estimates[0].clean[:, :1]).repeat(1, frames, 1, 1, 1)
    weight = torch.zeros(frames)
    for estimate, w in zip(estimates, plan.weights):
        start, end = estimate.span
        total[:, start:end] += estimate.clean[:, 1:] * w.view(1, -1, 1, 1, 1)
        weight[start:end] += w
    return total / weight.view(1, -1, 1, 1, 1)


@pytest.mark.parametrize("family, scheduler, window", [("cog", "ddim", 3), ("cog", "dpm", 3), ("cog", "dpm", None),
                                                       ("wan", "euler", 2), ("wan", "unipc", 2)])
def test_each_windows_estimate_is_what_the_sampler_blends_at_every_step(family, scheduler, window, request):
    model, cond = request.getfixturevalue(family)
    n = cond.video_latent_frames
    plan = plan_windows(n, window, 1)
    factors = torch.eye(int(model.transformer.latent_channels), 3) * PREVIEW_SCALE
    estimates, previews = [], []
    sample_latents(model, cond, steps=3, guidance=2.0, seed=0, scheduler=scheduler, window=window, overlap=1,
                   preview_factors=factors, on_window=estimates.append,
                   callback=lambda step, total, preview: previews.append(preview))
    assert len(estimates) == 3 * len(plan.spans) and [e.span for e in estimates[:len(plan.spans)]] == list(plan.spans)
    assert all(e.clean.shape[1] == 1 + e.span[1] - e.span[0] for e in estimates)
    for step, preview in enumerate(previews):
        this_step = [e for e in estimates if e.step == step]
        blended = _blend(this_step, plan, n)
        # the sampler's own clean estimate (its preview) is the blend of the windows' estimates
        expected = blended[0].permute(0, 2, 3, 1) @ factors / (2 * PREVIEW_RANGE) + 0.5
        assert torch.allclose(preview, expected, atol=1e-6), f"step {step}"


def test_reporting_the_windows_changes_no_sample(cog):
    model, cond = cog
    options = dict(steps=2, guidance=2.0, seed=4, window=3, overlap=1)
    plain = sample_latents(model, cond, **options)
    reported = sample_latents(model, cond, on_window=lambda estimate: None, **options)
    assert torch.equal(plain, reported)


# ------------------------------------------------------------------------------------------------ the handoff
def test_latent_frame_images_render_each_latent_as_its_decoded_frames(cog):
    model, _ = cog
    latents = torch.randn(1, 1 + 3, 16, SMALL // 8, SMALL // 8, generator=torch.Generator().manual_seed(5))
    frames = frames_from_latents(model, latents)  # 9 frames: latent 0 -> frame 0, latents 1, 2 -> 4 frames each
    images = latent_frame_images(model, latents)
    assert images.shape == (3, SMALL, SMALL, 3)
    assert torch.allclose(images[0], frames[0]) and torch.allclose(images[2], frames[5:9].mean(0), atol=1e-6)
    assert torch.allclose((images[0] + 4 * images[1:].sum(0)) / 9, frames.mean(0), atol=1e-6)


def test_window_handoff_compares_each_pair_of_consecutive_windows_on_their_shared_frames(cog):
    model, cond = cog
    options = dict(steps=2, guidance=2.0, seed=0, window=3, overlap=1, samples=2)
    report = window_handoff(model, cond, tiling=False, **options)
    assert report.spans == ((0, 3), (2, 5), (4, 7))
    assert [(h.left, h.right, h.shared) for h in report.handoffs] == [(0, 1, (2, 3)), (1, 2, (4, 5))]
    assert all(0 < h.colour <= h.pixel < 1 for h in report.handoffs)  # random windows disagree, a little
    assert report.max_colour >= report.mean_colour > 0
    assert torch.equal(report.latents, sample_latents(model, cond, **options))  # the result itself, unchanged
    # the same numbers from the sampler's own reports: each window's last-step estimate (mean of the samples),
    # rendered alone, compared on the frames it shares with the next window
    last: dict[int, list] = {}
    sample_latents(model, cond, on_window=lambda e: last.setdefault(e.window, []).append(e.clean)
                   if e.step == e.steps - 1 else None, **options)
    images = {k: latent_frame_images(model, sum(v) / len(v), tiling=False) for k, v in last.items()}
    for handoff in report.handoffs:
        (a0, _), (b0, b1) = report.spans[handoff.left], report.spans[handoff.right]
        start, end = handoff.shared
        left, right = images[handoff.left][start - a0:end - a0], images[handoff.right][start - b0:end - b0]
        assert handoff.colour == pytest.approx(colour_difference(left, right), rel=1e-6)
        assert handoff.pixel == pytest.approx(pixel_difference(left, right), rel=1e-6)


def test_window_handoff_of_one_window_has_no_handoffs(cog):
    model, cond = cog
    report = window_handoff(model, cond, tiling=False, steps=1, guidance=1.0)
    assert report.spans == ((0, cond.video_latent_frames),) and report.handoffs == []
    assert report.mean_colour == 0.0
    with pytest.raises(InputError, match="on_window"):
        window_handoff(model, cond, steps=1, on_window=print)


def test_cache_states_are_held_per_window_for_the_whole_run(cog):
    """What the sampling benchmark's windows table counts: one first-block state per window (batched guidance),
    all alive at the last step, as every window is denoised at every step: the bytes grow with the windows."""
    from directanimator.models.caching import held_state_bytes

    model, cond = cog
    shorter = encode_conditioning(model, synthetic_triplet(17, height=SMALL, width=SMALL, seed=2), tiling=False)

    def held_at_the_end(conditioning) -> int:
        held = []
        sample_latents(model, conditioning, steps=3, guidance=2.0, seed=0, window=3, overlap=1, cache="first_block",
                       batch_guidance=True, on_window=lambda e: held.append(held_state_bytes(model.transformer)))
        return held[-1]

    three, two = held_at_the_end(cond), held_at_the_end(shorter)  # 7 latents: 3 windows of 3; 5 latents: 2
    assert two > 0 and three == pytest.approx(1.5 * two, rel=0.01)
