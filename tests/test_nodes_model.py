"""The model nodes chain loader -> encode -> sampler -> decode on a tiny saved model, as a ComfyUI graph would."""

import os
from types import SimpleNamespace

import pytest
import torch

import nodes._comfy as comfy_shim
from directanimator.errors import CheckpointError, InputError
from directanimator.models import load_model
from nodes.model import (
    NO_CHECKPOINT,
    NO_FOLDER,
    DirectAnimatorDecode,
    DirectAnimatorEncode,
    DirectAnimatorModelLoader,
    DirectAnimatorSampler,
)
from tests.comfy_folders import comfy_model_folders
from tests.tiny import SMALL, TEXT_DIM, TEXT_LEN, save_tiny_diffusers, synthetic_triplet, tiny_animator


@pytest.fixture(autouse=True)
def like_comfyui():
    """ComfyUI executes every node under torch.inference_mode(); so do these tests."""
    with torch.inference_mode():
        yield


FRAMES = 7  # not 4k+1: padded to 9 and trimmed back
TINY = "cogvideox-tiny"  # in models/diffusers


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A ComfyUI models folder with a tiny diffusers model in models/diffusers, as the loader sees it."""
    with comfy_model_folders(tmp_path_factory.mktemp("comfy") / "models") as models:
        save_tiny_diffusers(models / "diffusers" / TINY, "1.5")
        yield models


@pytest.fixture(scope="module")
def model(models_dir):
    (loaded,) = DirectAnimatorModelLoader().load(TINY, "", NO_CHECKPOINT, "fp32", False)
    return loaded


@pytest.fixture(scope="module")
def conditioning(model):
    (cond,) = DirectAnimatorEncode().encode(model, synthetic_triplet(FRAMES, height=SMALL, width=SMALL), 12.0, False)
    return cond


def test_graph_returns_exactly_the_driving_frame_count_at_its_fps(model, conditioning):
    (latent,) = DirectAnimatorSampler().sample(model, conditioning, 2, 1.0, 7, "dpm", 0, 0, 1.0)
    assert latent["samples"].ndim == 5 and latent["samples"].shape[1] == 16  # ComfyUI video layout [B, C, F, h, w]
    frames, fps = DirectAnimatorDecode().decode(model, latent, False)
    assert frames.shape == (FRAMES, SMALL, SMALL, 3) and fps == 12.0
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0


def test_average_of_is_the_mean_of_consecutive_seeds(model, conditioning):
    run = lambda seed, **kw: DirectAnimatorSampler().sample(model, conditioning, 1, 1.0, seed, "ddim", 0, 0, 1.0,
                                                            **kw)[0]["samples"]
    torch.testing.assert_close(run(3, average_of=2), (run(3) + run(4)) / 2, rtol=0, atol=1e-6)


class RecordingBar:
    """Stands in for ComfyUI's ProgressBar: records every update_absolute(value, total)."""

    updates: list = []

    def __init__(self, total):
        RecordingBar.updates = []

    def update_absolute(self, value, total, preview=None):
        RecordingBar.updates.append((value, total))


@pytest.mark.parametrize("denoise, average_of", [(1.0, 2), (0.5, 3)])
def test_the_progress_bar_fills_over_the_steps_the_sampler_runs(model, conditioning, monkeypatch, denoise, average_of):
    monkeypatch.setattr(comfy_shim, "_cu", type("ComfyUtils", (), {"ProgressBar": RecordingBar}))
    (start,) = DirectAnimatorSampler().sample(model, conditioning, 3, 1.0, 1, "ddim", 0, 0, 1.0)
    RecordingBar.updates = []
    DirectAnimatorSampler().sample(model, conditioning, 4, 1.0, 7, "ddim", 0, 0, denoise, latent=start,
                                   average_of=average_of)
    updates = RecordingBar.updates
    runs = len(updates) // average_of
    assert runs >= 1 and len(updates) == runs * average_of
    assert updates == [(i + 1, len(updates)) for i in range(len(updates))]  # one per step, ending full


