"""benchmarks.cue_reliance: blanking a cue moves the result only when the model reads that cue."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import cue_reliance
from tests.tiny import PIXELS, tiny_animator_model
from training.world import WorldConfig
from training.world.export import export_world

ROWS = ["truth vs reference", "VAE round trip vs truth", "result vs reference", "result vs truth",
        "blank pose: result moves", "blank face: result moves", "blank location: result moves"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliance")
    export_world(root, WorldConfig(height=PIXELS, width=PIXELS, num_frames=5, identities=4), clips=3, val_clips=1,
                 fmt="png", seed=0)
    return root


@pytest.mark.slow
def test_a_model_without_cue_weights_is_not_moved_by_any_blanked_cue(world):
    scores = cue_reliance.reliance(tiny_animator_model("1.0"), world, pairs=1, steps=1, samples=1)
    assert list(scores) == ROWS
    assert scores["truth vs reference"] > 0.1  # the pair has moving pixels to score
    assert 0 < scores["VAE round trip vs truth"] and 0 < scores["result vs truth"]
    assert [scores[row] for row in ROWS[4:]] == [0.0, 0.0, 0.0]  # zero CueFusion: the cues cannot matter


@pytest.mark.slow
def test_a_model_that_reads_its_cues_is_moved_by_blanking_them(world):
    scores = cue_reliance.reliance(tiny_animator_model("1.0", randomize_cues=True), world, pairs=1, steps=1,
                                   samples=1)
    assert all(scores[row] > 1e-3 for row in ROWS[4:]), scores


@pytest.mark.slow
def test_the_round_trip_keeps_the_frame_count_of_any_clip(world):
    frames = cue_reliance.load_pair(world, cue_reliance.scored_entries(world, 1)[0]).target.float()
    for count in (1, 4, 5):  # 4 is padded to the VAE's 5 frames, then trimmed
        assert cue_reliance.round_trip(tiny_animator_model("1.0"), frames[:count]).shape == frames[:count].shape


@pytest.mark.slow
def test_training_and_held_out_clips_are_scored_as_same_identity_pairs(world):
    entries = cue_reliance.scored_entries(world, 5, kind="train")
    assert [e["split"] for e in entries] == ["train", "train"]  # 3 clips, one of them held out
    assert not any(key.startswith("cross_") for e in entries for key in e)
    assert cue_reliance.load_pair(world, entries[0]).kind == "same"
    held_out = cue_reliance.scored_entries(world, 5)
    assert [e["split"] for e in held_out] == ["val"] and cue_reliance.load_pair(world, held_out[0]).kind == "cross"
    same = cue_reliance.scored_entries(world, 5, kind="same")
    assert [e["split"] for e in same] == ["val"] and cue_reliance.load_pair(world, same[0]).kind == "same"
    assert not any(key.startswith("cross_") for key in same[0])
    for kind in ("train", "same"):
        scores = cue_reliance.reliance(tiny_animator_model("1.0"), world, pairs=1, steps=1, samples=1, kind=kind)
        assert list(scores) == ROWS and scores["truth vs reference"] > 0


def test_a_world_without_held_out_cross_pairs_is_refused(tmp_path):
    export_world(tmp_path, WorldConfig(height=PIXELS, width=PIXELS, num_frames=5, identities=4, cross_id=False),
                 clips=2, val_clips=1, fmt="png", seed=0)
    with pytest.raises(SystemExit, match="no held-out cross-identity pairs"):
        cue_reliance.reliance(tiny_animator_model("1.0"), tmp_path, pairs=1, steps=1, samples=1)
