"""The training loop shared by both stages: model setup (LoRA / full / cue-only), the backbone's own denoising loss,
AdamW with warmup + constant/cosine LR, clipping, EMA, accelerate, logging, checkpoints and exact resume.

Randomness: each sample's noise, timestep, dropout flags and pseudo variant come from its own CPU generator,
seeded by (run.seed, step, micro-batch, index of the sample in the global batch); the global batch order depends
only on (seed, epoch), and process `rank` of `world` trains on the `rank`-th share of each global batch. So a
resumed run continues the uninterrupted run's trajectory exactly on the CPU, and N processes of batch B follow
one process of batch N*B (up to float rounding); the logged values are means over all processes.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from directanimator.atomic import check_output_folder, claim_output_folder
from directanimator.errors import BackendUnavailableError, InputError
from directanimator.models import CueFusionConfig, DirectAnimatorTransformer, load_model
from directanimator.models.family import BackboneSpec
from directanimator.sampling import make_scheduler

from .checkpointing import (DIGESTS, MODEL, has_ema, is_legacy_run, is_sharded, load_sharded_state,
                            load_training_checkpoint, read_jsonl, remove_partial_checkpoints, resolve_resume, rng_state,
                            save_training_checkpoint, set_rng_state, truncate_metrics, verify_checkpoint)
from .config import TrainConfig, add_config_arguments, load_config, save_config
from .data import PREPARE_INFO, Batch, BucketBatchSampler, CachedClips, make_batch, per_sample, sample_generators
from .flow import FLOW_TIMESTEPS, FlowMatching, flow_shift
from .frozen import check_frozen_launch, place_frozen
from .distributed import (agree, barrier, check_shared_folder, fit_wrap_class, full_state_dict, gathered_weights,
                          is_fsdp, make_accelerator, on_all_ranks, reshard)
from .deepspeed_support import (check_deepspeed_launch, deepspeed_requested, full_trainable, gathered, has_engine,
                                is_deepspeed, load_engine, make_deepspeed_accelerator, save_engine, zero_stage)
from .precision import warn_without_native_bf16

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
RUN_COMMAND = "python -m training stage1/stage2"  # the output marker of a run folder (directanimator.atomic)
LossFn = Callable[["Trainer", Batch, int], "tuple[Tensor, dict[str, float]]"]


# --------------------------------------------------------------------------- model
@dataclass
class LoadedModel:
    transformer: DirectAnimatorTransformer
    scheduler_config: dict
    null_text: Tensor
    checkpoint_weights: str = "none"  # weights kind of the starting checkpoint
    info: dict = field(default_factory=dict)


def load_student(config: TrainConfig, *, checkpoint: str | None = None, verify: bool = True) -> LoadedModel:
    """The backbone (+ `model.checkpoint` or `checkpoint`) as a DirectAnimatorTransformer on the CPU. `verify=False`
    skips the sha256 check of a training checkpoint's model file (for a caller that has just verified it)."""
    m = config.model
    ckpt = checkpoint if checkpoint is not None else (m.checkpoint or None)
    if verify and ckpt and (Path(ckpt).parent / DIGESTS).is_file():  # a training checkpoint's model file (stage 1's)
        verify_checkpoint(Path(ckpt).parent, (Path(ckpt).name,))
    seed_everything(config.run.seed)  # fresh CueFusion down-projections are random: same seed, same start
    animator = load_model(m.backbone, ckpt, dtype=m.dtype, vae=m.vae or None,
                          cue_fusion=CueFusionConfig(modulation_rank=m.modulation_rank, text_rank=m.text_rank,
                                                     reference_in_every_frame=m.reference_in_every_frame,
                                                     residual_reference=m.residual_reference))
    return LoadedModel(animator.transformer, dict(animator.scheduler_config), animator.null_text,
                       animator.info.get("weights", "none"), animator.info)


