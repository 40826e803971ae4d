"""Same2X alignment: the teacher's early exit, its frozen weights, the LoRA-disabled student as teacher, capturing
the student's block output under gradient checkpointing, and the S2X loss itself."""

from __future__ import annotations

import copy

import pytest
import torch

from directanimator.errors import DirectAnimatorError, InputError
from tests.tiny import LAYOUTS, tiny_animator, tiny_cue_latents, tiny_inputs
from training.s2x import S2XTeacher, capture_block_output, s2x_loss

LAYERS = 4


def _model(layout: str = "1.0", seed: int = 0):
    return tiny_animator(layout, seed=seed, randomize_cues=True, num_layers=LAYERS)


def _inputs(layout: str = "1.0", batch: int = 2, seed: int = 0) -> dict:
    frames = 4
    return dict(**tiny_inputs(layout, batch=batch, frames=frames, seed=seed),
                cues=tiny_cue_latents(batch=batch, frames=frames, seed=seed + 1))


def _plain_block_output(model, depth: int, inputs: dict) -> torch.Tensor:
    out = {}
    block = model.backbone.transformer_blocks[depth]
    handle = block.register_forward_hook(lambda _m, _a, o: out.setdefault("tokens", o[0]))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return out["tokens"]


def _count_block_calls(model) -> tuple[list[int], list]:
    calls = [0] * model.num_layers
    handles = []
    for i, block in enumerate(model.backbone.transformer_blocks):
        def count(_m, _a, i=i):
            calls[i] += 1
        handles.append(block.register_forward_pre_hook(count))
    return calls, handles


def _add_random_lora(model, seed: int = 5) -> None:
    from peft import LoraConfig

    model.backbone.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name:  # zero at creation: make the adapters change the output
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("depth", [0, 2])
def test_teacher_features_equal_the_block_output_of_a_full_forward(layout, depth):
    model = _model(layout)
    inputs = _inputs(layout)
    expected = _plain_block_output(model, depth, inputs)
    got = S2XTeacher(model, depth=depth).features(**inputs)
    assert got.shape == (2, expected.shape[1], model.inner_dim)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_teacher_runs_blocks_zero_to_depth_only():
    model = _model()
    calls, handles = _count_block_calls(model)
    S2XTeacher(model, depth=1).features(**_inputs())
    for handle in handles:
        handle.remove()
    assert calls == [1, 1, 0, 0]


def test_teacher_is_frozen_and_gives_no_gradients():
    teacher_model = _model()
    teacher = S2XTeacher(teacher_model, depth=1)
    assert not any(p.requires_grad for p in teacher_model.parameters())
    inputs = _inputs()
    inputs["hidden_states"].requires_grad_(True)
    tokens = teacher.features(**inputs)
    assert not tokens.requires_grad and tokens.grad_fn is None
    # The hook is gone: a later full forward runs every block and returns the full prediction.
    calls, handles = _count_block_calls(teacher_model)
    with torch.no_grad():
        out = teacher_model(**_inputs())
    assert calls == [1] * LAYERS and out.ndim == 5


def test_lora_disabled_student_as_teacher_equals_the_base_model():
    base = _model()
    student = copy.deepcopy(base)
    _add_random_lora(student)
    trainable_before = {n: p.requires_grad for n, p in student.named_parameters()}
    inputs = _inputs()
    from_student = S2XTeacher(None, depth=2, student=student).features(**inputs)
    from_base = S2XTeacher(copy.deepcopy(base), depth=2).features(**inputs)
    torch.testing.assert_close(from_student, from_base, rtol=1e-6, atol=1e-6)
    # The adapters are on again afterwards, and no requires_grad flag changed.
    with_lora = _plain_block_output(student, 2, inputs)
    assert (with_lora - from_base).abs().max() > 1e-3
    assert {n: p.requires_grad for n, p in student.named_parameters()} == trainable_before


def test_student_without_adapters_cannot_be_its_own_teacher():
    with pytest.raises(InputError, match="no LoRA adapters"):
        S2XTeacher(None, depth=0, student=_model())
    with pytest.raises(InputError, match="depth"):
        S2XTeacher(_model(), depth=LAYERS)


def _student_step(model, inputs: dict, target: torch.Tensor, depth: int) -> tuple[torch.Tensor, dict]:
    """One stage-2-like backward: denoising-like term + S2X on the captured tokens; returns tokens and grads."""
    model.zero_grad(set_to_none=True)
    with capture_block_output(model, depth) as tokens:
        out = model(**inputs)
        captured = tokens()
        loss = out.square().mean() + s2x_loss(captured, target)
        loss.backward()
        assert tokens() is captured  # backward recomputation did not replace it
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return captured.detach(), grads


@pytest.mark.parametrize("layout", LAYOUTS)
def test_capture_gives_the_same_tokens_and_gradients_with_and_without_checkpointing(layout):
    torch.manual_seed(0)
    model = _model(layout)
    inputs = _inputs(layout)
    target = S2XTeacher(copy.deepcopy(model), depth=1).features(**_inputs(layout, seed=3))
    tokens_plain, grads_plain = _student_step(model, inputs, target, depth=1)
    model.backbone.enable_gradient_checkpointing()
    calls, handles = _count_block_calls(model)
    tokens_ckpt, grads_ckpt = _student_step(model, inputs, target, depth=1)
    for handle in handles:
        handle.remove()
    assert calls == [2] * LAYERS  # the checkpointing really re-ran every block in backward
    torch.testing.assert_close(tokens_ckpt, tokens_plain, rtol=1e-6, atol=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) > 10
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_capture_ignores_a_teacher_pass_through_the_same_module():
    student = _model()
    _add_random_lora(student)
    teacher = S2XTeacher(None, depth=1, student=student)
    inputs = _inputs()
    with capture_block_output(student, 1) as tokens:
        student(**inputs)
        captured = tokens()
        teacher_tokens = teacher.features(**inputs)
        assert tokens() is captured
        assert captured.requires_grad and not teacher_tokens.requires_grad
        s2x_loss(captured, teacher_tokens).backward()
    assert any(p.grad is not None for n, p in student.named_parameters() if "lora_B" in n)


def test_capture_needs_a_forward_first():
    with capture_block_output(_model(), 0) as tokens, pytest.raises(DirectAnimatorError, match="no tokens"):
        tokens()


def test_s2x_loss_is_minus_one_for_identical_tokens_and_plus_one_for_opposite():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    assert s2x_loss(x, x).item() == pytest.approx(-1.0, abs=1e-6)
    assert s2x_loss(3.0 * x, x).item() == pytest.approx(-1.0, abs=1e-6)  # scale-free
    assert s2x_loss(-x, x).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(InputError, match="same"):
        s2x_loss(x, x[:, :4])


def test_s2x_loss_gradient_matches_the_analytic_cosine_gradient():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    s2x_loss(x, y).backward()
    xn, yn = x.detach().norm(dim=-1, keepdim=True), y.detach().norm(dim=-1, keepdim=True)
    cos = (x.detach() * y.detach()).sum(-1, keepdim=True) / (xn * yn)
    expected = -(y.detach() / (xn * yn) - cos * x.detach() / xn ** 2) / 6  # mean over B*N = 6 tokens
    torch.testing.assert_close(x.grad.float(), expected.float(), rtol=1e-5, atol=1e-6)
    assert y.grad is None  # the teacher side is a constant
