"""GPU smoke benchmark: CogVideoX-5B-I2V from its real config (random weights, nothing downloaded) plus CueFusion,
trained for a few stage-1 and stage-2 steps with each frozen-weight mode (bf16; fp8 storage; fp8 with block offload)
and sampled for a few steps at 480x720 with 13 latent frames, under the memory plan's settings; step times and peak
memory printed next to the plan's figures, and each mode's losses against the bf16 run's.

    python -m benchmarks.gpu_smoke             # on a CUDA GPU; rewrites the "GPU smoke" section of docs/benchmarks.md
    python -m benchmarks.gpu_smoke --no-write  # print only
    python -m benchmarks.gpu_smoke --tiny      # the same code path on a tiny config on the CPU (a check, no numbers)

Training goes through the project's own code: the recipe training/configs/cogvideox_5b_i2v_lora.toml (LoRA rank
128, bf16 frozen weights, gradient checkpointing, bf16 autocast, 8-bit AdamW when bitsandbytes is importable, the
EMA), `training.trainer.Trainer.train_step` with `stage1_loss` and `make_stage2_loss` (a frozen copy teacher, S2X
at the recipe's depth, placed by `training.frozen.place_teacher`) over a prepare cache of random latents read by
`training.data.CachedClips`; every stage starts from the same seeded random student. Only the cache
is synthetic (the real one comes from the VAE and the cue extractors, which are not the subject here), and
run.grad_accum is 1 so that a step is one forward and backward. Sampling runs `directanimator.sampling.sample_latents`
(DPM, guidance 3, two transformer passes per step) on the seeded student in bf16, as an export loads; the VAE is
not run. Without a CUDA GPU (and without --tiny) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "configs" / "cogvideox_5b_i2v_lora.toml"
SECTION = "## GPU smoke"
GB = 1e9
REAL_BACKBONE = "cogvideox-5b-i2v"
# The 5B VAE's latent scale (its vae/config.json); only the scale is needed, the VAE never runs here.
VAE_SCALING_FACTOR = 0.7
SMOKE_OVERRIDES = ["run.grad_accum=1", "run.batch_size=1", "run.log_every=1", "data.workers=0"]

# --tiny: the CogVideoX 1.0 I2V layout (learned positional table plus rotary) at toy size on the CPU, with the
# recipe's bf16 frozen weights and bf16 autocast as on the GPU ("auto" would train in fp32 on the CPU)
TINY_BACKBONE = dict(num_attention_heads=2, attention_head_dim=16, in_channels=32, out_channels=16, time_embed_dim=16,
                     text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=13, patch_size=2,
                     max_text_seq_length=8, use_rotary_positional_embeddings=True,
                     use_learned_positional_embeddings=True)
# --frozen: how training keeps the frozen weights (model.frozen_storage, model.frozen_offload; training/frozen.py)
# and the memory plan's mode for them
FROZEN_MODES = {"bf16": ("dtype", "none"), "fp8": ("fp8", "none"), "fp8_offload": ("fp8", "blocks")}
PLAN_MODES = {"bf16": "lora", "fp8": "lora_fp8", "fp8_offload": "lora_fp8_offload"}
TINY_OVERRIDES = ["run.mixed_precision='bf16'", "model.lora_rank=4", "model.lora_alpha=4.0", "model.modulation_rank=4",
                  "model.text_rank=4", "data.frames=9", "data.buckets=[[64, 64]]", "stage2.depth=0"]


@dataclass
class Phase:
    """One measured phase: its step times (s), peak CUDA memory (bytes; None on the CPU) and the plan's total."""

    name: str
    times: list[float] = field(default_factory=list)
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    plan_bytes: float | None = None
    note: str = ""
    losses: list[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ setup


def smoke_config(workdir: Path, *, tiny: bool, steps: int, frozen: str = "bf16"):
    """The recipe's TrainConfig with the data and run folders under `workdir` (and the tiny settings with --tiny),
    its frozen weights as `frozen` (a `FROZEN_MODES` name)."""
    from training.config import load_config

    metadata = workdir / "data" / "metadata.jsonl"
    metadata.parent.mkdir(parents=True, exist_ok=True)
    metadata.touch()
    storage, offload = FROZEN_MODES[frozen]
    overrides = [f"data.metadata={json.dumps(str(metadata))}", f"run.out_dir={json.dumps(str(workdir / 'runs'))}",
                 f"run.steps={max(steps, 1)}", *SMOKE_OVERRIDES, *(TINY_OVERRIDES if tiny else []),
                 f"model.frozen_storage='{storage}'", f"model.frozen_offload='{offload}'"]
    return load_config(RECIPE, overrides)


def carrier_vae(latent_channels: int):
    """A small `AutoencoderKLCogVideoX` with the 5B VAE's latent scale: sampling and the cache read the scale from
    it, and nothing here encodes or decodes."""
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                                  latent_channels=latent_channels, scaling_factor=VAE_SCALING_FACTOR).eval()


