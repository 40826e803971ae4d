"""Stage 1 on a tiny world: the training loop learns, writes its run folder, and refuses bad configs early."""

from __future__ import annotations

import json
import math

import pytest
import torch

from directanimator.errors import InputError
from tests.training_world import CONFIG, make_world, overrides
from training.config import load_config
from training.data import CachedClips, make_batch
from training.prepare import prepare
from training.stage1 import stage1_loss, train_stage1
from training.trainer import Trainer, denoising_loss, load_student, noised_batch, read_metrics


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2-core machine is shared: one thread is several times faster here
    root = tmp_path_factory.mktemp("train1")
    data, model = make_world(root)
    config = load_config(CONFIG, overrides(root, data, model))
    prepare(config)
    prepare(load_config(CONFIG, overrides(root, data, model, "data.split='val'")))  # same key: no new work
    yield root, data, model
    torch.set_num_threads(threads)


def fixed_loss(trainer: Trainer, batch, seed: int = 123) -> float:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        noised = noised_batch(batch, trainer.scheduler, gen, reference_factor=trainer.reference_factor,
                              t_range=(100, 900))
        pred = trainer.model(noised.inputs, batch.text, noised.timesteps, cues=batch.cues)
    return float(denoising_loss(pred, noised.target))


def test_stage1_overfits_one_clip(world):
    torch.manual_seed(0)
    root, data, model = world
    config = load_config(CONFIG, overrides(root, data, model, "data.split='val'", "model.train='full'",
                                           "optim.lr=2e-3", "data.cue_dropout=0.0", "data.reference_dropout=0.0",
                                           "run.name='overfit'", "run.steps=30", "run.save_every=100"))
    clips = CachedClips(config, stage=1)
    assert len(clips) == 1
    trainer = Trainer(config, load_student(config), clips, stage1_loss, stage=1)
    batch = make_batch(clips, [0], torch.Generator().manual_seed(0))
    before = fixed_loss(trainer, batch)
    trainer.fit()
    after = fixed_loss(trainer, batch)
    assert after < 0.6 * before, (before, after)


def test_stage1_writes_run_folder_with_metrics_and_checkpoints(world):
    root, data, model = world
    config = load_config(CONFIG, overrides(root, data, model, "run.name='folder'", "run.steps=4", "run.save_every=2",
                                           "run.keep_last=1", "optim.ema_decay=0.9",
                                           "run.timestep_min=500"))
    records = train_stage1(config)
    run = root / "runs" / "folder"
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4] == [r["step"] for r in records]
    assert all({"loss", "lr", "grad_norm", "samples_per_s"} <= set(r) for r in records)
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["steps"] == 4 and saved["optim"]["ema_decay"] == 0.9
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000004"]  # keep_last=1
    step = run / "checkpoints" / "step_000004"
    assert {"trainable.safetensors", "ema.safetensors", "model.safetensors", "state.json"} <= {
        p.name for p in step.iterdir()}
    assert list((run / "tb").iterdir())
    # the exported file loads as a DirectAnimator model with the trained LoRA
    from directanimator.models import load_model

    loaded = load_model(model, step / "model.safetensors", dtype="fp32")
    assert loaded.info["weights"] == "lora"
    assert loaded.info["extra"]["timesteps"] == [500, 1000]  # what the sampler checks its schedule against
    with pytest.raises(InputError, match="already has checkpoints"):
        train_stage1(config)  # without --resume a finished run is not overwritten


