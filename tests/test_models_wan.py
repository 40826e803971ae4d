"""CueFusion on Wan backbones (issue 32): zero-init identity against the raw diffusers `WanTransformer3DModel`, cue
to token alignment, the patchify, gradient checkpointing, per-frame timesteps, the text-stream term on the
cross-attention context, input checks, LoRA, the cue parameter share of the real configs and checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from directanimator.errors import CheckpointError, InputError
from directanimator.models import (
    CueLatents,
    CuePatchEmbed,
    DirectAnimatorTransformer,
    apply_checkpoint,
    backbone_config,
    build_backbone,
    read_checkpoint,
    save_checkpoint,
)
from directanimator.models.fusion import CueRotary, CueTokens
from tests.tiny import (
    LATENT,
    TINY_WAN_CONFIGS,
    WAN_LAYOUTS,
    WAN_TEXT_LEN,
    add_random_lora,
    randomize_cue_modules,
    tiny_animator,
    tiny_backbone,
    tiny_backbone_config,
    tiny_cue_latents,
    tiny_inputs,
    tiny_wan_inputs,
)

FRAMES = 3  # latent frames of the tiny inputs


def _channels(layout: str) -> int:
    return TINY_WAN_CONFIGS[layout]["out_channels"]


def _cues(layout: str, *, batch: int = 1, seed: int = 0) -> CueLatents:
    return tiny_cue_latents(batch=batch, frames=FRAMES, seed=seed, channels=_channels(layout))


def _raw(backbone, inputs: dict, timestep: torch.Tensor | None = None) -> torch.Tensor:
    """The raw diffusers backbone on ``[B, C, F', h, w]``, returned as ``[B, F', C, h, w]``."""
    out = backbone(hidden_states=inputs["hidden_states"].permute(0, 2, 1, 3, 4),
                   timestep=inputs["timestep"] if timestep is None else timestep,
                   encoder_hidden_states=inputs["encoder_hidden_states"],
                   encoder_hidden_states_image=inputs.get("image_embeds"), return_dict=False)[0]
    return out.permute(0, 2, 1, 3, 4)


def _first_block_inputs(model, runs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(vision tokens, cross-attention context) entering the first wrapped block's inner block, per call in `runs`."""
    seen = []
    hook = model.blocks[0].block.register_forward_pre_hook(
        lambda _m, args: seen.append((args[0].clone(), args[1].clone())))
    try:
        with torch.no_grad():
            for run in runs:
                run()
    finally:
        hook.remove()
    return seen


# ------------------------------------------------------------------ identity at initialisation
@pytest.mark.parametrize("layout", WAN_LAYOUTS)
def test_untrained_animator_equals_the_raw_wan_backbone_bit_for_bit(layout):
    bare = tiny_backbone(layout, seed=3)
    inputs = tiny_wan_inputs(layout, batch=2)
    with torch.no_grad():
        expected = _raw(bare, inputs)
        model = DirectAnimatorTransformer(copy.deepcopy(bare)).eval()
        with_cues = model(**inputs, cues=_cues(layout, batch=2))
        without_cues = model(**inputs)
    assert with_cues.shape == (2, FRAMES, _channels(layout), LATENT, LATENT)
    assert torch.equal(with_cues, expected)
    assert torch.equal(without_cues, expected)


@pytest.mark.parametrize("layout", WAN_LAYOUTS)
def test_cue_weight_zero_is_the_bare_wan_backbone_per_sample(layout):
    model = tiny_animator(layout, randomize_cues=True)
    inputs = tiny_wan_inputs(layout, batch=2)
    cues = _cues(layout, batch=2)
    with torch.no_grad():
        bare = model(**inputs)
        cued = model(**inputs, cues=cues)
        mixed = model(**inputs, cues=cues, cue_weight=torch.tensor([1.0, 0.0]))
        raw = _raw(model.backbone, inputs)  # the wrappers without cues are the backbone itself
    assert (cued - bare).abs().max() > 1e-3  # trained cues steer the prediction
    assert torch.equal(mixed[0], cued[0])
    assert torch.equal(mixed[1], bare[1])
    assert torch.equal(bare, raw)


