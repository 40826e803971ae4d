"""Does a model animate from its cues? How much its result changes when each cue is blanked.

Run: ``.venv/bin/python -m benchmarks.cue_reliance --model models/demo --world runs/recipe_demo/world
[--checkpoint FILE] [--pairs 4] [--steps 1] [--samples 2] [--kind cross|same|train]``.

On held-out cross-identity pairs of an exported world, the model samples each pair with its exact cues, then again
with the pose cue, the face cue, or both location masks set to zero (same seeds). Scores are mean absolute
differences (0..1 per channel) over the *moving pixels*, where the ground truth differs from the reference by more
than 0.1: the pixels an animation has to change. Side by side in one run:

- how far the truth is from the reference there (what following the motion means),
- how far the truth's own VAE round trip is from the truth (about the best a transformer can reach through this VAE),
- how far the result is from the reference and from the truth,
- how far each blanked cue moves the result.

A model that animates from its cues moves its result by a good share of the first number when the pose cue goes;
one that paints a blurred copy of the reference barely moves. A result as far from the truth as the VAE round trip
is as good as this VAE allows.

``--kind same`` scores held-out clips driving themselves instead, and ``--kind train`` (or ``--train``) the first
training clips driving themselves (what stage 1 fits). A model as far from the truth on training clips as on
held-out ones under-fits; one much better on held-out same-identity pairs than on cross pairs fails to transfer
to new identities.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from directanimator.conditioning import pad_frames, plan_frame_count, using
from directanimator.cues import CueTriplet
from directanimator.cues.types import BLANKABLE
from directanimator.metrics import moving_pixels
from directanimator.models import load_model
from directanimator.pipeline import animate_triplet
from directanimator.plan import sampling_plan
from directanimator.vae_io import decode_latents, encode_frames
from training.validate import load_pair, pair_triplet, read_entries


def round_trip(model, frames: torch.Tensor) -> torch.Tensor:
    """``[F, H, W, 3]`` frames encoded and decoded by the model's VAE (padded to 4k+1 frames, then trimmed)."""
    count = int(frames.shape[0])
    with using(model, "vae") as vae:
        latents = encode_frames(vae, pad_frames(frames, plan_frame_count(count)), name="ground truth")
        return decode_latents(vae, latents)[:count]


KINDS = {
    "cross": "held-out cross-identity pairs",
    "same": "held-out clips as same-identity pairs",
    "train": "training clips as same-identity pairs",
}


def scored_entries(world: Path, pairs: int, *, kind: str = "cross") -> list[dict]:
    """The first `pairs` entries of `kind` (`KINDS`): held-out cross-identity pairs, held-out clips driving
    themselves (`same`: the cross keys dropped), or training clips driving themselves (`train`: what stage 1 fits).
    A model far worse on `cross` than on `same` fails to transfer; one as bad on `train` under-fits."""
    if kind not in KINDS:
        raise SystemExit(f"kind {kind!r}: use one of {', '.join(KINDS)}")
    split = "train" if kind == "train" else "val"
    entries = [e for e in read_entries(world) if e.get("split", "train") == split]
    if kind == "cross":
        return [e for e in entries if "cross_target" in e][:pairs]
    return [{k: v for k, v in e.items() if not k.startswith("cross_")} for e in entries if "reference" in e][:pairs]


def reliance(model, world: Path, *, pairs: int, steps: int, samples: int, kind: str = "cross") -> dict[str, float]:
    """Mean absolute differences over the moving pixels of the first `pairs` pairs of `kind` (`KINDS`; see the
    module text)."""
    entries = scored_entries(world, pairs, kind=kind)
    if not entries:
        raise SystemExit(f"{world}: no {KINDS[kind]} (export the world with val clips, references and cross_id)")
    config = sampling_plan(model).cue_config
    totals: dict[str, list[float]] = {}
    with torch.no_grad():
        for entry in entries:
            pair = load_pair(world, entry)
            triplet = pair_triplet(pair, config)
            target = pair.target.float()
            reference = triplet.reference.float()

            def run(t: CueTriplet) -> torch.Tensor:
                return animate_triplet(model, t, steps=steps, guidance=1.0, scheduler="ddim", seed=0,
                                       samples=samples, fps=pair.fps).frames[: target.shape[0]]

            result = run(triplet)
            moving = moving_pixels(reference.expand_as(target), target)
            rows = {"truth vs reference": target - reference,
                    "VAE round trip vs truth": round_trip(model, target) - target,
                    "result vs reference": result - reference, "result vs truth": result - target}
            rows.update({f"blank {name}: result moves": run(triplet.blanked(name)) - result for name in BLANKABLE})
            for name, difference in rows.items():
                totals.setdefault(name, []).append(float(difference.abs()[moving].mean()))
    return {name: sum(values) / len(values) for name, values in totals.items()}


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local model folders only; read by load_model when it loads
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (backbone with transformer/, vae/, scheduler/)")
    parser.add_argument("--checkpoint", help="DirectAnimator checkpoint (default: MODEL/directanimator.safetensors)")
    parser.add_argument("--world", required=True, help="exported world folder with held-out cross pairs")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--kind", choices=sorted(KINDS), default="cross",
                        help="cross: held-out cross pairs; same: held-out clips driving themselves; train: training "
                             "clips driving themselves (what stage 1 fits)")
    parser.add_argument("--train", action="store_const", const="train", dest="kind", help="the same as --kind train")
    args = parser.parse_args()
    checkpoint = args.checkpoint or str(Path(args.model) / "directanimator.safetensors")
    model = load_model(args.model, checkpoint, dtype="fp32", device="cpu")
    scores = reliance(model, Path(args.world), pairs=args.pairs, steps=args.steps, samples=args.samples,
                      kind=args.kind)
    print(f"cue reliance of {checkpoint}: mean |difference| over the moving pixels of {args.pairs} {KINDS[args.kind]} "
          f"({args.steps} DDIM step(s), the mean of {args.samples} seeds)\n")
    print("| | mean abs difference |")
    print("|---|---|")
    for name, value in scores.items():
        print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main()
