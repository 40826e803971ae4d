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
