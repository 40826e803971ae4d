"""benchmarks.gpu_smoke cannot rot unseen: its --tiny mode runs the same training and sampling path on the CPU, and
the real CogVideoX-5B-I2V run's synthetic cache fits the backbone's learned positional table."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import gpu_smoke
from directanimator.models.configs import backbone_config
from directanimator.models.transformer import check_latent_shape_for
from training.data import CachedClips, make_batch


@pytest.mark.slow
def test_tiny_mode_trains_both_stages_and_samples_through_the_project_code(capsys, fresh_precision):
    args = gpu_smoke.parse_args(["--tiny", "--stage1-steps", "2", "--stage2-steps", "2", "--sample-steps", "2",
                                 "--frozen", "bf16,fp8_offload"])
    phases, config, device = gpu_smoke.run_smoke(args)
    assert device == "CPU"
    assert [(p.name, len(p.times)) for p in phases] == [
        ("stage 1", 2), ("stage 2", 2), ("stage 1, frozen fp8_offload", 2), ("stage 2, frozen fp8_offload", 2),
        ("sampling", 2)]
    assert all(t > 0 for p in phases for t in p.times)
    out = capsys.readouterr().out
    losses = [float(line.rsplit("loss", 1)[1]) for line in out.splitlines() if "loss" in line]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert "trained" in phases[0].note and "autocast bf16" in phases[0].note  # what Trainer set up, read back
    # the same start, batches and noise: the fp8 run's losses are the bf16 run's up to fp8 rounding, not equal
    assert phases[2].losses != phases[0].losses
    assert phases[2].losses == pytest.approx(phases[0].losses, rel=0.05)
    agreement = gpu_smoke.loss_agreement(phases)
    assert [line.split(":")[0] for line in agreement] == ["stage 1, frozen fp8_offload", "stage 2, frozen fp8_offload"]
    table = gpu_smoke.render(phases, device_name=device, tiny=True, config=config, total_s=1.0)
    assert table.startswith(gpu_smoke.SECTION) and table.count("\n| ") == 6  # header + 5 phases
    assert "stage 1, frozen fp8_offload: loss within" in table


def test_an_unknown_frozen_mode_is_refused_before_anything_is_built(capsys):
    with pytest.raises(SystemExit):
        gpu_smoke.parse_args(["--frozen", "bf16,int4"])
    assert "int4" in capsys.readouterr().err


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_smoke.main(["--no-write"]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out


@pytest.mark.slow
def test_the_real_runs_cache_fits_cogvideox_5b_i2v_and_the_recipe(tmp_path):
    real = backbone_config(gpu_smoke.REAL_BACKBONE)
    config = gpu_smoke.smoke_config(tmp_path, tiny=False, steps=2)
    assert (config.model.train, config.model.dtype, config.model.gradient_checkpointing) == ("lora", "bf16", True)
    assert config.run.grad_accum == 1 and config.stage2.depth < real["num_layers"]
    gpu_smoke.write_synthetic_cache(config, real, clips=1)
    data = CachedClips(config, stage=2)
    batch = make_batch(data, [0], torch.Generator().manual_seed(0))
    frames = 1 + batch.target.shape[1]
    assert batch.target.shape[2:] == (16, 60, 90) and batch.cues.pose.shape[1] == frames == 13
    assert batch.text.shape == (1, real["max_text_seq_length"], real["text_embed_dim"])
    check_latent_shape_for(real, frames, 60, 90)  # raises unless it is the learned table's 13 frames at 480x720
    plan = gpu_smoke.plan_figures(eight_bit=True)
    assert 20e9 < plan["stage 1"] < plan["stage 2"] < 80e9
