"""Memory and speed options of a loaded DirectAnimator transformer, applied with diffusers' own hooks (DESIGN.md 7b).

One record, `MemoryOptions`, says how the weights are stored (bf16, or fp8 e4m3 with bf16 compute), how they are
offloaded (not at all, the whole model between uses, or groups of blocks), which attention kernel runs and whether
the repeated blocks are compiled. `apply_memory_options` puts it into effect on a `DirectAnimatorTransformer`:

- fp8 storage: diffusers' layerwise casting on the backbone (`ModelMixin.enable_layerwise_casting`), skipping the
  backbone's own precision-critical modules (its ``_skip_layerwise_casting_patterns`` and ``_keep_in_fp32_modules``
  plus diffusers' defaults: norms, patch and positional embeddings, ``proj_out``), its time embedding, and every
  CueFusion module;
- block offload: diffusers' group offloading (`apply_group_offloading`, block level) over the backbone's block list,
  whose entries are the wrapped blocks, so each block's CueFusion moves with it; streamed on CUDA;
- attention: diffusers' attention dispatcher (`dispatch_attention_fn`), the backend set on each processor;
  CogVideoX's processor is first swapped for one that dispatches (`directanimator.models.attention`);
- compile: diffusers' regional compilation (`ModelMixin.compile_repeated_blocks`) of the wrapped blocks.

The whole-model offload ("model") is `AnimatorModel`'s own (``offload=True``); this module only records it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from diffusers.hooks import HookRegistry, ModelHook, apply_group_offloading
from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, _get_group_onload_device, _is_group_offload_enabled
from diffusers.hooks.layerwise_casting import _is_layerwise_casting_active
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn

from ..errors import InputError
from .attention import install_dispatch_attention
from .fusion import CueFusion

log = logging.getLogger(__name__)

STORAGE = ("bf16", "fp8")
OFFLOAD = ("none", "model", "blocks")
# Our name -> (diffusers AttentionBackendName value, pip package, how to install it). "native" is torch SDPA.
ATTENTION_BACKENDS: dict[str, tuple[str, str | None, str | None]] = {
    "native": ("native", None, None),
    "flash": ("flash", "flash-attn", "pip install flash-attn --no-build-isolation (FlashAttention 2.6.3 or newer, "
                                     "a CUDA GPU of the Ampere generation or later)"),
    "sage": ("sage", "sageattention", "pip install sageattention (SageAttention 2.1.1 or newer, built for your CUDA "
                                      "and PyTorch)"),
    "xformers": ("xformers", "xformers", "pip install xformers (the build matching your PyTorch)"),
}
_IMPORT_NAMES = {"flash-attn": "flash_attn", "sageattention": "sageattention", "xformers": "xformers"}
FP8_STORAGE_DTYPE = torch.float8_e4m3fn
# Kept out of fp8 besides the backbone's own skips. The time embedding (`TimestepEmbedding`) makes e_t, which drives
# the backbone's modulation (CogVideoX's norm1/norm2 linears, kept by the "norm" pattern) and the CueFusion
# modulation: Wan's `condition_embedder` is in its `_skip_layerwise_casting_patterns`, CogVideoX's `time_embedding`
# and `ofs_embedding` are not. CueFusion: see `store_fp8`.
_KEEP_CLASSES = (TimestepEmbedding, CueFusion)
_ONLOAD_HOOK = "directanimator_onload_backbone_root"
_APPLIED_ATTR = "_directanimator_memory_options"


@dataclass(frozen=True)
class MemoryOptions:
    """How a transformer's weights are stored and placed, which attention kernel runs, and whether it is compiled.

    - `storage`: "bf16" keeps the weights in the dtype the model was loaded in (bf16 by default); "fp8" stores the
      backbone's linear layers as float8 e4m3 and computes in the load dtype (about half the weight memory, within
      fp8 rounding of the bf16 output).
    - `offload`: "none"; "model" keeps the whole model on the CPU and moves it to the GPU for each use;
      "blocks" keeps the transformer blocks on the CPU and moves `blocks_on_gpu` at a time to the GPU.
    - `blocks_on_gpu`: blocks per offload group ("blocks" only). Streamed transfers (`stream`) take one block at a
      time and prefetch the next, so two are on the GPU.
    - `stream`: overlap block transfers with compute on a CUDA stream; None = when the device is CUDA and
      `blocks_on_gpu` is 1.
    - `attention`: "native" (PyTorch SDPA), "flash" (flash-attn), "sage" (sageattention), "xformers".
    - `compile`: torch.compile each transformer block (regional compilation: one compile, reused by every block).
    """

    storage: str = "bf16"
    offload: str = "none"
    blocks_on_gpu: int = 1
    stream: bool | None = None
    attention: str = "native"
    compile: bool = False

    def validate(self) -> "MemoryOptions":
        """Raise InputError naming the option and the fix (also for an attention backend whose package is absent)."""
        if self.storage not in STORAGE:
            raise InputError(f"storage={self.storage!r}: use one of {list(STORAGE)} (fp8 = float8 e4m3 weights with "
                             "bf16 compute).")
        if self.offload not in OFFLOAD:
            raise InputError(f"offload={self.offload!r}: use one of {list(OFFLOAD)}.")
        if isinstance(self.blocks_on_gpu, bool) or not isinstance(self.blocks_on_gpu, int) or self.blocks_on_gpu < 1:
            raise InputError(f"blocks_on_gpu={self.blocks_on_gpu!r}: give a whole number of blocks, 1 or more.")
        if self.stream not in (None, True, False):
            raise InputError(f"stream={self.stream!r}: use true, false or none (auto: streamed when CUDA is there).")
        if self.stream and self.offload != "blocks":
            raise InputError(f"stream=True: streams overlap block transfers, which only offload='blocks' makes; "
                             f"offload is {self.offload!r}. Set offload='blocks' or leave stream unset.")
        if self.stream and self.blocks_on_gpu != 1:
            raise InputError(f"stream=True with blocks_on_gpu={self.blocks_on_gpu}: diffusers streams one block at a "
                             "time (and prefetches the next). Set blocks_on_gpu=1, or stream=False to move groups of "
                             f"{self.blocks_on_gpu} blocks without a stream.")
        if self.attention not in ATTENTION_BACKENDS:
            raise InputError(f"attention={self.attention!r}: use one of {list(ATTENTION_BACKENDS)}.")
        check_attention_backend(self.attention)
        if not isinstance(self.compile, bool):
            raise InputError(f"compile={self.compile!r}: give true or false.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MemoryOptions":
        """From a dict of option names (unknown names are an InputError), validated."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(values) - known)
        if extra:
            raise InputError(f"memory options {extra}: unknown; known options are {sorted(known)}.")
        return cls(**dict(values)).validate()


