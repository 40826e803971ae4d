"""The memory options (directanimator.models.memory) wired into load_model and AnimatorModel: each option loads,
is recorded with what it did, gives exactly what applying it to the loaded model by hand gives, and block offload
is left to diffusers' hooks by every move AnimatorModel makes."""

from __future__ import annotations

import pytest
import torch

from directanimator.errors import InputError
from directanimator.models import (
    MemoryOptions,
    applied_options,
    apply_memory_options,
    load_model,
    save_checkpoint,
)
from directanimator.models.memory import FP8_STORAGE_DTYPE, execution_device, hooks_place_weights
from tests.test_loader_wan import save_tiny_wan_folder
from tests.tiny import (
    save_tiny_diffusers,
    tiny_animator,
    tiny_cue_latents,
    tiny_inputs,
    tiny_wan_inputs,
)

# fp8 e4m3 rounding of the weights, as in tests/test_memory_options.py (measured there: 0.3 to 0.5 % relative L2)
FP8_RELATIVE_L2 = 0.02


@pytest.fixture(scope="module")
def cogvideox(tmp_path_factory):
    """A tiny CogVideoX 1.0 folder and a checkpoint with trained-like cue modules and a LoRA."""
    from peft import LoraConfig

    root = tmp_path_factory.mktemp("memory")
    folder = save_tiny_diffusers(root / "cogvideox", "1.0", seed=0)
    model = tiny_animator("1.0", seed=0, randomize_cues=True)
    model.backbone.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name:  # peft starts B at zero; make the adapter do something
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return folder, save_checkpoint(root / "lora.safetensors", model)


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A tiny Wan2.1 I2V folder and a checkpoint with trained-like cue modules."""
    root = tmp_path_factory.mktemp("memory")
    model = tiny_animator("wan-i2v", seed=0, randomize_cues=True)
    return save_tiny_wan_folder(root / "wan"), save_checkpoint(root / "wan.safetensors", model)


def _run(transformer, layout: str) -> torch.Tensor:
    if layout.startswith("wan"):
        inputs, frames, channels = tiny_wan_inputs(layout), 3, 16
    else:
        inputs, frames, channels = tiny_inputs(layout), None, 16
    dtype = transformer.dtype
    inputs = {k: v.to(dtype) if k != "timestep" else v for k, v in inputs.items()}
    cues = tiny_cue_latents(frames=frames or inputs["hidden_states"].shape[1], channels=channels)
    with torch.no_grad():
        return transformer(**inputs, cues=cues)


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


OPTIONS = [
    MemoryOptions(),
    MemoryOptions(storage="fp8"),
    MemoryOptions(offload="model"),
    MemoryOptions(offload="blocks"),
    MemoryOptions(storage="fp8", offload="blocks", blocks_on_gpu=2, stream=False),
    MemoryOptions(compile=True),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.to_dict().values()))
def test_load_model_applies_the_options_as_the_library_does_and_records_them(cogvideox, options):
    folder, checkpoint = cogvideox
    loaded = load_model(folder, checkpoint, dtype="bf16", memory=options)
    by_hand = load_model(folder, checkpoint, dtype="bf16")
    notes = apply_memory_options(by_hand.transformer, options, device="cpu")
    assert applied_options(loaded.transformer) == options
    assert loaded.info["memory"] == options.to_dict()
    assert loaded.info["memory_notes"] == notes and notes
    assert loaded.offload == (options.offload == "model")
    assert hooks_place_weights(loaded.transformer) == (options.offload == "blocks")
    if not options.compile:  # compiled forwards: tests/test_memory_options.py (slow)
        plain = _run(load_model(folder, checkpoint, dtype="bf16").transformer, "1.0")
        out = _run(loaded.transformer, "1.0")
        assert torch.equal(out, _run(by_hand.transformer, "1.0"))
        if options.storage == "fp8":  # the LoRA and cue modules stay in bf16; the output within fp8 rounding
            assert 0 < _relative_l2(out, plain) < FP8_RELATIVE_L2
            assert all(p.dtype == torch.bfloat16 for n, p in loaded.transformer.named_parameters() if "lora_" in n)
            assert loaded.transformer.blocks[0].block.attn1.to_q.base_layer.weight.dtype == FP8_STORAGE_DTYPE
        else:
            assert torch.equal(out, plain)


def test_a_bf16_wan_folder_loads_with_fp8_storage_and_block_offload(wan):
    folder, checkpoint = wan
    options = MemoryOptions(storage="fp8", offload="blocks", blocks_on_gpu=2)
    loaded = load_model(folder, checkpoint, dtype="bf16", memory=options)
    by_hand = load_model(folder, checkpoint, dtype="bf16")
    plain = _run(by_hand.transformer, "wan-i2v")
    apply_memory_options(by_hand.transformer, options, device="cpu")
    out = _run(loaded.transformer, "wan-i2v")
    assert torch.equal(out, _run(by_hand.transformer, "wan-i2v"))
    assert 0 < _relative_l2(out, plain) < FP8_RELATIVE_L2
    assert loaded.transformer.backbone.rope.freqs_cos.dtype == torch.float32  # kept in fp32, not stored in fp8
    assert any("fp8 e4m3" in note for note in loaded.info["memory_notes"])
    assert any("blocks in 1 groups of 2" in note for note in loaded.info["memory_notes"])


def test_offload_true_is_recorded_as_model_offload(cogvideox):
    folder, _ = cogvideox
    model = load_model(folder, dtype="fp32", offload=True)
    assert model.offload and model.info["memory"]["offload"] == "model" and model.info["memory_notes"] == []
    assert applied_options(model.transformer) is None  # no memory= given: nothing applied, as before
    model = load_model(folder, dtype="fp32", memory=MemoryOptions(offload="model"))
    assert model.offload and {p.device.type for p in model.transformer.parameters()} == {"cpu"}


@pytest.mark.parametrize("options, fragment", [
    (MemoryOptions(storage="int8"), "storage='int8'"),
    (MemoryOptions(offload="blocks", blocks_on_gpu=0), "blocks_on_gpu=0"),
    (MemoryOptions(stream=True), "stream=True.*offload='blocks'"),
    (MemoryOptions(offload="blocks", stream=True), "stream=True.*CUDA"),  # a CPU-only device
    (MemoryOptions(attention="sdpa"), "attention='sdpa'"),
])
def test_bad_options_are_refused_before_anything_loads(tmp_path, options, fragment):
    """The backbone path does not exist: the options are refused before it is looked at."""
    with pytest.raises(InputError, match=fragment):
        load_model(tmp_path / "not-there", tmp_path / "not-there.safetensors", dtype="bf16", device="cpu",
                   memory=options)


def test_an_attention_backend_for_cuda_is_refused_on_the_cpu_before_anything_loads(tmp_path, monkeypatch):
    import directanimator.models.memory as memory

    monkeypatch.setattr(memory, "check_attention_backend", lambda name: None)  # as if flash-attn were installed
    with pytest.raises(InputError, match="attention='flash'.*CUDA GPUs only.*native"):
        load_model(tmp_path / "not-there", dtype="bf16", device="cpu", memory=MemoryOptions(attention="flash"))


def _moves(module, calls: list, name: str):
    original = module.to

    def to(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    module.to = to


def test_animator_model_never_moves_a_block_offloaded_transformer(cogvideox):
    """to / offload_to_cpu / use move the VAE but leave the transformer to diffusers' hooks (moving it would put
    every block on the GPU at once, or strand its cue modules on the CPU)."""
    folder, checkpoint = cogvideox
    model = load_model(folder, checkpoint, dtype="fp32", offload=True, memory=MemoryOptions(offload="blocks"))
    assert model.offload and hooks_place_weights(model.transformer)
    calls: list[str] = []
    _moves(model.transformer, calls, "transformer")
    _moves(model.vae, calls, "vae")
    with model.use("transformer") as transformer:
        out = _run(transformer, "1.0")
    with model.use("vae"):
        pass
    model.offload_to_cpu()
    model.onload()
    model.to("cpu")
    assert calls == ["vae", "vae", "vae", "vae", "vae"]  # use("vae") twice, offload_to_cpu, onload, to
    assert hooks_place_weights(model.transformer)
    assert torch.equal(_run(model.transformer, "1.0"), out)


def test_without_hooks_animator_model_moves_the_transformer_as_before(cogvideox):
    folder, _ = cogvideox
    model = load_model(folder, dtype="fp32", offload=True)
    calls: list[str] = []
    _moves(model.transformer, calls, "transformer")
    with model.use("transformer"):
        pass
    assert calls == ["transformer", "transformer"]


def test_the_transformer_device_is_the_onload_device_under_block_offload():
    """Sampling reads transformer.device: under block offload it is where the blocks compute, not where the first
    weight waits (the CPU). The hooks' onload device is set to "meta" afterwards, standing in for a GPU."""
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    model = tiny_animator("1.0")
    apply_memory_options(model, MemoryOptions(offload="blocks"), device="cpu")
    model.backbone._diffusers_hook.get_hook(_GROUP_OFFLOADING).config.onload_device = torch.device("meta")
    assert next(model.backbone.parameters()).device.type == "cpu"
    assert model.device == execution_device(model) == torch.device("meta")
    assert tiny_animator("1.0").device == torch.device("cpu")


def test_place_false_leaves_the_networks_on_the_cpu_with_the_execution_device_set(cogvideox, monkeypatch):
    import directanimator.models.loader as loader

    folder, _ = cogvideox
    monkeypatch.setattr(loader, "usable_device", lambda device, name: torch.device("meta"))  # a GPU stand-in
    model = load_model(folder, dtype="fp32", device="meta", place=False)
    assert model.device == torch.device("meta") and not model.offload
    assert {p.device.type for p in [*model.transformer.parameters(), *model.vae.parameters()]} == {"cpu"}
