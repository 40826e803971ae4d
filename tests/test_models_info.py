"""`info`: size reports of the real CogVideoX 5B image-to-video configurations, built on the meta device."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from directanimator.errors import InputError
from directanimator.models import backbone_config, positional_embedding_case
from directanimator.models.info import format_size_report, size_report

MAX_CUE_FRACTION = 0.03


@pytest.mark.parametrize("name", ["cogvideox-5b-i2v", "cogvideox1.5-5b-i2v"])
def test_real_configs_report_5b_parameters_and_cheap_cues(name):
    report = size_report(name)
    assert 5.0e9 < report["backbone_parameters"] < 6.0e9
    assert report["config"]["inner_dim"] == 3072 and report["config"]["num_layers"] == 42
    assert 0 < report["cue_fraction"] <= MAX_CUE_FRACTION
    assert report["cue_parameters"] == sum(report["cue_parameters_by_part"].values())
    assert report["full_rank_cue_parameters"] > 10 * report["cue_parameters"]  # why the modulation is factorised
    assert report["weights_bytes"]["bf16"] * 2 == report["weights_bytes"]["fp32"]
    assert report["fits_positional_embeddings"]


@pytest.mark.slow
def test_5b_i2v_window_is_13_latent_frames_at_480x720():
    report = size_report("cogvideox-5b-i2v")
    window = report["window"]
    assert (window["latent_frames"], window["height"], window["width"], window["driving_frames"]) == (13, 480, 720, 45)
    assert report["tokens"] == {"vision": 13 * 30 * 45, "text": 226, "total": 13 * 30 * 45 + 226}
    act = report["activations"]["bf16"]
    assert act["attention_sdpa_bytes"] < act["attention_scores_naive_bytes"] / 10
    longer = size_report("cogvideox-5b-i2v", window_latent_frames=14)
    assert not longer["fits_positional_embeddings"] and "exactly F'=13" in longer["fit_note"]
    other_size = size_report("cogvideox-5b-i2v", height=512, width=512)
    assert not other_size["fits_positional_embeddings"]


def test_15_takes_other_sizes_but_only_even_latent_frames():
    assert size_report("cogvideox1.5-5b-i2v", window_latent_frames=10, height=512, width=512)["fits_positional_embeddings"]
    odd = size_report("cogvideox1.5-5b-i2v", window_latent_frames=11, height=512, width=512)
    assert not odd["fits_positional_embeddings"] and "patches of 2" in odd["fit_note"]
    assert size_report("cogvideox1.5-5b-i2v", window_latent_frames=10, height=512, width=512)["tokens"]["vision"] == 5 * 32 * 32


def test_bundled_configs_build_the_real_layouts():
    with torch.device("meta"):
        v10 = CogVideoXTransformer3DModel(**backbone_config("cogvideox-5b-i2v"))
        v15 = CogVideoXTransformer3DModel(**backbone_config("cogvideox1.5-5b-i2v"))
    assert isinstance(v10.patch_embed.proj, torch.nn.Conv2d) and v10.patch_embed.pos_embedding.shape == (1, 226 + 17550, 3072)
    assert isinstance(v15.patch_embed.proj, torch.nn.Linear) and v15.patch_embed.proj.in_features == 32 * 8
    assert v15.ofs_embedding is not None and v10.ofs_embedding is None
    assert "exactly 13 latent frames" in positional_embedding_case(dict(v10.config))
    assert "rotary positional embeddings only" in positional_embedding_case(dict(v15.config))


def test_report_formats_as_text_and_markdown():
    report = size_report("cogvideox-5b-i2v")
    text = format_size_report(report)
    assert "cue parameters" in text and "% of the backbone" in text
    md = format_size_report(report, markdown=True)
    assert md.splitlines()[2] == "| quantity | value |" and "| window fits | yes |" in md


def test_unknown_config_name_is_refused():
    with pytest.raises(InputError, match="not a bundled name.*cogvideox-5b-i2v"):
        size_report("cogvideox-7b")
