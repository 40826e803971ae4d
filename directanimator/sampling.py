"""The denoising loop: each backbone family's diffusers schedulers, cue guidance and context windows over latent
frames.

Latents are ``[1, 1 + N, C, h, w]``: the leading reference frame, then N video latent frames (DESIGN.md 5, 6). The
backbone's image conditioning is its family's (`directanimator.conditioning.image_window`; Wan2.2 TI2V's clean
first frame is put in here), the samplers are those of what it predicts (`BackboneSpec.prediction`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from diffusers import (
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from torch import Tensor

from .conditioning import Conditioning, backbone_config, fixed_latent_frames, image_window, using
from .errors import InputError
from .models.caching import CacheStats, StepCache, check_cache_options, context_name
from .vae_io import image_latent_scale, latent_preview, latent_scale, ramp_weights, tile_spans

log = logging.getLogger(__name__)

# The samplers of each kind of backbone (`BackboneSpec.prediction`): CogVideoX's v-prediction DPM and DDIM, and
# the flow-matching samplers of the Wan pipelines (UniPC with flow sigmas, flow-match Euler), all from diffusers.
SAMPLERS: dict[str, dict[str, type]] = {
    "v_prediction": {"dpm": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler},
    "flow": {"unipc": UniPCMultistepScheduler, "euler": FlowMatchEulerDiscreteScheduler},
}
DEFAULT_SAMPLERS = {"v_prediction": "dpm", "flow": "unipc"}
AUTO = "auto"  # the scheduler name meaning "the backbone's default" (also what None means)
# Every name a node or a CLI may offer; which of them a model takes is `scheduler_names(model)`.
SCHEDULER_CHOICES = (AUTO, "dpm", "ddim", "unipc", "euler")
# CogVideoX's samplers, the names every caller knew before Wan; `scheduler_names(model)` gives a model's own.
SCHEDULERS = SAMPLERS["v_prediction"]
StepCallback = Callable[[int, int, "Tensor | None"], None]


@dataclass(frozen=True)
class WindowEstimate:
    """One context window's own estimate of the clean latents at one step, before the windows are blended."""

    sample: int  # which of the `samples` runs (0-based)
    step: int  # 0-based step of that run
    steps: int  # steps a run visits
    window: int  # index of the window in the plan's spans
    span: tuple[int, int]  # its [start, end) in video latent frames
    clean: Tensor  # [1, 1 + end - start, C, h, w] float32: reference frame first, diffusion scale (base included)


WindowCallback = Callable[[WindowEstimate], None]
_FLOW_CLASSES = {cls.__name__ for cls in SAMPLERS["flow"].values()}


def _prediction(model_or_spec: Any) -> str:
    """What a model (AnimatorModel, DirectAnimatorTransformer), a `BackboneSpec` or a prediction name predicts."""
    if isinstance(model_or_spec, str):
        prediction = model_or_spec
    elif hasattr(model_or_spec, "prediction"):
        prediction = model_or_spec.prediction
    else:
        transformer = getattr(model_or_spec, "transformer", model_or_spec)
        prediction = transformer.spec.prediction
    if prediction not in SAMPLERS:
        raise InputError(f"backbone prediction {prediction!r}: no samplers for it; known: {sorted(SAMPLERS)}.")
    return prediction


def scheduler_names(model_or_spec: Any) -> tuple[str, ...]:
    """The scheduler names `model_or_spec` samples with (besides "auto"): ("ddim", "dpm") for CogVideoX's
    v-prediction, ("euler", "unipc") for Wan's flow matching."""
    return tuple(sorted(SAMPLERS[_prediction(model_or_spec)]))


def default_scheduler(model_or_spec: Any) -> str:
    """The scheduler a backbone samples with when none is named: "dpm" (CogVideoX), "unipc" (Wan)."""
    return DEFAULT_SAMPLERS[_prediction(model_or_spec)]


def resolve_scheduler(model_or_spec: Any, name: str | None) -> str:
    """`name`, or the backbone's default for None / "auto"; InputError listing the valid names otherwise."""
    prediction = _prediction(model_or_spec)
    if name is None or name == AUTO:
        return DEFAULT_SAMPLERS[prediction]
    if name not in SAMPLERS[prediction]:
        kind = "CogVideoX v-prediction" if prediction == "v_prediction" else "Wan flow-matching"
        others = sorted(n for p, names in SAMPLERS.items() if p != prediction for n in names)
        hint = f" ({', '.join(others)} belong to the other backbone family)" if name in others else ""
        raise InputError(
            f"scheduler={name!r}: not a sampler of this backbone ({kind}){hint}; use one of "
            f"{sorted(SAMPLERS[prediction])} or {AUTO!r} (its default, {DEFAULT_SAMPLERS[prediction]!r})."
        )
    return name


