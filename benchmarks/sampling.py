"""Sampling benchmark: peak memory of sampling + decoding a video four context windows long against one window,
plain and with every memory and speed option on, and denoising speed; then the speed options side by side (plain,
batched guidance, each step cache).

    python -m benchmarks.sampling     # prints the tables and writes the "Sampling" and "Sampling speed options"
                                      # sections of docs/benchmarks.md
    python -m benchmarks.sampling --no-write --steps 2
    python -m benchmarks.sampling --no-write --only options

The speed-options table samples a two-window video with `--option-steps` steps in one process: an untimed plain
run, an untimed MagCache run (which measures its magnitude ratios), then `--repeats` rounds of every option in
turn (the fastest run counts), the peak-RSS counter reset before each; the sampled latents are compared with the
plain run's (max |difference| / std of the plain latents).

Each case runs in a fresh child process: it builds the same seeded model (CogVideoX 1.5 layout, small), encodes
a synthetic cue triplet, then resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5) and reads
``VmHWM`` after sampling and after decoding. Peak minus the RSS just before sampling is the working memory of
the phase. Torch CPU tensors live in malloc'd memory that tracemalloc does not see, and RSS counts it all.
The output frames grow with the video by design (DESIGN.md 6), so they are reported apart. The "every option"
cases put `ALL_OPTIONS_MEMORY` into effect (fp8 storage; block offload, CPU to CPU here, which still runs every
onload/offload hook) and sample with `ALL_OPTIONS_SAMPLING` (a step cache, batched guidance); compile is left out
(inductor's CPU compile takes minutes and changes no state that grows with windows).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]

SECTION = "## Sampling"
OPTIONS_SECTION = "## Sampling speed options"
# name -> sample_latents keywords; the plain run is the baseline of the table
OPTIONS = {
    "plain": {},
    "batched guidance": dict(batch_guidance=True),
    "first_block 0.05": dict(cache="first_block"),
    "first_block 0.2": dict(cache="first_block", cache_threshold=0.2),
    "mag 0.06": dict(cache="mag"),
    "taylorseer 5": dict(cache="taylorseer"),
    "taylorseer 3": dict(cache="taylorseer", cache_threshold=3),
    "first_block 0.2 + batched": dict(cache="first_block", cache_threshold=0.2, batch_guidance=True),
    "plain, another seed (scale of the error)": dict(seed=1),
}
# the windows table's "every option" cases: memory options (apply_memory_options) and sampling options
ALL_OPTIONS_MEMORY = dict(storage="fp8", offload="blocks")
ALL_OPTIONS_SAMPLING = dict(cache="first_block", cache_threshold=0.2, batch_guidance=True)
MIB = 1024 * 1024
WINDOWS_GOAL = 1.15  # four windows' working memory against one window's, at most
MMAP_THRESHOLD = 64 * 1024


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="frame height = width in px")
    parser.add_argument("--window", type=int, default=5, help="video latent frames per window (odd for 1.5)")
    parser.add_argument("--overlap", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiling", choices=["auto", "on", "off"], default="on", help="spatial VAE tiling")
    parser.add_argument("--tile", type=int, default=8, help="VAE tile side in latent cells (8 px each)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--only", choices=["windows", "options"], default=None, help="run one of the two tables")
    parser.add_argument("--option-steps", type=int, default=20, help="denoising steps of the speed-options table")
    parser.add_argument("--option-layers", type=int, default=8, help="transformer layers of the speed-options model")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of timed runs of the speed options")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # video latent frames
    parser.add_argument("--all-on", action="store_true", help=argparse.SUPPRESS)  # child: every option on
    parser.add_argument("--options-child", action="store_true", help=argparse.SUPPRESS)  # run the speed options
    parser.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)  # where the child saves latents
    return parser.parse_args(argv)


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> None:
    """Return freed heap to the system, then restart the kernel's peak-RSS counter."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def run_case(args: argparse.Namespace) -> dict:
    """Child process: one video of ``args.child`` video latent frames; returns memory and timings."""
    import torch

    from benchmarks.synthetic import random_animator, random_triplet
    from directanimator.conditioning import encode_conditioning
    from directanimator.models.caching import CacheStats, held_state_bytes
    from directanimator.models.memory import MemoryOptions, apply_memory_options
    from directanimator.plan import frames_from_latents
    from directanimator.sampling import plan_windows, sample_latents

    torch.set_num_threads(args.threads)
    model = random_animator(size=args.size, heads=args.heads, head_dim=args.head_dim, layers=args.layers)
    options = {}
    if args.all_on:
        apply_memory_options(model.transformer, MemoryOptions(**ALL_OPTIONS_MEMORY), device="cpu")
        options = dict(ALL_OPTIONS_SAMPLING)
    num_latents = args.child
    frames = 4 * (num_latents - 1) + 1
    tiling = {"auto": None, "on": True, "off": False}[args.tiling]
    tile = (args.tile, args.tile)
    cond = encode_conditioning(model, random_triplet(frames, height=args.size, width=args.size), tiling=False)
    windows = len(plan_windows(num_latents, args.window, args.overlap).spans)

    _reset_peak()
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    stats = CacheStats()
    held = {"bytes": 0}

    def measure_cache(estimate) -> None:  # the cache states at the last step, when every context has one
        if estimate.step == estimate.steps - 1 and estimate.window == windows - 1:
            held["bytes"] = held_state_bytes(model.transformer)

    latents = sample_latents(model, cond, steps=args.steps, guidance=args.guidance, seed=0,
                             window=args.window, overlap=args.overlap, stats=stats,
                             on_window=measure_cache if args.all_on else None, **options)
    sample_s = time.perf_counter() - start
    sample_peak = _status_kib("VmHWM")
    _reset_peak()
    rss_mid = _status_kib("VmRSS")
    start = time.perf_counter()
    video = frames_from_latents(model, latents, tiling=tiling, tile=tile)
    decode_s = time.perf_counter() - start
    decode_peak = _status_kib("VmHWM")
    return {
        "options": "every option" if args.all_on else "plain", "cache_states": len(stats.contexts),
        "cache_mib": held["bytes"] / MIB,
        "video_latents": num_latents, "frames": int(video.shape[0]), "windows": windows,
        "sample_work_mib": (sample_peak - rss_before) / 1024, "decode_work_mib": (decode_peak - rss_mid) / 1024,
        "peak_mib": max(sample_peak, decode_peak) / 1024, "baseline_mib": rss_before / 1024,
        "output_mib": video.numel() * video.element_size() / MIB,
        "latents_mib": latents.numel() * latents.element_size() / MIB,
        "steps_per_s": args.steps / sample_s, "sample_s": sample_s, "decode_s": decode_s,
        "decode_fps": video.shape[0] / decode_s,
    }


