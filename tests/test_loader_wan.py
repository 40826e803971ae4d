"""Loading Wan backbones: single files in the native Wan key layout ComfyUI users keep (transformer, VAE, CLIP
vision), diffusers folders with the CLIP parts, repo ids from the Hugging Face cache, family detection from the
weights and clear refusals of other model families. Nothing downloads (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file

from directanimator.errors import CheckpointError
from directanimator.models import load_model
from directanimator.models.configs import backbone_config
from directanimator.models.loader import match_bundled_config
from directanimator.models.single_file import (
    identify,
    load_clip_vision_file,
    load_transformer_file,
    load_vae_file,
    wan_transformer_to_diffusers,
)
from tests.tiny import (
    TEXT_DIM,
    WAN_IMAGE_DIM,
    WAN_TEXT_LEN,
    tiny_backbone,
    tiny_backbone_config,
    tiny_wan_inputs,
    tiny_wan_vae,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- the native Wan layout, written here as the inverse of diffusers' conversion -------------------------------
# diffusers -> native names of the Wan transformer (the reverse of the renames in diffusers'
# single_file_utils.convert_wan_transformer_to_diffusers); the native norm3 is diffusers' norm2 and back.
_TO_NATIVE = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."), (".to_out.0.", ".o."), (".to_q.", ".q."),
    (".to_k.", ".k."), (".to_v.", ".v."), (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out", "head.head"),
)


def native_transformer_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    for diffusers_name, native in _TO_NATIVE:
        key = key.replace(diffusers_name, native)
    key = key.replace(".scale_shift_table", ".modulation")
    return re.sub(r"\.norm([23])\.", lambda m: f".norm{5 - int(m.group(1))}.", key)


def native_vae_key(key: str, *, residual: bool, res_blocks: int = 2) -> str:
    """diffusers AutoencoderKLWan -> native Wan2.1 (flat stages) or Wan2.2 (nested stages) VAE names."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key.replace("post_quant_conv.", "conv2.").replace("quant_conv.", "conv1.")
    for coder in ("encoder", "decoder"):
        for diffusers_name, native in (("conv_in.", "conv1."), ("norm_out.", "head.0."), ("conv_out.", "head.2."),
                                       ("mid_block.resnets.0.", "middle.0."), ("mid_block.attentions.0.", "middle.1."),
                                       ("mid_block.resnets.1.", "middle.2.")):
            if key.startswith(f"{coder}.{diffusers_name}"):
                key = f"{coder}.{native}" + key[len(f"{coder}.{diffusers_name}"):]
                if native in ("conv1.", "head.0.", "head.2.", "middle.1."):
                    return key
    if residual:
        key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.downsamples.\1.downsamples.\2.", key)
        key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsampler\.",
                     rf"encoder.downsamples.\1.downsamples.{res_blocks}.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.upsamples.\1.upsamples.\2.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsampler\.", rf"decoder.upsamples.\1.upsamples.{res_blocks + 1}.",
                     key)
    else:
        key = key.replace("encoder.down_blocks.", "encoder.downsamples.")
        step = res_blocks + 2  # per decoder stage: res_blocks + 1 residual blocks and the upsampler
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                     lambda m: f"decoder.upsamples.{step * int(m.group(1)) + int(m.group(2))}.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.upsamples.{step * int(m.group(1)) + res_blocks + 1}.", key)
    for diffusers_name, native in ((".norm1.gamma", ".residual.0.gamma"), (".conv1.", ".residual.2."),
                                   (".norm2.gamma", ".residual.3.gamma"), (".conv2.", ".residual.6."),
                                   (".conv_shortcut.", ".shortcut.")):
        key = key.replace(diffusers_name, native)
    return key


# VAEs with the real Wan stage structure (two residual blocks per stage, channel multipliers 1, 2, 4, 4), which
# diffusers' converter of the native layout assumes, at a tiny width.
TINY_NATIVE_VAES = {
    "2.1": dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
    "2.2": dict(base_dim=8, decoder_base_dim=16, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                patch_size=2, scale_factor_spatial=16),
}
TINY_CLIP = dict(hidden_size=WAN_IMAGE_DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 image_size=32, patch_size=8)


