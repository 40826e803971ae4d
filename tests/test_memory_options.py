"""Memory and speed options (directanimator.models.memory) on tiny CogVideoX and Wan models with trained-like cue
modules: fp8 storage, block offload, the attention dispatcher, regional compile, and the option checks."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from diffusers.hooks.group_offloading import _GROUP_OFFLOADING
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import TimestepEmbedding

from directanimator.errors import InputError
from directanimator.models.attention import (
    DispatchCogVideoXAttnProcessor,
    dispatching_processors,
    install_dispatch_attention,
)
from directanimator.models.memory import (
    FP8_STORAGE_DTYPE,
    MemoryOptions,
    applied_options,
    apply_memory_options,
    describe,
    execution_device,
    hooks_place_weights,
)
from tests.tiny import (
    LATENT_CHANNELS,
    WAN_TI2V_CHANNELS,
    tiny_animator,
    tiny_cue_latents,
    tiny_inputs,
    tiny_wan_inputs,
)

ALL_LAYOUTS = ("1.0", "1.5", "wan-i2v", "wan-ti2v")
# fp8 e4m3 keeps 3 mantissa bits: each stored weight is within 2^-4 (6 %) of its bf16 value; over the dot products
# of a forward the output error averages down. Measured on these tiny models (bf16 compute, cues on): relative L2
# error 0.30 % (CogVideoX 1.0), 0.32 % (1.5), 0.54 % (Wan I2V), 0.35 % (Wan TI2V); largest element error 0.008 to
# 0.016 on outputs of magnitude about 2.3.
FP8_RELATIVE_L2 = 0.02
# fp32 compute, a different but equivalent kernel order (dispatcher layout, compiled graphs)
FLOAT_ERROR = 1e-5


def _inputs(layout: str, dtype: torch.dtype = torch.float32) -> tuple[dict, object]:
    if layout.startswith("wan"):
        inputs = tiny_wan_inputs(layout)
        channels = WAN_TI2V_CHANNELS if layout == "wan-ti2v" else LATENT_CHANNELS
    else:
        inputs = tiny_inputs(layout)
        channels = LATENT_CHANNELS
    inputs = {k: v.to(dtype) if k != "timestep" else v for k, v in inputs.items()}
    cues = tiny_cue_latents(frames=inputs["hidden_states"].shape[1], channels=channels)
    return inputs, cues


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(autouse=True)
def _keep_active_attention_backend():
    """set_attention_backend also sets diffusers' process-wide active backend: restore it after each test."""
    name, _ = _AttentionBackendRegistry.get_active_backend()
    yield
    _AttentionBackendRegistry.set_active_backend(name)


# --------------------------------------------------------------------------- fp8 storage
@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_fp8_storage_stays_within_fp8_rounding_of_the_bf16_run(layout):
    model = tiny_animator(layout, randomize_cues=True).to(torch.bfloat16)
    inputs, cues = _inputs(layout, torch.bfloat16)
    with torch.no_grad():
        bf16 = model(**inputs, cues=cues)
        bare = model(**inputs)
        notes = apply_memory_options(model, MemoryOptions(storage="fp8"), device="cpu")
        fp8 = model(**inputs, cues=cues)
    assert fp8.dtype == torch.bfloat16
    assert 0 < _relative_l2(fp8, bf16) < FP8_RELATIVE_L2
    assert _relative_l2(bare, bf16) > 10 * _relative_l2(fp8, bf16)  # the cues still steer the output
    assert any("fp8 e4m3" in note and "bf16 compute" in note for note in notes)


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_fp8_storage_equals_computing_with_fp8_rounded_weights(layout):
    """Layerwise casting is exactly bf16 compute on weights rounded to fp8, nothing else changes."""
    model = tiny_animator(layout, randomize_cues=True).to(torch.bfloat16)
    reference = tiny_animator(layout, randomize_cues=True).to(torch.bfloat16)
    inputs, cues = _inputs(layout, torch.bfloat16)
    apply_memory_options(model, MemoryOptions(storage="fp8"), device="cpu")
    stored = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if stored[name].dtype == FP8_STORAGE_DTYPE:
                param.copy_(param.to(FP8_STORAGE_DTYPE).to(torch.bfloat16))
        assert torch.equal(model(**inputs, cues=cues), reference(**inputs, cues=cues))


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_fp8_storage_keeps_norms_time_embedding_and_cue_modules_in_bf16(layout):
    model = tiny_animator(layout, randomize_cues=True).to(torch.bfloat16)
    apply_memory_options(model, MemoryOptions(storage="fp8"), device="cpu")
    for name, module in model.cue_modules():  # patch embeddings, shared_modulation, every block's CueFusion
        assert all(p.dtype == torch.bfloat16 for p in module.parameters()), name
    kept = [m for m in model.backbone.modules() if isinstance(m, TimestepEmbedding)]
    assert kept and all(p.dtype == torch.bfloat16 for m in kept for p in m.parameters())
    for name, param in model.backbone.named_parameters():
        if "norm" in name or "patch_embed" in name or name.startswith("proj_out"):
            assert param.dtype == torch.bfloat16, name
    for block in model.blocks:  # the bulk of a block is stored in fp8
        assert block.block.attn1.to_q.weight.dtype == FP8_STORAGE_DTYPE
        assert block.block.attn1.to_out[0].weight.dtype == FP8_STORAGE_DTYPE
    assert model.dtype == torch.bfloat16


