"""Step caches for sampling: diffusers' first-block, MagCache and TaylorSeer hooks on the backbone of a
`DirectAnimatorTransformer`, one cache state per context window and guidance branch.

The cache hooks find a backbone's blocks in its ``transformer_blocks`` / ``blocks`` list and read each block's
return layout from diffusers' `TransformerBlockRegistry`. Our wrappers (`CueFusionBlock`, `WanCueFusionBlock`) sit
in those lists with the same call signature and return layout as the blocks they wrap, but under another class, so
the registry refuses them; `register_cue_blocks` enters them with their inner block's layout. The hooks then sit on
the wrappers, and every residual they keep is measured around the cue injection: the first-block residual includes
block 0's cues, the cached tail residual the cues of the other blocks.

The cached residuals differ with the cues, so a step may only reuse what an earlier step computed for the same
cues: every forward runs inside `StepCache.context(name)` (diffusers' ``cache_context``, which keys the hooks'
state by name), and the sampler names one context per window and guidance branch (`context_name`). The states are
cleared between samples (`StepCache.new_run`).

Memory: each context keeps its own state for the whole run (the windows are blended at every step, so none is
done before the last), so the cache memory grows with windows x branches. On a GPU the idle contexts' states are
parked on the CPU (`StepCache(park=...)`): only the running context's state is on the GPU, at the cost of moving
it in and out around each of its forwards. Per context, in hidden-state-sized tensors ``[B, tokens, inner_dim]``
of the model dtype: first_block 3 (first-block output and residual, tail residual) plus 2 text-sized ones on
CogVideoX; mag 1 (the last residual); taylorseer (lite) only the output projection's value and slope in fp32,
``[B, tokens, C * p * p]`` (measured: `directanimator.models.info.CACHE_STATE_TENSORS`).

Not offered: diffusers' FasterCache, which approximates the guidance's unconditional branch from the conditional
one; here the two branches differ by the cues, and that reuse is exactly what must not happen.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from ..errors import InputError
from .fusion import CueFusionBlock, WanCueFusionBlock

log = logging.getLogger(__name__)

CACHE_MODES = ("off", "first_block", "mag", "taylorseer")
# first_block: relative mean change of the first block's residual below which the other blocks are skipped;
# mag: accumulated magnitude-ratio error allowed before recomputing; taylorseer: full forwards every N steps.
DEFAULT_THRESHOLDS = {"first_block": 0.05, "mag": 0.06, "taylorseer": 5.0}
MAG_MAX_SKIPS = 3  # consecutive steps MagCache may skip (diffusers' default)
MAG_RETENTION = 0.2  # leading share of the steps MagCache always computes (diffusers' default)
TAYLOR_WARMUP = 3  # leading steps TaylorSeer always computes (diffusers' default)


def check_cache_options(cache: str, threshold: float | None) -> None:
    """Raise InputError for a step cache that does not exist or a threshold it cannot take."""
    if cache not in CACHE_MODES:
        raise InputError(f"cache={cache!r}: not a step cache; use one of {list(CACHE_MODES)} ('off' runs every "
                         "block at every step).")
    if threshold is None:
        return
    if cache == "off":
        raise InputError(f"cache_threshold={threshold}: given with cache='off'; pick a cache or leave it None.")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold) \
            or threshold <= 0:
        raise InputError(f"cache_threshold={threshold!r}: must be a finite number > 0 "
                         f"({DEFAULT_THRESHOLDS[cache]} is the default for {cache!r}).")
    if cache == "taylorseer" and float(threshold) != int(threshold):
        raise InputError(f"cache_threshold={threshold}: for 'taylorseer' it is the refresh interval in whole steps "
                         f"(a full forward every N steps, e.g. {int(DEFAULT_THRESHOLDS['taylorseer'])}).")


def resolve_threshold(cache: str, threshold: float | None) -> float | None:
    """`threshold`, or the cache's default; None for "off"."""
    check_cache_options(cache, threshold)
    if cache == "off":
        return None
    return float(DEFAULT_THRESHOLDS[cache] if threshold is None else threshold)


def context_name(window: int, branch: str) -> str:
    """The cache context of one window's forward: `branch` is "cues", "bare" (the guidance negative) or "both"
    (the two branches batched in one forward)."""
    return f"window{window}/{branch}"