def check_attention_backend(name: str) -> None:
    """InputError when attention backend `name` needs a package that is absent or too old, naming the package and
    how to install it; nothing for "native"."""
    if name not in ATTENTION_BACKENDS:
        raise InputError(f"attention={name!r}: use one of {list(ATTENTION_BACKENDS)}.")
    backend, package, install = ATTENTION_BACKENDS[name]
    if package is None:
        return
    if importlib.util.find_spec(_IMPORT_NAMES[package]) is None:
        raise InputError(f"attention={name!r}: needs the {package} package, which is not installed. Install it "
                         f"({install}), or use attention='native'.")
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:  # diffusers' own version requirements for the backend
        _check_attention_backend_requirements(AttentionBackendName(backend))
    except (RuntimeError, ImportError) as exc:
        raise InputError(f"attention={name!r}: {package} is installed but not usable by diffusers ({exc}). "
                         f"Install a usable version ({install}), or use attention='native'.") from None


def check_device(options: MemoryOptions, device: str | torch.device) -> None:
    """InputError when `device` cannot run `options` (a CUDA-only attention backend or streamed offload elsewhere);
    `load_model` calls it before anything loads."""
    device = torch.device(device)
    if options.attention != "native" and device.type != "cuda":
        raise InputError(f"attention={options.attention!r}: {ATTENTION_BACKENDS[options.attention][1]} runs on CUDA "
                         f"GPUs only, and the device is {device}. Use attention='native' there.")
    if options.stream and device.type != "cuda":
        raise InputError(f"stream=True: streamed offload needs a CUDA device, and the device is {device}. Leave "
                         "stream unset (auto) or set it to false.")


def describe(options: MemoryOptions) -> str:
    """One line for logs, result notes and node tooltips, e.g. ``storage fp8, offload blocks (2 on GPU,
    streamed), attention native, compile on``."""
    offload = options.offload
    if offload == "blocks":
        stream = {None: "streamed on CUDA", True: "streamed", False: "not streamed"}[options.stream]
        offload = f"blocks ({options.blocks_on_gpu} on GPU, {stream})"
    return (f"storage {options.storage}, offload {offload}, attention {options.attention}, "
            f"compile {'on' if options.compile else 'off'}")


