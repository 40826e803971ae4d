"""`python -m training ingest`: a folder of real-world videos -> clips, metadata and a report of every rejection."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from directanimator.errors import InputError, VideoError
from directanimator.video import read_video, write_video
from directanimator.video.timing import clip_span, resample_indices
from tests.helpers import DANCE, needs_real_data
from training.cli import build_parser, main
from training.ingest import IngestConfig, build_ingest_config, find_sources, ingest, scene_starts
from training.ingest.config import config_table
from training.ingest.frames import stream_frames
from training.world.dataset import read_metadata

# small and short, so that a whole ingest takes seconds: 9-frame clips at 8 fps from 216x384 sources
SMALL = dict(frames=9, fps=8.0, min_side=128, max_side=384, check_frames=5, check_side=384)
DANCE_SECONDS = 4


def _moving_pattern(count: int, height: int, width: int, *, seed: int, speed: float = 2.0) -> np.ndarray:
    """Bright, sharp, moving colour stripes: a scene with motion and detail but nobody in it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    frames = []
    for t in range(count):
        channels = [0.5 + 0.4 * np.sin((x + y * (c + 1) * 0.5 + speed * t) / (6 + 3 * c) + phase[c]) for c in range(3)]
        frames.append(np.stack(channels, axis=-1))
    return (np.clip(np.stack(frames), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dance_small() -> torch.Tensor:
    """The first seconds of the real dance video at 216x384, uint8."""
    needs_real_data()
    return read_video(DANCE, max_frames=24 * DANCE_SECONDS, size=(384, 216), resize="stretch",
                      dtype=torch.uint8).frames


@pytest.fixture(scope="module")
def sources(tmp_path_factory, dance_small) -> Path:
    """A user's folder: a dance (with a caption), nobody, a truncated file, a text file named .mp4, two dancers."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "dance.mp4", dance_small, 24.0)
    (root / "dance.txt").write_text("a dancer in a bright room\n")
    (root / "scenes").mkdir()
    write_video(root / "scenes" / "nobody.mp4", _moving_pattern(72, 384, 216, seed=1), 24.0)
    data = (root / "dance.mp4").read_bytes()
    (root / "broken").mkdir()
    (root / "broken" / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (root / "broken" / "notes.mp4").write_text("this is not a video\n")
    write_video(root / "two.mp4", torch.cat([dance_small, dance_small], dim=2), 24.0)
    return root


@pytest.fixture(scope="module")
def ingested(sources, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("data") / "set"
    report = ingest(sources, out, IngestConfig(**SMALL), workers=1, progress=False)
    return out, report


def _row(report: dict, source: str) -> dict:
    return next(row for row in report["sources"] if row["source"] == source)


def _reasons(report: dict, source: str) -> list[str]:
    return [clip["reason"] for clip in report["rejected"] if clip["source"] == source]


# --------------------------------------------------------------------------- timing and scenes
def test_clip_span_covers_the_picked_frames_and_advances_by_the_clip_duration():
    assert clip_span(24.0, 8.0, 9) == (25, 27)  # every 3rd frame; the next clip starts 9 / 8 s later
    assert clip_span(30.0, 30.0, 49) == (49, 49)
    span, advance = clip_span(24.0, 16.0, 49)
    assert resample_indices(24.0, 16.0, span, count=49)[-1] == span - 1
    assert advance == resample_indices(24.0, 16.0, 1000, count=50)[-1]  # where a 50th frame would be picked
    for source_fps, fps, count in ((12.5, 8.0, 9), (29.97, 16.0, 49), (10.0, 16.0, 17)):
        span, _ = clip_span(source_fps, fps, count)  # the fewest frames that hold the whole clip
        assert len(resample_indices(source_fps, fps, span, count=count)) == count
        assert len(resample_indices(source_fps, fps, span - 1, count=count)) < count


def test_scene_split_finds_a_hard_cut_in_a_video_file(tmp_path):
    first = _moving_pattern(30, 96, 128, seed=1)
    second = 255 - _moving_pattern(30, 96, 128, seed=7)[..., ::-1]  # another scene, same kind of motion
    path = write_video(tmp_path / "cut.mp4", np.concatenate([first, second]), 24.0)
    assert scene_starts(stream_frames(path, (96, 128)), 24.0) == [0, 30]
    assert scene_starts(stream_frames(write_video(tmp_path / "one.mp4", first, 24.0), (96, 128)), 24.0) == [0]


def test_clips_never_span_a_scene_cut(tmp_path, dance_small):
    # 2 s of nobody, then the dance: the first dance clip starts exactly at the cut, not before it
    root = tmp_path / "src"
    root.mkdir()
    scene = torch.from_numpy(_moving_pattern(48, 384, 216, seed=3))
    write_video(root / "cut.mp4", torch.cat([scene, dance_small[:60]]), 24.0)
    report = ingest(root, tmp_path / "out", IngestConfig(**SMALL), workers=1, progress=False)
    entries = read_metadata(tmp_path / "out")
    assert _row(report, "cut.mp4")["scenes"] == 2
    assert entries and min(e["source_start"] for e in entries) == pytest.approx(2.0)
    assert all(e["scene"] == 1 for e in entries)


def test_streamed_frames_are_scaled_and_turned_as_displayed(tmp_path):
    import av

    path = tmp_path / "phone.mp4"  # stored landscape, displayed portrait: as phones store video
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(90)
        marker = np.zeros((64, 96, 3), np.uint8)
        marker[:16, :16] = 255  # top-left as stored
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(marker, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    frames = np.stack(list(stream_frames(path, (48, 32))))
    assert frames.shape == (3, 48, 32, 3)
    assert frames[0, -4:, :4].mean() > 230 and frames[0, :4, :4].mean() < 25  # now bottom-left, as displayed


def test_write_video_takes_an_h264_speed_preset(tmp_path):
    frames = _moving_pattern(9, 64, 96, seed=2)
    error = {}
    for preset in ("veryfast", "medium"):
        clip = read_video(write_video(tmp_path / f"{preset}.mp4", frames, 8.0, preset=preset), dtype=torch.uint8)
        assert clip.num_frames == 9
        error[preset] = float((clip.frames.float() - torch.from_numpy(frames).float()).abs().mean())
    assert error["veryfast"] < 1.5 * error["medium"]  # crf sets the quality whatever the preset
    with pytest.raises(VideoError, match="preset 'quick' is not an H.264 preset"):
        write_video(tmp_path / "bad.mp4", frames, 8.0, preset="quick")


# --------------------------------------------------------------------------- a whole folder
def test_dance_gives_clips_in_the_training_format(ingested):
    out, report = ingested
    entries = read_metadata(out)
    assert len(entries) == _row(report, "dance.mp4")["clips_kept"] == 3  # 4 s: clips start at 0, 1.125, 2.25 s
    assert [e["source_start"] for e in entries] == [0.0, 1.125, 2.25]
    for entry in entries:
        assert entry["source"] == "dance.mp4" and entry["split"] == "train" and entry["fps"] == 8.0
        assert entry["identity"].startswith("dance-")
        assert entry["caption"] == "a dancer in a bright room"
        clip = read_video(out / entry["clip"])
        assert clip.num_frames == entry["num_frames"] == 9
        assert (entry["height"], entry["width"]) == tuple(clip.frames.shape[1:3]) == (384, 216)
        assert clip.fps == 8.0


def test_rejected_and_unreadable_videos_are_reported_with_their_reasons(ingested):
    out, report = ingested
    assert report == json.loads((out / "ingest_report.json").read_text())
    assert _row(report, "scenes/nobody.mp4")["status"] == "done"
    assert _row(report, "scenes/nobody.mp4")["clips_kept"] == 0
    assert _reasons(report, "scenes/nobody.mp4") and all(r.startswith("no person")
                                                         for r in _reasons(report, "scenes/nobody.mp4"))
    two = _reasons(report, "two.mp4")
    assert len(two) == 3 and all(r.startswith("more than one person") for r in two)
    for name in ("broken/truncated.mp4", "broken/notes.mp4"):
        row = _row(report, name)
        assert row["status"] == "unreadable" and row["clips_kept"] == 0 and row["reason"]
    assert "truncated" in _row(report, "broken/truncated.mp4")["reason"] or "decoded" in _row(
        report, "broken/truncated.mp4")["reason"]
    assert {e["source"] for e in read_metadata(out)} == {"dance.mp4"}
    assert [k["clip"] for k in report["kept"]] == [e["clip"] for e in read_metadata(out)]
    assert all(k["stats"]["one_person"] == 1.0 and k["stats"]["motion"] > 0.03 for k in report["kept"])
    summary = (out / "ingest_report.txt").read_text()
    assert "3 clips kept" in summary and "more than one person: 3" in summary and "broken/notes.mp4" in summary


def test_only_listed_clips_are_left_in_the_videos_folder(ingested):
    out, _ = ingested
    listed = {e["clip"] for e in read_metadata(out)}
    assert {f"videos/{p.name}" for p in (out / "videos").iterdir()} == listed


def test_sources_are_found_recursively_and_labelled_by_file_or_folder(tmp_path):
    for name in ("alice/a.mp4", "alice/b.MOV", "bob/c.webm", "bob/c.txt", ".trash/d.mp4", "out/videos/e.mp4",
                 "notes.txt", "clip.gif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "bob" / "c.txt").write_text("  a caption  \n")
    found = find_sources(tmp_path, skip=tmp_path / "out")
    assert [s.rel for s in found] == ["alice/a.mp4", "alice/b.MOV", "bob/c.webm", "clip.gif"]
    by_folder = IngestConfig(identity="folder")
    assert [s.identity(by_folder, tmp_path) for s in found] == ["alice", "alice", "bob", tmp_path.name]
    assert len({s.identity(IngestConfig(), tmp_path) for s in found}) == 4
    assert [s.caption() for s in found] == [None, None, "a caption", None]
    assert {s.split(IngestConfig(val_fraction=1.0)) for s in found} == {"val"}
    assert {s.split(IngestConfig()) for s in found} == {"train"}


# --------------------------------------------------------------------------- resume
def test_resume_after_a_kill_does_not_redo_finished_videos_and_a_setting_change_does(tmp_path, dance_small):
    root = tmp_path / "src"
    root.mkdir()
    write_video(root / "a_dance.mp4", dance_small[:40], 24.0)
    write_video(root / "b_dance.mp4", dance_small[40:80], 24.0)
    out = tmp_path / "out"
    config = IngestConfig(**SMALL)

    class Killed(Exception):
        pass

    def kill(result):
        raise Killed(result["source"])

    with pytest.raises(Killed):
        ingest(root, out, config, workers=1, progress=False, on_result=kill)  # dies after the first video
    assert not (out / "metadata.jsonl").exists()  # metadata comes last: an interrupted set is visibly incomplete
    first = sorted((out / "videos").iterdir())
    assert first and all(p.name.startswith("a_dance-") for p in first)
    stamps = {p.name: p.stat().st_mtime_ns for p in first}

    report = ingest(root, out, config, workers=1, progress=False)
    assert [row["resumed"] for row in report["sources"]] == [True, False]
    assert {p.name: p.stat().st_mtime_ns for p in first} == stamps  # a_dance's clips were not written again
    assert {e["source"] for e in read_metadata(out)} == {"a_dance.mp4", "b_dance.mp4"}

    again = ingest(root, out, config, workers=1, progress=False)
    assert [row["resumed"] for row in again["sources"]] == [True, True]
    changed = ingest(root, out, IngestConfig(**{**SMALL, "min_face": 0.4}), workers=1, progress=False)
    assert [row["resumed"] for row in changed["sources"]] == [False, False]


# --------------------------------------------------------------------------- settings and errors
def test_ingest_table_of_a_toml_file_and_flags_set_the_config(tmp_path):
    toml = tmp_path / "ingest.toml"
    toml.write_text("[ingest]\nframes = 17\nmin_face = 0.7\n\n[data]\nframes = 9\n")
    config = build_ingest_config(config_table(toml), min_face=0.6, fps=None)
    assert (config.frames, config.min_face, config.fps) == (17, 0.6, IngestConfig().fps)
    toml.write_text("[ingest]\nframe = 17\n")
    with pytest.raises(InputError, match="unknown key 'ingest.frame'"):
        build_ingest_config(config_table(toml))
    assert IngestConfig(frames=9).key() != IngestConfig(frames=17).key()


@pytest.mark.parametrize("flags, message", [
    (["--frames", "10"], "frames=10: the VAE needs 4k\\+1"),
    (["--min-face", "1.5"], "min_face=1.5"),
    (["--fps", "-4"], "fps=-4"),
    (["--identity", "person"], "identity='person'"),
    (["--workers", "0"], "--workers 0"),
])
def test_bad_option_values_are_refused_with_the_setting_named(tmp_path, caplog, flags, message):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mp4").write_text("x")
    assert main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out"), *flags]) == 2
    assert any(re.search(message, r.getMessage()) for r in caplog.records), caplog.text
    assert not (tmp_path / "out").exists()


def test_command_reads_the_ingest_table_of_config_and_its_flags_win(tmp_path, caplog):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mp4").write_text("not a video")
    toml = tmp_path / "ingest.toml"
    toml.write_text("[ingest]\nframes = 10\n")
    args = ["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--config", str(toml), "--no-progress"]
    assert main(args) == 2 and "frames=10" in caplog.text
    caplog.clear()
    assert main([*args, "--frames", "9"]) == 2  # runs: the one file is unreadable, so no clip is kept
    assert "frames=10" not in caplog.text and "no clip was kept" in caplog.text
    report = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert report["settings"]["frames"] == 9 and report["sources"][0]["status"] == "unreadable"


def test_missing_or_empty_source_folder_and_a_foreign_out_folder_are_refused(tmp_path, caplog):
    assert main(["ingest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder" in caplog.text
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("x")
    assert main(["ingest", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "holds no videos" in caplog.text
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mp4").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("x")
    assert main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "mine")]) == 2
    assert "not empty" in caplog.text and (tmp_path / "mine" / "thesis.docx").is_file()
    assert not (tmp_path / "out").exists()


def test_help_names_every_setting_with_its_default():
    text = build_parser("ingest")._subparsers._group_actions[0].choices["ingest"].format_help()
    for flag in ("--frames", "--fps", "--min-side", "--max-side", "--workers", "--min-one-person", "--min-face",
                 "--min-motion", "--min-brightness", "--min-sharpness", "--config"):
        assert flag in text
    assert "(default: 49)" in text and "(default: 0.5)" in text and "SOURCE_DIR" in text
    assert "default: None" not in text


@pytest.mark.slow  # two spawned workers each import torch and mediapipe: 30 s or more on a loaded 2-core machine
def test_command_with_two_workers_ingests_every_video_with_the_flags_settings(tmp_path, dance_small):
    root = tmp_path / "src"
    (root / "b").mkdir(parents=True)
    write_video(root / "a.mp4", dance_small[:40], 24.0)
    write_video(root / "b" / "a.gif", dance_small[40:80:2], 12.0)  # a GIF at another rate, in a subfolder
    flags = ["--frames", "9", "--fps", "8", "--min-side", "128", "--max-side", "192", "--check-frames", "5",
             "--check-side", "384", "--workers", "2", "--no-progress"]
    assert main(["ingest", str(root), "--out", str(tmp_path / "out"), *flags]) == 0
    entries = read_metadata(tmp_path / "out")
    assert sorted(e["source"] for e in entries) == ["a.mp4", "b/a.gif"]
    assert {(e["num_frames"], e["fps"], e["height"], e["width"]) for e in entries} == {(9, 8.0, 192, 108)}
    assert len({e["identity"] for e in entries}) == 2


@pytest.mark.slow
def test_an_ingested_folder_prepares_and_trains_as_it_is(ingested, tmp_path):
    """The road a user takes: ingest's metadata.jsonl goes straight into prepare (crop around the dancer, the
    reference outside the window, windows at data.fps, each checked in the cache) and a stage-1 step, with nothing
    edited by hand."""
    from safetensors import safe_open

    from tests.training_world import CONFIG, make_world, overrides
    from training.config import load_config
    from training.data import CachedClips, clip_id
    from training.framing import letterbox_framing
    from training.prepare import prepare
    from training.stage1 import train_stage1

    out, report = ingested
    _, model = make_world(tmp_path)
    config = load_config(CONFIG, overrides(tmp_path, out, model, "data.fit='crop'", "data.reference='outside'",
                                           "data.fps=6.0", "data.workers=0", "run.steps=1", "run.save_every=1"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = prepare(config)
        kept = report["totals"]["clips_kept"]
        assert kept >= 2 and result["done"] == kept and result["skipped"] == 0, (result, report["totals"])
        clips = CachedClips(config, stage=1)
        assert len(clips) == kept
        losses = train_stage1(config)
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == 1 and math.isfinite(losses[0]["loss"])
    # what prepare made of the ingested clips: the crop, the reference and the rate are in the cache key, and each
    # clip's file records its window's source frames, its reference frame and its framing
    folder = Path(result["folder"])
    material = json.loads((folder / "prepare.json").read_text())["material"]
    assert (material["fit"], material["reference"], material["fps"]) == ("crop", "outside", 6.0)
    for entry in read_metadata(out):
        with safe_open(str(folder / f"{clip_id(entry)}.safetensors"), framework="pt") as fh:
            meta = fh.metadata()
        (window,) = json.loads(meta["sources"])
        assert window["frames"] == [0, 1, 3, 4, 5]  # 9 frames at 8 fps resampled to 6 fps, the first 5 of them
        assert window["reference"] not in window["frames"] and window["reference"] > max(window["frames"])
        letterbox = letterbox_framing((entry["height"], entry["width"]), tuple(json.loads(meta["bucket"])))
        assert window["framing"] != list(letterbox.window)  # cropped, not the whole frame


# --------------------------------------------------------------------------- review fixes
def _variable_rate_mkv(path: Path, frames: torch.Tensor) -> Path:
    """`frames` at 24 fps with a 0.4 s pause after every 10th: Matroska stores no frame count, and the estimate
    (duration x average rate) is far above the frames there are."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i, rgb in enumerate(frames.numpy()):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 400 if i % 10 == 9 else 42
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_a_variable_rate_mkv_is_ingested_not_taken_for_truncated(tmp_path, dance_small):
    from directanimator.video import probe_video

    root = tmp_path / "src"
    root.mkdir()
    path = _variable_rate_mkv(root / "vfr.mkv", dance_small[:40])
    probe = probe_video(path)
    assert not probe["frame_count_exact"] and probe["frame_count"] > 1.5 * 40  # what made it look truncated
    report = ingest(root, tmp_path / "out", IngestConfig(**SMALL), workers=1, progress=False)
    row = _row(report, "vfr.mkv")
    assert row["status"] == "done" and row["clips_kept"] == 1, row


def test_a_failed_clip_write_is_retried_by_the_next_run(tmp_path, dance_small, monkeypatch):
    import training.ingest.source as source_module

    root = tmp_path / "src"
    root.mkdir()
    write_video(root / "dance.mp4", dance_small[:40], 24.0)
    out = tmp_path / "out"
    calls = []

    def disk_full_once(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return write_video(*args, **kwargs)

    monkeypatch.setattr(source_module, "write_video", disk_full_once)
    first = ingest(root, out, IngestConfig(**SMALL), workers=1, progress=False)
    row = _row(first, "dance.mp4")
    assert row["status"] == "failed" and "No space left" in row["reason"] and row["clips_kept"] == 0
    again = ingest(root, out, IngestConfig(**SMALL), workers=1, progress=False)
    row = _row(again, "dance.mp4")
    assert (row["status"], row["resumed"], row["clips_kept"]) == ("done", False, 1)
    assert [e["source"] for e in read_metadata(out)] == ["dance.mp4"]


def test_a_caption_added_or_edited_after_an_ingest_reaches_the_metadata(tmp_path, dance_small):
    root = tmp_path / "src"
    root.mkdir()
    write_video(root / "dance.mp4", dance_small[:40], 24.0)
    out = tmp_path / "out"
    ingest(root, out, IngestConfig(**SMALL), workers=1, progress=False)
    assert [e.get("caption") for e in read_metadata(out)] == [None]
    for text in ("a dancer", "a dancer in a bright room"):
        (root / "dance.txt").write_text(text + "\n")
        report = ingest(root, out, IngestConfig(**SMALL), workers=1, progress=False)
        assert _row(report, "dance.mp4")["resumed"]  # the clips stand; only the metadata changes
        assert [e.get("caption") for e in read_metadata(out)] == [text]
    (root / "dance.txt").unlink()
    ingest(root, out, IngestConfig(**SMALL), workers=1, progress=False)
    assert [e.get("caption") for e in read_metadata(out)] == [None]


def test_a_second_source_folder_into_the_same_out_is_refused_before_any_work(tmp_path):
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.mp4").write_text("not a video")
    out = tmp_path / "out"
    ingest(tmp_path / "first", out, IngestConfig(**SMALL), workers=1, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(InputError) as error:
        ingest(tmp_path / "second", out, IngestConfig(**SMALL), workers=1, progress=False)
    message = str(error.value)
    assert str((tmp_path / "first").resolve()) in message and str((tmp_path / "second").resolve()) in message
    assert "new --out" in message
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    (out / "ingest_report.json").unlink()  # a run killed before its report: the saved results still say whose
    with pytest.raises(InputError, match="another source folder"):
        ingest(tmp_path / "second", out, IngestConfig(**SMALL), workers=1, progress=False)
    assert ingest(tmp_path / "first", out, IngestConfig(**SMALL), workers=1, progress=False)["sources"]


def test_a_source_slower_than_fps_keeps_its_own_rate(tmp_path, dance_small, caplog):
    root = tmp_path / "src"
    root.mkdir()
    write_video(root / "phone.mp4", dance_small[::2][:30], 12.0)  # a 12 fps phone video
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="training.ingest.source"):
        report = ingest(root, out, IngestConfig(**{**SMALL, "fps": 16.0}), workers=1, progress=False)
    entries = read_metadata(out)
    assert entries and _row(report, "phone.mp4")["clips_kept"] == len(entries)
    assert {e["fps"] for e in entries} == {12.0}
    clip = read_video(out / entries[0]["clip"], dtype=torch.uint8)
    assert clip.fps == 12.0 and clip.num_frames == 9
    assert (clip.frames[1:].float() - clip.frames[:-1].float()).abs().mean(dim=(1, 2, 3)).min() > 0.5  # no repeats
    assert "phone.mp4 runs at 12 fps, below --fps 16" in caplog.text


def test_a_bad_thread_count_is_refused_before_the_out_folder_is_made(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mp4").write_text("x")
    with pytest.raises(InputError, match="threads=0"):
        ingest(tmp_path / "src", tmp_path / "out", IngestConfig(**SMALL), threads=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_one_source_run_leaves_the_callers_opencv_threads_as_they_were(tmp_path):
    import cv2

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mp4").write_text("x")
    before = cv2.getNumThreads()
    ingest(tmp_path / "src", tmp_path / "out", IngestConfig(**SMALL), workers=1, threads=before + 1, progress=False)
    assert cv2.getNumThreads() == before
