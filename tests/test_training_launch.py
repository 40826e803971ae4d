"""Many processes with the real command: `accelerate launch` of `python -m training stage1/stage2` on 2 CPU processes
(gloo), batch 1 each, logs the per-step losses and gradient norms of one process with batch 2.

This needs three things of the trainer: every process trains on its own share of the global batch that one process
of the doubled batch would draw (BucketBatchSampler), every sample's noise, timestep and dropout flags depend on its
place in the global batch and not on the process that draws it (sample_generators), and the logged values are
means over the processes, not rank 0's own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from directanimator.errors import InputError
from tests.training_world import CONFIG, make_world, overrides
from training.config import load_config
from training.data import BucketBatchSampler
from training.prepare import prepare
from training.stage1 import train_stage1
from training.stage2 import train_stage2
from training.trainer import read_metrics

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
# Both runs sum the same float32 terms in another order (one batch mean of 2 samples against the mean of two
# 1-sample losses, and DDP's all-reduce of the gradients), so only rounding differs: at most 4e-7 relative was
# seen over these 3 AdamW steps. 1e-4 leaves room for other BLAS builds; a wrong share, other noise or a loss
# logged from rank 0 alone moves the loss by tens of percent.
TOLERANCE = dict(rel=1e-4, abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(root: Path, command: str, args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch` of `python -m training COMMAND CONFIG --set ...` on 2 CPU processes.

    accelerate's --cpu launcher starts a single process (several CPU processes need mpirun), so this uses its
    torchrun launcher (--multi_gpu) with CUDA hidden: the trainer's Accelerator then runs MULTI_CPU over gloo."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "training", command, str(CONFIG)]
    for item in args:
        cmd += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": "",
           "HF_HOME": str(root / "hf_home")}  # no user accelerate config file can change the setup
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        assert f"process {rank} of 2: accelerate MULTI_CPU, backend gloo" in done.stderr, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2-core machine is shared: one thread is several times faster here
    root = tmp_path_factory.mktemp("launch")
    data, model = make_world(root)
    args = overrides(root, data, model, f"run.steps={STEPS}", f"run.save_every={STEPS}", "run.log_every=1")
    prepare(load_config(CONFIG, args))
    yield root, args
    torch.set_num_threads(threads)


def assert_same_trajectory(one: list[dict], two: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], **TOLERANCE), (a["step"], key, a[key], b[key])


GLOO = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                          reason="this torch build has no gloo backend for CPU processes")


def one_and_two(root: Path, command: str, args: list[str], name: str) -> tuple[list[dict], list[dict]]:
    """Metrics of one in-process run with batch 2 and of a 2-process `accelerate launch` with batch 1."""
    train = {"stage1": train_stage1, "stage2": train_stage2}[command]
    train(load_config(CONFIG, [*args, f"run.name='{name}_one'", "run.batch_size=2"]))
    launch(root, command, [*args, f"run.name='{name}_two'", "run.batch_size=1"])
    return read_metrics(root / "runs" / f"{name}_one"), read_metrics(root / "runs" / f"{name}_two")


@GLOO
@pytest.mark.slow
def test_stage1_full_finetuning_on_two_launched_processes_equals_one_process_with_the_doubled_batch(world):
    root, args = world
    # cue and reference dropout stay on, so the per-sample dropout flags are part of what must agree
    one, two = one_and_two(root, "stage1", [*args, "model.train='full'"], "full")
    assert_same_trajectory(one, two, ("loss", "grad_norm", "lr"))
    assert len({round(r["loss"], 4) for r in one}) == STEPS  # each step saw other samples or noise


@GLOO
@pytest.mark.slow
def test_lora_stage2_with_fp8_offloaded_frozen_weights_and_the_teacher_outside_ddp_on_two_processes(world):
    root, args = world
    # stage 1 with the config's LoRA, in this process only: stage 2 needs its checkpoint (a full stage-1
    # checkpoint could not be continued with a LoRA); the 2-process data path is the same as in stage 1
    train_stage1(load_config(CONFIG, [*args, "run.name='lora'"]))
    checkpoint = root / "runs" / "lora" / "checkpoints" / f"step_{STEPS:06d}" / "model.safetensors"
    # the frozen weights (student's backbone and the copy teacher) stored in fp8 and offloaded block by block: DDP
    # must leave them alone (they are neither synced nor on one device)
    stage2 = [*args, f"model.checkpoint='{checkpoint}'", "stage2.teacher_mode='copy'", "stage2.lambda_ramp_steps=1",
              "model.frozen_storage='fp8'", "model.frozen_offload='blocks'", "model.gradient_checkpointing=true"]
    one, two = one_and_two(root, "stage2", stage2, "s2")
    assert_same_trajectory(one, two, ("loss", "denoise", "s2x", "grad_norm"))
    assert [r["lambda"] for r in two] == [r["lambda"] for r in one] == [0.0, 0.5, 0.5]


def test_processes_take_disjoint_shares_of_the_single_process_batches_across_epochs():
    buckets = [(64, 64)] * 7 + [(64, 96)] * 5  # 12 items: 3 global batches of 4 per epoch, tails dropped
    single = BucketBatchSampler(buckets, 4, seed=3)
    ranks = [BucketBatchSampler(buckets, 2, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(7):  # past two epoch ends
        whole = single.next()
        shares = [s.next() for s in ranks]
        assert shares[0] + shares[1] == whole and len(shares[0]) == 2
        assert len({buckets[i] for i in whole}) == 1  # a global batch stays in one bucket
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()


def test_small_bucket_is_split_evenly_and_too_few_items_for_the_processes_are_refused():
    # a bucket of 3 under a global batch of 4 gives 2 (an even split), not 3 (one process would get more)
    sampler = BucketBatchSampler([(64, 64)] * 3, 2, seed=0, rank=1, world=2)
    assert len(sampler.next()) == 1
    with pytest.raises(InputError, match="no bucket holds at least 2 items"):
        BucketBatchSampler([(64, 64)], 1, world=2).next()
