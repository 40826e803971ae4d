"""Frozen weights in training (model.frozen_storage / frozen_offload): an fp8-stored frozen backbone tracks the bf16
run's loss, block offload of the frozen block weights changes nothing but where they live, the stage-2 copy
teacher takes the same options, and the options are refused where they cannot work."""

from __future__ import annotations

import pytest
import torch

from directanimator.errors import InputError
from tests.tiny import tiny_animator, tiny_cue_latents, tiny_inputs
from tests.training_world import CONFIG, make_world, overrides
from training.config import load_config
from training.frozen import FrozenBlockOffload, check_frozen_launch, place_frozen, place_teacher
from training.prepare import prepare
from training.s2x import S2XTeacher
from training.stage1 import train_stage1
from training.trainer import read_metrics, setup_trainable

FP8 = torch.float8_e4m3fn
# Per-step loss of the fp8-frozen run against the bf16 one, relative (measured on this world: 0.16 % at most over
# 20 steps; fp8 e4m3 rounds each frozen weight by up to 6 %, which averages out over a layer's sum)
FP8_LOSS_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("frozen")
    data, model = make_world(root)
    prepare(load_config(CONFIG, overrides(root, data, model)))
    yield root, data, model
    torch.set_num_threads(threads)


def _losses(world, name: str, *extra: str) -> list[float]:
    root, data, model = world
    config = load_config(CONFIG, overrides(root, data, model, f"run.name='{name}'", "run.steps=8",
                                           "run.save_every=100", "model.dtype='bf16'", "run.mixed_precision='bf16'",
                                           "model.train='lora'", *extra))
    train_stage1(config)
    return [record["loss"] for record in read_metrics(config.run_dir) if "loss" in record]


@pytest.mark.slow
def test_fp8_frozen_backbone_tracks_bf16_loss_and_offload_changes_nothing(world, fresh_precision):
    plain = _losses(world, "bf16")
    fp8 = _losses(world, "fp8", "model.frozen_storage='fp8'")
    both = _losses(world, "fp8_offload", "model.frozen_storage='fp8'", "model.frozen_offload='blocks'",
                   "model.gradient_checkpointing=true")
    assert len(plain) == len(fp8) == 8
    worst = max(abs(a - b) / b for a, b in zip(fp8, plain))
    assert worst < FP8_LOSS_TOLERANCE, (plain, fp8)
    assert fp8 != plain  # the weights were rounded: not the same run under another name
    assert both == fp8  # moving the frozen weights between devices is exact


def _student(train: str = "lora"):
    from peft import LoraConfig

    model = tiny_animator("1.0", seed=0, randomize_cues=True, num_layers=3)
    if train == "lora":
        model.backbone.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    return model


def _config(*extra: str):
    return load_config(CONFIG, [*extra], check_paths=False)


def test_fp8_storage_keeps_trained_tensors_and_cue_modules_in_their_dtype():
    model = _student()
    setup_trainable(model, _config("model.train='lora'"))
    notes = place_frozen(model, torch.device("cpu"), storage="fp8", compute="fp32")
    assert "fp8" in notes[0]
    stored = {name for name, p in model.named_parameters() if p.dtype == FP8}
    assert any(".attn1.to_q.base_layer.weight" in name for name in stored)
    for name, p in model.named_parameters():
        if p.requires_grad:  # LoRA and CueFusion: trained, fp32
            assert p.dtype == torch.float32, name
        if ".fusion." in name or "lora_" in name or "norm" in name:
            assert name not in stored, name
    # DDP is told to leave every frozen tensor alone (fp8 ones cannot be broadcast everywhere)
    ignored = set(model._ddp_params_and_buffers_to_ignore)
    assert ignored == {name for name, p in model.named_parameters() if not p.requires_grad}


