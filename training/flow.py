"""Flow-matching training draws for backbones that predict the flow velocity (Wan, `BackboneSpec.prediction`).

The clean latents x0 and Gaussian noise meet on a straight line, ``x_t = (1 - sigma) * x0 + sigma * noise``; the
model predicts the velocity ``noise - x0`` at the timestep ``sigma * 1000`` (the scale of diffusers' flow-matching
schedulers, which Wan samples with). Sigma is drawn as the Wan LoRA trainers draw it (musubi-tuner's
``--timestep_sampling shift``): logit-normal ``u = sigmoid(N(0, 1))``, then the flow shift of the backbone's own
sampling schedule, ``sigma = shift * u / (1 + (shift - 1) * u)``, which moves training towards the high-noise
steps exactly as sampling spends its steps there. ``run.timestep_min`` / ``run.timestep_max`` keep the draw's shape
and squeeze it into ``[min, max] / 1000``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from directanimator.errors import InputError
from directanimator.sampling import scheduler_flow_shift

FLOW_TIMESTEPS = 1000  # timestep = sigma * 1000, as diffusers' flow-matching schedulers number them


def flow_shift(scheduler_config: dict) -> float:
    """The sampling shift of a flow-matching scheduler config (Wan2.1 480p 3.0, 720p and Wan2.2 TI2V 5.0); InputError
    when the config is not a flow-matching one (sampling reads it with the same rule, `scheduler_flow_shift`)."""
    shift = scheduler_flow_shift(scheduler_config)
    if shift is not None:
        return shift
    raise InputError(
        f"scheduler config {sorted(k for k in scheduler_config if not k.startswith('_'))[:6]}...: a flow-matching "
        "backbone (Wan) needs its scheduler's shift (flow_shift of UniPCMultistepScheduler or shift of "
        "FlowMatchEulerDiscreteScheduler) to draw training timesteps as it samples them. Add the backbone's "
        "scheduler/scheduler_config.json."
    )


def shifted(u: Tensor | float, shift: float) -> Tensor | float:
    """The flow shift ``shift * u / (1 + (shift - 1) * u)`` of sigmas in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


@dataclass(frozen=True)
class FlowMatching:
    """The training draws of a flow-matching backbone: `shift` (the backbone's sampling shift) and the timestep
    range ``[low, high]`` in 0..1000."""

    shift: float
    t_range: tuple[int, int] = (0, FLOW_TIMESTEPS)

    def sigma(self, generator: torch.Generator) -> Tensor:
        """One sigma in ``[low, high] / 1000`` (float32 scalar) from `generator`."""
        u = torch.sigmoid(torch.randn((), generator=generator))
        low, high = self.t_range[0] / FLOW_TIMESTEPS, self.t_range[1] / FLOW_TIMESTEPS
        return low + (high - low) * shifted(u, self.shift)

    @staticmethod
    def noised(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """``(1 - sigma) * x0 + sigma * noise`` with `sigma` ``[B]`` broadcast over the other dimensions."""
        s = sigma.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        return (1 - s) * x0 + s * noise

    @staticmethod
    def velocity(x0: Tensor, noise: Tensor) -> Tensor:
        """The flow velocity ``noise - x0`` (what the backbone predicts)."""
        return noise - x0

    @staticmethod
    def timestep(sigma: Tensor) -> Tensor:
        """The model's timestep of `sigma`: ``sigma * 1000`` (float)."""
        return sigma * FLOW_TIMESTEPS
