"""Rendering speed of the procedural world on one core: frames per second by size, and samples per second.

Run: ``.venv/bin/python -m benchmarks.world [--sizes 64 128 256 512] [--frames 17] [--clips 6] [--detectors]``.
Prints a table; the goal is 200 frames per second or more at 128x128 (docs/world.md). ``--detectors`` adds a
table of how often the cue backends (mediapipe selfie segmentation and face detection, OpenCV Haar) find the
puppets, against the ground truth.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import torch

from training.world import WorldConfig, make_sample, render_scene, role_rng, sample_scene


def _best_of(repeats: int, work) -> float:
    """Fastest of `repeats` timings in CPU seconds of this process (one thread), so that other programs
    sharing the machine inflate the numbers as little as possible."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks ``[F, H, W]`` per frame."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def detector_table(sizes: list[int], clips: int, frames: int) -> None:
    """How often mediapipe and OpenCV find the puppets: person IoU and face hits against the ground truth."""
    from directanimator.cues.face_detection import available_backends, detect_faces
    from directanimator.cues.segmentation import segment_person

    available = available_backends()
    print(f"\n{'size':>9} | {'framing':>8} | {'selfie IoU':>10} | {'mp face hit':>11} | {'haar hit':>8} | "
          f"{'false +':>7} | {'frames':>6}")
    print("-" * 78)
    for size in sizes:
        for framing, close_up in (("full", 0.0), ("close-up", 1.0)):
            config = WorldConfig(height=size, width=size, num_frames=frames, close_up_probability=close_up,
                                 turn_probability=0.0, cross_id=False, pseudo=False)
            ious, hits, valid_total, false_pos = [], {"mediapipe": 0, "opencv": 0}, 0, 0
            for i in range(clips):
                clip = make_sample(i, config, seed=1).clip
                truth = clip.person_masks > 0.5
                if available["segmentation/mediapipe"]:
                    ious.append(_iou(segment_person(clip.frames) > 0.5, truth))
                boxes, valid = clip.face_boxes, clip.face_valid
                valid_total += int(valid.sum())
                for name in ("mediapipe", "opencv"):
                    if not available[f"face/{name}"]:
                        continue
                    track = detect_faces(clip.frames, backend=name)
                    centre = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
                    inside = ((centre >= boxes[:, :2]) & (centre <= boxes[:, 2:])).all(1)
                    hits[name] += int((track.valid & valid & inside).sum())
                    false_pos += int((track.valid & ~(valid & inside)).sum())
            iou = f"{float(torch.cat(ious).mean()):.2f}" if ious else "n/a"
            rate = {k: f"{v / max(valid_total, 1):.0%}" for k, v in hits.items()}
            print(f"{size:>4}x{size:<4} | {framing:>8} | {iou:>10} | {rate['mediapipe']:>11} | {rate['opencv']:>8} | "
                  f"{false_pos:>7} | {clips * frames:>6}")
    print("hit: a detection whose centre lies in the ground-truth head box, over frames with a visible face;")
    print("false +: detections elsewhere or on frames without a visible face (both detectors together).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--clips", type=int, default=6, help="different scenes timed per size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--detectors", action="store_true",
                        help="also measure how often mediapipe / OpenCV find the puppets' bodies and faces")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    print(f"{'size':>9} | {'clip fps':>9} | {'blurred fps':>11} | {'sample/s':>9} | {'frames/sample':>13}")
    print("-" * 64)
    for size in args.sizes:
        config = WorldConfig(height=size, width=size, num_frames=args.frames)
        scenes = [sample_scene(role_rng(0, i, "target"), config, name=f"b{i}") for i in range(args.clips)]
        times = config.times()

        def clips(shutter=0.0):
            for scene in scenes:
                render_scene(scene, times, config, shutter=shutter)

        clip_s = _best_of(args.repeats, clips)
        blurred_s = _best_of(1, lambda: clips(shutter=1.0 / config.fps))
        sample_s = _best_of(args.repeats, lambda: [make_sample(i, config) for i in range(args.clips)])
        per_sample = 3 * args.frames + 2  # clip, cross target, pseudo driving, two references
        count = args.clips * args.frames
        print(f"{size:>4}x{size:<4} | {count / clip_s:>9.0f} | {count / blurred_s:>11.0f} | "
              f"{args.clips / sample_s:>9.1f} | {per_sample:>13d}")
    print(f"\nCPU time of one thread; load average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    print("clip fps: one identity rendered with its ground truth (masks, joints, face boxes);")
    print("blurred fps: with motion blur (5 renders per frame); sample/s: make_sample with cross-ID and pseudo clips.")
    if args.detectors:
        detector_table([s for s in args.sizes if s >= 128] or args.sizes, clips=max(args.clips, 8), frames=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
