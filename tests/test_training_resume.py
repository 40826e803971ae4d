"""A stage-1 run killed with SIGKILL at any moment and resumed with --resume latest continues the uninterrupted
run's loss trajectory exactly (CPU)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from directanimator.errors import CheckpointError, InputError
from tests.training_world import CONFIG, MICRO, make_world, overrides
from training.checkpointing import (DIGESTS, MODEL, STATE_JSON, STATE_TENSORS, TRAINABLE, load_training_checkpoint,
                                   rng_state, save_training_checkpoint, truncate_metrics)
from training.config import load_config
from training.prepare import prepare
from training.trainer import read_metrics

ROOT = Path(__file__).resolve().parents[1]
STEPS = 24


def command(args: list[str], *extra: str) -> list[str]:
    out = [sys.executable, "-m", "training", "stage1", str(CONFIG)]
    for item in [*args, *extra]:
        out += ["--set", item]
    return out


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("resume")
    data, model = make_world(root)
    args = overrides(root, data, model, f"run.steps={STEPS}", "run.save_every=4", "run.log_every=1",
                     "optim.ema_decay=0.5", "optim.schedule='cosine'", "optim.warmup_steps=3",
                     "run.grad_accum=2", "run.batch_size=2")
    prepare(load_config(CONFIG, args))
    torch.set_num_threads(threads)
    return root, args


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(setup):
    root, args = setup
    subprocess.run(command(args, "run.name='whole'"), cwd=ROOT, env=env(), check=True, capture_output=True)
    whole = {r["step"]: r for r in read_metrics(root / "runs" / "whole")}
    assert sorted(whole) == list(range(1, STEPS + 1))

    run = root / "runs" / "killed"
    proc = subprocess.Popen(command(args, "run.name='killed'"), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((run / "checkpoints").glob("step_*")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    saved = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert saved and saved[-1] != f"step_{STEPS:06d}", "the run finished before it could be killed"

    subprocess.run(command(args, "run.name='killed'") + ["--resume", "latest"], cwd=ROOT, env=env(), check=True,
                   capture_output=True)
    resumed = read_metrics(run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # no duplicated or missing steps
    for record in resumed:
        expected = whole[record["step"]]
        for key in ("loss", "lr", "grad_norm"):
            assert record[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), (record["step"], key)


# --------------------------------------------------------------------------- what resume trusts
def _save(run: Path, step: int, **tensors) -> Path:
    trainable = tensors or {"w": torch.full((64,), float(step))}
    return save_training_checkpoint(run, step, trainable=trainable, state={"rng": rng_state(), "step": step})


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the tensor data: the file still parses, its values changed
    path.write_bytes(bytes(data))


def test_a_checkpoint_whose_file_changed_since_it_was_saved_is_refused_at_resume(tmp_path):
    _save(tmp_path / "run", 2)
    latest = _save(tmp_path / "run", 4)
    assert set(json.loads((latest / DIGESTS).read_text())["sha256"]) == {TRAINABLE, STATE_TENSORS, STATE_JSON}
    assert load_training_checkpoint(latest)[0] == 4
    _flip_last_byte(latest / TRAINABLE)
    with pytest.raises(CheckpointError, match=r"step_000004: trainable\.safetensors differs from the sha256 "
                                              r"recorded when it was saved.*older checkpoint.*step_000002"):
        load_training_checkpoint(latest)


def test_resume_verifies_only_the_files_it_reads_not_the_model_file(tmp_path):
    from safetensors.torch import save_file

    latest = save_training_checkpoint(tmp_path / "run", 2, trainable={"w": torch.ones(64)}, state={"step": 2},
                                      write_model=lambda path: save_file({"m": torch.ones(64)}, str(path)))
    _flip_last_byte(latest / MODEL)  # resume never reads it; export and stage 2 verify it where they load it
    assert load_training_checkpoint(latest)[0] == 2


def test_a_checkpoint_written_before_digests_still_loads_with_one_log_line(tmp_path, caplog):
    latest = _save(tmp_path / "run", 3)
    (latest / DIGESTS).unlink()
    with caplog.at_level(logging.INFO, logger="training.checkpointing"):
        assert load_training_checkpoint(latest)[0] == 3
    assert [r.message for r in caplog.records if DIGESTS in r.message] == [
        f"checkpoint {latest} has no {DIGESTS} (written before digests were recorded); its files are not verified"]


def test_trained_weights_holding_nan_are_refused_at_resume_naming_the_tensor(tmp_path):
    bad = torch.zeros(8)
    bad[3] = float("nan")
    latest = _save(tmp_path / "run", 5, **{"blocks.0.fusion.weight": bad})
    with pytest.raises(CheckpointError, match=r"trainable\.safetensors: tensor 'blocks\.0\.fusion\.weight' holds 1 "
                                              r"NaN.*Lower optim\.lr"):
        load_training_checkpoint(latest)


@pytest.mark.slow
def test_the_next_start_removes_only_the_unfinished_checkpoint_folders_of_killed_writes(tmp_path):
    from training.vae import clips_from_world, load_vae_config, train_vae

    pool = clips_from_world(2, size=64, frames=9, val_clips=1, seed=0)
    run = tmp_path / "vae"
    train_vae(pool, run, load_vae_config([*MICRO, "steps=1", "save_every=1"]))
    killed = run / "checkpoints" / ".tmp-step_000002-4242"  # a write killed before its rename
    killed.mkdir()
    (killed / TRAINABLE).write_bytes(b"half")
    for name in ("notes", ".tmp-mine"):  # not the run's own partial checkpoints: kept
        (run / "checkpoints" / name).mkdir()
    train_vae(pool, run, load_vae_config([*MICRO, "steps=2", "save_every=1"]), resume=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        ".tmp-mine", "notes", "step_000001", "step_000002"]


@pytest.mark.slow
def test_a_torn_last_line_of_the_metrics_is_dropped_with_a_warning_at_resume(tmp_path, caplog):
    from training.vae import clips_from_world, load_vae_config, train_vae

    pool = clips_from_world(2, size=64, frames=9, val_clips=1, seed=0)
    run = tmp_path / "vae"
    train_vae(pool, run, load_vae_config([*MICRO, "steps=1", "save_every=1"]))
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 2, "loss": 0.2')  # killed while writing the next record
    with caplog.at_level(logging.WARNING):
        train_vae(pool, run, load_vae_config([*MICRO, "steps=2", "save_every=1"]), resume=True)
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert any("cut short" in r.message for r in caplog.records)


def test_an_unreadable_line_before_the_last_names_the_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(InputError, match=r"metrics\.jsonl: line 2 is not JSON"):
        truncate_metrics(path, 2)
