"""A stage-1 training step of the bundled demo model: fp32 against bf16 autocast (`run.mixed_precision`), and the
fused AdamW the trainer uses against torch's default CPU AdamW.

    python -m benchmarks.precision [--repeats 5] [--steps 10] [--no-write]

Loads the bundled demo model (`models/demo`: the CogVideoX 1.5-layout transformer with its CueFusion weights) and
trains all of it as the recipe's stage 1 does: batch 2, one 128x128 px clip of 17 frames (the reference and 5
video latents, 16x16 cells), random latents and cues, mean squared error, AdamW. The cases alternate, `--steps`
steps each per repeat; the table gives the median seconds per step, and the prediction's error under bf16 against
fp32 on one fixed batch (before any step). Prints the table and writes the "Training precision" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.report import benchmark_parser, machine_line, publish
from directanimator.models import CueLatents, load_model

ROOT = Path(__file__).resolve().parents[1]

SECTION = "## Training precision"
MODEL = ROOT / "models" / "demo"
BATCH, FRAMES, SIDE = 2, 6, 16  # latent frames: the reference and 5 video latents (17 frames)


def precision(name: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(MODEL, MODEL / "directanimator.safetensors", dtype="fp32").transformer.train()
    channels = int(model.latent_channels)
    gen = torch.Generator().manual_seed(0)
    latents = (BATCH, FRAMES, channels, SIDE, SIDE)
    masks = (BATCH, FRAMES, 1, SIDE, SIDE)
    cues = CueLatents(torch.randn(latents, generator=gen), torch.randn(latents, generator=gen),
                      torch.rand(masks, generator=gen), torch.rand(masks, generator=gen))
    inputs = dict(hidden_states=torch.randn(BATCH, FRAMES, 2 * channels, SIDE, SIDE, generator=gen),
                  encoder_hidden_states=torch.randn(BATCH, 8, int(model.backbone.config.text_embed_dim),
                                                    generator=gen),
                  timestep=torch.tensor([950, 990]))
    target = torch.randn(latents, generator=gen)
    with torch.no_grad():
        reference = model(**inputs, cues=cues).float()
        with precision("bf16"):
            mixed = model(**inputs, cues=cues).float()
    error = float((mixed - reference).pow(2).mean().sqrt() / reference.std())
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizers = {"loop": torch.optim.AdamW(trained, lr=1e-6), "fused": torch.optim.AdamW(trained, lr=1e-6, fused=True)}
    # (label, autocast, optimizer): torch's default CPU AdamW (a Python loop over the tensors) as the baseline, then
    # the fused AdamW the trainer uses (training.trainer.make_optimizer), in fp32 and under bf16 autocast
    cases = [("fp32, AdamW as a loop over tensors (before)", "fp32", "loop"),
             ("fp32, fused AdamW (`mixed_precision = \"no\"`)", "fp32", "fused"),
             ("bf16 autocast, fused AdamW (`mixed_precision = \"bf16\"`)", "bf16", "fused")]

    def steps(autocast: str, optimizer: str) -> float:
        opt = optimizers[optimizer]
        started = time.perf_counter()
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            with precision(autocast):
                loss = F.mse_loss(model(**inputs, cues=cues).float(), target)
            loss.backward()
            opt.step()
        return (time.perf_counter() - started) / args.steps

    for _, autocast, optimizer in cases:
        steps(autocast, optimizer)  # warm-up
    seconds: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for _ in range(args.repeats):
        for label, autocast, optimizer in cases:
            seconds[label].append(steps(autocast, optimizer))
    median = {label: statistics.median(values) for label, values in seconds.items()}
    base = median[cases[0][0]]
    parameters = sum(p.numel() for p in model.parameters())
    rows = [f"| {label} | {median[label]:.3f} | {60 / median[label]:.0f} | {base / median[label]:.2f}x | "
            f"{f'{100 * error:.2f} % rms' if autocast == 'bf16' else ''} |" for label, autocast, _ in cases]
    text = "\n".join([
        SECTION, "",
        f"`python -m benchmarks.precision` (the bundled demo model, {parameters / 1e6:.2f} M parameters, all trained; "
        f"batch {BATCH}, {FRAMES} latent frames of {SIDE}x{SIDE} cells: a 17-frame 128x128 px clip; median "
        f"of {args.repeats} interleaved repeats of {args.steps} steps); {machine_line(args.threads)}.", "",
        "| step | s per step | steps per minute | speed-up | prediction's error against fp32 |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "bf16 autocast keeps fp32 weights and optimizer state. The error is the root mean square difference of one "
        "forward pass's prediction, as a share of the prediction's standard deviation.",
    ])
    publish(text, SECTION, write=not args.no_write)


if __name__ == "__main__":
    main()