def register_cue_blocks() -> None:
    """Enter the CueFusion wrappers in diffusers' block registry with the layout of the blocks they wrap."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    for wrapper, inner in ((CueFusionBlock, CogVideoXBlock), (WanCueFusionBlock, WanTransformerBlock)):
        layout = TransformerBlockRegistry.get(inner)
        TransformerBlockRegistry.register(wrapper, TransformerBlockMetadata(
            return_hidden_states_index=layout.return_hidden_states_index,
            return_encoder_hidden_states_index=layout.return_encoder_hidden_states_index,
            hidden_states_argument_name=layout.hidden_states_argument_name,
            encoder_hidden_states_argument_name=layout.encoder_hidden_states_argument_name))


@dataclass
class CacheStats:
    """What a step cache did over one sampling call: backbone forwards, those it served from the cache, the
    forwards per context (window and branch)."""

    mode: str = "off"
    threshold: float | None = None
    forwards: int = 0
    skipped: int = 0
    calibrated: bool = False  # mag: this call measured the magnitude ratios (and skipped nothing)
    contexts: dict[str, int] = field(default_factory=dict)

    @property
    def skipped_share(self) -> float:
        return self.skipped / self.forwards if self.forwards else 0.0

    def note(self) -> str | None:
        """One sentence for a result's notes; None with the cache off."""
        if self.mode == "off":
            return None
        what = {"first_block": "first-block cache", "mag": "MagCache", "taylorseer": "TaylorSeer cache"}[self.mode]
        setting = (f"refresh every {int(self.threshold)} steps" if self.mode == "taylorseer"
                   else f"threshold {self.threshold:g}")
        text = (f"step cache: {what} ({setting}), {self.skipped} of {self.forwards} backbone forwards served from "
                f"the cache ({100 * self.skipped_share:.0f}%), one cache state per window and guidance branch")
        if self.calibrated:
            text += "; this run measured the model's magnitude ratios (nothing skipped), later runs with the same " \
                    "scheduler and steps skip"
        return text + "."


# MagCache needs the model's per-step residual magnitude ratios; measured ones are kept per transformer and
# (scheduler, steps, visited steps).
_MAG_RATIOS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, Tensor]]" = weakref.WeakKeyDictionary()


def mag_ratios(transformer: nn.Module, key: tuple) -> Tensor | None:
    """The magnitude ratios measured for `transformer` at `key` (`StepCache.key`), or None."""
    return _MAG_RATIOS.get(transformer, {}).get(key)


def remember_mag_ratios(transformer: nn.Module, key: tuple, ratios: Tensor) -> None:
    """Give MagCache the magnitude ratios of `transformer` at `key` (`StepCache.key`), one per step, e.g. ones
    measured on another run; later `StepCache`s with that key skip from their first run."""
    ratios = torch.as_tensor(ratios, dtype=torch.float32).reshape(-1)
    if not ratios.numel() or not torch.isfinite(ratios).all() or (ratios <= 0).any():
        raise InputError(f"mag ratios: need one finite positive ratio per step, got {ratios.tolist()}.")
    _MAG_RATIOS.setdefault(transformer, {})[tuple(key)] = ratios


