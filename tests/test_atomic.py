"""Atomic writes: the complete new file, or nothing at all."""

import pytest
import torch
from safetensors.torch import load_file

from directanimator.atomic import (OUTPUT_MARKER, atomic_path, check_output_folder, claim_output_folder, holding,
                                  output_command, replace_output_folder, save_safetensors)
from directanimator.errors import InputError


def test_a_failed_write_leaves_neither_a_file_nor_a_temporary(tmp_path):
    target = tmp_path / "out" / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_folder_replaces_the_target_only_when_complete(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("a")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "a" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_save_safetensors_round_trip(tmp_path):
    path = save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors", {"k": "v"})
    assert torch.equal(load_file(str(path))["w"], torch.ones(2))


# --------------------------------------------------------------------------- output folders
def test_a_command_replaces_its_own_output_folder_and_nothing_else(tmp_path):
    out = tmp_path / "model"
    with replace_output_folder(out, "make model") as tmp:
        (tmp / "weights.bin").write_text("1")
    assert output_command(out) == "make model" and (out / "weights.bin").read_text() == "1"
    with replace_output_folder(out, "make model") as tmp:  # a re-run replaces its own output
        (tmp / "weights.bin").write_text("2")
    assert (out / "weights.bin").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old copy left


def test_a_folder_the_command_did_not_write_is_refused_before_any_work_and_kept(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_text("precious")
    with pytest.raises(InputError, match=r"--out .*photos.*not empty.*did not write.*new or empty folder"):
        with replace_output_folder(mine, "make model"):
            raise AssertionError("no work may start")
    with pytest.raises(InputError, match="photos"):
        claim_output_folder(mine, "make model")
    assert [p.name for p in mine.iterdir()] == ["holiday.jpg"]
    other = tmp_path / "vae"
    claim_output_folder(other, "train vae")
    (other / "report.json").write_text("{}")
    with pytest.raises(InputError, match="written by `train vae`"):
        check_output_folder(other, "make model")


def test_absent_and_empty_folders_are_free_and_legacy_outputs_are_recognised(tmp_path):
    assert claim_output_folder(tmp_path / "new", "cmd") == tmp_path / "new"
    assert output_command(tmp_path / "new") == "cmd"
    old = tmp_path / "old"
    old.mkdir()
    (old / "card.json").write_text("{}")  # written by the command before it marked its folders
    check_output_folder(old, "cmd", legacy=lambda f: (f / "card.json").is_file())
    with pytest.raises(InputError):
        check_output_folder(old, "cmd")


def test_a_legacy_output_is_recognised_only_when_it_holds_every_file_the_command_wrote(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "result.mp4").write_text("video")
    with pytest.raises(InputError, match="not empty"):
        check_output_folder(old, "cmd", legacy=holding("result.mp4", "metrics.json"))
    (old / "metrics.json").write_text("{}")
    assert check_output_folder(old, "cmd", legacy=holding("result.mp4", "metrics.json")) == old


def test_a_failed_replacement_keeps_the_previous_output(tmp_path):
    out = tmp_path / "model"
    with replace_output_folder(out, "cmd") as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with replace_output_folder(out, "cmd") as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_folder_being_marked_by_another_process_counts_as_empty(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / f".{OUTPUT_MARKER}.123-abcd.tmp").write_text("")  # atomic_path's temporary, before its rename
    check_output_folder(out, "cmd")
