"""Checkpoints and loading: safetensors round trips (cue-only, LoRA, full), backbone sources, and clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from directanimator.errors import CheckpointError, InputError
from directanimator.models import load_model, read_checkpoint, save_checkpoint
from directanimator.models.checkpoint import FORMAT_VERSION
from directanimator.models.loader import match_bundled_config
from tests.tiny import (
    TEXT_DIM,
    TEXT_LEN,
    add_random_lora,
    save_tiny_diffusers,
    tiny_animator,
    tiny_backbone,
    tiny_backbone_config,
    tiny_cue_latents,
    tiny_inputs,
)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_diffusers(tmp_path_factory.mktemp("tiny") / "cogvideox-tiny", "1.0", seed=0)


def _predict(model, layout="1.0"):
    with torch.no_grad():
        return model(**tiny_inputs(layout), cues=tiny_cue_latents())




def test_cue_only_round_trip_through_load_model(tiny_folder, tmp_path):
    model = tiny_animator("1.0", seed=0, randomize_cues=True)
    null_text = torch.randn(1, TEXT_LEN, TEXT_DIM)
    path = save_checkpoint(tmp_path / "cues.safetensors", model, null_text=null_text, backbone_name="tiny",
                           cue_config={"cutoff": 0.2}, extra={"step": 7})
    loaded = load_model(tiny_folder, path, dtype="fp32")
    torch.testing.assert_close(_predict(loaded.transformer), _predict(model), rtol=0, atol=1e-6)
    assert torch.equal(loaded.null_text, null_text)
    assert loaded.cue_config == {"cutoff": 0.2}
    assert loaded.info["weights"] == "none" and loaded.info["extra"] == {"step": 7}
    assert loaded.scheduler_config["prediction_type"] == "v_prediction"


def test_header_carries_format_version_config_and_backbone_fingerprint(tmp_path):
    model = tiny_animator("1.5")
    path = save_checkpoint(tmp_path / "c.safetensors", model)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "directanimator" and int(meta["format_version"]) == FORMAT_VERSION
    fp = json.loads(meta["fingerprint"])
    assert fp == {"family": "cogvideox", "inner_dim": 32, "num_layers": 2, "patch_size": 2, "patch_size_t": 2,
                  "in_channels": 32, "out_channels": 16, "text_embed_dim": 32, "time_embed_dim": 16}
    config = json.loads(meta["config"])
    assert config["cue_fusion"]["modulation_rank"] == 8 and config["backbone"]["ofs_embed_dim"] == 16


def test_lora_round_trip(tiny_folder, tmp_path):
    model = tiny_animator("1.0", seed=0, randomize_cues=True)
    before = _predict(model)
    add_random_lora(model)
    with_lora = _predict(model)
    assert (with_lora - before).abs().max() > 1e-3
    path = save_checkpoint(tmp_path / "lora.safetensors", model)
    ckpt = read_checkpoint(path)
    assert ckpt.weights == "lora" and ckpt.lora_config["r"] == 4
    assert all(".block." not in k for k in ckpt.lora_state)  # stored under plain diffusers names
    assert not ckpt.backbone_state
    loaded = load_model(tiny_folder, path, dtype="fp32")
    torch.testing.assert_close(_predict(loaded.transformer), with_lora, rtol=0, atol=1e-6)


def test_full_weights_round_trip(tiny_folder, tmp_path):
    model = tiny_animator("1.0", seed=0, randomize_cues=True)
    with torch.no_grad():
        model.backbone.proj_out.weight.mul_(1.5)  # fine-tuned backbone differs from the folder's
    path = save_checkpoint(tmp_path / "full.safetensors", model, weights="full")
    assert "proj_out.weight" in read_checkpoint(path).backbone_state
    loaded = load_model(tiny_folder, path, dtype="fp32")
    torch.testing.assert_close(_predict(loaded.transformer), _predict(model), rtol=0, atol=1e-6)
    untouched = load_model(tiny_folder, dtype="fp32")
    assert (_predict(untouched.transformer) - _predict(model)).abs().max() > 1e-3


def test_checkpoint_for_another_backbone_is_refused(tiny_folder, tmp_path):
    other = save_checkpoint(tmp_path / "for15.safetensors", tiny_animator("1.5"), backbone_name="tiny-1.5")
    with pytest.raises(CheckpointError, match=r"for15\.safetensors.*tiny-1\.5.*patch_size_t"):
        load_model(tiny_folder, other, dtype="fp32")
    deeper = save_checkpoint(tmp_path / "deep.safetensors", tiny_animator("1.0", num_layers=3))
    with pytest.raises(CheckpointError, match=r"deep\.safetensors.*num_layers: 2 vs 3"):
        load_model(tiny_folder, deeper, dtype="fp32")


def test_truncated_or_garbage_files_name_the_file(tiny_folder, tmp_path):
    path = save_checkpoint(tmp_path / "ok.safetensors", tiny_animator("1.0", randomize_cues=True))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors.*truncated or corrupted"):
        load_model(tiny_folder, truncated, dtype="fp32")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors"):
        read_checkpoint(garbage)


def test_pickle_files_are_refused_before_loading(tiny_folder, tmp_path):
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickled)
    with pytest.raises(CheckpointError, match=r"model\.pt.*pickle.*safetensors"):
        load_model(tiny_folder, pickled)
    with pytest.raises(CheckpointError, match=r"weights\.bin.*safetensors"):
        load_model(tmp_path / "weights.bin")


def test_backbone_from_a_single_safetensors_file_with_sidecar_config(tmp_path):
    backbone = tiny_backbone("1.5", seed=2)
    weights = tmp_path / "tiny15.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    with pytest.raises(CheckpointError, match=r"tiny15\.safetensors.*match none of the bundled configs"):
        load_model(weights, vae=tmp_path, dtype="fp32")
    (tmp_path / "tiny15.json").write_text(json.dumps(tiny_backbone_config("1.5")))
    with pytest.raises(CheckpointError, match="has no VAE.*vae="):
        load_model(weights, dtype="fp32")
    save_tiny_diffusers(tmp_path / "vae_source", "1.0")
    loaded = load_model(weights, vae=tmp_path / "vae_source", dtype="fp32")
    assert "sidecar" in loaded.info["backbone_origin"]
    with torch.no_grad():
        expected = tiny_animator("1.5", seed=2)
        torch.testing.assert_close(_predict(loaded.transformer, "1.5"), _predict(expected, "1.5"), rtol=0, atol=1e-6)


def test_single_file_weights_are_matched_to_the_bundled_real_configs_by_shape():
    from diffusers import CogVideoXTransformer3DModel

    from directanimator.models import backbone_config

    for name in ("cogvideox-5b-i2v", "cogvideox1.5-5b-i2v"):
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in CogVideoXTransformer3DModel(**backbone_config(name)).state_dict().items()}
        assert match_bundled_config(shapes) == name
    shapes.pop("proj_out.bias")
    assert match_bundled_config(shapes) is None


def test_directanimator_checkpoint_given_as_backbone_is_explained(tmp_path):
    path = save_checkpoint(tmp_path / "da.safetensors", tiny_animator("1.0"))
    with pytest.raises(CheckpointError, match="DirectAnimator checkpoint.*Pass it as `checkpoint`"):
        load_model(path)


def test_repo_id_offline_and_not_cached_says_how_to_download(tmp_path):
    with pytest.raises(CheckpointError, match=r"not in the Hugging Face cache.*hf download tiny-org/absent"):
        load_model("tiny-org/absent", cache_dir=str(tmp_path), local_files_only=True)


def test_repo_id_loads_from_the_hugging_face_cache(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--animator"
    save_tiny_diffusers(repo / "snapshots" / commit, "1.0", seed=0)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = load_model("tiny-org/animator", cache_dir=str(tmp_path), local_files_only=True, dtype="fp32")
    assert "Hugging Face repo" in loaded.info["backbone_origin"]
    torch.testing.assert_close(_predict(loaded.transformer), _predict(tiny_animator("1.0", seed=0)), rtol=0, atol=1e-6)


def test_dtypes_devices_and_offload(tiny_folder):
    half = load_model(tiny_folder, dtype="bf16", offload=True)
    assert half.transformer.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16
    assert half.offload and half.transformer.device.type == "cpu"
    with half.use("transformer") as transformer:
        inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tiny_inputs().items()}
        out = transformer(**inputs, cues=tiny_cue_latents())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert load_model(tiny_folder, dtype="fp16").transformer.dtype == torch.float16
    with pytest.raises(InputError, match="'int8'.*bf16"):
        load_model(tiny_folder, dtype="int8")


def test_bare_transformer_folder_needs_a_vae(tmp_path):
    tiny_backbone("1.0").save_pretrained(tmp_path / "bare")
    with pytest.raises(CheckpointError, match="has no VAE"):
        load_model(tmp_path / "bare", dtype="fp32")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_model(tmp_path / "missing" / "folder", dtype="fp32")


@pytest.mark.parametrize("option", ["reference_in_every_frame", "residual_reference"])
def test_the_reference_options_travel_with_the_checkpoint(tiny_folder, tmp_path, option):
    from directanimator.models import CueFusionConfig, DirectAnimatorTransformer

    model = DirectAnimatorTransformer(tiny_backbone("1.0", seed=0), config=CueFusionConfig(
        modulation_rank=8, text_rank=8, **{option: True})).eval()
    path = save_checkpoint(tmp_path / "every.safetensors", model)
    loaded = load_model(tiny_folder, path, dtype="fp32")
    assert getattr(loaded.transformer.cue_config, option) is True
    assert getattr(load_model(tiny_folder, None, dtype="fp32").transformer.cue_config, option) is False


def test_weights_holding_nan_or_inf_are_refused_at_load_naming_the_tensor(tiny_folder, tmp_path):
    model = tiny_animator("1.0", randomize_cues=True)
    name, param = next((n, p) for n, p in model.named_parameters() if ".fusion." in n)
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    path = save_checkpoint(tmp_path / "diverged.safetensors", model)
    with pytest.raises(CheckpointError, match=r"diverged\.safetensors: tensor 'cue\..*' holds 1 NaN and 0 infinite"):
        load_model(tiny_folder, path, dtype="fp32")  # refused before the backbone loads, naming the tensor


def test_a_backbone_file_holding_inf_is_refused_naming_the_tensor(tmp_path):
    backbone = tiny_backbone("1.5", seed=2)
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    state["proj_out.weight"][0, 0] = float("inf")
    weights = tmp_path / "tiny15.safetensors"
    save_file(state, str(weights))
    (tmp_path / "tiny15.json").write_text(json.dumps(tiny_backbone_config("1.5")))
    with pytest.raises(CheckpointError, match=r"tiny15\.safetensors: tensor 'proj_out\.weight' holds 0 NaN and 1 inf"):
        load_model(weights, vae=tmp_path)
