"""Ingest throughput on the real dance video: source minutes ingested per wall minute, against decoding alone.

    python -m benchmarks.ingest [--copies 4] [--repeats 1] [--threads 2] [--no-write]

Ingests `--copies` copies of shared/data/real/dance_1080x1920_24fps.mp4 (1080x1920, 24 fps, 12 s each; links, so
that each copy is a source of its own) with the default settings (49-frame clips at 16 fps, written at 720 px on
the long side) into a fresh folder, with one worker and with two, sharing `--threads` CPU threads. The baseline
row decodes the same copies at the clips' size and does nothing else: the floor every ingest pays. Reports the
median of `--repeats` runs, and the disk the written clips take per hour of footage.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.report import benchmark_parser, machine_line, publish

ROOT = Path(__file__).resolve().parents[1]
DANCE = ROOT.parent / "shared" / "data" / "real" / "dance_1080x1920_24fps.mp4"
SECTION = "## Ingest"


def _sources(folder: Path, copies: int) -> Path:
    folder.mkdir(parents=True)
    for k in range(copies):
        os.symlink(DANCE, folder / f"dance_{k}.mp4")
    return folder


def _decode_only(folder: Path, threads: int) -> float:
    """Seconds to decode every source of `folder` at the clips' size."""
    import cv2

    from training.ingest import IngestConfig
    from training.ingest.frames import output_size, source_info, stream_frames

    cv2.setNumThreads(threads)
    started = time.perf_counter()
    for path in sorted(folder.iterdir()):
        info = source_info(path)
        for _ in stream_frames(path, output_size(info.height, info.width, IngestConfig().max_side), threads=threads):
            pass
    return time.perf_counter() - started


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished child processes so far."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _ingest(folder: Path, out: Path, workers: int, threads: int) -> tuple[float, float, dict, int]:
    """Wall and CPU seconds, the report and the bytes written under videos/ for one fresh ingest of `folder`."""
    from training.ingest import IngestConfig, ingest

    shutil.rmtree(out, ignore_errors=True)
    started, cpu = time.perf_counter(), _cpu_seconds()
    report = ingest(folder, out, IngestConfig(), workers=workers, threads=threads, progress=False)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return seconds, cpu, report, sum(p.stat().st_size for p in (out / "videos").iterdir())


def _warm_up() -> None:
    """Build this process's mediapipe graphs, as the first video of a long ingest does once."""
    import numpy as np

    from training.ingest import IngestConfig, measure_clip

    measure_clip(np.zeros((2, 64, 64, 3), np.uint8), IngestConfig())


def ingest_rows(*, copies: int = 4, repeats: int = 1, threads: int = 2) -> list[dict]:
    """One row per way of ingesting (decoding alone, 1 worker, 2 workers): wall seconds (median), source minutes
    per wall minute, wall hours and CPU seconds per hour and minute of footage, clips kept, and MB written per hour
    of footage."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = _sources(Path(tmp) / "videos", copies)
        footage = copies * 12.0  # s; the dance video is 12 s long
        decodes = []
        for _ in range(repeats):
            cpu = _cpu_seconds()
            decodes.append((_decode_only(folder, threads), _cpu_seconds() - cpu))
        rows.append({"what": "decode only (baseline)", "workers": 1,
                     "seconds": statistics.median(d[0] for d in decodes),
                     "cpu": statistics.median(d[1] for d in decodes), "clips": None, "bytes": None})
        _warm_up()
        for workers in (1, 2):
            runs = [_ingest(folder, Path(tmp) / f"out{workers}", workers, threads) for _ in range(repeats)]
            rows.append({"what": "ingest", "workers": workers, "seconds": statistics.median(r[0] for r in runs),
                         "cpu": statistics.median(r[1] for r in runs),
                         "clips": runs[-1][2]["totals"]["clips_kept"], "bytes": runs[-1][3]})
    for row in rows:
        row["footage_seconds"] = footage
        row["throughput"] = footage / row["seconds"]  # source minutes per wall minute
        row["hours_per_hour"] = row["seconds"] / footage
        row["cpu_per_minute"] = row["cpu"] / footage * 60  # CPU seconds per minute of footage
        row["mb_per_hour"] = None if row["bytes"] is None else row["bytes"] / 1e6 * 3600 / footage
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| what | workers | wall s | source min per wall min | wall h per footage h | CPU s per footage min | "
             "clips kept | MB per footage h |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mb = "" if r["mb_per_hour"] is None else f"{r['mb_per_hour']:.0f}"
        clips = "" if r["clips"] is None else str(r["clips"])
        lines.append(f"| {r['what']} | {r['workers']} | {r['seconds']:.1f} | {r['throughput']:.2f} | "
                     f"{r['hours_per_hour']:.2f} | {r['cpu_per_minute']:.0f} | {clips} | {mb} |")
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=1)
    parser.add_argument("--copies", type=int, default=4)
    run_ingest(parser.parse_args())


def run_ingest(args) -> None:
    """Measure and publish the "Ingest" section (also `python -m benchmarks.prepare --ingest`)."""
    logging.basicConfig(level=logging.WARNING)
    copies = getattr(args, "copies", 4)
    rows = ingest_rows(copies=copies, repeats=args.repeats, threads=args.threads)
    text = "\n".join([
        SECTION, "",
        f"`python -m benchmarks.ingest` ({copies} copies of the real dance video, 1080x1920 at 24 fps, "
        f"{rows[0]['footage_seconds']:.0f} s of footage; default settings: 49-frame clips at 16 fps written at 720 px, "
        f"9 checked frames per clip at 512 px; median of {args.repeats}); {machine_line(args.threads)}.", "",
        table(rows), "",
        "Decoding the 1080x1920 source is the floor; the rest is the scene detector, the checks and H.264 encoding "
        "of the kept clips. The 2-worker row includes starting its processes (imports, mediapipe graphs), which a "
        "long ingest pays once; CPU seconds are less sensitive than wall seconds to other load on the machine.",
    ])
    publish(text, SECTION, write=not args.no_write)


if __name__ == "__main__":
    main()
