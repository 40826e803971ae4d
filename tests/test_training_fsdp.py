"""FSDP2 with the real commands on 2 CPU processes (gloo): `accelerate launch --config_file
training/configs/accelerate_fsdp_cpu.yaml -m training stage1/stage2` (and torchrun) against one process with the
doubled batch, a SIGKILLed sharded run resumed exactly, the export of a sharded run, and the checks that keep several
machines from hanging or silently restarting (shared run folder, agreed resume step, errors reaching every rank).

What the equivalence tests need of the trainer under FSDP2: the trained parameters collected from the prepared
(sharded) model, so that the optimizer, clipping and EMA act on the parameters that train; the S2X teacher sharded
like the student; sharded DCP checkpoints that restore the parameters, EMA and optimizer; the model file gathered
from all ranks on rank 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.dist_checks import checks_worker
from tests.training_world import CONFIG, make_world, overrides
from training.checkpointing import EMA, SHARDED, TRAINABLE, read_jsonl, read_sharded_tensors
from training.config import load_config
from training.prepare import prepare
from training.trainer import read_metrics

ROOT = Path(__file__).resolve().parents[1]
FSDP_CPU = ROOT / "training" / "configs" / "accelerate_fsdp_cpu.yaml"
STEPS = 6
# One process of batch 2 and two FSDP processes of batch 1 sum the same float32 terms in another order (reduce-
# scatter of the gradient shards, the mean of two 1-sample losses): at most 4e-7 relative was seen in these runs.
# 1e-5 leaves room for other BLAS builds; a parameter the optimizer does not hold, a clipped copy or a rank-0-only
# loss moves the values by percents.
TOLERANCE = dict(rel=1e-5, abs=1e-7)
COMMON = (f"run.steps={STEPS}", "run.save_every=2", "run.log_every=1", "optim.ema_decay=0.5",
          "optim.schedule='cosine'", "optim.warmup_steps=2", "run.grad_accum=2", "optim.clip_norm=0.5")
VALIDATE = ("run.validate_every=3", "run.validate_clips=1", "run.validate_steps=2")  # sampling at steps 3 and 6
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_TRANSFORMER_CLS_TO_WRAP": "CueFusionBlock", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(root: Path, **extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": "", "HF_HOME": str(root / "hf_home"), **extra}


def _sets(args: list[str]) -> list[str]:
    out = []
    for item in args:
        out += ["--set", item]
    return out


def command(stage: str, args: list[str], *, launcher: str = "accelerate") -> list[str]:
    """The documented launch of 2 FSDP processes (docs/distributed.md), or one plain process."""
    tail = ["-m", "training", stage, str(CONFIG), *_sets(args)]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CPU),
                "--main_process_port", str(_free_port()), *tail]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), *tail]
    return [sys.executable, *tail]


def run(root: Path, stage: str, args: list[str], *, launcher: str = "accelerate") -> None:
    env = _env(root, **(FSDP_ENV if launcher == "torchrun" else {}))
    done = subprocess.run(command(stage, args, launcher=launcher), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def assert_same_trajectory(got: list[dict], expected: list[dict], keys=("loss", "lr", "grad_norm")) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(1, STEPS + 1))
    for mine, theirs in zip(got, expected):
        for key in keys:
            assert mine[key] == pytest.approx(theirs[key], **TOLERANCE), (mine["step"], key)


@pytest.fixture(scope="module")
def stage1_runs(tmp_path_factory):
    """The world, one process with batch 2 and 2 FSDP processes with batch 1 each (same config otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fsdp")
    data, model = make_world(root)
    args = overrides(root, data, model, *COMMON)
    prepare(load_config(CONFIG, args))
    torch.set_num_threads(threads)
    run(root, "stage1", [*args, *VALIDATE, "run.name='one'", "run.batch_size=2"], launcher="python")
    run(root, "stage1", [*args, *VALIDATE, "run.name='fsdp'", "run.batch_size=1"])
    return root, args


@pytest.mark.slow
def test_fsdp_stage1_follows_the_one_process_trajectory_with_sharded_checkpoints(stage1_runs):
    root, _ = stage1_runs
    assert_same_trajectory(read_metrics(root / "runs" / "fsdp"), read_metrics(root / "runs" / "one"))
    last = root / "runs" / "fsdp" / "checkpoints" / f"step_{STEPS:06d}"
    assert (last / SHARDED).is_dir() and not (last / TRAINABLE).exists() and not (last / EMA).exists()
    assert sorted(p.name for p in (last / SHARDED).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    # the sharded trained weights and EMA are the one-process run's, so the optimizer and EMA updated the
    # parameters that train (not copies left behind by the sharding)
    from safetensors.torch import load_file

    one = root / "runs" / "one" / "checkpoints" / f"step_{STEPS:06d}"
    for group, name in (("trainable", TRAINABLE), ("ema", EMA)):
        sharded, whole = read_sharded_tensors(last, group), load_file(str(one / name))
        assert sorted(sharded) == sorted(whole) and any("lora_B" in k for k in whole)
        for key, value in whole.items():
            torch.testing.assert_close(sharded[key], value, rtol=1e-4, atol=1e-6, msg=key)
        assert any(not torch.equal(value, torch.zeros_like(value)) for k, value in whole.items() if "lora_B" in k)


@pytest.mark.slow
def test_validation_under_fsdp_runs_on_every_rank_and_scores_like_one_process(stage1_runs):
    """Each sampling forward gathers both ranks' shards: rank 0 alone would wait forever. The FSDP run got past both
    validations (the fixture), wrote rank 0's samples only, and sampled the weights the one-process run has."""
    root, _ = stage1_runs
    fsdp, one = (read_jsonl(root / "runs" / name / "samples" / "validation.jsonl") for name in ("fsdp", "one"))
    assert [r["step"] for r in fsdp] == [r["step"] for r in one] == [3, 6]
    for mine, theirs in zip(fsdp, one):
        assert mine["psnr"] == pytest.approx(theirs["psnr"], rel=1e-3)
        assert mine["ssim"] == pytest.approx(theirs["ssim"], rel=1e-3)
    assert sorted(p.name for p in (root / "runs" / "fsdp" / "samples").glob("*.mp4")) == [
        f"step000000{s}_{fsdp[0]['clip'].split('/')[-1]}.mp4" for s in (3, 6)]


@pytest.mark.slow
def test_the_export_of_a_sharded_run_loads_and_holds_the_gathered_weights(stage1_runs):
    from directanimator.models import load_model

    root, args = stage1_runs
    last = root / "runs" / "fsdp" / "checkpoints" / f"step_{STEPS:06d}"
    backbone = load_config(CONFIG, args).model.backbone
    for use_ema, group in ((True, "ema"), (False, "trainable")):
        out = root / f"export_{group}.safetensors"
        cmd = [sys.executable, "-m", "training", "export", str(last), "--backbone", backbone, "--out", str(out)]
        done = subprocess.run(cmd + ([] if use_ema else ["--no-ema"]), cwd=ROOT, env=_env(root),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        params = dict(load_model(backbone, out, dtype="fp32").transformer.named_parameters())
        gathered = read_sharded_tensors(last, group)
        assert len(gathered) > 0
        for key, value in gathered.items():
            assert torch.equal(params[key].detach(), value), key


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["copy", "lora_disabled"])
def test_fsdp_stage2_with_the_s2x_teacher_follows_one_process(stage1_runs, mode):
    """copy: the frozen teacher is sharded like the student; lora_disabled: the sharded student is its own teacher."""
    root, args = stage1_runs
    checkpoint = root / "runs" / "one" / "checkpoints" / f"step_{STEPS:06d}" / "model.safetensors"
    s2 = [*args, f"model.checkpoint='{checkpoint}'", f"stage2.teacher_mode='{mode}'", "stage2.lambda_value=0.5",
          "stage2.lambda_ramp_steps=2"]
    run(root, "stage2", [*s2, f"run.name='s2one_{mode}'", "run.batch_size=2"], launcher="python")
    run(root, "stage2", [*s2, f"run.name='s2fsdp_{mode}'", "run.batch_size=1"])
    one, fsdp = (read_metrics(root / "runs" / f"s2{kind}_{mode}") for kind in ("one", "fsdp"))
    assert_same_trajectory(fsdp, one, keys=("loss", "denoise", "s2x", "lr", "grad_norm"))
    assert [r["lambda"] for r in fsdp[:3]] == [0.0, 0.25, 0.5]


@pytest.mark.slow
def test_a_sigkilled_fsdp_run_resumed_with_torchrun_continues_exactly(stage1_runs):
    root, args = stage1_runs
    killed = [*args, "run.name='killed'", "run.batch_size=1"]
    run_dir = root / "runs" / "killed"
    proc = subprocess.Popen(command("stage1", killed), cwd=ROOT, env=_env(root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((run_dir / "checkpoints").glob("step_*")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, as when a machine dies
    proc.wait()
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert saved and saved[-1] != f"step_{STEPS:06d}", "the run finished before it could be killed"

    resume = command("stage1", killed, launcher="torchrun") + ["--resume", "latest"]
    done = subprocess.run(resume, cwd=ROOT, env=_env(root, **FSDP_ENV), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_same_trajectory(read_metrics(run_dir), read_metrics(root / "runs" / "fsdp"))


# --------------------------------------------------------------------------- several machines, simulated
def test_ranks_that_see_different_run_folders_or_steps_fail_clearly_on_every_rank(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(checks_worker, args=(2, _free_port(), str(tmp_path), results), nprocs=2, join=True,
                           start_method="spawn")
        results = dict(results)
    for rank in (0, 1):
        out = results[rank]
        assert out["timeout"] == 7 * 60  # run.dist_timeout_minutes reaches the process group
        # FSDP2 on CPU processes, computing in bf16 like the GPU recipe (accelerate alone would give MULTI_CPU),
        # the gradients reduce-scattered in fp32 (accelerate's own policy would reduce them in bf16)
        assert out["fsdp"] == ("FSDP", True, "torch.bfloat16", "torch.float32")
        assert out["shared_ok"]
        assert "rank 1 on" in out["local"] and "filesystem all machines share" in out["local"]
        assert "disagree on the resume step (rank 0: 0, rank 1: 2)" in out["agree"]
    assert results[0]["failure"] == "InputError: rank 0 refused the run folder"
    # a checkpoint file only rank 1 cannot read during resume: rank 0 stops too, with rank 1's message
    assert results[1]["restore"].startswith("CheckpointError: checkpoint") and "rank 1's disk" in results[1]["restore"]
    assert results[0]["restore"].startswith("RankError: process 1 of the run failed: CheckpointError")
    assert results[1]["failure"] == "RankError: process 0 of the run failed: InputError: rank 0 refused the run folder"
    assert not (tmp_path / "shared" / ".shared-folder-check").exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process: meant
def test_a_sharded_checkpoint_is_digested_listed_and_read_back_in_one_process(tmp_path):
    """The sharded format without processes: DCP files under sharded/ are in the digests, `--resume` accepts the
    folder, export reads its raw weights and knows it has an EMA, and a changed shard is refused."""
    import json

    from directanimator.errors import CheckpointError
    from training.checkpointing import (DIGESTS, has_ema, read_trained, resolve_resume, save_training_checkpoint,
                                       trained_files, verify_checkpoint)

    trained, ema = {"blocks.0.w": torch.arange(6.0).reshape(2, 3)}, {"blocks.0.w": torch.ones(2, 3)}
    folder = save_training_checkpoint(tmp_path / "run", 4, trainable=None, state={"step": 4},
                                      sharded={"trainable": dict(trained), "ema": dict(ema)})
    assert not (folder / TRAINABLE).exists() and resolve_resume(tmp_path / "run", str(folder)) == folder
    digests = json.loads((folder / DIGESTS).read_text())["sha256"]
    assert set(trained_files(folder)) <= set(digests) and f"{SHARDED}/.metadata" in digests
    assert has_ema(folder) and torch.equal(read_trained(folder)["blocks.0.w"], trained["blocks.0.w"])
    assert torch.equal(read_sharded_tensors(folder, "ema")["blocks.0.w"], ema["blocks.0.w"])
    without = save_training_checkpoint(tmp_path / "plain", 1, trainable=None, state={},
                                       sharded={"trainable": dict(trained)})
    assert not has_ema(without)
    shard = next((folder / SHARDED).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-1] + bytes([shard.read_bytes()[-1] ^ 0xFF]))
    with pytest.raises(CheckpointError, match=r"sharded/__0_0\.distcp differs from the sha256"):
        verify_checkpoint(folder)
    verify_checkpoint(folder, skip=(shard.relative_to(folder).as_posix(),))  # how resume skips the model file


# --------------------------------------------------------------------------- one process
class _FakeAdamW8bit(torch.optim.AdamW):
    """Stands in for bitsandbytes' 8-bit AdamW (not installed here) to show which optimizer is chosen."""


@pytest.fixture
def fake_bitsandbytes(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setitem(sys.modules, "bitsandbytes", SimpleNamespace(optim=SimpleNamespace(AdamW8bit=_FakeAdamW8bit)))


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_fsdp_takes_torch_adamw_for_auto_and_refuses_8bit_adamw_for_yes(fake_bitsandbytes, device, caplog):
    from directanimator.errors import InputError
    from training.trainer import make_optimizer

    def config(value):
        from training.config import TrainConfig, apply_overrides, build_config

        return build_config(TrainConfig, apply_overrides({}, [f"optim.adamw_8bit='{value}'"]))

    params = [torch.nn.Parameter(torch.zeros(3))]
    plain = make_optimizer(params, config("auto"), torch.device(device))
    assert isinstance(plain, _FakeAdamW8bit) == (device == "cuda")  # not sharded: "auto" on CUDA takes 8-bit
    with caplog.at_level("INFO", logger="training.trainer"):
        sharded = make_optimizer(params, config("auto"), torch.device(device), sharded=True)
    assert type(sharded) is torch.optim.AdamW and not sharded.defaults["fused"]
    assert ("bitsandbytes' 8-bit AdamW does not support DTensor" in caplog.text) == (device == "cuda")
    with pytest.raises(InputError, match=r"adamw_8bit='yes' under FSDP: .*does not support the sharded \(DTensor\)"):
        make_optimizer(params, config("yes"), torch.device(device), sharded=True)
    assert isinstance(make_optimizer(params, config("yes"), torch.device(device)), _FakeAdamW8bit)


def test_trainer_prepare_builds_the_optimizer_for_sharded_parameters_under_fsdp(fake_bitsandbytes):
    from types import SimpleNamespace

    from training.config import TrainConfig
    from training.trainer import Trainer

    model = torch.nn.Linear(2, 2)
    for sharded, kind in ((True, torch.optim.AdamW), (False, _FakeAdamW8bit)):
        fake = SimpleNamespace(device=torch.device("cuda"), sharded=sharded,
                               accelerator=SimpleNamespace(prepare=lambda *objects: objects))
        _, optimizer = Trainer.prepare(fake, model, TrainConfig())
        assert type(optimizer) is kind


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process: meant
@pytest.mark.parametrize("kind", ["sharded", "deepspeed"])
def test_resuming_with_an_ema_from_a_checkpoint_without_one_says_so(tmp_path, kind):
    """Both branches that do not read ema.safetensors: an FSDP run's sharded/ and a DeepSpeed run's engine folder."""
    from types import SimpleNamespace

    from directanimator.errors import InputError
    from training.checkpointing import rng_state, save_training_checkpoint
    from training.deepspeed_support import ENGINE_DIR, ENGINE_TAG
    from training.trainer import Trainer

    trained = {"blocks.0.w": torch.ones(2, 3)}
    state = {"lr_scheduler": {}, "rng": rng_state(), "data": {}}
    if kind == "sharded":
        folder = save_training_checkpoint(tmp_path / "run", 2, trainable=None, state=state,
                                          sharded={"trainable": dict(trained)})
    else:
        folder = save_training_checkpoint(tmp_path / "run", 2, trainable=trained, state=state,
                                          write_model=lambda path: (path.parent / ENGINE_DIR / ENGINE_TAG).mkdir(
                                              parents=True))
    fake = SimpleNamespace(ema={"blocks.0.w": torch.zeros(2, 3)}, sharded=kind == "sharded",
                           deepspeed=kind == "deepspeed", model=None)
    with pytest.raises(InputError, match=r"the checkpoint has no EMA but optim.ema_decay > 0"):
        Trainer.restore(fake, folder)