def _config_prediction(config: Mapping[str, Any]) -> str | None:
    """What a diffusers scheduler config is for: "flow", "v_prediction", or None when it does not say."""
    name = str(config.get("_class_name", ""))
    if name in _FLOW_CLASSES or config.get("prediction_type") == "flow_prediction" or config.get("use_flow_sigmas"):
        return "flow"
    if "shift" in config and "beta_schedule" not in config:  # a FlowMatchEulerDiscreteScheduler config
        return "flow"
    if name.startswith("CogVideoX") or config.get("prediction_type") in ("v_prediction", "epsilon"):
        return "v_prediction"
    return None


def make_scheduler(name: str | None, config: Mapping[str, Any] | None = None, *, spec: Any = None):
    """A fresh diffusers scheduler for sampling (or training).

    `name`: "dpm" / "ddim" (CogVideoX, v-prediction) or "unipc" / "euler" (Wan, flow matching); None or "auto":
    the class `config` names in ``_class_name`` (a diffusers ``scheduler_config.json``) when it is one of the
    backbone's samplers, else the backbone's default. (`sample_latents` resolves "auto" to the family default
    first, `resolve_scheduler`: "dpm" on CogVideoX, whose shipped config names DDIM, and "unipc" on Wan.)
    `config`: the model's scheduler config (`AnimatorModel.scheduler_config`); None, or a config of the other
    kind of backbone (logged), takes `default_scheduler_config(spec)`. A flow sampler takes the config's flow
    shift (UniPC's ``flow_shift``, Euler's ``shift``) whichever of the two the config was written for. `spec`:
    the `BackboneSpec`; None: the kind of backbone follows from `name`, else from `config`, else CogVideoX.
    """
    from .models.configs import default_scheduler_config

    config = dict(config or {})
    if spec is not None:
        prediction = _prediction(spec)
    else:
        named = [p for p, names in SAMPLERS.items() if name in names]
        prediction = named[0] if named else (_config_prediction(config) or "v_prediction")
    if name is None or name == AUTO:
        by_class = {cls.__name__: n for n, cls in SAMPLERS[prediction].items()}
        name = by_class.get(str(config.get("_class_name", "")), DEFAULT_SAMPLERS[prediction])
    name = resolve_scheduler(prediction, name)
    found = _config_prediction(config) if config else None
    if not config or (found is not None and found != prediction):
        if config:
            log.warning("the model's scheduler config is for a %s backbone, this one is %s; sampling with the "
                        "bundled default config", found, prediction)
        config = default_scheduler_config(spec) if spec is not None else (
            default_scheduler_config() if prediction == "v_prediction" else default_scheduler_config("wan2.1-i2v-14b"))
    if prediction == "v_prediction":
        return SAMPLERS[prediction][name].from_config({k: v for k, v in config.items() if k != "_class_name"})
    return _flow_scheduler(name, {k: v for k, v in config.items() if not k.startswith("_")})


FLOW_SHIFT_KEYS = ("flow_shift", "shift")  # UniPCMultistepScheduler's (Wan's own) and FlowMatchEulerDiscreteScheduler's


def scheduler_flow_shift(config: Mapping[str, Any]) -> float | None:
    """The flow shift a flow-matching scheduler config samples with (Wan2.1 480P 3.0, 720P and Wan2.2 TI2V 5.0), or
    None when it names none (a DDPM config, for one)."""
    for key in FLOW_SHIFT_KEYS:
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value):
            return float(value)
    return None


def _flow_scheduler(name: str, config: dict):
    """UniPC or flow-match Euler from a config written for either, with its flow shift (1.0 when it names none)."""
    is_euler_config = "shift" in config and "use_flow_sigmas" not in config
    shift = scheduler_flow_shift(config) or 1.0
    train_steps = int(config.get("num_train_timesteps", 1000))
    if name == "euler":
        if is_euler_config:
            return FlowMatchEulerDiscreteScheduler.from_config(config)
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=train_steps, shift=shift)
    if is_euler_config:
        return UniPCMultistepScheduler(num_train_timesteps=train_steps, prediction_type="flow_prediction",
                                       use_flow_sigmas=True, flow_shift=shift)
    return UniPCMultistepScheduler.from_config(config)


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


