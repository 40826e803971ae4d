"""Sampling pipeline: seeds, guidance, context windows, the frame-count rule, callbacks, schedulers, validation."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from directanimator.conditioning import Conditioning, encode_conditioning, plan_frame_count
from directanimator.cues.types import CueTriplet, Similarity
from directanimator.errors import CueError, InputError
from directanimator.models import CueLatents, DirectAnimatorTransformer
from directanimator.pipeline import animate, animate_triplet, plan_windows, sample_latents
from directanimator.vae_io import encode_frames, image_latent_scale, latent_scale
from tests.tiny import LATENT_CHANNELS, PIXELS, SMALL, synthetic_triplet, tiny_animator_model, tiny_backbone

STEPS = 3
GRID = SMALL // 8


class ForwardLog:
    """Records the latent-frame count of every backbone forward."""

    def __init__(self, model):
        self.frames: list[int] = []
        self._handle = model.transformer.backbone.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.frames.append(int(kwargs["hidden_states"].shape[1]))

    def close(self):
        self._handle.remove()


@pytest.fixture(scope="module")
def model15():
    """CogVideoX 1.5 layout (rotary only, temporal patches of 2), trained-looking random cue modules."""
    return tiny_animator_model("1.5", randomize_cues=True)


@pytest.fixture(scope="module")
def cond15(model15):
    # 3 video latents + the reference
    return encode_conditioning(model15, synthetic_triplet(9, height=SMALL, width=SMALL), tiling=False)


def test_same_seed_reproduces_and_another_seed_differs(model15, cond15):
    first = sample_latents(model15, cond15, steps=STEPS, guidance=2.0, seed=7)
    again = sample_latents(model15, cond15, steps=STEPS, guidance=2.0, seed=7)
    other = sample_latents(model15, cond15, steps=STEPS, guidance=2.0, seed=8)
    assert first.shape == (1, 4, LATENT_CHANNELS, GRID, GRID)
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.1


def test_a_window_covering_the_video_equals_the_single_pass(model15, cond15):
    single = sample_latents(model15, cond15, steps=STEPS, seed=3)
    covering = sample_latents(model15, cond15, steps=STEPS, seed=3, window=3, overlap=1)
    larger = sample_latents(model15, cond15, steps=STEPS, seed=3, window=5, overlap=2)
    assert torch.equal(single, covering) and torch.equal(single, larger)


def test_window_blending_is_exact_for_a_model_without_context():
    # Without transformer blocks or positional tables each latent frame's prediction ignores the other frames,
    # so any windowing must reproduce the single pass: this checks the indices and the weight normalisation.
    backbone = tiny_backbone("1.0", num_layers=0, use_learned_positional_embeddings=False)
    model = replace(tiny_animator_model("1.0"), transformer=DirectAnimatorTransformer(backbone))
    cond = encode_conditioning(model, synthetic_triplet(25, height=SMALL, width=SMALL), tiling=False)  # 7 latents
    single = sample_latents(model, cond, steps=STEPS, seed=5)
    windowed = sample_latents(model, cond, steps=STEPS, seed=5, window=3, overlap=1)
    assert len(plan_windows(7, 3, 1).spans) == 3
    torch.testing.assert_close(windowed, single, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_video_four_windows_long_runs_in_window_sized_forwards_and_keeps_its_frame_count(model15):
    plan = plan_windows(9, 3, 1)
    assert len(plan.spans) == 4
    log = ForwardLog(model15)
    try:
        result = animate_triplet(model15, synthetic_triplet(31, height=SMALL, width=SMALL), steps=2, guidance=1.0,
                                 window=3, overlap=1, tiling=False, fps=12.0)
    finally:
        log.close()
    assert result.frames.shape == (31, SMALL, SMALL, 3)
    assert result.fps == 12.0
    assert result.latents.shape[1] == 1 + 9  # 31 frames padded to 33 = 9 latents
    assert log.frames == [4] * (4 * 2)  # 4 windows x 2 steps, each the reference plus 3 video latents
    assert any("4 context windows" in note for note in result.notes)


@pytest.mark.slow
def test_a_fixed_length_backbone_samples_longer_clips_in_windows_of_its_length():
    model = tiny_animator_model("1.0", randomize_cues=True)  # learned positions: exactly 1 + 3 latent frames
    cond = encode_conditioning(model, synthetic_triplet(17), tiling=False)  # 5 video latents
    log = ForwardLog(model)
    try:
        latents = sample_latents(model, cond, steps=1, guidance=1.0)
    finally:
        log.close()
    assert latents.shape[1] == 6 and log.frames == [4, 4]
    short = encode_conditioning(model, synthetic_triplet(5))  # padded up to the window: 9 frames
    assert short.padded_frames == 9 and "fixed length" in short.notes[0]


def test_frames_are_padded_to_4k_plus_1_reported_and_trimmed_back(model15):
    result = animate_triplet(model15, synthetic_triplet(6, height=SMALL, width=SMALL), steps=1, guidance=1.0,
                             tiling=False)
    assert result.frames.shape == (6, SMALL, SMALL, 3)
    assert result.frames.min() >= 0 and result.frames.max() <= 1
    assert any("padded from 6 to 9 frames" in note for note in result.notes)


def test_frame_count_rule():
    assert [plan_frame_count(n) for n in (1, 5, 6, 9, 10, 13)] == [1, 5, 9, 9, 13, 13]
    # temporal patches of 2: reference + N latents must be even, so N odd (8m+1 frames)
    assert [plan_frame_count(n, patch_size_t=2) for n in (1, 5, 9, 13)] == [1, 9, 9, 17]
    # a fixed-length backbone pads short clips up to its window
    assert plan_frame_count(5, min_video_latents=12) == 45


def test_guidance_one_runs_one_forward_per_step_and_guidance_above_one_two(model15, cond15):
    log = ForwardLog(model15)
    try:
        sample_latents(model15, cond15, steps=STEPS, guidance=1.0)
        single = len(log.frames)
        sample_latents(model15, cond15, steps=STEPS, guidance=3.0)
        double = len(log.frames) - single
    finally:
        log.close()
    assert (single, double) == (STEPS, 2 * STEPS)


def test_guidance_pushes_away_from_the_cue_free_prediction(model15, cond15):
    plain = sample_latents(model15, cond15, steps=STEPS, guidance=1.0, seed=2)
    guided = sample_latents(model15, cond15, steps=STEPS, guidance=4.0, seed=2)
    assert (plain - guided).abs().mean() > 1e-3


def test_callback_runs_once_per_step_and_its_exception_stops_sampling(model15, cond15):
    calls = []

    def record(step, total, preview):
        calls.append((step, total, tuple(preview.shape)))

    sample_latents(model15, cond15, steps=STEPS, guidance=1.0, callback=record)
    assert calls == [(i, STEPS, (3, GRID, GRID, 3)) for i in range(STEPS)]

    class Cancelled(Exception):
        pass

    def cancel(step, total, preview):
        if step == 1:
            raise Cancelled

    log = ForwardLog(model15)
    try:
        with pytest.raises(Cancelled):
            sample_latents(model15, cond15, steps=5, guidance=1.0, callback=cancel)
    finally:
        log.close()
    assert len(log.frames) == 2


def test_denoise_below_one_runs_fewer_steps_from_the_init_latents(model15, cond15):
    torch.manual_seed(0)
    steps = []
    init_a = torch.randn(1, 3, LATENT_CHANNELS, GRID, GRID)
    init_b = torch.randn(1, 3, LATENT_CHANNELS, GRID, GRID)
    a = sample_latents(model15, cond15, steps=4, denoise=0.5, init_latents=init_a, seed=1,
                       callback=lambda i, n, p: steps.append((i, n)))
    b = sample_latents(model15, cond15, steps=4, denoise=0.5, init_latents=init_b, seed=1)
    assert steps == [(0, 2), (1, 2)]
    assert (a - b).abs().mean() > 0.1  # the result depends on where it started
    with pytest.raises(InputError, match="init_latents"):
        sample_latents(model15, cond15, steps=4, denoise=0.5)


@pytest.mark.parametrize("scheduler", ["dpm", "ddim"])
def test_both_schedulers_denoise_to_finite_latents(model15, cond15, scheduler):
    out = sample_latents(model15, cond15, steps=STEPS, scheduler=scheduler, seed=4)
    assert out.shape == (1, 4, LATENT_CHANNELS, GRID, GRID) and torch.isfinite(out).all()


def test_dpm_and_ddim_take_different_paths(model15, cond15):
    dpm = sample_latents(model15, cond15, steps=STEPS, scheduler="dpm", seed=4)
    ddim = sample_latents(model15, cond15, steps=STEPS, scheduler="ddim", seed=4)
    assert (dpm - ddim).abs().mean() > 1e-3


def test_conditioning_holds_the_reference_frame_then_the_driving_cues(model15):
    triplet = synthetic_triplet(9, height=SMALL, width=SMALL, seed=3)
    cond = encode_conditioning(model15, triplet, tiling=False)
    vae = model15.vae
    assert cond.reference.shape == (1, 1, LATENT_CHANNELS, GRID, GRID)
    assert cond.latent_frames == 4 and cond.num_frames == cond.padded_frames == 9 and cond.notes == []
    torch.testing.assert_close(cond.reference, encode_frames(vae, triplet.reference, image_latents=True, tiling=False))
    torch.testing.assert_close(cond.cues.pose[:, :1],
                               encode_frames(vae, triplet.reference_pose, image_latents=True, tiling=False))
    torch.testing.assert_close(cond.cues.face[:, 1:],
                               encode_frames(vae, triplet.face, image_latents=True, tiling=False))
    assert cond.cues.body_mask.shape == (1, 4, 1, GRID, GRID)
    torch.testing.assert_close(cond.cues.body_mask[0, 0, 0].mean(), triplet.reference_body_location.mean())


@pytest.mark.slow
def test_the_pose_cue_is_encoded_in_the_layout_the_checkpoint_was_trained_on(model15, caplog):
    from directanimator.cues import align_pose_cue

    triplet = synthetic_triplet(9, height=SMALL, width=SMALL, seed=4)
    triplet.record.transform = Similarity(0.75, 6.0, -3.0)
    aligned = align_pose_cue(triplet)
    assert not torch.equal(aligned.pose, triplet.pose)

    def pose_latents(model, cues):
        return encode_conditioning(model, cues, tiling=False)

    as_is = pose_latents(model15, triplet)  # a backbone without a checkpoint has no recorded layout
    trained_aligned = replace(model15, cue_config={"align_pose": True})
    moved = pose_latents(trained_aligned, triplet)
    assert any("aligned pose cues" in note for note in moved.notes)
    torch.testing.assert_close(moved.cues.pose, pose_latents(model15, aligned).cues.pose)
    assert not torch.allclose(moved.cues.pose, as_is.cues.pose)
    torch.testing.assert_close(moved.cues.face, as_is.cues.face)
    # an aligned cue for a model trained without: kept, with a warning naming the fix
    with caplog.at_level("WARNING"):
        kept = pose_latents(replace(model15, cue_config={"cutoff": 0.12}), aligned)
    assert "extract the cues with align_pose off" in caplog.text
    torch.testing.assert_close(kept.cues.pose, pose_latents(model15, aligned).cues.pose)


@pytest.mark.parametrize("steps, scheduler, warned", [(1, "ddim", False), (4, "ddim", True), (4, "dpm", True)])
def test_sampling_below_the_trained_timesteps_warns(model15, cond15, caplog, steps, scheduler, warned):
    high_noise = replace(model15, info={**model15.info, "extra": {"timesteps": [900, 1000]}})
    with caplog.at_level("WARNING", logger="directanimator.sampling"):
        sample_latents(high_noise, cond15, steps=steps, guidance=1.0, scheduler=scheduler)
    assert ("trained on timesteps 900-999 only" in caplog.text) is warned
    every = replace(model15, info={**model15.info, "extra": {"timesteps": [0, 1000]}})
    for model in (model15, every):  # no record, or every timestep: no warning
        caplog.clear()
        with caplog.at_level("WARNING", logger="directanimator.sampling"):
            sample_latents(model, cond15, steps=steps, guidance=1.0, scheduler=scheduler)
        assert "trained on timesteps" not in caplog.text


# ----------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("options, message", [
    (dict(scheduler="euler"), "scheduler='euler'"),
    (dict(steps=0), "steps=0"),
    (dict(window=2, overlap=2), "overlap=2"),
    (dict(window=2, overlap=0), "groups latent frames by 2"),
    (dict(denoise=0.1, steps=4), "runs no step"),
])
def test_bad_sampling_options_are_refused(model15, cond15, options, message):
    with pytest.raises(InputError, match=message.replace("(", "\\(")):
        sample_latents(model15, cond15, **{"steps": 2, **options})


def test_a_window_other_than_the_learned_length_is_refused():
    model = tiny_animator_model("1.0")
    with pytest.raises(InputError, match="exactly 4 latent frames"):
        animate_triplet(model, synthetic_triplet(21), window=2, overlap=1, steps=1)


def test_sizes_the_backbone_cannot_take_are_refused_before_encoding():
    model = tiny_animator_model("1.0")  # learned positional embeddings for 64x64 only
    encoder_calls = []
    handle = model.vae.encoder.register_forward_pre_hook(lambda *a: encoder_calls.append(1))
    try:
        with pytest.raises(InputError, match="learned positional"):
            encode_conditioning(model, synthetic_triplet(9, height=96, width=PIXELS))
        with pytest.raises(InputError, match="multiples of 16"):
            encode_conditioning(model, synthetic_triplet(9, height=72, width=PIXELS))
    finally:
        handle.remove()
    assert encoder_calls == []


def test_conditioning_that_does_not_fit_the_model_is_refused(model15, cond15):
    wrong = Conditioning(
        reference=torch.zeros(1, 1, 8, GRID, GRID),
        cues=CueLatents(torch.zeros(1, 4, 8, GRID, GRID), torch.zeros(1, 4, 8, GRID, GRID),
                        torch.zeros(1, 4, 1, GRID, GRID), torch.zeros(1, 4, 1, GRID, GRID)),
        num_frames=9, padded_frames=9,
    )
    with pytest.raises(InputError, match="8 channels"):
        sample_latents(model15, wrong, steps=1)
    with pytest.raises(InputError, match="init_latents"):
        sample_latents(model15, cond15, steps=2, denoise=0.5, init_latents=torch.zeros(1, 3, LATENT_CHANNELS, 2, 2))
    with pytest.raises(InputError, match="text_embeds"):
        sample_latents(model15, cond15, steps=1, text_embeds=torch.zeros(1, 8, 5))


def test_animate_checks_options_before_extracting_cues(model15):
    blank = torch.zeros(9, PIXELS, PIXELS, 3)  # no person: extraction would fail with a CueError
    with pytest.raises(InputError, match="scheduler='nope'"):
        animate(model15, blank[:1], blank, scheduler="nope")


REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.mark.real_data
@pytest.mark.slow
def test_animate_runs_from_real_footage_to_the_driving_frame_count_and_rate(model15):
    if not (REAL / "dance_1080x1920_24fps.mp4").exists():
        pytest.skip(f"real footage not found in {REAL}")
    from directanimator.cues.types import CueConfig
    from directanimator.video import read_image, read_video

    clip = read_video(REAL / "dance_1080x1920_24fps.mp4", max_frames=6, stride=4, size=(128, 64))
    reference = read_image(REAL / "ref_real_person.jpg", size=(128, 64))
    steps = []
    result = animate(model15, reference, clip, cue_config=CueConfig(height=128, width=64), steps=2,
                     guidance=2.0, tiling=False, callback=lambda i, n, p: steps.append(i))
    assert result.frames.shape == (6, 128, 64, 3)
    assert result.fps == pytest.approx(clip.fps)
    assert steps == [0, 1]
    assert result.triplet.num_frames == 6
    assert any("padded from 6 to 9" in note for note in result.notes)


def test_animate_refuses_a_working_size_the_backbone_cannot_take_before_extracting_cues():
    from directanimator.cues.types import CueConfig

    model = tiny_animator_model("1.0")  # learned positional embeddings: 64x64 px only
    blank = torch.zeros(9, PIXELS, PIXELS, 3)  # no person: extraction would fail with a CueError
    with pytest.raises(InputError, match="learned positional"):
        animate(model, blank[:1], blank, cue_config=CueConfig(height=96, width=64))


def test_samples_average_the_results_of_consecutive_seeds_and_count_progress_over_all(model15, cond15):
    runs = [sample_latents(model15, cond15, steps=STEPS, guidance=1.0, seed=4 + k) for k in range(3)]
    steps = []
    mean = sample_latents(model15, cond15, steps=STEPS, guidance=1.0, seed=4, samples=3,
                          callback=lambda step, total, preview: steps.append((step, total)))
    torch.testing.assert_close(mean, sum(runs) / 3, rtol=0, atol=1e-6)
    assert (mean - runs[0]).abs().max() > 1e-4
    assert steps == [(i, 3 * STEPS) for i in range(3 * STEPS)]
    assert torch.equal(sample_latents(model15, cond15, steps=STEPS, guidance=1.0, seed=4, samples=1), runs[0])


@pytest.mark.parametrize("samples", [0, -1, 1.5, True])
def test_samples_below_one_or_not_whole_are_refused(model15, cond15, samples):
    with pytest.raises(InputError, match="samples"):
        sample_latents(model15, cond15, steps=STEPS, samples=samples)


def _reference_latent(model, cond):
    """The reference frame in the diffusion scale, computed here from the VAE's scales."""
    return cond.reference.float() * (latent_scale(model.vae) / image_latent_scale(model.vae))


