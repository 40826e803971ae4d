"""The CueFusion DiT: zero-init identity, cue/token alignment, guidance weights, checkpointing, input checks."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from directanimator.errors import InputError
from directanimator.models import CueFusion, CueLatents, CuePatchEmbed, DirectAnimatorTransformer
from directanimator.models.fusion import CueTokens
from tests.tiny import (
    LATENT,
    LATENT_CHANNELS,
    LAYOUTS,
    TEXT_DIM,
    TEXT_LEN,
    tiny_animator,
    tiny_backbone,
    tiny_cue_latents,
    tiny_inputs,
)


def _pipeline_rotary(backbone, frames: int, latent_h: int, latent_w: int):
    """Rotary embeddings exactly as diffusers' CogVideoX image-to-video pipeline computes them."""
    from diffusers import CogVideoXImageToVideoPipeline

    fake_pipe = SimpleNamespace(transformer=backbone, vae_scale_factor_spatial=8)
    return CogVideoXImageToVideoPipeline._prepare_rotary_positional_embeddings(
        fake_pipe, latent_h * 8, latent_w * 8, frames, torch.device("cpu"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_untrained_animator_equals_bare_backbone_bit_for_bit(layout):
    bare = tiny_backbone(layout, seed=3)
    inputs = tiny_inputs(layout, batch=2)
    ofs = torch.full((2,), 2.0) if layout == "1.5" else None
    with torch.no_grad():
        expected = bare(**inputs, ofs=ofs, image_rotary_emb=_pipeline_rotary(bare, 4, LATENT, LATENT),
                        return_dict=False)[0]
        model = DirectAnimatorTransformer(copy.deepcopy(bare))
        with_cues = model(**inputs, cues=tiny_cue_latents(batch=2))
        without_cues = model(**inputs)
    assert with_cues.shape == (2, 4, LATENT_CHANNELS, LATENT, LATENT)
    assert torch.equal(with_cues, expected)
    assert torch.equal(without_cues, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cue_patch_embedding_reproduces_the_backbone_patchify(layout):
    torch.manual_seed(0)
    backbone = tiny_backbone(layout)
    pe = backbone.patch_embed
    embed = CuePatchEmbed(backbone.config.in_channels, 32, patch_size=2, patch_size_t=backbone.config.patch_size_t,
                          bias=pe.proj.bias is not None)
    embed.proj.load_state_dict(pe.proj.state_dict())
    pe.use_positional_embeddings = pe.use_learned_positional_embeddings = False  # compare the patchify alone
    x = torch.randn(2, 4, backbone.config.in_channels, LATENT, LATENT)
    with torch.no_grad():
        expected = pe(torch.zeros(2, TEXT_LEN, TEXT_DIM), x)[:, TEXT_LEN:]
        torch.testing.assert_close(embed(x), expected, rtol=1e-6, atol=1e-6)


def _impulse_cues(frame: int, row: int, col: int) -> tuple[CueLatents, CueLatents]:
    """Zero cues, and the same with one latent pixel set in the pose and face latents and masks."""
    def make() -> CueLatents:
        latents = (1, 4, LATENT_CHANNELS, LATENT, LATENT)
        masks = (1, 4, 1, LATENT, LATENT)
        return CueLatents(torch.zeros(latents), torch.zeros(latents), torch.zeros(masks), torch.zeros(masks))

    zeros, impulse = make(), make()
    for t in (impulse.pose, impulse.face, impulse.body_mask, impulse.face_mask):
        t[0, frame, :, row, col] = 1.0
    return zeros, impulse


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_cue_on_one_patch_reaches_that_token_and_only_it(layout):
    model = tiny_animator(layout, randomize_cues=True)
    frame, row, col = 3, 5, 2  # latent coordinates
    zeros, impulse = _impulse_cues(frame, row, col)
    grid_w = LATENT // 2
    group = frame if layout == "1.0" else frame // 2
    token = group * (LATENT // 2) * grid_w + (row // 2) * grid_w + col // 2

    with torch.no_grad():
        changed = [(a - b).abs().amax(-1) > 0 for a, b in zip(model.embed_cues(impulse), model.embed_cues(zeros))]
    for mask in changed:  # pose and face tokens
        assert mask[0].nonzero().flatten().tolist() == [token]

    seen = []
    hook = model.backbone.transformer_blocks[0].block.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].clone(), args[1].clone())))
    inputs = tiny_inputs(layout)
    with torch.no_grad():
        model(**inputs, cues=zeros)
        model(**inputs, cues=impulse)
    hook.remove()
    (vision_a, text_a), (vision_b, text_b) = seen
    moved = ((vision_a - vision_b).abs().amax(-1) > 0)[0].nonzero().flatten().tolist()
    assert moved == [token]
    assert not torch.equal(text_a, text_b)  # the text stream hears the cue token mean


