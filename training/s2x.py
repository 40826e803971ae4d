"""Same2X alignment (DESIGN.md 7): the frozen same-identity teacher's vision tokens after block ``D`` and the
negative mean cosine similarity that pulls the cross-identity student's tokens towards them.

Block indices are 0-based: ``depth = D`` means the vision tokens leaving block ``D``, so the teacher runs the
``D + 1`` blocks ``0..D`` and stops. The blocks are the model's wrapped blocks (`DirectAnimatorTransformer.blocks`),
and the family reads the vision tokens from a block's output (CogVideoX blocks return ``(vision, text)``, Wan blocks
the vision tokens alone), so the same code serves both backbone families.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from directanimator.errors import DirectAnimatorError, InputError
from directanimator.models import CueLatents, DirectAnimatorTransformer

__all__ = ["S2XTeacher", "capture_block_output", "s2x_loss"]


class _StopAfterBlock(Exception):
    """Raised from the hook on block ``D`` to end the teacher pass early; carries the vision tokens."""

    def __init__(self, tokens: Tensor) -> None:
        super().__init__("teacher pass stopped after the S2X block")
        self.tokens = tokens


# Set on a DirectAnimatorTransformer while an S2X teacher pass runs through it (the LoRA-disabled student case),
# so that a `capture_block_output` on the same module ignores the teacher's blocks.
_TEACHER_PASS_ATTR = "_s2x_teacher_pass"


def _check_depth(model: DirectAnimatorTransformer, depth: int, name: str) -> int:
    if not isinstance(model, DirectAnimatorTransformer):
        raise InputError(f"{name}: expected a DirectAnimatorTransformer, got {type(model).__name__}.")
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth < model.num_layers:
        raise InputError(
            f"depth: {depth!r}, but the model has {model.num_layers} blocks; give a 0-based block index in "
            f"0..{model.num_layers - 1} (the S2X loss compares the vision tokens leaving that block)."
        )
    return depth


def _has_adapters(model: DirectAnimatorTransformer) -> bool:
    return bool(getattr(model.backbone, "_hf_peft_config_loaded", False))


@contextlib.contextmanager
def _adapters_disabled(model: DirectAnimatorTransformer) -> Iterator[None]:
    """Run the backbone without its LoRA adapters, restoring each layer's state and every ``requires_grad``.

    peft's ``enable_adapters`` switches ``requires_grad`` of the adapter weights, which must not change under a
    student graph that is waiting for its backward, so the flags are saved and put back exactly.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.backbone.modules() if isinstance(m, BaseTunerLayer)]
    was_disabled = [bool(m.disable_adapters) for m in layers]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.enable_adapters(not disabled)
        for param, flag in flags:
            param.requires_grad_(flag)


class S2XTeacher:
    """The same-identity teacher of stage 2: vision tokens after block `depth`, blocks ``0..depth`` only, no grad.

    Either a separate frozen stage-1 model (`teacher`; its parameters are frozen here), or, with `teacher` None,
    the `student` itself with its LoRA adapters disabled during the teacher pass: the stage-1 backbone plus the
    student's current CueFusion modules, which equals the stage-1 model when stage 2 trains the adapters only.
    The teacher stays outside any DDP/FSDP/DeepSpeed wrapper: it is never trained and needs no gradient sync.
    """

    def __init__(self, teacher: DirectAnimatorTransformer | None, *, depth: int,
                 student: DirectAnimatorTransformer | None = None) -> None:
        if teacher is None:
            if student is None:
                raise InputError("teacher: None and no student given; pass the frozen stage-1 model, or the student "
                                 "whose LoRA-disabled weights are the teacher.")
            if not _has_adapters(_unwrap(student)):
                raise InputError(
                    "student: has no LoRA adapters, so with them disabled it is the student itself, not a teacher. "
                    "Pass the frozen stage-1 model as `teacher`, or add the stage-2 LoRA before building the teacher."
                )
            self.model = _unwrap(student)
            self.uses_student = True
        else:
            self.model = _unwrap(teacher)
            self.uses_student = False
            self.model.requires_grad_(False)
            self.model.eval()
        self.depth = _check_depth(self.model, depth, "teacher" if teacher is not None else "student")

    def features(self, hidden_states: Tensor, encoder_hidden_states: Tensor, timestep: Tensor | int | float, *,
                 cues: CueLatents | None, **forward_kwargs) -> Tensor:
        """Vision tokens ``[B, N, D]`` after block `depth` for the same-identity `cues`; `forward_kwargs` (``ofs``,
        ``cue_weight``, ...) go to the model's forward."""
        model = self.model
        block = model.blocks[self.depth]

        def stop(_module: nn.Module, _args, output) -> None:
            raise _StopAfterBlock(model.family.block_tokens(output))

        handle = block.register_forward_hook(stop)
        adapters = _adapters_disabled(model) if self.uses_student else contextlib.nullcontext()
        setattr(model, _TEACHER_PASS_ATTR, True)
        try:
            with torch.no_grad(), adapters:
                model(hidden_states, encoder_hidden_states, timestep, cues=cues, **forward_kwargs)
        except _StopAfterBlock as done:
            return done.tokens
        finally:
            handle.remove()
            setattr(model, _TEACHER_PASS_ATTR, False)
        raise DirectAnimatorError(  # the hook always fires unless the backbone skipped its blocks
            f"teacher: block {self.depth} was never called during the forward; the backbone's block list was changed."
        )


