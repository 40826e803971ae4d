"""Headless command line: `python -m directanimator {demo,cues} ...`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("directanimator")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "real"
DEMO_DRIVING = REAL_DATA / "dance_1080x1920_24fps.mp4"
DEMO_REFERENCE = REAL_DATA / "ref_anime_character.jpg"


def _size(text: str) -> tuple[int, int]:
    """Parse 'HxW' (height x width) in pixels."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: use HEIGHTxWIDTH in pixels, e.g. 896x512") from None
    return height, width


def _add_cue_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=None, help="read at most this many driving frames (after stride)")
    p.add_argument("--stride", type=int, default=1, help="keep every n-th driving frame")
    p.add_argument("--size", type=_size, default=None, help="working size HEIGHTxWIDTH, multiples of 16")
    p.add_argument("--cutoff", type=float, default=0.12, help="pose-cue low-pass cutoff, fraction of Nyquist")
    p.add_argument("--filter", choices=["gaussian", "ideal", "butterworth"], default="gaussian")
    p.add_argument("--segmenter", choices=["mediapipe", "sam"], default="mediapipe")
    p.add_argument("--sam-checkpoint", default=None, help="segment-anything checkpoint for --segmenter sam")
    p.add_argument("--face-detector", choices=["auto", "mediapipe", "opencv"], default="auto")
    p.add_argument("--grid-cell", type=int, default=16, help="location-cue grid cell in pixels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m directanimator", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    cues = sub.add_parser("cues", help="extract the Driving Cue Triplet: three cue videos and a preview sheet")
    cues.add_argument("--reference", required=True, help="reference image (png/jpg/webp)")
    cues.add_argument("--driving", required=True, help="driving video (mp4/webm/gif) or a folder of frames")
    cues.add_argument("--out", required=True, help="output folder")
    _add_cue_options(cues)

    demo = sub.add_parser("demo", help="the main job on the bundled default inputs")
    demo.add_argument("--reference", default=str(DEMO_REFERENCE), help="reference image")
    demo.add_argument("--driving", default=str(DEMO_DRIVING), help="driving video")
    demo.add_argument("--out", default="out/demo", help="output folder")
    _add_cue_options(demo)
    demo.set_defaults(frames=49, stride=2, size=(896, 512))
    return parser


def run_cues(args: argparse.Namespace) -> Path:
    """Extract the cue triplet and write pose.mp4, face.mp4, location.mp4 and cues.png into args.out."""
    from tqdm import tqdm

    from .cues import CueConfig, cue_sheet, extract_cues, location_overlay
    from .video import read_image, read_video, write_image, write_video

    config = CueConfig(
        height=args.size[0] if args.size else None,
        width=args.size[1] if args.size else None,
        segmenter=args.segmenter,
        sam_checkpoint=args.sam_checkpoint,
        face_detector=args.face_detector,
        cutoff=args.cutoff,
        filter=args.filter,
        grid_cell=args.grid_cell,
    ).validate()
    out = Path(args.out)
    reference = read_image(args.reference)
    clip = read_video(args.driving, max_frames=args.frames, stride=args.stride, size=args.size, resize="pad")
    log.info("driving: %d frames at %.3g fps, %dx%d", clip.frames.shape[0], clip.fps,
             clip.frames.shape[2], clip.frames.shape[1])
    start = time.perf_counter()
    with tqdm(total=len(clip.frames), desc="cues", unit="frame") as bar:
        triplet = extract_cues(reference, clip.frames, config, on_frame=lambda i: bar.update(1))
    elapsed = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    write_video(out / "pose.mp4", triplet.pose, clip.fps)
    write_video(out / "face.mp4", triplet.face, clip.fps)
    write_video(out / "location.mp4", location_overlay(triplet), clip.fps)
    write_image(out / "cues.png", cue_sheet(triplet, driving=clip.frames)[0])
    record = triplet.record
    log.info("cue triplet: %d frames in %.1f s (%.1f fps); faces in %d/%d frames; %d bad frames",
             triplet.num_frames, elapsed, triplet.num_frames / max(elapsed, 1e-9),
             int(record.face_valid.sum()), triplet.num_frames, int(record.bad_frames.sum()))
    for note in record.notes:
        log.info("note: %s", note)
    log.info("wrote %s", ", ".join(str(out / n) for n in ("pose.mp4", "face.mp4", "location.mp4", "cues.png")))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from .errors import DirectAnimatorError

    try:
        if args.command in ("cues", "demo"):
            run_cues(args)
    except DirectAnimatorError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
