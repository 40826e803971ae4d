"""Sampling on Wan backbones, checked against diffusers' own Wan image-to-video pipeline on tiny models of the real
classes: the flow-matching samplers (UniPC with flow sigmas, flow-match Euler) with the Wan pipelines' shift, the
family's image conditioning in every forward (Wan2.1 I2V: mask + condition latents + CLIP embedding; Wan2.2 TI2V:
the clean reference latent as frame 0 at timestep 0), context windows, partial denoising, scheduler names per
family and the working-size rule of each VAE; and CogVideoX's loop, unchanged, against its own pipeline."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from directanimator.conditioning import encode_conditioning
from directanimator.errors import InputError
from directanimator.models.configs import default_scheduler_config
from directanimator.models.loader import AnimatorModel
from directanimator.plan import sampling_plan
from directanimator.sampling import (
    SCHEDULER_CHOICES,
    default_scheduler,
    make_scheduler,
    reference_latent,
    resolve_scheduler,
    sample_latents,
    scheduler_names,
    warn_untrained_timesteps,
)
from directanimator.vae_io import latent_preview
from tests.tiny import (
    LATENT_CHANNELS,
    SMALL,
    TEXT_DIM,
    WAN_TEXT_LEN,
    WAN_TI2V_CHANNELS,
    synthetic_triplet,
    tiny_animator,
    tiny_animator_model,
    tiny_clip_vision,
    tiny_wan_vae,
)

SIDES = {"wan-i2v": 32, "wan-ti2v": 64}  # 4x4 latent cells on Wan2.1's 8x and Wan2.2's 16x VAE
CHANNELS = {"wan-i2v": LATENT_CHANNELS, "wan-ti2v": WAN_TI2V_CHANNELS}
FRAMES = 13  # driving frames: 4 video latent frames after the reference


def _model(layout: str) -> AnimatorModel:
    encoder, processor = tiny_clip_vision() if layout == "wan-i2v" else (None, None)
    return AnimatorModel(transformer=tiny_animator(layout), vae=tiny_wan_vae("2.1" if layout == "wan-i2v" else "2.2"),
                         null_text=torch.randn(1, WAN_TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(3)),
                         scheduler_config={}, cue_config={}, name=f"tiny-{layout}", image_encoder=encoder,
                         image_processor=processor)


def _inputs(layout: str, frames: int = FRAMES):
    """A random triplet whose reference is an 8-bit image, and that image as the PIL image a pipeline user has."""
    side = SIDES[layout]
    triplet = synthetic_triplet(frames, height=side, width=side, seed=1)
    array = np.random.default_rng(1).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    return replace(triplet, reference=torch.from_numpy(array).float()[None] / 255.0), Image.fromarray(array, "RGB")


@pytest.fixture(scope="module", params=["wan-i2v", "wan-ti2v"])
def wan(request):
    layout = request.param
    model = _model(layout)
    triplet, image = _inputs(layout)
    return layout, model, encode_conditioning(model, triplet), image


class BackboneCalls:
    """The keyword inputs of every call of the raw Wan backbone (what diffusers' pipeline calls too)."""

    def __init__(self, model):
        self.calls: list[dict] = []
        self._handle = model.transformer.backbone.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def _noise(cond, channels: int, seed: int) -> torch.Tensor:
    """The initial noise `sample_latents` draws: a CPU generator seeded with `seed`, ``[1, 1 + N, C, h, w]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, cond.latent_frames, channels, *cond.grid, generator=generator)


def _pipeline_latents(layout, model, cond, image, scheduler: str, steps: int, seed: int):
    from diffusers import WanImageToVideoPipeline

    side = SIDES[layout]
    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=model.vae, image_processor=model.image_processor,
        image_encoder=model.image_encoder, transformer=model.transformer.backbone,
        scheduler=make_scheduler(scheduler, default_scheduler_config(model.spec), spec=model.spec),
        expand_timesteps=layout == "wan-ti2v")
    noise = _noise(cond, CHANNELS[layout], seed).permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        out = pipe(image=image, prompt_embeds=model.null_text, height=side, width=side,
                   num_frames=4 * (cond.latent_frames - 1) + 1, num_inference_steps=steps, guidance_scale=1.0,
                   latents=noise, output_type="latent", return_dict=False)[0]
    return out.permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_sampling_equals_the_diffusers_wan_pipeline_with_the_cues_at_zero(wan, scheduler):
    # zero cue modules: the model is the bare backbone, so each step must be the pipeline's
    layout, model, cond, image = wan
    for steps in (1, 3):
        with BackboneCalls(model) as ours:
            latents = sample_latents(model, cond, steps=steps, guidance=1.0, seed=5, scheduler=scheduler)
        with BackboneCalls(model) as theirs:
            expected = _pipeline_latents(layout, model, cond, image, scheduler, steps, seed=5)
        assert len(ours.calls) == len(theirs.calls) == steps
        first, reference = ours.calls[0], theirs.calls[0]
        torch.testing.assert_close(first["hidden_states"], reference["hidden_states"], rtol=0, atol=1e-6)
        torch.testing.assert_close(first["timestep"].float(), reference["timestep"].float(), rtol=0, atol=0)
        if layout == "wan-i2v":
            torch.testing.assert_close(first["encoder_hidden_states_image"], reference["encoder_hidden_states_image"],
                                       rtol=0, atol=0)
        else:
            assert first["encoder_hidden_states_image"] is None
        torch.testing.assert_close(latents, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("wan", ["wan-ti2v"], indirect=True)
def test_ti2v_keeps_the_reference_latent_clean_in_frame_0_at_timestep_0(wan):
    layout, model, cond, _ = wan
    randomized = tiny_animator(layout, randomize_cues=True)
    model = replace(model, transformer=randomized)
    ref = reference_latent(model, cond)
    tokens_per_frame = (cond.grid[0] // 2) * (cond.grid[1] // 2)
    with BackboneCalls(model) as calls:
        latents = sample_latents(model, cond, steps=3, guidance=2.0, seed=1, window=2, overlap=1)
    assert torch.equal(latents[:, :1], ref)
    assert len(calls.calls) == 3 * 3 * 2  # 3 steps x 3 windows x (cues, no cues)
    for call in calls.calls:
        x = call["hidden_states"].permute(0, 2, 1, 3, 4)  # [1, F, C, h, w]
        torch.testing.assert_close(x[:, :1], ref, rtol=0, atol=0)
        t = call["timestep"].reshape(1, x.shape[1], tokens_per_frame)
        assert t[:, 0].abs().max() == 0 and (t[:, 1:] > 0).all()


def test_one_window_covering_the_video_equals_no_windows_and_windows_carry_the_reference(wan):
    layout, model, cond, _ = wan
    model = replace(model, transformer=tiny_animator(layout, randomize_cues=True))
    n = cond.video_latent_frames
    single = sample_latents(model, cond, steps=2, guidance=2.0, seed=3)
    covering = sample_latents(model, cond, steps=2, guidance=2.0, seed=3, window=n)
    assert torch.equal(single, covering)
    with BackboneCalls(model) as calls:
        windowed = sample_latents(model, cond, steps=2, guidance=1.0, seed=3, window=2, overlap=1)
    assert {call["hidden_states"].shape[2] for call in calls.calls} == {3}  # reference + 2 video latent frames
    assert windowed.shape == single.shape and torch.isfinite(windowed).all()
    if layout == "wan-i2v":  # the first-frame mask and the reference's condition latent lead every window
        for call in calls.calls:
            mask = call["hidden_states"][:, LATENT_CHANNELS:LATENT_CHANNELS + 4]
            assert mask[:, :, 0].min() == 1 and mask[:, :, 1:].abs().max() == 0
            torch.testing.assert_close(call["hidden_states"][:, LATENT_CHANNELS + 4:, :1],
                                       cond.reference.permute(0, 2, 1, 3, 4), rtol=0, atol=1e-6)


def test_guidance_drops_the_cues_and_keeps_the_image_conditioning(wan):
    layout, model, cond, _ = wan
    model = replace(model, transformer=tiny_animator(layout, randomize_cues=True))
    with BackboneCalls(model) as calls:
        sample_latents(model, cond, steps=1, guidance=3.0, seed=0)
    positive, negative = calls.calls
    assert torch.equal(positive["hidden_states"], negative["hidden_states"])
    if layout == "wan-i2v":
        assert torch.equal(positive["encoder_hidden_states_image"], negative["encoder_hidden_states_image"])
    plain = sample_latents(model, cond, steps=1, guidance=1.0, seed=0)
    guided = sample_latents(model, cond, steps=1, guidance=3.0, seed=0)
    assert (plain - guided).abs().max() > 1e-4


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_partial_denoising_starts_from_the_init_noised_by_the_flow(wan, scheduler):
    layout, model, cond, _ = wan
    init = torch.randn(1, cond.video_latent_frames, CHANNELS[layout], *cond.grid,
                       generator=torch.Generator().manual_seed(7))
    with BackboneCalls(model) as calls:
        out = sample_latents(model, cond, steps=4, denoise=0.5, init_latents=init, guidance=1.0, seed=2,
                             scheduler=scheduler)
    assert len(calls.calls) == 2 and torch.isfinite(out).all()
    sched = make_scheduler(scheduler, spec=model.spec)
    sched.set_timesteps(4)
    sigma = float(sched.sigmas[2])
    assert 0 < sigma < 1 and float(calls.calls[0]["timestep"].reshape(-1).max()) == pytest.approx(
        float(sched.timesteps[2]))
    noise = _noise(cond, CHANNELS[layout], 2)
    expected = (1 - sigma) * init + sigma * noise[:, 1:]  # the video frames; frame 0 is the reference's
    first = calls.calls[0]["hidden_states"].permute(0, 2, 1, 3, 4)[:, 1:, :CHANNELS[layout]]
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-5)


def test_flow_previews_are_the_predicted_clean_latents(wan):
    layout, model, cond, _ = wan
    previews = []
    out = sample_latents(model, cond, steps=2, guidance=1.0, seed=4, scheduler="euler",
                         callback=lambda i, n, p: previews.append((i, n, p)))
    assert [(i, n) for i, n, _ in previews] == [(0, 2), (1, 2)]
    # Euler's last step lands on sigma 0, where the sample is its own clean estimate
    torch.testing.assert_close(previews[-1][2], latent_preview(out[:, 1:]), rtol=0, atol=1e-5)
    assert (previews[0][2] - previews[1][2]).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------- scheduler names
def test_each_family_takes_its_own_scheduler_names_and_defaults():
    wan_model, cog_model = _model("wan-ti2v"), tiny_animator_model("1.5")
    assert scheduler_names(wan_model) == ("euler", "unipc") and default_scheduler(wan_model) == "unipc"
    assert scheduler_names(cog_model) == ("ddim", "dpm") and default_scheduler(cog_model) == "dpm"
    assert set(SCHEDULER_CHOICES) == {"auto", "dpm", "ddim", "unipc", "euler"}
    assert resolve_scheduler(wan_model, None) == resolve_scheduler(wan_model, "auto") == "unipc"
    assert resolve_scheduler(cog_model.transformer.spec, "auto") == "dpm"


@pytest.mark.parametrize("layout, name, listed", [
    ("wan-i2v", "dpm", "['euler', 'unipc']"), ("wan-ti2v", "ddim", "['euler', 'unipc']"),
    ("1.5", "unipc", "['ddim', 'dpm']"), ("1.5", "nope", "['ddim', 'dpm']"),
])
def test_a_scheduler_of_the_other_family_is_refused_before_any_work(layout, name, listed):
    if layout.startswith("wan"):
        model = _model(layout)
        triplet, _ = _inputs(layout, frames=5)
        cond = encode_conditioning(model, triplet)
    else:
        model = tiny_animator_model(layout)
        cond = encode_conditioning(model, synthetic_triplet(9, height=SMALL, width=SMALL), tiling=False)
    message = f"scheduler='{name}'.*" + listed.replace("[", ".")
    with BackboneCalls(model) as calls, pytest.raises(InputError, match=message):
        sample_latents(model, cond, steps=2, scheduler=name)
    assert calls.calls == []


def test_auto_samples_with_the_family_default(wan):
    layout, model, cond, _ = wan
    auto = sample_latents(model, cond, steps=2, guidance=1.0, seed=1, scheduler="auto")
    assert torch.equal(auto, sample_latents(model, cond, steps=2, guidance=1.0, seed=1, scheduler="unipc"))
    assert torch.equal(auto, sample_latents(model, cond, steps=2, guidance=1.0, seed=1))
    cog = tiny_animator_model("1.5")
    cog_cond = encode_conditioning(cog, synthetic_triplet(9, height=SMALL, width=SMALL), tiling=False)
    assert torch.equal(sample_latents(cog, cog_cond, steps=2, seed=1),
                       sample_latents(cog, cog_cond, steps=2, seed=1, scheduler="dpm"))


def test_the_bundled_scheduler_configs_carry_each_backbones_flow_shift():
    from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    shifts = {name: default_scheduler_config(name)["flow_shift"]
              for name in ("wan2.1-i2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p", "wan2.2-ti2v-5b")}
    assert shifts == {"wan2.1-i2v-14b": 3.0, "wan2.1-i2v-14b-480p": 3.0, "wan2.1-i2v-14b-720p": 5.0,
                      "wan2.2-ti2v-5b": 5.0}
    i2v, ti2v = _model("wan-i2v").spec, _model("wan-ti2v").spec
    assert default_scheduler_config(i2v)["flow_shift"] == 3.0 and default_scheduler_config(ti2v)["flow_shift"] == 5.0
    config = default_scheduler_config("wan2.1-i2v-14b-720p")
    unipc = make_scheduler("unipc", config, spec=i2v)
    assert isinstance(unipc, UniPCMultistepScheduler) and unipc.config.use_flow_sigmas
    assert unipc.config.prediction_type == "flow_prediction" and unipc.config.flow_shift == 5.0
    euler = make_scheduler("euler", config, spec=i2v)
    assert isinstance(euler, FlowMatchEulerDiscreteScheduler) and euler.config.shift == 5.0
    # both start from pure noise, and the larger shift keeps every step at more noise than the 480P one
    for name in ("unipc", "euler"):
        high = make_scheduler(name, config, spec=i2v)
        low = make_scheduler(name, default_scheduler_config("wan2.1-i2v-14b-480p"), spec=i2v)
        high.set_timesteps(4)
        low.set_timesteps(4)
        assert float(high.sigmas[0]) == pytest.approx(1.0, abs=1e-5)
        assert (high.sigmas[1:-1] > low.sigmas[1:-1] + 0.01).all()
    # "auto" follows the config's class; a CogVideoX config on a Wan backbone gives way to the bundled default
    assert isinstance(make_scheduler("auto", {**euler.config, "_class_name": "FlowMatchEulerDiscreteScheduler"},
                                     spec=i2v), FlowMatchEulerDiscreteScheduler)
    fallback = make_scheduler(None, default_scheduler_config(), spec=ti2v)
    assert isinstance(fallback, UniPCMultistepScheduler) and fallback.config.flow_shift == 5.0
    # make_scheduler's "auto" builds the class a config names (CogVideoX's shipped config: DDIM); sampling's "auto"
    # is the family default, resolved before (dpm on CogVideoX, as always)
    assert isinstance(make_scheduler("auto", default_scheduler_config()), CogVideoXDDIMScheduler)
    assert resolve_scheduler("v_prediction", "auto") == "dpm"
    assert isinstance(make_scheduler("ddim"), CogVideoXDDIMScheduler)
    with pytest.raises(InputError, match="scheduler config for 'wan9'"):
        default_scheduler_config("wan9")


def test_residual_reference_is_refused_on_wan(wan):
    """A Wan model cannot be built in the CogVideoX-only residual mode, so no sampler ever sees one."""
    from directanimator.models import CueFusionConfig, DirectAnimatorTransformer
    from tests.tiny import tiny_backbone

    layout, _, _, _ = wan
    with pytest.raises(InputError, match="residual_reference"):
        DirectAnimatorTransformer(tiny_backbone(layout), config=CueFusionConfig(residual_reference=True))


def test_untrained_flow_timesteps_are_warned_about(caplog):
    model = replace(_model("wan-ti2v"), info={"extra": {"timesteps": [900, 1000]}})
    sched = make_scheduler("euler", spec=model.spec)
    with caplog.at_level(logging.WARNING, logger="directanimator.sampling"):
        below = warn_untrained_timesteps(model, sched, steps=4)
    assert below and all(isinstance(t, float) and t < 900 for t in below) and "trained on timesteps" in caplog.text
    assert warn_untrained_timesteps(model, sched, steps=1) == []  # one step: t = 1000


# ----------------------------------------------------------------------------------------------- sizes and counts
def test_the_working_size_follows_each_vaes_multiple():
    wan22, wan21 = sampling_plan(_model("wan-ti2v")), sampling_plan(_model("wan-i2v"))
    assert (wan22.size_multiple, wan21.size_multiple) == (32, 16)
    assert wan21.working_size((208, 336)) == (208, 336)  # the cue options' rule: 16 px multiples
    assert wan21.cue_config_for((208, 336)) is wan21.cue_config
    assert wan22.working_size((208, 336)) == (224, 352)  # 32 px multiples, halves up
    config = wan22.cue_config_for((208, 336))
    assert (config.height, config.width) == (224, 352) and wan22.working_size((224, 352)) == (224, 352)
    with pytest.raises(InputError, match="multiples of 32 px"):
        sampling_plan(_model("wan-ti2v"), options={"height": 80, "width": 96}).latent_shape((80, 96), 9)
    # any length in one pass (rotary), latent frames from the VAE's 4x temporal compression
    assert wan22.window is None and wan22.frame_count(10) == 13 and wan22.video_latents(10) == 4
    assert wan22.latent_shape((64, 64), 13) == (5, 4, 4)


def test_the_cli_offers_every_scheduler_name_and_defaults_to_auto():
    from directanimator.cli import build_parser

    base = ["animate", "--reference", "r.png", "--driving", "d.mp4", "--model", "m", "--out", "o.mp4"]
    assert build_parser().parse_args(base).scheduler == "auto"
    for name in SCHEDULER_CHOICES:
        assert build_parser().parse_args([*base, "--scheduler", name]).scheduler == name
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--scheduler", "heun"])


@pytest.mark.parametrize("layout", ["wan-i2v", "wan-ti2v"])
def test_animate_triplet_on_wan_gives_the_driving_frame_count(layout):
    from directanimator.pipeline import animate_triplet

    model = _model(layout)
    triplet, _ = _inputs(layout, frames=7)  # padded to 9 frames: 3 video latent frames
    result = animate_triplet(model, triplet, steps=2, guidance=1.5, window=2, overlap=1)
    side = SIDES[layout]
    assert result.frames.shape == (7, side, side, 3) and torch.isfinite(result.frames).all()
    assert result.latents.shape == (1, 4, CHANNELS[layout], 4, 4)
    assert any("padded from 7 to 9" in note for note in result.notes)
    assert any("context windows of 2" in note for note in result.notes)


# ----------------------------------------------------------------------------------------------- CogVideoX unchanged
@pytest.mark.parametrize("scheduler", ["dpm", "ddim"])
def test_cogvideox_sampling_equals_the_diffusers_image_to_video_pipeline(monkeypatch, scheduler):
    # the 5B layout (learned positional embeddings, image latent in frame 0): the sampler's own loop, not Wan's,
    # with the scheduler's noise from the same generator (DPM is stochastic)
    from diffusers import CogVideoXImageToVideoPipeline
    from diffusers.pipelines.cogvideo import pipeline_cogvideox_image2video as module

    from tests.tiny import PIXELS, TEXT_LEN

    model = replace(tiny_animator_model("1.0"),
                    null_text=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(2)))
    triplet = synthetic_triplet(9, height=PIXELS, width=PIXELS, seed=1)
    array = np.random.default_rng(1).integers(0, 256, size=(PIXELS, PIXELS, 3), dtype=np.uint8)
    cond = encode_conditioning(model, replace(triplet, reference=torch.from_numpy(array).float()[None] / 255.0),
                               tiling=False)
    real = module.retrieve_latents  # the project encodes the reference with the posterior mode
    monkeypatch.setattr(module, "retrieve_latents", lambda out, generator=None: real(out, sample_mode="argmax"))
    pipe = CogVideoXImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=model.vae,
                                         transformer=model.transformer.backbone, scheduler=make_scheduler(scheduler))
    assert cond.latent_frames == 4
    with BackboneCalls(model) as ours:
        latents = sample_latents(model, cond, steps=2, guidance=1.0, seed=5, scheduler=scheduler)
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(1, 4, LATENT_CHANNELS, *cond.grid, generator=generator)
    with BackboneCalls(model) as theirs, torch.no_grad():
        expected = pipe(image=Image.fromarray(array), prompt_embeds=model.null_text, height=PIXELS, width=PIXELS,
                        num_frames=13, num_inference_steps=2, guidance_scale=1.0, latents=noise, generator=generator,
                        output_type="latent", return_dict=False)[0]
    torch.testing.assert_close(ours.calls[0]["hidden_states"], theirs.calls[0]["hidden_states"], rtol=0, atol=1e-6)
    torch.testing.assert_close(latents, expected, rtol=0, atol=1e-5)


def test_animate_refuses_a_wan21_i2v_without_its_clip_tower_before_extracting_cues(monkeypatch):
    import directanimator.cues as cues
    from directanimator.pipeline import animate

    def extracted(*args, **kwargs):
        raise AssertionError("the cues were extracted before the check")

    monkeypatch.setattr(cues, "extract_cues", extracted)
    model = replace(_model("wan-i2v"), image_encoder=None, image_processor=None)
    with pytest.raises(InputError, match="no image_encoder and image_processor"):
        animate(model, torch.rand(1, 64, 64, 3), torch.rand(5, 64, 64, 3), steps=1)
