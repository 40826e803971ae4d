"""A stage-1 run killed with SIGKILL at any moment and resumed with --resume latest continues the uninterrupted
run's loss trajectory exactly (CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_training_stage1 import CONFIG, make_world, overrides
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
