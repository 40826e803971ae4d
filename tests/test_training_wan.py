"""Training on Wan backbones: the flow-matching draws and targets, each family's image conditioning in the training
input, LoRA on Wan's attention names and its diffusers export, and the CLI stages on a tiny Wan world."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from directanimator.errors import InputError
from directanimator.models import DirectAnimatorTransformer
from directanimator.models.family import spec_from_config
from tests.tiny import (LATENT, LATENT_CHANNELS, TEXT_DIM, WAN_IMAGE_DIM, WAN_IMAGE_TOKENS, WAN_TEXT_LEN,
                        tiny_backbone, tiny_backbone_config, tiny_cue_latents, tiny_wan_inputs)
from training.data import Batch
from training.flow import FlowMatching, flow_shift, shifted
from training.trainer import denoising_loss, image_conditioning, noised_batch

VIDEO_LATENTS = 2  # target latent frames: 5 pixel frames


def make_batch(*, batch: int = 2, image_channels: int = 0, embeds: bool = False, seed: int = 0,
               drop_reference=(False, True)) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, VIDEO_LATENTS, LATENT_CHANNELS, LATENT, LATENT)
    frames = 1 + VIDEO_LATENTS
    return Batch(
        target=torch.randn(shape, generator=gen),
        reference=torch.randn(batch, 1, LATENT_CHANNELS, LATENT, LATENT, generator=gen),
        cues=tiny_cue_latents(batch=batch, frames=frames),
        text=torch.randn(batch, WAN_TEXT_LEN, TEXT_DIM, generator=gen),
        drop_cues=torch.tensor([False, True]),
        drop_reference=torch.tensor(drop_reference),
        image=torch.randn(batch, frames, image_channels, LATENT, LATENT, generator=gen) if image_channels else None,
        image_embeds=torch.randn(batch, WAN_IMAGE_TOKENS, WAN_IMAGE_DIM, generator=gen) if embeds else None,
    )


def spec(layout: str, **overrides):
    return spec_from_config(tiny_backbone_config(layout, **overrides))


def ti2v16():
    """The TI2V layout (clean first frame) on 16 latent channels, as the Wan training world uses it."""
    return spec("wan-ti2v", in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS)


def test_flow_sigmas_are_logit_normal_then_shifted_by_the_sampling_shift():
    flow = FlowMatching(3.0)
    gen = torch.Generator().manual_seed(0)
    sigmas = torch.stack([flow.sigma(gen) for _ in range(4000)])
    assert 0 < float(sigmas.min()) and float(sigmas.max()) < 1
    # the median of sigmoid(N(0, 1)) is 0.5, shifted by 3 to 0.75: training leans to high noise as sampling does
    assert float(sigmas.median()) == pytest.approx(shifted(0.5, 3.0), abs=0.02) == pytest.approx(0.75, abs=0.02)
    gen = torch.Generator().manual_seed(0)
    plain = torch.sigmoid(torch.stack([torch.randn((), generator=gen) for _ in range(4000)]))
    torch.testing.assert_close(sigmas, 3 * plain / (1 + 2 * plain))
    # run.timestep_min/max squeeze the same draws into the range, shape kept
    narrow = FlowMatching(3.0, (200, 600))
    gen = torch.Generator().manual_seed(0)
    squeezed = torch.stack([narrow.sigma(gen) for _ in range(4000)])
    torch.testing.assert_close(squeezed, 0.2 + 0.4 * sigmas)


def test_the_flow_shift_comes_from_the_backbones_scheduler_config():
    assert flow_shift({"flow_shift": 5.0, "use_flow_sigmas": True}) == 5.0  # UniPC, as the Wan folders ship it
    assert flow_shift({"shift": 3.0}) == 3.0  # FlowMatchEulerDiscreteScheduler
    with pytest.raises(InputError, match="flow_shift"):
        flow_shift({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"})  # a DDPM config


def test_wan_is_noised_on_the_straight_line_with_the_velocity_as_target():
    s = spec("wan-i2v")
    batch = make_batch(image_channels=s.image_channels, embeds=True)
    flow = FlowMatching(3.0)
    noised = noised_batch(batch, None, [torch.Generator().manual_seed(k) for k in range(2)], reference_factor=1.0,
                          t_range=(0, 1000), spec=s, flow=flow)
    x0 = torch.cat([batch.reference, batch.target], dim=1)
    noise, sigma = [], []
    for k in range(2):  # each sample's generator draws its noise, then its sigma
        g = torch.Generator().manual_seed(k)
        noise.append(torch.randn(x0.shape[1:], generator=g))
        sigma.append(flow.sigma(g))
    noise, sigma = torch.stack(noise), torch.stack(sigma)
    assert noised.timesteps.dtype == torch.float32 and noised.timesteps.shape == (2,)
    torch.testing.assert_close(noised.timesteps, sigma * 1000)
    s5 = sigma.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noised.inputs[:, :, :LATENT_CHANNELS], (1 - s5) * x0 + s5 * noise)
    torch.testing.assert_close(noised.target, noise - x0)
    # Wan2.1 I2V: mask + condition latent from the cache after the noisy latents, zero for a dropped reference;
    # the CLIP embedding likewise
    torch.testing.assert_close(noised.inputs[0, :, LATENT_CHANNELS:], batch.image[0])
    assert not noised.inputs[1, :, LATENT_CHANNELS:].any() and noised.inputs.shape[2] == s.in_channels
    torch.testing.assert_close(noised.image_embeds[0], batch.image_embeds[0])
    assert not noised.image_embeds[1].any()
    assert noised.clean_frames == 0 and "image_embeds" in noised.forward_kwargs()


def test_wan_i2v_without_the_cached_conditioning_is_named():
    s = spec("wan-i2v")
    with pytest.raises(InputError, match="mask and condition latents"):
        noised_batch(make_batch(), None, torch.Generator(), reference_factor=1.0, t_range=(0, 1000), spec=s,
                     flow=FlowMatching(3.0))
    with pytest.raises(InputError, match="CLIP image embedding"):
        noised_batch(make_batch(image_channels=s.image_channels), None, torch.Generator(), reference_factor=1.0,
                     t_range=(0, 1000), spec=s, flow=FlowMatching(3.0))


def test_ti2v_gives_the_clean_reference_as_frame_zero_at_timestep_zero_and_no_loss_there():
    s = ti2v16()
    assert s.image_conditioning == "first_frame" and s.image_channels == 0
    batch = make_batch()
    noised = noised_batch(batch, None, torch.Generator().manual_seed(1), reference_factor=1.0, t_range=(0, 1000),
                          spec=s, flow=FlowMatching(5.0))
    assert noised.inputs.shape[2] == LATENT_CHANNELS  # no image channels
    torch.testing.assert_close(noised.inputs[0, 0], batch.reference[0, 0])  # clean reference latent
    assert not noised.inputs[1, 0].any()  # a dropped reference: a blank clean frame
    assert noised.timesteps.shape == (2, 1 + VIDEO_LATENTS)
    assert (noised.timesteps[:, 0] == 0).all() and (noised.timesteps[:, 1:] > 0).all()
    assert (noised.timesteps[:, 1:] == noised.timesteps[:, 1:2]).all()
    assert noised.clean_frames == 1 and "image_embeds" not in noised.forward_kwargs()
    # the loss leaves frame 0 out: a prediction wrong only there costs nothing
    wrong_first = noised.target.clone()
    wrong_first[:, 0] += 10.0
    assert float(denoising_loss(wrong_first, noised.target, clean_frames=1)) == 0.0
    assert float(denoising_loss(wrong_first, noised.target)) > 1.0


def test_the_transformer_takes_each_wan_training_input():
    for layout, overrides in (("wan-i2v", {}), ("wan-ti2v", dict(in_channels=LATENT_CHANNELS,
                                                                   out_channels=LATENT_CHANNELS))):
        model = DirectAnimatorTransformer(tiny_backbone(layout, **overrides)).eval()
        s = model.spec
        batch = make_batch(image_channels=s.image_channels, embeds=s.image_embed_dim is not None)
        noised = noised_batch(batch, None, torch.Generator().manual_seed(0), reference_factor=1.0,
                              t_range=(0, 1000), spec=s, flow=FlowMatching(3.0))
        with torch.no_grad():
            prediction = model(noised.inputs, batch.text, noised.timesteps, cues=batch.cues,
                               **noised.forward_kwargs())
        assert prediction.shape == noised.target.shape, layout
        assert torch.isfinite(denoising_loss(prediction, noised.target, clean_frames=noised.clean_frames))


def test_the_image_conditioning_is_the_samplers_image_window():
    """Training builds the image channels as sampling does (`image_window`, each family's pipeline): CogVideoX 1.0
    and 1.5 the reference latent in frame 0; Wan2.2 TI2V none (its reference is the clean frame 0)."""
    from types import SimpleNamespace

    from directanimator.conditioning import image_window

    batch = make_batch(drop_reference=(False, True))
    keep = (~batch.drop_reference).float().view(-1, 1, 1, 1, 1)
    for layout in ("1.0", "1.5"):
        image = image_conditioning(spec(layout), batch, keep, 4)
        model = SimpleNamespace(transformer=SimpleNamespace(spec=spec(layout)))
        window = image_window(model, SimpleNamespace(reference=batch.reference[:1]), 4)
        torch.testing.assert_close(image[:1], window)
        assert not image[1].any()  # a dropped reference
    assert image_conditioning(ti2v16(), batch, keep, 4) is None


def test_lora_lands_on_wans_attention_and_exports_under_its_diffusers_names(tmp_path):
    from diffusers import WanImageToVideoPipeline

    from training.config import TrainConfig
    from training.lora_format import adapter_weights, write_diffusers_lora
    from training.trainer import setup_trainable

    model = DirectAnimatorTransformer(tiny_backbone("wan-i2v"))
    config = TrainConfig()
    config.model.lora_rank, config.model.lora_alpha, config.model.gradient_checkpointing = 4, 4.0, False
    config.model.lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]
    setup_trainable(model, config)
    tensors, lora_config = adapter_weights(model)
    layers = model.spec.num_layers
    for n in range(layers):
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                assert f"blocks.{n}.{attn}.{proj}.lora_A.weight" in tensors, (n, attn, proj)
        # Wan2.1 I2V's image-context projections when asked for
        assert f"blocks.{n}.attn2.add_k_proj.lora_B.weight" in tensors
    assert not any(".block." in k or "fusion" in k for k in tensors)
    with torch.no_grad():  # a trained LoRA: B no longer zero
        gen = torch.Generator().manual_seed(3)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    tensors, lora_config = adapter_weights(model)
    path = write_diffusers_lora(tmp_path, tensors, lora_config, family="wan")
    state, metadata = WanImageToVideoPipeline.lora_state_dict(str(path.parent), return_lora_metadata=True)
    assert set(state) == {f"transformer.{k}" for k in tensors}
    # diffusers' Wan pipeline loads it into the plain backbone: the same prediction as the trained model's bare path
    plain = tiny_backbone("wan-i2v")
    WanImageToVideoPipeline.load_lora_into_transformer(state, transformer=plain, metadata=metadata)
    inputs = tiny_wan_inputs("wan-i2v")
    with torch.no_grad():
        ours = model.eval()(inputs["hidden_states"], inputs["encoder_hidden_states"], inputs["timestep"],
                            image_embeds=inputs["image_embeds"])
        theirs = plain.eval()(hidden_states=inputs["hidden_states"].permute(0, 2, 1, 3, 4),
                              encoder_hidden_states=inputs["encoder_hidden_states"], timestep=inputs["timestep"],
                              encoder_hidden_states_image=inputs["image_embeds"], return_dict=False)[0]
    bare = tiny_backbone("wan-i2v").eval()(hidden_states=inputs["hidden_states"].permute(0, 2, 1, 3, 4),
                                           encoder_hidden_states=inputs["encoder_hidden_states"],
                                           timestep=inputs["timestep"],
                                           encoder_hidden_states_image=inputs["image_embeds"], return_dict=False)[0]
    torch.testing.assert_close(ours, theirs.permute(0, 2, 1, 3, 4), rtol=1e-4, atol=1e-5)
    assert (theirs - bare).abs().max() > 1e-3  # the LoRA changes the output
    # the default targets (to_q, to_k, to_v, to_out.0) reach both attentions of every Wan block
    default = DirectAnimatorTransformer(tiny_backbone("wan-i2v"))
    config.model.lora_targets = TrainConfig().model.lora_targets
    setup_trainable(default, config)
    names = [n for n, p in default.named_parameters() if p.requires_grad and "lora_A" in n]
    assert len(names) == layers * 2 * 4 and all(".block.attn" in n for n in names)


# ------------------------------------------------------------------------------------------------ CLI on a Wan world
@pytest.fixture(scope="module")
def i2v_world(tmp_path_factory):
    """The training world with a tiny Wan2.1-I2V-layout folder (CLIP image encoder included), prepared."""
    from tests.training_world import make_wan_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2-core machine is shared: one thread is faster for these small tensors
    root = tmp_path_factory.mktemp("wan_i2v")
    data, model = make_wan_world(root, "wan-i2v")
    yield root, data, model
    torch.set_num_threads(threads)


def cli(*args: str) -> None:
    from training.cli import main

    assert main(list(args)) == 0, args


@pytest.mark.slow
def test_prepare_stage1_pseudo_stage2_export_and_validate_run_unchanged_on_wan_i2v(i2v_world):
    import json

    from safetensors import safe_open

    from directanimator.models import load_model
    from tests.training_world import CONFIG, overrides
    from training.data import CachedClips
    from training.config import load_config
    from training.trainer import read_metrics

    root, data, model = i2v_world

    def sets(*extra: str, metadata=data) -> list[str]:
        return [f"--set={o}" for o in overrides(root, metadata, model, *extra)]

    cli("prepare", str(CONFIG), *sets())
    cached = CachedClips(load_config(CONFIG, overrides(root, data, model)))
    sample = cached.load(0)
    # the Wan2.1 I2V conditioning is cached per window: mask (4) + condition latent (16) per latent frame, CLIP tokens
    assert sample["image"].shape == (1 + sample["target"].shape[0], 4 + LATENT_CHANNELS, LATENT, LATENT)
    assert sample["image"][0, :4].eq(1).all() and sample["image"][1:, :4].eq(0).all()
    assert sample["image_embeds"].shape[-1] == WAN_IMAGE_DIM
    assert cached.null_text.shape[-2:] == (WAN_TEXT_LEN, TEXT_DIM)

    cli("stage1", str(CONFIG), *sets("run.name='s1'", "run.steps=4", "run.save_every=4", "run.validate_every=4",
                                      "run.validate_clips=1", "run.validate_steps=2"))
    validated = json.loads((root / "runs" / "s1" / "samples" / "validation.jsonl").read_text().splitlines()[0])
    assert validated["step"] == 4 and validated["scheduler"] == "unipc"  # sampled with the CLIP embedding
    records = read_metrics(root / "runs" / "s1")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in records)
    stage1 = root / "runs" / "s1" / "checkpoints" / "step_000004" / "model.safetensors"
    trained = load_model(model, stage1, dtype="fp32")
    assert trained.info["weights"] == "lora" and trained.info["extra"]["timesteps"] == [0, 1000]

    pseudo = root / "pseudo"
    cli("pseudo", "render", "--backbone", str(model), "--checkpoint", str(stage1), "--metadata", str(data),
        "--out", str(pseudo), "--steps", "2", "--guidance", "1.0")
    entries = [json.loads(line) for line in (pseudo / "metadata.jsonl").read_text().splitlines()]
    assert sum(e.get("pseudo_source") == "directanimator" for e in entries) == 3  # the train split
    cli("prepare", str(CONFIG), *sets(metadata=pseudo))
    cli("stage2", str(CONFIG), *sets("run.name='s2'", "run.steps=3", "run.save_every=3", "stage2.lambda_ramp_steps=0",
                                      f"model.checkpoint={json.dumps(str(stage1))}", metadata=pseudo))
    records = read_metrics(root / "runs" / "s2")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:  # S2X on Wan: the student's tokens after block D against the frozen stage-1 teacher's
        assert -1.0 <= r["s2x"] <= 1.0 and r["denoise"] > 0
        assert r["loss"] == pytest.approx(r["denoise"] + r["lambda"] * r["s2x"], rel=1e-5)

    exported = root / "stage2.safetensors"
    cli("export", str(root / "runs" / "s2"), "--backbone", str(model), "--out", str(exported),
        "--lora-format", "diffusers")
    with safe_open(str(root / "stage2_lora" / "pytorch_lora_weights.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "transformer.blocks.1.attn2.to_out.0.lora_B.weight" in keys

    cli("validate", "--backbone", str(model), "--checkpoint", str(exported), "--metadata", str(data),
        "--out", str(root / "val"), "--steps", "2", "--max-clips", "1")
    record = json.loads((root / "val" / "validation.jsonl").read_text().splitlines()[0])
    assert record["scheduler"] == "unipc" and record["psnr"] is not None and record["frames"] == 5


def test_a_reference_mode_of_the_cogvideox_layout_is_refused_on_wan(i2v_world):
    from tests.training_world import CONFIG, overrides
    from training.config import load_config
    from training.trainer import load_student

    root, data, model = i2v_world
    with pytest.raises(InputError, match="model.residual_reference=true"):
        load_student(load_config(CONFIG, overrides(root, data, model, "model.residual_reference=true")))


# ------------------------------------------------------------------------------------------------ it animates
ANIMATION_STEPS = 300  # stage-1 steps on one clip (about 20 s on one idle core)


@pytest.fixture(scope="module")
def animation_world(tmp_path_factory):
    from tests.training_world import make_wan_animation_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("wan_anim")
    data, model = make_wan_animation_world(root)
    yield root, data, model
    torch.set_num_threads(threads)


def world_pair(data, entry: dict, *, frames: int, stride: int):
    """The entry's reference, its clip's window (`frames` frames `stride` apart) and the exact cue triplet."""
    from safetensors.torch import load_file

    from directanimator.cues import CueConfig, extract_cues
    from directanimator.video import read_image, read_video
    from training.world.cues import truth_cue_inputs

    pick = slice(0, (frames - 1) * stride + 1, stride)
    clip = read_video(data / entry["clip"], fps=float(entry["fps"])).frames[pick]
    reference = read_image(data / entry["reference"])
    inputs = {k: v[pick] if k.startswith("driving") else v
              for k, v in truth_cue_inputs(load_file(str(data / entry["ground_truth"]))).items()}
    config = CueConfig(height=64, width=64, grid_cell=8, grid_blur=2.0, segmenter="given", face_detector="given")
    return reference, clip, extract_cues(reference, clip, config, **inputs)


@pytest.mark.slow
def test_a_tiny_wan_trained_by_the_cli_animates_the_world_better_than_the_static_reference(animation_world):
    """Flow-matching stage 1 through the CLI on one world clip, then the Wan sampler animates that clip from its
    reference and cues: over the pixels that move, closer to the truth than the reference held still (the demo
    model's comparison, directanimator.demo.motion_scores), where the untrained model is not."""
    from directanimator.metrics import moving_difference, moving_pixels, static_frames
    from directanimator.models import load_model
    from directanimator.pipeline import animate_triplet
    from tests.training_world import CONFIG, overrides
    from training.trainer import read_metrics
    from training.validate import read_entries

    root, data, model = animation_world
    sets = [f"--set={o}" for o in overrides(
        root, data, model, "data.split='val'", "data.frames=9", "data.stride=2", "model.train='full'",
        "optim.lr=2e-3", "data.cue_dropout=0.0", "data.reference_dropout=0.0", "run.name='anim'",
        f"run.steps={ANIMATION_STEPS}", f"run.save_every={ANIMATION_STEPS}", "run.log_every=1")]
    cli("prepare", str(CONFIG), *sets)
    cli("stage1", str(CONFIG), *sets)
    losses = [r["loss"] for r in read_metrics(root / "runs" / "anim")]
    first, last = sum(losses[:10]) / 10, sum(losses[-25:]) / 25
    assert last < 0.7 * first, (first, last)
    entry = next(e for e in read_entries(data / "metadata.jsonl") if e.get("split") == "val")
    reference, clip, triplet = world_pair(data, entry, frames=9, stride=2)
    static = static_frames(reference, clip)
    moving = moving_pixels(static, clip)
    assert float(moving.float().mean()) > 0.02  # the clip moves
    checkpoint = root / "runs" / "anim" / "checkpoints" / f"step_{ANIMATION_STEPS:06d}" / "model.safetensors"
    errors = {}
    for name, ckpt in (("trained", checkpoint), ("untrained", None)):
        animator = load_model(model, ckpt, dtype="fp32")
        with torch.no_grad():
            result = animate_triplet(animator, triplet, steps=8, guidance=1.0, scheduler="euler", seed=0,
                                     fps=float(entry["fps"])).frames
        errors[name] = moving_difference(result, clip, moving)
    errors["static"] = moving_difference(static, clip, moving)
    assert errors["trained"] < 0.85 * errors["static"], errors
    assert errors["untrained"] > 0.85 * errors["static"], errors  # the same bar: training is what meets it


def test_stage1_trains_the_wan22_ti2v_layout_on_its_48_channel_16x_vae(tmp_path):
    """The real TI2V layout: 48 latent channels from a Wan2.2 VAE (4x16x16): prepare caches its latents and cues on
    the 16x grid, stage 1 feeds the clean reference as frame 0 at timestep 0 and learns."""
    from tests.training_world import CONFIG, make_wan_world, overrides
    from training.config import load_config
    from training.data import CachedClips, make_batch as collate
    from training.prepare import prepare
    from training.stage1 import stage1_loss, train_stage1
    from training.trainer import Trainer, load_student

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data, model = make_wan_world(tmp_path, "wan2.2-ti2v")
        config = load_config(CONFIG, overrides(tmp_path, data, model, "run.steps=3", "run.save_every=3"))
        prepare(config)
        clips = CachedClips(config)
        sample = clips.load(0)
        assert sample["reference"].shape == (1, 48, 4, 4) and sample["cues.pose"].shape[1:] == (48, 4, 4)
        trainer = Trainer(config, load_student(config), clips, stage1_loss, stage=1)
        assert trainer.flow is not None and trainer.flow.shift == 3.0 and trainer.scheduler is None
        trainer._generators = [torch.Generator().manual_seed(0)]
        batch = collate(clips, [0], trainer._generators)
        batch.drop_reference[:] = False
        noised = trainer.noised(batch)
        torch.testing.assert_close(noised.inputs[:, 0], batch.reference[:, 0])
        assert noised.timesteps.shape == (1, 3) and noised.timesteps[0, 0] == 0 and noised.timesteps[0, 1] > 0
        records = train_stage1(config)
        assert len(records) == 3 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    finally:
        torch.set_num_threads(threads)


def test_a_resumed_wan_run_continues_the_uninterrupted_one_exactly(i2v_world):
    """The flow draws (noise, then sigma) come from each sample's own generator like CogVideoX's, so a run stopped
    and resumed logs the losses of the run that never stopped."""
    from tests.training_world import CONFIG, overrides
    from training.config import load_config
    from training.prepare import prepare
    from training.stage1 import train_stage1

    root, data, model = i2v_world
    common = ("run.save_every=2", "run.log_every=1", "optim.ema_decay=0.5")
    prepare(load_config(CONFIG, overrides(root, data, model)))
    whole = train_stage1(load_config(CONFIG, overrides(root, data, model, "run.name='whole'", "run.steps=4", *common)))
    train_stage1(load_config(CONFIG, overrides(root, data, model, "run.name='split'", "run.steps=2", *common)))
    resumed = train_stage1(load_config(CONFIG, overrides(root, data, model, "run.name='split'", "run.steps=4",
                                                         *common)), resume="latest")
    assert [r["step"] for r in resumed] == [3, 4]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole[2:]]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in whole[2:]]