def setup_trainable(model: DirectAnimatorTransformer, config: TrainConfig, *, train_cues: bool = True) -> list:
    """Freeze everything, then unfreeze what `model.train` says (a LoRA is added when none is attached) and the
    CueFusion modules (unless `train_cues` is False). Trained parameters are kept in fp32. Returns them."""
    m = config.model
    model.requires_grad_(False)
    backbone = model.backbone
    if m.train == "lora":
        if not getattr(backbone, "_hf_peft_config_loaded", False):
            from peft import LoraConfig

            seed_everything(config.run.seed + 1)  # LoRA A matrices start random
            backbone.add_adapter(LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, init_lora_weights=True,
                                            target_modules=list(m.lora_targets)))
        for name, param in backbone.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
    elif m.train == "full":
        for name, param in backbone.named_parameters():
            if ".fusion." not in name:
                param.requires_grad_(True)
    if train_cues:
        for param in model.cue_parameters():
            param.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if m.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    count = sum(p.numel() for p in params)
    log.info("training %d tensors, %.3f M parameters (%s backbone, CueFusion %s)", len(params), count / 1e6,
             m.train, "trained" if train_cues else "frozen")
    return params


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warmup, then constant, cosine down to `min_lr_ratio`, or (wsd) constant
    until the last `decay_steps` of the run and linear down to `min_lr_ratio` over them."""
    o, steps = config.optim, config.run.steps

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        if o.schedule == "wsd":
            left = steps - step  # steps to go, counting this one
            return 1.0 if left > o.decay_steps else o.min_lr_ratio + (1 - o.min_lr_ratio) * left / o.decay_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what torch's fused AdamW takes


def make_optimizer(params: list, config: TrainConfig, device: torch.device, *,
                   sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW; the bitsandbytes 8-bit AdamW when asked for, or with "auto" on CUDA when it is importable.
    `sharded` (FSDP2's DTensor parameters): torch's per-tensor AdamW loop, never the 8-bit one (bitsandbytes does
    not take DTensors), so "auto" falls back to torch AdamW and "yes" is refused."""
    o = config.optim
    kwargs = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    if sharded:
        if o.adamw_8bit == "yes":
            raise InputError("optim.adamw_8bit='yes' under FSDP: bitsandbytes' 8-bit AdamW does not support the "
                             "sharded (DTensor) parameters of FSDP2; set it to 'auto' or 'no', or launch with "
                             "accelerate_ddp.yaml or a DeepSpeed config.")
        if o.adamw_8bit == "auto" and device.type == "cuda":
            log.info("optim.adamw_8bit='auto' under FSDP: torch AdamW (bitsandbytes' 8-bit AdamW does not support "
                     "DTensor parameters)")
        return torch.optim.AdamW(params, **kwargs)
    want = o.adamw_8bit == "yes" or (o.adamw_8bit == "auto" and device.type == "cuda")
    if want:
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        except ImportError as error:
            if o.adamw_8bit == "yes":
                raise InputError("optim.adamw_8bit='yes' needs bitsandbytes (pip install bitsandbytes), or set "
                                 "it to 'auto' or 'no'.") from error
    if device.type in ("cpu", "cuda") and all(p.dtype in FUSED_DTYPES for p in params):
        # one fused kernel instead of a Python loop over the tensors (torch's CPU default): docs/benchmarks.md,
        # "Training precision", has the demo model's step with both
        return torch.optim.AdamW(params, fused=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def prepare_info(data: CachedClips) -> dict:
    return json.loads((data.folder / PREPARE_INFO).read_text())


# --------------------------------------------------------------------------- denoising
@dataclass
class NoisedBatch:
    """Transformer inputs for one batch: ``inputs [B, 1+N, C_in, h, w]`` (noisy latents ++ the family's image
    conditioning, as its image-to-video pipeline builds them), ``timesteps`` ``[B]`` (or ``[B, 1+N]`` where a
    leading clean frame has timestep 0: Wan2.2 TI2V), the target of the backbone's prediction (v on CogVideoX, the
    flow velocity on Wan), the cue weights, the CLIP image embedding (Wan2.1 I2V) and how many leading frames are
    given clean (outside the loss)."""

    inputs: Tensor
    timesteps: Tensor
    target: Tensor
    cue_weight: Tensor
    image_embeds: Tensor | None = None
    clean_frames: int = 0

    def forward_kwargs(self) -> dict:
        """The keyword arguments of the transformer's forward besides the cues."""
        return {"cue_weight": self.cue_weight} if self.image_embeds is None else {
            "cue_weight": self.cue_weight, "image_embeds": self.image_embeds}


def image_conditioning(spec: BackboneSpec | None, batch: Batch, keep: Tensor, frames: int) -> Tensor | None:
    """The image channels ``[B, frames, C_img, h, w]`` concatenated to the noisy latents, as each family's image-to-video
    pipeline builds them, the same as `directanimator.conditioning.image_window` at sampling (None for Wan2.2 TI2V,
    whose image is the clean first latent frame): CogVideoX 1.0 and 1.5 the reference latent in frame 0, zeros
    after; Wan2.1 I2V the cached mask + condition latent (`Batch.image`). A dropped reference (`keep` 0) leaves them
    zero."""
    conditioning = "latent_channels" if spec is None else spec.image_conditioning
    if conditioning == "first_frame":
        return None
    if conditioning == "mask_and_latent":
        if batch.image is None:
            raise InputError("training batch: a Wan image-to-video backbone needs the cached mask and condition "
                             "latents (w*.image), which this cache lacks; run `python -m training prepare` with "
                             "this backbone.")
        return batch.image * keep
    reference = batch.reference * keep
    return torch.cat([reference, torch.zeros_like(reference).expand(-1, frames - 1, -1, -1, -1)], dim=1)


def noised_batch(batch: Batch, scheduler, generator: torch.Generator | list[torch.Generator], *,
                 reference_factor: float, t_range: tuple[int, int], residual: bool = False,
                 spec: BackboneSpec | None = None, flow: FlowMatching | None = None) -> NoisedBatch:
    """Clean latents = reference frame (converted to the diffusion scale) + target frames; draw each sample's noise,
    then its timestep; noise them the backbone's way and return its target. With `flow` (Wan,
    ``spec.prediction == "flow"``): ``x_t = (1 - sigma) x0 + sigma noise``, target ``noise - x0``, timestep
    ``sigma * 1000`` (`training.flow`); else (CogVideoX) the DDPM `scheduler` at uniform integer timesteps in
    `t_range`, target its velocity. The image conditioning follows the family (`image_conditioning`); Wan2.2 TI2V
    instead gives the clean reference latent as frame 0 with timestep 0 and leaves that frame out of the loss.
    A dropped reference leaves the image conditioning zero. `residual` (``CueFusionConfig.residual_reference``): the
    clean latents minus the reference frame in every frame (a dropped reference subtracts nothing). `generator`:
    one per sample or one shared. `spec` None is CogVideoX 1.0."""
    keep = (~batch.drop_reference).to(batch.reference.dtype).view(-1, 1, 1, 1, 1)
    x0 = torch.cat([batch.reference * reference_factor, batch.target], dim=1)
    if residual:
        x0 = x0 - batch.reference * (reference_factor * keep)
    noise, t = [], []
    for g in per_sample(generator, x0.shape[0]):
        noise.append(torch.randn(x0.shape[1:], generator=g))
        t.append(flow.sigma(g) if flow is not None else torch.randint(t_range[0], t_range[1], (), generator=g))
    noise, t = torch.stack(noise), torch.stack(t)
    device = batch.target.device
    noise, t = noise.to(device), t.to(device)
    if flow is not None:
        noisy, target, t = flow.noised(x0, noise, t), flow.velocity(x0, noise), flow.timestep(t)
    else:
        noisy, target = scheduler.add_noise(x0, noise, t), scheduler.get_velocity(x0, noise, t)
    clean = 0
    if spec is not None and spec.image_conditioning == "first_frame":
        # Wan2.2 TI2V: the clean reference latent is frame 0 at timestep 0, as its pipeline samples (no loss on it)
        clean = 1
        noisy = torch.cat([x0[:, :1] * keep, noisy[:, 1:]], dim=1)
        t = torch.cat([torch.zeros_like(t)[:, None], t[:, None].expand(-1, x0.shape[1] - 1)], dim=1)
    image = image_conditioning(spec, batch, keep, x0.shape[1])
    inputs = noisy if image is None else torch.cat([noisy, image.to(noisy.dtype)], dim=2)
    embeds = None
    if spec is not None and spec.image_conditioning == "mask_and_latent":
        if batch.image_embeds is None:
            raise InputError("training batch: Wan2.1 image-to-video needs the reference's cached CLIP image "
                             "embedding (image_embeds), which this cache lacks; prepare it with this backbone.")
        embeds = batch.image_embeds * keep.view(-1, 1, 1)
    return NoisedBatch(inputs, t, target, (~batch.drop_cues).float(), embeds, clean)


def denoising_loss(prediction: Tensor, target: Tensor, *, clean_frames: int = 0) -> Tensor:
    """MSE on the backbone's prediction target (v on CogVideoX, the flow velocity on Wan) over the frames after the
    leading `clean_frames` (frames given clean, as Wan2.2 TI2V's reference frame, carry no loss). CogVideoX's own loss
    (x0 error weighted by 1 / (1 - alpha_bar)) is the same quantity: the x0 error equals sqrt(1 - alpha_bar) times
    the velocity error."""
    if clean_frames:
        prediction, target = prediction[:, clean_frames:], target[:, clean_frames:]
    return F.mse_loss(prediction.float(), target.float())


# --------------------------------------------------------------------------- loop
class Trainer:
    """Runs `config.run.steps` optimizer steps of `loss_fn` over `data` and keeps the run folder."""

    def __init__(self, config: TrainConfig, loaded: LoadedModel, data: CachedClips, loss_fn: LossFn, *,
                 stage: int, train_cues: bool = True):
        self.config = config
        self.stage = stage
        self.data = data
        self.loss_fn = loss_fn
        self.loaded = loaded
        self.run_dir = config.run_dir
        cuda = torch.cuda.is_available()
        precision = config.run.mixed_precision
        # "auto": bf16 on CUDA only; "bf16" asks for it on the CPU too (autocast, fp32 weights and optimizer)
        mixed = "bf16" if precision == "bf16" or (precision == "auto" and cuda) else "no"
        if mixed == "bf16" and not cuda:
            warn_without_native_bf16("run.mixed_precision='bf16'", "training runs", "run.mixed_precision='no'")
        # DeepSpeed (a DEEPSPEED launch config): ZeRO-2/3, configured from `config` (training/deepspeed_support.py)
        self.accelerator = (make_deepspeed_accelerator(config, mixed_precision=mixed,
                                                       timeout_minutes=config.run.dist_timeout_minutes)
                            if deepspeed_requested() else
                            make_accelerator(mixed_precision=mixed, timeout_minutes=config.run.dist_timeout_minutes))
        self.device = self.accelerator.device
        self.sharded = is_fsdp(self.accelerator)  # FSDP2: parameters, gradients and optimizer states sharded
        self.deepspeed = is_deepspeed(self.accelerator)  # the engine steps, clips and keeps the optimizer state
        log.info("process %d of %d: accelerate %s, backend %s, device %s", self.accelerator.process_index,
                 self.accelerator.num_processes, self.accelerator.distributed_type.value,
                 self.accelerator.state.backend or "none", self.device)
        m = config.model
        check_frozen_launch(m.frozen_storage, m.frozen_offload, sharded=self.sharded, deepspeed=self.deepspeed)
        model = loaded.transformer
        setup_trainable(model, config, train_cues=train_cues)
        if m.frozen_storage == "fp8" and loaded.checkpoint_weights == "full":
            raise InputError(f"config model.frozen_storage='fp8': model.checkpoint {m.checkpoint!r} holds full "
                             "backbone weights, which this run exports again and fp8 would round; set "
                             "model.frozen_storage='dtype'.")
        self.frozen_notes = place_frozen(model, self.device, storage=m.frozen_storage, offload=m.frozen_offload,
                                         compute=m.dtype)
        self.model, self.optimizer = self.prepare(model, config)
        self.unwrapped: DirectAnimatorTransformer = self.accelerator.unwrap_model(self.model)
        # FSDP2 replaces the parameter objects inside prepare: the trained set is collected from the prepared model
        self.names = {id(p): n for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        self.params = [p for p in self.unwrapped.parameters() if p.requires_grad]
        optimized = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if optimized != set(self.names) and not self.deepspeed:  # ZeRO's optimizer holds flat partitions instead
            raise RuntimeError("the optimizer does not hold the prepared model's trained parameters "
                               f"({len(optimized)} vs {len(self.names)} tensors)")
        self._vae = None  # loaded on the first validation, with the image encoder of a Wan2.1 I2V backbone
        self._image_encoder: dict = {}
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.spec: BackboneSpec = self.unwrapped.spec
        # the backbone's own noising: flow matching with its sampling shift (Wan), else its DDPM schedule (CogVideoX)
        self.flow = None
        self.scheduler = None
        if self.spec.prediction == "flow":
            self.flow = FlowMatching(flow_shift(loaded.scheduler_config), self.timestep_range)
        else:
            self.scheduler = make_scheduler("ddim", loaded.scheduler_config)
        self.reference_factor = float(prepare_info(data).get("reference_to_latent", 1.0))
        self.sampler = BucketBatchSampler([it.bucket for it in data.items], config.run.batch_size,
                                          seed=config.run.seed, rank=self.accelerator.process_index,
                                          world=self.accelerator.num_processes)
        self._generators: list[torch.Generator] = []  # the current micro-batch's, one per sample (train_step)
        with gathered(self.params, self.accelerator):  # ZeRO-3: whole parameters for the EMA's start
            self.ema = ({self._name(p): p.detach().clone() for p in self.params} if config.optim.ema_decay > 0
                        else None)
        self._ema_tensors = [self.ema[self._name(p)] for p in self.params] if self.ema is not None else []
        self.step = 0

    def prepare(self, model: DirectAnimatorTransformer, config: TrainConfig):
        """The distributed model and its optimizer (the one place that knows the distributed type). DDP, FSDP2 and
        DeepSpeed all go through `accelerator.prepare(model, optimizer)`: for FSDP2 accelerate shards the model and
        moves the optimizer onto the sharded parameters; for DeepSpeed it wraps both in the engine (ZeRO-2/3, its
        DeepSpeed config from `training.deepspeed_support`), which then steps, clips and partitions the optimizer
        state."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, config, self.device, sharded=self.sharded)
        if self.sharded:
            fit_wrap_class(self.accelerator, model)
        return self.accelerator.prepare(model, optimizer)

    def _name(self, param) -> str:
        return self.names[id(param)]

    # ----------------------------------------------------------------- state
    def trainable_state(self) -> dict[str, Tensor]:
        return {self._name(p): p for p in self.params}

    def state(self) -> dict:
        """What a checkpoint keeps besides the tensors (the optimizer state only when not sharded)."""
        state = {"lr_scheduler": self.lr_scheduler.state_dict(), "rng": rng_state(), "data": self.sampler.state_dict(),
                 "stage": self.stage}
        if not (self.sharded or self.deepspeed):  # DeepSpeed: in the engine's own files (deepspeed_support)
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def sharded_state(self) -> dict:
        """The DCP state of an FSDP run: trained parameters, their EMA and the optimizer, each rank's shards."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = {"trainable": self.trainable_state(),
                 "optimizer": get_optimizer_state_dict(self.model, self.optimizer)}
        if self.ema is not None:
            state["ema"] = dict(self.ema)
        return state

    def restore(self, path: Path) -> None:
        """Continue from checkpoint folder `path` (every rank calls it; rank 0 verifies the files first)."""
        # every file resume reads (sharded/ and engine files too), not the model file (export and stage 2 check it)
        on_all_ranks(lambda: verify_checkpoint(path, skip=(MODEL,)), only_main=True)
        # every rank reads the files itself: a read error on one reaches all of them (none waits in a collective)
        step, trainable, ema, state = on_all_ranks(lambda: load_training_checkpoint(path, verify=False))
        if self.ema is not None and not has_ema(path):  # before the branches, each of which reads the EMA its way
            raise InputError(f"--resume {path}: the checkpoint has no EMA but optim.ema_decay > 0; resume with "
                             "optim.ema_decay=0 (the setting it was trained with), or start a new run from its "
                             "model.safetensors (model.checkpoint).")
        if self.sharded != is_sharded(path):
            raise InputError(f"--resume {path}: written by a {'sharded (FSDP)' if is_sharded(path) else 'non-sharded'} "
                             f"run, but this run is {'FSDP' if self.sharded else 'not FSDP'}; resume with the same "
                             "accelerate config it was trained with (or export it and start a new run from it).")
        if self.deepspeed != has_engine(path):
            raise InputError(f"--resume {path}: written by a {'DeepSpeed' if has_engine(path) else 'non-DeepSpeed'} "
                             "run; resume with the same accelerate config it was trained with.")
        if self.sharded:
            self._restore_sharded(path)
        elif self.deepspeed:
            load_engine(self.model, path)  # weights, ZeRO partitions of the optimizer state
            if self.ema is not None:
                for name in self.ema:
                    self.ema[name].copy_(ema[name])
        else:
            self._restore_full(path, trainable, ema, state)
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        set_rng_state(state["rng"])
        self.sampler.load_state_dict(state["data"])
        self.step = step
        log.info("resumed from %s at step %d", path, step)

    def _restore_full(self, path: Path, trainable: dict, ema: dict | None, state: dict) -> None:
        own = self.trainable_state()
        if set(own) != set(trainable):
            missing, extra = sorted(set(own) - set(trainable)), sorted(set(trainable) - set(own))
            raise InputError(f"--resume {path}: its trained parameters differ from this run's (missing {missing[:3]}, "
                             f"unexpected {extra[:3]}); it was made with another model or model.train setting.")
        with torch.no_grad():
            for name, param in own.items():
                param.copy_(trainable[name])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            for name in self.ema:
                self.ema[name].copy_(ema[name])

    def _restore_sharded(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        state = self.sharded_state()  # filled in place: the trained parameters and the EMA directly
        load_sharded_state(path, state)
        set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=state["optimizer"])

    def write_model(self, path: Path) -> None:
        """The DirectAnimator checkpoint of the current weights (EMA weights when enabled). Every rank calls it;
        rank 0 writes (under FSDP after gathering the full weights from all ranks)."""
        from .export import export_model

        full_base = self.config.model.train == "full" or self.loaded.checkpoint_weights == "full"
        # a LoRA trained on top of full weights (e.g. stage 2 after a full stage 1) is only meaningful with that
        # base, so it is folded into full weights; a LoRA on the pretrained backbone is saved on its own
        adapters = bool(getattr(self.unwrapped.backbone, "peft_config", None))
        weights = ("merged" if adapters else "full") if full_base else "auto"
        zero3 = self.deepspeed and zero_stage(self.accelerator) == 3  # partitioned: gathered into `state` below
        swap = []
        if self.ema is not None and not zero3:
            with torch.no_grad():
                for p in self.params:
                    swap.append(p.detach().clone())
                    p.copy_(self.ema[self._name(p)])
        try:
            state = full_state_dict(self.model) if self.sharded else None
            if zero3:  # the whole model on rank 0 (every rank takes part), EMA weights when enabled
                state = {**(self.accelerator.get_state_dict(self.model) or {}), **(self.ema or {})}
            if not self.accelerator.is_main_process:
                return
            with gathered_weights(self.unwrapped, state) if state is not None else nullcontext():
                export_model(self.unwrapped, path, weights=weights, null_text=self.data.null_text,
                             scheduler_config=self.loaded.scheduler_config, cue_config=self.config.cues.to_dict(),
                             backbone_name=self.config.model.backbone,
                             extra={"step": self.step, "stage": self.stage, "run": self.config.run.name,
                                    "timesteps": list(self.timestep_range)})
        finally:
            if swap:
                with torch.no_grad():
                    for p, value in zip(self.params, swap):
                        p.copy_(value)

    def save(self) -> Path:
        """Write the checkpoint of the current step (every rank calls it)."""
        def write_model(path: Path) -> None:
            if self.deepspeed:  # every rank writes its engine partition into the folder, beside the model file
                save_engine(self.model, path.parent)
            self.write_model(path)

        if self.sharded:
            trainable = None  # in sharded/ (DCP)
        elif self.deepspeed:
            trainable = full_trainable(self.names, self.params, self.accelerator)  # gathered under ZeRO-3
        else:
            trainable = self.trainable_state()
        return save_training_checkpoint(self.run_dir, self.step, state=self.state(), write_model=write_model,
                                        trainable=trainable, ema=None if self.sharded else self.ema,
                                        sharded=self.sharded_state() if self.sharded else None,
                                        keep_last=self.config.run.keep_last)

    # ----------------------------------------------------------------- steps
    def noised(self, batch: Batch) -> NoisedBatch:
        """Noise, timesteps and velocity target of `batch` from its samples' own generators (`train_step`)."""
        return noised_batch(batch, self.scheduler, self._generators, reference_factor=self.reference_factor,
                            residual=self.unwrapped.cue_config.residual_reference, t_range=self.timestep_range,
                            spec=self.spec, flow=self.flow)

    @property
    def timestep_range(self) -> tuple[int, int]:
        """The training timesteps ``[low, high)`` (recorded in every checkpoint it writes): integers of the DDPM
        schedule on CogVideoX; on a flow-matching backbone the float timesteps ``sigma * 1000`` lie in
        ``[low, high]``, the scale of its flow-matching sampling schedulers."""
        r = self.config.run
        top = FLOW_TIMESTEPS if self.scheduler is None else self.scheduler.config.num_train_timesteps
        return r.timestep_min, min(r.timestep_max, top)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns the logged values."""
        r = self.config.run
        totals: dict[str, float] = {}
        samples = 0
        for micro in range(r.grad_accum):
            indices = self.sampler.next()
            # each sample's generator, keyed by its place in the global batch: the same draws for any process count
            first = self.accelerator.process_index * len(indices)
            self._generators = sample_generators(r.seed, self.step, micro, first, len(indices))
            batch = make_batch(self.data, indices, self._generators).to(self.device)
            samples += batch.target.shape[0]
            sync = micro == r.grad_accum - 1 or self.accelerator.num_processes == 1
            # DeepSpeed: accumulate() tells the engine which micro-batch ends the step; the engine divides the loss
            # by run.grad_accum itself and steps (clipping included) once, in the last backward
            accumulating = (self.accelerator.accumulate(self.model) if self.deepspeed else
                            nullcontext() if sync else self.accelerator.no_sync(self.model))
            with accumulating, self.accelerator.autocast():
                loss, logs = self.loss_fn(self, batch, self.step)
                self.accelerator.backward(loss if self.deepspeed else loss / r.grad_accum)
            for key, value in {"loss": float(loss.detach()), **logs}.items():
                totals[key] = totals.get(key, 0.0) + value / r.grad_accum
        if self.accelerator.num_processes > 1:
            # every process holds an equal share of the global batch: the mean of the shares is the global value
            keys = sorted(totals)
            local = torch.tensor([totals[k] for k in keys], dtype=torch.float64, device=self.device)
            totals = dict(zip(keys, self.accelerator.reduce(local, reduction="mean").tolist()))
        clip = self.config.optim.clip_norm
        # the global norm over all processes' shards; an infinite limit measures without clipping
        norm = self.accelerator.clip_grad_norm_(self.params, clip if clip > 0 else math.inf)
        totals["lr"] = self.lr_scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad(), gathered(self.params, self.accelerator):  # ZeRO-3: whole for the update
                torch._foreach_lerp_(self._ema_tensors, [p.detach() for p in self.params],
                                     1 - self.config.optim.ema_decay)
        totals["grad_norm"] = float(norm)
        totals["samples"] = samples * self.accelerator.num_processes
        self.step += 1
        return totals

    def fit(self, *, resume: str | None = None) -> list[dict]:
        """Train to `run.steps`; returns the logged records of this call."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # the training extra is not installed
            raise BackendUnavailableError(
                "training logs to TensorBoard, which is not installed: pip install -r requirements-train.txt "
                "(or pip install tensorboard)."
            ) from error
        from tqdm import tqdm

        r = self.config.run
        main = self.accelerator.is_main_process
        path = self.agree_on_resume(resume)
        if path is not None:
            self.restore(path)
        metrics = self.run_dir / METRICS
        if main:
            save_config(self.config, self.run_dir / "config.json")
            truncate_metrics(metrics, self.step)
        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step + 1 if self.step else None) if main \
            else None
        records = []
        bar = tqdm(total=r.steps, initial=self.step, desc=f"stage {self.stage}", unit="step", disable=not main)
        self.model.train()
        try:
            while self.step < r.steps:
                start = time.perf_counter()
                values = self.train_step()
                values["samples_per_s"] = values.pop("samples") / max(time.perf_counter() - start, 1e-9)
                if main and (self.step % r.log_every == 0 or self.step == r.steps):
                    record = {"step": self.step, **values}
                    records.append(record)
                    with metrics.open("a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    for key, value in values.items():
                        writer.add_scalar(f"train/{key}", value, self.step)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
                bar.update(1)
                if r.validate_every and (self.step % r.validate_every == 0 or self.step == r.steps):
                    # FSDP: every rank takes part in each forward of the sampling (ZeRO-3 runs do not validate,
                    # deepspeed_support.check_deepspeed_launch)
                    if main or self.sharded:
                        self.validate(writer)
                if self.step % r.save_every == 0 or self.step == r.steps:
                    self.save()  # every rank: FSDP shards and gathers; returns when the folder is complete
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return records


    def agree_on_resume(self, resume: str | None) -> Path | None:
        """Claim the run folder (rank 0), check that every rank sees it, and return the checkpoint to resume from,
        the same on every rank (InputError on all ranks otherwise). Partial checkpoint folders of a killed run are
        removed before any rank looks for its checkpoints."""

        def claim() -> None:  # the claim checks the folder (train_stage1/2 checked it before loading the model)
            claim_output_folder(self.run_dir, RUN_COMMAND, option="run folder (run.out_dir/run.name)", legacy=_is_run)
            remove_partial_checkpoints(self.run_dir)

        on_all_ranks(claim, only_main=True)
        check_shared_folder(self.run_dir)
        path = on_all_ranks(lambda: resume_checkpoint(self.run_dir, resume))
        agree(None if path is None else Path(path).resolve().name, "the checkpoint to resume from (--resume)")
        barrier()
        return path

    def validate(self, writer=None) -> list[dict]:
        """Sample the held-out pairs with the current weights into ``<run>/samples`` (videos, sheets, PSNR/SSIM
        in validation.jsonl). The global RNG states are restored afterwards, so a resumed run stays exact."""
        from directanimator.models import AnimatorModel

        from .prepare import load_image_encoder, load_vae
        from .validate import validate_model

        if self._vae is None:
            self._vae = load_vae(self.config)
            # Wan2.1 I2V samples with the reference's CLIP embedding (None elsewhere)
            self._image_encoder = load_image_encoder(self.config, dict(self.unwrapped.backbone.config))
        model = AnimatorModel(transformer=self.unwrapped, vae=self._vae, null_text=self.data.null_text,
                              scheduler_config=self.loaded.scheduler_config, cue_config=self.config.cues.to_dict(),
                              name=self.config.run.name, **self._image_encoder)
        saved = rng_state()
        main = self.accelerator.is_main_process
        # under FSDP the other ranks run the same sampling (each forward gathers every rank's shards) and discard it
        scratch = nullcontext(self.run_dir / "samples") if main else tempfile.TemporaryDirectory(prefix="val-rank")
        try:
            with scratch as out:
                records = validate_model(model, self.config.metadata_path, out, step=self.step,
                                         max_clips=self.config.run.validate_clips,
                                         steps=self.config.run.validate_steps, seed=self.config.run.seed)
        finally:
            set_rng_state(saved)
            if self.sharded:
                reshard(self.model)
            self.model.train()
        for key in ("psnr", "ssim"):
            values = [rec[key] for rec in records if rec.get(key) is not None]
            if writer is not None and values:
                writer.add_scalar(f"val/{key}", sum(values) / len(values), self.step)
        return records


def check_run_folder(config: TrainConfig, resume: str | None) -> Path | None:
    """The checkpoint to resume from (None: a fresh start), after checking that the run folder may be written:
    new, empty or a run's own, and without checkpoints unless resuming, and that a DeepSpeed launch config agrees
    with `config` (`check_deepspeed_launch`). Reads only; raises InputError (BackendUnavailableError when DeepSpeed
    is asked for and not installed). The stages call it before they load the model."""
    check_deepspeed_launch(config)
    check_output_folder(config.run_dir, RUN_COMMAND, option="run folder (run.out_dir/run.name)", legacy=_is_run)
    return resume_checkpoint(config.run_dir, resume)


def resume_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint of `run_dir` to resume from (None: a fresh start); InputError when `resume` names none, or
    when the run already has checkpoints and `resume` is not given. Reads only."""
    path = resolve_resume(run_dir, resume)
    if path is None and resume not in (None, "", "latest"):
        raise InputError(f"--resume {resume}: no checkpoint found.")
    existing = resolve_resume(run_dir, "latest")
    if path is None and existing is not None:
        raise InputError(f"run folder {run_dir} already has checkpoints ({existing.name}); pass --resume latest "
                         "to continue it, or choose another run.name.")
    return path


_is_run = partial(is_legacy_run, log=METRICS)  # a stage run folder written before output markers


def add_training_arguments(parser) -> None:
    """Options of the stage commands: the config file, ``--set`` overrides and ``--resume``."""
    add_config_arguments(parser)
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="continue from the newest checkpoint of the run ('latest') or a checkpoint folder")


def run_training(args, train: Callable[..., list[dict]]) -> int:
    """Load and validate the config (printing it resolved), then ``train(config, resume=...)``."""
    config = load_config(args.config, args.overrides)
    log.info("resolved config:\n%s", json.dumps(config.to_dict(), indent=1))
    train(config, resume=args.resume)  # checks the run folder before the model loads (minutes for a real backbone)
    return 0


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    path = Path(run_dir) / METRICS
    return read_jsonl(path) if path.is_file() else []
