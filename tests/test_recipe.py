"""The demo-model recipe: one command runs every stage into a loadable model folder with a model card, resumes
by skipping finished stages, and refuses impossible settings before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from directanimator.errors import InputError
from training.recipe import CARD, CARD_JSON, CHECKPOINT_NAME, STAGES, load_recipe, recipe_command, run_recipe

# tiny_root (conftest.py): `recipe --scale tiny` run once per test session.


def test_one_command_writes_a_loadable_model_folder_with_a_card(tiny_root):
    from directanimator.models import load_model

    out = tiny_root / "models" / "demo"
    for name in ("transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json", CHECKPOINT_NAME,
                 CARD, CARD_JSON, "demo/reference.png", "demo/driving.mp4", "demo/target.mp4",
                 "demo/truth.safetensors", "demo/demo.json"):
        assert (out / name).is_file(), name
    model = load_model(out, out / CHECKPOINT_NAME, dtype="fp32")
    assert model.transformer.backbone.config.patch_size_t == 2  # CogVideoX 1.5 layout
    assert not model.transformer.backbone.config.use_learned_positional_embeddings
    assert model.info["extra"]["timesteps"] == [0, 1000]  # the trained range travels into the bundled checkpoint
    assert model.vae.config.latent_channels == 16 and model.vae.config.scaling_factor != 1.15258426
    assert model.cue_config["height"] == model.cue_config["width"] == 64
    # the exported transformer/ holds the stage-2 weights, not the fresh initialisation of the work folder
    fresh = load_model(tiny_root / "work" / "backbone", dtype="fp32").transformer.backbone_state_dict()
    trained = model.transformer.backbone_state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)


def test_model_card_records_every_stage_and_the_numbers(tiny_root):
    out = tiny_root / "models" / "demo"
    card = json.loads((out / CARD_JSON).read_text())
    assert set(card["stages"]) == set(STAGES) - {"card"}
    assert card["stages"]["stage1"]["steps"] == 3 and card["stages"]["stage2"]["steps"] == 2
    assert {"denoise", "s2x"} <= set(card["stages"]["stage2"]["final_losses"])
    assert all(card["stages"][s]["seconds"] >= 0 for s in card["stages"])
    val = card["stages"]["validate"]
    assert val["kinds"] == ["cross"]
    assert all(isinstance(val[k], float) for k in ("psnr", "ssim", "baseline_psnr", "baseline_ssim"))
    assert card["stages"]["vae"]["held_out_psnr"] > 0
    assert 0 < card["megabytes"] < 30
    for stage in ("stage1", "stage2"):  # relative to the work folder: the card names no folder of the machine
        checkpoint = card["stages"][stage]["checkpoint"]
        assert not Path(checkpoint).is_absolute() and (tiny_root / "work" / checkpoint).is_file()
    assert card["command"].startswith("python -m training recipe --out ") and "--scale tiny" in card["command"]
    text = (out / CARD).read_text()
    for phrase in ("Reproduce (one command)", "static reference", "stage 2 (cross-ID, S2X)", "VAE held-out"):
        assert phrase in text


def test_resume_skips_finished_stages_and_a_second_run_without_resume_is_refused(tiny_root, tmp_path):
    work, out = tiny_root / "work", tmp_path / "again"
    with pytest.raises(InputError, match="pass --resume"):
        run_recipe(out, scale="tiny", work=work)
    before = {s: json.loads((work / "markers" / f"{s}.json").read_text()) for s in STAGES if s != "card"}
    card = run_recipe(out, scale="tiny", work=work, resume=True)  # only the card stage runs again
    after = {s: json.loads((work / "markers" / f"{s}.json").read_text()) for s in STAGES if s != "card"}
    assert before == after
    assert (out / CHECKPOINT_NAME).is_file()
    # the card holds the marker's numbers, and its checkpoint relative to the work folder
    checkpoint = card["stages"]["stage1"]["checkpoint"]
    assert card["stages"]["stage1"] == {**before["stage1"], "checkpoint": checkpoint}
    assert (work / checkpoint).resolve() == Path(before["stage1"]["checkpoint"]).resolve()
    # the card's reproduce line is the machine-free command; the command as run is recorded beside it
    assert card["command"] == f"python -m training recipe --out {out} --scale tiny"
    text = (out / CARD).read_text()
    assert f"```bash\n{card['command']}\n```" in text and card["run_as"] == f"{card['command']} --work {work} --resume"
    assert f"This folder was made by `{card['run_as']}`" in text


def test_a_rerun_replaces_its_own_model_folder(tiny_root, tmp_path):
    work, out = tiny_root / "work", tmp_path / "model"
    run_recipe(out, scale="tiny", work=work, resume=True)
    (out / "stale.txt").write_text("left by the first run")
    run_recipe(out, scale="tiny", work=work, resume=True)  # the recipe's own output: replaced, not refused
    assert (out / CHECKPOINT_NAME).is_file() and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old copy beside it


def _precious(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder


@pytest.mark.parametrize("which", ["out", "work"])
def test_a_folder_the_recipe_did_not_write_is_refused_before_any_work(tmp_path, which):
    folders = {"out": tmp_path / "out", "work": tmp_path / "work"}
    mine = _precious(folders[which])
    with pytest.raises(InputError, match=rf"--{which} {mine}: the folder is not empty.*new or empty folder"):
        run_recipe(folders["out"], scale="tiny", work=folders["work"])
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert not folders["work" if which == "out" else "out"].exists()


def test_the_model_folder_and_the_work_folder_may_not_contain_each_other(tmp_path):
    for out, work in ((tmp_path, tmp_path / "work"), (tmp_path / "w" / "m", tmp_path / "w"), (tmp_path, tmp_path)):
        with pytest.raises(InputError, match="one lies inside the other"):
            run_recipe(out, scale="tiny", work=work)
    assert list(tmp_path.iterdir()) == []


def test_a_model_folder_written_before_output_markers_is_still_the_recipes(tmp_path):
    from training.recipe import check_folders

    old = tmp_path / "models" / "demo"
    old.mkdir(parents=True)
    (old / CARD_JSON).write_text(json.dumps({"command": "python -m training recipe --out models/demo"}))
    check_folders(old, tmp_path / "work")  # accepted: its card names the recipe
    (old / CARD_JSON).write_text(json.dumps({"command": "something else"}))
    with pytest.raises(InputError, match="--out"):
        check_folders(old, tmp_path / "work")


def test_the_recipe_command_line_names_the_work_folder_and_resume_only_when_given():
    assert recipe_command("m", "demo", ["stage1.steps=5"], config_path="c.toml") == \
        "python -m training recipe --out m --scale demo --config c.toml --set stage1.steps=5"
    assert recipe_command("m", "tiny", [], work="/w x", resume=True) == \
        "python -m training recipe --out m --scale tiny --work '/w x' --resume"


@pytest.mark.parametrize("setting, message", [
    ("world.val_clips=0", "val_clips"),
    ("world.size=72", "world.size=72"),
    ("vae.frames=5", "8k\\+1"),
    ("stage1.budget_minutes=5", "schedule"),
    ("train.optim.lr=-1.0", "optim.lr"),
    ("stage2.stepz=3", "unknown key 'stage2.stepz'"),
    ("train_clips=5", "train_clips=5"),
    ("world.backgrounds=['bricks']", "world.backgrounds"),
    ("validate.scheduler='euler'", "validate.scheduler='euler'"),
    ("validate.anchor='middle'", "validate.anchor='middle'"),
])
def test_bad_recipe_settings_fail_before_any_work(tmp_path, setting, message):
    overrides = [setting, "train.optim.schedule='cosine'"] if "budget" in setting else [setting]
    with pytest.raises(InputError, match=message):
        run_recipe(tmp_path / "out", scale="tiny", work=tmp_path / "work", overrides=overrides)
    assert not (tmp_path / "work").exists()


def test_the_demo_scale_fits_the_size_budget_of_design_9():
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    from training.recipe import transformer_config

    recipe = load_recipe("demo")
    with torch.device("meta"):
        vae = AutoencoderKLCogVideoX(**recipe.vae.architecture())
        transformer = CogVideoXTransformer3DModel(**transformer_config(recipe))
    # the VAE is stored in fp32, the exported transformer in bf16 (training.recipe._export); the rest of the budget
    # is for CueFusion and the demo inputs
    stored = sum(p.numel() for p in vae.parameters()) * 4 + sum(p.numel() for p in transformer.parameters()) * 2
    assert stored / 2**20 < 0.85 * recipe.max_megabytes
    assert recipe.world.size <= 128 and 9 <= recipe.world.frames <= 17
    assert 1e6 < sum(p.numel() for p in transformer.parameters()) < 1e7  # "a few million parameters"


def _pair_truth(folder: Path, name: str, *, driver_cut: bool, reference_cut: bool) -> dict:
    from safetensors.torch import save_file

    def masks(cut: bool) -> torch.Tensor:
        m = torch.zeros(3, 32, 32)
        m[:, 8:20, 10:20] = 1
        if cut:
            m[:, 20:, 12:18] = 1  # the legs run out of the frame at the bottom
        return m

    save_file({"person_masks": masks(driver_cut), "cross_reference_person_masks": masks(reference_cut)},
              str(folder / f"{name}.safetensors"))
    return {"clip": f"{name}.mp4", "split": "val", "cross_target": f"{name}_x.mp4",
            "ground_truth": f"{name}.safetensors"}


def test_the_demo_pair_is_the_first_held_out_pair_with_whole_figures(tmp_path):
    from training.recipe import demo_entry

    train = {**_pair_truth(tmp_path, "t", driver_cut=False, reference_cut=False), "split": "train"}
    cut_reference = _pair_truth(tmp_path, "a", driver_cut=False, reference_cut=True)
    cut_driver = _pair_truth(tmp_path, "b", driver_cut=True, reference_cut=False)
    whole = _pair_truth(tmp_path, "c", driver_cut=False, reference_cut=False)
    entry, truth = demo_entry(tmp_path, [train, cut_reference, cut_driver, whole])
    assert entry is whole and truth["person_masks"].shape == (3, 32, 32)
    assert demo_entry(tmp_path, [train, cut_reference, cut_driver])[0] is cut_reference  # none whole: the first
    with pytest.raises(InputError, match="no held-out cross-identity pair"):
        demo_entry(tmp_path, [train])


def test_a_stage_budget_and_its_wall_time_span_resumed_invocations(tmp_path, monkeypatch):
    """A recipe killed mid-stage and run again with --resume continues the stage's clock: the budget holds over
    both invocations and the card records the whole training time, not only the last invocation's."""
    import time

    import training.recipe as recipe_module

    recipe = load_recipe("tiny", ["stage1.steps=1000", "stage1.budget_minutes=0.01"])  # a 0.6 s budget
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "metadata.jsonl").write_text("{}\n")
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def train(config, resume=None):  # one chunk: its checkpoint folder and metrics line, after 0.4 s of training
        now[0] += 0.4
        (config.run_dir / "checkpoints" / f"step_{config.run.steps:07d}").mkdir(parents=True)
        with open(config.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": config.run.steps, "loss": 0.5, "denoise": 0.5}) + "\n")

    calls = []

    def killed_in_second_chunk(config, resume=None):
        calls.append(config.run.steps)
        if len(calls) == 2:
            now[0] += 0.1
            raise KeyboardInterrupt  # killed before the chunk's checkpoint: resume redoes the chunk
        train(config, resume)

    with pytest.raises(KeyboardInterrupt):
        recipe_module.run_stage(recipe, tmp_path, "stage1", killed_in_second_chunk)
    record = recipe_module.run_stage(recipe, tmp_path, "stage1", train)
    # 0.4 s recorded by the first invocation + the redone second chunk's 0.4 s: past the 0.6 s budget
    save_every = recipe_module.stage_config(recipe, tmp_path, "stage1", check_paths=False).run.save_every
    assert record["stopped_by_budget"] and record["steps"] == 2 * save_every
    assert record["seconds"] == pytest.approx(0.8)


def test_the_demo_inputs_carry_the_validate_sampling_settings(tiny_root, tmp_path):
    from training.recipe import DEMO_JSON, write_demo_inputs

    recipe = load_recipe("tiny", ["validate.scheduler='ddim'", "validate.steps=3", "validate.guidance=1.5",
                                  "validate.samples=4", "validate.anchor='clip'"])
    info = write_demo_inputs(tiny_root / "work" / "world", tmp_path / "demo", recipe)
    written = json.loads((tmp_path / "demo" / DEMO_JSON).read_text())
    assert written == info
    assert (info["scheduler"], info["steps"], info["guidance"], info["samples"], info["anchor"]) == (
        "ddim", 3, 1.5, 4, "clip")
    unset = write_demo_inputs(tiny_root / "work" / "world", tmp_path / "plain", load_recipe("tiny"))
    assert unset["anchor"] is None  # the model's own anchor


def test_the_card_names_the_validation_anchor_and_a_note(tiny_root):
    from training.recipe import model_card_text

    card = json.loads((tiny_root / "models" / "demo" / CARD_JSON).read_text())
    assert "location anchor" not in model_card_text(card)
    card["stages"]["validate"].update(anchor="first", note="Measured again with the first frame.")
    text = model_card_text(card)
    assert "; location anchor: first):" in text and "\nMeasured again with the first frame.\n" in text


def test_the_card_says_when_prepare_reused_cached_clips(tiny_root):
    from training.recipe import model_card_text

    card = json.loads((tiny_root / "models" / "demo" / CARD_JSON).read_text())
    counts = card["stages"]["prepare"]["train"]
    assert counts["cached"] == 0 and "were already in the cache" not in model_card_text(card)
    card["stages"]["prepare"]["train"] = {**counts, "cached": 7}
    assert (f"covers the {counts['done']} clips it prepared; the other 7 of the {counts['done'] + 7} were already "
            "in the cache") in model_card_text(card)


def test_the_card_names_world_settings_other_than_the_defaults(tiny_root):
    from training.recipe import model_card_text

    card = json.loads((tiny_root / "models" / "demo" / CARD_JSON).read_text())
    assert "World settings other than the defaults" not in model_card_text(card)
    card["stages"]["synth"].update(limb_thickness=2.0, turn_probability=0.0)
    line = "- World settings other than the defaults (docs/world.md): limb_thickness = 2.0, turn_probability = 0.0."
    assert line in model_card_text(card)


def test_world_settings_of_a_recipe_reach_the_rendered_world(tmp_path):
    from training.recipe import WorldSpec, world_config
    from training.world import WorldConfig

    assert world_config(WorldSpec(size=64, frames=5)) == WorldConfig(height=64, width=64, num_frames=5,
                                                                     identities=200)
    spec = WorldSpec(size=64, frames=5, limb_thickness=2.0, close_up_probability=0.0, turn_probability=0.0,
                     moving_background_probability=0.0, plain_clothes=True, reference_in_place=True)
    config = world_config(spec)
    assert (config.limb_thickness, config.close_up_probability, config.turn_probability,
            config.moving_background_probability, config.plain_clothes, config.reference_in_place) == (
        2.0, 0.0, 0.0, 0.0, True, True)
    with pytest.raises(InputError, match="limb_thickness"):
        run_recipe(tmp_path / "out", scale="tiny", work=tmp_path / "work", overrides=["world.limb_thickness=9.0"])
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("stage2_tables, caches", [([], 1), (["stage2.cues.align_pose=true"], 2),
                                                   (["stage2.optim.lr=1e-4"], 1)])
def test_prepare_makes_a_cache_for_each_stage_whose_tables_change_the_cached_tensors(tmp_path, monkeypatch,
                                                                                     stage2_tables, caches):
    import training.prepare
    from training.recipe.stages import _prepare

    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "metadata.jsonl").write_text("")
    prepared = []

    def fake_prepare(config, limit=None):
        prepared.append(config.cues.align_pose)
        return {"cached": 1, "done": 2, "skipped": 0, "folder": "unused"}

    monkeypatch.setattr(training.prepare, "prepare", fake_prepare)
    recipe = load_recipe("tiny", stage2_tables)
    counts = _prepare(recipe, tmp_path)
    assert len(prepared) == len(counts) == caches
    assert prepared == [False, True][:caches]  # stage 1's cache first, then stage 2's own
