"""Atomic writes: the complete new file, or nothing at all."""

import pytest
import torch
from safetensors.torch import load_file

from directanimator.atomic import atomic_path, save_safetensors


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
