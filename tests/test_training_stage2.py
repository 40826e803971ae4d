"""Stage 2: student from the stage-1 checkpoint on pseudo cues, the frozen teacher on same-ID cues; both losses
logged and the S2X weight follows its schedule."""

from __future__ import annotations

import pytest
import torch

from tests.training_world import CONFIG, make_world, overrides
from training.config import load_config
from training.prepare import prepare
from training.stage1 import train_stage1
from training.stage2 import train_stage2
from training.trainer import read_metrics


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stage2")
    data, model = make_world(root)
    args = overrides(root, data, model)
    prepare(load_config(CONFIG, args))
    train_stage1(load_config(CONFIG, [*args, "run.name='s1'", "run.steps=3", "run.save_every=3"]))
    yield root, args, root / "runs" / "s1" / "checkpoints" / "step_000003" / "model.safetensors"
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["copy", "lora_disabled"])
def test_stage2_logs_denoising_and_s2x_with_the_lambda_ramp(stage1, mode, monkeypatch):
    import training.trainer

    root, args, checkpoint = stage1
    config = load_config(CONFIG, [*args, f"model.checkpoint='{checkpoint}'", f"run.name='s2_{mode}'",
                                  f"stage2.teacher_mode='{mode}'", "run.steps=4", "stage2.lambda_ramp_steps=2",
                                  "stage2.lambda_value=0.5"])
    verified = []
    real_verify = training.trainer.verify_checkpoint
    monkeypatch.setattr(training.trainer, "verify_checkpoint",
                        lambda folder, names=None: (verified.append((folder, names)), real_verify(folder, names)))
    records = train_stage2(config)
    # the stage-1 model file is hashed once, though the student and (in copy mode) the teacher both load it
    assert verified == [(checkpoint.parent, (checkpoint.name,))]
    assert [r["step"] for r in read_metrics(root / "runs" / f"s2_{mode}")] == [1, 2, 3, 4]
    assert [r["lambda"] for r in records] == [0.0, 0.25, 0.5, 0.5]
    for r in records:
        assert -1.0 <= r["s2x"] <= 1.0 and r["denoise"] > 0
        assert r["loss"] == pytest.approx(r["denoise"] + r["lambda"] * r["s2x"], rel=1e-5)
    # pseudo cues differ from the same-ID cues, so the student's block tokens are not yet the teacher's
    assert records[0]["s2x"] > -0.9999


def test_stage2_without_stage1_checkpoint_is_refused(stage1):
    from directanimator.errors import InputError

    _, args, _ = stage1
    with pytest.raises(InputError, match="model.checkpoint"):
        train_stage2(load_config(CONFIG, [*args, "run.name='s2_none'"]))


def test_stage2_refuses_a_run_folder_it_did_not_write_before_the_model_loads(stage1, monkeypatch):
    import training.stage2
    from directanimator.errors import InputError

    root, args, checkpoint = stage1
    (root / "runs" / "s2_notes").mkdir(parents=True)
    (root / "runs" / "s2_notes" / "draft.tex").write_text("...")
    monkeypatch.setattr(training.stage2, "load_student", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match="s2_notes: the folder is not empty"):
        train_stage2(load_config(CONFIG, [*args, f"model.checkpoint='{checkpoint}'", "run.name='s2_notes'"]))


def test_lora_stage2_on_a_full_stage1_saves_merged_weights_that_load(stage1):
    """A stage-2 LoRA on top of fully trained stage-1 weights is saved folded into full weights."""
    from directanimator.models import load_model, read_checkpoint

    root, args, _ = stage1
    train_stage1(load_config(CONFIG, [*args, "run.name='s1_full'", "model.train='full'", "run.steps=2",
                                      "run.save_every=2"]))
    full = root / "runs" / "s1_full" / "checkpoints" / "step_000002" / "model.safetensors"
    assert read_checkpoint(full).weights == "full"
    config = load_config(CONFIG, [*args, f"model.checkpoint='{full}'", "model.train='lora'", "run.name='s2_merge'",
                                  "stage2.teacher_mode='copy'", "run.steps=2", "run.save_every=2"])
    train_stage2(config)
    saved = root / "runs" / "s2_merge" / "checkpoints" / "step_000002" / "model.safetensors"
    assert read_checkpoint(saved).weights == "full"
    model = load_model(config.model.backbone, saved, dtype="fp32")
    assert not getattr(model.transformer.backbone, "peft_config", None)
