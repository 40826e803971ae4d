"""One source video -> clips: a single decoding pass that splits at scene cuts, cuts clips at the target rate,
checks each and writes the kept ones. Runs in a worker process; returns a JSON-ready result, never raises for a
bad file."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np

from directanimator.errors import BackendUnavailableError, DirectAnimatorError, VideoError
from directanimator.video import write_video
from directanimator.video.timing import clip_span, resample_indices

from .config import IngestConfig
from .frames import output_size, source_info, stream_frames
from .quality import measure_clip, rejection
from .scenes import SceneCuts
from .sources import Source

log = logging.getLogger(__name__)

VIDEOS = "videos"
SCENE_SIDE = 256  # px, long side of the frames the scene-cut detector sees: hard cuts show at any size
# decoders may drop or add a frame or two against the stored count (edit lists); more missing means truncation
TRUNCATION_SLACK = 0.02


def clip_name(source: Source, index: int) -> str:
    """The output path (relative to the data folder) of candidate clip `index` of `source`."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source.rel).stem)[:40]
    return f"{VIDEOS}/{stem}-{source.id[:8]}-{index:04d}.mp4"


def _resized(frame: np.ndarray, side: int) -> np.ndarray:
    height, width = frame.shape[:2]
    if max(height, width) <= side:
        return frame
    h, w = output_size(height, width, side)
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


class ClipWriteError(Exception):
    """Writing a kept clip failed (disk full, encoder error): the output's fault, not the source's, so retried."""


def ingest_source(job: dict) -> dict:
    """Worker entry: ``job`` = {"source": {"path", "rel"}, "root", "out", "config", "key", "threads"}; returns the
    source's result (status, kept clips as metadata entries and their measurements, rejected clips with reasons).
    Status "unreadable" (kept until the file changes) is for a source that cannot be decoded; "failed" (tried
    again by the next run) for anything else, a clip that could not be written included."""
    source = Source(path=Path(job["source"]["path"]), rel=job["source"]["rel"])
    config = IngestConfig(**job["config"])
    threads = int(job.get("threads", 1))
    caller_threads = cv2.getNumThreads()  # a one-source run works in the caller's process: leave it as it was
    cv2.setNumThreads(threads)
    started = time.perf_counter()
    result = {"source": source.rel, "key": job["key"], "source_dir": job["root"], "status": "done", "reason": None,
              "clips": [], "checks": {}, "rejected": []}
    written: list[Path] = []
    try:
        _ingest(source, Path(job["root"]), Path(job["out"]), config, result, written, threads)
    except BackendUnavailableError:
        raise  # the environment, not the file: every source would fail the same way
    except Exception as error:  # noqa: BLE001 - one odd file (a decoder or container quirk) must not end a long run
        unreadable = isinstance(error, (DirectAnimatorError, OSError))
        if isinstance(error, ClipWriteError):
            log.warning("ingest: %s: %s; the next run tries this video again", source.rel, error)
        elif not unreadable:
            log.warning("ingest: %s failed unexpectedly", source.rel, exc_info=True)
        for path in written:  # nothing of a source that could not be read to its end
            path.unlink(missing_ok=True)
        result.update(status="unreadable" if unreadable else "failed", reason=f"{type(error).__name__}: {error}",
                      clips=[], checks={}, rejected=[])
    finally:
        cv2.setNumThreads(caller_threads)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _ingest(source: Source, root: Path, out: Path, config: IngestConfig, result: dict, written: list[Path],
            threads: int) -> None:
    info = source_info(source.path)
    result.update(fps=info.fps, height=info.height, width=info.width, duration=info.duration)
    if min(info.height, info.width) < config.min_side:
        result.update(status="too small", reason=f"{info.width}x{info.height} px: the short side is below "
                                                 f"--min-side {config.min_side} px")
        return
    fps = config.fps or info.fps
    if fps > info.fps:  # a faster clip would only repeat source frames: keep the source's own rate
        log.info("ingest: %s runs at %g fps, below --fps %g: its clips keep %g fps", source.rel, info.fps, fps,
                 info.fps)
        fps = info.fps
    size = output_size(info.height, info.width, config.max_side)
    span, advance = clip_span(info.fps, fps, config.frames)
    picks = resample_indices(info.fps, fps, span, count=config.frames)
    checked = np.linspace(0, config.frames - 1, config.check_frames).round().astype(int)
    cuts = SceneCuts(info.fps, threshold=config.cut_threshold,
                     min_scene_frames=max(1, round(config.min_scene_seconds * info.fps)))
    common = {"fps": fps, "identity": source.identity(config, root), "num_frames": config.frames,
              "height": size[0], "width": size[1], "split": source.split(config), "source": source.rel}
    caption = source.caption()
    if caption:
        common["caption"] = caption

    buffer: list[np.ndarray] = []  # source frames from `clip_start` on
    clip_start, scene, candidates, decoded = 0, 0, 0, 0
    for index, frame in enumerate(stream_frames(source.path, size, threads=threads)):
        decoded = index + 1
        if cuts.is_cut(_resized(frame, SCENE_SIDE)):
            scene += 1
            buffer, clip_start = [], index  # a clip never spans a cut: the partial one is dropped
        if index < clip_start:
            continue
        buffer.append(frame)
        if len(buffer) < span:
            continue
        clip = np.stack([buffer[i] for i in picks])
        name = clip_name(source, candidates)
        where = {"source_start": round(clip_start / info.fps, 3), "scene": scene}
        stats = measure_clip(np.stack([_resized(clip[i], config.check_side) for i in checked]), config)
        reason = rejection(stats, config)
        if reason is None:
            written.append(out / name)
            try:
                write_video(out / name, clip, fps, crf=config.crf, preset=config.preset)
            except Exception as error:  # noqa: BLE001 - any failure to write is the output's, not the source's
                raise ClipWriteError(f"writing {name} failed ({type(error).__name__}: {error})") from error
            result["clips"].append({"clip": name, **common, **where})
            result["checks"][name] = stats.to_dict()
        else:
            result["rejected"].append({"source": source.rel, **where, "reason": reason, "stats": stats.to_dict()})
        candidates += 1
        buffer, clip_start = buffer[advance:], clip_start + advance
    result["scenes"] = scene + 1
    # only a stored count: mkv and webm hold an estimate (duration x average rate) that variable-rate video misses
    if info.frame_count_exact and info.frame_count and decoded < info.frame_count * (1 - TRUNCATION_SLACK) - 2:
        raise VideoError(f"video {source.path}: stores {info.frame_count} frames but only {decoded} could be "
                         "decoded; the file is truncated or damaged")
    if candidates == 0:
        result.update(status="too short", reason=(
            f"no scene is {span / info.fps:.2f} s long ({config.frames} frames at {fps:g} fps); "
            f"{decoded} frames in {scene + 1} scene(s)"))