def test_same_seed_same_latent_and_text_conditioning_changes_it(model, conditioning):
    run = lambda cond, seed: DirectAnimatorSampler().sample(model, cond, 2, 1.0, seed, "ddim", 0, 0, 1.0)[0]
    a, b = run(conditioning, 3)["samples"], run(conditioning, 3)["samples"]
    assert torch.equal(a, b)
    text = [[torch.randn(1, TEXT_LEN + 3, TEXT_DIM), {"pooled_output": None}]]
    (with_text,) = DirectAnimatorEncode().encode(model, synthetic_triplet(FRAMES, height=SMALL, width=SMALL),
                                                 12.0, False, text=text)
    assert with_text["text"].shape == (1, TEXT_LEN, TEXT_DIM)
    assert not torch.equal(run(with_text, 3)["samples"], a)


def test_text_conditioning_of_another_width_is_refused(model):
    text = [[torch.randn(1, 4, TEXT_DIM + 1), {}]]
    with pytest.raises(InputError, match="T5-XXL"):
        DirectAnimatorEncode().encode(model, synthetic_triplet(FRAMES, height=SMALL, width=SMALL), 12.0, False,
                                      text=text)


def test_cancel_stops_sampling_at_the_next_step(model, conditioning, monkeypatch):
    steps = []

    def cancel_on_second_step():
        steps.append(1)
        if len(steps) == 2:
            raise InterruptedError("cancelled")

    monkeypatch.setattr(comfy_shim, "check_interrupted", cancel_on_second_step)
    with pytest.raises(InterruptedError):
        DirectAnimatorSampler().sample(model, conditioning, 5, 1.0, 0, "dpm", 0, 0, 1.0)
    assert len(steps) == 2


def test_cross_field_validation_before_execution():
    message = DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=NO_FOLDER, repo_id=" ")
    assert isinstance(message, str) and "repo id" in message
    assert "overlap" in DirectAnimatorSampler.VALIDATE_INPUTS(window=4, overlap=4)
    assert DirectAnimatorSampler.VALIDATE_INPUTS(window=0, overlap=3) is True


def test_denoise_below_one_needs_a_latent(model, conditioning):
    with pytest.raises(InputError, match="latent to refine"):
        DirectAnimatorSampler().sample(model, conditioning, 4, 1.0, 0, "dpm", 0, 0, 0.5)


def test_model_folders_register_into_comfyuis_own_folder_table(monkeypatch, tmp_path):
    # ComfyUI keeps ["folder"] (a list) as the extensions of "diffusers" and sets for file folders.
    table = {"diffusers": ([str(tmp_path / "diffusers")], ["folder"]),
             "sams": ([str(tmp_path / "elsewhere")], {".pth"})}
    fake = type("folder_paths", (), {"models_dir": str(tmp_path), "folder_names_and_paths": table})
    monkeypatch.setattr(comfy_shim, "_fp", fake)
    comfy_shim.register_model_folder("diffusers", "diffusers", set())
    comfy_shim.register_model_folder("sams", "sams", {".pth", ".safetensors"})
    comfy_shim.register_model_folder("directanimator", "directanimator", {".safetensors"})
    assert table["diffusers"] == ([str(tmp_path / "diffusers")], ["folder"])
    assert table["sams"] == ([str(tmp_path / "elsewhere"), str(tmp_path / "sams")], {".pth", ".safetensors"})
    assert table["directanimator"] == ([str(tmp_path / "directanimator")], {".safetensors"})


def test_loader_is_unchanged_until_a_model_file_changes(models_dir):
    folder = save_tiny_diffusers(models_dir / "diffusers" / "changing", "1.5")
    stamp = lambda: DirectAnimatorModelLoader.IS_CHANGED("changing", "", NO_CHECKPOINT, "fp32", False)
    first = stamp()
    assert stamp() == first
    config = folder / "transformer" / "config.json"
    config.write_text(config.read_text() + " ")
    assert stamp() != first
    assert DirectAnimatorModelLoader.IS_CHANGED("changing", "", NO_CHECKPOINT, "fp32", True) != stamp()


def test_offload_keeps_the_weights_on_the_cpu_between_runs_and_onloads_per_part(models_dir, monkeypatch):
    (model,) = DirectAnimatorModelLoader().load(TINY, "", NO_CHECKPOINT, "fp32", True)
    used = []
    original = type(model).use

    def spy(self, part):
        used.append(part)
        return original(self, part)

    monkeypatch.setattr(type(model), "use", spy)
    (cond,) = DirectAnimatorEncode().encode(model, synthetic_triplet(FRAMES, height=SMALL, width=SMALL), 12.0, False)
    (latent,) = DirectAnimatorSampler().sample(model, cond, 1, 1.0, 0, "ddim", 0, 0, 1.0)
    DirectAnimatorDecode().decode(model, latent, False)
    assert used == ["vae", "transformer", "vae"]
    assert model.offload
    devices = {p.device.type for p in [*model.transformer.parameters(), *model.vae.parameters()]}
    assert devices == {"cpu"}