def test_a_bucket_the_wan_backbone_cannot_take_is_refused_before_any_clip_is_read(tmp_path):
    from tests.training_world import CONFIG, overrides, save_wan_model
    from training.config import load_config
    from training.prepare import prepare

    model = save_wan_model(tmp_path / "model", "wan2.2-ti2v")  # 16x VAE and 2x2 patches: 32 px steps
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.jsonl").write_text('{"clip": "missing.mp4", "fps": 12}\n')
    config = load_config(CONFIG, overrides(tmp_path, data, model, "data.buckets=[[64, 80]]"))
    with pytest.raises(InputError, match="64x80 px is not a multiple of 32 px"):
        prepare(config)
    long = load_config(CONFIG, overrides(tmp_path, data, model, "data.frames=257"))  # 66 latent frames > 64
    with pytest.raises(InputError, match="rotary table of 64 positions"):
        prepare(long)


def test_the_cache_key_follows_the_clip_image_encoder_and_its_processor(tmp_path):
    import json

    from tests.training_world import CONFIG, overrides, save_wan_model
    from training.config import load_config
    from training.data import cache_key

    model = save_wan_model(tmp_path / "model", "wan-i2v")
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.jsonl").write_text('{"clip": "a.mp4", "fps": 12}\n')
    config = load_config(CONFIG, overrides(tmp_path, data, model))
    before = cache_key(config)
    processor = model / "image_processor" / "preprocessor_config.json"
    settings = json.loads(processor.read_text())
    processor.write_text(json.dumps({**settings, "image_mean": [0.5, 0.5, 0.5]}))  # other cached embeddings
    assert cache_key(config) != before


def test_the_shipped_wan_config_fits_wan21_i2v_14b(tmp_path):
    """training/configs/wan2.1_i2v_14b_lora.toml: windows of Wan's own 81 frames (reference + 20 video latents) at
    its 480P buckets, which the bundled Wan2.1-I2V-14B config accepts."""
    from directanimator.models.configs import backbone_config
    from directanimator.models.transformer import check_latent_shape_for
    from training.config import load_config

    (tmp_path / "metadata.jsonl").write_text("")
    config = load_config(Path(__file__).resolve().parents[1] / "training" / "configs" / "wan2.1_i2v_14b_lora.toml",
                         [f"data.metadata='{tmp_path / 'metadata.jsonl'}'"])
    assert config.model.backbone.startswith("Wan-AI/Wan2.1-I2V-14B")
    latents = 1 + (config.data.frames - 1) // 4 + 1
    assert latents == 21
    for height, width in config.data.buckets:
        check_latent_shape_for(backbone_config("wan2.1-i2v-14b"), latents, height // 8, width // 8)
    assert config.stage2.depth < 40 and config.stage2.teacher_mode == "lora_disabled"
