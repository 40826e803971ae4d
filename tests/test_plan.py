"""sampling_plan and frames_from_latents: the one answer to how a loaded model samples, and back to frames."""

from __future__ import annotations

import pytest
import torch

from directanimator.cues import CueConfig
from directanimator.errors import InputError
from directanimator.pipeline import animate_triplet
from directanimator.plan import cue_config_for, frames_from_latents, sampling_plan
from directanimator.vae_io import decode_latents
from tests.tiny import LATENT, SMALL, synthetic_triplet, tiny_animator_model


@pytest.fixture(scope="module")
def learned():
    """CogVideoX 1.0 layout: a learned positional table for 4 latent frames at 8x8 latents."""
    return tiny_animator_model("1.0")


@pytest.fixture(scope="module")
def rotary():
    """CogVideoX 1.5 layout: rotary only, temporal patches of 2, any size and length."""
    return tiny_animator_model("1.5", randomize_cues=True)


def test_learned_positional_embeddings_fix_the_working_size_and_the_window(learned):
    plan = sampling_plan(learned)
    assert plan.size == (LATENT * 8, LATENT * 8)
    assert plan.working_size((480, 270)) == (LATENT * 8, LATENT * 8)  # not the driving video's
    assert (plan.fixed_latent_frames, plan.reference_frames, plan.window) == (4, 1, 3)
    assert plan.frame_count(5) == 9 and plan.video_latents(5) == 3  # padded to the fixed 3 video latents
    assert plan.latent_shape((480, 270), 5) == (4, LATENT, LATENT)


def test_a_size_the_caller_gives_wins_over_the_learned_one(learned):
    plan = sampling_plan(learned, options={"height": 128, "width": 96})
    assert plan.size == (128, 96) and plan.latent_shape((64, 64), 5) == (4, 16, 12)


def test_without_learned_positions_the_driving_video_sets_size_and_length(rotary):
    plan = sampling_plan(rotary)
    assert plan.size is None and plan.window is None and plan.fixed_latent_frames is None
    assert plan.working_size((96, 64)) == (96, 64)
    assert plan.frame_count(5) == 9  # 1 + 2 latents is odd: one more for the temporal patches of 2
    assert plan.latent_shape((96, 64), 5) == (4, 12, 8)


def test_the_models_cue_options_then_the_callers(rotary):
    saved = CueConfig(cutoff=0.3, anchor="clip", grid_cell=8).to_dict()
    config = cue_config_for(saved, anchor="first", options={"grid_cell": 4})
    assert (config.cutoff, config.anchor, config.grid_cell) == (0.3, "first", 4)
    assert cue_config_for(saved, default_size=64).height == 64  # the model names no size
    assert cue_config_for({**saved, "height": 96, "width": 96}, default_size=64).height == 96
    given = CueConfig(cutoff=0.5)
    assert sampling_plan(rotary, cue_config=given).cue_config.cutoff == 0.5
    with pytest.raises(InputError, match="cue_config: expected a CueConfig"):
        sampling_plan(rotary, cue_config={"cutoff": 0.5})


@pytest.mark.slow
def test_frames_drop_the_reference_decode_and_trim_as_animate_does(rotary):
    result = animate_triplet(rotary, synthetic_triplet(5, height=SMALL, width=SMALL), steps=1, guidance=1.0)
    latents = result.latents  # the reference frame, then 3 video latents (9 padded frames)
    assert latents.shape[1] == 4
    expected = decode_latents(rotary.vae, latents[:, 1:])[:5]  # computed here, not by frames_from_latents
    frames = frames_from_latents(rotary, latents, num_frames=5)
    assert torch.equal(frames, expected) and frames.shape == (5, SMALL, SMALL, 3)
    assert torch.equal(result.frames, expected)
    whole = frames_from_latents(rotary, latents)
    assert whole.shape[0] == 9 and torch.equal(whole, decode_latents(rotary.vae, latents[:, 1:]))
    with pytest.raises(InputError, match="reference frame first"):
        frames_from_latents(rotary, latents[:, :1])