# --------------------------------------------------------------------------- block offload
def _offload_groups(model) -> dict[str, object]:
    """Module name -> the diffusers offload group whose hook sits on it."""
    groups = {}
    for name, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
        if hook is not None:
            groups[name] = hook.group
    return groups


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_block_offload_leaves_outputs_bit_identical(layout):
    model = tiny_animator(layout, randomize_cues=True)
    inputs, cues = _inputs(layout)
    with torch.no_grad():
        plain = model(**inputs, cues=cues)
        bare = model(**inputs)
        notes = apply_memory_options(model, MemoryOptions(offload="blocks"), device="cpu")
        assert hooks_place_weights(model) and execution_device(model) == torch.device("cpu")
        assert torch.equal(model(**inputs, cues=cues), plain)
        assert torch.equal(model(**inputs, cues=cues), plain)  # and again, after a full offload/onload cycle
        assert torch.equal(model(**inputs), bare)
    assert any("each block's CueFusion moves with it" in note for note in notes)


@pytest.mark.parametrize("layout", ["1.0", "wan-i2v"])
@pytest.mark.parametrize("per_group", [1, 2])
def test_block_offload_groups_the_wrapped_blocks_with_their_cue_modules(layout, per_group):
    model = tiny_animator(layout, randomize_cues=True, num_layers=4)
    apply_memory_options(model, MemoryOptions(offload="blocks", blocks_on_gpu=per_group), device="cpu")
    groups = _offload_groups(model)
    list_name = "backbone.transformer_blocks" if layout == "1.0" else "backbone.blocks"
    for i, block in enumerate(model.blocks):
        group = groups[f"{list_name}.{i}"]
        assert group.modules == list(model.blocks[i - i % per_group: i - i % per_group + per_group])
        assert block.fusion in [m for member in group.modules for m in member.modules()]
    assert len({id(g) for g in groups.values()}) == 1 + len(model.blocks) // per_group  # + the backbone's own


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_block_offload_onloads_every_weight_before_it_is_used(layout):
    """Each module that computes finds its offload group onloaded: the wrapped blocks' CueFusion, the backbone's
    own modules, and Wan's time embedder, which the wrapper calls before the backbone's forward (the CPU cannot
    show a device mismatch, so the groups' state is tracked)."""
    model = tiny_animator(layout, randomize_cues=True)
    inputs, cues = _inputs(layout)
    apply_memory_options(model, MemoryOptions(offload="blocks"), device="cpu")
    groups = {id(g): g for g in _offload_groups(model).values()}
    onloaded: set[int] = set()
    for group in groups.values():
        def tracked(original, gid, on):
            def call():
                original()
                (onloaded.add if on else onloaded.discard)(gid)
            return call
        group.onload_ = tracked(group.onload_, id(group), True)
        group.offload_ = tracked(group.offload_, id(group), False)

    owner = {}  # every parameter of the backbone -> the group that moves it
    for group in groups.values():
        for member in group.modules:
            for param in member.parameters():
                owner[param] = id(group)
        for param in group.parameters:
            owner[param] = id(group)
    assert set(owner) == set(model.backbone.parameters())
    used_while_offloaded = []

    def check(module, _args):
        for param in module.parameters(recurse=False):
            if owner.get(param) is not None and owner[param] not in onloaded:
                used_while_offloaded.append(type(module).__name__)

    handles = [m.register_forward_pre_hook(check) for m in model.backbone.modules()]
    try:
        with torch.no_grad():
            model(**inputs, cues=cues)
    finally:
        for handle in handles:
            handle.remove()
    assert not used_while_offloaded
    assert not onloaded  # everything offloaded again after the forward