@pytest.mark.parametrize("setting, message", [
    ("optim.warmup=10", "unknown key 'optim.warmup'.*Did you mean 'warmup_steps'"),
    ("data.frames=6", "data.frames=6: the VAE needs 4k\\+1 frames"),
    ("data.metadata='/nonexistent/metadata.jsonl'", "does not exist"),
    ("run.steps='many'", "run.steps: 'many' is a str; expected int"),
    ("model.train='half'", "model.train='half'"),
    ("optim.schedule='wsd'", "optim.schedule='wsd' decays over optim.decay_steps=0"),
])
def test_bad_config_fails_before_training(tmp_path, setting, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.jsonl").write_text('{"clip": "a.mp4", "fps": 12}\n')
    base = [f"data.metadata={json.dumps(str(data))}", "model.backbone='unused'",
            f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}"]
    with pytest.raises(InputError, match=message):
        load_config(CONFIG, [*base, setting])
    assert not (tmp_path / "runs").exists()


def test_wsd_schedule_holds_the_lr_then_decays_linearly_over_the_last_steps():
    from training.config import TrainConfig
    from training.trainer import lr_lambda

    config = TrainConfig()
    config.run.steps, config.optim.schedule, config.optim.warmup_steps = 100, "wsd", 10
    config.optim.decay_steps, config.optim.min_lr_ratio = 20, 0.1
    factor = lr_lambda(config)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)  # warmup
    assert all(factor(step) == 1.0 for step in range(10, 80))  # stable: a run resumed here continues the same curve
    decay = [factor(step) for step in range(80, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # linear down towards min_lr_ratio
    assert decay[0] == pytest.approx(1.0) and decay[-1] == pytest.approx(0.1 + 0.9 / 20)
    assert decay[10] == pytest.approx(0.1 + 0.9 * 10 / 20)


def test_training_without_prepared_cache_says_run_prepare(tmp_path, world):
    root, data, model = world
    config = load_config(CONFIG, overrides(root, data, model, "data.frames=9"))  # another cache key
    with pytest.raises(InputError, match="python -m training prepare"):
        train_stage1(config)


@pytest.mark.slow
def test_validation_during_training_writes_scored_samples_and_leaves_the_losses_unchanged(world):
    root, data, model = world
    common = ("run.steps=4", "run.save_every=100", "run.log_every=1", "run.validate_steps=2")
    plain = train_stage1(load_config(CONFIG, overrides(root, data, model, "run.name='noval'", *common)))
    config = load_config(CONFIG, overrides(root, data, model, "run.name='withval'", "run.validate_every=2",
                                           "run.validate_clips=1", *common))
    validated = train_stage1(config)
    assert [r["loss"] for r in validated] == [r["loss"] for r in plain]  # validation uses no training randomness
    lines = (config.run_dir / "samples" / "validation.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["psnr"] is not None and r["ssim"] is not None for r in records)
    assert len(list((config.run_dir / "samples").glob("step0000002_*.mp4"))) >= 1


def test_gradient_checkpointing_trains_the_same_trajectory(world):
    root, data, model = world
    common = ("run.steps=3", "run.save_every=100", "run.log_every=1")
    plain = train_stage1(load_config(CONFIG, overrides(root, data, model, "run.name='nockpt'", *common)))
    checkpointed = train_stage1(load_config(CONFIG, overrides(root, data, model, "run.name='ckpt'",
                                                              "model.gradient_checkpointing=true", *common)))
    assert [r["loss"] for r in checkpointed] == pytest.approx([r["loss"] for r in plain], rel=1e-5)
    assert [r["grad_norm"] for r in checkpointed] == pytest.approx([r["grad_norm"] for r in plain], rel=1e-4)


def test_the_ema_follows_the_weights_and_the_optimizer_is_fused(world):
    """The EMA after one step is decay * start + (1 - decay) * weights; AdamW runs as torch's fused kernel."""
    root, data, model = world
    config = load_config(CONFIG, overrides(root, data, model, "run.name='ema'", "run.steps=1", "run.save_every=100",
                                           "optim.ema_decay=0.75"))
    trainer = Trainer(config, load_student(config), CachedClips(config, stage=1), stage1_loss, stage=1)
    assert trainer.optimizer.param_groups[0]["fused"] is True
    start = {name: value.clone() for name, value in trainer.ema.items()}
    trainer.fit()
    for p in trainer.params:
        name = trainer._name(p)
        torch.testing.assert_close(trainer.ema[name], 0.75 * start[name] + 0.25 * p.detach())
    assert any(not torch.equal(trainer.ema[n], start[n]) for n in start)


def test_bf16_mixed_precision_runs_on_the_cpu_when_asked_and_auto_stays_fp32(world, fresh_precision):
    from accelerate.state import AcceleratorState

    root, data, model = world
    common = ("run.steps=2", "run.save_every=100", "run.log_every=1")
    plain = train_stage1(load_config(CONFIG, overrides(root, data, model, "run.name='fp32'", *common)))
    AcceleratorState._reset_state()
    config = load_config(CONFIG, overrides(root, data, model, "run.name='bf16'", "run.mixed_precision='bf16'",
                                           *common))
    clips = CachedClips(config, stage=1)
    trainer = Trainer(config, load_student(config), clips, stage1_loss, stage=1)
    assert trainer.accelerator.mixed_precision == "bf16"
    with trainer.accelerator.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    mixed = trainer.fit()
    assert all(math.isfinite(r["loss"]) for r in mixed)
    assert [r["loss"] for r in mixed] == pytest.approx([r["loss"] for r in plain], rel=0.05)
    assert [r["loss"] for r in mixed] != [r["loss"] for r in plain]  # computed in bf16, not fp32
    AcceleratorState._reset_state()
    auto = Trainer(load_config(CONFIG, overrides(root, data, model, "run.name='auto'", *common)),
                   load_student(config), clips, stage1_loss, stage=1)
    assert auto.accelerator.mixed_precision == "no"  # auto: fp32 on the CPU


def test_bf16_training_warns_on_a_cpu_without_native_bf16(world, fresh_precision, monkeypatch, caplog):
    from training import precision

    root, data, model = world
    config = load_config(CONFIG, overrides(root, data, model, "run.name='slow'", "run.mixed_precision='bf16'"))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    Trainer(config, load_student(config), CachedClips(config, stage=1), stage1_loss, stage=1)
    assert any("run.mixed_precision='bf16' on a CPU without native bf16" in r.getMessage() and
               "run.mixed_precision='no'" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize("option", ["reference_in_every_frame", "residual_reference"])
def test_the_reference_options_of_a_fresh_student_come_from_the_config(world, option):
    root, data, model = world
    config = load_config(CONFIG, overrides(root, data, model))
    assert getattr(load_student(config).transformer.cue_config, option) is False
    config = load_config(CONFIG, overrides(root, data, model, f"model.{option}=true"))
    assert getattr(load_student(config).transformer.cue_config, option) is True


def test_a_residual_model_is_trained_on_the_clip_minus_the_reference_in_every_frame(world):
    root, data, model = world
    config = load_config(CONFIG, overrides(root, data, model, "data.split='val'"))
    clips = CachedClips(config, stage=1)
    trainer = Trainer(config, load_student(config), clips, stage1_loss, stage=1)
    batch = make_batch(clips, [0, 0], torch.Generator().manual_seed(0))
    batch.drop_reference = torch.tensor([False, True])  # sample 1: a dropped reference subtracts nothing
    factor = trainer.reference_factor

    def noised(residual: bool):
        return noised_batch(batch, trainer.scheduler, torch.Generator().manual_seed(4), reference_factor=factor,
                            t_range=(100, 900), residual=residual)

    plain, residual = noised(False), noised(True)
    alpha = trainer.scheduler.alphas_cumprod[plain.timesteps].float().view(-1, 1, 1, 1, 1)
    base = batch.reference * factor
    assert base.abs().mean() > 0.1
    shift = plain.inputs[:, :, :base.shape[2]] - residual.inputs[:, :, :base.shape[2]]
    torch.testing.assert_close(shift[0], (alpha.sqrt() * base)[0].expand_as(shift[0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(shift[1], torch.zeros_like(shift[1]), rtol=0, atol=0)
    torch.testing.assert_close(residual.inputs[:, :, base.shape[2]:], plain.inputs[:, :, base.shape[2]:])
    # v = sqrt(a) * noise - sqrt(1 - a) * x0: the target moves by sqrt(1 - a) times the base
    torch.testing.assert_close((residual.target - plain.target)[0],
                               ((1 - alpha).sqrt() * base)[0].expand_as(plain.target[0]), rtol=0, atol=1e-5)
    assert torch.equal(residual.timesteps, plain.timesteps)


def test_a_run_folder_the_trainer_did_not_write_is_refused_before_the_model_loads(world, monkeypatch):
    import training.stage1

    root, data, model = world
    mine = root / "runs" / "notes"
    mine.mkdir(parents=True)
    (mine / "config.json").write_text("{\"my\": \"settings\"}")  # a folder of someone else's, same file name
    config = load_config(CONFIG, overrides(root, data, model, "run.name='notes'", "run.steps=2"))
    # the library call (as the recipe makes it) refuses before loading the model, not only the command
    monkeypatch.setattr(training.stage1, "load_student", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match=r"run folder \(run.out_dir/run.name\) .*notes: the folder is not empty"):
        train_stage1(config)
    assert [p.name for p in mine.iterdir()] == ["config.json"]
    assert json.loads((mine / "config.json").read_text()) == {"my": "settings"}


def test_the_command_refuses_the_run_folder_before_loading_the_model(world, monkeypatch, caplog):
    import training.stage1
    from training.cli import main

    root, data, model = world
    (root / "runs" / "papers").mkdir(parents=True)
    (root / "runs" / "papers" / "draft.tex").write_text("...")
    monkeypatch.setattr(training.stage1, "load_student", lambda *a, **k: pytest.fail("the model was loaded"))
    args = [item for o in overrides(root, data, model, "run.name='papers'") for item in ("--set", o)]
    assert main(["stage1", str(CONFIG), *args]) == 2
    assert "papers: the folder is not empty" in caplog.text
