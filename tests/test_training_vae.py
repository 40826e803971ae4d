"""Training the demo model's VAE from scratch: it learns, saves a diffusers folder with a measured latent scale,
resumes exactly, and refuses impossible settings before training."""

from __future__ import annotations

import json

import pytest
import torch

from directanimator.errors import InputError
from tests.training_world import MICRO
from training.cli import main
from training.vae import (
    REPORT,
    VAE_DIR,
    ClipPool,
    build_vae,
    clips_from_world,
    load_vae_config,
    sample_batch,
    train_vae,
    vae_loss,
)
from training.world import WorldConfig, export_world


@pytest.fixture(scope="module")
def pool():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield clips_from_world(3, size=64, frames=9, val_clips=1, seed=0)
    torch.set_num_threads(threads)


def fixed_loss(vae, batch, config) -> float:
    with torch.no_grad():
        return float(vae_loss(vae, batch, config, torch.Generator().manual_seed(5))[0])


@pytest.mark.slow
def test_a_few_steps_reduce_the_reconstruction_loss(pool, tmp_path):
    torch.manual_seed(0)
    config = load_vae_config([*MICRO, "steps=25", "lr=3e-3", "save_every=100"])
    batch = sample_batch(pool, config, torch.Generator().manual_seed(1))
    before = fixed_loss(build_vae(config, seed=config.seed), batch, config)
    train_vae(pool, tmp_path / "run", config)
    from diffusers import AutoencoderKLCogVideoX

    trained = AutoencoderKLCogVideoX.from_pretrained(tmp_path / "run" / VAE_DIR)
    after = fixed_loss(trained, batch, config)
    assert after < 0.7 * before, (before, after)


@pytest.mark.slow
def test_saved_folder_loads_with_16_channel_latents_and_a_measured_scaling_factor(pool, tmp_path):
    from diffusers import AutoencoderKLCogVideoX

    config = load_vae_config([*MICRO, "steps=3", "save_every=100"])
    report = train_vae(pool, tmp_path / "run", config)
    folder = tmp_path / "run" / VAE_DIR
    assert any(p.suffix == ".safetensors" for p in folder.iterdir())
    vae = AutoencoderKLCogVideoX.from_pretrained(folder).eval()
    assert vae.config.latent_channels == 16
    assert vae.config.scaling_factor == pytest.approx(report["scaling_factor"])
    assert vae.config.scaling_factor != 1.15258426  # the class default was replaced by the measured value
    # 1 / std of the posterior means: scaled latents of training windows have unit standard deviation
    batch = sample_batch(pool, config, torch.Generator().manual_seed(3))
    with torch.no_grad():
        latents = vae.encode(batch).latent_dist.mean
    assert latents.shape[1:] == (16, 3, 4, 4)  # 9 frames -> 3 latent frames, 32 px -> 4 cells
    assert float((latents * vae.config.scaling_factor).std()) == pytest.approx(1.0, abs=0.35)
    saved = json.loads((tmp_path / "run" / REPORT).read_text())
    assert saved["steps"] == 3 and saved["held_out_clips"] == 1 and saved["held_out_psnr"] > 0


@pytest.mark.slow
def test_resume_continues_exactly_where_the_run_stopped(pool, tmp_path):
    common = [*MICRO, "lr=1e-3", "save_every=2"]
    train_vae(pool, tmp_path / "whole", load_vae_config([*common, "steps=4"]))
    train_vae(pool, tmp_path / "split", load_vae_config([*common, "steps=2"]))
    with pytest.raises(InputError, match="already has checkpoints"):
        train_vae(pool, tmp_path / "split", load_vae_config([*common, "steps=4"]))
    train_vae(pool, tmp_path / "split", load_vae_config([*common, "steps=4"]), resume=True)

    def losses(run):
        return [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert losses("split") == losses("whole") and len(losses("whole")) == 4
    from safetensors.torch import load_file

    whole = load_file(str(tmp_path / "whole" / VAE_DIR / "diffusion_pytorch_model.safetensors"))
    split = load_file(str(tmp_path / "split" / VAE_DIR / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_image_steps_train_on_single_frames_first_then_on_windows(pool, tmp_path):
    config = load_vae_config([*MICRO, "steps=4", "image_steps=2", "save_every=100"])
    report = train_vae(pool, tmp_path / "run", config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["frames"] for r in records] == [1, 1, 9, 9]
    assert report["steps"] == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    batch = sample_batch(pool, config, torch.Generator().manual_seed(0), frames=1)
    assert batch.shape == (2, 3, 1, 32, 32)


def test_command_trains_from_an_exported_folder(tmp_path):
    data = tmp_path / "world"
    export_world(data, WorldConfig(height=64, width=64, num_frames=9, cross_id=False, pseudo=False), clips=3,
                 val_clips=1, fmt="png")
    out = tmp_path / "vae"
    sets = [arg for setting in MICRO if not setting.startswith("crop") for arg in ("--set", setting)]
    code = main(["vae", "--data", str(data), "--out", str(out), "--steps", "2", "--size", "32", *sets])
    assert code == 0
    report = json.loads((out / REPORT).read_text())
    assert report["steps"] == 2 and report["config"]["crop"] == 32 and report["held_out_clips"] == 1
    assert "metadata.jsonl" in report["data"]


@pytest.mark.parametrize("setting, message", [
    ("frames=5", "frames=5: training windows need 8k\\+1"),
    ("crop=30", "crop=30: a multiple of 8"),
    ("block_out_channels=[8, 8, 8]", "block_out_channels"),
    ("image_steps=2000", "image_steps=2000: 0 up to steps - 1"),
    ("kl_wieght=0.1", "unknown key 'vae.kl_wieght'.*kl_weight"),
])
def test_bad_settings_fail_before_training(setting, message):
    with pytest.raises(InputError, match=message):
        load_vae_config([setting])


def test_clips_shorter_than_the_window_are_refused_with_the_fix(tmp_path):
    short = ClipPool([torch.zeros(5, 64, 64, 3, dtype=torch.uint8)], [], "short")
    with pytest.raises(InputError, match="frames=9.*--set frames"):
        train_vae(short, tmp_path / "run", load_vae_config(["frames=9"]))
    assert not (tmp_path / "run").exists()


def test_a_folder_the_vae_command_did_not_write_is_refused_before_training(pool, tmp_path):
    mine = tmp_path / "models"
    (mine / VAE_DIR).mkdir(parents=True)  # someone's VAE folder, where a finished run would replace its own vae/
    (mine / VAE_DIR / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"--out .*models: the folder is not empty"):
        train_vae(pool, mine, load_vae_config([*MICRO, "steps=1"]))
    assert [p.name for p in mine.rglob("*")] == [VAE_DIR, "config.json"]


@pytest.mark.slow
def test_a_vae_run_written_before_output_markers_still_resumes(pool, tmp_path):
    from directanimator.atomic import OUTPUT_MARKER

    common = [*MICRO, "save_every=1"]
    train_vae(pool, tmp_path / "run", load_vae_config([*common, "steps=1"]))
    (tmp_path / "run" / OUTPUT_MARKER).unlink()  # as an older version left it
    report = train_vae(pool, tmp_path / "run", load_vae_config([*common, "steps=2"]), resume=True)
    assert report["steps"] == 2