def test_validation_keeps_comfyuis_range_checks_and_checks_what_it_skips(models_dir):
    assert DirectAnimatorSampler.VALIDATE_INPUTS(window=None, overlap=2) is True  # linked: checked at run time
    assert "up to" in DirectAnimatorSampler.VALIDATE_INPUTS(window=999, overlap=2)
    assert DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=TINY, repo_id="", checkpoint=NO_CHECKPOINT) is True
    assert DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=None, repo_id=None, checkpoint=None) is True  # linked


def test_bundled_demo_model_is_offered_and_loads_from_the_pack(tiny_root, tmp_path_factory, monkeypatch):
    import nodes.model as model_nodes

    monkeypatch.setattr(model_nodes, "BUNDLED_DIR", tmp_path_factory.mktemp("none") / "models" / "demo")
    required = DirectAnimatorModelLoader.INPUT_TYPES()["required"]
    assert model_nodes.BUNDLED not in required["backbone"][0] and model_nodes.BUNDLED not in required["checkpoint"][0]
    assert "missing" in DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=model_nodes.BUNDLED, repo_id="")

    monkeypatch.setattr(model_nodes, "BUNDLED_DIR", tiny_root / "models" / "demo")
    required = DirectAnimatorModelLoader.INPUT_TYPES()["required"]
    assert model_nodes.BUNDLED in required["backbone"][0] and model_nodes.BUNDLED in required["checkpoint"][0]
    assert DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=model_nodes.BUNDLED, repo_id="") is True
    (loaded,) = DirectAnimatorModelLoader().load(model_nodes.BUNDLED, "", model_nodes.BUNDLED, "fp32", False)
    bare = load_model(model_nodes.BUNDLED_DIR, dtype="fp32")  # the backbone without the checkpoint
    cue = dict(loaded.transformer.named_parameters())
    assert any(("cue" in name or "fusion" in name) and p.abs().max() > 0 for name, p in cue.items())
    assert loaded.cue_config and not bare.cue_config


# --- model names: only what the model folders list ---------------------------------------------------------------

OUTSIDE = ["/", "/etc", "../../etc", "..", "diffusers/../..", "C:\\Windows", "\\\\server\\share", "./x", ""]


def test_backbone_outside_models_diffusers_is_refused_naming_the_folder_even_when_it_is_empty(tmp_path):
    outside = save_tiny_diffusers(tmp_path / "elsewhere", "1.5")  # a loadable model, but not in models/diffusers
    with comfy_model_folders(tmp_path / "models"):  # models/diffusers empty
        for name in [str(outside), "../../elsewhere", *OUTSIDE]:
            message = DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=name, repo_id="")
            assert isinstance(message, str) and "ComfyUI/models/diffusers" in message, name
            with pytest.raises(InputError, match="ComfyUI/models/diffusers"):
                DirectAnimatorModelLoader().load(name, "", NO_CHECKPOINT, "fp32", False)
        save_tiny_diffusers(tmp_path / "models" / "diffusers" / "mine", "1.5")
        message = DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone="other", repo_id="")
        assert "mine" in message  # names what the folder has
        assert DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone="mine", repo_id="") is True


def test_refusals_say_the_same_whether_or_not_the_path_exists(tmp_path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "weights.safetensors").write_bytes(b"x" * 1234)
    with comfy_model_folders(tmp_path / "models"):
        for existing, missing in [(tmp_path / "secret", tmp_path / "nothing"),
                                  (tmp_path / "secret" / "weights.safetensors", tmp_path / "secret" / "no.safetensors")]:
            said = [DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=NO_FOLDER, repo_id="a/b", checkpoint=str(p))
                    for p in (existing, missing)] + [
                    DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=str(p), repo_id="", checkpoint=NO_CHECKPOINT)
                    for p in (existing, missing)]
            assert said[0].replace(str(existing), "X") == said[1].replace(str(missing), "X")
            assert said[2].replace(str(existing), "X") == said[3].replace(str(missing), "X")
            assert not any("1234" in message for message in said)


