"""`python -m benchmarks.prepare --scale`: prepare's per-window costs on real footage at real working sizes (the
module docstring of benchmarks/prepare.py says what is measured)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.report import machine_line, publish
from directanimator.cues import CueConfig, extract_cues
from directanimator.errors import InputError
from directanimator.models.configs import backbone_config
from directanimator.video import probe_video, read_video, resize_frames
from training.framing import letterbox_framing, read_size
from training.prepare import (
    _read_frames, _to_float, _window_framing, clip_timeline, encode_autocast, encode_clip, meta_transformer,
    window_indices,
)

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Prepare at scale"
VIDEO = Path("/work/shared/data/real/dance_1080x1920_24fps.mp4")
MODEL = ROOT / "models" / "demo"
# (label, bucket, frames, data.fps; 0 = the clip's own rate)
SIZES = [("128x128, 17 frames", (128, 128), 17, 0.0), ("480x720, 45 frames at 8 fps", (480, 720), 45, 8.0)]
BIG = [("480x720, 45 frames", (480, 720), 45), ("768x1360, 81 frames", (768, 1360), 81)]


def _median(run, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def _old(video: Path, fps: float, rows: list[int], size: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """What `_extract` did before: the clip read whole at source size in float32 (here only up to the window's last
    frame), then the window's frames letterboxed."""
    clip = read_video(video, max_frames=max(rows) + 1, fps=fps).frames
    return resize_frames(clip[rows], size, "pad"), clip.nbytes


def _new(video: Path, fps: float, rows: list[int], size: tuple[int, int], source, fit: str):
    frames = _read_frames(video, rows, read_size(source, size, fit), fps)
    if fit == "crop":
        framing = _window_framing("crop", source, size, scene=False, truth=None, rows=rows, frames_scaled=frames,
                                  cues=CueConfig())
    else:
        framing = letterbox_framing(source, size)
    return _to_float(framing.place(frames)), frames.nbytes


def encoder_flops(vae, frames: int, size: tuple[int, int]) -> float:
    """FLOPs of one pass of `vae`'s encoder over ``frames`` frames of `size` (counted on the meta device)."""
    x = torch.empty(1, 3, frames, *size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.encoder(x)
    return float(counter.get_total_flops())


def window_flops(vae, frames: int, size: tuple[int, int]) -> float:
    """Encoder FLOPs of one cached window without pseudo cues: target, pose and face cue videos (with the
    reference's leading frame) and the reference image."""
    return encoder_flops(vae, frames, size) + 2 * encoder_flops(vae, frames + 1, size) + \
        encoder_flops(vae, 1, size)


def run_scale(args) -> None:
    if not VIDEO.is_file():
        raise InputError(f"benchmarks.prepare --scale: the real footage {VIDEO} is not here.")
    probe = probe_video(VIDEO)
    source, count, fps = (probe["height"], probe["width"]), probe["frame_count"], float(probe["fps"])
    rows_md = ["| working size | path | s per window | decoded frames held (MB) |", "|---|---|---:|---:|"]
    whole = count * source[0] * source[1] * 3 * 4 / 2**20
    cue_seconds = {}
    for label, size, frames, rate in SIZES:
        (rows,) = window_indices(clip_timeline(count, fps, rate), frames, 1, 1)
        old_s, (old_out, _) = _median(lambda: _old(VIDEO, fps, rows, size), args.repeats)
        rows_md.append(f"| {label} | before: whole clip, float32, source size (timed to the window's end) | "
                       f"{old_s:.2f} | {whole:.0f} (all {count} frames) |")
        for fit in ("letterbox", "crop"):
            new_s, (out, held) = _median(lambda fit=fit: _new(VIDEO, fps, rows, size, source, fit), args.repeats)
            extra = " (+ the person's box, segmented at 256 px)" if fit == "crop" else ""
            rows_md.append(f"| {label} | window read to size, uint8, fit={fit}{extra} | {new_s:.2f} | "
                           f"{held / 2**20:.1f} |")
        letterboxed = _new(VIDEO, fps, rows, size, source, "letterbox")[0]
        assert (letterboxed - old_out).abs().max() < 2.5 / 255  # the same pixels up to uint8 rounding
        config = CueConfig(height=size[0], width=size[1])
        started = time.perf_counter()
        extract_cues(out[:1], out, config)
        cue_seconds[label] = time.perf_counter() - started

    from diffusers import AutoencoderKLCogVideoX

    demo = AutoencoderKLCogVideoX.from_pretrained(MODEL / "vae").eval()
    model = SimpleNamespace(vae=demo, transformer=meta_transformer(backbone_config(MODEL / "transformer" /
                                                                                   "config.json")))
    clip = read_video(VIDEO, max_frames=17, size=(128, 128), resize="pad").frames
    window = {"target": clip, "cues": extract_cues(clip[:1], clip, CueConfig(height=128, width=128)), "pseudo": []}
    with torch.no_grad(), encode_autocast(demo, "bf16"):
        encode_clip(model, [window])  # warm-up
        demo_s, _ = _median(lambda: encode_clip(model, [window]), args.repeats)
        with FlopCounterMode(display=False) as counter:
            encode_clip(model, [window])
    demo_flops = float(counter.get_total_flops())
    rate = demo_flops / demo_s
    with torch.device("meta"):
        real = AutoencoderKLCogVideoX()  # the CogVideoX VAE's own config (diffusers' defaults)
    vae_md = ["| VAE | window | encoder TFLOPs per window | s per window here (bf16) |", "|---|---|---:|---:|",
              f"| demo ({', '.join(map(str, demo.config.block_out_channels))}) | 128x128, 17 frames | "
              f"{demo_flops / 1e12:.3f} | {demo_s:.2f} (measured) |"]
    for label, size, frames in BIG:
        flops = window_flops(real, frames, size)
        vae_md.append(f"| CogVideoX ({', '.join(map(str, real.config.block_out_channels))}) | {label} | "
                      f"{flops / 1e12:.0f} | {flops / rate:.0f} (at the demo's measured FLOP rate) |")
    text = "\n".join([
        SECTION, "",
        f"`python -m benchmarks.prepare --scale`: one window of {VIDEO.name} ({source[1]}x{source[0]} px, "
        f"{count} frames at {fps:g} fps), median of {args.repeats}; {machine_line(args.threads)}.", "",
        *rows_md, "",
        "Cue extraction of that window (extract_cues, mediapipe segmenter and face detector): "
        + "; ".join(f"{k}: {v:.1f} s" for k, v in cue_seconds.items()) + ".", "",
        *vae_md, "",
        f"The demo VAE ran at {rate / 1e9:.0f} GFLOP/s here; the CogVideoX rows divide their FLOPs by that rate, a "
        "CPU estimate only (a GPU in bf16 runs the same FLOPs some thousand times faster). Pseudo variants add two "
        "cue videos each.",
    ])
    publish(text, SECTION, write=not args.no_write)