def test_fp8_storage_with_block_offload_is_bit_identical_to_fp8_alone():
    inputs, cues = _inputs("wan-i2v", torch.bfloat16)
    outputs = []
    for options in (MemoryOptions(storage="fp8"), MemoryOptions(storage="fp8", offload="blocks", blocks_on_gpu=2)):
        model = tiny_animator("wan-i2v", randomize_cues=True).to(torch.bfloat16)
        apply_memory_options(model, options, device="cpu")
        with torch.no_grad():
            outputs.append(model(**inputs, cues=cues))
        assert model.blocks[0].block.ffn.net[2].weight.dtype == FP8_STORAGE_DTYPE
    assert torch.equal(outputs[0], outputs[1])


# --------------------------------------------------------------------------- attention
@pytest.mark.parametrize("layout", ["1.0", "1.5"])
def test_cogvideox_attention_through_the_dispatcher_equals_its_sdpa_processor(layout, monkeypatch):
    model = tiny_animator(layout, randomize_cues=True)
    inputs, cues = _inputs(layout)
    with torch.no_grad():
        plain = model(**inputs, cues=cues)
        assert install_dispatch_attention(model.backbone) == len(model.blocks)
        assert all(type(b.block.attn1.processor) is DispatchCogVideoXAttnProcessor for b in model.blocks)
        model.backbone.set_attention_backend("native")
        assert all(b.block.attn1.processor._attention_backend == AttentionBackendName.NATIVE for b in model.blocks)
        calls = []
        native = _AttentionBackendRegistry._backends[AttentionBackendName.NATIVE]
        monkeypatch.setitem(_AttentionBackendRegistry._backends, AttentionBackendName.NATIVE,
                            lambda **kw: calls.append(1) or native(**kw))
        dispatched = model(**inputs, cues=cues)
    assert len(calls) == len(model.blocks)  # the backend switch reaches every block's attention
    assert (dispatched - plain).abs().max().item() <= FLOAT_ERROR


@pytest.mark.parametrize("layout", ["wan-i2v", "wan-ti2v"])
def test_wan_attention_already_dispatches_and_native_is_set_on_its_processors(layout):
    model = tiny_animator(layout, randomize_cues=True)
    inputs, cues = _inputs(layout)
    with torch.no_grad():
        plain = model(**inputs, cues=cues)
        assert install_dispatch_attention(model.backbone) == 0
        # another model in the process switched diffusers' process-wide default; this one keeps what it was given
        _AttentionBackendRegistry.set_active_backend(AttentionBackendName._NATIVE_MATH)
        apply_memory_options(model, MemoryOptions(attention="native"), device="cpu")
        assert _AttentionBackendRegistry.get_active_backend()[0] == AttentionBackendName._NATIVE_MATH
        assert dispatching_processors(model.backbone) == 2 * len(model.blocks)
        assert all(b.block.attn1.processor._attention_backend == AttentionBackendName.NATIVE
                   and b.block.attn2.processor._attention_backend == AttentionBackendName.NATIVE for b in model.blocks)
        assert torch.equal(model(**inputs, cues=cues), plain)


def test_native_attention_leaves_cogvideox_processors_alone():
    model = tiny_animator("1.0")
    apply_memory_options(model, MemoryOptions(), device="cpu")
    assert all(type(b.block.attn1.processor) is CogVideoXAttnProcessor2_0 for b in model.blocks)


@pytest.mark.parametrize("backend, package, module", [("flash", "flash-attn", "flash_attn"),
                                                      ("sage", "sageattention", "sageattention"),
                                                      ("xformers", "xformers", "xformers")])
def test_missing_attention_package_is_named_before_any_work(backend, package, module):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{package} is installed here")
    options = MemoryOptions(attention=backend)
    with pytest.raises(InputError, match=f"attention='{backend}'.*needs the {package} package.*pip install"):
        options.validate()
    model = tiny_animator("1.0")
    with pytest.raises(InputError, match=package):
        apply_memory_options(model, options, device="cpu")
    assert all(type(b.block.attn1.processor) is CogVideoXAttnProcessor2_0 for b in model.blocks)  # untouched


# --------------------------------------------------------------------------- compile
@pytest.mark.parametrize("layout", ["1.0", "wan-i2v"])
def test_compile_compiles_each_wrapped_block_with_its_cue_fusion(layout):
    model = tiny_animator(layout, randomize_cues=True)
    notes = apply_memory_options(model, MemoryOptions(compile=True), device="cpu")
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    assert all(block.block._compiled_call_impl is None for block in model.blocks)  # the region is the wrapper
    assert any("regional" in note for note in notes)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["wan-i2v"])