def check_sampling_settings(*, steps: int, guidance: float, scheduler: str | None, samples: int = 1,
                            denoise: float = 1.0, prediction: str = "v_prediction") -> None:
    """Raise InputError for sampling settings that cannot work with any model of `prediction`'s kind
    (`BackboneSpec.prediction`; callers that know no model check against CogVideoX's "v_prediction");
    `validate_options` adds the model's own limits."""
    resolve_scheduler(prediction, scheduler)
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


def validate_options(model, *, steps: int, guidance: float, scheduler: str | None, window: int | None,
                     overlap: int | None, denoise: float = 1.0, num_video_latents: int | None = None,
                     samples: int = 1, cache: str = "off", cache_threshold: float | None = None,
                     batch_guidance: bool = False) -> None:
    """Raise InputError for sampling options that cannot work with `model`, before any long work.

    With `num_video_latents` known, a window covering the video counts as no window (one pass).
    """
    config = backbone_config(model)
    check_sampling_settings(steps=steps, guidance=guidance, scheduler=scheduler, samples=samples, denoise=denoise,
                            prediction=config.prediction)
    check_cache_options(cache, cache_threshold)
    if not isinstance(batch_guidance, bool):
        raise InputError(f"batch_guidance={batch_guidance!r}: must be True or False.")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise InputError(f"window={window!r}: a context window needs at least 1 video latent frame (or None).")
    if window is not None and (num_video_latents is None or window < num_video_latents):
        if overlap is not None and not 0 <= overlap < window:
            raise InputError(
                f"overlap={overlap}: must be at least 0 and smaller than window={window}; "
                f"{default_overlap(window)} is a good start."
            )
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
            "null-text embedding (model.null_text) or the text embeddings of the backbone's own text encoder."
        )
    if config.image_embed_dim is not None and cond.image_embeds is None:
        raise InputError(
            f"conditioning.image_embeds: this backbone ({config.variant}) also takes the reference's CLIP image "
            "embedding; encode the conditioning with a model that has its image encoder (encode_conditioning)."
        )


