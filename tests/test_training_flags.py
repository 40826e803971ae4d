"""`validate`, `pseudo` and `export` name their flags after the config keys they stand for (``--backbone`` for
``model.backbone``, ``--metadata`` for ``data.metadata``); the old names still work for one release, with a
deprecation message."""

from __future__ import annotations

import logging

import pytest

from training.cli import DEPRECATED, build_parser, main


@pytest.mark.parametrize("argv", [
    ["validate", "--out", "o"],
    ["pseudo", "render", "--out", "o"],
])
def test_the_flags_are_named_after_the_config_keys_and_the_old_names_are_aliases(argv):
    parser = build_parser(argv[0])
    new = parser.parse_args([*argv, "--backbone", "b", "--metadata", "d"])
    old = parser.parse_args([*argv, "--model", "b", "--data", "d"])
    assert (new.backbone, new.metadata) == (old.backbone, old.metadata) == ("b", "d")
    assert not getattr(new, DEPRECATED, None)
    assert [note.split()[0] for note in getattr(old, DEPRECATED)] == ["--model", "--data"]


def test_export_names_the_backbone_after_its_config_key():
    parser = build_parser("export")
    new = parser.parse_args(["export", "run", "--backbone", "b", "--out", "o.safetensors"])
    old = parser.parse_args(["export", "run", "--model", "b", "--out", "o.safetensors"])
    assert new.backbone == old.backbone == "b"
    assert [note.split()[0] for note in getattr(old, DEPRECATED)] == ["--model"]


def test_pseudo_ingest_takes_metadata_too():
    args = build_parser("pseudo").parse_args(["pseudo", "ingest", "--data", "d", "--folder", "f", "--out", "o"])
    assert args.metadata == "d" and "use --metadata (named after the config key data.metadata)" in \
        getattr(args, DEPRECATED)[0]


def test_an_old_flag_name_is_logged_as_deprecated(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="training")
    code = main(["validate", "--model", "m", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "v")])
    assert code == 2  # no metadata: refused before loading a model
    assert "--model is deprecated" in caplog.text and "use --backbone" in caplog.text
    assert "--data is deprecated" in caplog.text
