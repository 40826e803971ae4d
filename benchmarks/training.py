"""Training benchmark: the stage-2 step (student forward/backward + S2X teacher to block D) against the stage-1
step on one tiny-but-not-trivial CF-DiT, side by side in one process; and the memory plan of CogVideoX-5B-I2V
training on one 24, 48 and 80 GB GPU from its real configuration (`size_report`).

    python -m benchmarks.training               # prints the tables and writes the "Training" section of docs/benchmarks.md
    python -m benchmarks.training --no-write --repeats 3

Both steps: LoRA (rank 16, attention projections) + CueFusion trained in fp32, gradient checkpointing on, AdamW,
batch 2. Stage 2 adds a frozen teacher copy run through blocks 0..D without gradients and the S2X capture. The
steps are interleaved and the median of the repeats compared. Peak memory is the rise of the resident set over
one step, measured in a fresh child process per stage.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.report import write_section

ROOT = Path(__file__).resolve().parents[1]

SECTION = "## Training"
GIB = 1024 ** 3
GB = 1e9
# The timed configuration: 8 blocks of 4 heads x 32, a 128x128 px clip of 1 reference + 4 video latents.
TIMED = dict(num_attention_heads=4, attention_head_dim=32, in_channels=32, out_channels=16, time_embed_dim=64,
             text_embed_dim=64, num_layers=8, sample_width=16, sample_height=16, sample_frames=17, patch_size=2,
             max_text_seq_length=16, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)
LATENT_FRAMES, LATENT_SIDE, BATCH, LORA_RANK, DEPTH = 5, 16, 2, 16, 3
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# Memory plan of CogVideoX-5B-I2V (the 5B repo's training recipe, training/configs/cogvideox_5b_i2v_lora.toml).
PLAN_LORA_RANK = 128
PLAN_DEPTH = 20  # S2X block of the plan: the teacher runs blocks 0..20 of 42
GPUS_GB = (24, 48, 80)
CUDA_OVERHEAD_GB = 1.5  # CUDA context, allocator fragmentation and kernels workspace, roughly


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args()


# ------------------------------------------------------------------------------------------------ timed steps


def build(stage: int):
    """(student, teacher or None, optimizer, step function) of `stage`."""
    from diffusers import CogVideoXTransformer3DModel
    from peft import LoraConfig

    from directanimator.models import CueFusionConfig, CueLatents, DirectAnimatorTransformer
    from training.s2x import S2XTeacher, capture_block_output, s2x_loss

    torch.manual_seed(0)
    student = DirectAnimatorTransformer(CogVideoXTransformer3DModel(**TIMED),
                                        config=CueFusionConfig(modulation_rank=16, text_rank=16))
    teacher = S2XTeacher(copy.deepcopy(student), depth=DEPTH) if stage == 2 else None
    student.requires_grad_(False)
    student.backbone.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGETS))
    for name, param in student.named_parameters():
        param.requires_grad_("lora_" in name or ".fusion." in name or name.startswith(("pose_", "face_", "shared_")))
    student.backbone.enable_gradient_checkpointing()
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    gen = torch.Generator().manual_seed(1)
    shape = (BATCH, LATENT_FRAMES, 16, LATENT_SIDE, LATENT_SIDE)
    mask = (BATCH, LATENT_FRAMES, 1, LATENT_SIDE, LATENT_SIDE)

    def cues() -> CueLatents:
        return CueLatents(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen),
                          torch.rand(mask, generator=gen), torch.rand(mask, generator=gen))

    inputs = dict(hidden_states=torch.randn(BATCH, LATENT_FRAMES, 32, LATENT_SIDE, LATENT_SIDE, generator=gen),
                  encoder_hidden_states=torch.randn(BATCH, 16, 64, generator=gen), timestep=torch.tensor([200, 700]))
    target = torch.randn(shape, generator=gen)
    same, pseudo = cues(), cues()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if teacher is None:
            loss = F.mse_loss(student(**inputs, cues=same), target)
        else:
            with capture_block_output(student, DEPTH) as tokens:
                prediction = student(**inputs, cues=pseudo)
                student_tokens = tokens()
            loss = F.mse_loss(prediction, target) + 0.5 * s2x_loss(student_tokens,
                                                                   teacher.features(**inputs, cues=same))
        loss.backward()
        optimizer.step()

    return student, teacher, params, step


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _peak_child(stage: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    *_, step = build(stage)
    step()  # allocator warm-up: the second step is the steady state
    before = _rss_bytes()
    step()
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)


def peak_memory(stage: int, threads: int) -> int:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(stage, threads, queue))
    proc.start()
    value = queue.get(timeout=900)
    proc.join()
    return int(value)


def time_steps(repeats: int) -> dict:
    runs = {1: build(1), 2: build(2)}
    trainable = sum(p.numel() for p in runs[1][2])
    total = sum(p.numel() for p in runs[1][0].parameters())
    for _, _, _, step in runs.values():
        step()  # warm-up
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for stage, (_, _, _, step) in runs.items():
            start = time.perf_counter()
            step()
            times[stage].append(time.perf_counter() - start)
    return {"median": {s: statistics.median(t) for s, t in times.items()}, "times": times,
            "trainable": trainable, "parameters": total}


# ------------------------------------------------------------------------------------------------ memory plan


def memory_plan() -> tuple[list[dict], dict]:
    """Rows of the CogVideoX-5B-I2V single-GPU plan (bytes) and the size report it came from
    (`directanimator.models.info.memory_plan`, which `python -m directanimator info` prints for every backbone)."""
    from directanimator.models.info import memory_plan as plan_rows
    from directanimator.models.info import size_report

    report = size_report("cogvideox-5b-i2v", lora_targets=LORA_TARGETS)
    return plan_rows(report, lora_rank=PLAN_LORA_RANK, gpus_gb=GPUS_GB, overhead_gb=CUDA_OVERHEAD_GB), report


# ------------------------------------------------------------------------------------------------ report


def _gb(n: float) -> str:
    return f"{n / GB:.1f}"


def render(timing: dict, peaks: dict, rows: list[dict], report: dict, threads: int) -> str:
    layers = TIMED["num_layers"]
    t1, t2 = timing["median"][1], timing["median"][2]
    ratio = t2 / t1
    goal = (1 + (DEPTH + 1) / layers) * 1.1
    when = datetime.date.today().isoformat()
    lines = [
        SECTION, "",
        f"`python -m benchmarks.training` ({when}, {platform.machine()}, torch {torch.__version__}, {threads} threads, "
        "CPU, fp32; other jobs shared the 2 cores, so absolute times are loose, the ratio is the result).", "",
        f"Timed model: CF-DiT of {layers} blocks, 4 heads x 32, {timing['parameters'] / 1e6:.2f} M parameters "
        f"({timing['trainable'] / 1e6:.2f} M trained: LoRA rank {LORA_RANK} + CueFusion), 128x128 px, "
        f"1 + {LATENT_FRAMES - 1} latent frames, batch {BATCH}, gradient checkpointing, AdamW. Stage 2: S2X at "
        f"block D = {DEPTH} (0-based: the teacher runs {DEPTH + 1} of {layers} blocks), frozen teacher copy.", "",
        "| step | median time | samples/s | peak memory rise over a step |",
        "|---|---|---|---|",
        f"| stage 1 (denoising) | {t1 * 1e3:.0f} ms | {BATCH / t1:.1f} | {peaks[1] / 2 ** 20:.0f} MiB |",
        f"| stage 2 (denoising + S2X, teacher to block D) | {t2 * 1e3:.0f} ms | {BATCH / t2:.1f} | "
        f"{peaks[2] / 2 ** 20:.0f} MiB |", "",
        f"Stage 2 / stage 1 = **{ratio:.3f}**; goal at most (1 + (D+1)/L) x 1.1 = {goal:.3f}: "
        f"**{'met' if ratio <= goal else 'not met'}**. The teacher adds a forward through {DEPTH + 1}/{layers} of "
        "the blocks without a graph, about a third of that fraction of a forward+backward step.", "",
        "### Memory plan: CogVideoX-5B-I2V on one GPU", "",
        f"From `size_report('cogvideox-5b-i2v')`: {report['backbone_parameters'] / 1e9:.2f} B backbone + "
        f"{report['cue_parameters'] / 1e6:.0f} M CueFusion parameters; window {report['window']['latent_frames']} "
        f"latent frames at {report['window']['width']}x{report['window']['height']} ({report['tokens']['total']} "
        f"tokens), batch 1. Activations with gradient checkpointing (bf16): "
        f"{_gb(rows[0]['activations'])} GB. LoRA rank {PLAN_LORA_RANK} on {', '.join(LORA_TARGETS)}: "
        f"{(rows[0]['trained'] - report['cue_parameters']) / 1e6:.0f} M parameters. Stage 2 at D = {PLAN_DEPTH}. "
        "Latents and cues cached by `prepare`, so neither the VAE nor T5 is loaded. GB = 1e9 bytes; add about "
        f"{CUDA_OVERHEAD_GB} GB of CUDA context and fragmentation.", "",
        "| train | AdamW | stage | teacher | weights | grads | fp32 master | optimizer states | activations | "
        "teacher (weights + fwd) | total | 24 GB | 48 GB | 80 GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fits = ["yes" if r["total"] + CUDA_OVERHEAD_GB * GB <= g * GB else "no" for g in GPUS_GB]
        lines.append(f"| {r['mode']} | {r['adam']} | {r['stage']} | {r['teacher']} | {_gb(r['weights'])} | "
                     f"{_gb(r['grads'])} | {_gb(r['master'])} | {_gb(r['states'])} | {_gb(r['activations'])} | "
                     f"{_gb(r['teacher_bytes'])} | **{_gb(r['total'])}** | {' | '.join(fits)} |")
    lines += [
        "",
        "Rules used: frozen weights bf16; LoRA and CueFusion tensors trained in fp32 (weights, grads, AdamW m and v); "
        "full fine-tuning keeps bf16 weights and grads, with fp32 AdamW plus an fp32 master copy, or 8-bit AdamW "
        "states (bitsandbytes, 2 bytes per parameter) and no master copy. Stage 2's `copy` teacher is a second "
        "bf16 model; `lora_disabled` reuses the student (LoRA training only). Full fine-tuning of the 5B model "
        "does not fit one 80 GB GPU with fp32 AdamW: shard it over several GPUs "
        "(training/configs/accelerate_fsdp.yaml or accelerate_deepspeed.yaml).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows, report = memory_plan()
    timing = time_steps(args.repeats)
    peaks = {stage: peak_memory(stage, args.threads) for stage in (1, 2)}
    section = render(timing, peaks, rows, report, args.threads)
    print(section)
    if not args.no_write:
        write_section(args.output, SECTION, section)
        print(f"wrote the {SECTION!r} section of {args.output}")


if __name__ == "__main__":
    main()