def _contiguous(state):
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_native_wan(path, model, *, prefix: str = "", config: dict | None = None):
    """`model` as one native-layout safetensors file (optionally with ComfyUI's key prefix and a sidecar json)."""
    save_file(_contiguous({prefix + native_transformer_key(k): v for k, v in model.state_dict().items()}), str(path))
    if config is not None:
        path.with_suffix(".json").write_text(json.dumps(config))
    return path


def save_native_vae(path, vae, version: str, *, sidecar: bool = True):
    state = {native_vae_key(k, residual=version == "2.2"): v for k, v in vae.state_dict().items()}
    save_file(_contiguous(state), str(path))
    if sidecar:
        path.with_suffix(".json").write_text(json.dumps(TINY_NATIVE_VAES[version]))
    return path


def clip_file_state(model):
    """A CLIP vision tower's tensors named as in ComfyUI's clip_vision_h.safetensors (``vision_model.*`` plus the
    projection of CLIPVisionModelWithProjection)."""
    state = {"vision_model." + k.removeprefix("vision_model."): v for k, v in model.state_dict().items()}
    return _contiguous({**state, "visual_projection.weight": torch.zeros(8, WAN_IMAGE_DIM)})


def tiny_clip(seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).eval()


def _run(backbone, layout):
    inputs = tiny_wan_inputs(layout)
    with torch.no_grad():
        return backbone(hidden_states=inputs["hidden_states"].permute(0, 2, 1, 3, 4), timestep=inputs["timestep"],
                        encoder_hidden_states=inputs["encoder_hidden_states"],
                        encoder_hidden_states_image=inputs.get("image_embeds"), return_dict=False)[0]


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


# --- transformers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout, prefix", [("wan-i2v", ""), ("wan-ti2v", "model.diffusion_model.")])
def test_a_native_wan_file_loads_to_the_same_model(tmp_path, layout, prefix):
    original = tiny_backbone(layout, seed=3)
    native = {native_transformer_key(k) for k in original.state_dict()}
    assert {"patch_embedding.weight", "blocks.0.self_attn.q.weight", "blocks.0.cross_attn.o.weight", "head.head.weight",
            "head.modulation", "blocks.1.ffn.0.weight", "time_embedding.0.weight"} <= native
    assert ("img_emb.proj.1.weight" in native) == (layout == "wan-i2v")
    path = save_native_wan(tmp_path / "wan.safetensors", original, prefix=prefix)
    with pytest.raises(CheckpointError, match=r"native layout.*match none of the bundled configs"):
        load_transformer_file(path)
    path.with_suffix(".json").write_text(json.dumps(tiny_backbone_config(layout)))
    loaded, kind, source = load_transformer_file(path)
    assert isinstance(loaded, WanTransformer3DModel)
    assert (kind.family, kind.variant, kind.layout, source) == ("wan", layout, "native", "sidecar json")
    assert torch.equal(_run(loaded, layout), _run(original, layout))
    again, _, source = load_transformer_file(path, config=tiny_backbone_config(layout))  # a config override
    assert source == "given config" and torch.equal(_run(again, layout), _run(original, layout))


def test_an_fp8_e4m3fn_file_as_comfyui_users_keep_them_loads_upcast(tmp_path):
    original = tiny_backbone("wan-ti2v", seed=11)
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in original.state_dict().items()}
    path = tmp_path / "wan_fp8_e4m3fn.safetensors"
    save_file(_contiguous({native_transformer_key(k): v for k, v in fp8.items()}), str(path))
    loaded, _, _ = load_transformer_file(path, config=tiny_backbone_config("wan-ti2v"), dtype=torch.float32)
    assert {v.dtype for v in loaded.state_dict().values()} == {torch.float32}
    original.load_state_dict({k: v.float() for k, v in fp8.items()})  # the same rounding, in fp32
    assert torch.equal(_run(loaded, "wan-ti2v"), _run(original, "wan-ti2v"))