def reference_latent(model, cond: Conditioning) -> Tensor:
    """The reference frame ``[1, 1, C, h, w]`` converted from the image-latent to the diffusion scale, float32
    (the same on Wan, whose pipelines condition and diffuse in one normalised latent space)."""
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
                   scheduler: str | None = None, window: int | None = None, overlap: int | None = None,
                   denoise: float = 1.0, init_latents: Tensor | None = None, text_embeds: Tensor | None = None,
                   eta: float = 0.0, callback: StepCallback | None = None,
                   preview_factors: Tensor | None = None, samples: int = 1, cache: str = "off",
                   cache_threshold: float | None = None, batch_guidance: bool = False,
                   stats: CacheStats | None = None, on_window: WindowCallback | None = None) -> Tensor:
    """Denoise latents ``[1, 1 + N, C, h, w]`` (float32, on the transformer's device) for `cond`.

    `scheduler`: one of `scheduler_names(model)` ("dpm"/"ddim" on CogVideoX, "unipc"/"euler" on Wan); None or
    "auto": the backbone's default ("dpm", "unipc"). The backbone's input is the noisy latents with its family's
    image conditioning on channels (`image_window`), plus the reference's CLIP embedding on Wan2.1 I2V; on Wan2.2
    TI2V the clean reference latent is latent frame 0 at timestep 0 before every forward and after every step.
    Guidance: ``neg + guidance * (pos - neg)`` where the negative branch drops the cues and keeps the reference
    conditioning; guidance 1 runs one forward per step and window. Context windows: each window is the reference
    frame plus `window` video latent frames; window predictions are blended with ramped weights, then one
    scheduler step runs on the whole latent, so with one window covering the video the result equals a single
    pass. ``window=None`` uses the whole video, or the backbone's fixed length when it has learned positional
    embeddings. `denoise` < 1 starts from `init_latents` (``[1, N, C, h, w]`` or with the reference frame, in the
    diffusion scale) noised to the matching timestep and runs ``int(steps * denoise)`` steps. Flow-matching
    samplers start from the noise itself (sigma 1). The initial noise and the scheduler's noise come from a CPU
    generator seeded with `seed`, so results reproduce on any device. ``callback(step, total, preview)`` runs
    after each step (`step` 0-based; `preview` ``[N, h, w, 3]`` of the predicted clean latents) and may raise to
    stop sampling.

    `samples` > 1 returns the mean of that many results, seeded `seed`, `seed + 1`, ... (`step` and `total` then
    count over all of them). With one step from pure noise the result is the model's estimate of the clean clip,
    which at the schedule's zero terminal SNR should not depend on the noise at all: the mean keeps the estimate
    and cancels the part of the model's error that follows the noise. Several steps give distinct samples, and
    their mean is a blur of them.

    Speed options. `cache`: a step cache on the backbone, "off" (default), "first_block" (diffusers' first-block
    cache: the other blocks are skipped while the first block's residual changes by less than `cache_threshold`,
    default 0.05, relative mean), "mag" (MagCache: skips while the accumulated error of the model's residual
    magnitude ratios stays below `cache_threshold`, default 0.06; the first run with a scheduler and step count
    measures the ratios and skips nothing) or "taylorseer" (TaylorSeer, lite: full forwards every `cache_threshold`
    steps, default 5, after 3 warm-up steps; in between the output projection is extrapolated). Each window and
    guidance branch has its own cache state (`directanimator.models.caching`), so no step reuses what was computed
    for other cues. `batch_guidance`: run the guidance branches as one forward of batch 2 (the negative with
    ``cue_weight`` 0, which is exactly the bare backbone): fewer, larger forwards for the same result within float
    error, at twice the activation memory of a forward; off by default for that memory. `stats`: a `CacheStats`
    filled with what the cache did (forwards, those served from the cache, per context).

    `on_window(estimate)`: called with each window's own clean-latent estimate (`WindowEstimate`) at every step,
    before the blend; `directanimator.handoff` measures how far consecutive windows disagree on their shared frames.
    """
    config = backbone_config(model)
    fixed = fixed_latent_frames(config)
    n = cond.video_latent_frames
    if window is None and fixed and n > fixed - 1:
        window = fixed - 1
    validate_options(model, steps=steps, guidance=guidance, scheduler=scheduler, window=window, overlap=overlap,
                     denoise=denoise, num_video_latents=n, samples=samples, cache=cache,
                     cache_threshold=cache_threshold, batch_guidance=batch_guidance)
    scheduler = resolve_scheduler(config, scheduler)
    if denoise < 1.0 and init_latents is None:
        raise InputError(f"denoise={denoise}: partial denoising needs init_latents (or init frames); pass them or "
                         "use denoise=1.")
    text = model.null_text if text_embeds is None else text_embeds
    _check_conditioning(model, cond, text)
    plan = plan_windows(n, window, overlap)
    model.transformer.check_latent_shape(1 + plan.window, *cond.grid)
    if len(plan.spans) > 1:
        log.info("sampling %d video latent frames in %d windows of %d (overlap %d)", n, len(plan.spans),
                 plan.window, plan.overlap)

    sched = make_scheduler(scheduler, model.scheduler_config, spec=config)
    warn_untrained_timesteps(model, sched, steps=steps, denoise=denoise)
    # one window's image conditioning serves every window: each starts with the reference, as a fresh clip would
    image = image_window(model, cond, 1 + plan.window)
    visited = int(steps * denoise)
    branches = 1 if guidance == 1.0 or batch_guidance else 2  # cache contexts per window (see `_denoise`)
    with using(model, "transformer") as transformer, \
            StepCache(transformer, cache, cache_threshold, steps=visited, key=(scheduler, steps),
                      contexts=len(plan.spans) * branches) as step_cache:
        mean = None
        for k in range(samples):
            each = None if callback is None else _counting_over(callback, k, samples)
            step_cache.new_run()
            seen = None if on_window is None else _window_reporter(on_window, k)
            latents = _denoise(model, transformer, cond, sched, plan, text, image, steps=steps, guidance=guidance,
                               seed=seed + k, denoise=denoise, init_latents=init_latents, eta=eta, callback=each,
                               preview_factors=preview_factors, step_cache=step_cache,
                               batch_guidance=batch_guidance, on_window=seen)
            mean = latents if mean is None else mean.add_(latents)
    if stats is not None:
        for name, value in vars(step_cache.stats).items():
            setattr(stats, name, value)
    if step_cache.active:
        log.info(step_cache.stats.note())
    return mean.div_(samples)