def write_synthetic_cache(config, backbone: dict, *, clips: int = 2, seed: int = 0) -> Path:
    """A prepare cache of random latents in the layout `training.prepare` writes (one window and one pseudo variant
    per clip, at data.buckets[0]), read back by `training.data.CachedClips` like a real one; returns its folder."""
    from directanimator.atomic import save_safetensors
    from directanimator.vae_io import image_latent_scale, latent_scale
    from training.data import CUE_FIELDS, NULL_TEXT, PREPARE_INFO, cache_folder, cache_key, cache_material, clip_id

    height, width = (int(v) for v in config.data.buckets[0])
    channels, h, w = int(backbone["out_channels"]), height // 8, width // 8
    video = (int(config.data.frames) - 1) // 4 + 1  # driving latents; the reference latent leads the cues
    gen = torch.Generator().manual_seed(seed)
    entries = [{"clip": f"smoke_{k}.mp4", "fps": 24, "split": "train", "height": height, "width": width,
                "identity": f"id{k}"} for k in range(clips)]
    config.metadata_path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    folder = cache_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    vae = carrier_vae(channels)
    info = {"key": cache_key(config), "material": cache_material(config),
            "reference_to_latent": latent_scale(vae) / image_latent_scale(vae)}
    (folder / PREPARE_INFO).write_text(json.dumps(info, indent=1))
    text = torch.zeros(1, int(backbone["max_text_seq_length"]), int(backbone["text_embed_dim"]))
    save_safetensors({"null_text": text}, folder / NULL_TEXT)

    def latents(frames: int) -> torch.Tensor:
        return torch.randn(frames, channels, h, w, generator=gen)

    def cues(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}{name}": latents(1 + video) if name in ("pose", "face") else
                torch.rand(1 + video, 1, h, w, generator=gen) for name in CUE_FIELDS}

    for entry in entries:
        tensors = {"w0.target": latents(video), "w0.reference": latents(1), **cues("w0.cues."), **cues("w0.pseudo0.")}
        meta = {"bucket": json.dumps([height, width]), "windows": "1", "pseudo_variants": "1", "key": info["key"],
                "clip": entry["clip"], "identity": entry["identity"]}
        save_safetensors(tensors, folder / f"{clip_id(entry)}.safetensors", meta)
    return folder


def build_student(config, backbone: dict, device: torch.device):
    """The CF-DiT of `backbone` with random weights in model.dtype on `device`, as `training.trainer.LoadedModel`."""
    from diffusers import CogVideoXTransformer3DModel

    from directanimator.models import CueFusionConfig, DirectAnimatorTransformer
    from directanimator.models.configs import default_scheduler_config
    from directanimator.models.loader import resolve_dtype
    from training.trainer import LoadedModel, seed_everything

    m = config.model
    seed_everything(config.run.seed)
    with torch.device(device):  # initialised where it runs: 5.6 B parameters would take minutes on the CPU
        net = CogVideoXTransformer3DModel(**backbone)
    net = net.to(resolve_dtype(m.dtype))
    transformer = DirectAnimatorTransformer(
        net, config=CueFusionConfig(modulation_rank=m.modulation_rank, text_rank=m.text_rank,
                                    reference_in_every_frame=m.reference_in_every_frame,
                                    residual_reference=m.residual_reference))
    null_text = torch.zeros(1, int(backbone["max_text_seq_length"]), int(backbone["text_embed_dim"]))
    return LoadedModel(transformer, default_scheduler_config(), null_text)


