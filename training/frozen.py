"""Where training keeps the frozen weights (the backbone under LoRA or cue-only training, the stage-2 teacher).

Two options of the training config (`model.frozen_storage`, `model.frozen_offload`), the training side of the
inference memory options (`directanimator.models.memory`):

- fp8 storage: the frozen backbone's layers stored as float8 e4m3 and computed in `model.dtype`, by the same
  diffusers layerwise casting as inference (`memory.store_fp8`: norms, embeddings, the time embedding, proj_out,
  CueFusion and the LoRA layers stay in their dtype). Autograd keeps the upcast weight of a layer for its
  backward, so under gradient checkpointing one block's weights exist in `model.dtype` at a time.
- block offload: the frozen weights of each transformer block kept on the CPU and moved to the GPU for that block's
  forward (and for its recomputation under gradient checkpointing), then dropped; the trained tensors (LoRA,
  CueFusion) and everything outside the blocks stay on the GPU. Needs gradient checkpointing: without it autograd
  would keep every block's GPU weights until the backward, which saves nothing.

A separate stage-2 teacher (frozen, no gradient) gets the inference options themselves (`apply_memory_options`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from directanimator.errors import InputError
from directanimator.models import DirectAnimatorTransformer
from directanimator.models.loader import resolve_dtype
from directanimator.models.memory import MemoryOptions, apply_memory_options, store_fp8

log = logging.getLogger(__name__)


def check_frozen_launch(storage: str, offload: str, *, sharded: bool, deepspeed: bool) -> None:
    """InputError when the frozen-weight options meet FSDP or DeepSpeed, which shard the frozen weights themselves."""
    if (storage != "dtype" or offload != "none") and (sharded or deepspeed):
        raise InputError(f"config model.frozen_storage={storage!r} / frozen_offload={offload!r}: for one process or "
                         f"DDP; this run is {'FSDP' if sharded else 'DeepSpeed'}, which shards the frozen weights "
                         "across the GPUs instead. Leave them at 'dtype' / 'none', or launch with accelerate_ddp.yaml.")


def place_frozen(model: DirectAnimatorTransformer, device: torch.device, *, storage: str = "dtype",
                 offload: str = "none", compute: str | torch.dtype = "fp32") -> list[str]:
    """Store and place `model` for training on `device` after `setup_trainable` (so the trained tensors are known):
    fp8 storage of the frozen backbone layers computed in `compute` (model.dtype), block offload of the frozen block
    weights, everything else moved to `device`. Returns one note per option. With both options at their defaults
    this is ``model.to(device)``."""
    notes = []
    if storage == "fp8":
        notes.append(store_fp8(model, resolve_dtype(compute)))
        stray = [name for name, p in model.named_parameters() if p.requires_grad and p.dtype == torch.float8_e4m3fn]
        if stray:  # the skip rules above keep LoRA and CueFusion; anything else trained must not be rounded
            raise InputError(f"config model.frozen_storage='fp8': trained tensors {stray[:3]} would be stored in "
                             "fp8; set model.frozen_storage='dtype'.")
    offloaded: set[int] = set()
    if offload == "blocks":
        offloader = FrozenBlockOffload(model, device)
        offloaded = offloader.parameter_ids
        notes.append(offloader.describe())
    if not notes:
        model.to(device)
        return notes
    _move_except(model, device, offloaded)
    # DDP broadcasts every parameter it is given at the start and wants them on one device type; frozen ones need no
    # sync, fp8 ones may not be broadcastable, and offloaded ones live on the CPU between forwards
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    for note in notes:
        log.info("frozen weights: %s", note)
    return notes


def place_teacher(teacher: DirectAnimatorTransformer, device: torch.device, *, storage: str = "dtype",
                  offload: str = "none") -> list[str]:
    """A separate frozen stage-2 teacher with the inference memory options (fp8 storage, block offload without
    streams, since the teacher pass ends early by an exception after the S2X block), on `device`."""
    teacher.requires_grad_(False)
    if storage == "dtype" and offload == "none":
        teacher.to(device)
        return []
    options = MemoryOptions(storage="bf16" if storage == "dtype" else "fp8", offload=offload, stream=False)
    notes = apply_memory_options(teacher, options, device=device)
    if offload == "none":
        teacher.to(device)
    return notes


def _move_except(model: nn.Module, device: torch.device, keep: set[int]) -> None:
    """Move every parameter and buffer of `model` to `device` except the parameters whose ids are in `keep` (never
    the whole model at once on the device)."""
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in keep and p.device != device:
                p.data = p.data.to(device)
        for module in model.modules():
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.device != device:
                    module._buffers[name] = buffer.to(device)


class FrozenBlockOffload:
    """The frozen weights of each transformer block on the CPU, moved to `device` for the block's forward.

    Written here because diffusers' group offloading moves every parameter of a block, the trained LoRA and
    CueFusion tensors and their gradients included, which would leave them on the CPU for the optimizer step.
    A block's weights go back when its forward returns, or, for a recomputation under gradient checkpointing (which
    stops as soon as the backward has what it needs, before the block returns), when the next block is onloaded:
    so one block is on the device at a time, besides what autograd holds for the running backward. Copies go from
    pinned memory on CUDA; they are not streamed (the block waits for its weights).
    """

    def __init__(self, model: DirectAnimatorTransformer, device: torch.device) -> None:
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.blocks: list[tuple[nn.Module, list[nn.Parameter], list[torch.Tensor]]] = []
        self.onloaded: int | None = None  # the block whose weights are on the device
        for index, block in enumerate(model.blocks):
            params = [p for p in block.parameters() if not p.requires_grad]
            stored = [self._stored(p) for p in params]
            for p, cpu in zip(params, stored):
                p.data = cpu
            self.blocks.append((block, params, stored))
            block.register_forward_pre_hook(self._onload_hook(index))
            block.register_forward_hook(self._offload_hook(index))
        self.parameter_ids = {id(p) for _, params, _ in self.blocks for p in params}
        self.bytes = sum(t.numel() * t.element_size() for _, _, stored in self.blocks for t in stored)

    def _stored(self, p: nn.Parameter) -> torch.Tensor:
        cpu = p.data.to("cpu")
        return cpu.pin_memory() if self.pin else cpu

    def onload(self, index: int) -> None:
        """Put block `index`'s frozen weights on the device (first returning any other block's)."""
        if self.onloaded is not None and self.onloaded != index:
            self.offload(self.onloaded)
        _, params, stored = self.blocks[index]
        for p, cpu in zip(params, stored):
            # copy=True: a distinct tensor on a CPU device too, so the CPU path makes the same moves as a GPU one
            p.data = cpu.to(self.device, non_blocking=self.pin, copy=True)
        self.onloaded = index

    def offload(self, index: int) -> None:
        """Point block `index`'s frozen weights back at their stored CPU copies (exact: they are never trained);
        autograd keeps whatever device copy a pending backward needs."""
        _, params, stored = self.blocks[index]
        for p, cpu in zip(params, stored):
            p.data = cpu
        if self.onloaded == index:
            self.onloaded = None

    def _onload_hook(self, index: int):
        return lambda _module, _args: self.onload(index)

    def _offload_hook(self, index: int):
        return lambda _module, _args, _output: self.offload(index)

    def describe(self) -> str:
        return (f"block offload: {self.bytes / 2**30:.2f} GiB of frozen block weights on the CPU, moved to "
                f"{self.device} one block at a time ({len(self.blocks)} blocks)")