def speed_notes(stats: CacheStats, *, batch_guidance: bool, guidance: float) -> list[str]:
    """The notes a result records for the speed options it sampled with (none when all are off)."""
    notes = [] if stats.note() is None else [stats.note()]
    if batch_guidance and guidance != 1.0:
        notes.append("guidance branches batched: the cued and the bare (cue weight 0) prediction in one forward of "
                     "batch 2 per window and step.")
    return notes


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


def warn_untrained_timesteps(model, sched, *, steps: int, denoise: float = 1.0) -> list[float]:
    """Log a warning when the sampling schedule visits timesteps below the range the checkpoint was trained on
    (e.g. a model trained only at high noise for one-step sampling, sampled with many steps); returns them (ints
    for CogVideoX's integer timesteps, floats for a flow schedule's)."""
    trained = trained_timesteps(model)
    if trained is None or trained[0] <= 0:
        return []
    visited = [t.item() for t in run_timesteps(sched, steps, denoise)]
    below = [t for t in visited if t < trained[0]]
    if below:
        log.warning("%s was trained on timesteps %d-%d only; %d of the %d sampling steps fall below (lowest t=%g), "
                    "where its predictions are untrained: sample it with steps=1 (its one-step estimate).",
                    getattr(model, "name", "this model"), trained[0], trained[1] - 1, len(below), len(visited),
                    min(below))
    return below


def _counting_over(callback: StepCallback, index: int, samples: int) -> StepCallback:
    """`callback` for run `index` of `samples`: steps and total count over all runs."""
    def report(step: int, total: int, preview: Tensor) -> None:
        callback(index * total + step, samples * total, preview)
    return report


def _window_reporter(on_window: WindowCallback, sample: int):
    """`_denoise`'s per-window report for run `sample` as `WindowEstimate`s."""
    def report(step: int, steps: int, window: int, span: tuple[int, int], clean: Tensor) -> None:
        on_window(WindowEstimate(sample=sample, step=step, steps=steps, window=window, span=span, clean=clean))
    return report


def _clean_estimate(sched, latents: Tensor, pred: Tensor, t: Tensor, sigma: Tensor | None) -> Tensor:
    """The clean latents implied by the model output `pred` at `latents` (timestep `t`): flow (`sigma` given):
    x - sigma * v; CogVideoX's schedulers: by their prediction type from alphas_cumprod."""
    if sigma is not None:
        return latents - sigma.to(latents.device) * pred
    alpha = sched.alphas_cumprod[int(t)].to(latents.device, torch.float32)
    if sched.config.prediction_type == "v_prediction":
        return alpha.sqrt() * latents - (1 - alpha).sqrt() * pred
    return (latents - (1 - alpha).sqrt() * pred) / alpha.sqrt()  # epsilon


