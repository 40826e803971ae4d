"""Workflow (a) inside a real ComfyUI, as shipped: the demo model bundled in the pack animates the bundled puppet
clip, which the pack's Bundled Media node loads (nothing is copied into ComfyUI's input folder), with cues detected by
the pack's nodes. Skipped unless COMFYUI_DIR is set (conftest.py)."""

from __future__ import annotations

import json

import pytest

from directanimator.demo import is_model_folder
from nodes.model import BUNDLED_DIR
from tests.integration.shipped import api, build, run, video_facts


@pytest.fixture(scope="module")
def demo_settings():
    assert is_model_folder(BUNDLED_DIR), f"the bundled demo model is missing from {BUNDLED_DIR}"
    return json.loads((BUNDLED_DIR / "demo" / "demo.json").read_text())


def test_bundled_demo_workflow_animates_the_bundled_clip_as_shipped(comfy, demo_settings):
    prompt = api("animate_bundled_demo_model")
    assert prompt["1"]["class_type"] == "DirectAnimatorBundledMedia"
    assert prompt["5"]["inputs"]["backbone"] == prompt["5"]["inputs"]["checkpoint"] == build.BUNDLED
    sampler = prompt["7"]["inputs"]
    assert sampler["average_of"] == demo_settings.get("samples", 1)  # the model's demo setting
    sampler["steps"] = 4  # more steps than the demo's 1: the progress bar has something to count
    result = run(comfy, prompt)
    assert result.status == "success", f"{result.error}\n{comfy.log_tail()}"
    (video,) = comfy.output_files(result, "10")
    frames, fps, size = video_facts(video)
    assert frames == demo_settings["frames"] and fps == pytest.approx(demo_settings["fps"])
    assert size == (demo_settings["size"], demo_settings["size"])
    assert result.progress.get("7") and max(result.progress["7"]) == 4 * sampler["average_of"]