# ------------------------------------------------------------------------------------------------ phases


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _start_phase(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _end_phase(phase: Phase, device: torch.device) -> Phase:
    if device.type == "cuda":
        phase.peak_allocated = torch.cuda.max_memory_allocated(device)
        phase.peak_reserved = torch.cuda.max_memory_reserved(device)
    return phase


def _timed_steps(phase: Phase, step, steps: int, device: torch.device, deadline: float) -> None:
    for k in range(steps):
        if time.perf_counter() + (phase.times[-1] if phase.times else 0.0) > deadline:
            phase.note = (phase.note + "; " if phase.note else "") + f"stopped after {k} of {steps} steps (time budget)"
            return
        _sync(device)
        start = time.perf_counter()
        values = step()
        _sync(device)
        phase.times.append(time.perf_counter() - start)
        loss = ""
        if isinstance(values, dict) and "loss" in values:
            phase.losses.append(float(values["loss"]))
            loss = f", loss {values['loss']:.4f}"
        print(f"  {phase.name}: step {k + 1}/{steps} {phase.times[-1]:.2f} s{loss}", flush=True)


def run_stage(config, loaded, data, loss_fn, *, stage: int, steps: int, device: torch.device, deadline: float,
              plan_bytes: float | None, frozen: str = "bf16") -> tuple[Phase, object]:
    """`steps` optimizer steps of `Trainer.train_step`; returns the phase and the Trainer."""
    from training.trainer import Trainer

    _start_phase(device)
    trainer = Trainer(config, loaded, data, loss_fn, stage=stage)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    trained = sum(p.numel() for p in trainer.params)
    phase = Phase(f"stage {stage}" + ("" if frozen == "bf16" else f", frozen {frozen}"), plan_bytes=plan_bytes,
                  note=f"{type(optimizer).__module__.split('.')[0]}.{type(optimizer).__name__}, "
                       f"{trained / 1e6:.2f} M trained, autocast {trainer.accelerator.mixed_precision}")
    _timed_steps(phase, trainer.train_step, steps, device, deadline)
    _end_phase(phase, device)
    # accelerate's autocast wrapper off the model's forward again: the teacher copy and sampling call it plainly
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return phase, trainer


def run_sampling(model, *, steps: int, guidance: float, device: torch.device, deadline: float) -> Phase:
    """`steps` sampling steps of `sample_latents` on random conditioning at the model's own window."""
    from directanimator.conditioning import Conditioning
    from directanimator.models import CueLatents
    from directanimator.sampling import sample_latents

    cfg = model.transformer.config
    frames = (int(cfg.sample_frames) - 1) // int(cfg.temporal_compression_ratio) + 1
    c, h, w = int(cfg.out_channels), int(cfg.sample_height), int(cfg.sample_width)
    gen = torch.Generator().manual_seed(1)
    cues = CueLatents(torch.randn(1, frames, c, h, w, generator=gen), torch.randn(1, frames, c, h, w, generator=gen),
                      torch.rand(1, frames, 1, h, w, generator=gen), torch.rand(1, frames, 1, h, w, generator=gen))
    driving = (frames - 2) * 4 + 1
    cond = Conditioning(reference=torch.randn(1, 1, c, h, w, generator=gen), cues=cues, num_frames=driving,
                        padded_frames=driving)
    _start_phase(device)
    phase = Phase("sampling", note=f"DPM, guidance {guidance}, {model.transformer.dtype}, per step")
    times: list[float] = []
    last = [time.perf_counter()]

    def each(step: int, total: int, preview) -> None:
        _sync(device)
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        print(f"  sampling: step {step + 1}/{total} {times[-1]:.2f} s", flush=True)

    if time.perf_counter() < deadline:
        _sync(device)
        last[0] = time.perf_counter()
        sample_latents(model, cond, steps=steps, guidance=guidance, scheduler="dpm", callback=each)
    else:
        phase.note += "; skipped (time budget)"
    phase.times = times
    return _end_phase(phase, device)


def plan_figures(eight_bit: bool, frozen: str = "bf16") -> dict[str, float]:
    """The memory plan's totals (bytes) for LoRA training of CogVideoX-5B-I2V (benchmarks.training) with the frozen
    weights as `frozen`."""
    from benchmarks.training import memory_plan

    rows, _ = memory_plan()
    adam, mode = "8-bit" if eight_bit else "fp32", PLAN_MODES[frozen]
    pick = {(r["stage"], r["teacher"]): r["total"] for r in rows if r["mode"] == mode and r["adam"] == adam}
    return {"stage 1": pick[(1, "-")], "stage 2": pick[(2, "copy")]}


def loss_agreement(phases: list[Phase]) -> list[str]:
    """One line per stage and frozen mode: the largest per-step relative loss difference against the bf16 run of
    that stage (the same start, batches and noise)."""
    base = {p.name: p.losses for p in phases if "frozen" not in p.name and p.losses}
    lines = []
    for p in phases:
        name = p.name.split(", frozen ")[0]
        if "frozen" in p.name and p.losses and base.get(name):
            pairs = list(zip(p.losses, base[name]))
            worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)
            lines.append(f"{p.name}: loss within {worst:.2%} of the bf16 run's over {len(pairs)} steps")
    return lines


