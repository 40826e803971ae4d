"""Image conditioning as each family's diffusers image-to-video pipeline builds it, on tiny models of the real
classes: Wan2.1 I2V (first-frame mask + condition latents, CLIP image embedding), Wan2.2 TI2V (the first-frame
latent), CogVideoX 1.5 I2V (the image latent in the first two latent frames) and CogVideoX 1.0 (frame 0 only)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from directanimator.conditioning import Conditioning, encode_conditioning, image_window
from directanimator.errors import InputError
from directanimator.models.loader import AnimatorModel
from directanimator.sampling import reference_latent
from tests.tiny import (
    LATENT_CHANNELS,
    SMALL,
    TEXT_DIM,
    TEXT_LEN,
    TINY_VAE_CONFIG,
    WAN_IMAGE_DIM,
    WAN_TEXT_LEN,
    WAN_TI2V_CHANNELS,
    synthetic_triplet,
    tiny_animator,
    tiny_clip_vision,
    tiny_wan_vae,
)

I2V_SIDE, TI2V_SIDE = 32, 64  # 4x4 latent cells on both VAEs (8x and 16x)


def _model(layout: str, vae, *, with_clip: bool = True, text_len: int = WAN_TEXT_LEN) -> AnimatorModel:
    encoder, processor = tiny_clip_vision() if with_clip else (None, None)
    return AnimatorModel(transformer=tiny_animator(layout), vae=vae, null_text=torch.zeros(1, text_len, TEXT_DIM),
                         scheduler_config={}, cue_config={}, name=f"tiny-{layout}", image_encoder=encoder,
                         image_processor=processor)


def _triplet_and_image(side: int, frames: int = 9, seed: int = 0):
    """A random triplet whose reference is an 8-bit image, and that image as the PIL image a pipeline user has."""
    triplet = synthetic_triplet(frames, height=side, width=side, seed=seed)
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    reference = torch.from_numpy(array).float()[None] / 255.0
    return replace(triplet, reference=reference), Image.fromarray(array, mode="RGB")


def _wan_pipeline(model: AnimatorModel, *, expand_timesteps: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=model.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                   image_processor=model.image_processor, image_encoder=model.image_encoder,
                                   transformer=model.transformer.backbone, expand_timesteps=expand_timesteps)


@pytest.fixture(scope="module")
def wan_i2v():
    model = _model("wan-i2v", tiny_wan_vae("2.1"))
    triplet, image = _triplet_and_image(I2V_SIDE)
    return model, encode_conditioning(model, triplet), image


def test_wan_i2v_window_equals_the_pipelines_mask_and_condition_latents(wan_i2v):
    model, cond, image = wan_i2v
    pipe = _wan_pipeline(model)
    pixels = pipe.video_processor.preprocess(image, height=I2V_SIDE, width=I2V_SIDE)
    for latent_frames in (cond.latent_frames, 2):
        frames = 4 * (latent_frames - 1) + 1
        with torch.no_grad():
            _, expected = pipe.prepare_latents(pixels, 1, LATENT_CHANNELS, I2V_SIDE, I2V_SIDE, frames, torch.float32,
                                               torch.device("cpu"), None, None)
        window = image_window(model, cond, latent_frames)
        assert window.shape == (1, latent_frames, model.spec.image_channels, 4, 4) == (1, latent_frames, 20, 4, 4)
        torch.testing.assert_close(window, expected.permute(0, 2, 1, 3, 4), rtol=0, atol=1e-6)
    # the later condition latents come from the one causal encode of [image, zero frames]: they are not zero, and
    # the first one is the reference's own latent
    window = image_window(model, cond, cond.latent_frames)
    assert window[:, 1:, 4:].abs().amin(dim=(0, 1, 3, 4)).max() > 0
    torch.testing.assert_close(window[:, :1, 4:], cond.reference, rtol=0, atol=1e-6)
    assert image_window(model, cond, cond.latent_frames) is window  # cached per window length


def test_wan_i2v_clip_embedding_equals_the_pipelines_encode_image(wan_i2v):
    model, cond, image = wan_i2v
    with torch.no_grad():
        expected = _wan_pipeline(model).encode_image(image, torch.device("cpu"))
    assert cond.image_embeds is not None and cond.image_embeds.shape == (1, 17, WAN_IMAGE_DIM)
    torch.testing.assert_close(cond.image_embeds, expected, rtol=0, atol=0)
    # penultimate hidden states, not the last layer's output
    with torch.no_grad():
        inputs = model.image_processor(images=image, return_tensors="pt")
        last = model.image_encoder(**inputs).last_hidden_state
    assert (last - cond.image_embeds).abs().max() > 1e-3


def test_conditioning_to_moves_the_embedding_and_the_cached_windows(wan_i2v):
    model, cond, _ = wan_i2v
    window = image_window(model, cond, 2)
    moved = cond.to(dtype=torch.float64)
    assert moved.image_embeds.dtype == torch.float64 and moved.reference_pixels is cond.reference_pixels
    assert image_window(model, moved, 2).dtype == torch.float64
    torch.testing.assert_close(image_window(model, moved, 2), window.double())


def test_wan_i2v_without_its_image_encoder_is_refused_before_encoding():
    model = _model("wan-i2v", tiny_wan_vae("2.1"), with_clip=False)
    triplet, _ = _triplet_and_image(I2V_SIDE)
    with pytest.raises(InputError, match="image_encoder and image_processor"):
        encode_conditioning(model, triplet)
    wide = _model("wan-i2v", tiny_wan_vae("2.1"))
    wide.image_encoder.config.hidden_size = WAN_IMAGE_DIM + 4
    with pytest.raises(InputError, match="24 wide"):
        encode_conditioning(wide, triplet)


def test_wan_i2v_window_needs_the_reference_pixels(wan_i2v):
    model, cond, _ = wan_i2v
    bare = Conditioning(reference=cond.reference, cues=cond.cues, num_frames=cond.num_frames,
                        padded_frames=cond.padded_frames)
    with pytest.raises(InputError, match="reference_pixels"):
        image_window(model, bare, 2)


def test_wan_ti2v_first_frame_latent_equals_the_pipelines_condition():
    model = _model("wan-ti2v", tiny_wan_vae("2.2"), with_clip=False)
    triplet, image = _triplet_and_image(TI2V_SIDE)
    cond = encode_conditioning(model, triplet)
    assert cond.image_embeds is None and cond.grid == (4, 4)
    assert cond.cues.body_mask.shape == (1, cond.latent_frames, 1, 4, 4)  # masks on the 16x grid
    pipe = _wan_pipeline(model, expand_timesteps=True)
    pixels = pipe.video_processor.preprocess(image, height=TI2V_SIDE, width=TI2V_SIDE)
    frames = 4 * (cond.latent_frames - 1) + 1
    with torch.no_grad():
        _, condition, first_frame_mask = pipe.prepare_latents(pixels, 1, WAN_TI2V_CHANNELS, TI2V_SIDE, TI2V_SIDE,
                                                              frames, torch.float32, torch.device("cpu"), None, None)
    assert condition.shape == (1, WAN_TI2V_CHANNELS, 1, 4, 4) and first_frame_mask[0, 0, 0].abs().max() == 0
    torch.testing.assert_close(reference_latent(model, cond), condition.permute(0, 2, 1, 3, 4), rtol=0, atol=1e-6)
    assert image_window(model, cond, cond.latent_frames).shape == (1, cond.latent_frames, 0, 4, 4)


def test_the_channel_check_follows_the_family():
    triplet, _ = _triplet_and_image(TI2V_SIDE)
    with pytest.raises(InputError, match="Wan2.2"):
        encode_conditioning(_model("wan-i2v", tiny_wan_vae("2.2")), triplet)
    with pytest.raises(InputError, match="'first_frame'"):
        encode_conditioning(_model("wan-ti2v", tiny_wan_vae("2.1"), with_clip=False), triplet)


def _cogvideox_model(layout: str, vae) -> AnimatorModel:
    return _model(layout, vae, with_clip=False, text_len=TEXT_LEN)


@pytest.mark.parametrize("scheduler", ["dpm", "ddim"])
def test_cogvideox_15_sampling_equals_the_pipeline_call(monkeypatch, scheduler):
    """CogVideoX 1.5: our first transformer input and the sampled latents equal CogVideoXImageToVideoPipeline's
    ``__call__``, which pads the latent count to even and keeps the image latent in the (dropped) frame 0 only."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXImageToVideoPipeline
    from diffusers.pipelines.cogvideo import pipeline_cogvideox_image2video as module

    from directanimator.sampling import make_scheduler, sample_latents

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(**TINY_VAE_CONFIG, invert_scale_latents=True).eval()  # as CogVideoX1.5's VAE
    model = AnimatorModel(transformer=tiny_animator("1.5"), vae=vae,
                          null_text=torch.randn(1, TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(2)),
                          scheduler_config={}, cue_config={}, name="tiny-1.5")
    triplet = synthetic_triplet(9, height=SMALL, width=SMALL, seed=1)
    array = np.random.default_rng(1).integers(0, 256, size=(SMALL, SMALL, 3), dtype=np.uint8)
    triplet = replace(triplet, reference=torch.from_numpy(array).float()[None] / 255.0)
    cond = encode_conditioning(model, triplet, tiling=False)
    frames = cond.latent_frames  # 1 reference + 3 driving latents: even, as 1.5 needs
    real = module.retrieve_latents  # the project encodes with the posterior mode, the pipeline samples
    monkeypatch.setattr(module, "retrieve_latents", lambda out, generator=None: real(out, sample_mode="argmax"))
    pipe = CogVideoXImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                         transformer=model.transformer.backbone, scheduler=make_scheduler(scheduler))
    seen = []
    handle = model.transformer.backbone.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True)
    try:
        ours = sample_latents(model, cond, steps=2, guidance=1.0, seed=5, scheduler=scheduler)
        generator = torch.Generator().manual_seed(5)
        noise = torch.randn(1, frames, LATENT_CHANNELS, *cond.grid, generator=generator)
        with torch.no_grad():
            # an odd latent count (the video without our reference frame): the pipeline pads one frame in front
            theirs = pipe(image=Image.fromarray(array), prompt_embeds=model.null_text, height=SMALL, width=SMALL,
                          num_frames=4 * (frames - 2) + 1, num_inference_steps=2, guidance_scale=1.0, latents=noise,
                          generator=generator, output_type="latent", return_dict=False)[0]
    finally:
        handle.remove()
    first_ours, first_theirs = seen[0], seen[2]
    assert first_theirs[0, 0, LATENT_CHANNELS:].abs().max() > 0
    assert first_theirs[0, 1:, LATENT_CHANNELS:].abs().max() == 0  # the image latent in frame 0 only
    torch.testing.assert_close(first_ours, first_theirs, rtol=0, atol=1e-6)
    # with output_type="latent" the pipeline keeps its padded leading frame, as we keep our reference frame
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="temporal patch size 2"):
        image_window(model, cond, frames - 1)


def test_cogvideox_10_window_is_the_reference_then_zeros():
    from tests.tiny import PIXELS, tiny_vae

    model = _cogvideox_model("1.0", tiny_vae())
    triplet, _ = _triplet_and_image(PIXELS, frames=9)
    cond = encode_conditioning(model, triplet)
    window = image_window(model, cond, 4)
    expected = torch.cat([cond.reference, torch.zeros(1, 3, *cond.reference.shape[2:])], dim=1)
    assert torch.equal(window, expected)
    assert cond.image_embeds is None
