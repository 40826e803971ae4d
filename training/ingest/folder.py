"""A folder of videos -> a training set: jobs per source, resumable results, report, metadata written last."""

from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from directanimator.atomic import atomic_path, check_output_folder, claim_output_folder
from directanimator.cues.segmentation import mediapipe_solution
from directanimator.errors import BackendUnavailableError, InputError

from .config import IngestConfig
from .source import VIDEOS, ingest_source
from .sources import Source, find_sources

log = logging.getLogger(__name__)

COMMAND = "ingest"
METADATA = "metadata.jsonl"
REPORT = "ingest_report.json"
SUMMARY = "ingest_report.txt"
RESULTS = ".ingest"  # one JSON result per finished source: what a rerun reuses


def _result_path(out: Path, source: Source) -> Path:
    return out / RESULTS / f"{source.id}.json"


def _saved_result(out: Path, source: Source, key: str) -> dict | None:
    """The result saved for `source` under `key`, when there is one and every clip it lists is on disk."""
    try:
        result = json.loads(_result_path(out, source).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("key") != key or result.get("status") == "failed":
        return None  # another file or other settings; or an unexpected failure, which a rerun tries again
    if not all((out / entry["clip"]).is_file() for entry in result.get("clips", [])):
        return None
    return result


def _save_result(out: Path, source: Source, result: dict) -> None:
    with atomic_path(_result_path(out, source)) as tmp:
        tmp.write_text(json.dumps(result, indent=1))


def check_backends() -> None:
    """BackendUnavailableError (naming what to install) unless the cue stack the checks use can run."""
    mediapipe_solution("selfie_segmentation")
    mediapipe_solution("face_detection")
    if importlib.util.find_spec("scenedetect") is None:
        raise BackendUnavailableError("ingest needs PySceneDetect for scene cuts: pip install -r "
                                      "requirements-train.txt (it installs scenedetect-headless).")


def ingest(source_dir: str | Path, out: str | Path, config: IngestConfig, *, workers: int = 1,
           threads: int | None = None, progress: bool = True, on_result: Callable[[dict], None] | None = None
           ) -> dict:
    """Ingest every video under `source_dir` into the training-set folder `out`; returns the report.

    Sources already ingested into `out` with the same file and settings are not redone (their results are kept
    in ``out/.ingest/``), so a killed run resumes. `on_result(result)` is called after each source's result is
    saved. ``metadata.jsonl`` is written last, atomically, listing the kept clips of every current source with
    its sidecar caption as it is now. InputError, before anything is written, when `out` holds another source
    folder's ingest.
    """
    config = config.check()
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers {workers!r}: at least 1 (the number of sources ingested at the same time).")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads={threads!r}: at least 1 CPU thread.")
    out = Path(out)
    check_output_folder(out, COMMAND)
    root = Path(source_dir)
    sources = find_sources(root, skip=out)
    root = root.resolve()
    _check_same_source(out, root)
    check_backends()
    claim_output_folder(out, COMMAND)
    (out / VIDEOS).mkdir(exist_ok=True)

    results: dict[str, dict] = {}
    todo = []
    threads = max(1, (threads or os.cpu_count() or 1) // workers)
    for source in sources:
        key = source.key(config)
        saved = _saved_result(out, source, key)
        if saved is not None:
            results[source.rel] = {**saved, "resumed": True}
            continue
        todo.append({"source": {"path": str(source.path), "rel": source.rel}, "root": str(root),
                     "out": str(out.resolve()), "config": config.to_dict(), "key": key, "threads": threads})
    log.info("ingest: %d videos in %s, %d already done in %s, %d to do", len(sources), root,
             len(sources) - len(todo), out, len(todo))
    by_rel = {s.rel: s for s in sources}

    def finish(result: dict) -> None:
        _save_result(out, by_rel[result["source"]], result)
        results[result["source"]] = {**result, "resumed": False}
        if on_result is not None:
            on_result(result)

    bar = tqdm(total=len(todo), desc="ingest", unit="video", disable=not progress or not todo)
    try:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")
                                     ) as executor:
                futures = [executor.submit(ingest_source, job) for job in todo]
                try:
                    for future in as_completed(futures):
                        finish(future.result())
                        bar.update()
                finally:
                    for future in futures:
                        future.cancel()
        else:
            for job in todo:
                finish(ingest_source(job))
                bar.update()
    finally:
        bar.close()

    ordered = [results[s.rel] for s in sources]
    report = build_report(ordered, root=root, out=out, config=config)
    _remove_stale_clips(out, ordered)
    with atomic_path(out / REPORT) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    summary = summary_text(report)
    with atomic_path(out / SUMMARY) as tmp:
        tmp.write_text(summary + "\n")
    for line in summary.splitlines():
        log.info("%s", line)
    entries = [_with_caption(entry, by_rel[result["source"]].caption()) for result in ordered
               for entry in result["clips"]]
    with atomic_path(out / METADATA) as tmp:
        tmp.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return report