def test_a_diffusers_layout_wan_file_loads_too(tmp_path):
    original = tiny_backbone("wan-i2v", seed=4)
    path = tmp_path / "wan_diffusers.safetensors"
    save_file(_contiguous(original.state_dict()), str(path))
    loaded, kind, _ = load_transformer_file(path, config=tiny_backbone_config("wan-i2v"))
    assert kind.layout == "diffusers" and torch.equal(_run(loaded, "wan-i2v"), _run(original, "wan-i2v"))


def test_a_file_that_does_not_fit_its_config_or_is_scaled_fp8_is_refused_before_loading(tmp_path):
    original = tiny_backbone("wan-i2v")
    path = save_native_wan(tmp_path / "wan.safetensors", original, config=tiny_backbone_config("wan-i2v", num_layers=3))
    with pytest.raises(CheckpointError, match=r"do not fit the config \(sidecar json\).*missing \['blocks\.2"):
        load_transformer_file(path)
    state = {native_transformer_key(k): v for k, v in original.state_dict().items()}
    state["blocks.0.self_attn.q.scale_weight"] = torch.ones(1)
    save_file(_contiguous(state), str(path))
    path.with_suffix(".json").write_text(json.dumps(tiny_backbone_config("wan-i2v")))
    with pytest.raises(CheckpointError, match="scaled fp8"):
        load_transformer_file(path)


@pytest.mark.parametrize("name, variant, layers, inner, channels", [
    ("wan2.1-i2v-14b", "wan-i2v", 40, 5120, 36), ("wan2.2-ti2v-5b", "wan-ti2v", 30, 3072, 48)])
def test_the_real_wan_configs_are_recognised_from_native_weights(name, variant, layers, inner, channels):
    with torch.device("meta"):
        model = WanTransformer3DModel(**backbone_config(name))
    native = {"model.diffusion_model." + native_transformer_key(k): v for k, v in model.state_dict().items()}
    kind = identify(_shapes(native))
    assert (kind.family, kind.variant, kind.layout) == ("wan", variant, "native")
    assert f"{layers} blocks, inner dim {inner}, {channels} input channels" in kind.summary
    assert ("CLIP image embedding" in kind.summary) == (variant == "wan-i2v")
    converted = wan_transformer_to_diffusers({k.removeprefix("model.diffusion_model."): v for k, v in native.items()})
    assert match_bundled_config(_shapes(converted)) == name


def test_family_and_variant_come_from_the_key_sets():
    i2v = _shapes({native_transformer_key(k): v for k, v in tiny_backbone("wan-i2v").state_dict().items()})
    ti2v = _shapes(tiny_backbone("wan-ti2v").state_dict())  # diffusers names
    cog = _shapes(tiny_backbone("1.0").state_dict())
    assert (identify(i2v).variant, identify(i2v).layout) == ("wan-i2v", "native")
    assert (identify(ti2v).variant, identify(ti2v).layout) == ("wan-ti2v", "diffusers")
    assert identify(cog).family == "cogvideox" and identify(cog).kind == "transformer"
    assert identify(_shapes(tiny_wan_vae("2.2").state_dict())).variant == "wan2.2-vae"
    assert identify(_shapes(clip_file_state(tiny_clip()))).kind == "clip_vision"
    no_image = {k: v for k, v in i2v.items() if not k.startswith("img_emb.")}
    with pytest.raises(CheckpointError, match="36 input channels.*without a CLIP image embedding.*I2V-A14B"):
        identify(no_image)  # Wan2.2 I2V-A14B's experts: the 2.1 I2V input layout, no CLIP
    odd = dict(i2v, **{"patch_embedding.weight": (24, 20, 1, 2, 2)})
    with pytest.raises(CheckpointError, match="20 input channels.*neither image-to-video"):
        identify(odd)


