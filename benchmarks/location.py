"""How well the location cue's similarity fit puts the driving person where the cross-identity target stands.

Run: ``.venv/bin/python -m benchmarks.location [--pairs 120] [--size 128] [--frames 17] [--seed 0]``.

On world cross-identity pairs (B's reference, A's driving clip, and B performing A's motion at B's placement as
ground truth) the driving masks are warped onto the reference by each rule and compared with the target's masks
(IoU per frame at 0.5, mean over frames, then over pairs), side by side in one run:

- as driven: no transform, where the driving person stands (and an unaligned pose cue with it);
- box rule: the median driving box onto the reference box, the face refining x (no centre lines given: the rule
  before them, which scores within 0.001 of it here);
- centre lines: the same scale, x from the body centre lines (`mask_centre_columns`), medians over the clip
  (`CueConfig.anchor = "clip"`);
- first frame: the centre-line rule on the first driving frame alone (`anchor_frames`), what `extract_cues` does
  by default (`anchor = "first"`): every world motion starts at its clip's placement (travel and zoom are measured
  from the first frame) and the reference is its identity's first frame, so first frames show the placements;
- placement truth: scale and translation from the world's own placements (pelvis onto pelvis, height ratio), the
  best one similarity can do (bodies differ in proportions, so even it does not reach 1).
"""

from __future__ import annotations

import argparse
import os

import torch

from directanimator.cues import PersonGeometry, Similarity, anchor_frames, fit_similarity, mask_boxes
from directanimator.cues import mask_centre_columns
from directanimator.cues import median_box
from directanimator.cues import warp_masks
from training.world import WorldConfig, cross_id_pair


def overlap(driving: torch.Tensor, target: torch.Tensor, transform: Similarity) -> float:
    """Mean over frames of the IoU of the warped driving masks with the target masks ``[F, H, W]``."""
    warped = warp_masks(driving, transform, tuple(target.shape[1:])) > 0.5
    target = target > 0.5
    return float(((warped & target).sum((1, 2)) / (warped | target).sum((1, 2)).clamp(min=1)).mean())


def rules(pair, size: int) -> dict[str, Similarity]:
    drv, ref = pair.driving, pair.reference
    boxes, valid = mask_boxes(drv.person_masks)
    reference_box = mask_boxes(ref.person_masks)[0][0]
    frame = (0, 0, size, size)
    first = anchor_frames(valid, "first")
    reference_face = ref.face_boxes[0] if bool(ref.face_valid[0]) else None
    centres = mask_centre_columns(drv.person_masks)[0]

    def driving(frames, face_frames, centres=None):
        known = drv.face_valid & face_frames
        face = median_box(drv.face_boxes, known) if bool(known.any()) else None
        return PersonGeometry(boxes, frames, face=face, area=frame, centres=centres)

    boxed = PersonGeometry.picture(reference_box, face=reference_face, area=frame)
    centred = PersonGeometry.picture(reference_box, face=reference_face, area=frame,
                                     centre=float(mask_centre_columns(ref.person_masks)[0][0]))
    a, b = drv.placement, ref.placement
    scale = b.height / a.height
    return {
        "as driven": Similarity(),  # no fit: where an unaligned pose cue stands
        "box rule": fit_similarity(driving(valid, drv.face_valid), boxed),
        "centre lines": fit_similarity(driving(valid, drv.face_valid, centres), centred),
        "first frame": fit_similarity(driving(first, first, centres), centred),
        "placement truth": Similarity(scale=scale, tx=(b.x - scale * a.x) * size, ty=(b.y - scale * a.y) * size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=120)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # one core unless the caller says otherwise
    config = WorldConfig(height=args.size, width=args.size, num_frames=args.frames, identities=200, pseudo=False)
    scores: dict[str, dict[str, list[float]]] = {}
    for index in range(args.pairs):
        pair = cross_id_pair(index, config, seed=args.seed)
        framing = "full body" if max(pair.driving.placement.height, pair.reference.placement.height) < 1 \
            else "a close-up"
        for name, transform in rules(pair, args.size).items():
            value = overlap(pair.driving.person_masks, pair.target.person_masks, transform)
            for group in ("all", framing):
                scores.setdefault(group, {}).setdefault(name, []).append(value)
    names = ["as driven", "box rule", "centre lines", "first frame", "placement truth"]
    print(f"location fit: IoU of the warped driving masks with the cross-identity target's masks "
          f"({args.pairs} world pairs, {args.size} px, {args.frames} frames, seed {args.seed})\n")
    print("| pairs | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for group in ("all", "full body", "a close-up"):
        if group in scores:
            row = scores[group]
            n = len(row[names[0]])
            print(f"| {group} | {n} | " + " | ".join(f"{sum(row[k]) / n:.3f}" for k in names) + " |")


if __name__ == "__main__":
    main()