# ------------------------------------------------------------------ patchify and token alignment
@pytest.mark.parametrize("layout", WAN_LAYOUTS)
def test_cue_patch_embedding_reproduces_the_wan_patch_embedding(layout):
    backbone = tiny_backbone(layout)
    conv = backbone.patch_embedding  # Conv3d [D, C, 1, 2, 2]
    channels = conv.in_channels
    embed = CuePatchEmbed(channels, conv.out_channels, patch_size=2, patch_size_t=None)
    with torch.no_grad():
        embed.proj.weight.copy_(conv.weight[:, :, 0])  # -> Conv2d [D, C, 2, 2]
        embed.proj.bias.copy_(conv.bias)
    x = torch.randn(2, FRAMES, channels, LATENT, LATENT)
    with torch.no_grad():
        expected = conv(x.permute(0, 2, 1, 3, 4)).flatten(2).transpose(1, 2)
        torch.testing.assert_close(embed(x), expected, rtol=1e-5, atol=1e-6)


def _impulse_cues(layout: str, frame: int, row: int, col: int) -> tuple[CueLatents, CueLatents]:
    """Zero cues, and the same with one latent pixel set in the pose and face latents and masks."""
    def make() -> CueLatents:
        latents, masks = (1, FRAMES, _channels(layout), LATENT, LATENT), (1, FRAMES, 1, LATENT, LATENT)
        return CueLatents(torch.zeros(latents), torch.zeros(latents), torch.zeros(masks), torch.zeros(masks))

    zeros, impulse = make(), make()
    for t in (impulse.pose, impulse.face, impulse.body_mask, impulse.face_mask):
        t[0, frame, :, row, col] = 1.0
    return zeros, impulse