def test_cue_fusion_computes_the_design_formula():
    """c' = c + g * (LN(c) * (1 + s) + b) per cue; vision += c_p' + c_f'; text += proj(mean_n(c_p' + c_f'))."""
    torch.manual_seed(0)
    dim, temb_dim = 32, 16
    fusion, shared = CueFusion(dim, temb_dim, modulation_rank=4, text_rank=4), torch.nn.Linear(temb_dim, 6 * dim)
    randomize = [fusion.up.weight, fusion.up.bias, fusion.text_up.weight]
    with torch.no_grad():
        for p in randomize:
            p.normal_(0, 0.3)
    pose, face, hidden = torch.randn(2, 10, dim), torch.randn(2, 10, dim), torch.randn(2, 10, dim)
    temb = torch.randn(2, temb_dim)
    weight = torch.tensor([0.5, 1.0]).reshape(2, 1, 1)

    t = torch.nn.functional.silu(temb)
    s_p, b_p, g_p, s_f, b_f, g_f = (fusion.up(fusion.down(t)) + shared(t))[:, None].chunk(6, dim=-1)
    ln = torch.nn.functional.layer_norm
    pose_mod = pose + g_p * (ln(pose, (dim,), eps=1e-6) * (1 + s_p) + b_p)
    face_mod = face + g_f * (ln(face, (dim,), eps=1e-6) * (1 + s_f) + b_f)
    vision = (pose_mod + face_mod) * weight
    text = fusion.text_up(fusion.text_down(vision.mean(dim=1, keepdim=True)))

    with torch.no_grad():
        out, text_out = fusion(hidden, CueTokens.build(pose, face, weight=weight, shared=shared), temb)
        torch.testing.assert_close(out, hidden + vision, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(text_out, text, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cue_weight_zero_is_the_bare_backbone_per_sample(layout):
    model = tiny_animator(layout, randomize_cues=True)
    inputs = tiny_inputs(layout, batch=2)
    cues = tiny_cue_latents(batch=2)
    with torch.no_grad():
        bare = model(**inputs)
        cued = model(**inputs, cues=cues)
        mixed = model(**inputs, cues=cues, cue_weight=torch.tensor([1.0, 0.0]))
    assert (cued - bare).abs().max() > 1e-3  # trained cues steer the prediction
    assert torch.equal(mixed[0], cued[0])
    assert torch.equal(mixed[1], bare[1])


def _grads(model, inputs, cue_sets):
    model.zero_grad(set_to_none=True)
    loss = sum(model(**inputs, cues=c).square().mean() for c in cue_sets)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradient_checkpointing_gives_the_same_gradients(layout):
    model = tiny_animator(layout, randomize_cues=True).train()
    inputs = tiny_inputs(layout)
    # Two forwards before one backward: recomputation must still see each forward's own cue tokens.
    cue_sets = [tiny_cue_latents(seed=1), tiny_cue_latents(seed=2)]
    plain = _grads(model, inputs, cue_sets)

    calls = []
    # A pre-hook: recomputation stops early once the saved tensors are rebuilt, so post-hooks may not fire.
    hook = model.backbone.transformer_blocks[0].block.register_forward_pre_hook(lambda *a: calls.append(1))
    model.backbone.enable_gradient_checkpointing()
    checkpointed = _grads(model, inputs, cue_sets)
    hook.remove()

    assert len(calls) == 4  # two forwards plus two recomputations: checkpointing really ran
    assert plain.keys() == checkpointed.keys()
    assert {"shared_modulation.weight", "pose_embed.proj.weight"} <= plain.keys()
    assert any("fusion.up" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_backbone_attention_processors_and_qkv_fusion_still_work():
    model = tiny_animator("1.0", randomize_cues=True)
    processors = model.backbone.attn_processors
    assert len(processors) == 2 and all(type(p).__name__ == "CogVideoXAttnProcessor2_0" for p in processors.values())
    inputs, cues = tiny_inputs(), tiny_cue_latents()
    with torch.no_grad():
        before = model(**inputs, cues=cues)
        model.backbone.fuse_qkv_projections()
        after = model(**inputs, cues=cues)
    assert all(type(p).__name__ == "FusedCogVideoXAttnProcessor2_0" for p in model.backbone.attn_processors.values())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_cue_modules_start_at_zero_and_get_gradients_from_the_start():
    model = tiny_animator("1.0").train()
    out = model(**tiny_inputs(), cues=tiny_cue_latents())
    out.square().mean().backward()
    assert all(float(p.detach().abs().max()) == 0 for p in model.pose_embed.parameters())
    assert float(model.pose_embed.proj.weight.grad.abs().max()) > 0
    assert float(model.face_embed.proj.weight.grad.abs().max()) > 0


# ------------------------------------------------------------------ bad inputs
def test_wrong_latent_channel_count_is_refused():
    model = tiny_animator("1.0")
    inputs = tiny_inputs()
    inputs["hidden_states"] = inputs["hidden_states"][:, :, :16]
    with pytest.raises(InputError, match="16 channels.*takes 32"):
        model(**inputs)


def test_cue_latents_with_other_channels_or_sizes_are_refused():
    model = tiny_animator("1.0")
    inputs = tiny_inputs()
    with pytest.raises(InputError, match="cue embeddings take 16"):
        wrong = tiny_cue_latents()
        model(**inputs, cues=CueLatents(wrong.pose[:, :, :8], wrong.face[:, :, :8], wrong.body_mask, wrong.face_mask))
    with pytest.raises(InputError, match="h=4, w=4.*h=8, w=8"):
        model(**inputs, cues=tiny_cue_latents(height=4, width=4))
    with pytest.raises(InputError, match="F'=3"):
        model(**inputs, cues=tiny_cue_latents(frames=3))
    with pytest.raises(InputError, match="body_mask"):
        c = tiny_cue_latents()
        CueLatents(c.pose, c.face, c.body_mask[:, :, :, :4], c.face_mask)


def test_odd_latent_frames_are_refused_by_the_15_layout():
    model = tiny_animator("1.5")
    with pytest.raises(InputError, match="patches of 2.*8m\\+1 driving frames"):
        model(**tiny_inputs("1.5", frames=3))
    model.check_latent_shape(2, LATENT, LATENT)  # even counts are fine
    with pytest.raises(InputError, match="exceeds the rotary table"):
        model.check_latent_shape(2, 4 * LATENT, LATENT)


def test_learned_positional_embeddings_take_exactly_their_sample_size():
    model = tiny_animator("1.0")
    model.check_latent_shape(4, LATENT, LATENT)
    with pytest.raises(InputError, match="exactly F'=4 latent frames at 8x8"):
        model.check_latent_shape(5, LATENT, LATENT)
    with pytest.raises(InputError, match="exactly F'=4"):
        model(**tiny_inputs(height=6, width=6))
    with pytest.raises(InputError, match="not divisible by the patch size"):
        tiny_animator("1.5").check_latent_shape(2, 7, 8)
    inputs = tiny_inputs()
    inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, :5]
    with pytest.raises(InputError, match="5 text tokens.*exactly 8"):
        model(**inputs)


def test_cue_latents_select_concatenate_and_cast():
    cues = tiny_cue_latents(frames=4)
    ref = cues.frames(0)
    assert ref.num_frames == 1 and torch.equal(ref.pose, cues.pose[:, :1])
    picked = cues.frames(torch.tensor([3, 1]))
    assert torch.equal(picked.face_mask[:, 0], cues.face_mask[:, 3])
    joined = ref.cat(cues.frames(slice(1, None)))
    assert joined.num_frames == 4 and torch.equal(joined.body_mask, cues.body_mask)
    half = cues.to(dtype=torch.bfloat16)
    assert half.pose.dtype == torch.bfloat16
    assert torch.allclose(half.body_mask.float(), cues.body_mask, atol=4e-3)  # values kept, only cast
    assert float(half.body_mask.max()) <= 1.0


def test_reference_in_every_frame_equals_the_leading_layout_fed_the_reference_everywhere():
    from directanimator.models import CueFusionConfig

    leading = tiny_animator("1.0", seed=2, randomize_cues=True)
    every = DirectAnimatorTransformer(tiny_backbone("1.0", seed=2),  # the same seeded weights
                                      config=CueFusionConfig(modulation_rank=8, text_rank=8,
                                                             reference_in_every_frame=True)).eval()
    every.load_cue_state_dict(leading.cue_state_dict())
    inputs = tiny_inputs("1.0", batch=2)
    hidden = inputs["hidden_states"]
    hidden[:, 1:, LATENT_CHANNELS:] = 0.0  # the I2V layout: the reference latent leads, zeros after it
    hidden[1, :, LATENT_CHANNELS:] = 0.0  # sample 1: a dropped reference
    repeated = hidden.clone()
    repeated[0, :, LATENT_CHANNELS:] = hidden[0, :1, LATENT_CHANNELS:]
    cues = tiny_cue_latents(batch=2)
    with torch.no_grad():
        out = every(**inputs, cues=cues)
        expected = leading(**{**inputs, "hidden_states": repeated}, cues=cues)
        plain = leading(**inputs, cues=cues)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (out[0] - plain[0]).abs().max() > 1e-3  # the option changes what sample 0 sees
    torch.testing.assert_close(out[1], plain[1], rtol=0, atol=1e-6)  # a blank reference stays blank


@pytest.mark.parametrize("option", ["reference_in_every_frame", "residual_reference"])
def test_reference_options_must_be_bools(option):
    from directanimator.models import CueFusionConfig

    with pytest.raises(InputError, match=option):
        CueFusionConfig.from_dict({option: "yes"})