def _unwrap(model: nn.Module) -> DirectAnimatorTransformer:
    """The DirectAnimatorTransformer inside DDP/FSDP/DeepSpeed wrappers (``.module``)."""
    while not isinstance(model, DirectAnimatorTransformer) and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    if not isinstance(model, DirectAnimatorTransformer):
        raise InputError(f"model: expected a DirectAnimatorTransformer (or a wrapper of one), got {type(model).__name__}.")
    return model


@contextlib.contextmanager
def capture_block_output(model: nn.Module, depth: int) -> Iterator[Callable[[], Tensor]]:
    """Within the context, ``get()`` returns the vision tokens ``[B, N, D]`` leaving block `depth` in the model's
    latest forward, with their autograd graph.

    Only the first call of the block per model forward is kept, so the re-run of the block by (non-reentrant)
    gradient checkpointing during backward neither replaces nor doubles the captured tensor; an S2X teacher pass
    through the same module is ignored. Reentrant checkpointing runs blocks without autograd and is refused.
    """
    module = _unwrap(model)
    depth = _check_depth(module, depth, "model")
    block = module.blocks[depth]
    state: dict = {"forward": 0, "taken": -1, "tokens": None, "grad_at_start": False}

    def start(_module: nn.Module, _args, _kwargs) -> None:
        if not getattr(module, _TEACHER_PASS_ATTR, False):
            state["forward"] += 1
            state["grad_at_start"] = torch.is_grad_enabled()

    def take(_module: nn.Module, _args, output) -> None:
        if getattr(module, _TEACHER_PASS_ATTR, False) or state["taken"] == state["forward"]:
            return
        if state["grad_at_start"] and not torch.is_grad_enabled():
            raise DirectAnimatorError(
                "capture_block_output: the block ran without autograd inside a forward with autograd, i.e. under "
                "reentrant gradient checkpointing, where the captured tokens would carry no gradient. Enable "
                "checkpointing with diffusers' default (`backbone.enable_gradient_checkpointing()`, non-reentrant)."
            )
        state["taken"] = state["forward"]
        state["tokens"] = module.family.block_tokens(output)

    def get() -> Tensor:
        if state["tokens"] is None or state["taken"] != state["forward"]:
            raise DirectAnimatorError(
                f"capture_block_output: no tokens from block {depth} in the latest forward; call the model inside the "
                "context before reading the captured tokens."
            )
        return state["tokens"]

    handles = [module.register_forward_pre_hook(start, with_kwargs=True), block.register_forward_hook(take)]
    try:
        yield get
    finally:
        for handle in handles:
            handle.remove()
        state["tokens"] = None


def s2x_loss(student_tokens: Tensor, teacher_tokens: Tensor) -> Tensor:
    """Negative mean cosine similarity over tokens (and batch) of ``[B, N, D]`` tokens; -1 when aligned.

    The teacher tokens are treated as constants (detached).
    """
    if student_tokens.shape != teacher_tokens.shape or student_tokens.ndim != 3:
        raise InputError(
            f"s2x_loss: student tokens {tuple(student_tokens.shape)} and teacher tokens "
            f"{tuple(teacher_tokens.shape)}; expected the same [B, N, D] shape (same latents, same S2X block)."
        )
    teacher = teacher_tokens.detach().to(student_tokens.dtype)
    # In fp32: bf16 cosine of wide vectors loses the small differences the loss is about.
    cos = F.cosine_similarity(student_tokens.float(), teacher.float(), dim=-1, eps=1e-8)
    return -cos.mean()