def test_checkpoint_must_be_a_file_listed_in_models_directanimator(tmp_path):
    from directanimator.models import save_checkpoint

    with comfy_model_folders(tmp_path / "models") as models:
        save_tiny_diffusers(models / "diffusers" / TINY, "1.5")
        outside = tmp_path / "outside.safetensors"
        save_checkpoint(outside, tiny_animator("1.5"), weights="none", backbone_name=TINY)
        for name in [str(outside), "../../outside.safetensors", *OUTSIDE]:
            message = DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=TINY, repo_id="", checkpoint=name)
            assert isinstance(message, str) and "ComfyUI/models/directanimator" in message, name
            with pytest.raises(InputError, match="ComfyUI/models/directanimator"):
                DirectAnimatorModelLoader().load(TINY, "", name, "fp32", False)
        (models / "directanimator" / "sub").mkdir()
        save_checkpoint(models / "directanimator" / "sub" / "mine.safetensors", tiny_animator("1.5"),
                        weights="none", backbone_name=TINY)
        assert DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=TINY, repo_id="", checkpoint="sub/mine.safetensors")


@pytest.fixture
def stat_log(monkeypatch):
    """Every path os.stat (and so os.path.isfile/isdir/exists), os.scandir (os.walk) or os.listdir is asked about."""
    seen = []
    stat, scandir, listdir = os.stat, os.scandir, os.listdir

    def logged_stat(path, *args, **kwargs):
        seen.append(os.fspath(path))
        return stat(path, *args, **kwargs)

    def logged_scandir(path=".", *args, **kwargs):
        seen.append(os.fspath(path))
        return scandir(path, *args, **kwargs)

    def logged_listdir(path="."):
        seen.append(os.fspath(path))
        return listdir(path)

    monkeypatch.setattr(os, "stat", logged_stat)
    monkeypatch.setattr(os, "scandir", logged_scandir)
    monkeypatch.setattr(os, "listdir", logged_listdir)
    return seen


def test_is_changed_never_looks_outside_the_model_folders(tmp_path, stat_log):
    outside = save_tiny_diffusers(tmp_path / "elsewhere", "1.5")  # a loadable model, but not in models/diffusers
    with comfy_model_folders(tmp_path / "models") as models:
        save_tiny_diffusers(models / "diffusers" / TINY, "1.5")
        stat_log.clear()
        for name in [str(outside), "../../elsewhere", str(tmp_path), "/", "../..", *OUTSIDE]:
            DirectAnimatorModelLoader.IS_CHANGED(name, "", name, "fp32", False)
            DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=name, repo_id="")
        stamp = DirectAnimatorModelLoader.IS_CHANGED(TINY, "", NO_CHECKPOINT, "fp32", False)
    inside = os.path.join(str(models), "")
    assert stat_log and all(os.path.abspath(p).startswith(inside) for p in stat_log), \
        sorted({p for p in stat_log if not os.path.abspath(p).startswith(inside)})
    assert any(p.startswith(str(models / "diffusers" / TINY)) for p in stat_log) and TINY in stamp


@pytest.mark.parametrize("repo_id", ["THUDM/CogVideoX-5b-I2V", "a/b", "user_1/model.v2-final"])
def test_a_repo_id_of_the_form_owner_name_passes_validation(repo_id):
    assert DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=NO_FOLDER, repo_id=repo_id) is True


@pytest.mark.parametrize("repo_id", ["/etc", "../../etc", "a/../b", "a/b/c", "owner/", "/owner/name", "owner/na me",
                                     "-owner/name", "owner/name.", "own--er/name", "owner/name.git", "C:\\x/y",
                                     "owner\\name", "owner/" + "n" * 97])
def test_a_repo_id_not_of_the_form_owner_name_is_refused_before_anything_downloads(repo_id, monkeypatch):
    import nodes.model as model_nodes

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded")

    monkeypatch.setattr(model_nodes, "download_backbone", no_download, raising=False)
    message = DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=NO_FOLDER, repo_id=repo_id)
    assert isinstance(message, str) and "owner/name" in message
    with pytest.raises(InputError, match="owner/name"):
        DirectAnimatorModelLoader().load(NO_FOLDER, repo_id, NO_CHECKPOINT, "fp32", False)