def option_latents(args: argparse.Namespace) -> int:
    """Video latent frames of the speed-options video: two windows."""
    latents = args.window + (args.window - args.overlap)
    return latents + 1 if (1 + latents) % 2 else latents


def run_options(args: argparse.Namespace) -> list[dict]:
    """Child process: sample the speed-options video with every option, in rounds (each round runs every option
    once, so a change of the machine's load hits all of them alike); returns per option the fastest run, the
    largest working memory and what the cache did, and saves each option's latents under `args.save`."""
    import torch

    from benchmarks.synthetic import random_animator, random_triplet
    from directanimator.conditioning import encode_conditioning
    from directanimator.models.caching import CacheStats
    from directanimator.sampling import sample_latents

    torch.set_num_threads(args.threads)
    model = random_animator(size=args.size, heads=args.heads, head_dim=args.head_dim, layers=args.option_layers)
    frames = 4 * (option_latents(args) - 1) + 1
    cond = encode_conditioning(model, random_triplet(frames, height=args.size, width=args.size), tiling=False)

    def sample(options: dict, stats=None):
        return sample_latents(model, cond, steps=args.option_steps, guidance=args.guidance, window=args.window,
                              overlap=args.overlap, stats=stats, **{"seed": 0, **options})

    sample({})  # untimed: first-call costs
    sample(dict(cache="mag"))  # untimed: MagCache measures this model's magnitude ratios
    rows = {name: {"option": name, "sample_s": float("inf"), "work_mib": 0.0} for name in OPTIONS}
    for _ in range(args.repeats):
        for index, (name, options) in enumerate(OPTIONS.items()):
            stats = CacheStats()
            _reset_peak()
            rss_before = _status_kib("VmRSS")
            start = time.perf_counter()
            latents = sample(options, stats)
            row = rows[name]
            row["sample_s"] = min(row["sample_s"], time.perf_counter() - start)
            row["work_mib"] = max(row["work_mib"], (_status_kib("VmHWM") - rss_before) / 1024)
            row.update(forwards=stats.forwards, skipped=stats.skipped)
            torch.save(latents, args.save / f"{index}.pt")
            del latents
    for row in rows.values():
        row["steps_per_s"] = args.option_steps / row["sample_s"]
    return list(rows.values())


def _child_env(threads: int) -> dict:
    # A fixed mmap threshold makes glibc return every large freed block at once, so RSS follows live memory
    # instead of a heap high-water mark left by earlier phases.
    return dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE",
                MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))


