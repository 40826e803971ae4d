"""Does a model animate from its cues? How much its result changes when each cue is blanked.

Run: ``.venv/bin/python benchmarks/cue_reliance.py --model models/demo --world runs/recipe_demo/world
[--checkpoint FILE] [--pairs 4] [--steps 1] [--samples 2]``.

On held-out cross-identity pairs of an exported world, the model samples each pair with its exact cues, then again
with the pose cue, the face cue, or both location masks set to zero (same seeds). Scores are mean absolute
differences (0..1 per channel) over the *moving pixels*, where the ground truth differs from the reference by more
than 0.1: the pixels an animation has to change. Side by side in one run:

- how far the truth is from the reference there (what following the motion means),
- how far the result is from the reference and from the truth,
- how far each blanked cue moves the result.

A model that animates from its cues moves its result by a good share of the first number when the pose cue goes;
one that paints a blurred copy of the reference barely moves.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from directanimator.cues import CueTriplet  # noqa: E402
from directanimator.models import load_model  # noqa: E402
from directanimator.pipeline import animate_triplet  # noqa: E402
from training.validate import _cue_config, held_out_entries, load_pair, pair_triplet, read_entries  # noqa: E402

MOVING = 0.1  # a pixel moves when some channel of the truth differs from the reference by more than this


def blanked(triplet: CueTriplet) -> dict[str, CueTriplet]:
    """The triplet with each cue set to zero in the driving frames (the reference's own cues stay)."""
    return {
        "pose": replace(triplet, pose=torch.zeros_like(triplet.pose)),
        "face": replace(triplet, face=torch.zeros_like(triplet.face)),
        "location": replace(triplet, body_location=torch.zeros_like(triplet.body_location),
                            face_location=torch.zeros_like(triplet.face_location)),
    }


def reliance(model, world: Path, *, pairs: int, steps: int, samples: int) -> dict[str, float]:
    """Mean absolute differences over the moving pixels of `pairs` held-out cross pairs (see the module text)."""
    entries = [e for e in held_out_entries(read_entries(world), max_clips=10**6) if "cross_target" in e][:pairs]
    if not entries:
        raise SystemExit(f"{world}: no held-out cross-identity pairs (export the world with val clips and cross_id)")
    config = _cue_config(model, None)
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
            moving = (target - reference).abs().amax(-1) > MOVING
            rows = {"truth vs reference": target - reference, "result vs reference": result - reference,
                    "result vs truth": result - target}
            rows.update({f"blank {name}: result moves": run(t) - result for name, t in blanked(triplet).items()})
            for name, difference in rows.items():
                totals.setdefault(name, []).append(float(difference.abs()[moving].mean()))
    return {name: sum(values) / len(values) for name, values in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (backbone with transformer/, vae/, scheduler/)")
    parser.add_argument("--checkpoint", help="DirectAnimator checkpoint (default: MODEL/directanimator.safetensors)")
    parser.add_argument("--world", required=True, help="exported world folder with held-out cross pairs")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    checkpoint = args.checkpoint or str(Path(args.model) / "directanimator.safetensors")
    model = load_model(args.model, checkpoint, dtype="fp32", device="cpu")
    scores = reliance(model, Path(args.world), pairs=args.pairs, steps=args.steps, samples=args.samples)
    print(f"cue reliance of {checkpoint}: mean |difference| over the moving pixels of {args.pairs} held-out cross "
          f"pairs ({args.steps} DDIM step(s), the mean of {args.samples} seeds)\n")
    print("| | mean abs difference |")
    print("|---|---|")
    for name, value in scores.items():
        print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main()
