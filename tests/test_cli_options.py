"""The cue options of the command line mean the same in `demo`, `cues` and `animate`: given, they are honoured;
left out, the model's own setting holds (CueConfig's default without a model)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from directanimator.cli import _cue_config, build_parser, main
from directanimator.cues import CueConfig
from directanimator.demo import DemoResult, DemoSettings, demo_cue_config
from directanimator.tensors import MAX_SIDE_PX, as_frames
from directanimator.video import read_image, read_video

DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "demo"
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
ANIMATE = ["animate", "--reference", "r.png", "--driving", "d.mp4", "--model", "m", "--out", "o.mp4"]


def test_demo_passes_size_cutoff_filter_grid_cell_and_stride_to_the_demo(monkeypatch, tmp_path):
    import directanimator.demo as demo

    seen = {}

    def fake_run_demo(model_dir, **kwargs):
        seen.update(kwargs)
        return DemoResult(out=tmp_path, frames=torch.zeros(1, 64, 64, 3), fps=12.0, exact_cues=True)

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    code = main(["demo", "--model", str(DEMO_MODEL), "--out", str(tmp_path / "o"), "--size", "128x96",
                 "--cutoff", "0.3", "--filter", "ideal", "--grid-cell", "8", "--stride", "3"])
    assert code == 0
    assert seen["cues"] == {"height": 128, "width": 96, "cutoff": 0.3, "filter": "ideal", "grid_cell": 8}
    assert seen["stride"] == 3
    seen.clear()
    assert main(["demo", "--model", str(DEMO_MODEL), "--out", str(tmp_path / "o")]) == 0
    assert seen["cues"] == {} and seen["stride"] == 1  # nothing given: the model's settings, every frame


def test_the_demo_samples_with_the_models_cue_options_unless_given():
    saved = CueConfig(cutoff=0.3, grid_cell=8, anchor="clip").to_dict()
    settings = DemoSettings(size=128, anchor="first")
    plain = demo_cue_config(saved, settings)
    assert (plain.height, plain.width, plain.cutoff, plain.grid_cell, plain.anchor) == (128, 128, 0.3, 8, "first")
    given = demo_cue_config(saved, settings, {"height": 96, "width": 64, "cutoff": 0.2, "filter": "butterworth",
                                              "grid_cell": 4})
    assert (given.height, given.width, given.cutoff, given.filter, given.grid_cell) == (96, 64, 0.2, "butterworth", 4)


def test_animate_keeps_the_models_cue_options_unless_given():
    trained = SimpleNamespace(cue_config=CueConfig(cutoff=0.3, filter="ideal", grid_cell=8).to_dict())
    plain = _cue_config(build_parser().parse_args(ANIMATE), trained)
    assert (plain.cutoff, plain.filter, plain.grid_cell) == (0.3, "ideal", 8)
    given = _cue_config(build_parser().parse_args([*ANIMATE, "--cutoff", "0.2", "--grid-cell", "16",
                                                   "--size", "128x64"]), trained)
    assert (given.cutoff, given.filter, given.grid_cell, given.height, given.width) == (0.2, "ideal", 16, 128, 64)
    untrained = _cue_config(build_parser().parse_args(ANIMATE), SimpleNamespace(cue_config=None))
    assert (untrained.cutoff, untrained.filter, untrained.grid_cell) == (0.12, "gaussian", 16)


def test_a_reference_larger_than_4096_px_is_scaled_down_for_the_cues(tmp_path):
    from PIL import Image

    path = tmp_path / "tall.png"
    Image.fromarray(np.full((MAX_SIDE_PX + 200, 100, 3), 200, np.uint8)).save(path)
    image = read_image(path, max_side=MAX_SIDE_PX)
    assert image.shape == (1, MAX_SIDE_PX, 95, 3)  # aspect kept
    assert as_frames(image, name="reference").shape == image.shape  # what extract_cues takes
    assert read_image(path, size=(128, 64), max_side=MAX_SIDE_PX).shape == (1, 128, 64, 3)  # size wins


def test_saved_cue_options_this_version_does_not_know_are_named(caplog):
    with caplog.at_level(logging.WARNING):
        config = CueConfig.from_saved({"grid_cell": 8, "removed_option": 1}, name="checkpoint a.safetensors")
    assert config.grid_cell == 8
    assert "checkpoint a.safetensors" in caplog.text and "removed_option" in caplog.text


# --------------------------------------------------------------------------- animate's memory options
def test_animate_memory_flags_build_the_memory_options():
    from directanimator.cli import memory_options
    from directanimator.models import MemoryOptions

    parse = lambda *flags: memory_options(build_parser().parse_args([*ANIMATE, *flags]))  # noqa: E731
    assert parse() == MemoryOptions()
    assert parse("--offload") == MemoryOptions(offload="model")  # the old bare flag still means whole-model offload
    assert parse("--offload", "--steps", "3") == MemoryOptions(offload="model")
    assert parse("--offload", "none") == MemoryOptions()
    assert parse("--weights", "fp8", "--offload", "blocks", "--blocks-on-gpu", "3", "--no-stream", "--compile") == \
        MemoryOptions(storage="fp8", offload="blocks", blocks_on_gpu=3, stream=False, compile=True)
    assert parse("--offload", "blocks", "--stream").stream is True
    assert parse("--attention", "native").attention == "native"


def _never_read(monkeypatch):
    """Any image or video read, or model load, fails the test: a refusal must come first."""
    import directanimator.models as models
    import directanimator.video as video

    def read(*args, **kwargs):
        raise AssertionError("read or loaded before the options were checked")

    for module, name in ((video, "read_image"), (video, "read_video"), (video, "check_video_sides"),
                         (models, "load_model")):
        monkeypatch.setattr(module, name, read)


def test_bad_memory_options_are_refused_before_anything_is_read(monkeypatch, tmp_path, caplog):
    import importlib.util

    _never_read(monkeypatch)
    out = ["--out", str(tmp_path / "o.mp4"), "--device", "cpu"]
    cases = [(["--blocks-on-gpu", "2"], "--blocks-on-gpu 2.*--offload blocks"),
             (["--offload", "blocks", "--blocks-on-gpu", "0"], "blocks_on_gpu=0"),
             (["--stream"], "--stream.*--offload blocks"),
             (["--offload", "model", "--no-stream"], "--no-stream.*--offload blocks"),
             (["--offload", "blocks", "--stream"], "stream=True.*CUDA"),  # the device is the CPU
             (["--offload", "blocks", "--blocks-on-gpu", "2", "--stream"], "stream=True with blocks_on_gpu=2")]
    if importlib.util.find_spec("flash_attn") is None:
        cases.append((["--attention", "flash"], "needs the flash-attn package"))
    for flags, message in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main([*ANIMATE[:-2], *out, *flags]) == 2, flags
        assert any(re.search(message, r.getMessage()) for r in caplog.records), (flags, caplog.text)


def test_animate_loads_the_model_with_the_memory_options(monkeypatch, tmp_path):
    import directanimator.models as models
    import directanimator.video as video
    from directanimator.errors import InputError
    from directanimator.models import MemoryOptions

    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)
        raise InputError("stop here")

    monkeypatch.setattr(video, "read_image", lambda *a, **k: torch.zeros(1, 64, 64, 3))
    monkeypatch.setattr(video, "read_video", lambda *a, **k: SimpleNamespace(frames=torch.zeros(5, 64, 64, 3),
                                                                             fps=24.0))
    monkeypatch.setattr(models, "load_model", fake_load)
    flags = ["--weights", "fp8", "--offload", "blocks", "--blocks-on-gpu", "2", "--device", "cpu", "--size", "64x64"]
    assert main([*ANIMATE[:-2], "--out", str(tmp_path / "o.mp4"), *flags]) == 2
    assert seen["memory"] == MemoryOptions(storage="fp8", offload="blocks", blocks_on_gpu=2)
    assert "offload" not in seen  # carried by the options
    seen.clear()
    assert main([*ANIMATE[:-2], "--out", str(tmp_path / "o.mp4"), "--device", "cpu", "--size", "64x64",
                 "--offload"]) == 2
    assert seen["memory"] == MemoryOptions(offload="model")


@pytest.mark.skipif(not (REAL_DATA / "dance_1080x1920_24fps.mp4").is_file(), reason="needs the real footage")
def test_animate_runs_a_tiny_model_with_fp8_weights_and_block_offload(tmp_path, caplog):
    """The whole command with the memory options on (about 10 s on 2 CPU cores: the cues of six real
    frames, two steps)."""
    from tests.tiny import save_tiny_diffusers

    model = save_tiny_diffusers(tmp_path / "tiny", "1.5")
    out = tmp_path / "result.mp4"
    with caplog.at_level(logging.INFO):
        code = main(["animate", "--reference", str(REAL_DATA / "ref_real_person.jpg"),
                     "--driving", str(REAL_DATA / "dance_1080x1920_24fps.mp4"), "--frames", "6", "--stride", "8",
                     "--size", "128x64", "--model", str(model), "--steps", "2", "--guidance", "2", "--dtype", "bf16",
                     "--weights", "fp8", "--offload", "blocks", "--blocks-on-gpu", "2", "--cache", "first_block",
                     "--cache-threshold", "0.2", "--batch-guidance", "--out", str(out)])
    assert code == 0
    assert read_video(out).frames.shape == (6, 128, 64, 3)
    assert "fp8 e4m3" in caplog.text and "blocks in 1 groups of 2" in caplog.text
    assert "first-block cache (threshold 0.2)" in caplog.text and "guidance branches batched" in caplog.text


def test_the_animate_choices_are_the_librarys_own():
    """The parser spells its choices out (it imports no torch); they must stay the library's."""
    from directanimator.cues.types import ANCHORS
    from directanimator.models.caching import CACHE_MODES
    from directanimator.models.memory import ATTENTION_BACKENDS, OFFLOAD, STORAGE
    from directanimator.sampling import SCHEDULER_CHOICES

    animate = next(action for action in build_parser()._subparsers._group_actions[0].choices.values()
                   if any(a.dest == "cache" for a in action._actions))
    choices = {a.dest: list(a.choices) for a in animate._actions if a.choices is not None}
    assert choices["cache"] == list(CACHE_MODES)
    assert choices["scheduler"] == list(SCHEDULER_CHOICES)
    assert choices["weights"] == list(STORAGE)
    assert choices["offload"] == list(OFFLOAD)
    assert choices["attention"] == list(ATTENTION_BACKENDS)
    assert choices["anchor"] == list(ANCHORS)
