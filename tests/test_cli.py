"""`python -m directanimator`: cues, animate and info, as a user runs them."""

import pytest
import torch

from directanimator.cli import main
from directanimator.video import probe_video, read_video
from tests.helpers import REAL_DATA
from tests.tiny import save_tiny_diffusers

needs_real = pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real footage not found at {REAL_DATA}")


def test_info_reports_every_bundled_backbone_with_cue_parameters_under_three_percent(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    names = ["cogvideox-5b-i2v", "cogvideox1.5-5b-i2v", "wan2.1-i2v-14b", "wan2.1-i2v-14b-720p", "wan2.2-ti2v-5b"]
    assert [line for line in text.splitlines() if line in names] == names  # each report starts with its name
    fractions = [float(part.split("%")[0].split("(")[-1]) for part in text.splitlines() if "of the backbone" in part]
    assert len(fractions) == len(names) and all(0 < f < 3 for f in fractions)
    assert "13 latent frames" in text  # the 5B-I2V window that fits its learned positional embeddings


@pytest.mark.parametrize("name, tokens, encoders", [
    ("wan2.1-i2v-14b", "32,760; 512 text + 257 image", ("UMT5-XXL text encoder", "CLIP ViT-H/14 image encoder")),
    ("wan2.2-ti2v-5b", "27,280; 512 text", ("UMT5-XXL text encoder",)),
])
def test_info_on_a_wan_config_prints_tokens_encoders_and_the_lora_memory_plan(capsys, name, tokens, encoders):
    assert main(["info", "--config", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == name
    assert any(line.startswith("tokens (vision; cross-attention context)") and line.endswith(tokens) for line in lines)
    assert all(any(line.startswith("not counted: encoders") and e in line for line in lines) for e in encoders)
    plan = [line.strip() for line in lines if line.strip().startswith("LoRA stage")]
    assert len(plan) == 18 and all("24 GB" in line and "48 GB" in line and "80 GB" in line for line in plan)
    assert {line.split(",")[0] for line in plan} == {"LoRA stage 1", "LoRA stage 2"}


def test_info_plan_prints_the_sampling_plan_of_every_bundled_backbone(capsys):
    assert main(["info", "--plan"]) == 0
    text = capsys.readouterr().out
    names = ["cogvideox-5b-i2v", "cogvideox1.5-5b-i2v", "wan2.1-i2v-14b", "wan2.1-i2v-14b-720p", "wan2.2-ti2v-5b"]
    heads = [line for line in text.splitlines() if line.startswith("Sampling plan: ")]
    assert [line.split(",")[0].removeprefix("Sampling plan: ") for line in heads] == names
    assert "Sampling plan: wan2.1-i2v-14b, one window of 21 latent frames (reference included) at 480x832 px" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("bf16 ", "fp8 "))]
    assert len(rows) == 16 * len(names) and all(row[-5:] and set(row[-5:]) <= {"yes", "no"} for row in rows)
    assert text.count("computed, not measured") == len(names)


def test_info_plan_markdown_narrowed_to_one_config_prints_its_tables(capsys):
    assert main(["info", "--plan", "--markdown", "--config", "wan2.2-ti2v-5b", "--blocks-on-gpu", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("**Sampling plan: wan2.2-ti2v-5b, one window of 31 latent frames")
    assert "| storage | offload | guidance | transformer weights GB | VAE + encoders GB | activations GB | peak GB | " \
           "12 GB | 16 GB | 24 GB | 48 GB | 80 GB |" in lines
    rows = [line for line in lines if line.startswith(("| bf16 |", "| fp8 |"))]
    assert len(rows) == 12 and sum("| blocks, 2 on GPU |" in row for row in rows) == 4  # none, model, blocks of 2
    assert "| training | total, fits |" in lines and sum(line.startswith("| LoRA stage") for line in lines) == 18


def test_info_refuses_plan_options_without_plan(caplog):
    assert main(["info", "--config", "wan2.2-ti2v-5b", "--activation-factor", "1.3"]) == 2
    assert "--activation-factor: an option of the sampling plan; add --plan" in caplog.text


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


def _tiny_wan_without_clip(folder):
    """A tiny Wan2.1 I2V diffusers folder without image_encoder/, and the CLIP parts in a folder of their own."""
    import json

    from directanimator.models.configs import default_scheduler_config
    from tests.tiny import tiny_backbone, tiny_clip_vision, tiny_wan_vae

    tiny_backbone("wan-i2v").save_pretrained(folder / "wan" / "transformer")
    tiny_wan_vae("2.1").save_pretrained(folder / "wan" / "vae")
    (folder / "wan" / "scheduler").mkdir()
    (folder / "wan" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(default_scheduler_config("wan2.1-i2v-14b")))
    encoder, processor = tiny_clip_vision()
    encoder.save_pretrained(folder / "clip" / "image_encoder")
    processor.save_pretrained(folder / "clip" / "image_processor")
    return folder / "wan", folder / "clip"


@needs_real
@pytest.mark.slow
def test_animate_runs_a_wan_backbone_with_its_clip_tower_given_apart(tmp_path, caplog):
    model, clip = _tiny_wan_without_clip(tmp_path)
    args = ["animate", "--reference", str(REAL_DATA / "ref_real_person.jpg"),
            "--driving", str(REAL_DATA / "dance_1080x1920_24fps.mp4"), "--frames", "5", "--stride", "8",
            "--size", "64x64", "--model", str(model), "--steps", "2", "--guidance", "2"]
    # Wan2.1 I2V embeds the reference with CLIP: without the tower the command stops before sampling
    assert main(args + ["--out", str(tmp_path / "none.mp4")]) == 2
    assert "--image-encoder" in caplog.text or "image_encoder" in caplog.text
    assert not (tmp_path / "none.mp4").exists()
    out = tmp_path / "result.mp4"
    assert main(args + ["--image-encoder", str(clip), "--scheduler", "euler", "--out", str(out)]) == 0
    clip_frames = read_video(out).frames
    assert clip_frames.shape == (5, 64, 64, 3) and torch.isfinite(clip_frames).all()


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