@contextlib.contextmanager
def _residual(model):
    """`model` with ``residual_reference`` on (the same weights), restored afterwards (the fixture is shared)."""
    plain = model.transformer.cue_config
    model.transformer.cue_config = replace(plain, residual_reference=True)
    try:
        yield model
    finally:
        model.transformer.cue_config = plain


@pytest.mark.parametrize("scheduler", ["dpm", "ddim"])
def test_a_residual_model_samples_relative_to_the_reference_in_every_frame(model15, cond15, scheduler):
    # the transformer sees the same inputs either way, so the residual sample is the plain one plus the base
    plain = sample_latents(model15, cond15, steps=3, scheduler=scheduler, seed=2)
    previews = []
    with _residual(model15) as residual:
        out = sample_latents(residual, cond15, steps=3, scheduler=scheduler, seed=2,
                             callback=lambda i, n, p: previews.append(p))
    base = _reference_latent(model15, cond15)
    assert base.abs().mean() > 0.1
    torch.testing.assert_close(out, plain + base, rtol=0, atol=1e-5)
    assert len(previews) == 3 and torch.isfinite(previews[-1]).all()
    plain_previews = []
    sample_latents(model15, cond15, steps=3, scheduler=scheduler, seed=2,
                   callback=lambda i, n, p: plain_previews.append(p))
    # the same trajectory: only the base added to each step's estimate can tell the previews apart
    assert all((a - b).abs().mean() > 1e-3 for a, b in zip(previews, plain_previews))