def _run_child(extra: list[str], argv: list[str], threads: int, what: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.sampling", *argv, *extra]
    out = subprocess.run(command, env=_child_env(threads), cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark case {what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spawn(argv: list[str], num_latents: int, threads: int, *, all_on: bool = False) -> dict:
    return _run_child(["--child", str(num_latents)] + (["--all-on"] if all_on else []), argv, threads,
                      f"with {num_latents} latents{' and every option' if all_on else ''}")


def spawn_options(argv: list[str], threads: int) -> list[dict]:
    """The speed options in one child process; errors against the plain run's latents."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        rows = _run_child(["--options-child", "--save", tmp], argv, threads, "speed options")
        latents = [torch.load(Path(tmp) / f"{i}.pt") for i in range(len(rows))]
    plain = latents[0]
    for row, out in zip(rows, latents):
        row["error"] = float((out - plain).abs().max() / plain.std())
    return rows


def options_table(rows: list[dict]) -> str:
    base = rows[0]
    lines = ["| option | steps/s | speed-up | sampling work MiB | forwards served from the cache | error vs plain |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = f"{r['skipped']} of {r['forwards']} ({100 * r['skipped'] / r['forwards']:.0f}%)" if r["forwards"] \
            else "-"
        lines.append(f"| {r['option']} | {r['steps_per_s']:.2f} | {r['steps_per_s'] / base['steps_per_s']:.2f}x | "
                     f"{r['work_mib']:.1f} | {share} | {r['error']:.3g} |")
    return "\n".join(lines)


def options_section(args: argparse.Namespace, rows: list[dict]) -> str:
    latents = option_latents(args)
    return "\n".join([
        OPTIONS_SECTION,
        "",
        f"`python -m benchmarks.sampling --only options` ({args.size}x{args.size} px, CogVideoX 1.5 layout with "
        f"{args.option_layers} layers of {args.heads}x{args.head_dim} heads and random cue weights, "
        f"{4 * (latents - 1) + 1} frames = {latents} video latents in two windows of {args.window} (overlap "
        f"{args.overlap}), {args.option_steps} DPM steps, guidance {args.guidance}); {os.cpu_count()} cores, "
        f"{platform.machine()}, {args.threads} torch threads, torch {__import__('torch').__version__}, "
        f"{datetime.date.today()}; load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "Method: one process runs an untimed plain run and an untimed MagCache run (which measures the model's "
        f"magnitude ratios), then {args.repeats} rounds of every option in turn (so changes of the machine's load "
        "hit all options alike); the fastest run of each counts. Sampling work MiB: `VmHWM` at the end of a run "
        "minus `VmRSS` at its start, the peak-RSS counter reset before it (`/proc/self/clear_refs`; tracemalloc "
        "does not see torch's CPU tensors). Forwards served from the cache: backbone forwards whose blocks were "
        "skipped, of all forwards (windows x guidance branches x steps; one cache state per window and branch). "
        "Error: max |latents - plain latents| / std(plain latents); the last row gives its scale, the plain run "
        "with another seed. "
        "Thresholds: first_block = relative change of the first block's residual, mag = accumulated ratio error, "
        "taylorseer = full forward every N steps.",
        "",
        options_table(rows),
    ])


def table(cases: list[dict]) -> str:
    rows = ["| options | video | windows | cache states (MiB) | sampling work MiB | "
            "decoding work MiB (output excluded) | output frames MiB | process peak MiB | steps/s | decode fps |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cases:
        rows.append(f"| {c['options']} | {c['frames']} frames ({c['video_latents']} latents) | {c['windows']} | "
                    f"{c['cache_states']} ({c['cache_mib']:.1f}) | "
                    f"{c['sample_work_mib']:.1f} | {c['decode_work_mib'] - c['output_mib']:.1f} | "
                    f"{c['output_mib']:.1f} | {c['peak_mib']:.0f} | {c['steps_per_s']:.2f} | {c['decode_fps']:.1f} |")
    return "\n".join(rows)


def windows_ratios(one: dict, four: dict) -> str:
    """One sentence: the four-window case against the one-window case of the same options."""
    ratio_sample = four["sample_work_mib"] / max(one["sample_work_mib"], 1e-6)
    ratio_decode = ((four["decode_work_mib"] - four["output_mib"])
                    / max(one["decode_work_mib"] - one["output_mib"], 1e-6))
    ratio_peak = four["peak_mib"] / one["peak_mib"]
    grown = (four["output_mib"] - one["output_mib"]) + (four["latents_mib"] - one["latents_mib"])
    excl = (four["peak_mib"] - grown) / one["peak_mib"]
    cache = four["cache_mib"] - one["cache_mib"]
    held = f", of which {cache:+.1f} MiB the cache states" if cache else ""
    return (f"- {four['options']}, four windows against one: sampling working memory {ratio_sample:.2f}x "
            f"({four['sample_work_mib'] - one['sample_work_mib']:+.1f} MiB{held}), decoding working memory "
            f"{ratio_decode:.2f}x (output frames excluded), whole-process peak {ratio_peak:.2f}x ({excl:.2f}x "
            f"without the {grown:.1f} MiB of extra output frames and latents); sampling goal "
            f"{'met' if ratio_sample <= WINDOWS_GOAL else 'not met'}; each whole-video latent tensor the sampler "
            f"holds (latents, blended prediction, scheduler outputs) is {four['latents_mib'] - one['latents_mib']:.2f} "
            "MiB larger, by design.")


def main() -> None:
    args = parse_args()
    if args.child is not None:
        print(json.dumps(run_case(args)))
        return
    if args.options_child:
        print(json.dumps(run_options(args)))
        return
    if args.window % 2 == 0:
        raise SystemExit("--window must be odd: the CogVideoX 1.5 layout pairs latent frames and the reference is one")
    argv = [a for a in sys.argv[1:] if a != "--no-write"]
    if args.only != "windows":
        text = options_section(args, spawn_options(argv, args.threads))
        print(text + "\n")
        if not args.no_write:
            report.write_section(args.output, OPTIONS_SECTION, text)
            print(f"wrote the {OPTIONS_SECTION[3:]} section of {args.output}\n")
        if args.only == "options":
            return
    stride = args.window - args.overlap
    long_latents = args.window + 3 * stride  # four windows
    if (1 + long_latents) % 2:
        long_latents += 1
    cases = [spawn(argv, latents, args.threads, all_on=all_on) for all_on in (False, True)
             for latents in (args.window, long_latents)]
    load = os.getloadavg()[0]
    text = "\n".join([
        SECTION,
        "",
        f"`python -m benchmarks.sampling` ({args.size}x{args.size} px, CogVideoX 1.5 layout with {args.layers} layers "
        f"of {args.heads}x{args.head_dim} heads, tiny VAE, window {args.window} video latents + the reference, "
        f"overlap {args.overlap}, {args.steps} DPM steps, guidance {args.guidance}, VAE tiling {args.tiling} with "
        f"{args.tile}x{args.tile}-cell tiles); "
        f"{os.cpu_count()} cores, {platform.machine()}, {args.threads} torch threads, torch "
        f"{__import__('torch').__version__}, {datetime.date.today()}; load average {load:.1f} at the end.",
        "",
        "Method: each case runs in a fresh process (glibc `MALLOC_MMAP_THRESHOLD_=65536`, so freed tensors leave the "
        "RSS at once); before each phase the heap is trimmed and the kernel's peak-RSS counter reset "
        "(`/proc/self/clear_refs`), and the working memory of a phase is `VmHWM` at its end minus `VmRSS` at its "
        "start (tracemalloc does not see torch's CPU tensors). The output frames are allocated by the decoder and "
        "grow with the video by design; they are listed apart. Encoding is not measured.",
        "",
        table(cases),
        "",
        f"Every option: {', '.join(f'{k} {v}' for k, v in ALL_OPTIONS_MEMORY.items())} "
        f"(`MemoryOptions`, CPU to CPU), {', '.join(f'{k} {v}' for k, v in ALL_OPTIONS_SAMPLING.items())}; "
        "compile left out (minutes of inductor on the CPU, no state that grows with windows). Cache states: the "
        "step cache's contexts (one per window and guidance branch; batched guidance: one per window) and the "
        "bytes of the tensors they hold at the last step (`caching.held_state_bytes`).",
        "",
        *[windows_ratios(one, four) for one, four in (cases[:2], cases[2:])],
        "",
        f"Goal: at most {WINDOWS_GOAL:g}x. Steps per second fall with the number of windows, as each window is a "
        "forward (x2 with guidance, or one forward of batch 2 batched). A step cache keeps one state per window and "
        "guidance branch for the whole run: every window is denoised at every step (the windows' predictions are "
        "blended per step), so no window is done before the last step and no state can be freed at a handoff. "
        "The growth is linear in the windows, not a spike at a handoff; on CogVideoX-5B at 480x720 a first-block "
        "state is about 0.3 GB (Sampling speed options), so 10 windows with unbatched guidance hold about 6 GB. On "
        "a GPU the sampler parks the idle contexts' states on the CPU (`StepCache(park=...)`, on by default there "
        "with more than one context), so the GPU holds one state at a time; on this CPU-only machine they stay in "
        "this process's memory and the table counts them.",
    ])
    print(text)
    if not args.no_write:
        report.write_section(args.output, SECTION, text)
        print(f"\nwrote the Sampling section of {args.output}")


if __name__ == "__main__":
    main()