def _add_noise(sched, clean: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """`clean` noised to timestep `t` by the scheduler's own forward process (flow-match Euler: `scale_noise`)."""
    if hasattr(sched, "scale_noise"):
        return sched.scale_noise(clean, t, noise)
    return sched.add_noise(clean, noise, t)


def _denoise(model, transformer, cond: Conditioning, sched, plan: WindowPlan, text: Tensor, image: Tensor, *,
             steps: int, guidance: float, seed: int, denoise: float, init_latents: Tensor | None, eta: float,
             callback: StepCallback | None, preview_factors: Tensor | None, step_cache: StepCache,
             batch_guidance: bool = False, on_window: Callable[..., None] | None = None) -> Tensor:
    device, dtype = transformer.device, transformer.dtype
    spec = transformer.spec
    flow = spec.prediction == "flow"
    n = cond.video_latent_frames
    timesteps = run_timesteps(sched, steps, denoise, device=device)
    # sigma of each visited step (flow previews: x0 = x_t - sigma * v)
    sigmas = sched.sigmas[len(sched.timesteps) - len(timesteps):] if flow else None
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = (1, 1 + n, int(transformer.latent_channels), *cond.grid)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    base = residual_base(model, cond)
    base = None if base is None else base.to(device)
    if init_latents is None:
        latents = noise if flow else noise * sched.init_noise_sigma
    else:
        init = _prepare_init(model, cond, init_latents).to(device)
        latents = _add_noise(sched, init if base is None else init - base, noise, timesteps[:1])
    del noise
    # Wan2.2 TI2V: the clean reference latent is frame 0 of every forward, at timestep 0 (diffusers' TI2V pipeline)
    first = reference_latent(model, cond).to(device) if spec.image_conditioning == "first_frame" else None
    if first is not None:
        latents[:, :1] = first

    text = text.to(device=device, dtype=dtype)
    cues = cond.cues.to(device=device, dtype=dtype)
    image = image.to(device=device, dtype=dtype)
    embeds = None if cond.image_embeds is None else cond.image_embeds.to(device=device, dtype=dtype)
    weights = [w.to(device) for w in plan.weights]
    pair_weight = torch.tensor([1.0, 0.0], device=device, dtype=dtype)

    def timestep_for(t: Tensor, frames: int) -> Tensor:
        if first is None:
            return t.reshape(1)
        per_frame = t.to(torch.float32).reshape(1, 1).repeat(1, frames)
        per_frame[:, 0] = 0
        return per_frame

    def predict(x: Tensor, window_cues, t: Tensor, window: int) -> Tensor:
        inputs = torch.cat([x.to(dtype), image], dim=2)
        tt = timestep_for(t, x.shape[1])
        with torch.no_grad():
            if guidance != 1.0 and batch_guidance:
                # one forward of batch 2: the cues at weight 1 and at weight 0 (exactly the bare backbone)
                with step_cache.context(context_name(window, "both")):
                    both = transformer(inputs.repeat(2, 1, 1, 1, 1), text.repeat(2, 1, 1),
                                       tt.repeat(2, *([1] * (tt.ndim - 1))), cues=window_cues.repeat_batch(2),
                                       cue_weight=pair_weight,
                                       image_embeds=None if embeds is None else embeds.repeat(2, 1, 1)).float()
                pred, negative = both[:1], both[1:]
                return negative + guidance * (pred - negative)
            with step_cache.context(context_name(window, "cues")):
                pred = transformer(inputs, text, tt, cues=window_cues, image_embeds=embeds).float()
            if guidance != 1.0:
                with step_cache.context(context_name(window, "bare")):
                    negative = transformer(inputs, text, tt, cues=None, image_embeds=embeds).float()
                pred = negative + guidance * (pred - negative)
        return pred

    def report(i: int, t: Tensor, window: int, index: Tensor, out: Tensor) -> None:
        clean = _clean_estimate(sched, latents.index_select(1, index), out, t, sigmas[i] if flow else None)
        span = plan.spans[window]
        on_window(i, total, window, span, clean if base is None else clean + base)

    old_x0 = None
    total = len(timesteps)
    whole = None if on_window is None else torch.arange(1 + n, device=device)  # one window's frame index
    for i, t in enumerate(timesteps):
        x = latents if flow else sched.scale_model_input(latents, t)
        if len(plan.spans) == 1:
            pred = predict(x, cues, t, 0)
            if on_window is not None:
                report(i, t, 0, whole, pred)
        else:
            pred = torch.zeros_like(latents)
            weight_sum = latents.new_zeros(1 + n)
            for k, ((start, end), w) in enumerate(zip(plan.spans, weights)):
                index = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1 + start, 1 + end)]).to(device)
                w = torch.cat([w.new_ones(1), w])  # the reference frame: a plain mean over windows
                out = predict(x.index_select(1, index), cues.frames(index), t, k)
                if on_window is not None:
                    report(i, t, k, index, out)
                pred.index_add_(1, index, out * w.view(1, -1, 1, 1, 1))
                weight_sum.index_add_(0, index, w)
                del out
            pred /= weight_sum.view(1, -1, 1, 1, 1)
        if isinstance(sched, CogVideoXDPMScheduler):
            latents, x0 = sched.step(pred, old_x0, t, timesteps[i - 1] if i > 0 else None, latents,
                                     generator=generator, return_dict=False)
            old_x0 = x0
        elif flow:
            x0 = latents - sigmas[i].to(device) * pred if callback is not None else None
            latents = sched.step(pred, t, latents, return_dict=False)[0]
        else:
            out = sched.step(pred, t, latents, eta=eta, generator=generator, return_dict=True)
            latents, x0 = out.prev_sample, out.pred_original_sample
        latents = latents.float()
        if first is not None:
            latents[:, :1] = first
        del pred
        if callback is not None:
            shown = x0[:, 1:] if base is None else x0[:, 1:] + base
            callback(i, total, latent_preview(shown, rgb_factors=preview_factors))
    return latents if base is None else latents + base