def test_a_residual_model_starts_partial_denoising_from_the_init_minus_the_base(model15, cond15):
    torch.manual_seed(0)
    init = torch.randn(1, 3, LATENT_CHANNELS, GRID, GRID)
    base = _reference_latent(model15, cond15)
    full = torch.cat([base, init], dim=1)  # what a video-only init becomes: the reference frame leads
    plain = sample_latents(model15, cond15, steps=4, denoise=0.5, init_latents=full - base, seed=1)
    with _residual(model15) as residual:
        out = sample_latents(residual, cond15, steps=4, denoise=0.5, init_latents=init, seed=1)
    torch.testing.assert_close(out, plain + base, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cue, fields", [("pose", ("pose",)), ("face", ("face",)),
                                         ("location", ("body_location", "face_location"))])
def test_blanking_a_cue_zeroes_its_driving_frames_only(cue, fields):
    triplet = synthetic_triplet(3)
    blank = triplet.blanked(cue)
    for name in CueTriplet.TENSOR_FIELDS:
        same = torch.equal(getattr(blank, name), getattr(triplet, name))
        assert (not getattr(blank, name).any()) if name in fields else same, name
    assert blank.record is triplet.record and triplet.pose.any()  # the original is untouched


def test_blanking_an_unknown_cue_names_the_choices():
    with pytest.raises(CueError, match="pose, face, location"):
        synthetic_triplet(1).blanked("skeleton")
