"""A trained LoRA exported in diffusers' and peft's formats loads with their own loaders onto a plain CogVideoX
backbone and reproduces the trained student's backbone; the CueFusion checkpoint beside it completes the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from directanimator.errors import InputError
from directanimator.models import DirectAnimatorTransformer, load_model, save_checkpoint
from directanimator.models.checkpoint import apply_checkpoint, read_checkpoint
from directanimator.models.loader import DEFAULT_SCHEDULER_CONFIG
from tests.tiny import (TINY_LATENT_FRAMES_10, LATENT, save_tiny_diffusers, tiny_backbone, tiny_cue_latents,
                        tiny_inputs, tiny_vae)
from training.checkpointing import save_training_checkpoint
from training.cli import main
from training.export import export_training_checkpoint
from training.lora_format import (CUE_FILE, DIFFUSERS_LORA_FILE, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, export_lora,
                                  lora_folder_for)

RANK, ALPHA = 4, 8  # alpha != rank: a loader that lost the alpha would apply the LoRA at half its trained scale
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def trained_student(seed: int = 1, *, backbone_seed: int = 0) -> DirectAnimatorTransformer:
    """A CF-DiT on the tiny backbone with a LoRA and CueFusion weights set as if trained."""
    from peft import LoraConfig

    from directanimator.models import CueFusionConfig

    model = DirectAnimatorTransformer(tiny_backbone(seed=backbone_seed),
                                      config=CueFusionConfig(modulation_rank=8, text_rank=8)).eval()
    model.requires_grad_(False)
    model.backbone.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
        for param in model.cue_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model


def backbone_output(backbone, student: DirectAnimatorTransformer) -> torch.Tensor:
    """A plain CogVideoX backbone's prediction on the tiny inputs, with the rotary embeddings the student uses."""
    rope = student.rotary_embeddings(TINY_LATENT_FRAMES_10, LATENT, LATENT)
    with torch.no_grad():
        return backbone(**tiny_inputs(), image_rotary_emb=rope, return_dict=False)[0]