@pytest.mark.parametrize("keys, found", [
    (["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"], "Flux"),
    (["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.transformer.x"], "SDXL"),
    (["double_blocks.0.img_attn.qkv.weight", "txt_in.individual_token_refiner.blocks.0.norm1.weight"], "HunyuanVideo"),
    (["blocks.0.self_attn.q.weight", "patch_embedding.weight", "head.head.weight", "vace_blocks.0.after_proj.bias"],
     "Wan VACE"),
    (["encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"], "T5/UMT5 text encoder.*CLIP Loader"),
    (["visual.transformer.resblocks.0.attn.in_proj_weight"], "open_clip layout"),
    (["some.unknown.weight"], "not a model DirectAnimator knows"),
])
def test_state_dicts_of_other_families_are_named(tmp_path, keys, found):
    shapes = {k: (4, 4) for k in keys}
    with pytest.raises(CheckpointError, match=found) as raised:
        identify(shapes)
    assert "Wan2.1-I2V-14B" in str(raised.value) or "CLIP" in str(raised.value)
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(4, 4) for k in keys}, str(path))
    with pytest.raises(CheckpointError, match=rf"other\.safetensors.*{found}"):
        load_model(path, dtype="fp32")


# --- VAEs and the CLIP vision tower -------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_a_native_wan_vae_file_loads_to_the_same_vae(tmp_path, version):
    torch.manual_seed(5)
    original = AutoencoderKLWan(**TINY_NATIVE_VAES[version]).eval()
    path = save_native_vae(tmp_path / "wan_vae.safetensors", original, version)
    loaded, kind, source = load_vae_file(path)
    assert (kind.variant, kind.layout, source) == (f"wan{version}-vae", "native", "sidecar json")
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        latent = original.encode(video).latent_dist.mean
        torch.testing.assert_close(loaded.encode(video).latent_dist.mean, latent, rtol=0, atol=0)
        torch.testing.assert_close(loaded.decode(latent).sample, original.decode(latent).sample, rtol=0, atol=0)
    path.with_suffix(".json").unlink()  # now the bundled real config is used, and the tiny weights do not fit it
    with pytest.raises(CheckpointError, match=rf"bundled config wan{version}-vae.*wan_vae\.json beside it"):
        load_vae_file(path)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_the_bundled_real_vae_configs_fit_the_native_layout(version):
    from directanimator.models.single_file import bundled_vae_config, wan_vae_to_diffusers

    with torch.device("meta"):
        real = AutoencoderKLWan(**bundled_vae_config(f"wan{version}-vae"))
    native = {native_vae_key(k, residual=version == "2.2"): v for k, v in real.state_dict().items()}
    kind = identify(_shapes(native))
    assert (kind.variant, kind.layout) == (f"wan{version}-vae", "native")
    assert f"{48 if version == '2.2' else 16} latent channels" in kind.summary
    assert _shapes(wan_vae_to_diffusers(native, kind.variant)) == _shapes(real.state_dict())