class _MagCalibration:
    """Measures MagCache's magnitude ratios (mean over tokens of |residual_t| / |residual_t-1|, the residual being
    the last block's output minus the first block's input) per cache context.

    Written here because diffusers' calibration mode prints the ratios and then clears them, so a program cannot
    read them back.
    """

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.name: str | None = None
        self._input: Tensor | None = None
        self._previous: dict[str, Tensor] = {}
        self._ratios: dict[str, list[float]] = {}
        self._finished: list[list[float]] = []
        self._handles = [blocks[0].register_forward_pre_hook(self._on_input, with_kwargs=True),
                         blocks[-1].register_forward_hook(self._on_output)]

    def _on_input(self, _module, args, kwargs) -> None:
        self._input = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def _on_output(self, _module, _args, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        residual = (hidden - self._input).float()
        norm = torch.linalg.norm(residual, dim=-1)
        previous = self._previous.get(self.name)
        ratio = 1.0 if previous is None else float((norm / (previous + 1e-8)).mean())
        self._previous[self.name] = norm
        self._ratios.setdefault(self.name, []).append(ratio)
        self._input = None

    def new_run(self) -> None:
        self._finished.extend(self._ratios.values())
        self._ratios, self._previous = {}, {}

    def result(self, steps: int) -> Tensor | None:
        self.new_run()
        runs = [r for r in self._finished if len(r) == steps]
        return torch.tensor(runs, dtype=torch.float32).mean(0) if runs else None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class StepCache:
    """A step cache on `transformer.backbone` for one sampling call (a context manager; the hooks are removed on
    exit). `steps`: forwards per context and sample (the visited timesteps); `key`: what MagCache's measured ratios
    are valid for (scheduler, steps, visited steps). Mode "off" registers nothing."""

    def __init__(self, transformer: nn.Module, mode: str = "off", threshold: float | None = None, *,
                 steps: int, key: tuple = (), park: bool | None = None, contexts: int = 1) -> None:
        self.transformer = transformer
        self.backbone = transformer.backbone
        # park the idle contexts' states on the CPU: by default when the model computes on a GPU and the run has
        # more than one context (`contexts`: windows x guidance branches)
        self.park = park if park is not None else (contexts > 1 and transformer.device.type == "cuda")
        threshold = resolve_threshold(mode, threshold)
        self.stats = CacheStats(mode=mode, threshold=threshold)
        self.steps = int(steps)
        self.key = tuple(key) + (self.steps,)
        self._calibration: _MagCalibration | None = None
        self._counter = None
        self._computed = 0
        self._enabled = False
        self._managers: list = []

    @property
    def active(self) -> bool:
        return self.stats.mode != "off"

    def _config(self):
        from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

        mode, threshold = self.stats.mode, self.stats.threshold
        if mode == "first_block":
            return FirstBlockCacheConfig(threshold=threshold)
        if mode == "mag":
            ratios = mag_ratios(self.transformer, self.key)
            if ratios is None:
                return None
            return MagCacheConfig(threshold=threshold, max_skip_steps=MAG_MAX_SKIPS, retention_ratio=MAG_RETENTION,
                                  num_inference_steps=self.steps, mag_ratios=ratios.clone())
        # Lite mode: the blocks are skipped on predicted steps and only the output projection is extrapolated,
        # from fp32 factors (it is small); the full mode would still run every feed-forward.
        return TaylorSeerCacheConfig(cache_interval=int(threshold), disable_cache_before_step=TAYLOR_WARMUP,
                                     taylor_factors_dtype=torch.float32, use_lite_mode=True)

    def __enter__(self) -> "StepCache":
        if not self.active:
            return self
        if self.backbone.is_cache_enabled:
            raise InputError(f"cache={self.stats.mode!r}: the backbone already has a diffusers cache enabled "
                             f"({type(self.backbone._cache_config).__name__}); call backbone.disable_cache() first.")
        register_cue_blocks()
        blocks = self.transformer.blocks
        if len(blocks) < 2:  # diffusers' hooks split the blocks into a first one and the rest
            raise InputError(f"cache={self.stats.mode!r}: the model has {len(blocks)} transformer block; a step cache "
                             "needs at least 2. Use cache='off'.")
        config = self._config()
        if config is None:
            self._calibration = _MagCalibration(blocks)
            self.stats.calibrated = True
            log.info("MagCache: measuring this model's magnitude ratios on this run (no step skipped)")
        else:
            self.backbone.enable_cache(config)
            self._enabled = True
            self._managers = _state_managers(self.backbone)  # found once: parking runs around every forward
        # A skipped forward never runs the innermost last block (the hooks return before calling it).
        self._counter = blocks[-1].block.register_forward_hook(self._count)
        return self

    def _count(self, *_args) -> None:
        self._computed += 1

    def __exit__(self, exc_type, *_exc) -> None:
        if self._counter is not None:
            self._counter.remove()
            self._counter = None
        if self._enabled:
            self.backbone.disable_cache()
            self._enabled = False
            self._managers = []
        if self._calibration is not None:
            ratios = self._calibration.result(self.steps) if exc_type is None else None
            self._calibration.remove()
            self._calibration = None
            if ratios is not None:
                remember_mag_ratios(self.transformer, self.key, ratios)

    def _move_states(self, name: str, device: torch.device) -> None:
        """Move context `name`'s state in every cache hook of the backbone to `device` (a state not created yet, at
        a context's first forward, is skipped)."""
        for manager in self._managers:
            state = manager._state_cache.get(name)
            if state is not None:
                for key, value in vars(state).items():
                    setattr(state, key, _moved(value, device))

    def state_bytes(self, device: torch.device | str | None = None) -> int:
        """`held_state_bytes` of this cache's backbone."""
        return held_state_bytes(self.backbone, device)

    def new_run(self) -> None:
        """Forget every cached state: call before each sample."""
        if self._enabled:
            self.backbone._reset_stateful_cache()
        if self._calibration is not None:
            self._calibration.new_run()

    @contextlib.contextmanager
    def context(self, name: str) -> Iterator[None]:
        """Run one backbone forward under cache context `name` (one per window and guidance branch)."""
        if not self.active:
            yield
            return
        before = self._computed
        if self._calibration is not None:
            self._calibration.name = name
            yield
        else:
            with self.backbone.cache_context(name):
                if self.park:
                    self._move_states(name, self.transformer.device)
                yield
                if self.park:
                    self._move_states(name, torch.device("cpu"))
        self.stats.forwards += 1
        self.stats.contexts[name] = self.stats.contexts.get(name, 0) + 1
        if self._computed == before:
            self.stats.skipped += 1


def held_state_bytes(module: nn.Module, device: torch.device | str | None = None) -> int:
    """Bytes of the tensors the diffusers cache hooks under `module` hold in their states (every context; each
    tensor once), only those on `device` when given."""
    seen: dict[int, int] = {}
    device = None if device is None else torch.device(device)
    for manager in _state_managers(module):
        for state in manager._state_cache.values():
            for tensor in _tensors(vars(state)):
                if device is None or tensor.device == device:
                    seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def _state_managers(backbone: nn.Module) -> list:
    """The distinct state managers of the diffusers hooks under `backbone` (first-block's head and tail hooks share
    one)."""
    managers = {}
    for module in backbone.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in getattr(registry, "hooks", {}).values():
            manager = getattr(hook, "state_manager", None)
            if manager is not None and hasattr(manager, "_state_cache"):
                managers[id(manager)] = manager
    return list(managers.values())


def _moved(value, device: torch.device):
    """`value` with every tensor in it (nested lists, tuples and dicts too) on `device`."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    return value


def _tensors(value) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