@pytest.mark.parametrize("layout", WAN_LAYOUTS)
def test_a_cue_on_one_latent_pixel_reaches_that_token_and_only_it(layout):
    model = tiny_animator(layout, randomize_cues=True)
    frame, row, col = 2, 5, 2  # latent coordinates
    zeros, impulse = _impulse_cues(layout, frame, row, col)
    grid = LATENT // 2
    token = frame * grid * grid + (row // 2) * grid + col // 2

    with torch.no_grad():
        changed = [(a - b).abs().amax(-1) > 0 for a, b in zip(model.embed_cues(impulse), model.embed_cues(zeros))]
    for mask in changed:  # pose and face tokens
        assert mask[0].nonzero().flatten().tolist() == [token]

    inputs = tiny_wan_inputs(layout)
    (vision_a, context_a), (vision_b, context_b) = _first_block_inputs(
        model, [lambda: model(**inputs, cues=zeros), lambda: model(**inputs, cues=impulse)])
    moved = ((vision_a - vision_b).abs().amax(-1) > 0)[0].nonzero().flatten().tolist()
    assert moved == [token]
    assert not torch.equal(context_a, context_b)  # the context hears the cue token mean


# ------------------------------------------------------------------ the text-stream term
@pytest.mark.parametrize("layout", WAN_LAYOUTS)
def test_the_text_stream_term_is_added_to_every_cross_attention_context_token(layout):
    model = tiny_animator(layout, randomize_cues=True)
    inputs = tiny_wan_inputs(layout)
    cues = _cues(layout)
    (_, context_bare), (vision, context_cued) = _first_block_inputs(
        model, [lambda: model(**inputs), lambda: model(**inputs, cues=cues)])
    image_tokens = 5 if layout == "wan-i2v" else 0  # Wan2.1 I2V: CLIP image tokens lead the context
    assert context_bare.shape[1] == image_tokens + WAN_TEXT_LEN
    # The block's own text term, computed from the same cue tokens and Wan's e_t.
    with torch.no_grad():
        pose, face = model.embed_cues(cues)
        tokens = CueTokens.build(pose, face, shared=model.shared_modulation)
        temb = model.family.time_embedding(model.backbone, inputs["timestep"])
        _, text = model.blocks[0].fusion(torch.zeros_like(vision), tokens, temb)
    assert text.abs().max() > 1e-3
    torch.testing.assert_close(context_cued - context_bare, text.expand_as(context_bare), rtol=1e-5, atol=1e-6)

    # With the text projection at zero the context is untouched: the difference is the text-stream term alone.
    with torch.no_grad():
        for block in model.blocks:
            block.fusion.text_up.weight.zero_()
    (_, context_zero), = _first_block_inputs(model, [lambda: model(**inputs, cues=cues)])
    assert torch.equal(context_zero, context_bare)


def test_wan_cue_modulation_uses_wans_own_time_embedding():
    """e_t of the cue modulation equals the `temb` Wan's condition embedder computes for the same timesteps."""
    backbone = tiny_backbone("wan-ti2v")
    model = DirectAnimatorTransformer(backbone)
    timestep = torch.tensor([10.0, 700.0])
    text = torch.randn(2, 4, TINY_WAN_CONFIGS["wan-ti2v"]["text_dim"])
    with torch.no_grad():
        temb = backbone.condition_embedder(timestep, text)[0]
        torch.testing.assert_close(model.family.time_embedding(backbone, timestep), temb, rtol=0, atol=0)


# ------------------------------------------------------------------ per-frame timesteps
@pytest.mark.parametrize("layout", WAN_LAYOUTS)
def test_per_frame_timesteps_equal_the_pipelines_expanded_per_token_timesteps(layout):
    bare = tiny_backbone(layout, seed=4)
    model = DirectAnimatorTransformer(copy.deepcopy(bare)).eval()
    inputs = tiny_wan_inputs(layout, batch=2)
    t = 640.0
    # diffusers' Wan2.2 TI2V pipeline (expand_timesteps): a first-frame mask on the latent grid, times t, one value
    # per patch token.
    first_frame_mask = torch.ones(1, 1, FRAMES, LATENT, LATENT)
    first_frame_mask[:, :, 0] = 0
    per_token = (first_frame_mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(2, -1)
    per_frame = torch.tensor([[0.0, t, t]]).expand(2, -1)
    with torch.no_grad():
        expected = _raw(bare, inputs, timestep=per_token)
        assert torch.equal(model(**{**inputs, "timestep": per_frame}, cues=_cues(layout, batch=2)), expected)
        assert (expected - _raw(bare, inputs, timestep=torch.full((2,), t))).abs().max() > 1e-4

        # With trained cues, the cue modulation takes the noisy frames' timestep (the largest of each row).
        randomize_cue_modules(model)
        cues = _cues(layout, batch=2)
        same_t = model(**{**inputs, "timestep": torch.full((2, FRAMES), t)}, cues=cues)
        torch.testing.assert_close(same_t, model(**{**inputs, "timestep": torch.full((2,), t)}, cues=cues),
                                   rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ gradient checkpointing
def _grads(model, inputs, cue_sets):
    model.zero_grad(set_to_none=True)
    loss = sum(model(**inputs, cues=c).square().mean() for c in cue_sets)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", WAN_LAYOUTS)
def test_gradient_checkpointing_on_wan_gives_the_same_gradients(layout):
    model = tiny_animator(layout, randomize_cues=True).train()
    inputs = tiny_wan_inputs(layout)
    # Two forwards before one backward: recomputation must still see each forward's own cue tokens.
    cue_sets = [_cues(layout, seed=1), _cues(layout, seed=2)]
    plain = _grads(model, inputs, cue_sets)

    calls, carried = [], []

    def pre(_m, args):  # a pre-hook: recomputation may stop early, so post-hooks need not fire
        calls.append(1)
        carried.append(isinstance(args[3], CueRotary))

    hook = model.blocks[0].register_forward_pre_hook(pre)
    model.backbone.enable_gradient_checkpointing()
    checkpointed = _grads(model, inputs, cue_sets)
    hook.remove()

    assert len(calls) == 4 and all(carried)  # two forwards plus two recomputations, each with its cues
    assert plain.keys() == checkpointed.keys()
    assert {"shared_modulation.weight", "pose_embed.proj.weight", "face_embed.proj.weight"} <= plain.keys()
    assert any("fusion.up" in n for n in plain) and any("fusion.text_up" in n for n in plain)
    assert any(".block.attn1.to_q" in n for n in plain)  # backbone gradients compared too
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ bad inputs
def test_wrong_channels_on_wan_name_hidden_states():
    model = tiny_animator("wan-i2v")
    inputs = tiny_wan_inputs("wan-i2v")
    inputs["hidden_states"] = inputs["hidden_states"][:, :, :32]
    with pytest.raises(InputError, match=r"hidden_states: 32 channels.*takes 36.*mask"):
        model(**inputs)
    ti2v = tiny_animator("wan-ti2v")
    with pytest.raises(InputError, match=r"hidden_states: 36 channels.*takes 48"):
        ti2v(**{**tiny_wan_inputs("wan-ti2v"), "hidden_states": torch.randn(1, FRAMES, 36, LATENT, LATENT)})
    with pytest.raises(InputError, match=r"cues: .*16 channels.*take 48"):
        ti2v(**tiny_wan_inputs("wan-ti2v"), cues=tiny_cue_latents(frames=FRAMES))


def test_image_embeds_are_required_on_wan_i2v_and_refused_elsewhere():
    model = tiny_animator("wan-i2v")
    inputs = tiny_wan_inputs("wan-i2v")
    with pytest.raises(InputError, match=r"image_embeds: .*wan-i2v.*got None"):
        model(**{k: v for k, v in inputs.items() if k != "image_embeds"})
    with pytest.raises(InputError, match=r"image_embeds: .*got \(1, 5, 7\)"):
        model(**{**inputs, "image_embeds": torch.randn(1, 5, 7)})
    with pytest.raises(InputError, match=r"image_embeds: .*wan-ti2v.*takes no image embedding"):
        tiny_animator("wan-ti2v")(**tiny_wan_inputs("wan-ti2v"), image_embeds=inputs["image_embeds"])


def test_wan_i2v_takes_exactly_512_text_tokens():
    model = tiny_animator("wan-i2v")
    inputs = tiny_wan_inputs("wan-i2v")
    inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, :300]
    with pytest.raises(InputError, match=r"encoder_hidden_states: 300 text tokens.*exactly 512"):
        model(**inputs)
    # TI2V has no image tokens in its context, so any text length works.
    ti2v = tiny_animator("wan-ti2v")
    ti2v_inputs = tiny_wan_inputs("wan-ti2v")
    with torch.no_grad():
        ti2v(**{**ti2v_inputs, "encoder_hidden_states": ti2v_inputs["encoder_hidden_states"][:, :300]})


def test_per_frame_timesteps_are_refused_on_cogvideox_and_checked_on_wan():
    with pytest.raises(InputError, match=r"timestep: shape \(1, 4\); give \[B\] \(one per sample\)\.$"):
        tiny_animator("1.0")(**{**tiny_inputs(), "timestep": torch.full((1, 4), 500)})
    with pytest.raises(InputError, match=r"timestep: shape \(1, 2\).*\[B=1, F'=3\]"):
        tiny_animator("wan-ti2v")(**{**tiny_wan_inputs("wan-ti2v"), "timestep": torch.full((1, 2), 500.0)})


# ------------------------------------------------------------------ LoRA
def test_lora_on_wans_attention_keeps_the_model_equal_to_the_backbone_at_init():
    from peft import LoraConfig

    bare = tiny_backbone("wan-i2v", seed=2)
    model = DirectAnimatorTransformer(copy.deepcopy(bare)).eval()
    model.backbone.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora = [n for n, _ in model.backbone.named_parameters() if "lora_" in n]
    # 2 blocks x 2 attentions (self, cross) x 4 projections x (A, B)
    assert len(lora) == 2 * 2 * 4 * 2 and all(n.startswith("blocks.") and ".block.attn" in n for n in lora)
    inputs = tiny_wan_inputs("wan-i2v")
    cues = _cues("wan-i2v")
    with torch.no_grad():
        expected = _raw(bare, inputs)
        assert torch.equal(model(**inputs, cues=cues), expected)
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
        assert (model(**inputs, cues=cues) - expected).abs().max() > 1e-3  # the adapters are in the path
    model.train()
    model.backbone.enable_gradient_checkpointing()
    model(**inputs, cues=cues).square().mean().backward()
    assert all(p.grad is not None for n, p in model.backbone.named_parameters() if "lora_" in n)


# ------------------------------------------------------------------ sizes of the real configs
def _meta_sizes(name: str) -> tuple[int, int]:
    with torch.device("meta"):
        model = DirectAnimatorTransformer(build_backbone(backbone_config(name)))
    cue = sum(p.numel() for p in model.cue_parameters())
    backbone = sum(p.numel() for n, p in model.backbone.named_parameters() if ".fusion." not in n)
    return backbone, cue


@pytest.mark.parametrize("name, layers, inner", [("wan2.1-i2v-14b", 40, 5120), ("wan2.2-ti2v-5b", 30, 3072)])
def test_cue_parameters_of_the_real_wan_configs_stay_under_3_percent(name, layers, inner):
    backbone, cue = _meta_sizes(name)
    print(f"{name}: backbone {backbone / 1e6:,.1f} M, cue {cue / 1e6:,.1f} M ({100 * cue / backbone:.2f}%)")
    assert cue / backbone < 0.03
    # What the cue modules are: two patch embeddings, the shared projection and one rank-64 module per block.
    channels = 16 if name.startswith("wan2.1") else 48
    embeds = 2 * ((channels + 1) * 4 * inner + inner)
    shared = inner * 6 * inner + 6 * inner
    per_block = inner * 64 + 64 * 6 * inner + 6 * inner + inner * 64 + 64 * inner
    assert cue == embeds + shared + layers * per_block
    assert backbone > (13e9 if name.startswith("wan2.1") else 4.5e9)


# ------------------------------------------------------------------ checkpoints


def _predict(model, layout: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_wan_inputs(layout), cues=_cues(layout))


@pytest.mark.parametrize("layout", WAN_LAYOUTS)
@pytest.mark.parametrize("weights", ["none", "lora", "full"])
def test_wan_checkpoint_round_trip(layout, weights, tmp_path):
    model = tiny_animator(layout, seed=0, randomize_cues=True)
    if weights == "lora":
        add_random_lora(model)
    elif weights == "full":
        with torch.no_grad():
            model.backbone.proj_out.weight.mul_(1.5)  # a fine-tuned backbone differs from the base
    expected = _predict(model, layout)
    null_text = torch.randn(1, WAN_TEXT_LEN, TINY_WAN_CONFIGS[layout]["text_dim"])
    path = save_checkpoint(tmp_path / f"{layout}.safetensors", model, weights=weights, null_text=null_text,
                           backbone_name=f"tiny-{layout}")
    ckpt = read_checkpoint(path)
    assert ckpt.weights == weights and ckpt.fingerprint["family"] == "wan"
    assert torch.equal(ckpt.null_text, null_text)
    if weights == "lora":
        assert ckpt.lora_state and all(k.startswith("blocks.") and ".block." not in k for k in ckpt.lora_state)
    if weights == "full":  # plain diffusers names: loadable into a bare WanTransformer3DModel
        bare = tiny_backbone(layout, seed=9)
        bare.load_state_dict(ckpt.backbone_state)
        assert torch.equal(bare.proj_out.weight, model.backbone.proj_out.weight)

    fresh = tiny_animator(layout, seed=0)  # same base weights, zero cue modules
    assert (_predict(fresh, layout) - expected).abs().max() > 1e-3
    apply_checkpoint(fresh, ckpt)
    torch.testing.assert_close(_predict(fresh, layout), expected, rtol=0, atol=1e-6)


def _drop_family(path) -> None:
    """Rewrite a checkpoint as one written before Wan support: its fingerprint has no "family"."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata())
    fp = json.loads(metadata["fingerprint"])
    del fp["family"]
    metadata["fingerprint"] = json.dumps(fp)
    save_file(load_file(str(path)), str(path), metadata=metadata)


def test_checkpoints_of_one_family_are_refused_by_the_other(tmp_path):
    cog = save_checkpoint(tmp_path / "cog.safetensors", tiny_animator("1.0", randomize_cues=True),
                          backbone_name="tiny-cogvideox")
    wan = save_checkpoint(tmp_path / "wan.safetensors", tiny_animator("wan-i2v", randomize_cues=True),
                          backbone_name="tiny-wan")
    with pytest.raises(CheckpointError, match=r"cog\.safetensors.*CogVideoX.*Wan backbone"):
        apply_checkpoint(tiny_animator("wan-i2v"), read_checkpoint(cog))
    with pytest.raises(CheckpointError, match=r"wan\.safetensors.*Wan.*CogVideoX backbone"):
        apply_checkpoint(tiny_animator("1.0"), read_checkpoint(wan))

    # A checkpoint from before Wan support (no family in its fingerprint) is a CogVideoX one.
    _drop_family(cog)
    old = read_checkpoint(cog)
    assert "family" not in old.fingerprint
    with pytest.raises(CheckpointError, match=r"cog\.safetensors.*CogVideoX.*Wan backbone"):
        apply_checkpoint(tiny_animator("wan-i2v"), old)
    apply_checkpoint(tiny_animator("1.0"), old)


# ------------------------------------------------------------------ S2X on Wan
S2X_LAYERS = 4


def _s2x_model(layout: str, seed: int = 0):
    return tiny_animator(layout, seed=seed, randomize_cues=True, num_layers=S2X_LAYERS)


def _s2x_inputs(layout: str, *, batch: int = 2, seed: int = 0) -> dict:
    return dict(**tiny_wan_inputs(layout, batch=batch, seed=seed), cues=_cues(layout, batch=batch, seed=seed + 1))


def _block_outputs(model, inputs: dict) -> tuple[list[torch.Tensor], list[int]]:
    """Every wrapped block's output of one full forward, and how often each block ran."""
    outputs, calls, handles = [None] * model.num_layers, [0] * model.num_layers, []
    for i, block in enumerate(model.blocks):
        def keep(_m, _a, out, i=i):
            calls[i] += 1
            outputs[i] = out
        handles.append(block.register_forward_hook(keep))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, calls


@pytest.mark.parametrize("layout", WAN_LAYOUTS)
def test_s2x_teacher_stops_after_block_d_on_wan_with_that_blocks_tokens(layout):
    from training.s2x import S2XTeacher

    model = _s2x_model(layout)
    inputs = _s2x_inputs(layout)
    full, _ = _block_outputs(model, inputs)
    for depth in (0, 2):
        calls = [0] * S2X_LAYERS
        handles = [b.register_forward_pre_hook(lambda _m, _a, i=i: calls.__setitem__(i, calls[i] + 1))
                   for i, b in enumerate(model.blocks)]
        got = S2XTeacher(model, depth=depth).features(**inputs)
        for handle in handles:
            handle.remove()
        assert calls == [1] * (depth + 1) + [0] * (S2X_LAYERS - depth - 1)  # blocks 0..D only
        assert got.shape == (2, FRAMES * (LATENT // 2) ** 2, model.inner_dim)
        assert torch.equal(got, full[depth])
    # The early stop left no hook behind (the rope's cue hook included): a full forward runs every block.
    outputs, calls = _block_outputs(model, inputs)
    assert calls == [1] * S2X_LAYERS and torch.equal(outputs[-1], full[-1])
    assert not model.backbone.rope._forward_hooks


def test_s2x_on_wan_with_the_lora_disabled_student_and_checkpointing():
    from peft import LoraConfig

    from training.s2x import S2XTeacher, capture_block_output, s2x_loss

    layout, depth = "wan-ti2v", 1
    base = _s2x_model(layout)
    student = copy.deepcopy(base).train()
    student.backbone.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in student.backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    inputs = _s2x_inputs(layout)
    teacher = S2XTeacher(None, depth=depth, student=student)
    target = teacher.features(**inputs)
    torch.testing.assert_close(target, S2XTeacher(copy.deepcopy(base), depth=depth).features(**inputs),
                               rtol=1e-6, atol=1e-6)

    def step() -> tuple[torch.Tensor, dict]:
        student.zero_grad(set_to_none=True)
        with capture_block_output(student, depth) as tokens:
            out = student(**inputs)
            captured = tokens()
            loss = out.square().mean() + s2x_loss(captured, teacher.features(**inputs))
            loss.backward()
            assert tokens() is captured  # neither the teacher pass nor the recomputation replaced it
        return captured.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    tokens_plain, grads_plain = step()
    assert (tokens_plain - target).abs().max() > 1e-3  # the adapters move the student away from the teacher
    student.backbone.enable_gradient_checkpointing()
    tokens_ckpt, grads_ckpt = step()
    torch.testing.assert_close(tokens_ckpt, tokens_plain, rtol=1e-6, atol=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys()
    assert any("lora_B" in n for n in grads_plain) and "pose_embed.proj.weight" in grads_plain
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_bf16_wan_from_pretrained_with_its_fp32_time_embedder_runs_with_cues(tmp_path):
    """diffusers keeps Wan's time embedder in fp32 in a bf16 model; the cue modulation takes e_t in the model's dtype."""
    from diffusers import WanTransformer3DModel

    tiny_backbone("wan-ti2v", seed=1).save_pretrained(tmp_path / "transformer")
    backbone = WanTransformer3DModel.from_pretrained(tmp_path / "transformer", torch_dtype=torch.bfloat16)
    assert backbone.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    model = DirectAnimatorTransformer(backbone).eval()
    assert model.dtype == torch.bfloat16 and model.pose_embed.proj.weight.dtype == torch.bfloat16
    inputs = {k: v if k == "timestep" else v.to(torch.bfloat16) for k, v in tiny_wan_inputs("wan-ti2v").items()}
    with torch.no_grad():
        assert torch.equal(model(**inputs, cues=_cues("wan-ti2v")), _raw(model.backbone, inputs))  # zero init
    randomize_cue_modules(model)
    with torch.no_grad():
        bare = model(**inputs)
        cued = model(**inputs, cues=_cues("wan-ti2v"))
    assert cued.dtype == torch.bfloat16 and bool(torch.isfinite(cued).all())
    assert (cued.float() - bare.float()).abs().max() > 1e-2


def test_other_wan_classes_and_cogvideox_only_modes_are_refused():
    """A Wan class with weights a plain WanTransformer3DModel would drop (VACE, Animate) is refused by name, and the
    CogVideoX-only reference modes are refused on Wan when the model is built, before any training or sampling."""
    from directanimator.models import CueFusionConfig, DirectAnimatorTransformer
    from directanimator.models.family import spec_from_config

    config = dict(tiny_backbone_config("wan-i2v"), _class_name="WanVACETransformer3DModel")
    with pytest.raises(CheckpointError, match="WanVACETransformer3DModel.*not supported"):
        spec_from_config(config)
    for name in ("reference_in_every_frame", "residual_reference"):
        with pytest.raises(InputError, match=f"CueFusionConfig.{name} .*model.{name}=true"):
            DirectAnimatorTransformer(tiny_backbone("wan-i2v"), config=CueFusionConfig(**{name: True}))