def test_block_offload_moves_frozen_block_weights_only_for_the_block_forward():
    model = _student()
    setup_trainable(model, _config("model.train='lora'", "model.gradient_checkpointing=true"))
    reference = _student()
    setup_trainable(reference, _config("model.train='lora'", "model.gradient_checkpointing=true"))
    offloader = FrozenBlockOffload(model, torch.device("cpu"))
    block, params, stored = offloader.blocks[1]
    assert params and all(not p.requires_grad for p in params)
    trained = [p for p in block.parameters() if p.requires_grad]
    assert trained and all(id(p) not in offloader.parameter_ids for p in trained)  # LoRA, CueFusion: not moved
    seen = {}

    def probe(_module, _args):  # runs after the onload hook (registered later)
        seen["during"] = all(p.data.data_ptr() != cpu.data_ptr() for p, cpu in zip(params, stored))

    block.register_forward_pre_hook(probe)
    inputs = dict(**tiny_inputs("1.0", batch=1, frames=4), cues=tiny_cue_latents(batch=1, frames=4))
    out = model(**inputs)
    out.float().pow(2).mean().backward()
    expected = reference(**inputs)
    expected.float().pow(2).mean().backward()
    assert seen["during"]  # the block computed with a moved copy ...
    assert all(p.data.data_ptr() == cpu.data_ptr() for p, cpu in zip(params, stored))  # ... and put it back after
    # the backward's recomputations stop before a block returns: only the last one recomputed (block 0) is still
    # on the device, and the next forward's first block takes its place
    assert offloader.onloaded == 0
    for index, (_, params_i, stored_i) in enumerate(offloader.blocks):
        onloaded = any(p.data.data_ptr() != cpu.data_ptr() for p, cpu in zip(params_i, stored_i))
        assert onloaded == (index == 0), index
    assert torch.equal(out, expected)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, p in reference.named_parameters():
        if p.requires_grad:
            assert torch.equal(grads[name], p.grad), name


def test_copy_teacher_with_fp8_and_block_offload_matches_plain_teacher_twice():
    depth = 1
    inputs = dict(**tiny_inputs("1.0", batch=1, frames=4), cues=tiny_cue_latents(batch=1, frames=4))
    plain = S2XTeacher(tiny_animator("1.0", seed=0, randomize_cues=True, num_layers=3), depth=depth)
    offloaded_model = tiny_animator("1.0", seed=0, randomize_cues=True, num_layers=3)
    notes = place_teacher(offloaded_model, torch.device("cpu"), offload="blocks")
    assert any("offload" in note for note in notes)
    offloaded = S2XTeacher(offloaded_model, depth=depth)
    fp8_model = tiny_animator("1.0", seed=0, randomize_cues=True, num_layers=3)
    place_teacher(fp8_model, torch.device("cpu"), storage="fp8", offload="blocks")
    fp8 = S2XTeacher(fp8_model, depth=depth)
    expected = plain.features(**inputs)
    for _ in range(2):  # the early exit after the S2X block leaves the offload hooks ready for the next pass
        assert torch.equal(offloaded.features(**inputs), expected)
        rounded = fp8.features(**inputs)
        error = (rounded - expected).norm() / expected.norm()
        assert 0 < error < 0.05, float(error)


@pytest.mark.parametrize("extra, message", [
    (["model.frozen_storage='fp4'"], "model.frozen_storage='fp4'"),
    (["model.frozen_offload='model'"], "model.frozen_offload='model'"),
    (["model.train='full'", "model.frozen_storage='fp8'"], "model.train='full'"),
    (["model.frozen_offload='blocks'", "model.gradient_checkpointing=false"], "gradient_checkpointing=true"),
])
def test_frozen_options_refused_where_they_cannot_work(extra, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        _config(*extra)


def test_frozen_options_refused_under_fsdp_and_deepspeed():
    check_frozen_launch("dtype", "none", sharded=True, deepspeed=False)  # the defaults run anywhere
    with pytest.raises(InputError, match="FSDP"):
        check_frozen_launch("fp8", "none", sharded=True, deepspeed=False)
    with pytest.raises(InputError, match="DeepSpeed"):
        check_frozen_launch("dtype", "blocks", sharded=False, deepspeed=True)
