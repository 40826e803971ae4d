"""DeepSpeed ZeRO-2 / ZeRO-3 through accelerate, configured from the training config.

``accelerate launch --config_file training/configs/accelerate_deepspeed.yaml`` (ZeRO-2) or
``accelerate_deepspeed_zero3.yaml`` asks for DeepSpeed; the launch config decides only the ZeRO stage and the
offload devices. Everything the training config already says is put into the DeepSpeed config here, in code, so the
two cannot disagree: micro-batch size (``run.batch_size``), gradient accumulation (``run.grad_accum``), gradient
clipping (``optim.clip_norm``) and precision (``run.mixed_precision``: bf16 autocast with fp32 weights and optimizer,
as in the trainer's other modes, through DeepSpeed's ``torch_autocast``).

The engine does the stepping: every micro-batch goes through ``accelerator.accumulate`` and the engine runs the
optimizer (clipping included) once per optimizer step. Checkpoints keep the engine's own files in ``deepspeed/``
(every rank writes its ZeRO partition of the optimizer state; DeepSpeed's format, pickled by torch.save, covered by
the folder's sha256 digests, which resume checks before loading), next to the usual ``trainable.safetensors``,
``state.*`` and ``model.safetensors`` written from the full weights (gathered from every rank under ZeRO-3).
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from directanimator.errors import BackendUnavailableError, CheckpointError, InputError

from .config import TrainConfig

log = logging.getLogger(__name__)

ENGINE_DIR = "deepspeed"  # the engine's files inside a checkpoint folder
ENGINE_TAG = "engine"
STAGES = (2, 3)
INSTALL = "pip install -r requirements-multigpu.txt (deepspeed; DS_BUILD_OPS=0 skips compiling its CUDA ops)"
# what tests/test_training_deepspeed.py runs; logged at the start of every DeepSpeed run
EXERCISED = ("exercised by tests/test_training_deepspeed.py with deepspeed 0.19.8 on CPUs only (2 processes, gloo): "
             "stage 1 under ZeRO-2 (LoRA, EMA, fp32 and bf16 autocast, resume after SIGKILL) and ZeRO-3 (full "
             "fine-tuning without EMA, fp32, resume, model file), stage 2 with the S2X teacher (teacher_mode "
             "'copy') under ZeRO-2, gradient accumulation, clipping; refused up front: validation during a ZeRO-3 "
             "run and a full fine-tuning's EMA under ZeRO-3; NOT exercised: GPUs and NCCL, stage 2 under ZeRO-3 or "
             "with teacher_mode 'lora_disabled', a LoRA's EMA under ZeRO-3, offload_optimizer/offload_param "
             "(DeepSpeedCPUAdam), the bitsandbytes 8-bit AdamW under ZeRO, several machines")


def deepspeed_requested() -> bool:
    """Whether the launch asked for DeepSpeed (``accelerate launch`` with a DeepSpeed config sets the variable)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def require_deepspeed() -> None:
    """BackendUnavailableError naming the install command when deepspeed cannot be imported."""
    try:
        import deepspeed  # noqa: F401
    except ImportError as error:
        raise BackendUnavailableError(
            f"the accelerate launch config asks for DeepSpeed (distributed_type: DEEPSPEED), which is not installed "
            f"({error}): {INSTALL}; or launch with accelerate_ddp.yaml / accelerate_fsdp.yaml instead."
        ) from error


def deepspeed_config(config: TrainConfig, *, world: int, zero_stage: int, offload_optimizer: str = "none",
                     offload_param: str = "none", bf16: bool = False) -> dict:
    """The DeepSpeed config of a run of `world` processes: batch, accumulation and clipping from `config`."""
    if zero_stage not in STAGES:
        raise InputError(f"accelerate config: zero_stage {zero_stage} is not supported by the trainer; use 2 "
                         "(accelerate_deepspeed.yaml) or 3 (accelerate_deepspeed_zero3.yaml).")
    for name, device in (("offload_optimizer_device", offload_optimizer), ("offload_param_device", offload_param)):
        if device not in ("none", "cpu"):
            raise InputError(f"accelerate config: {name}: {device!r}; the trainer supports 'none' or 'cpu'.")
    if offload_param != "none" and zero_stage != 3:
        raise InputError("accelerate config: offload_param_device needs zero_stage: 3.")
    r, o = config.run, config.optim
    return {
        "train_micro_batch_size_per_gpu": r.batch_size,
        "gradient_accumulation_steps": r.grad_accum,
        "train_batch_size": r.batch_size * r.grad_accum * world,
        "gradient_clipping": float(o.clip_norm),  # 0.0: no clipping, as optim.clip_norm = 0
        "zero_optimization": {"stage": zero_stage, "offload_optimizer": {"device": offload_optimizer},
                              "offload_param": {"device": offload_param},
                              # ZeRO-3: accelerator.get_state_dict gathers the whole model on rank 0 for
                              # model.safetensors (in the parameters' own dtype, fp32 here, despite the name)
                              "stage3_gather_16bit_weights_on_model_save": True},
        # the trainer's bf16 is autocast around fp32 weights and an fp32 optimizer; DeepSpeed's own "bf16" mode
        # would cast the whole model (CueFusion included) to bf16
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "torch_autocast": {"enabled": bf16, "dtype": "bfloat16"},
        # the optimizer is the trainer's (torch AdamW or the bitsandbytes 8-bit one), not one of DeepSpeed's
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
    }


