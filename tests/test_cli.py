"""`python -m directanimator`: cues, animate and info, as a user runs them."""

import pytest
import torch

from directanimator.cli import main
from directanimator.video import probe_video, read_video
from tests.helpers import REAL_DATA
from tests.tiny import save_tiny_diffusers

needs_real = pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real footage not found at {REAL_DATA}")


def test_info_reports_both_real_backbones_with_cue_parameters_under_three_percent(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "cogvideox-5b-i2v" in text and "cogvideox1.5-5b-i2v" in text
    fractions = [float(part.split("%")[0].split("(")[-1]) for part in text.splitlines() if "of the backbone" in part]
    assert len(fractions) == 2 and all(0 < f < 3 for f in fractions)
    assert "13 latent frames" in text  # the 5B-I2V window that fits its learned positional embeddings


def test_info_says_when_a_window_does_not_fit(capsys):
    assert main(["info", "--config", "cogvideox-5b-i2v", "--frames", "20"]) == 0
    fits = [line for line in capsys.readouterr().out.splitlines() if line.startswith("window fits")]
    assert len(fits) == 1 and "no:" in fits[0] and "exactly F'=13" in fits[0]


@needs_real
@pytest.mark.slow
def test_cues_command_writes_three_cue_videos_and_a_sheet(tmp_path):
    out = tmp_path / "cues"
    code = main(["cues", "--reference", str(REAL_DATA / "ref_anime_character.jpg"),
                 "--driving", str(REAL_DATA / "dance_1080x1920_24fps.mp4"),
                 "--frames", "5", "--stride", "6", "--size", "224x128", "--out", str(out)])
    assert code == 0
    for name in ("pose.mp4", "face.mp4", "location.mp4"):
        info = probe_video(out / name)
        assert (info["width"], info["height"], info["frame_count"]) == (128, 224, 5)
        assert info["fps"] == pytest.approx(4.0)
    assert (out / "cues.png").stat().st_size > 1000


@needs_real
@pytest.mark.slow
def test_animate_writes_the_driving_frame_count_at_the_driving_fps(tmp_path):
    model = save_tiny_diffusers(tmp_path / "tiny", "1.5")
    out = tmp_path / "result.mp4"
    code = main(["animate", "--reference", str(REAL_DATA / "ref_real_person.jpg"),
                 "--driving", str(REAL_DATA / "dance_1080x1920_24fps.mp4"), "--frames", "6", "--stride", "8",
                 "--size", "128x64", "--model", str(model), "--steps", "2", "--guidance", "1", "--out", str(out)])
    assert code == 0
    clip = read_video(out)
    assert clip.frames.shape == (6, 128, 64, 3) and clip.fps == pytest.approx(3.0)
    side = read_video(tmp_path / "result_side_by_side.mp4")
    assert side.frames.shape == (6, 128, 128, 3)
    assert torch.isfinite(clip.frames).all()


def test_bad_output_name_is_refused_before_any_work(tmp_path, caplog):
    code = main(["animate", "--reference", "missing.png", "--driving", "missing.mp4", "--model", "x/y",
                 "--out", str(tmp_path / "result.txt")])
    assert code == 2
    assert "result.txt" in caplog.text and ".mp4" in caplog.text


def test_anchor_option_overrides_the_models_setting_and_defaults_to_it():
    from types import SimpleNamespace

    from directanimator.cli import _cue_config, build_parser

    base = ["animate", "--reference", "r.png", "--driving", "d.mp4", "--model", "m", "--out", "o.mp4"]
    trained_clip = SimpleNamespace(cue_config={"anchor": "clip", "grid_cell": 8})
    assert _cue_config(build_parser().parse_args(base), trained_clip).anchor == "clip"
    assert _cue_config(build_parser().parse_args([*base, "--anchor", "first"]), trained_clip).anchor == "first"
    assert _cue_config(build_parser().parse_args(base), SimpleNamespace(cue_config=None)).anchor == "first"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--anchor", "middle"])