def test_a_repo_id_is_never_read_as_a_folder_relative_to_comfyuis_working_directory(tmp_path, monkeypatch):
    save_tiny_diffusers(tmp_path / "output" / "model", "1.5")  # e.g. something another node wrote
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="Hugging Face cache"):
        DirectAnimatorModelLoader().load(NO_FOLDER, "output/model", NO_CHECKPOINT, "fp32", False)


# --- Wan single files from ComfyUI's own model folders ------------------------------------------------------------

def _wan_files(models):
    """A tiny Wan2.1 I2V as ComfyUI users keep it: native transformer in diffusion_models, VAE in vae, CLIP vision in
    clip_vision (each with a sidecar config, since tiny shapes match no bundled config)."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    from tests.test_loader_wan import (
        TINY_CLIP,
        TINY_NATIVE_VAES,
        clip_file_state,
        save_native_vae,
        save_native_wan,
        tiny_clip,
    )
    from tests.tiny import tiny_backbone, tiny_backbone_config

    (models / "diffusion_models" / "wan").mkdir(parents=True, exist_ok=True)
    save_native_wan(models / "diffusion_models" / "wan" / "tiny_i2v.safetensors", tiny_backbone("wan-i2v"),
                    config=tiny_backbone_config("wan-i2v"))
    torch.manual_seed(0)
    save_native_vae(models / "vae" / "tiny_wan_vae.safetensors", AutoencoderKLWan(**TINY_NATIVE_VAES["2.1"]), "2.1")
    save_file(clip_file_state(tiny_clip()), str(models / "clip_vision" / "tiny_clip.safetensors"))
    (models / "clip_vision" / "tiny_clip.json").write_text(__import__("json").dumps(TINY_CLIP))
    return dict(diffusion_model="wan/tiny_i2v.safetensors", vae="tiny_wan_vae.safetensors",
                clip_vision="tiny_clip.safetensors")


def test_the_loader_picks_wan_single_files_from_comfyuis_own_folders(tmp_path, monkeypatch):
    from nodes.model import NO_FILE

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with comfy_model_folders(tmp_path / "models") as models:
        files = _wan_files(models)
        optional = DirectAnimatorModelLoader.INPUT_TYPES()["optional"]
        for name, value in files.items():
            assert value in optional[name][0] and optional[name][1]["default"] == NO_FILE
        assert not any(name.endswith(".json") for name in optional["vae"][0])  # sidecar configs are not offered
        assert DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=NO_FOLDER, repo_id="", checkpoint=NO_CHECKPOINT,
                                                         **files) is True
        (model,) = DirectAnimatorModelLoader().load(NO_FOLDER, "", NO_CHECKPOINT, "fp32", False, **files)
        assert model.spec.variant == "wan-i2v" and model.image_encoder is not None
        assert "single file" in model.info["backbone_origin"]
        with pytest.raises(CheckpointError, match="CLIP vision.*clip_vision_h"):  # Wan2.1 I2V cannot sample without
            DirectAnimatorModelLoader().load(NO_FOLDER, "", NO_CHECKPOINT, "fp32", False,
                                             diffusion_model=files["diffusion_model"], vae=files["vae"])
        stamp = lambda: DirectAnimatorModelLoader.IS_CHANGED(NO_FOLDER, "", NO_CHECKPOINT, "fp32", False, **files)
        first = stamp()
        (models / "vae" / "tiny_wan_vae.safetensors").write_bytes(
            (models / "vae" / "tiny_wan_vae.safetensors").read_bytes() + b" ")
        assert stamp() != first
        second = stamp()
        sidecar = models / "diffusion_models" / "wan" / "tiny_i2v.json"
        sidecar.write_text(sidecar.read_text() + " ")  # the config the loader reads beside the file
        assert stamp() != second


def test_single_files_outside_comfyuis_folders_are_refused_naming_the_folder(tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"x" * 64)
    with comfy_model_folders(tmp_path / "models"):
        for name, folder in (("diffusion_model", "diffusion_models"), ("vae", "vae"), ("clip_vision", "clip_vision")):
            for value in [str(outside), "../../elsewhere.safetensors", *OUTSIDE]:
                message = DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=NO_FOLDER, repo_id="a/b",
                                                                    checkpoint=NO_CHECKPOINT, **{name: value})
                assert isinstance(message, str) and f"ComfyUI/models/{folder}" in message, (name, value)
                with pytest.raises(InputError, match=f"ComfyUI/models/{folder}"):
                    DirectAnimatorModelLoader().load(NO_FOLDER, "a/b", NO_CHECKPOINT, "fp32", False, **{name: value})


def test_a_wan_folder_runs_through_the_node_graph_with_its_own_samplers(tmp_path, monkeypatch):
    from tests.test_loader_wan import save_tiny_wan_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    choices, options = DirectAnimatorSampler.INPUT_TYPES()["required"]["scheduler"]
    assert {"auto", "dpm", "unipc", "euler"} <= set(choices) and options["default"] == "auto"
    with comfy_model_folders(tmp_path / "models") as models:
        save_tiny_wan_folder(models / "diffusers" / "wan-tiny")
        (model,) = DirectAnimatorModelLoader().load("wan-tiny", "", NO_CHECKPOINT, "fp32", False)
    text = [[torch.randn(1, 7, TEXT_DIM), {}]]
    (cond,) = DirectAnimatorEncode().encode(model, synthetic_triplet(FRAMES, height=SMALL, width=SMALL), 12.0, False,
                                            text=text)
    assert cond["text"].shape == (1, 512, TEXT_DIM)  # UMT5's 512 tokens on Wan, not CogVideoX's 226
    for scheduler in ("auto", "euler"):
        (latent,) = DirectAnimatorSampler().sample(model, cond, 1, 1.0, 0, scheduler, 0, 0, 1.0)
        frames, fps = DirectAnimatorDecode().decode(model, latent, False)
        assert frames.shape == (FRAMES, SMALL, SMALL, 3) and fps == 12.0
    with pytest.raises(InputError, match="dpm"):
        DirectAnimatorSampler().sample(model, cond, 1, 1.0, 0, "dpm", 0, 0, 1.0)


# --------------------------------------------------------------------------- memory options of the loader
def test_the_memory_inputs_come_after_those_older_workflows_saved_with_safe_defaults():
    """The frontend restores a saved node's widget values by position: the new inputs follow every older one, so
    a workflow saved before them loads each value into the widget it belonged to and the new ones at default."""
    spec = DirectAnimatorModelLoader.INPUT_TYPES()
    assert list(spec["required"]) == ["backbone", "repo_id", "checkpoint", "precision", "offload"]
    assert list(spec["optional"]) == ["diffusion_model", "vae", "clip_vision", "weights", "blocks_on_gpu",
                                      "attention", "compile"]
    inputs = {**spec["required"], **spec["optional"]}
    assert inputs["offload"][0] == ["none", "model", "blocks"] and inputs["offload"][1]["default"] == "none"
    assert inputs["weights"][0] == ["bf16", "fp8"] and inputs["weights"][1]["default"] == "bf16"
    assert inputs["blocks_on_gpu"][0] == "INT" and inputs["blocks_on_gpu"][1]["min"] == 1
    assert inputs["attention"][0] == ["native", "flash", "sage", "xformers"]
    assert inputs["attention"][1]["default"] == "native"
    assert inputs["compile"] == ("BOOLEAN", inputs["compile"][1]) and inputs["compile"][1]["default"] is False
    assert all(inputs[name][1]["tooltip"] for name in ("offload", "weights", "blocks_on_gpu", "attention", "compile"))


def test_an_older_workflows_boolean_offload_means_model_and_none(models_dir):
    for saved, mode in ((True, "model"), (False, "none")):
        assert DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=TINY, repo_id="", offload=saved) is True
        stamp = DirectAnimatorModelLoader.IS_CHANGED(TINY, "", NO_CHECKPOINT, "fp32", saved)
        assert stamp == DirectAnimatorModelLoader.IS_CHANGED(TINY, "", NO_CHECKPOINT, "fp32", mode)
    (model,) = DirectAnimatorModelLoader().load(TINY, "", NO_CHECKPOINT, "fp32", True)
    assert model.offload and model.info["memory"]["offload"] == "model"
    message = DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=TINY, repo_id="", offload="disk")
    assert "offload is 'disk'" in message and "['none', 'model', 'blocks']" in message
    with pytest.raises(InputError, match="offload is 'disk'"):
        DirectAnimatorModelLoader().load(TINY, "", NO_CHECKPOINT, "fp32", "disk")


def test_an_attention_backend_is_checked_by_the_loaders_validation():
    import importlib.util

    message = DirectAnimatorModelLoader.VALIDATE_INPUTS(backbone=TINY, repo_id="", attention="sdpa")
    assert "attention='sdpa'" in message and "native" in message
    assert DirectAnimatorModelLoader.VALIDATE_INPUTS(attention=None) is True  # linked: checked at load
    if importlib.util.find_spec("sageattention") is None:
        assert "needs the sageattention package" in DirectAnimatorModelLoader.VALIDATE_INPUTS(attention="sage")


def test_is_changed_changes_with_each_memory_option(models_dir):
    base = dict(backbone=TINY, repo_id="", checkpoint=NO_CHECKPOINT, precision="bf16", offload="none")
    stamp = DirectAnimatorModelLoader.IS_CHANGED(**base)
    assert DirectAnimatorModelLoader.IS_CHANGED(**base, weights="bf16", blocks_on_gpu=1, attention="native",
                                                compile=False) == stamp  # the defaults
    changed = [dict(offload="model"), dict(offload="blocks"), dict(weights="fp8"), dict(blocks_on_gpu=2),
               dict(attention="flash"), dict(compile=True)]
    stamps = {DirectAnimatorModelLoader.IS_CHANGED(**{**base, **change}) for change in changed}
    assert len(stamps) == len(changed) and stamp not in stamps


def test_the_memory_inputs_reach_the_model_and_the_graph_runs(models_dir):
    from directanimator.models import MemoryOptions
    from directanimator.models.memory import FP8_STORAGE_DTYPE, hooks_place_weights

    (model,) = DirectAnimatorModelLoader().load(TINY, "", NO_CHECKPOINT, "bf16", "blocks", weights="fp8",
                                                blocks_on_gpu=2, attention="native", compile=False)
    assert model.info["memory"] == MemoryOptions(storage="fp8", offload="blocks", blocks_on_gpu=2).to_dict()
    assert hooks_place_weights(model.transformer) and not model.offload
    assert model.transformer.blocks[0].block.attn1.to_q.weight.dtype == FP8_STORAGE_DTYPE
    assert any("fp8 e4m3" in note for note in model.info["memory_notes"])
    (cond,) = DirectAnimatorEncode().encode(model, synthetic_triplet(FRAMES, height=SMALL, width=SMALL), 12.0, False)
    (latent,) = DirectAnimatorSampler().sample(model, cond, 1, 1.0, 0, "ddim", 0, 0, 1.0)
    frames, _ = DirectAnimatorDecode().decode(model, latent, False)
    assert frames.shape == (FRAMES, SMALL, SMALL, 3) and torch.isfinite(frames).all()
    with pytest.raises(InputError, match="blocks_on_gpu=0"):
        DirectAnimatorModelLoader().load(TINY, "", NO_CHECKPOINT, "bf16", "blocks", blocks_on_gpu=0)


def test_comfyuis_model_manager_never_moves_a_block_offloaded_transformer(models_dir, monkeypatch):
    """Inside ComfyUI the loader leaves the networks on the CPU for its model manager, which must then load the
    VAE as before but leave the block-offloaded transformer to diffusers' hooks."""
    loaded = []
    fake_mm = type("model_management", (), {
        "load_models_gpu": staticmethod(lambda patchers, force_full_load: loaded.extend(patchers)),
        "get_torch_device": staticmethod(lambda: torch.device("cpu")),
    })
    monkeypatch.setattr(comfy_shim, "_mm", fake_mm)
    monkeypatch.setattr(comfy_shim, "_patcher", lambda module, part, device: part)
    (model,) = DirectAnimatorModelLoader().load(TINY, "", NO_CHECKPOINT, "fp32", "blocks")
    comfy_shim.prepare_parts(model, "transformer")
    comfy_shim.prepare_parts(model, "vae")
    assert loaded == ["vae"]
    (plain,) = DirectAnimatorModelLoader().load(TINY, "", NO_CHECKPOINT, "fp32", "none")
    comfy_shim.prepare_parts(plain, "transformer")
    assert loaded == ["vae", "transformer"]
    comfy_shim.prepare_parts(plain, "vae", "image_encoder")  # a CogVideoX model has no CLIP tower: skipped
    assert loaded == ["vae", "transformer", "vae"]
    plain.image_encoder = torch.nn.Linear(2, 2)  # a Wan2.1 I2V model's tower is loaded with the VAE for Encode
    comfy_shim.prepare_parts(plain, "vae", "image_encoder")
    assert loaded == ["vae", "transformer", "vae", "vae", "image_encoder"]