def test_a_clip_vision_file_in_the_transformers_layout_loads(tmp_path):
    original = tiny_clip(seed=6)
    path = tmp_path / "clip_vision_tiny.safetensors"
    save_file(clip_file_state(original), str(path))
    with pytest.raises(CheckpointError, match="CLIP ViT-H/14"):
        load_clip_vision_file(path)  # the bundled ViT-H/14 config does not fit a tiny tower
    path.with_suffix(".json").write_text(json.dumps(TINY_CLIP))
    loaded = load_clip_vision_file(path)
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = original(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        assert torch.equal(loaded(pixel_values=pixels, output_hidden_states=True).hidden_states[-2], expected)


def test_wan_single_files_load_through_load_model(tmp_path):
    """Transformer, VAE and CLIP vision as three single files, as a ComfyUI user keeps them."""
    original = tiny_backbone("wan-i2v", seed=7)
    backbone = save_native_wan(tmp_path / "wan_i2v.safetensors", original, config=tiny_backbone_config("wan-i2v"))
    torch.manual_seed(8)
    vae = save_native_vae(tmp_path / "wan_vae.safetensors", AutoencoderKLWan(**TINY_NATIVE_VAES["2.1"]).eval(), "2.1")
    clip = tmp_path / "clip_tiny.safetensors"
    save_file(clip_file_state(tiny_clip()), str(clip))
    clip.with_suffix(".json").write_text(json.dumps(TINY_CLIP))
    with pytest.raises(CheckpointError, match="has no VAE.*wan_2.1_vae"):
        load_model(backbone, dtype="fp32")
    model = load_model(backbone, vae=vae, image_encoder=clip, dtype="fp32")
    assert "single file" in model.info["backbone_origin"] and model.info["variant"] == "wan-i2v"
    assert model.null_text.shape == (1, WAN_TEXT_LEN, TEXT_DIM) and not model.null_text.any()
    assert model.scheduler_config["_class_name"] == "UniPCMultistepScheduler"  # Wan's default, not CogVideoX's
    assert isinstance(model.vae, AutoencoderKLWan) and model.image_encoder is not None
    # the bundled Wan2.1 processor, resized to the tiny tower's own 32 px (clip_vision_h's is 224)
    assert model.image_processor.crop_size == {"height": 32, "width": 32}
    assert torch.equal(_run(model.transformer.backbone, "wan-i2v"), _run(original, "wan-i2v"))


def test_a_wan21_file_named_for_720p_samples_with_the_720p_flow_shift(tmp_path):
    """The 480P and 720P files hold the same tensors: the published names tell them apart (480P: shift 3.0)."""
    shifts = {}
    vae = save_native_vae(tmp_path / "vae.safetensors", AutoencoderKLWan(**TINY_NATIVE_VAES["2.1"]).eval(), "2.1")
    for name in ("wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors", "wan2.1_i2v_720p_14B_fp8_e4m3fn.safetensors"):
        backbone = save_native_wan(tmp_path / name, tiny_backbone("wan-i2v", seed=7),
                                   config=tiny_backbone_config("wan-i2v"))
        model = load_model(backbone, vae=vae, dtype="fp32")
        shifts[name[:15]] = model.scheduler_config["flow_shift"]
    assert shifts == {"wan2.1_i2v_480p": 3.0, "wan2.1_i2v_720p": 5.0}


def test_wan22_ti2v_single_files_load_without_clip_and_refuse_the_wan21_vae(tmp_path):
    original = tiny_backbone("wan-ti2v", seed=9)
    backbone = save_native_wan(tmp_path / "ti2v.safetensors", original, config=tiny_backbone_config("wan-ti2v"))
    torch.manual_seed(10)
    vae22 = save_native_vae(tmp_path / "vae22.safetensors", AutoencoderKLWan(**TINY_NATIVE_VAES["2.2"]).eval(), "2.2")
    model = load_model(backbone, vae=vae22, dtype="fp32", require_image_encoder=True)  # TI2V takes no CLIP
    assert model.spec.variant == "wan-ti2v" and model.image_encoder is None
    assert model.vae.config.z_dim == 48 and model.scheduler_config["flow_shift"] == 5.0  # Wan2.2 TI2V's default
    assert torch.equal(_run(model.transformer.backbone, "wan-ti2v"), _run(original, "wan-ti2v"))
    vae21 = save_native_vae(tmp_path / "vae21.safetensors", AutoencoderKLWan(**TINY_NATIVE_VAES["2.1"]).eval(), "2.1")
    import directanimator.models.loader as loader

    with pytest.MonkeyPatch.context() as patch:  # refused from the headers, before the transformer loads
        patch.setattr(loader, "load_transformer_file", lambda *a, **k: pytest.fail("the transformer was loaded"))
        with pytest.raises(CheckpointError, match="48 latent channels.*makes 16.*Wan2.2 VAE"):
            load_model(backbone, vae=vae21, dtype="fp32")


def test_a_wan21_i2v_without_clip_is_refused_for_sampling_and_loads_for_training(tmp_path, caplog):
    backbone = save_native_wan(tmp_path / "i2v.safetensors", tiny_backbone("wan-i2v"),
                               config=tiny_backbone_config("wan-i2v"))
    vae = save_native_vae(tmp_path / "vae.safetensors", AutoencoderKLWan(**TINY_NATIVE_VAES["2.1"]).eval(), "2.1")
    import directanimator.models.loader as loader

    def no_loading(*args, **kwargs):
        raise AssertionError("the transformer was loaded before the missing CLIP tower was noticed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loader, "load_transformer_file", no_loading)
        patch.setattr(loader, "_load_folder", no_loading)
        with pytest.raises(CheckpointError, match="CLIP vision tower and none was found.*clip_vision_h"):
            load_model(backbone, vae=vae, dtype="fp32", require_image_encoder=True)
        folder = tmp_path / "folder"
        tiny_backbone("wan-i2v").save_pretrained(folder / "transformer")
        with pytest.raises(CheckpointError, match="wan-i2v embeds the reference"):
            load_model(folder, dtype="fp32", require_image_encoder=True)
    with caplog.at_level("WARNING", logger="directanimator.models.loader"):
        model = load_model(backbone, vae=vae, dtype="fp32")
    assert model.image_encoder is None and "clip_vision_h" in caplog.text
    from directanimator.errors import InputError

    with pytest.raises(InputError, match="no image encoder"):
        with model.use("image_encoder"):
            pass


def test_a_vae_of_other_latent_channels_is_refused(tmp_path):
    folder = tmp_path / "ti2v"
    tiny_backbone("wan-ti2v").save_pretrained(folder / "transformer")
    tiny_wan_vae("2.1").save_pretrained(folder / "vae")  # 16 channels for a 48-channel backbone
    with pytest.raises(CheckpointError, match="48 latent channels.*makes 16"):
        load_model(folder, dtype="fp32")


# --- diffusers folders and repo ids -------------------------------------------------------------------------------
def save_tiny_wan_folder(path, *, seed: int = 0):
    """A tiny Wan2.1 I2V diffusers folder: transformer/, vae/, scheduler/, image_encoder/, image_processor/."""
    from transformers import CLIPImageProcessor

    from directanimator.models.configs import default_scheduler_config

    tiny_backbone("wan-i2v", seed=seed).save_pretrained(path / "transformer")
    tiny_wan_vae("2.1", seed=seed).save_pretrained(path / "vae")
    (path / "scheduler").mkdir(parents=True)
    scheduler = dict(default_scheduler_config("wan2.1-i2v-14b-720p"))
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    tiny_clip(seed=seed).save_pretrained(path / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path / "image_processor")
    return path


def _check_wan_folder_model(model, seed: int = 0):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    assert model.spec.variant == "wan-i2v" and isinstance(model.vae, AutoencoderKLWan)
    assert isinstance(model.image_encoder, CLIPVisionModel) and isinstance(model.image_processor, CLIPImageProcessor)
    assert model.image_processor.crop_size == {"height": 32, "width": 32}  # the folder's, not the bundled one
    expected = tiny_clip(seed=seed).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.image_encoder.state_dict().items())
    assert model.scheduler_config["flow_shift"] == 5.0  # the folder's scheduler
    assert model.null_text.shape == (1, WAN_TEXT_LEN, TEXT_DIM)
    expected = _run(tiny_backbone("wan-i2v", seed=seed), "wan-i2v")
    assert torch.equal(_run(model.transformer.backbone, "wan-i2v"), expected)


def test_a_diffusers_wan_folder_loads_its_clip_parts(tmp_path):
    model = load_model(save_tiny_wan_folder(tmp_path / "wan"), dtype="fp32", offload=True)
    _check_wan_folder_model(model)
    with model.use("image_encoder") as encoder:
        assert encoder is model.image_encoder


def test_a_wan_repo_id_loads_from_the_hugging_face_cache_offline(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--wan"
    save_tiny_wan_folder(repo / "snapshots" / commit, seed=1)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = load_model("tiny-org/wan", cache_dir=str(tmp_path), local_files_only=True, dtype="fp32")
    assert "Hugging Face repo" in model.info["backbone_origin"]
    _check_wan_folder_model(model, seed=1)


def test_a_repo_snapshot_takes_the_clip_parts_and_nothing_else(tmp_path, monkeypatch):
    import huggingface_hub

    from directanimator.models.loader import download_backbone

    asked = {}

    def snapshot(repo_id, **kwargs):
        asked.update(kwargs, repo_id=repo_id)
        return str(save_tiny_wan_folder(tmp_path / "snapshot"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    folder = download_backbone("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", local_files_only=False)
    patterns = asked["allow_patterns"]
    assert {"image_encoder/*.safetensors", "image_encoder/*.json", "image_processor/*.json"} <= set(patterns)
    assert not any(p.startswith(("text_encoder", "tokenizer")) for p in patterns)  # prompts come from elsewhere
    assert load_model(folder, dtype="fp32").image_encoder is not None


def test_a_bf16_wan_keeps_the_modules_diffusers_keeps_in_fp32(tmp_path):
    """load_model(dtype=bf16) leaves Wan's rotary table, time embedder, modulation tables and norms in fp32, as
    WanTransformer3DModel.from_pretrained(torch_dtype=bf16) does, and the rest (CueFusion included) in bf16."""
    folder = save_tiny_wan_folder(tmp_path / "wan")
    model = load_model(folder, dtype="bf16")
    reference = WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=torch.bfloat16)
    ours = {name.replace(".block.", "."): p.dtype for name, p in model.transformer.backbone.named_parameters()
            if ".fusion." not in name}
    assert ours == {name: p.dtype for name, p in reference.named_parameters()}
    assert model.transformer.backbone.rope.freqs_cos.dtype == torch.float32
    assert {p.dtype for p in model.transformer.cue_parameters()} == {torch.bfloat16}
    assert torch.float32 in set(ours.values()) and torch.bfloat16 in set(ours.values())


def test_a_clip_vision_file_gets_a_processor_of_its_own_image_size(tmp_path):
    """The processor of a single CLIP file resizes to the tower's own image size (224 px for clip_vision_h, the
    bundled processor's), so a tower of another size embeds without a shape error."""
    from directanimator.models.single_file import clip_image_processor

    assert clip_image_processor().crop_size == {"height": 224, "width": 224}
    original = tiny_clip(seed=6)
    path = tmp_path / "clip_vision_tiny.safetensors"
    save_file(clip_file_state(original), str(path))
    path.with_suffix(".json").write_text(json.dumps(TINY_CLIP))
    encoder = load_clip_vision_file(path)
    processor = clip_image_processor(encoder.config.image_size)
    pixels = processor(images=torch.rand(3, 48, 40), return_tensors="pt", do_rescale=False).pixel_values
    assert pixels.shape[-2:] == (encoder.config.image_size, encoder.config.image_size)
    with torch.no_grad():
        assert encoder(pixel_values=pixels).last_hidden_state.shape[0] == 1


def test_a_bf16_single_wan_file_keeps_the_rotary_table_at_full_precision(tmp_path):
    """from_single_file(torch_dtype=bf16) rounds Wan's rotary table; the loader rebuilds it, so a single file and
    from_pretrained give the same table (the table carries no weights)."""
    original = tiny_backbone("wan-i2v", seed=3)
    path = tmp_path / "wan.safetensors"
    save_native_wan(path, original, config=tiny_backbone_config("wan-i2v"))
    loaded, _, _ = load_transformer_file(path, dtype=torch.bfloat16)
    original.save_pretrained(tmp_path / "folder")
    reference = WanTransformer3DModel.from_pretrained(tmp_path / "folder", torch_dtype=torch.bfloat16)
    assert loaded.rope.freqs_cos.dtype == reference.rope.freqs_cos.dtype == torch.float32
    assert torch.equal(loaded.rope.freqs_cos, reference.rope.freqs_cos)
    assert torch.equal(loaded.rope.freqs_sin, reference.rope.freqs_sin)
