"""`python -m training synth`, the training data format it writes, and the Datasets over the world."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from training.cli import build_parser, main
from training.world import ExportedWorldDataset, WorldConfig, WorldDataset, make_sample
from training.world.preview import COLUMNS, SEPARATOR_PX
from training.world.skeleton import NUM_JOINTS

TINY = WorldConfig(height=64, width=64, num_frames=5)
ARGS = ["--clips", "2", "--size", "64", "--frames", "5", "--no-progress"]


def test_synth_command_writes_clips_ground_truth_metadata_and_a_preview(tmp_path):
    out = tmp_path / "world"
    assert main(["synth", "--out", str(out), *ARGS, "--val-clips", "1"]) == 0
    entries = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(entries) == 2
    assert [e["split"] for e in entries] == ["train", "val"]
    for entry in entries:
        assert (entry["fps"], entry["num_frames"], entry["height"], entry["width"]) == (12.0, 5, 64, 64)
        for key in ("clip", "reference", "ground_truth", "pseudo_driving", "cross_reference", "cross_target"):
            assert (out / entry[key]).is_file(), key
        assert entry["identity"] != entry["cross_identity"] and entry["identity"] != entry["pseudo_identity"]
        truth = load_file(str(out / entry["ground_truth"]))
        assert truth["joints"].shape == (5, NUM_JOINTS, 2) and truth["face_boxes"].shape == (5, 4)
        assert truth["person_masks"].shape == (5, 64, 64) and truth["person_masks"].dtype == torch.uint8
        assert truth["reference_person_masks"].shape == (1, 64, 64)
        assert truth["cross_target_face_masks"].shape == (5, 64, 64)
    preview = Image.open(out / "preview.png")
    rows, columns = 2, len(COLUMNS)
    assert preview.size == (columns * 64 + (columns - 1) * SEPARATOR_PX, rows * 64 + (rows - 1) * SEPARATOR_PX)
    settings = json.loads((out / "world.json").read_text())
    assert settings["config"]["height"] == 64 and settings["seed"] == 0


def test_synth_refuses_to_overwrite_an_export_unless_asked(tmp_path):
    out = str(tmp_path / "world")
    assert main(["synth", "--out", out, *ARGS[:2], "--size", "64", "--frames", "1", "--no-progress",
                 "--no-cross", "--no-pseudo"]) == 0  # fmt: skip
    assert main(["synth", "--out", out, "--clips", "1", "--size", "64", "--frames", "1", "--no-progress"]) == 2
    assert main(["synth", "--out", out, "--clips", "1", "--size", "64", "--frames", "1", "--no-progress",
                 "--overwrite", "--limb-thickness", "2", "--plain-clothes", "--reference-in-place"]) == 0  # fmt: skip
    assert len((tmp_path / "world" / "metadata.jsonl").read_text().splitlines()) == 1
    written = json.loads((tmp_path / "world" / "world.json").read_text())["config"]
    assert (written["limb_thickness"], written["plain_clothes"], written["reference_in_place"]) == (2.0, True, True)
    assert main(["synth", "--out", out, "--clips", "1", "--size", "64", "--frames", "1", "--no-progress",
                 "--overwrite", "--limb-thickness", "9"]) == 2  # out of range: refused


def test_png_export_reads_back_exactly_through_the_exported_dataset(tmp_path):
    out = tmp_path / "png"
    assert main(["synth", "--out", str(out), *ARGS, "--format", "png", "--no-pseudo"]) == 0
    live, stored = WorldDataset(2, replace(TINY, pseudo=False)), ExportedWorldDataset(out)
    assert len(stored) == 2
    for index in range(2):
        a, b = live[index], stored[index]
        torch.testing.assert_close(b["target"], (a["target"] * 255).round() / 255, atol=1e-6, rtol=0)
        torch.testing.assert_close(b["reference"], (a["reference"] * 255).round() / 255, atol=1e-6, rtol=0)
        torch.testing.assert_close(b["person_masks"], (a["person_masks"] * 255).round() / 255, atol=1e-6, rtol=0)
        assert torch.equal(b["joints"], a["joints"]) and torch.equal(b["face_valid"], a["face_valid"])
        assert "pseudo_driving" not in b and b["cross_identity"] == a["cross_identity"]


def test_mp4_export_is_close_to_the_rendered_frames(tmp_path):
    out = tmp_path / "mp4"
    assert main(["synth", "--out", str(out), *ARGS, "--no-cross"]) == 0
    a, b = WorldDataset(2, replace(TINY, cross_id=False))[1], ExportedWorldDataset(out)[1]
    assert b["target"].shape == a["target"].shape == (5, 64, 64, 3)
    assert float((b["target"] - a["target"]).abs().mean()) < 0.03
    assert float((b["pseudo_driving"] - a["pseudo_driving"]).abs().mean()) < 0.03


def test_world_dataset_is_deterministic_by_index_and_batches_with_a_dataloader():
    torch.manual_seed(0)
    dataset = WorldDataset(3, TINY, seed=5)
    item = dataset[2]
    assert item["driving"].shape == (5, 64, 64, 3) and item["reference"].shape == (1, 64, 64, 3)
    assert item["cross_target"].shape == (5, 64, 64, 3) and item["pseudo_driving"].shape == (5, 64, 64, 3)
    assert torch.equal(item["target"], make_sample(2, TINY, seed=5).clip.frames)
    batch = next(iter(DataLoader(dataset, batch_size=2, shuffle=True)))
    assert batch["driving"].shape == (2, 5, 64, 64, 3) and batch["face_boxes"].shape == (2, 5, 4)
    for position, index in enumerate(batch["index"].tolist()):
        assert torch.equal(batch["target"][position], dataset[index]["target"])
        assert batch["identity"][position] == dataset[index]["identity"]
    with pytest.raises(IndexError):
        dataset.sample(3)


def test_identity_pool_reuses_named_identities():
    pooled = replace(TINY, identities=3, cross_id=True, pseudo=False)
    names = {make_sample(i, pooled).clip.identity for i in range(6)}
    assert names <= {"w0000", "w0001", "w0002"} and len(names) >= 2
    sample = make_sample(0, pooled)
    assert sample.cross_target.identity != sample.clip.identity


def test_cli_lists_synth_and_its_options():
    parser = build_parser(None)
    args = parser.parse_args(["synth", "--out", "x"])
    assert (args.clips, args.size, args.frames, args.format) == (16, 128, 17, "mp4")
    assert "synth" in parser.format_help()


def test_synth_never_writes_into_a_folder_it_did_not_make(tmp_path, caplog):
    mine = tmp_path / "dataset"
    (mine / "videos" / "000000").mkdir(parents=True)  # someone's own PNG clip, named like the export's first
    (mine / "videos" / "000000" / "00000.png").write_bytes(b"my frame")
    (mine / "metadata.jsonl").write_text('{"clip": "videos/000000"}\n')
    for extra in ([], ["--overwrite"]):
        caplog.clear()
        assert main(["synth", "--out", str(mine), "--clips", "1", "--size", "64", "--frames", "1", "--no-progress",
                     "--format", "png", *extra]) == 2
        assert f"--out {mine}: the folder is not empty" in caplog.text
    assert (mine / "videos" / "000000" / "00000.png").read_bytes() == b"my frame"
    assert (mine / "metadata.jsonl").read_text() == '{"clip": "videos/000000"}\n'