def student_output(student: DirectAnimatorTransformer, *, cues: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return student(**tiny_inputs(), cues=tiny_cue_latents() if cues else None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[DirectAnimatorTransformer, Path]:
    student = trained_student()
    folder = export_lora(student, tmp_path_factory.mktemp("export") / "lora", formats=["diffusers", "peft"],
                         null_text=torch.ones(1, 8, 32), scheduler_config=DEFAULT_SCHEDULER_CONFIG)
    return student, folder


def test_diffusers_pipeline_load_lora_weights_gives_the_students_backbone(exported):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

    student, folder = exported
    with safe_open(str(folder / DIFFUSERS_LORA_FILE), framework="pt") as fh:
        keys = set(fh.keys())
        meta = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "transformer.transformer_blocks.1.attn1.to_out.0.lora_B.weight" in keys
    assert not any(".block." in k or "fusion" in k for k in keys)  # plain diffusers names, LoRA only
    assert (meta["transformer.r"], meta["transformer.lora_alpha"]) == (RANK, ALPHA)

    pipe = CogVideoXImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae(), transformer=tiny_backbone(),
                                         scheduler=CogVideoXDDIMScheduler(**DEFAULT_SCHEDULER_CONFIG))
    bare = backbone_output(pipe.transformer, student)
    pipe.load_lora_weights(str(folder))
    loaded = backbone_output(pipe.transformer, student)
    want = student_output(student)  # cues off: the student's backbone with its LoRA
    torch.testing.assert_close(loaded, want, rtol=1e-5, atol=1e-5)
    assert (bare - want).abs().max() > 1e-2  # the LoRA changes the backbone, so the match above is the LoRA's


def test_peft_from_pretrained_gives_the_students_backbone(exported):
    from peft import PeftModel

    student, folder = exported
    config = json.loads((folder / PEFT_CONFIG_FILE).read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (RANK, ALPHA, sorted(TARGETS))
    with safe_open(str(folder / PEFT_WEIGHTS_FILE), framework="pt") as fh:
        assert "base_model.model.transformer_blocks.0.attn1.to_q.lora_A.weight" in set(fh.keys())
    model = PeftModel.from_pretrained(tiny_backbone(), str(folder))
    torch.testing.assert_close(backbone_output(model.base_model.model, student), student_output(student),
                               rtol=1e-5, atol=1e-5)


def test_the_lora_and_the_cue_checkpoint_beside_it_rebuild_the_whole_student(exported):
    from diffusers import CogVideoXImageToVideoPipeline

    student, folder = exported
    cue = read_checkpoint(folder / CUE_FILE)
    assert cue.weights == "none" and not cue.lora_state and cue.extra["lora"]["lora_alpha"] == ALPHA
    backbone = tiny_backbone()
    state, meta = CogVideoXImageToVideoPipeline.lora_state_dict(str(folder), return_lora_metadata=True)
    CogVideoXImageToVideoPipeline.load_lora_into_transformer(state, transformer=backbone, metadata=meta)
    rebuilt = DirectAnimatorTransformer(backbone, config=cue.cue_fusion).eval()
    apply_checkpoint(rebuilt, cue)
    torch.testing.assert_close(student_output(rebuilt, cues=True), student_output(student, cues=True),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(cue.null_text, torch.ones(1, 8, 32))


def test_a_model_without_a_lora_is_refused_before_anything_is_written(tmp_path):
    bare = DirectAnimatorTransformer(tiny_backbone())
    with pytest.raises(InputError, match="no LoRA adapter"):
        export_lora(bare, tmp_path / "lora")
    with pytest.raises(InputError, match="LoRA formats"):
        export_lora(trained_student(), tmp_path / "lora", formats=["kohya"])
    assert not (tmp_path / "lora").exists()


@pytest.mark.slow
def test_training_export_writes_the_merged_checkpoint_and_the_lora_folder(tmp_path):
    backbone = save_tiny_diffusers(tmp_path / "backbone", "1.0")
    animator = load_model(backbone, dtype="fp32")
    student = trained_student(backbone_seed=0)  # save_tiny_diffusers' backbone is tiny_backbone(seed=0)
    trainable = {n: p for n, p in student.named_parameters() if "lora_" in n or p.requires_grad}
    step = save_training_checkpoint(
        tmp_path / "run", 4, trainable=trainable, state={"step": 4},
        write_model=lambda p: save_checkpoint(p, student, null_text=animator.null_text))
    out = tmp_path / "model.safetensors"
    assert main(["export", str(step), "--backbone", str(backbone), "--out", str(out), "--weights", "merged",
                 "--lora-format", "diffusers", "--lora-format", "peft"]) == 0
    folder = lora_folder_for(out)
    assert folder == tmp_path / "model_lora"
    assert {DIFFUSERS_LORA_FILE, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, CUE_FILE} <= {p.name for p in folder.iterdir()}
    merged = load_model(backbone, out, dtype="fp32")
    assert merged.info["weights"] == "full"  # the merged full checkpoint, as without --lora-format
    torch.testing.assert_close(student_output(merged.transformer, cues=True), student_output(student, cues=True),
                               rtol=1e-5, atol=1e-5)
    plain = tiny_backbone()
    plain.load_lora_adapter(str(folder), prefix="transformer", weight_name=DIFFUSERS_LORA_FILE)
    torch.testing.assert_close(backbone_output(plain, student), student_output(student), rtol=1e-5, atol=1e-5)

    cue_only = save_training_checkpoint(  # a CueFusion-only run has no LoRA to write
        tmp_path / "cue_run", 2, trainable=dict(student.named_parameters()), state={"step": 2},
        write_model=lambda p: save_checkpoint(p, student, weights="none", null_text=animator.null_text))
    with pytest.raises(InputError, match="not a LoRA"):
        export_training_checkpoint(cue_only, tmp_path / "cue.safetensors", backbone=backbone,
                                   lora_formats=["diffusers"])
    assert not (tmp_path / "cue_lora").exists() and not (tmp_path / "cue.safetensors").exists()


def test_a_lora_the_formats_refuse_leaves_no_exported_checkpoint_behind(tmp_path):
    """--lora-format with a DoRA adapter is refused before --out is written (the refusal came after it before)."""
    from peft import LoraConfig

    backbone = save_tiny_diffusers(tmp_path / "backbone", "1.0")
    student = DirectAnimatorTransformer(tiny_backbone(seed=0)).eval()
    student.backbone.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, use_dora=True))
    step = save_training_checkpoint(
        tmp_path / "run", 2, trainable={n: p for n, p in student.named_parameters() if "lora_" in n},
        state={"step": 2}, write_model=lambda p: save_checkpoint(p, student))
    out = tmp_path / "dora.safetensors"
    with pytest.raises(InputError, match="DoRA adapters"):
        export_training_checkpoint(step, out, backbone=backbone, lora_formats=["diffusers"])
    assert not out.exists() and not lora_folder_for(out).exists()
