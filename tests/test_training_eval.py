"""Evaluation side of training: PSNR/SSIM, validation sampling, pseudo pairs, face-cue perturbation, export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from directanimator.errors import CheckpointError, InputError
from directanimator.models import load_model, save_checkpoint
from directanimator.video import read_image, read_video, write_video
from tests.tiny import PIXELS, save_tiny_diffusers, tiny_animator_model, tiny_cue_latents, tiny_inputs
from training.checkpointing import save_training_checkpoint
from training.export import export_model, export_training_checkpoint
from directanimator.metrics import frame_psnr, frame_ssim, psnr, ssim
from training.pseudo import choose_partners, ingest_pseudo, perturb_face_cue, render_pseudo
from training.validate import RESULTS, held_out_entries, read_entries, validate_model
from training.world import WorldConfig
from training.world.export import export_world

WORLD = WorldConfig(height=PIXELS, width=PIXELS, num_frames=5, identities=4, turn_probability=0.0)


# ------------------------------------------------------------------------------------------------ metrics


def test_identical_frames_have_infinite_psnr_and_ssim_one():
    torch.manual_seed(0)
    x = torch.rand(3, 24, 20, 3)
    assert psnr(x, x) == math.inf
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)


def test_psnr_of_a_known_error():
    x = torch.full((2, 16, 16, 3), 0.5)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2 - 1  # +-1
    y = x + 0.05 * checker[None, :, :, None]  # every pixel off by exactly 0.05: MSE 0.0025
    assert psnr(y, x) == pytest.approx(10 * math.log10(1 / 0.0025), abs=1e-4)  # 26.0206 dB
    torch.manual_seed(0)
    grey = torch.full((2, 64, 64, 3), 0.5)
    noisy = grey + 0.1 * torch.randn(grey.shape)  # sigma 0.1 -> 20 dB, within the sampling error of 24576 values
    assert psnr(noisy, grey) == pytest.approx(20.0, abs=0.1)
    assert frame_psnr(y, x).shape == (2,)


def test_ssim_of_constant_frames_is_the_luminance_term():
    a, b = torch.full((1, 16, 16, 3), 0.4), torch.full((1, 16, 16, 3), 0.6)
    c1 = 0.01 ** 2
    assert ssim(a, b) == pytest.approx((2 * 0.4 * 0.6 + c1) / (0.4 ** 2 + 0.6 ** 2 + c1), abs=1e-5)


def test_ssim_falls_with_noise_is_symmetric_and_negative_for_inverted_structure():
    torch.manual_seed(0)
    x = torch.rand(2, 32, 32, 3)
    light, heavy = ((x + s * torch.randn(x.shape)).clamp(0, 1) for s in (0.05, 0.3))
    assert 1.0 > ssim(light, x) > ssim(heavy, x) > 0.0
    assert ssim(light, x) == pytest.approx(ssim(x, light), abs=1e-6)
    assert ssim(1 - x, x) < 0
    assert frame_ssim(x, x).shape == (2,)
    with pytest.raises(InputError, match="same"):
        psnr(x, x[:1])


# ------------------------------------------------------------------------------------------------ data and model


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    export_world(root, WORLD, clips=3, val_clips=1, fmt="png", seed=0)
    return root


@pytest.fixture(scope="module")
def model():
    return tiny_animator_model("1.0", randomize_cues=True)


# ------------------------------------------------------------------------------------------------ validation


def test_held_out_pairs_are_val_entries_first_then_cross_identity_pairs():
    entries = [{"clip": "a"}, {"clip": "b", "cross_target": "x"}, {"clip": "c", "split": "val"},
               {"clip": "d", "split": "val", "cross_target": "y"}]
    assert [e["clip"] for e in held_out_entries(entries, max_clips=10)] == ["c", "d", "b"]
    assert [e["clip"] for e in held_out_entries(entries, max_clips=2)] == ["c", "d"]


@pytest.mark.slow
def test_validation_samples_held_out_pairs_and_scores_them(world, model, tmp_path):
    records = validate_model(model, world, tmp_path, max_clips=1, steps=1, guidance=1.0, seed=0)
    assert [r["split"] for r in records] == ["val"]
    for record in records:
        assert record["kind"] == "cross" and record["exact_cues"]
        video = read_video(tmp_path / record["video"], fps=12.0).frames
        assert video.shape == (WORLD.num_frames, PIXELS, PIXELS, 3)
        assert read_image(tmp_path / record["sheet"]).shape == (1, 3 * PIXELS, 4 * PIXELS, 3)
        assert 0 < record["psnr"] < 60 and -1 <= record["ssim"] <= 1
    again = validate_model(model, world / "metadata.jsonl", tmp_path, max_clips=1, steps=1, guidance=1.0, step=3)
    lines = [json.loads(line) for line in (tmp_path / RESULTS).read_text().splitlines()]
    assert len(lines) == 2 and lines[-1]["step"] == 3 and again[0]["video"].startswith("step0000003_")
    assert again[0]["psnr"] == pytest.approx(records[0]["psnr"])  # same seed, same pair: same result
    averaged = validate_model(model, world, tmp_path / "mean", max_clips=1, steps=1, guidance=1.0, samples=2)
    assert averaged[0]["samples"] == 2 and records[0]["samples"] == 1
    assert averaged[0]["psnr"] != pytest.approx(records[0]["psnr"])


def test_validation_without_held_out_pairs_is_refused(tmp_path, model):
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"clip": "videos/0.mp4", "fps": 12}) + "\n")
    with pytest.raises(InputError, match="held-out"):
        validate_model(model, tmp_path, tmp_path / "out", max_clips=1, steps=1)


# ------------------------------------------------------------------------------------------------ pseudo pairs


def test_partners_are_other_identities_and_reproducible():
    entries = [{"identity": i} for i in ("a", "a", "b", "c")]
    partners = choose_partners(entries, seed=1)
    assert all(entries[p]["identity"] != e["identity"] for e, p in zip(entries, partners))
    assert partners == choose_partners(entries, seed=1)
    assert choose_partners([{"identity": "a"}, {"identity": "a"}]) == [None, None]


@pytest.mark.slow
def test_render_pseudo_writes_another_identity_performing_each_clip(world, model, tmp_path):
    out = tmp_path / "pseudo_set"
    entries = render_pseudo(model, world, out, steps=1, guidance=1.0, max_clips=1)
    source = read_entries(world)
    assert len(entries) == len(source) == len(read_entries(out))
    made = [e for e in entries if e.get("pseudo_source") == "directanimator"]
    assert len(made) == 1 and Path(made[0]["clip"]).name == Path(source[0]["clip"]).name
    for entry in made:
        assert entry["pseudo_identity"] != entry["identity"] and entry["pseudo_truth"] is False
        frames = read_video(out / entry["pseudo_driving"], fps=entry["fps"]).frames
        assert frames.shape[0] == entry["num_frames"]
    for entry in entries:  # every path still resolves from the new metadata file
        for key in ("clip", "reference", "ground_truth", "cross_target"):
            assert (out / entry[key]).exists(), (key, entry[key])
    with pytest.raises(InputError, match="new folder"):
        render_pseudo(model, world, world, steps=1)


def test_ingest_attaches_clips_by_stem_and_checks_frame_counts(world, tmp_path):
    made = tmp_path / "other_animator"
    made.mkdir()
    stem = Path(read_entries(world)[0]["clip"]).name
    write_video(made / f"{stem}.mp4", torch.rand(WORLD.num_frames, PIXELS, PIXELS, 3), 12.0)
    write_video(made / "unrelated.mp4", torch.rand(WORLD.num_frames, PIXELS, PIXELS, 3), 12.0)
    entries = ingest_pseudo(world, made, tmp_path / "set", identity="animatorX")
    assert entries[0]["pseudo_identity"] == "animatorX" and entries[0]["pseudo_source"] == "other_animator"
    assert (tmp_path / "set" / entries[0]["pseudo_driving"]).resolve() == (made / f"{stem}.mp4").resolve()
    assert all("pseudo_source" not in e for e in entries[1:])
    write_video(made / f"{stem}.mp4", torch.rand(WORLD.num_frames + 4, PIXELS, PIXELS, 3), 12.0)
    with pytest.raises(InputError, match="frame counts"):
        ingest_pseudo(world, made, tmp_path / "set2")
    assert not (tmp_path / "set2" / "metadata.jsonl").exists()


def _face_clip(frames: int = 4) -> torch.Tensor:
    size = 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    face = ((yy - 16) ** 2 / 144 + (xx - 16) ** 2 / 100 < 1).float()
    eyes = ((yy - 12) ** 2 + (xx - 11) ** 2 < 5) | ((yy - 12) ** 2 + (xx - 21) ** 2 < 5)
    rgb = torch.stack([face * 0.8, face * 0.6, face * 0.5], -1)
    rgb[eyes] = 0.1
    clip = rgb[None].repeat(frames, 1, 1, 1)
    clip[-1] = 0  # a frame without a face
    return clip


def test_face_perturbation_changes_identity_cues_but_keeps_the_face_and_blank_frames():
    clip = _face_clip()
    out = perturb_face_cue(clip, strength=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == clip.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[-1], clip[-1])  # no face stays no face
    assert (out[:-1] - clip[:-1]).abs().mean() > 0.02  # colours and shape changed
    assert ssim(out[:-1], clip[:-1]) > 0.3  # still the same face layout
    assert torch.allclose(out[0], out[1])  # one draw per clip: expression over time untouched
    same = perturb_face_cue(clip, strength=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    assert torch.equal(perturb_face_cue(clip, strength=0.0), clip)
    with pytest.raises(InputError, match="strength"):
        perturb_face_cue(clip, strength=2.0)


# ------------------------------------------------------------------------------------------------ export


def _trained(folder: Path, seed: int):
    """A model loaded from the tiny backbone folder, with a LoRA and cue weights set as if trained."""
    from peft import LoraConfig

    animator = load_model(folder, dtype="fp32")
    transformer = animator.transformer
    transformer.requires_grad_(False)
    transformer.backbone.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name or any(name.startswith(p) for p in ("pose_embed", "face_embed", "shared_mod")) \
                    or ".fusion." in name:
                param.requires_grad_(True)
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return animator


def _output(transformer) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**tiny_inputs(), cues=tiny_cue_latents())


@pytest.fixture(scope="module")
def backbone_folder(tmp_path_factory) -> Path:
    return save_tiny_diffusers(tmp_path_factory.mktemp("backbone"), "1.0")


@pytest.mark.parametrize("weights", ["lora", "merged"])
def test_exported_checkpoint_loads_and_matches_the_trained_module(backbone_folder, tmp_path, weights):
    trained = _trained(backbone_folder, seed=1)
    path = export_model(trained.transformer, tmp_path / "model.safetensors", weights=weights,
                        null_text=torch.ones(1, 8, 32), scheduler_config=trained.scheduler_config)
    loaded = load_model(backbone_folder, path, dtype="fp32")
    torch.testing.assert_close(_output(loaded.transformer), _output(trained.transformer), rtol=1e-5, atol=1e-5)
    assert loaded.info["weights"] == ("lora" if weights == "lora" else "full")
    assert torch.equal(loaded.null_text, torch.ones(1, 8, 32))


@pytest.mark.slow
def test_training_checkpoint_folder_exports_ema_or_raw_weights(backbone_folder, tmp_path):
    raw, ema = _trained(backbone_folder, seed=1), _trained(backbone_folder, seed=2)
    trainable = {n: p for n, p in raw.transformer.named_parameters() if p.requires_grad}
    ema_state = {n: p for n, p in ema.transformer.named_parameters() if p.requires_grad}
    step = save_training_checkpoint(
        tmp_path / "run", 7, trainable=trainable, ema=ema_state, state={"step": 7},
        write_model=lambda p: save_checkpoint(p, ema.transformer, null_text=ema.null_text))
    with_ema = export_training_checkpoint(tmp_path / "run", tmp_path / "ema.safetensors", backbone=backbone_folder)
    without = export_training_checkpoint(step, tmp_path / "raw.safetensors", backbone=backbone_folder, use_ema=False)
    for path, expected in ((with_ema, ema), (without, raw)):
        loaded = load_model(backbone_folder, path, dtype="fp32")
        torch.testing.assert_close(_output(loaded.transformer), _output(expected.transformer), rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        export_training_checkpoint(tmp_path, tmp_path / "x.safetensors", backbone=backbone_folder)


def test_a_full_backbone_run_exports_its_trained_backbone_by_default(backbone_folder, tmp_path):
    animator = load_model(backbone_folder, dtype="fp32")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every weight trained, as in a `model.train = "full"` run
        for param in animator.transformer.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    trainable = dict(animator.transformer.named_parameters())
    step = save_training_checkpoint(
        tmp_path / "run", 5, trainable=trainable, state={"step": 5},
        write_model=lambda p: save_checkpoint(p, animator.transformer, weights="full", null_text=animator.null_text))
    path = export_training_checkpoint(step, tmp_path / "full.safetensors", backbone=backbone_folder)
    loaded = load_model(backbone_folder, path, dtype="fp32")
    assert loaded.info["weights"] == "full"
    torch.testing.assert_close(_output(loaded.transformer), _output(animator.transformer), rtol=1e-5, atol=1e-5)


def test_export_refuses_a_checkpoint_file_changed_since_it_was_saved(backbone_folder, tmp_path):
    trained = _trained(backbone_folder, seed=1)
    trainable = {n: p for n, p in trained.transformer.named_parameters() if p.requires_grad}
    step = save_training_checkpoint(
        tmp_path / "run", 3, trainable=trainable, ema=trainable, state={"step": 3},
        write_model=lambda p: save_checkpoint(p, trained.transformer, null_text=trained.null_text))
    for name, use_ema in (("model.safetensors", True), ("trainable.safetensors", False)):
        original = (step / name).read_bytes()
        damaged = bytearray(original)
        damaged[-1] ^= 0xFF  # a value changed; the file still parses
        (step / name).write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match=rf"step_000003: {name} differs from the sha256"):
            export_training_checkpoint(step, tmp_path / "out.safetensors", backbone=backbone_folder, use_ema=use_ema)
        assert not (tmp_path / "out.safetensors").exists()
        (step / name).write_bytes(original)
    export_training_checkpoint(step, tmp_path / "out.safetensors", backbone=backbone_folder)  # intact: exports


def test_pseudo_datasets_are_written_only_into_new_or_their_own_folders(world, tmp_path):
    made = tmp_path / "other_animator"
    made.mkdir()
    stem = Path(read_entries(world)[0]["clip"]).name
    write_video(made / f"{stem}.mp4", torch.rand(WORLD.num_frames, PIXELS, PIXELS, 3), 12.0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metadata.jsonl").write_text('{"clip": "my.mp4"}\n')  # another dataset: not overwritten
    with pytest.raises(InputError, match=r"--out .*mine: the folder is not empty"):
        ingest_pseudo(world, made, mine)
    assert (mine / "metadata.jsonl").read_text() == '{"clip": "my.mp4"}\n'
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "metadata.jsonl").write_bytes(b"\xff\xfe not text")  # unreadable as text: refused, no traceback
    with pytest.raises(InputError, match=r"--out .*binary: the folder is not empty"):
        ingest_pseudo(world, made, binary)
    ingest_pseudo(world, made, tmp_path / "set")
    entries = ingest_pseudo(world, made, tmp_path / "set", identity="again")  # its own output: replaced
    assert entries[0]["pseudo_identity"] == "again" == read_entries(tmp_path / "set")[0]["pseudo_identity"]
