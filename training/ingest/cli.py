"""`python -m training ingest SOURCE_DIR --out DATA_DIR`: your own videos -> a training set (docs/data_format.md).

Every video under SOURCE_DIR (mp4, mov, mkv, webm, avi, m4v, gif; any rate, size and orientation; subfolders too)
is split at scene cuts (PySceneDetect), cut into back-to-back clips of --frames frames at --fps, and each clip is
kept only when the cue stack finds exactly one person and a face in most of its checked frames, enough motion, and
it is neither too dark nor too blurred. DATA_DIR gets videos/*.mp4, metadata.jsonl (written last),
ingest_report.json (every video's status and every rejected clip with its reason) and ingest_report.txt. A sidecar
NAME.txt beside NAME.mp4 becomes the clips' caption (read again on every run). Unreadable files are reported and
skipped; a video whose clips could not be written (disk full) is tried again by the next run. Interrupted runs
resume: videos already done with the same settings are not redone. One DATA_DIR holds one SOURCE_DIR's clips. Settings come from the defaults, an [ingest]
table of --config, then the flags.
"""

from __future__ import annotations

import argparse
import logging

from directanimator.errors import InputError

from .config import IngestConfig, build_ingest_config, config_table
from .folder import REPORT, ingest

log = logging.getLogger(__name__)

DEFAULTS = IngestConfig()

# flag -> (setting, type, help)
FLAGS: dict[str, tuple[str, type, str]] = {
    "--frames": ("frames", int, "clip length in frames (4k+1)"),
    "--fps": ("fps", float, "frame rate of the clips; 0 keeps each video's own rate, as does a slower video"),
    "--min-side": ("min_side", int, "skip videos whose short side is below this many px"),
    "--max-side": ("max_side", int, "long side of the written clips in px (never upscaled)"),
    "--crf": ("crf", int, "H.264 quality of the written clips (lower is better)"),
    "--preset": ("preset", str, "H.264 speed preset of the written clips (veryfast ... veryslow)"),
    "--cut-threshold": ("cut_threshold", float, "PySceneDetect content threshold for scene cuts"),
    "--check-frames": ("check_frames", int, "frames checked per clip, evenly spaced"),
    "--check-side": ("check_side", int, "long side in px of the frames the checks see"),
    "--min-one-person": ("min_one_person", float, "fraction of checked frames that must show exactly one person"),
    "--min-face": ("min_face", float, "fraction of checked frames that must show a face"),
    "--min-motion": ("min_motion", float, "mean change (1 - IoU) of the person mask between checked frames"),
    "--min-brightness": ("min_brightness", float, "mean luma, 0..1"),
    "--min-sharpness": ("min_sharpness", float, "var(Laplacian) / var(grey) of the checked frames"),
    "--val-fraction": ("val_fraction", float, "share of videos (whole videos) put in split 'val'"),
    "--identity": ("identity", str, "identity label per video file ('file') or per parent folder ('folder')"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source_dir", metavar="SOURCE_DIR", help="folder of your videos (searched recursively)")
    parser.add_argument("--out", required=True, metavar="DATA_DIR", default=argparse.SUPPRESS,
                        help="training-set folder to write (new, empty, or an earlier ingest's to resume)")
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="TOML",
                        help="a TOML file whose [ingest] table sets any of the settings below (flags win)")
    parser.add_argument("--workers", type=int, default=2, help="videos ingested at the same time (processes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for flag, (name, kind, text) in FLAGS.items():
        # SUPPRESS: a flag left out is absent from the namespace, so the [ingest] table's value stands
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS,
                            help=f"{text} (default: {getattr(DEFAULTS, name)!r})")


def run(args: argparse.Namespace) -> int:
    table = config_table(args.config) if getattr(args, "config", None) else {}
    config = build_ingest_config(table, **{name: getattr(args, flag[2:].replace("-", "_"), None)
                                           for flag, (name, _, _) in FLAGS.items()})
    report = ingest(args.source_dir, args.out, config, workers=args.workers, progress=not args.no_progress)
    if report["totals"]["clips_kept"] == 0:
        raise InputError(f"ingest: no clip was kept from {report['totals']['sources']} videos; the reason for each "
                         f"is in {args.out}/{REPORT}. Loosen the thresholds (--help) if they are too strict for "
                         "your footage.")
    return 0
