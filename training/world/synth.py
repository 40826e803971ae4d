"""Render procedural-world clips with exact ground truth into a training data folder (docs/data_format.md).

Writes videos/, refs/, gt/ (joints, boxes, masks as safetensors), cross/ and pseudo/ (cross-identity truth and
pseudo driving clips), metadata.jsonl, world.json and a preview.png contact sheet.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("training.synth")


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: expected a probability between 0 and 1")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clips", type=int, default=16, help="number of clips (samples) to render")
    p.add_argument("--size", type=int, default=128, help="square frame side in px (64 to 512)")
    p.add_argument("--height", type=int, default=None, help="frame height in px (overrides --size)")
    p.add_argument("--width", type=int, default=None, help="frame width in px (overrides --size)")
    p.add_argument("--frames", type=int, default=17, help="frames per clip (4k+1 suits the model)")
    p.add_argument("--fps", type=float, default=12.0, help="frame rate of the clips")
    p.add_argument("--seed", type=int, default=0, help="world seed; the same seed renders the same data")
    p.add_argument("--format", choices=["mp4", "png"], default="mp4",
                   help="mp4 (H.264, small, lossy) or png (a folder of lossless frames per clip)")
    p.add_argument("--identities", type=int, default=None,
                   help="draw identities from a pool of this size (default: a new identity every time)")
    p.add_argument("--no-cross", action="store_true", help="skip cross-identity references and targets")
    p.add_argument("--no-pseudo", action="store_true", help="skip pseudo driving clips")
    p.add_argument("--turn-probability", type=_probability, default=0.2, help="chance of a turn away or back")
    p.add_argument("--close-up-probability", type=_probability, default=0.25, help="chance of upper-body framing")
    p.add_argument("--moving-background-probability", type=_probability, default=0.3)
    p.add_argument("--limb-thickness", type=float, default=1.0,
                   help="arms and legs this many times as thick (0.25..4); at 2 a 128 px arm is about one 8 px "
                        "latent cell wide")
    p.add_argument("--plain-clothes", action="store_true",
                   help="one-colour long sleeves and trousers, no accessories: a moved arm wears the torso's colour")
    p.add_argument("--reference-in-place", action="store_true",
                   help="same-identity references stand where their clip starts (no travel or zoom; docs/world.md)")
    p.add_argument("--degrade", default="",
                   help="degradations of the driving clips, e.g. 'noise=0.3,jpeg=0.5' (names: occluders, "
                        "motion_blur, low_light, low_resolution, noise, jpeg; strengths 0..1)")
    p.add_argument("--val-clips", type=int, default=0, help="mark the last N clips as split 'val'")
    p.add_argument("--preview-rows", type=int, default=4, help="samples shown in preview.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; rendering is single-threaded numpy, and a thread pool only slows down the "
                        "small tensor conversions of writing (3x measured on a busy 2-core machine)")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from directanimator.errors import InputError

    from .degrade import parse_degradations
    from .export import PREVIEW, export_world
    from .pairs import WorldConfig

    config = WorldConfig(
        height=args.height or args.size, width=args.width or args.size, num_frames=args.frames, fps=args.fps,
        identities=args.identities, turn_probability=args.turn_probability,
        close_up_probability=args.close_up_probability,
        moving_background_probability=args.moving_background_probability, limb_thickness=args.limb_thickness,
        plain_clothes=args.plain_clothes, reference_in_place=args.reference_in_place,
        cross_id=not args.no_cross, pseudo=not args.no_pseudo, degradations=parse_degradations(args.degrade),
    ).validate()  # fmt: skip
    if (config.num_frames - 1) % 4:
        log.info("%d frames per clip is not 4k+1; the model's loaders will trim or pad it.", config.num_frames)
    if args.threads < 1:
        raise InputError(f"--threads {args.threads}: use 1 or more.")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()
    try:
        with tqdm(total=args.clips, desc="synth", unit="clip", disable=args.no_progress) as bar:
            export_world(out, config, clips=args.clips, seed=args.seed, fmt=args.format, val_clips=args.val_clips,
                         preview_rows=args.preview_rows, overwrite=args.overwrite, on_clip=lambda i: bar.update(1))
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests) keep their setting
    elapsed = time.perf_counter() - start
    log.info("%d clips of %d frames at %dx%d in %.1f s; metadata %s, preview %s", args.clips, config.num_frames,
             config.width, config.height, elapsed, out / "metadata.jsonl", out / PREVIEW)
    return 0
