"""`python -m training stage1 CONFIG`: same-identity training (DESIGN.md 7) with the backbone's denoising loss.

The reference latent leads the clip in the image-latent channels; the cues come from the same clip; cue and
reference dropout teach the guidance branches. `--resume latest` continues a run exactly where it stopped.
"""

from __future__ import annotations

import argparse

from torch import Tensor

from .config import TrainConfig, check_model_sources
from .data import Batch, CachedClips
from .trainer import Trainer, add_training_arguments, check_run_folder, denoising_loss, load_student, run_training


def stage1_loss(trainer: Trainer, batch: Batch, step: int) -> tuple[Tensor, dict[str, float]]:
    """Denoising loss of the student on the same-identity cues."""
    noised = trainer.noised(batch)
    prediction = trainer.model(noised.inputs, batch.text, noised.timesteps, cues=batch.cues,
                               **noised.forward_kwargs())
    loss = denoising_loss(prediction, noised.target, clean_frames=noised.clean_frames)
    return loss, {"denoise": float(loss.detach())}


def train_stage1(config: TrainConfig, *, resume: str | None = None) -> list[dict]:
    """Run stage 1 for `config`; returns the logged records."""
    check_run_folder(config, resume)  # before the model loads (minutes for a real backbone)
    check_model_sources(config)  # a missing backbone is named as such, not as a cache never prepared for it
    data = CachedClips(config, stage=1)  # fails before any model is loaded when the cache is missing
    trainer = Trainer(config, load_student(config), data, stage1_loss, stage=1)
    return trainer.fit(resume=resume)


add_arguments = add_training_arguments


def run(args: argparse.Namespace) -> int:
    return run_training(args, train_stage1)
