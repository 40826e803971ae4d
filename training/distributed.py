"""Many processes, one or several machines: the accelerator of a run (process-group timeout, FSDP2 on the CPU too),
errors that reach every rank instead of leaving the others waiting in a collective, the shared-run-folder check and
the ranks' agreement on where to resume, and the FSDP2 pieces the trainer needs (a frozen teacher sharded like the
student, the full weights gathered for writing the model file).

Every function here is a no-op-like pass-through with one process, so the trainer calls them unconditionally.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

from directanimator.errors import DirectAnimatorError, InputError

log = logging.getLogger(__name__)

T = TypeVar("T")
SHARED_CHECK = ".shared-folder-check"  # the nonce file of `check_shared_folder`, removed after the check


class RankError(DirectAnimatorError):
    """Another process of the run failed; its message is repeated here so that every rank stops with it."""


def make_accelerator(*, mixed_precision: str, timeout_minutes: float):
    """The run's `accelerate.Accelerator`: CPU when there is no CUDA, the process-group `timeout_minutes` (every
    collective waits that long for the slowest rank, e.g. rank 0 writing a checkpoint), and FSDP2 when the launch
    asked for it (``accelerate launch --config_file accelerate_fsdp*.yaml`` sets ACCELERATE_USE_FSDP)."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    if timeout_minutes <= 0:
        raise InputError(f"config run.dist_timeout_minutes={timeout_minutes}: must be > 0 (minutes a process waits "
                         "for the others, e.g. while rank 0 writes a checkpoint).")
    cuda = torch.cuda.is_available()
    handler = InitProcessGroupKwargs(timeout=timedelta(minutes=timeout_minutes))
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not cuda, kwargs_handlers=[handler])
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # accelerate keeps CPU processes on its MULTI_CPU (DDP) path even when FSDP is asked for, although torch's
        # FSDP2 runs on gloo; switching the state over runs accelerate's own FSDP2 preparation on the CPU, so the
        # CPU recipe (accelerate_fsdp_cpu.yaml) and the tests take the GPU recipe's code path
        plugin = FullyShardedDataParallelPlugin()
        if plugin.fsdp_version != 2:
            raise InputError("FSDP on the CPU: only fsdp_version: 2 is supported (set it in the accelerate config).")
        if accelerator.mixed_precision != "no":  # what accelerate does for a GPU FSDP plugin
            plugin.set_mixed_precision(accelerator.mixed_precision)
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    if is_fsdp(accelerator) and not accelerator.is_fsdp2:
        raise InputError("accelerate config: FSDP1 is not supported by the trainer; set fsdp_version: 2 "
                         "(training/configs/accelerate_fsdp.yaml).")
    if is_fsdp(accelerator):
        fp32_reduction(accelerator.state.fsdp_plugin)
    return accelerator


def fp32_reduction(plugin) -> None:
    """Make the FSDP2 mixed-precision policy of `plugin` reduce-scatter gradients in fp32. accelerate's bf16 policy
    sets both param_dtype and reduce_dtype to bf16; the trainer keeps param_dtype (bf16 compute, each unit's
    parameters all-gathered in bf16) but sums the ranks' gradients in fp32, as DDP and DeepSpeed do here. Nothing
    changes without mixed precision (no policy, or param_dtype unset)."""
    import dataclasses

    policy = plugin.mixed_precision_policy
    if policy is None or isinstance(policy, dict) or getattr(policy, "param_dtype", None) is None:
        return
    plugin.mixed_precision_policy = dataclasses.replace(policy, reduce_dtype=torch.float32)


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def gather_objects(value) -> list:
    """`value` of every rank, in rank order (one process: ``[value]``)."""
    if _world() == 1:
        return [value]
    out = [None] * _world()
    torch.distributed.all_gather_object(out, value)
    return out


def barrier() -> None:
    """Wait for every rank (nothing with one process)."""
    if _world() > 1:
        torch.distributed.barrier()


