"""benchmarks.claims end to end at smoke-test size: every experiment trains, measures and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import claims
from tests.tiny import tiny_vae

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def claims_run(tmp_path_factory):
    pytest.importorskip("mediapipe")
    pytest.importorskip("matplotlib")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("claims")
    tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    report = claims.run_claims(scale="tiny", work=root / "work", out=root / "out", vae=root / "vae")
    yield claims, root, report
    torch.set_num_threads(threads)


def _result(root: Path, name: str) -> dict:
    return json.loads((root / "work" / "results" / f"{name}.json").read_text())


@pytest.mark.slow
def test_report_has_every_claim_with_its_plot(claims_run):
    _, root, report = claims_run
    text = report.read_text()
    for heading in ("## 1. Same2X convergence", "## 2. Robustness", "## 3. Cross-identity quality",
                    "## 4. The FFT cutoff"):
        assert heading in text
    for name in ("s2x_convergence", "robustness", "cross_id", "cutoff"):
        png = root / "out" / "evidence" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"evidence/{name}.png" in text


@pytest.mark.slow
def test_s2x_runs_share_the_start_and_the_loss_changes_their_training(claims_run):
    _, root, _ = claims_run
    s2x = _result(root, "s2x")
    curves = s2x["curves"]
    assert sorted(curves) == ["stage2_plain_seed0", "stage2_plain_seed1", "stage2_s2x_seed0", "stage2_s2x_seed1"]
    for curve in curves.values():
        assert curve["steps"] == [0, 2, 4] and curve["losses"][0] == s2x["start_loss"]
    assert curves["stage2_s2x_seed0"]["losses"][-1] != curves["stage2_plain_seed0"]["losses"][-1]
    assert curves["stage2_plain_seed0"]["losses"][-1] != curves["stage2_plain_seed1"]["losses"][-1]  # seeds differ
    assert [s["seed"] for s in s2x["per_seed"]] == [0, 1]


@pytest.mark.slow
def test_robustness_scores_both_models_on_every_setting(claims_run):
    _, root, _ = claims_run
    rows = _result(root, "robustness")["rows"]
    assert [(r["degradation"], r["strength"]) for r in rows] == [("occluders", 1.0), ("clean", 0.0)]
    for row in rows:
        assert 0 < row["cues_psnr"] < 60 and 0 < row["skeleton_psnr"] < 60
    assert rows[0]["cues_psnr"] != rows[1]["cues_psnr"]  # the degradation reached the cue path


@pytest.mark.slow
def test_cutoff_changes_the_pose_cue_and_so_the_result(claims_run):
    _, root, _ = claims_run
    rows = _result(root, "cutoff")["rows"]
    assert [r["cutoff"] for r in rows] == [0.06, 0.5]
    assert rows[0]["psnr"] != rows[1]["psnr"]
    for row in rows:
        assert 0.0 <= row["iou"] <= 1.0 and 0.0 <= row["driving_similarity"] <= 1.0


@pytest.mark.slow
def test_cross_id_takes_the_stage2_scores_sampled_for_the_s2x_measurement(claims_run):
    _, root, _ = claims_run
    runs, s2x, cross = _result(root, "runs"), _result(root, "s2x"), _result(root, "cross")
    assert len(s2x["sampled"]) == 4  # 2 seeds x (S2X, no S2X), sampled once each
    for mode, label in (("s2x", "stage 1 + 2 (S2X)"), ("plain", "stage 1 + 2 (no S2X)")):
        found = [r for seed in (0, 1) for r in s2x["sampled"][str(runs[f"stage2_{mode}_seed{seed}"])]]
        assert cross["models"][label]["psnr"] == [r["psnr"] for r in found]
        assert cross["models"][label]["ssim"] == [r["ssim"] for r in found]


@pytest.mark.slow
def test_a_second_run_reuses_the_measurements(claims_run):
    claims, root, report = claims_run
    before = _result(root, "s2x")
    again = claims.run_claims(scale="tiny", work=root / "work", out=root / "out2", vae=root / "vae")
    assert _result(root, "s2x") == before and again.read_text().count("## ") == report.read_text().count("## ")


def test_missing_vae_is_refused_before_any_work(tmp_path):
    from directanimator.errors import InputError

    with pytest.raises(InputError, match="--vae"):
        claims.run_claims(scale="tiny", work=tmp_path / "work", out=tmp_path / "out", vae=tmp_path / "nothing")
    assert not (tmp_path / "work" / "world").exists()


@pytest.mark.slow
def test_world_config_renders_the_exported_clips_again(claims_run):
    from safetensors.torch import load_file

    from training.validate import read_entries
    from training.world.pairs import make_sample

    claims, root, _ = claims_run
    recipe, _ = claims.load_claims(claims.CONFIGS["tiny"], [])
    entry = next(e for e in read_entries(root / "work" / "world") if e.get("split") == "val")
    truth = load_file(str(root / "work" / "world" / entry["ground_truth"]))
    sample = make_sample(int(entry["index"]), claims.world_config(recipe, recipe.world.size), seed=recipe.world.seed)
    assert torch.equal(sample.clip.ground_truth()["person_masks"], truth["person_masks"])
    assert torch.equal(sample.cross_target.ground_truth()["person_masks"], truth["cross_target_person_masks"])


def test_the_report_shows_paths_inside_the_checkout_relative_to_it(tmp_path):
    """docs/evidence.md is committed: the default VAE (models/demo/vae) must not show this machine's folders."""
    assert claims._shown(str(ROOT / "models" / "demo" / "vae")) == str(Path("models") / "demo" / "vae")
    assert claims._shown(str(tmp_path / "vae")) == str(tmp_path / "vae")