def _launch_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value in (None, "", "auto", "none") else int(float(value))


def launch_settings(config: TrainConfig) -> dict:
    """ZeRO stage and offload devices of the accelerate launch config (its environment variables); InputError when
    it sets something the training config decides and disagrees with it, or names a DeepSpeed config file."""
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") not in ("none", ""):
        raise InputError("accelerate config: deepspeed_config_file is not used by the trainer, which builds the "
                         "DeepSpeed config from the training config; set zero_stage (and offload devices) under "
                         "deepspeed_config instead (training/configs/accelerate_deepspeed.yaml).")
    accum = _launch_int("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if accum is not None and accum != config.run.grad_accum:
        raise InputError(f"accelerate config: gradient_accumulation_steps {accum} differs from run.grad_accum "
                         f"{config.run.grad_accum}; remove it from the accelerate config (the training config sets "
                         "it).")
    clip = os.environ.get("ACCELERATE_GRADIENT_CLIPPING")
    if clip not in (None, "", "auto", "none") and float(clip) != float(config.optim.clip_norm):
        raise InputError(f"accelerate config: gradient_clipping {clip} differs from optim.clip_norm "
                         f"{config.optim.clip_norm}; remove it from the accelerate config (the training config sets "
                         "it).")
    stage = _launch_int("ACCELERATE_DEEPSPEED_ZERO_STAGE")  # unset: ZeRO-2; a stage 0 is refused, not replaced
    return {"zero_stage": 2 if stage is None else stage,
            "offload_optimizer": os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none").lower(),
            "offload_param": os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none").lower()}


def check_deepspeed_launch(config: TrainConfig) -> None:
    """When the launch asks for DeepSpeed: deepspeed importable (BackendUnavailableError), the launch config agreeing
    with `config` and what the trainer supports under its ZeRO stage (InputError). Reads only the environment and
    `config`, so the stages call it before the model loads; nothing to check without DeepSpeed."""
    if not deepspeed_requested():
        return
    # the settings first (they need no deepspeed), so one run of the command names every mistake it can
    settings = launch_settings(config)
    deepspeed_config(config, world=int(os.environ.get("WORLD_SIZE", "1")), **settings)  # stage and offload checks
    if settings["zero_stage"] == 3:
        _check_zero3(config)
    require_deepspeed()


def _check_zero3(config: TrainConfig) -> None:
    """InputError for what the trainer does not do under ZeRO-3: validation during the run, a full EMA copy."""
    if config.run.validate_every > 0:
        # forwards without a backward leave ZeRO-3 parameters gathered; releasing them after sampling has not been
        # exercised by a multi-process run here, so the trainer does not validate during a ZeRO-3 run
        raise InputError(f"config run.validate_every={config.run.validate_every}: validation during a DeepSpeed "
                         "ZeRO-3 run is not supported; set run.validate_every=0 and sample the checkpoints' "
                         "model.safetensors afterwards (python -m training validate), or launch with "
                         "accelerate_deepspeed.yaml (ZeRO-2) or accelerate_fsdp.yaml.")
    if config.optim.ema_decay > 0 and config.model.train == "full":
        raise InputError(f"config optim.ema_decay={config.optim.ema_decay} with model.train='full' under DeepSpeed "
                         "ZeRO-3: the EMA would be a whole fp32 copy of the backbone on every process (4 bytes per "
                         "parameter, about 22 GB for CogVideoX-5B, on each GPU), which ZeRO-3 is used to avoid. Set "
                         "optim.ema_decay=0, train a LoRA (model.train='lora'), or launch with "
                         "accelerate_deepspeed.yaml (ZeRO-2) or accelerate_fsdp.yaml (FSDP shards the EMA).")


def deepspeed_plugin(config: TrainConfig, *, bf16: bool = False):
    """accelerate's DeepSpeedPlugin for a run of `config`, its DeepSpeed config from `deepspeed_config` (ZeRO stage
    and offload from the launch config, `launch_settings`)."""
    from accelerate.utils import DeepSpeedPlugin

    settings = launch_settings(config)
    ds = deepspeed_config(config, world=int(os.environ.get("WORLD_SIZE", "1")), bf16=bf16, **settings)
    # accelerate refuses a config dict when the launch config also set ZeRO fields (it would ignore them), so the
    # plugin is built from the same values and then given the whole dict
    plugin = DeepSpeedPlugin(zero_stage=settings["zero_stage"], gradient_accumulation_steps=config.run.grad_accum,
                             gradient_clipping=float(config.optim.clip_norm),
                             offload_optimizer_device=settings["offload_optimizer"],
                             offload_param_device=settings["offload_param"], zero3_init_flag=False,
                             zero3_save_16bit_model=True)
    plugin.deepspeed_config.update(ds)
    return plugin


def make_deepspeed_accelerator(config: TrainConfig, *, mixed_precision: str, timeout_minutes: float):
    """The run's `accelerate.Accelerator` with the `deepspeed_plugin` of `config`. Runs on CPUs too (DeepSpeed's CPU
    accelerator, gloo)."""
    require_deepspeed()
    from accelerate import Accelerator, PartialState
    from accelerate.utils import InitProcessGroupKwargs

    if timeout_minutes <= 0:
        raise InputError(f"config run.dist_timeout_minutes={timeout_minutes}: must be > 0.")
    plugin = deepspeed_plugin(config, bf16=mixed_precision == "bf16")
    handler = InitProcessGroupKwargs(timeout=timedelta(minutes=timeout_minutes))
    if not torch.cuda.is_available():
        # without a GPU backend accelerate's state would count each process as a run of its own (1 process, rank
        # 0) while DeepSpeed's CPU accelerator joins them all over gloo: naming gloo makes it read that world
        PartialState(backend="gloo", **handler.to_kwargs())
    # mixed precision "no" for accelerate: the engine autocasts (torch_autocast) and keeps fp32 weights
    accelerator = Accelerator(mixed_precision="no", deepspeed_plugin=plugin, kwargs_handlers=[handler],
                              gradient_accumulation_steps=config.run.grad_accum)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != world:
        raise RuntimeError(f"DeepSpeed launch of {world} processes, but accelerate counts {accelerator.num_processes}")
    if accelerator.is_main_process:
        log.warning("DeepSpeed ZeRO-%d (%d processes, offload optimizer %s, parameters %s); %s.",
                    zero_stage(accelerator), world, plugin.offload_optimizer_device, plugin.offload_param_device,
                    EXERCISED)
    return accelerator


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator) -> int:
    return int(accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"])


@contextlib.contextmanager
def gathered(params: list[nn.Parameter], accelerator) -> Iterator[None]:
    """Within the context the ZeRO-3 partitioned `params` are whole on every rank (every rank must enter it);
    changes made inside are dropped. Nothing to do under ZeRO-2, which keeps parameters whole."""
    if not (is_deepspeed(accelerator) and zero_stage(accelerator) == 3):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
        yield


def full_trainable(names: dict[int, str], params: list[nn.Parameter], accelerator) -> dict[str, Tensor]:
    """The trained parameters by name, whole, as CPU copies on rank 0 (the checkpoint writer), empty on the other
    ranks; every rank calls it (each takes part in the ZeRO-3 gather)."""
    with gathered(params, accelerator):
        if not accelerator.is_main_process:
            return {}
        return {names[id(p)]: p.detach().float().cpu().clone() for p in params}


def save_engine(engine, checkpoint: Path) -> None:
    """Every rank writes its part of the engine state (module, ZeRO optimizer partition) into ``deepspeed/``;
    frozen parameters are left out (the backbone is rebuilt from model.backbone)."""
    engine.save_checkpoint(str(Path(checkpoint) / ENGINE_DIR), tag=ENGINE_TAG, exclude_frozen_parameters=True)


def has_engine(checkpoint: Path) -> bool:
    return (Path(checkpoint) / ENGINE_DIR / ENGINE_TAG).is_dir()


def load_engine(engine, checkpoint: Path) -> None:
    """Every rank reads its part of the engine state written by `save_engine` (same world size and ZeRO stage)."""
    folder = Path(checkpoint) / ENGINE_DIR
    try:
        loaded, _ = engine.load_checkpoint(str(folder), tag=ENGINE_TAG, load_module_strict=False,
                                           load_optimizer_states=True, load_lr_scheduler_states=False)
    except Exception as error:  # DeepSpeed raises assertion, key and file errors for a mismatched checkpoint
        raise CheckpointError(f"checkpoint {checkpoint}: DeepSpeed could not load its {ENGINE_DIR}/ state ({error}); "
                              "resume with the same number of processes, ZeRO stage and model.train setting it "
                              "was written with, or from an older checkpoint.") from error
    if loaded is None:
        raise CheckpointError(f"checkpoint {checkpoint}: no DeepSpeed engine state in {folder}.")
    if engine.zero_optimization_partition_weights():
        engine.empty_partition_cache()  # ZeRO-3: release what loading left gathered before the first forward
