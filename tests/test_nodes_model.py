"""The model nodes chain loader -> encode -> sampler -> decode on a tiny saved model, as a ComfyUI graph would."""

import pytest
import torch

import nodes._comfy as comfy_shim
from directanimator.errors import InputError
from nodes.model import (
    NO_CHECKPOINT,
    NO_FOLDER,
    DirectAnimatorDecode,
    DirectAnimatorEncode,
    DirectAnimatorModelLoader,
    DirectAnimatorSampler,
)
from tests.test_pipeline import SMALL, synthetic_triplet
from tests.tiny import TEXT_DIM, TEXT_LEN, save_tiny_diffusers

FRAMES = 7  # not 4k+1: padded to 9 and trimmed back


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = save_tiny_diffusers(tmp_path_factory.mktemp("tiny") / "cogvideox-tiny", "1.5")
    (loaded,) = DirectAnimatorModelLoader().load(str(folder), "", NO_CHECKPOINT, "fp32", False)
    return loaded


@pytest.fixture(scope="module")
def conditioning(model):
    (cond,) = DirectAnimatorEncode().encode(model, synthetic_triplet(FRAMES, height=SMALL, width=SMALL), 12.0, False)
    return cond


def test_graph_returns_exactly_the_driving_frame_count_at_its_fps(model, conditioning):
    (latent,) = DirectAnimatorSampler().sample(model, conditioning, 2, 1.0, 7, "dpm", 0, 0, 1.0)
    assert latent["samples"].ndim == 5 and latent["samples"].shape[1] == 16  # ComfyUI video layout [B, C, F, h, w]
    frames, fps = DirectAnimatorDecode().decode(model, latent, False)
    assert frames.shape == (FRAMES, SMALL, SMALL, 3) and fps == 12.0
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0


def test_same_seed_same_latent_and_text_conditioning_changes_it(model, conditioning):
    run = lambda cond, seed: DirectAnimatorSampler().sample(model, cond, 2, 1.0, seed, "ddim", 0, 0, 1.0)[0]
    a, b = run(conditioning, 3)["samples"], run(conditioning, 3)["samples"]
    assert torch.equal(a, b)
    text = [[torch.randn(1, TEXT_LEN + 3, TEXT_DIM), {"pooled_output": None}]]
    (with_text,) = DirectAnimatorEncode().encode(model, synthetic_triplet(FRAMES, height=SMALL, width=SMALL),
                                                 12.0, False, text=text)
    assert with_text["text"].shape == (1, TEXT_LEN, TEXT_DIM)
    assert not torch.equal(run(with_text, 3)["samples"], a)


def test_text_conditioning_of_another_width_is_refused(model):
    text = [[torch.randn(1, 4, TEXT_DIM + 1), {}]]
    with pytest.raises(InputError, match="T5-XXL"):
        DirectAnimatorEncode().encode(model, synthetic_triplet(FRAMES, height=SMALL, width=SMALL), 12.0, False,
                                      text=text)


def test_cancel_stops_sampling_at_the_next_step(model, conditioning, monkeypatch):
    steps = []

    def cancel_on_second_step():
        steps.append(1)
        if len(steps) == 2:
            raise InterruptedError("cancelled")

    monkeypatch.setattr(comfy_shim, "check_interrupted", cancel_on_second_step)
    with pytest.raises(InterruptedError):
        DirectAnimatorSampler().sample(model, conditioning, 5, 1.0, 0, "dpm", 0, 0, 1.0)
    assert len(steps) == 2


def test_cross_field_validation_before_execution():
    message = DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=NO_FOLDER, repo_id=" ")
    assert isinstance(message, str) and "repo id" in message
    assert "overlap" in DirectAnimatorSampler.VALIDATE_INPUTS(window=4, overlap=4)
    assert DirectAnimatorSampler.VALIDATE_INPUTS(window=0, overlap=3) is True


def test_denoise_below_one_needs_a_latent(model, conditioning):
    with pytest.raises(InputError, match="latent to refine"):
        DirectAnimatorSampler().sample(model, conditioning, 4, 1.0, 0, "dpm", 0, 0, 0.5)
