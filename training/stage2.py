"""`python -m training stage2 CONFIG`: cross-identity training (DESIGN.md 7).

The student starts from the stage-1 checkpoint (`model.checkpoint`) and sees the pseudo driving cues (another
identity, randomly realigned); the teacher is the frozen stage-1 model fed the same-identity cues. Both run on the
same noisy latent, timestep and reference. Loss = denoising + lambda(step) * S2X(student tokens after block D,
teacher tokens after block D); both terms are logged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import Tensor

from directanimator.errors import InputError

from .config import TrainConfig, check_model_sources
from .data import Batch, CachedClips
from .distributed import shard_frozen
from .frozen import place_teacher
from .s2x import S2XTeacher, capture_block_output, s2x_loss
from .trainer import (Trainer, add_training_arguments, check_run_folder, denoising_loss, load_student,
                      run_training)


def make_stage2_loss(teacher: S2XTeacher, config: TrainConfig):
    depth = config.stage2.depth

    def loss_fn(trainer: Trainer, batch: Batch, step: int) -> tuple[Tensor, dict[str, float]]:
        noised = trainer.noised(batch)
        with capture_block_output(trainer.model, depth) as student_tokens:
            prediction = trainer.model(noised.inputs, batch.text, noised.timesteps, cues=batch.pseudo_cues,
                                       **noised.forward_kwargs())
            tokens = student_tokens()
        target_tokens = teacher.features(noised.inputs, batch.text, noised.timesteps, cues=batch.cues,
                                         **noised.forward_kwargs())
        denoise = denoising_loss(prediction, noised.target, clean_frames=noised.clean_frames)
        align = s2x_loss(tokens, target_tokens)
        weight = config.lambda_at(step)
        return denoise + weight * align, {"denoise": float(denoise.detach()), "s2x": float(align.detach()),
                                          "lambda": weight}

    return loss_fn


def train_stage2(config: TrainConfig, *, resume: str | None = None) -> list[dict]:
    """Run stage 2 for `config`; returns the logged records."""
    check_run_folder(config, resume)  # before the model loads (minutes for a real backbone)
    s = config.stage2
    teacher_path = s.teacher or config.model.checkpoint
    if not config.model.checkpoint or not teacher_path:
        raise InputError("config model.checkpoint: stage 2 starts from the stage-1 result; set model.checkpoint to "
                         "RUN/checkpoints/step_N/model.safetensors of stage 1 (and stage2.teacher if it differs).")
    if s.teacher_mode == "lora_disabled" and config.model.train != "lora":
        raise InputError(f"config stage2.teacher_mode='lora_disabled' needs model.train='lora' (got "
                         f"{config.model.train!r}); the teacher is the student without its stage-2 LoRA.")
    check_model_sources(config)  # a missing backbone or checkpoint is named as such, not as an unprepared cache
    if s.teacher and not Path(s.teacher).is_file():
        raise InputError(f"config stage2.teacher={s.teacher!r}: no such file. Give the stage-1 checkpoint "
                         "(.safetensors) the teacher is frozen from, or leave it empty to use model.checkpoint.")
    data = CachedClips(config, stage=2)
    student = load_student(config)
    if student.transformer.num_layers <= s.depth:
        raise InputError(f"config stage2.depth={s.depth}: the model has {student.transformer.num_layers} blocks; "
                         f"use 0..{student.transformer.num_layers - 1}.")
    if s.teacher_mode == "lora_disabled":
        backbone = student.transformer.backbone
        if getattr(backbone, "_hf_peft_config_loaded", False):
            # the stage-1 LoRA becomes part of the frozen base, so that disabling the new LoRA gives stage 1 back
            backbone.fuse_lora()
            backbone.unload_lora()
        # CueFusion stays frozen: with it trained the LoRA-disabled student would no longer be the stage-1 model
        trainer = Trainer(config, student, data, lambda *a: None, stage=2, train_cues=False)
        teacher = S2XTeacher(None, depth=s.depth, student=trainer.model)
    else:
        trainer = Trainer(config, student, data, lambda *a: None, stage=2)
        same = Path(teacher_path).resolve() == Path(config.model.checkpoint).resolve()  # verified by the student's load
        frozen = load_student(config, checkpoint=teacher_path, verify=not same).transformer
        if trainer.sharded:  # FSDP: sharded like the student, so no GPU holds a whole second model
            frozen = shard_frozen(frozen.to(trainer.device), trainer.accelerator)
        else:  # model.frozen_storage / frozen_offload, as the student's frozen weights
            place_teacher(frozen, trainer.device, storage=config.model.frozen_storage,
                          offload=config.model.frozen_offload)
        teacher = S2XTeacher(frozen, depth=s.depth)  # kept outside accelerator.prepare: never trained
    trainer.loss_fn = make_stage2_loss(teacher, config)
    return trainer.fit(resume=resume)


add_arguments = add_training_arguments


def run(args: argparse.Namespace) -> int:
    return run_training(args, train_stage2)
