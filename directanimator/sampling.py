"""The denoising loop: diffusers CogVideoX schedulers, cue guidance and context windows over latent frames.

Latents are ``[1, 1 + N, C, h, w]``: the leading reference frame, then N video latent frames (DESIGN.md 5, 6).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler
from torch import Tensor

from .conditioning import Conditioning, backbone_config, fixed_latent_frames, using
from .errors import InputError
from .vae_io import image_latent_scale, latent_preview, latent_scale, ramp_weights, tile_spans

log = logging.getLogger(__name__)

SCHEDULERS = {"dpm": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler}
StepCallback = Callable[[int, int, "Tensor | None"], None]


def make_scheduler(name: str, config: dict | None = None):
    """A fresh CogVideoX scheduler ("dpm" or "ddim") configured from `config` (the model's scheduler config)."""
    if name not in SCHEDULERS:
        raise InputError(f"scheduler={name!r}: unknown; use one of {sorted(SCHEDULERS)}.")
    if not config:
        from .models.configs import default_scheduler_config

        config = default_scheduler_config()
    return SCHEDULERS[name].from_config({k: v for k, v in dict(config).items() if k != "_class_name"})


@dataclass(frozen=True)
class WindowPlan:
    """Context windows over the N video latent frames: ``[start, end)`` spans and blend weights ``[end - start]``."""

    spans: tuple[tuple[int, int], ...]
    weights: tuple[Tensor, ...]
    overlap: int

    @property
    def window(self) -> int:
        return self.spans[0][1] - self.spans[0][0]


def plan_windows(num_video_latents: int, window: int | None, overlap: int | None) -> WindowPlan:
    """Windows of `window` latent frames overlapping by at least `overlap`, the last flush with the end.

    ``window=None`` or a window covering the video gives one window. Weights ramp linearly over `overlap` frames
    at each side that borders another window and are 1 elsewhere.
    """
    if window is None or window >= num_video_latents:
        return WindowPlan(((0, num_video_latents),), (torch.ones(num_video_latents),), 0)
    if overlap is None:
        overlap = default_overlap(window)
    spans = tile_spans(num_video_latents, window, overlap)
    weights = tuple(ramp_weights(e - s, overlap, rise=s > 0, fall=e < num_video_latents) for s, e in spans)
    return WindowPlan(tuple(spans), weights, overlap)


def default_overlap(window: int) -> int:
    """A quarter of the window, at least one frame when the window has more than one."""
    return max(1 if window > 1 else 0, window // 4)


def check_sampling_settings(*, steps: int, guidance: float, scheduler: str, samples: int = 1,
                            denoise: float = 1.0) -> None:
    """Raise InputError for sampling settings that cannot work with any model (`validate_options` adds the
    model's own limits)."""
    if scheduler not in SCHEDULERS:
        raise InputError(f"scheduler={scheduler!r}: unknown; use one of {sorted(SCHEDULERS)}.")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps={steps!r}: need at least 1 denoising step (25 to 50 is typical).")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise InputError(f"samples={samples!r}: average at least 1 sample (1 is a plain sample).")
    if not math.isfinite(guidance) or guidance < 0:
        raise InputError(f"guidance={guidance}: must be a finite number >= 0 (1 disables guidance, 2 to 5 is typical).")
    if not 0.0 < denoise <= 1.0:
        raise InputError(f"denoise={denoise}: must be in (0, 1]; 1 starts from pure noise.")
    if int(steps * denoise) < 1:
        raise InputError(
            f"denoise={denoise} with steps={steps} runs no step; raise denoise or steps so that steps x denoise >= 1."
        )


def validate_options(model, *, steps: int, guidance: float, scheduler: str, window: int | None,
                     overlap: int | None, denoise: float = 1.0, num_video_latents: int | None = None,
                     samples: int = 1) -> None:
    """Raise InputError for sampling options that cannot work with `model`, before any long work.

    With `num_video_latents` known, a window covering the video counts as no window (one pass).
    """
    check_sampling_settings(steps=steps, guidance=guidance, scheduler=scheduler, samples=samples, denoise=denoise)
    if window is not None and (not isinstance(window, int) or window < 1):
        raise InputError(f"window={window!r}: a context window needs at least 1 video latent frame (or None).")
    if window is not None and (num_video_latents is None or window < num_video_latents):
        if overlap is not None and not 0 <= overlap < window:
            raise InputError(
                f"overlap={overlap}: must be at least 0 and smaller than window={window}; "
                f"{default_overlap(window)} is a good start."
            )
        config = backbone_config(model)
        pt = config.patch_size_t
        if pt and (1 + window) % int(pt):
            raise InputError(
                f"window={window}: with the leading reference frame a window has {1 + window} latent frames, but this "
                f"backbone groups latent frames by {pt}; use a window of {window + 1} or {window - 1} "
                f"(an odd number)."
            )
        fixed = fixed_latent_frames(config)
        if fixed and window != fixed - 1:
            raise InputError(
                f"window={window}: this backbone has learned positional embeddings for exactly {fixed} latent frames, "
                f"so a window must hold {fixed - 1} video latent frames (plus the reference). Use window={fixed - 1} "
                "or None."
            )


def _check_conditioning(model, cond: Conditioning, text: Tensor) -> None:
    channels = int(model.transformer.latent_channels)
    config = backbone_config(model)
    ref = cond.reference
    if ref.ndim != 5 or ref.shape[:2] != (1, 1):
        raise InputError(f"conditioning.reference: expected [1, 1, C, h, w], got {tuple(ref.shape)}.")
    if ref.shape[2] != channels or cond.cues.latent_channels != channels:
        raise InputError(
            f"conditioning: reference latents have {ref.shape[2]} channels and cue latents "
            f"{cond.cues.latent_channels}, but the transformer takes {channels}-channel latents. "
            "Encode the conditioning with this model's VAE (encode_conditioning)."
        )
    if tuple(ref.shape[3:]) != cond.cues.grid:
        raise InputError(
            f"conditioning: reference latent grid {tuple(ref.shape[3:])} differs from the cue grid {cond.cues.grid}. "
            "Encode the reference and the cues at one working size."
        )
    if cond.cues.batch_size != 1 or cond.latent_frames < 2:
        raise InputError(
            f"conditioning.cues: expected batch 1 with the reference frame plus at least one video latent frame, got "
            f"batch {cond.cues.batch_size} and {cond.latent_frames} latent frames."
        )
    if text.ndim != 3 or text.shape[0] != 1 or text.shape[2] != int(config.text_embed_dim):
        raise InputError(
            f"text_embeds: expected [1, L, {config.text_embed_dim}], got {tuple(text.shape)}. Use the checkpoint's "
            "null-text embedding (model.null_text) or T5-XXL embeddings of the backbone's text width."
        )


def reference_latent(model, cond: Conditioning) -> Tensor:
    """The reference frame ``[1, 1, C, h, w]`` converted from the image-latent to the diffusion scale, float32."""
    return cond.reference.float() * (latent_scale(model.vae) / image_latent_scale(model.vae))


def residual_base(model, cond: Conditioning) -> Tensor | None:
    """What a ``residual_reference`` model's latents are relative to: `reference_latent` in every frame (broadcast
    over frames); None for a plain model."""
    return reference_latent(model, cond) if model.transformer.cue_config.residual_reference else None


def _prepare_init(model, cond: Conditioning, init: Tensor) -> Tensor:
    """Init latents ``[1, N or 1+N, C, h, w]`` (diffusion scale) -> ``[1, 1+N, C, h, w]`` float32."""
    n, channels, grid = cond.video_latent_frames, int(model.transformer.latent_channels), cond.grid
    if init.ndim != 5 or init.shape[0] != 1 or init.shape[1] not in (n, n + 1) or init.shape[2] != channels \
            or tuple(init.shape[3:]) != grid:
        raise InputError(
            f"init_latents: expected [1, {n} (or {n + 1} with the reference frame), {channels}, {grid[0]}, {grid[1]}] "
            f"to match the conditioning, got {tuple(init.shape)}. Encode the init video at the same size and with "
            "the same (padded) frame count."
        )
    init = init.float()
    if init.shape[1] == n:
        init = torch.cat([reference_latent(model, cond).to(init.device), init], dim=1)
    return init


def sample_latents(model, cond: Conditioning, *, steps: int = 25, guidance: float = 3.0, seed: int = 0,
                   scheduler: str = "dpm", window: int | None = None, overlap: int | None = None,
                   denoise: float = 1.0, init_latents: Tensor | None = None, text_embeds: Tensor | None = None,
                   eta: float = 0.0, callback: StepCallback | None = None,
                   preview_factors: Tensor | None = None, samples: int = 1) -> Tensor:
    """Denoise latents ``[1, 1 + N, C, h, w]`` (float32, on the transformer's device) for `cond`.

    Guidance: ``neg + guidance * (pos - neg)`` where the negative branch drops the cues and keeps the reference;
    guidance 1 runs one forward per step and window. Context windows: each window is the reference frame plus
    `window` video latent frames; window predictions are blended with ramped weights, then one scheduler step runs
    on the whole latent, so with one window covering the video the result equals a single pass. ``window=None``
    uses the whole video, or the backbone's fixed length when it has learned positional embeddings.
    `denoise` < 1 starts from `init_latents` (``[1, N, C, h, w]`` or with the reference frame) noised to the
    matching timestep and runs ``int(steps * denoise)`` steps. The initial noise and the scheduler's noise come
    from a CPU generator seeded with `seed`, so results reproduce on any device. ``callback(step, total, preview)``
    runs after each step (`step` 0-based; `preview` ``[N, h, w, 3]`` of the predicted clean latents) and may raise
    to stop sampling.

    `samples` > 1 returns the mean of that many results, seeded `seed`, `seed + 1`, ... (`step` and `total` then
    count over all of them). With one step from pure noise the result is the model's estimate of the clean clip,
    which at the schedule's zero terminal SNR should not depend on the noise at all: the mean keeps the estimate
    and cancels the part of the model's error that follows the noise. Several steps give distinct samples, and
    their mean is a blur of them.
    """
    transformer = model.transformer
    config = backbone_config(model)
    fixed = fixed_latent_frames(config)
    n = cond.video_latent_frames
    if window is None and fixed and n > fixed - 1:
        window = fixed - 1
    validate_options(model, steps=steps, guidance=guidance, scheduler=scheduler, window=window, overlap=overlap,
                     denoise=denoise, num_video_latents=n, samples=samples)
    if denoise < 1.0 and init_latents is None:
        raise InputError(f"denoise={denoise}: partial denoising needs init_latents (or init frames); pass them or "
                         "use denoise=1.")
    text = model.null_text if text_embeds is None else text_embeds
    _check_conditioning(model, cond, text)
    plan = plan_windows(n, window, overlap)
    transformer.check_latent_shape(1 + plan.window, *cond.grid)
    if len(plan.spans) > 1:
        log.info("sampling %d video latent frames in %d windows of %d (overlap %d)", n, len(plan.spans),
                 plan.window, plan.overlap)

    sched = make_scheduler(scheduler, model.scheduler_config)
    warn_untrained_timesteps(model, sched, steps=steps, denoise=denoise)
    with using(model, "transformer") as transformer:
        mean = None
        for k in range(samples):
            each = None if callback is None else _counting_over(callback, k, samples)
            latents = _denoise(model, transformer, cond, sched, plan, text, steps=steps, guidance=guidance,
                               seed=seed + k, denoise=denoise, init_latents=init_latents, eta=eta, callback=each,
                               preview_factors=preview_factors)
            mean = latents if mean is None else mean.add_(latents)
        return mean.div_(samples)


def run_timesteps(sched, steps: int, denoise: float = 1.0, *, device=None) -> Tensor:
    """The timesteps a run of `steps` visits: the last ``int(steps * denoise)`` of the scheduler's schedule."""
    sched.set_timesteps(steps, device=device)
    return sched.timesteps[steps - int(steps * denoise):]


def trained_timesteps(model) -> tuple[int, int] | None:
    """The timestep range ``[low, high)`` the checkpoint was trained on, when it records one (training writes it
    into the checkpoint's extras as ``timesteps``); None when unknown."""
    info = getattr(model, "info", None) or {}
    recorded = (info.get("extra") or {}).get("timesteps")
    return (int(recorded[0]), int(recorded[1])) if recorded else None


def warn_untrained_timesteps(model, sched, *, steps: int, denoise: float = 1.0) -> list[int]:
    """Log a warning when the sampling schedule visits timesteps below the range the checkpoint was trained on
    (e.g. a model trained only at high noise for one-step sampling, sampled with many steps); returns them."""
    trained = trained_timesteps(model)
    if trained is None or trained[0] <= 0:
        return []
    visited = [int(t) for t in run_timesteps(sched, steps, denoise)]
    below = [t for t in visited if t < trained[0]]
    if below:
        log.warning("%s was trained on timesteps %d-%d only; %d of the %d sampling steps fall below (lowest t=%d), "
                    "where its predictions are untrained: sample it with steps=1 (its one-step estimate).",
                    getattr(model, "name", "this model"), trained[0], trained[1] - 1, len(below), len(visited),
                    min(below))
    return below


def _counting_over(callback: StepCallback, index: int, samples: int) -> StepCallback:
    """`callback` for run `index` of `samples`: steps and total count over all runs."""
    def report(step: int, total: int, preview: Tensor) -> None:
        callback(index * total + step, samples * total, preview)
    return report


def _denoise(model, transformer, cond: Conditioning, sched, plan: WindowPlan, text: Tensor, *, steps: int,
             guidance: float, seed: int, denoise: float, init_latents: Tensor | None, eta: float,
             callback: StepCallback | None, preview_factors: Tensor | None) -> Tensor:
    device, dtype = transformer.device, transformer.dtype
    n = cond.video_latent_frames
    timesteps = run_timesteps(sched, steps, denoise, device=device)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = (1, 1 + n, int(transformer.latent_channels), *cond.grid)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    base = residual_base(model, cond)
    base = None if base is None else base.to(device)
    if init_latents is None:
        latents = noise * sched.init_noise_sigma
    else:
        init = _prepare_init(model, cond, init_latents).to(device)
        latents = sched.add_noise(init if base is None else init - base, noise, timesteps[:1])
    del noise

    text = text.to(device=device, dtype=dtype)
    cues = cond.cues.to(device=device, dtype=dtype)
    reference = cond.reference.to(device=device, dtype=dtype)
    image_window = torch.cat([reference, reference.new_zeros(1, plan.window, *reference.shape[2:])], dim=1)
    weights = [w.to(device) for w in plan.weights]

    def predict(x: Tensor, window_cues, t: Tensor) -> Tensor:
        inputs = torch.cat([x.to(dtype), image_window], dim=2)
        with torch.no_grad():
            pred = transformer(inputs, text, t, cues=window_cues).float()
            if guidance != 1.0:
                negative = transformer(inputs, text, t, cues=None).float()
                pred = negative + guidance * (pred - negative)
        return pred

    old_x0 = None
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        x = sched.scale_model_input(latents, t)
        tt = t.reshape(1)
        if len(plan.spans) == 1:
            pred = predict(x, cues, tt)
        else:
            pred = torch.zeros_like(latents)
            weight_sum = latents.new_zeros(1 + n)
            for (start, end), w in zip(plan.spans, weights):
                index = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1 + start, 1 + end)]).to(device)
                w = torch.cat([w.new_ones(1), w])  # the reference frame: a plain mean over windows
                out = predict(x.index_select(1, index), cues.frames(index), tt)
                pred.index_add_(1, index, out * w.view(1, -1, 1, 1, 1))
                weight_sum.index_add_(0, index, w)
                del out
            pred /= weight_sum.view(1, -1, 1, 1, 1)
        if isinstance(sched, CogVideoXDPMScheduler):
            latents, x0 = sched.step(pred, old_x0, t, timesteps[i - 1] if i > 0 else None, latents,
                                     generator=generator, return_dict=False)
            old_x0 = x0
        else:
            out = sched.step(pred, t, latents, eta=eta, generator=generator, return_dict=True)
            latents, x0 = out.prev_sample, out.pred_original_sample
        latents = latents.float()
        del pred
        if callback is not None:
            shown = x0[:, 1:] if base is None else x0[:, 1:] + base
            callback(i, total, latent_preview(shown, rgb_factors=preview_factors))
    return latents if base is None else latents + base