def hooks_place_weights(transformer: nn.Module) -> bool:
    """True when diffusers' group offloading places the transformer's weights: callers must not ``.to(device)`` it
    (that would put every block on the GPU at once)."""
    return _is_group_offload_enabled(transformer)


def execution_device(transformer: nn.Module) -> torch.device:
    """The device the transformer computes on: the onload device under block offload (its first weight is on the
    CPU between forwards then), else the device of its weights."""
    if _is_group_offload_enabled(transformer):
        return torch.device(_get_group_onload_device(transformer))
    return next(transformer.parameters()).device


def apply_memory_options(transformer: nn.Module, options: MemoryOptions, *, device: str | torch.device) -> list[str]:
    """Put `options` into effect on a `DirectAnimatorTransformer` that computes on `device`; return one note per
    option for the result's notes.

    Call once, after the weights (and any LoRA) are loaded and cast to the compute dtype, before the first forward.
    With offload="blocks" the transformer stays on the CPU and diffusers' hooks move its blocks (see
    `hooks_place_weights`); otherwise move it to `device` (or offload it whole) as usual. fp8 storage cannot be
    undone: reload the model to change it. Raises InputError, before changing anything, for options that `device`
    cannot run.
    """
    options.validate()
    device = torch.device(device)
    previous = getattr(transformer, _APPLIED_ATTR, None)
    if previous is not None:
        if previous[0] == options and previous[1] == device:
            return list(previous[2])
        raise InputError(f"memory options: this model already runs with {describe(previous[0])} on {previous[1]}; "
                         f"load it again to use {describe(options)} on {device}.")
    if _is_layerwise_casting_active(transformer) or _is_group_offload_enabled(transformer):
        raise InputError("memory options: this model already carries diffusers layerwise-casting or offload hooks "
                         "set elsewhere; load it again and set its options here only.")
    check_device(options, device)
    compute = transformer.dtype
    if options.storage == "fp8" and compute not in (torch.bfloat16, torch.float16, torch.float32):
        raise InputError(f"storage='fp8': the model computes in {compute}; load it in bf16, fp16 or fp32.")

    backbone = transformer.backbone
    notes = []
    if options.storage == "fp8":
        notes.append(store_fp8(transformer, compute))
    if options.offload == "blocks":
        notes.append(_offload_blocks(transformer, options, device))
    elif options.offload == "model":
        notes.append(f"offload: whole model, on {device} only while it runs")
    attention = _set_attention(backbone, options.attention)
    if options.attention != "native":
        notes.append(attention)
    if options.compile:
        notes.append(_compile_blocks(transformer))
    if not notes:
        notes.append(f"memory: {describe(options)}")
    object.__setattr__(transformer, _APPLIED_ATTR, (options, device, tuple(notes)))
    for note in notes:
        log.info("%s", note)
    return notes


def applied_options(transformer: nn.Module) -> MemoryOptions | None:
    """The options `apply_memory_options` put into effect on `transformer`, or None."""
    applied = getattr(transformer, _APPLIED_ATTR, None)
    return None if applied is None else applied[0]


# --------------------------------------------------------------------------- the pieces
def store_fp8(transformer: nn.Module, compute: torch.dtype) -> str:
    """Store the backbone's layers as fp8 e4m3, computing in `compute`: diffusers' layerwise casting with its skip
    rules plus ours (also training's frozen weights, `training.frozen`); returns the note.

    Kept in the compute dtype besides the backbone's own skips: every CueFusion module (the per-block modulation
    ``down``/``up`` and the text projections: about 1 % of a CogVideoX-5B block, 3 % of a Wan-14B one, so fp8 would
    save little and would round the gates and scales that decide how much cue enters every block), and, outside
    the backbone and so never hooked, the cue patch embeddings (whose weight `CuePatchEmbed` reads directly) and
    ``shared_modulation`` (the shared part of the same modulation).
    """
    # Without explicit patterns, enable_layerwise_casting skips diffusers' defaults (norms, patch and positional
    # embeddings, proj_in/proj_out), the backbone's `_skip_layerwise_casting_patterns` and `_keep_in_fp32_modules`,
    # and PEFT adapter layers (LoRA stays in the compute dtype).
    transformer.backbone.enable_layerwise_casting(storage_dtype=FP8_STORAGE_DTYPE, compute_dtype=compute,
                                                  skip_modules_classes=_KEEP_CLASSES)
    total = sum(p.numel() for p in transformer.parameters())
    fp8 = sum(p.numel() for p in transformer.parameters() if p.dtype == FP8_STORAGE_DTYPE)
    return (f"weights: fp8 e4m3 storage for {fp8 / total:.0%} of the parameters, {_dtype_name(compute)} compute; "
            "norms, embeddings, the time embedding, proj_out and the CueFusion modules kept in "
            f"{_dtype_name(compute)}")