def on_all_ranks(fn: Callable[[], T], *, only_main: bool = False) -> T | None:
    """Run `fn` (on rank 0 alone with `only_main`) and let every rank learn whether it failed: the failing rank
    re-raises its own error, the others raise RankError with its message, so no rank is left waiting in the next
    collective until the process-group timeout. Returns `fn`'s result (None on ranks that did not run it)."""
    result, failure = None, None
    if not only_main or _rank() == 0:
        try:
            result = fn()
        except Exception as error:  # reported to the other ranks below, then re-raised
            failure = error
    messages = gather_objects(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    for rank, message in enumerate(messages):
        if message is not None:
            raise RankError(f"process {rank} of the run failed: {message}")
    return result


def check_shared_folder(folder: Path) -> None:
    """Raise InputError on every rank unless all ranks see the same `folder` (rank 0 writes a random nonce into it,
    the others read it back). Several machines need the run folder on a filesystem they share: checkpoints are
    written there by rank 0 and DCP shards by every rank, and ``--resume latest`` reads it on every rank."""
    if _world() == 1:
        return
    path = Path(folder) / SHARED_CHECK
    nonce = secrets.token_hex(16) if _rank() == 0 else None
    if _rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(nonce)
    barrier()
    nonce = gather_objects(nonce)[0]
    try:
        seen = path.read_text()
    except OSError:
        seen = None
    views = gather_objects((os.uname().nodename, seen == nonce))
    barrier()
    if _rank() == 0:
        path.unlink(missing_ok=True)
    bad = [f"rank {r} on {host}" for r, (host, ok) in enumerate(views) if not ok]
    if bad:
        raise InputError(
            f"run folder {folder}: {', '.join(bad)} do(es) not see the file rank 0 just wrote there. Every process "
            "of a run must see the same run folder: put run.out_dir on a filesystem all machines share (NFS, Lustre, "
            "a cloud file share) at the same path (docs/distributed.md)."
        )


def agree(value, what: str):
    """`value` when every rank has the same one; InputError on every rank naming each rank's value otherwise."""
    values = gather_objects(value)
    if any(v != values[0] for v in values):
        listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise InputError(f"the processes of the run disagree on {what} ({listed}); every rank must see the same "
                         "run folder and checkpoints (docs/distributed.md).")
    return value


# --------------------------------------------------------------------------- FSDP2
BLOCK_WRAPPERS = ("CueFusionBlock", "WanCueFusionBlock")  # the wrap unit of each backbone family


def fit_wrap_class(accelerator, model: nn.Module) -> None:
    """Point an FSDP launch config that names one family's block wrapper at `model`'s own (CueFusionBlock on
    CogVideoX, WanCueFusionBlock on Wan), so one accelerate yaml serves both families; other class names are kept.
    For an FSDP launch (the caller checks); a model without CueFusion blocks is left to the config."""
    blocks = getattr(model, "blocks", None)
    plugin = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    if not blocks or plugin is None:
        return
    names = list(plugin.transformer_cls_names_to_wrap or [])
    own = type(blocks[0]).__name__
    if own in names or not any(name in BLOCK_WRAPPERS for name in names):
        return
    plugin.transformer_cls_names_to_wrap = [own if name in BLOCK_WRAPPERS else name for name in names]
    log.info("FSDP wraps %s (the launch config named %s)", own, ", ".join(names))


def shard_frozen(module: nn.Module, accelerator) -> nn.Module:
    """Shard a frozen module (the stage-2 teacher) like accelerate shards the student: one FSDP2 unit per wrap class
    of the launch config, then the root; parameters are all-gathered block by block during its forward."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    names = set(plugin.transformer_cls_names_to_wrap or [])
    policy = plugin.mixed_precision_policy or MixedPrecisionPolicy()
    module.requires_grad_(False)
    for sub in list(module.modules())[1:]:
        if type(sub).__name__ in names:
            fully_shard(sub, reshard_after_forward=True, mp_policy=policy)
    fully_shard(module, reshard_after_forward=True, mp_policy=policy)
    return module


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) parameters and buffers of an FSDP2 `model` on the CPU of rank 0 (empty on the other
    ranks); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextlib.contextmanager
def gathered_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Within the context (rank 0 only), `module`'s sharded parameters are replaced by the full tensors of `state`
    (`full_state_dict`) so that code reading its weights (the checkpoint writer) sees plain tensors; the sharded
    parameters are put back afterwards."""
    swapped = []
    for name, param in list(module.named_parameters()):
        if name not in state:
            raise DirectAnimatorError(f"gathered weights: no full tensor for parameter {name}.")
        owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        leaf = name.rpartition(".")[2]
        swapped.append((owner, leaf, owner._parameters[leaf]))
        owner._parameters[leaf] = nn.Parameter(state[name], requires_grad=param.requires_grad)
    try:
        yield module
    finally:
        for owner, leaf, original in swapped:
            owner._parameters[leaf] = original


def reshard(model: nn.Module) -> None:
    """Put every FSDP2 unit of `model` back in its sharded state. FSDP2 keeps the root unit's parameters gathered
    after a forward (the backward would gather them again); after forwards without a backward (validation) they
    would stay gathered, and the module's parameters would not be the ones the optimizer holds."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