def test_compiled_blocks_match_the_eager_run(layout):
    """Inductor compile on the CPU: about a minute on 2 cores, so one layout, Wan's (its cues ride on the rotary
    tuple through the compiled blocks); that CogVideoX's wrapped blocks are compiled is checked without running."""
    model = tiny_animator(layout, randomize_cues=True)
    inputs, cues = _inputs(layout)
    with torch.no_grad():
        eager = model(**inputs, cues=cues)
        apply_memory_options(model, MemoryOptions(compile=True), device="cpu")
        compiled = model(**inputs, cues=cues)
    assert (compiled - eager).abs().max().item() <= FLOAT_ERROR


@pytest.mark.slow
def test_storage_offload_and_dispatcher_together_stay_within_fp8_rounding():
    """fp8 storage, block offload and the dispatcher (CogVideoX's swapped processor, native kernel) together;
    compile is checked on its own above (a second inductor build would add a minute to the suite)."""
    model = tiny_animator("1.5", randomize_cues=True).to(torch.bfloat16)
    inputs, cues = _inputs("1.5", torch.bfloat16)
    with torch.no_grad():
        bf16 = model(**inputs, cues=cues)
        install_dispatch_attention(model.backbone)
        apply_memory_options(model, MemoryOptions(storage="fp8", offload="blocks"), device="cpu")
        out = model(**inputs, cues=cues)
    assert 0 < _relative_l2(out, bf16) < FP8_RELATIVE_L2


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("values, fragment", [
    (dict(storage="fp16"), "storage='fp16'"),
    (dict(offload="disk"), "offload='disk'"),
    (dict(offload="blocks", blocks_on_gpu=0), "blocks_on_gpu=0"),
    (dict(offload="blocks", blocks_on_gpu=True), "blocks_on_gpu=True"),
    (dict(stream="yes"), "stream='yes'"),
    (dict(stream=True), "stream=True.*offload='blocks'"),
    (dict(offload="blocks", blocks_on_gpu=2, stream=True), "stream=True with blocks_on_gpu=2.*blocks_on_gpu=1"),
    (dict(attention="sdpa"), "attention='sdpa'.*native"),
    (dict(compile="yes"), "compile='yes'"),
])
def test_validate_names_the_option_and_the_fix(values, fragment):
    with pytest.raises(InputError, match=fragment):
        MemoryOptions(**values).validate()


def test_from_dict_refuses_unknown_names_and_validates():
    with pytest.raises(InputError, match=r"\['block_swap'\]: unknown"):
        MemoryOptions.from_dict({"block_swap": 10})
    with pytest.raises(InputError, match="storage"):
        MemoryOptions.from_dict({"storage": "int4"})
    options = MemoryOptions(storage="fp8", offload="blocks", blocks_on_gpu=3, stream=False)
    assert MemoryOptions.from_dict(options.to_dict()) == options


def test_describe_states_every_option():
    assert describe(MemoryOptions()) == "storage bf16, offload none, attention native, compile off"
    assert describe(MemoryOptions(storage="fp8", offload="blocks", blocks_on_gpu=2, stream=False, compile=True)) == \
        "storage fp8, offload blocks (2 on GPU, not streamed), attention native, compile on"


def test_options_the_device_cannot_run_are_refused_before_anything_changes():
    model = tiny_animator("1.0")
    with pytest.raises(InputError, match="stream=True.*CUDA"):
        apply_memory_options(model, MemoryOptions(offload="blocks", stream=True), device="cpu")
    with pytest.raises(InputError, match="storage='fp8'.*bf16, fp16 or fp32"):
        apply_memory_options(tiny_animator("1.0").to(torch.float64), MemoryOptions(storage="fp8"), device="cpu")
    assert applied_options(model) is None and not hooks_place_weights(model)


def test_applying_again_returns_the_same_notes_or_asks_for_a_reload():
    model = tiny_animator("1.0").to(torch.bfloat16)
    options = MemoryOptions(storage="fp8", offload="model")
    notes = apply_memory_options(model, options, device="cpu")
    assert apply_memory_options(model, options, device="cpu") == notes and applied_options(model) == options
    with pytest.raises(InputError, match="load it again"):
        apply_memory_options(model, MemoryOptions(), device="cpu")
