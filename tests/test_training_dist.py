"""Many processes: the stage-2 step under accelerate DDP (2 CPU processes, gloo) gives the loss and the gradients
of one process with the doubled batch, and the accelerate config files parse to the intended setups.

What the equivalence test covers: `accelerate.Accelerator` wrapping a tiny DirectAnimatorTransformer with a LoRA
(DDP over gloo), the S2X capture through the DDP wrapper with gradient checkpointing on, a frozen teacher kept
outside `prepare`, and the stage-2 loss (denoising MSE + lambda * S2X). It does not run the trainer's data loading.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tests.tiny import tiny_animator, tiny_cue_latents, tiny_inputs
from training.s2x import S2XTeacher, capture_block_output, s2x_loss

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
BATCH = 4  # the doubled batch; each of 2 processes takes half
DEPTH = 1
LAMBDA = 0.5
# DDP averages the two half-batch gradients; one process averages over the whole batch: the same sum in another
# order, so float32 rounding is all that differs.
TOLERANCE = dict(rtol=1e-4, atol=1e-6)


def _student_and_teacher():
    from peft import LoraConfig

    student = tiny_animator(seed=0, randomize_cues=True, num_layers=3)
    student.requires_grad_(False)
    student.backbone.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    for name, param in student.named_parameters():
        param.requires_grad_("lora_" in name or ".fusion." in name)
    teacher = S2XTeacher(tiny_animator(seed=0, randomize_cues=True, num_layers=3), depth=DEPTH)
    return student, teacher


def _batch():
    inputs = tiny_inputs(batch=BATCH, seed=3)
    inputs["timestep"] = torch.tensor([100, 300, 600, 900])
    target = torch.randn(BATCH, 4, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    return inputs, tiny_cue_latents(batch=BATCH, seed=5), tiny_cue_latents(batch=BATCH, seed=6), target


def _rows(value, rows: slice):
    if isinstance(value, torch.Tensor):
        return value[rows]
    return type(value)(**{k: getattr(value, k)[rows] for k in ("pose", "face", "body_mask", "face_mask")})


def _stage2_loss(model, teacher, inputs, pseudo_cues, same_cues, target):
    with capture_block_output(model, DEPTH) as tokens:
        prediction = model(**inputs, cues=pseudo_cues)
        student_tokens = tokens()
    teacher_tokens = teacher.features(**inputs, cues=same_cues)
    return torch.nn.functional.mse_loss(prediction, target) + LAMBDA * s2x_loss(student_tokens, teacher_tokens)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == world and accelerator.distributed_type.value == "MULTI_CPU"
    student, teacher = _student_and_teacher()
    student.backbone.enable_gradient_checkpointing()
    model = accelerator.prepare(student)
    inputs, pseudo, same, target = _batch()
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    loss = _stage2_loss(model, teacher, {k: _rows(v, rows) for k, v in inputs.items()}, _rows(pseudo, rows),
                        _rows(same, rows), target[rows])
    accelerator.backward(loss)
    mean_loss = accelerator.reduce(loss.detach().reshape(1), reduction="mean")
    if accelerator.is_main_process:
        save_file({"loss": mean_loss.cpu(), **{f"grad.{k}": v for k, v in _grads(accelerator.unwrap_model(model)).items()}},
                  out)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_step_equals_one_process_with_the_doubled_batch(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "ddp.safetensors"
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    ddp = load_file(str(out))

    student, teacher = _student_and_teacher()
    inputs, pseudo, same, target = _batch()
    loss = _stage2_loss(student, teacher, inputs, pseudo, same, target)
    loss.backward()
    single = _grads(student)

    torch.testing.assert_close(ddp["loss"], loss.detach().reshape(1), **TOLERANCE)
    assert {f"grad.{k}" for k in single} == {k for k in ddp if k.startswith("grad.")}
    assert any("lora_B" in k for k in single) and any(".fusion." in k for k in single)
    for name, grad in single.items():
        torch.testing.assert_close(ddp[f"grad.{name}"], grad, **TOLERANCE, msg=name)


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed", "DEEPSPEED")])
def test_accelerate_config_files_parse_to_their_setup(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils.dataclasses import get_module_class_from_name

    config = load_config_from_file(str(CONFIGS / f"accelerate_{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
    assert config.num_processes >= 2 and not config.use_cpu
    if kind == "FSDP":
        wrap = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
        assert get_module_class_from_name(tiny_animator(), wrap) is not None  # the wrap unit exists in the model
        assert config.fsdp_config["fsdp_activation_checkpointing"] is False
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] in (1, 2, 3)


def test_the_cpu_fsdp_recipe_is_the_gpu_recipe_on_gloo():
    """accelerate_fsdp_cpu.yaml differs from accelerate_fsdp.yaml only where CPUs need it (no bf16, no GPU ids)."""
    from accelerate.commands.config.config_args import load_config_from_file

    gpu = load_config_from_file(str(CONFIGS / "accelerate_fsdp.yaml"))
    cpu = load_config_from_file(str(CONFIGS / "accelerate_fsdp_cpu.yaml"))
    assert cpu.distributed_type.value == "FSDP" and cpu.mixed_precision == "no" and cpu.num_processes == 2
    assert not cpu.use_cpu  # with use_cpu, `accelerate launch` would start one process, not num_processes
    assert cpu.fsdp_config == gpu.fsdp_config
    assert gpu.fsdp_config["fsdp_version"] == 2 and gpu.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"


@pytest.mark.parametrize("layout, own", [("1.0", "CueFusionBlock"), ("wan-ti2v", "WanCueFusionBlock")])
def test_an_fsdp_config_naming_either_block_wrapper_wraps_the_models_own(layout, own):
    """One accelerate FSDP yaml (naming CueFusionBlock) serves both families: the trainer points it at the model's
    wrapper class before accelerate builds its wrap policy; unrelated class names are kept."""
    from types import SimpleNamespace

    from training.distributed import fit_wrap_class

    model = tiny_animator(layout)
    for configured in (["CueFusionBlock"], ["WanCueFusionBlock", "Other"]):
        plugin = SimpleNamespace(transformer_cls_names_to_wrap=list(configured))
        accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
        fit_wrap_class(accelerator, model)
        assert plugin.transformer_cls_names_to_wrap[0] == own
        assert plugin.transformer_cls_names_to_wrap[1:] == configured[1:]
        assert type(model.blocks[0]).__name__ == own
    plain = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace(transformer_cls_names_to_wrap=["X"])))
    fit_wrap_class(plain, model)  # a config naming neither wrapper is left alone
    assert plain.state.fsdp_plugin.transformer_cls_names_to_wrap == ["X"]
