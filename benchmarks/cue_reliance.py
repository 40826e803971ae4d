"""Does a model animate from its cues? How much its result changes when each cue is blanked.

Run: ``.venv/bin/python benchmarks/cue_reliance.py --model models/demo --world runs/recipe_demo/world
[--checkpoint FILE] [--pairs 4] [--steps 1] [--samples 2] [--train]``.

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

``--train`` scores the first training clips as same-identity pairs instead (what stage 1 fits): a model as far
from the truth there as on held-out pairs under-fits, rather than failing to transfer to new identities.
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

from directanimator.conditioning import pad_frames, plan_frame_count, using  # noqa: E402
from directanimator.cues import CueTriplet  # noqa: E402
from directanimator.models import load_model  # noqa: E402
from directanimator.pipeline import animate_triplet  # noqa: E402
from directanimator.vae_io import decode_latents, encode_frames  # noqa: E402
from training.validate import _cue_config, load_pair, pair_triplet, read_entries  # noqa: E402

MOVING = 0.1  # a pixel moves when some channel of the truth differs from the reference by more than this


def blanked(triplet: CueTriplet) -> dict[str, CueTriplet]:
    """The triplet with each cue set to zero in the driving frames (the reference's own cues stay)."""
    return {
        "pose": replace(triplet, pose=torch.zeros_like(triplet.pose)),
        "face": replace(triplet, face=torch.zeros_like(triplet.face)),
        "location": replace(triplet, body_location=torch.zeros_like(triplet.body_location),
                            face_location=torch.zeros_like(triplet.face_location)),
    }


def round_trip(model, frames: torch.Tensor) -> torch.Tensor:
    """``[F, H, W, 3]`` frames encoded and decoded by the model's VAE (padded to 4k+1 frames, then trimmed)."""
    count = int(frames.shape[0])
    with using(model, "vae") as vae:
        latents = encode_frames(vae, pad_frames(frames, plan_frame_count(count)), name="ground truth")
        return decode_latents(vae, latents)[:count]


def scored_entries(world: Path, pairs: int, *, train: bool = False) -> list[dict]:
    """The first `pairs` cross-identity entries of the val split, or with `train` the first training clips as
    same-identity pairs (their cross keys dropped): what stage 1 fits, to tell under-fitting from poor transfer."""
    entries = read_entries(world)
    if train:
        return [{k: v for k, v in e.items() if not k.startswith("cross_")} for e in entries
                if e.get("split", "train") == "train" and "reference" in e][:pairs]
    return [e for e in entries if e.get("split") == "val" and "cross_target" in e][:pairs]


def reliance(model, world: Path, *, pairs: int, steps: int, samples: int, train: bool = False) -> dict[str, float]:
    """Mean absolute differences over the moving pixels of `pairs` held-out cross pairs, or of `pairs` training
    clips as same-identity pairs with `train` (see the module text)."""
    entries = scored_entries(world, pairs, train=train)
    if not entries:
        wanted = ("training clips with a reference image (a world export has them)" if train else
                  "held-out cross-identity pairs (export the world with val clips and cross_id)")
        raise SystemExit(f"{world}: no {wanted}")
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
            rows = {"truth vs reference": target - reference,
                    "VAE round trip vs truth": round_trip(model, target) - target,
                    "result vs reference": result - reference, "result vs truth": result - target}
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
    parser.add_argument("--train", action="store_true",
                        help="score training clips as same-identity pairs (what stage 1 fits) instead")
    args = parser.parse_args()
    checkpoint = args.checkpoint or str(Path(args.model) / "directanimator.safetensors")
    model = load_model(args.model, checkpoint, dtype="fp32", device="cpu")
    scores = reliance(model, Path(args.world), pairs=args.pairs, steps=args.steps, samples=args.samples,
                      train=args.train)
    which = "training clips as same-identity pairs" if args.train else "held-out cross pairs"
    print(f"cue reliance of {checkpoint}: mean |difference| over the moving pixels of {args.pairs} {which} "
          f"({args.steps} DDIM step(s), the mean of {args.samples} seeds)\n")
    print("| | mean abs difference |")
    print("|---|---|")
    for name, value in scores.items():
        print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main()
