"""A real ComfyUI refuses, at validation, model names that are not in its model folders. Skipped unless COMFYUI_DIR
is set (see conftest.py)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from directanimator.models import save_checkpoint
from tests.integration.shipped import build
from tests.tiny import save_tiny_diffusers, tiny_animator

LOADER = "5"  # the Model Loader's id in the animate workflows


def node_errors(comfy, prompt: dict) -> dict:
    """ComfyUI's validation answer to `prompt` (POST /prompt answers 400 when no output can run)."""
    request = urllib.request.Request(comfy.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read())
    return answer.get("node_errors", {})


def loader_prompt(**inputs) -> dict:
    prompt = json.loads(build.api_path("animate_cogvideox_5b_i2v_long_video").read_text())
    prompt[LOADER]["inputs"].update(inputs)
    return prompt


@pytest.mark.parametrize("backbone", ["/", "/etc", "../../..", "diffusers/../../..", "not-there"])
def test_backbone_not_in_models_diffusers_is_refused_with_the_folder_to_use(comfy, backbone):
    errors = node_errors(comfy, loader_prompt(backbone=backbone, repo_id=""))
    assert LOADER in errors, errors
    said = json.dumps(errors[LOADER])
    assert "ComfyUI/models/diffusers" in said


def test_a_loadable_backbone_outside_models_diffusers_is_refused_by_absolute_and_relative_path(comfy, tmp_path):
    outside = save_tiny_diffusers(tmp_path / "elsewhere", "1.5")
    (outside / "model_index.json").write_text("{}")
    for backbone in (str(outside), os.path.relpath(outside, comfy.models_dir / "diffusers")):
        errors = node_errors(comfy, loader_prompt(backbone=backbone, repo_id=""))
        assert "ComfyUI/models/diffusers" in json.dumps(errors.get(LOADER)), (backbone, errors)


def test_checkpoint_outside_models_directanimator_is_refused(comfy, tmp_path):
    outside = tmp_path / "weights.safetensors"
    save_checkpoint(outside, tiny_animator("1.5"), weights="none", backbone_name="cogvideox-tiny")  # loadable
    for checkpoint in (str(outside), os.path.relpath(outside, comfy.models_dir / "directanimator")):
        errors = node_errors(comfy, loader_prompt(backbone="none (use repo_id)", repo_id="THUDM/CogVideoX-5b-I2V",
                                                  checkpoint=checkpoint))
        assert "ComfyUI/models/directanimator" in json.dumps(errors.get(LOADER)), (checkpoint, errors)


def test_repo_id_not_of_the_form_owner_name_is_refused(comfy):
    errors = node_errors(comfy, loader_prompt(backbone="none (use repo_id)", repo_id="../../etc"))
    assert "owner/name" in json.dumps(errors.get(LOADER)), errors



WAN = "animate_wan21_i2v_14b_comfyui_files"  # the workflow whose Model Loader picks files from ComfyUI's folders
SINGLE_FILES = {"diffusion_model": "diffusion_models", "vae": "vae", "clip_vision": "clip_vision"}


@pytest.mark.parametrize("name, folder", sorted(SINGLE_FILES.items()))
def test_single_files_outside_comfyuis_own_model_folders_are_refused_with_the_folder_to_use(comfy, tmp_path, name,
                                                                                            folder):
    from tests.integration.test_comfyui import save_tiny_wan_files

    inside = save_tiny_wan_files(comfy.models_dir)
    outside = save_tiny_wan_files(tmp_path / "elsewhere")  # the same loadable files, not in the server's folders
    path = tmp_path / "elsewhere" / folder / outside[name]
    prompt = json.loads(build.api_path(WAN).read_text())
    assert prompt[LOADER]["class_type"] == "DirectAnimatorModelLoader" and prompt[LOADER]["inputs"][name] != "none"
    prompt[LOADER]["inputs"].update(checkpoint="none (bare backbone)", **inside)
    assert LOADER not in node_errors(comfy, prompt)  # the files in the server's folders pass
    prompt[LOADER]["inputs"].update({other: "none" for other in SINGLE_FILES if other != name})
    for value in (str(path), os.path.relpath(path, comfy.models_dir / folder), "/etc/hostname",
                  "../../../etc/hostname", "not-there.safetensors"):
        prompt[LOADER]["inputs"][name] = value
        errors = node_errors(comfy, prompt)
        assert f"ComfyUI/models/{folder}" in json.dumps(errors.get(LOADER)), (name, value, errors)