def _with_caption(entry: dict, caption: str | None) -> dict:
    """`entry` with the sidecar caption as it is now: a caption added or edited after the clips were cut counts
    (resume keys cover the video file and the settings, not the sidecar)."""
    entry = {k: v for k, v in entry.items() if k != "caption"}
    return {**entry, "caption": caption} if caption else entry


def _check_same_source(out: Path, root: Path) -> None:
    """InputError when `out` holds an earlier ingest of another source folder: its clips would be deleted as stale."""
    earlier = set()
    try:
        earlier.add(json.loads((out / REPORT).read_text())["source_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no finished run yet; the results of a killed one say the same
    for path in (out / RESULTS).glob("*.json"):
        try:
            earlier.add(json.loads(path.read_text())["source_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    earlier.discard(str(root))
    if earlier:
        raise InputError(f"--out {out}: holds the ingest of another source folder, {sorted(earlier)[0]}, not "
                         f"{root}; ingesting {root} there would delete that folder's clips. Give a new --out for "
                         f"{root}, or ingest the same source folder ({sorted(earlier)[0]}) to resume or update it.")


def _remove_stale_clips(out: Path, results: list[dict]) -> None:
    """Delete clips of this folder that no current result lists (a source redone with other settings, or gone)."""
    keep = {entry["clip"] for result in results for entry in result["clips"]}
    for path in (out / VIDEOS).glob("*.mp4"):
        if f"{VIDEOS}/{path.name}" not in keep:
            path.unlink(missing_ok=True)


def build_report(results: list[dict], *, root: Path, out: Path, config: IngestConfig) -> dict:
    """The JSON report: settings, totals, one row per source, every rejected clip with its reason and measurements,
    and the measurements of every kept clip (to tune the thresholds on one's own footage)."""
    rows = []
    for r in results:
        rows.append({"source": r["source"], "status": r["status"], "reason": r.get("reason"),
                     "clips_kept": len(r["clips"]), "clips_rejected": len(r["rejected"]),
                     "duration": r.get("duration"), "fps": r.get("fps"),
                     "size": [r["width"], r["height"]] if "width" in r else None, "scenes": r.get("scenes"),
                     "seconds": r.get("seconds"), "resumed": r.get("resumed", False)})
    rejected = [clip for r in results for clip in r["rejected"]]
    kept = [{"clip": e["clip"], "source": e["source"], "source_start": e["source_start"],
             "stats": r.get("checks", {}).get(e["clip"])} for r in results for e in r["clips"]]
    reasons = Counter(clip["reason"].split(" (")[0] for clip in rejected)
    statuses = Counter(row["status"] for row in rows)
    totals = {"sources": len(rows), "statuses": dict(statuses), "clips_kept": sum(r["clips_kept"] for r in rows),
              "clips_rejected": len(rejected), "rejection_reasons": dict(reasons),
              "source_seconds": round(sum(r["duration"] or 0 for r in rows
                                            if r["status"] not in ("unreadable", "failed")), 3)}
    return {"source_dir": str(root), "out": str(out), "settings": config.to_dict(), "key": config.key(),
            "totals": totals, "sources": rows, "rejected": rejected, "kept": kept}


def summary_text(report: dict) -> str:
    """A readable summary of `report`: totals, a table of sources, rejection reasons."""
    t = report["totals"]
    resumed = sum(row["resumed"] for row in report["sources"])
    lines = [f"ingest: {t['sources']} videos ({resumed} done before), {t['clips_kept']} clips kept, "
             f"{t['clips_rejected']} rejected; {t['source_seconds']:.1f} s of readable footage"]
    width = min(48, max(len(row["source"]) for row in report["sources"]))
    lines.append(f"{'video':<{width}}  {'status':<10} {'kept':>5} {'rejected':>8}  note")
    for row in report["sources"]:
        name = row["source"] if len(row["source"]) <= width else "..." + row["source"][-(width - 3):]
        lines.append(f"{name:<{width}}  {row['status']:<10} {row['clips_kept']:>5} {row['clips_rejected']:>8}  "
                     f"{row['reason'] or ''}")
    if t["rejection_reasons"]:
        lines.append("clips rejected: " + ", ".join(f"{k}: {v}" for k, v in sorted(t["rejection_reasons"].items())))
    return "\n".join(lines)