def _offload_blocks(transformer: nn.Module, options: MemoryOptions, device: torch.device) -> str:
    """diffusers' block-level group offloading over the backbone's block list (the wrapped blocks)."""
    backbone = transformer.backbone
    stream = options.stream if options.stream is not None else (device.type == "cuda" and options.blocks_on_gpu == 1)
    transformer.to("cpu")  # the hooks onload from the CPU copy; nothing of the backbone stays on the GPU
    apply_group_offloading(backbone, onload_device=device, offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=options.blocks_on_gpu,
                           use_stream=stream, non_blocking=stream)
    # The cue modules outside the backbone (patch embeddings, shared_modulation) are used by the wrapper's forward
    # and, shared_modulation, inside every block; they stay on the device (CogVideoX-5B: 10 M parameters, Wan-14B:
    # 158 M), as an offload group of their own would move shared_modulation once per block.
    for name, module in transformer.named_children():
        if name != "backbone":
            module.to(device)
    # The wrapper calls backbone submodules before the backbone's own forward (Wan's time embedder for the cue
    # modulation; the patch embedding's device for the cue inputs), while diffusers onloads the backbone's
    # top-level group only when the backbone itself is called; this hook onloads that group at the wrapper's
    # forward (the backbone's hook then finds it in place and offloads it when the backbone returns).
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_OnloadBackboneRoot(backbone), _ONLOAD_HOOK)
    blocks = len(transformer.blocks)
    groups = -(-blocks // options.blocks_on_gpu)
    return (f"offload: {blocks} blocks in {groups} groups of {options.blocks_on_gpu}, onloaded to {device} in turn"
            f"{', streamed' if stream else ''}; each block's CueFusion moves with it")


class _OnloadBackboneRoot(ModelHook):
    """Onloads the backbone's top-level offload group when the wrapper's forward starts (see `_offload_blocks`)."""

    _is_stateful = False

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def pre_forward(self, module: nn.Module, *args, **kwargs):
        hook = self.backbone._diffusers_hook.get_hook(_GROUP_OFFLOADING)
        if hook is not None:
            hook.group.onload_()
        return args, kwargs


def _set_attention(backbone: nn.Module, name: str) -> str:
    """Route the backbone's attention through diffusers' dispatcher with backend `name`, set on every processor.

    For "native" CogVideoX keeps its own SDPA processor; Wan's processors get "native" set explicitly, as a
    processor without a backend follows diffusers' process-wide active backend.
    """
    from diffusers.models.attention_dispatch import AttentionBackendName

    swapped = install_dispatch_attention(backbone) if name != "native" else 0
    backend = AttentionBackendName(ATTENTION_BACKENDS[name][0])
    # Set per processor rather than by `ModelMixin.set_attention_backend`, which also makes `backend` diffusers'
    # process-wide active backend and so switches every other diffusers model in the process (a ComfyUI session
    # holds several) whose processors have none set; its package check runs in `check_attention_backend`.
    for module in backbone.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = backend
    package = ATTENTION_BACKENDS[name][1]
    return (f"attention: {name} ({package}) through diffusers' dispatcher"
            + (f"; {swapped} CogVideoX processors switched to the dispatching one" if swapped else ""))


def _compile_blocks(transformer: nn.Module) -> str:
    """Regional torch.compile of the wrapped blocks, by diffusers' `compile_repeated_blocks`."""
    backbone = transformer.backbone
    # compile_repeated_blocks compiles the modules whose class `_repeated_blocks` names: the backbone's own entry
    # names the inner block (Wan) or is missing (CogVideoX), which would leave each block's CueFusion outside the
    # compiled region; the wrapper class is named instead, on this instance only.
    wrapper = type(transformer.blocks[0]).__name__
    backbone._repeated_blocks = [wrapper]
    backbone.compile_repeated_blocks()
    return f"compile: torch.compile of each of the {len(transformer.blocks)} {wrapper}s (regional)"


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))