def test_a_workflow_saved_before_the_memory_inputs_restores_each_value_into_its_own_widget():
    """The Model Loader's widget values as the Wan workflow shipped them before the memory inputs; the frontend
    (LGraphNode.configure) sets saved values on the node's widgets by position and leaves the rest at default."""
    from nodes.model import _offload_mode

    saved = ["none (use repo_id)", "", "directanimator_wan2.1_i2v_14b.safetensors", "bf16", True,
             "wan2.1_i2v_480p_14B_bf16.safetensors", "wan_2.1_vae.safetensors", "clip_vision_h.safetensors"]
    spec = DirectAnimatorModelLoader.INPUT_TYPES()
    widgets = {**spec["required"], **spec["optional"]}  # every input of the loader is a widget, in this order
    restored = {name: entry[1].get("default") for name, entry in widgets.items()}
    restored.update(zip(widgets, saved))
    assert restored["precision"] == "bf16" and restored["clip_vision"] == "clip_vision_h.safetensors"
    assert _offload_mode(restored["offload"]) == "model"
    assert (restored["weights"], restored["blocks_on_gpu"], restored["attention"], restored["compile"]) == \
        ("bf16", 1, "native", False)
    assert DirectAnimatorModelLoader.VALIDATE_INPUTS(offload=restored["offload"],
                                                     attention=restored["attention"]) is True


