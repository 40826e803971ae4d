"""Prepare's costs, side by side in one run.

    python -m benchmarks.prepare [--clips 6] [--repeats 3] [--no-write]          # encode precision
    python -m benchmarks.prepare --scale [--repeats 2] [--no-write]              # real footage, real sizes
    python -m benchmarks.prepare --ingest [--copies 4] [--no-write]              # ingest throughput

Default: renders `--clips` world samples (128x128 px, 17 frames: the bundled demo model's working size), extracts
their exact cue triplets (the clip's own and a pseudo driving clip's, as prepare caches them) and encodes each clip
with `training.prepare.encode_clip` through the bundled demo model's VAE (`models/demo/vae`): 5 videos of 17 frames
and 6 single frames per clip. fp32 and bf16 alternate per repeat; the table gives the median seconds per clip and
the bf16 latents' error against fp32 (root mean square over every cached tensor, relative to its standard
deviation). Prints the table and writes the "Prepare" section of docs/benchmarks.md.

`--scale`: one window of the real footage (/work/shared/data/real, 1080x1920 portrait, 24 fps) decoded and framed
at 128x128 (17 frames) and 480x720 (45 frames at 8 fps, CogVideoX-5B-I2V's window), by the whole-clip float32 read
prepare used before and by its window read straight to the working size in uint8 (letterbox, and crop with the
person segmented); then the VAE's share, counted in FLOPs on the meta device for the real CogVideoX VAE config
and the demo VAE, with the demo VAE's measured time per clip. Writes the "Prepare at scale" section.

`--ingest`: `python -m training ingest` on copies of the real dance video, source minutes per wall minute against
decoding alone (benchmarks/ingest.py). Writes the "Ingest" section.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.report import benchmark_parser, machine_line, publish
from directanimator.models.configs import backbone_config
from training.prepare import encode_autocast, encode_clip, meta_transformer
from training.world import WorldConfig, exact_cues, make_sample

ROOT = Path(__file__).resolve().parents[1]

SECTION = "## Prepare"
MODEL = ROOT / "models" / "demo"


def windows_of(index: int, config: WorldConfig) -> list[dict]:
    """One cached window of world sample `index`: target frames, its exact cues and a pseudo driving clip's."""
    sample = make_sample(index, config, seed=0)
    return [{"target": sample.clip.frames, "cues": exact_cues(sample.reference, sample.clip),
             "pseudo": [exact_cues(sample.reference, sample.pseudo_driving)]}]


def timed(model, clips: list[list[dict]], precision: str) -> tuple[float, list[dict]]:
    """Median-ready seconds per clip of encoding `clips` under `precision`, and the cached tensors."""
    out = []
    started = time.perf_counter()
    with torch.no_grad(), encode_autocast(model.vae, precision):
        for windows in clips:
            out.append(encode_clip(model, windows))
    return (time.perf_counter() - started) / len(clips), out


def relative_error(reference: list[dict], other: list[dict]) -> float:
    """The largest root-mean-square difference of a cached tensor, relative to that tensor's standard deviation."""
    worst = 0.0
    for a, b in zip(reference, other):
        for key in a:
            scale = float(a[key].float().std()) or 1.0
            worst = max(worst, float((a[key] - b[key]).float().pow(2).mean().sqrt()) / scale)
    return worst


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=3)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--scale", action="store_true", help="real footage at real working sizes (see above)")
    parser.add_argument("--ingest", action="store_true", help="ingest throughput on the real footage (see above)")
    parser.add_argument("--copies", type=int, default=4, help="--ingest: copies of the dance video to ingest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ingest:
        from benchmarks.ingest import run_ingest

        run_ingest(args)
        return
    if args.scale:
        from benchmarks.prepare_scale import run_scale

        run_scale(args)
        return
    from diffusers import AutoencoderKLCogVideoX

    vae = AutoencoderKLCogVideoX.from_pretrained(MODEL / "vae").eval()
    model = SimpleNamespace(vae=vae, transformer=meta_transformer(backbone_config(MODEL / "transformer" / "config.json")))
    world = WorldConfig(height=128, width=128, num_frames=17, identities=200)
    clips = [windows_of(i, world) for i in range(args.clips)]
    timed(model, clips[:1], "fp32")  # warm-up
    timed(model, clips[:1], "bf16")
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    tensors: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            spent, tensors[precision] = timed(model, clips, precision)
            seconds[precision].append(spent)
    fp32, bf16 = statistics.median(seconds["fp32"]), statistics.median(seconds["bf16"])
    error = relative_error(tensors["fp32"], tensors["bf16"])
    table = "\n".join([
        "| `data.encode_precision` | s per clip | clips per minute | latents' error against fp32 |",
        "|---|---:|---:|---:|",
        f"| fp32 | {fp32:.2f} | {60 / fp32:.1f} | |",
        f"| bf16 (autocast) | {bf16:.2f} | {60 / bf16:.1f} | {100 * error:.2f} % rms (largest tensor) |",
    ])
    text = "\n".join([
        SECTION, "",
        f"`python -m benchmarks.prepare` ({args.clips} world clips at 128x128 px, 17 frames, their exact cues and a "
        f"pseudo driving clip's, encoded by the bundled demo model's VAE as prepare caches them; median of "
        f"{args.repeats} interleaved repeats); {machine_line(args.threads)}.", "",
        table, "",
        f"bf16 encodes {fp32 / bf16:.2f}x as fast here. The error is that of the cached tensor that differs most, "
        "as a share of its own standard deviation. Without native bf16 (no AVX512-BF16 or AMX) autocast is slower "
        "than fp32, and prepare warns.",
    ])
    publish(text, SECTION, write=not args.no_write)


if __name__ == "__main__":
    main()
