"""The bundled-media node lists what the pack ships and loads it as ComfyUI IMAGE frames, without ComfyUI."""

import json

import pytest

from directanimator.errors import InputError
from nodes import NODE_CLASS_MAPPINGS
from nodes.media import MODELS_DIR, DirectAnimatorBundledMedia

DEMO = MODELS_DIR / "demo" / "demo"


def test_lists_the_bundled_demo_reference_and_driving_clip_as_defaults():
    required = DirectAnimatorBundledMedia.INPUT_TYPES()["required"]
    images, image_options = required["reference"]
    videos, video_options = required["driving"]
    assert image_options["default"] == "demo/reference.png" and "demo/reference.png" in images
    assert video_options["default"] == "demo/driving.mp4" and "demo/driving.mp4" in videos
    assert not set(images) & set(videos)
    assert NODE_CLASS_MAPPINGS["DirectAnimatorBundledMedia"] is DirectAnimatorBundledMedia


def test_loads_the_demo_clip_at_its_own_size_rate_and_length():
    settings = json.loads((DEMO / "demo.json").read_text())
    reference, frames, fps = DirectAnimatorBundledMedia().run("demo/reference.png", "demo/driving.mp4")
    size = settings["size"]
    assert reference.shape == (1, size, size, 3) and frames.shape == (settings["frames"], size, size, 3)
    assert fps == pytest.approx(settings["fps"])
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0 and float(frames.std()) > 0.01


def test_refuses_a_name_outside_the_bundled_folders():
    with pytest.raises(InputError, match="demo/driving.mp4"):
        DirectAnimatorBundledMedia().run("demo/reference.png", "../../README.md")