def test_an_attention_backend_the_device_cannot_run_is_refused_before_any_download(monkeypatch):
    import directanimator.models.memory as memory
    import nodes.model as model_nodes

    monkeypatch.setattr(memory, "check_attention_backend", lambda name: None)  # as if flash-attn were installed
    monkeypatch.setattr(model_nodes, "default_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(model_nodes, "download_backbone", lambda *a, **k: pytest.fail("downloaded first"))
    with pytest.raises(InputError, match="attention='flash'.*CUDA GPUs only"):
        DirectAnimatorModelLoader().load(NO_FOLDER, "owner/name", NO_CHECKPOINT, "bf16", "none", attention="flash")


def test_sampler_passes_the_step_cache_and_batched_guidance_to_the_library(monkeypatch):
    """The Sampler's optional cache, cache_threshold (0: the cache's default) and batch_guidance reach
    sample_latents; old prompts without them sample as before (cache off, two passes)."""
    import nodes.model as node_module
    from nodes.model import DirectAnimatorSampler

    optional = DirectAnimatorSampler.INPUT_TYPES()["optional"]
    assert optional["cache"][0] == ["off", "first_block", "mag", "taylorseer"]
    assert optional["cache"][1]["default"] == "off"
    assert optional["batch_guidance"][1]["default"] is False
    seen = []

    def fake_sample(model, cond, **kwargs):
        seen.append(kwargs)
        return torch.zeros(1, 2, 16, 4, 4)

    monkeypatch.setattr(node_module, "sample_latents", fake_sample)
    monkeypatch.setattr(node_module, "prepare_parts", lambda *a, **k: None)
    cond = SimpleNamespace(num_frames=5, fps=12.0)
    sampler = DirectAnimatorSampler()
    sampler.sample(object(), {"conditioning": cond}, 2, 3.0, 0, "auto", 0, 0, 1.0, cache="mag",
                   cache_threshold=0.0, batch_guidance=True)
    sampler.sample(object(), {"conditioning": cond}, 2, 3.0, 0, "auto", 0, 0, 1.0, cache="first_block",
                   cache_threshold=0.2)
    sampler.sample(object(), {"conditioning": cond}, 2, 3.0, 0, "auto", 0, 0, 1.0)
    assert [(s["cache"], s["cache_threshold"], s["batch_guidance"]) for s in seen] == \
        [("mag", None, True), ("first_block", 0.2, False), ("off", None, False)]
