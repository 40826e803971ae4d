"""The worker of tests/test_training_fsdp.py's several-machines checks, in a module of its own: spawned processes
import the module of their function, and this one imports little (seconds, not the training world's imports)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from directanimator.errors import InputError


def checks_worker(rank: int, world: int, port: int, root: str, results: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_FSDP="true",
                      FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP",
                      FSDP_TRANSFORMER_CLS_TO_WRAP="CueFusionBlock")
    torch.set_num_threads(1)
    from training.distributed import RankError, agree, check_shared_folder, make_accelerator, on_all_ranks

    accelerator = make_accelerator(mixed_precision="bf16", timeout_minutes=7)
    from torch.distributed.distributed_c10d import _get_default_group

    out = {"timeout": _get_default_group()._get_backend(torch.device("cpu")).options._timeout.total_seconds(),
           "fsdp": (accelerator.distributed_type.value, accelerator.is_fsdp2,
                    str(accelerator.state.fsdp_plugin.mixed_precision_policy.param_dtype),
                    str(accelerator.state.fsdp_plugin.mixed_precision_policy.reduce_dtype))}
    check_shared_folder(Path(root) / "shared")  # the same folder: passes
    out["shared_ok"] = True
    try:  # each rank its own folder: as two machines each with a local run.out_dir
        check_shared_folder(Path(root) / f"local{rank}")
    except InputError as error:
        out["local"] = str(error)
    try:
        agree(rank * 2, "the resume step")
    except InputError as error:
        out["agree"] = str(error)
    try:
        on_all_ranks(lambda: (_ for _ in ()).throw(InputError("rank 0 refused the run folder")), only_main=True)
    except (InputError, RankError) as error:
        out["failure"] = f"{type(error).__name__}: {error}"
    out["restore"] = _restore_with_a_read_error_on_rank_1(rank, Path(root))
    results[rank] = out
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _restore_with_a_read_error_on_rank_1(rank: int, root: Path) -> str:
    """`Trainer.restore` where rank 1 cannot read the checkpoint files: what each rank raises ("" for nothing)."""
    from types import SimpleNamespace

    import training.trainer as trainer
    from directanimator.errors import CheckpointError
    from training.checkpointing import rng_state

    def load(path, *, verify=True):
        if rank == 1:
            raise CheckpointError(f"checkpoint {path}: cannot read it (rank 1's disk)")
        return 2, {}, None, {"lr_scheduler": {}, "rng": rng_state(), "data": {}}

    fake = SimpleNamespace(ema=None, sharded=False, deepspeed=False, _restore_full=lambda *args: None,
                           lr_scheduler=SimpleNamespace(load_state_dict=lambda state: None),
                           sampler=SimpleNamespace(load_state_dict=lambda state: None), step=0)
    saved = trainer.load_training_checkpoint, trainer.verify_checkpoint
    trainer.load_training_checkpoint, trainer.verify_checkpoint = load, lambda *args, **kwargs: None
    try:
        trainer.Trainer.restore(fake, root / "ckpt")
    except Exception as error:  # what the rank stops with
        return f"{type(error).__name__}: {error}"
    finally:
        trainer.load_training_checkpoint, trainer.verify_checkpoint = saved
    return ""
