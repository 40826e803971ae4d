"""The recipe's settings: every scale resolves to the configs recorded before the recipe became a package with TOML
stage tables (tests/data/recipe_resolved.json), the deprecated ``set`` strings still read the same, and a stage's
tables reach only that stage."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from directanimator.errors import InputError
from training.config import apply_overrides, build_config, merge_tables, read_config_file, set_value
from training.recipe import (CONFIG_DIR, SCALES, load_recipe, recipe_from_data, stage_config, transformer_config,
                             world_config)

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((Path(__file__).parent / "data" / "recipe_resolved.json").read_text())


def resolved(recipe) -> dict:
    """What a recipe means: its settings, the transformer and world it builds, and each stage's TrainConfig."""
    r = asdict(recipe)
    for stage in ("stage1", "stage2"):
        r[stage] = {k: r[stage][k] for k in ("steps", "budget_minutes")}
    world = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(world_config(recipe.world)).items()}
    return json.loads(json.dumps({
        "recipe": r, "transformer_config": transformer_config(recipe), "world_config": world,
        **{stage: stage_config(recipe, Path("work"), stage, check_paths=False,
                               checkpoint="stage1.safetensors").to_dict() for stage in ("stage1", "stage2")}},
        default=list))


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_every_scale_resolves_to_the_recorded_configs(scale):
    assert resolved(load_recipe(scale)) == RECORDED[f"recipe:{scale}"]


@pytest.mark.parametrize("scale", ["tiny", "full"])
def test_the_claims_benchmark_recipes_resolve_to_the_recorded_configs(scale):
    from benchmarks import claims

    recipe, spec = claims.load_claims(claims.CONFIGS[scale], [])
    assert {**resolved(recipe), "claims": asdict(spec)} == RECORDED[f"claims:{scale}"]


def test_the_deprecated_set_strings_read_as_the_stage_tables():
    data = read_config_file(CONFIG_DIR / SCALES["demo"])
    tables = {k: data["stage2"].pop(k) for k in ("cues", "optim", "stage2")}
    data["stage2"]["set"] = [f"{table}.{key}={json.dumps(value)}" for table, values in tables.items()
                             for key, value in values.items()]
    with pytest.warns(FutureWarning, match=r"\[stage2.optim\] lr = 2e-4"):
        old_form = recipe_from_data(data)
    assert asdict(old_form) == asdict(load_recipe("demo"))
    with pytest.raises(InputError, match="stage2.set"):
        recipe_from_data({**data, "stage2": {"set": ["lr=1"]}})


def test_a_stage_table_changes_that_stage_only_and_merges_key_by_key():
    recipe = load_recipe("demo", ["stage1.optim.lr=1e-3", "stage2.run.keep_last=5"])
    one, two = (stage_config(recipe, Path("work"), s, check_paths=False) for s in ("stage1", "stage2"))
    assert one.optim.lr == 1e-3 and one.optim.schedule == "wsd" and one.run.keep_last == 2  # [train] kept
    assert two.optim.lr == 2e-4 and two.optim.decay_steps == 1500 and two.run.keep_last == 5
    assert two.optim.warmup_steps == 200 and two.run.batch_size == 2  # [train] under [stage2.*]


def test_a_stage_may_set_every_train_config_table():
    from dataclasses import fields

    from training.config import TrainConfig
    from training.recipe import STAGE_TABLES, StageSpec

    tables = [f.name for f in fields(StageSpec) if f.name not in ("steps", "budget_minutes")]
    assert tables == [f.name for f in fields(TrainConfig)] == list(STAGE_TABLES)  # a new table needs a StageSpec field
    assert all(isinstance(getattr(StageSpec(), name), dict) for name in tables)


@pytest.mark.parametrize("setting, message", [
    ("stage2.optimizer.lr=1e-3", "unknown key 'stage2.optimizer'"),
    ("stage2.optim.learning_rate=1e-3", "unknown key 'optim.learning_rate'"),
    ("stage2.optim=3", "stage2.optim"),
])
def test_a_wrong_stage_table_is_refused_naming_it(setting, message):
    with pytest.raises(InputError, match=message):
        load_recipe("tiny", [setting])


def test_the_public_config_api_reads_merges_and_checks_tables():
    data = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "run.name='x'"])
    assert data == {"optim": {"lr": 3e-4}, "run": {"name": "x"}}
    assert set_value({}, "a.b", 1) == {"a": {"b": 1}}
    base = {"optim": {"lr": 1.0, "betas": [0.9, 0.99]}, "run": {"steps": 3}}
    merged = merge_tables(base, {"optim": {"betas": [0.5, 0.5]}})
    assert merged == {"optim": {"lr": 1.0, "betas": [0.5, 0.5]}, "run": {"steps": 3}} and base["optim"]["betas"] == [
        0.9, 0.99]
    from training.config import OptimConfig

    assert build_config(OptimConfig, {"lr": 2}, "optim").lr == 2.0
    with pytest.raises(InputError, match="optim.lr"):
        build_config(OptimConfig, {"lr": "fast"}, "optim")


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_a_card_names_no_folder_of_the_machine_that_made_it(tmp_path):
    from training.recipe import card_record

    work = tmp_path / "work"
    stages = {"stage1": {"checkpoint": str(work / "runs" / "stage1" / "step_3" / "model.safetensors"), "steps": 3},
              "stage2": {"checkpoint": "work/runs/stage2/step_2/model.safetensors"},  # relative to where it ran
              "export": {"log": str(tmp_path / "elsewhere" / "export.log"), "clip": "videos/000001.mp4"}}
    card = card_record(load_recipe("tiny"), stages, work, "python -m training recipe --out m --scale tiny")
    assert card["stages"]["stage1"] == {"checkpoint": "runs/stage1/step_3/model.safetensors", "steps": 3}
    assert card["stages"]["export"] == {"log": "export.log", "clip": "videos/000001.mp4"}
    bundled = json.loads((ROOT / "models" / "demo" / "model_card.json").read_text())
    assert not [s for s in _strings(bundled) if s.startswith(("/", "~")) or ":\\" in s]
    assert not any(s.startswith("/") for s in _strings(card))