# ------------------------------------------------------------------------------------------------ report


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / GB:.1f}"


def render(phases: list[Phase], *, device_name: str, tiny: bool, config, total_s: float) -> str:
    what = "tiny config on the CPU (a check of the code path)" if tiny else \
        "CogVideoX-5B-I2V from its config, random weights"
    lines = [
        SECTION, "",
        f"`python -m benchmarks.gpu_smoke{' --tiny' if tiny else ''}` ({time.strftime('%Y-%m-%d')}, {device_name}, "
        f"torch {torch.__version__}, {platform.machine()}): {what}, "
        f"{config.data.buckets[0][1]}x{config.data.buckets[0][0]} px, 1 + {(config.data.frames - 1) // 4 + 1} latent "
        f"frames, batch 1; LoRA rank {config.model.lora_rank}, frozen weights {config.model.dtype}, gradient "
        f"checkpointing {'on' if config.model.gradient_checkpointing else 'off'}, EMA {config.optim.ema_decay}, "
        f"stage 2 with a frozen copy teacher to block {config.stage2.depth}; each frozen-weight mode "
        "(model.frozen_storage / frozen_offload: bf16, fp8, fp8 with block offload) trains both stages from the same "
        "seeded start. GB = 1e9 bytes; peak = "
        "torch.cuda.max_memory_allocated over the phase (weights included; the CUDA context is not); the plan has no "
        "EMA, the recipe keeps one (a fp32 copy of the trained tensors).", "",
        "| phase | steps | first step s | median after the first s | peak allocated GB | peak reserved GB | "
        "plan GB | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in phases:
        first = f"{p.times[0]:.2f}" if p.times else "-"
        rest = f"{statistics.median(p.times[1:]):.2f}" if len(p.times) > 1 else "-"
        lines.append(f"| {p.name} | {len(p.times)} | {first} | {rest} | {_gb(p.peak_allocated)} | "
                     f"{_gb(p.peak_reserved)} | {_gb(p.plan_bytes)} | {p.note} |")
    agreement = loss_agreement(phases)
    if agreement:
        lines += ["", "Frozen-weight modes against the bf16 run of the same stage (same start, batches and noise): "
                  + "; ".join(agreement) + "."]
    lines += ["", f"Whole run {total_s:.0f} s (model building included)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU: checks the code path, no numbers")
    parser.add_argument("--stage1-steps", type=int, default=5)
    parser.add_argument("--stage2-steps", type=int, default=5)
    parser.add_argument("--sample-steps", type=int, default=5)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="no new step starts once the run would pass this many seconds (default 7 minutes)")
    parser.add_argument("--frozen", default="bf16,fp8",
                        help="comma-separated frozen-weight modes to train both stages with, each from the same "
                             f"start: {', '.join(FROZEN_MODES)} (default bf16,fp8)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    args.frozen = [m.strip() for m in args.frozen.split(",") if m.strip()]
    unknown = [m for m in args.frozen if m not in FROZEN_MODES]
    if unknown or not args.frozen:
        parser.error(f"--frozen {unknown or args.frozen}: use comma-separated names from {', '.join(FROZEN_MODES)}")
    return args


def run_smoke(args: argparse.Namespace) -> tuple[list[Phase], object, str]:
    """Build, train stage 1 and stage 2, sample; returns the phases, the TrainConfig used and the device's name."""
    start = time.perf_counter()
    deadline = start + args.budget_s
    device = torch.device("cpu" if args.tiny else "cuda")
    device_name = "CPU" if args.tiny else torch.cuda.get_device_name(device)

    from directanimator.models import AnimatorModel
    from directanimator.models.configs import backbone_config, default_scheduler_config
    from directanimator.models.loader import resolve_dtype
    from training.data import CachedClips
    from training.frozen import place_teacher
    from training.s2x import S2XTeacher
    from training.stage1 import stage1_loss
    from training.stage2 import make_stage2_loss

    backbone = dict(TINY_BACKBONE) if args.tiny else backbone_config(REAL_BACKBONE)
    phases: list[Phase] = []
    steps = args.stage1_steps + args.stage2_steps
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        config = smoke_config(Path(tmp), tiny=args.tiny, steps=steps)
        write_synthetic_cache(config, backbone)
        for frozen in args.frozen:
            # each mode from the same start (the seeded random student), so its losses compare with bf16's
            config = smoke_config(Path(tmp), tiny=args.tiny, steps=steps, frozen=frozen)
            plan = {} if args.tiny else plan_figures(_has_bitsandbytes(), frozen)
            loaded = build_student(config, backbone, device)
            print(f"gpu_smoke: built in {time.perf_counter() - start:.0f} s on {device_name}", flush=True)
            phase, trainer = run_stage(config, loaded, CachedClips(config, stage=1), stage1_loss, stage=1,
                                       steps=args.stage1_steps, device=device, deadline=deadline,
                                       plan_bytes=plan.get("stage 1"), frozen=frozen)
            phases.append(phase)
            del trainer, loaded

            # stage 2 as `training stage2` runs it with the default teacher_mode "copy": a frozen copy of the
            # stage-1 model (here the same seeded start: the stage-1 student carries its trainer's hooks), placed
            # as the config's frozen weights
            _start_phase(device)
            loaded = build_student(config, backbone, device)
            frozen_copy = build_student(config, backbone, device).transformer
            place_teacher(frozen_copy, device, storage=config.model.frozen_storage,
                          offload=config.model.frozen_offload)
            teacher = S2XTeacher(frozen_copy, depth=config.stage2.depth)
            phase, trainer = run_stage(config, loaded, CachedClips(config, stage=2),
                                       make_stage2_loss(teacher, config), stage=2, steps=args.stage2_steps,
                                       device=device, deadline=deadline, plan_bytes=plan.get("stage 2"),
                                       frozen=frozen)
            phases.append(phase)
            del trainer, teacher, frozen_copy, loaded

        # sampling as an export loads a trained model (every tensor in model.dtype), from the same seeded start
        student = build_student(config, backbone, device).transformer.to(resolve_dtype(config.model.dtype)).eval()
        model = AnimatorModel(transformer=student, vae=carrier_vae(int(backbone["out_channels"])),
                              null_text=torch.zeros(1, int(backbone["max_text_seq_length"]),
                                                    int(backbone["text_embed_dim"])),
                              scheduler_config=default_scheduler_config(), cue_config={}, name="gpu-smoke",
                              device=device)
        phases.append(run_sampling(model, steps=args.sample_steps, guidance=args.guidance, device=device,
                                   deadline=deadline))
    print(f"gpu_smoke: whole run {time.perf_counter() - start:.0f} s", flush=True)
    return phases, config, device_name


def _has_bitsandbytes() -> bool:
    """Whether make_optimizer's adamw_8bit="auto" will take bitsandbytes' 8-bit AdamW on CUDA."""
    import importlib

    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU here, nothing to measure (python -m benchmarks.gpu_smoke --tiny checks the code "
              "path on the CPU).")
        return 0
    start = time.perf_counter()
    phases, config, device_name = run_smoke(args)
    text = render(phases, device_name=device_name, tiny=args.tiny, config=config,
                  total_s=time.perf_counter() - start)
    print(text)
    if not args.tiny and not args.no_write:
        from benchmarks.report import write_section

        write_section(ROOT / "docs" / "benchmarks.md", SECTION, text)
        print(f"wrote the {SECTION!r} section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
