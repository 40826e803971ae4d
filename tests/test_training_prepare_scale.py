"""prepare at real scale: person-centred framing, the reference outside the target window, fps resampling, buckets
only where the backbone's positions allow, reference-latent noise at batch time, and many processes writing the
cache of one."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tests.tiny import tiny_backbone_config
from tests.training_world import CONFIG, make_world, overrides
from directanimator.errors import InputError
from directanimator.video import read_video, resize_frames
from training.config import load_config
from training.data import (
    BucketBatchSampler, CachedClips, cache_folder, cache_key, make_batch, sample_generators, window_starts,
)
from training.framing import MARGIN_PX, Framing, letterbox_framing, mask_box, person_framing
from training.prepare import (
    _process_group, check_buckets, clip_job, clip_timeline, extract_clip, prepare, reference_index, window_indices,
)
from training.world import WorldConfig, export_world
from training.world.dataset import read_metadata


def _person(frames: int, size: tuple[int, int], x0: list[int], width: int, top: int, height: int) -> torch.Tensor:
    """Person masks ``[F, H, W]``: a block `width` x `height` px whose left edge moves through `x0`."""
    masks = torch.zeros(frames, *size)
    for f in range(frames):
        masks[f, top:top + height, x0[f]:x0[f] + width] = 1.0
    return masks


# --------------------------------------------------------------------------- framing
def test_crop_follows_the_person_near_an_edge_and_keeps_all_of_them():
    source, bucket = (128, 256), (64, 64)  # landscape source, square bucket: a centre crop keeps x 64..192 only
    masks = _person(5, source, x0=[6, 9, 12, 15, 18], width=30, top=30, height=80)
    framing = person_framing(source, bucket, mask_box(masks))
    framed = framing.apply(masks)
    assert framed.shape == (5, 64, 64)
    scale = (64 / 128) ** 2  # crop scale: 128 px of height onto 64
    torch.testing.assert_close(framed.sum(), masks.sum() * scale, rtol=0.01, atol=0)  # nothing of them cut
    centre = resize_frames(masks, bucket, "crop")
    assert centre.sum() < 0.1 * masks.sum() * scale  # what the plain centre crop would have kept
    # the person's box goes through the same framing as the pixels
    box = framing.map_boxes(mask_box(masks)[None])[0]
    torch.testing.assert_close(box, mask_box(framed), atol=1.0, rtol=0)


def test_a_person_wider_than_the_crop_widens_it_towards_letterbox_rather_than_being_cut():
    source, bucket = (128, 256), (64, 64)
    masks = _person(3, source, x0=[20, 60, 100], width=120, top=10, height=100)  # spans x 20..220 over the window
    framing = person_framing(source, bucket, mask_box(masks))
    top, left, height, width = framing.window
    assert width > 64 and height == width  # (scaled px) wider than a crop, still the bucket's aspect
    framed = framing.apply(masks)
    scale = (64 / 128) * (64 / width)
    torch.testing.assert_close(framed.sum(), masks.sum() * scale ** 2, rtol=0.03, atol=0)
    box = framing.map_boxes(mask_box(masks)[None])[0]  # the person's box in the working frame
    assert float(box[0]) >= -1e-3 and float(box[2]) <= 64 + 1e-3 and float(box[1]) > 0 and float(box[3]) < 64


def test_the_crop_keeps_a_margin_around_the_persons_box():
    # a person 128 x 100 source px (64 x 50 working px): without a margin the crop would be their box exactly, a
    # fingertip of the mask's soft edge on its border
    source, bucket = (128, 256), (64, 64)
    masks = _person(1, source, x0=[60], width=128, top=10, height=100)
    framing = person_framing(source, bucket, mask_box(masks))
    x0, y0, x1, y1 = framing.map_boxes(mask_box(masks)[None])[0].tolist()
    assert x0 >= MARGIN_PX - 0.01 and x1 <= 64 - MARGIN_PX + 0.01, (x0, x1)
    assert y0 >= MARGIN_PX - 0.01 and y1 <= 64 - MARGIN_PX + 0.01, (y0, y1)
    small = person_framing(source, bucket, torch.tensor([100.0, 40.0, 110.0, 60.0]))  # the plain crop has room
    assert small.window[2:] == (64, 64)


def test_letterbox_framing_is_the_resize_of_the_pad_mode():
    frames = torch.rand(2, 90, 160, 3)
    framing = letterbox_framing((90, 160), (64, 64))
    torch.testing.assert_close(framing.apply(frames), resize_frames(frames, (64, 64), "pad"))
    assert isinstance(framing, Framing)


# --------------------------------------------------------------------------- windows, fps and the reference
def test_fps_resampling_cuts_windows_from_the_resampled_timeline():
    timeline = clip_timeline(48, 24.0, 8.0)  # 2 s at 24 fps -> 16 frames at 8 fps
    assert len(timeline) == 16 and timeline[:4] == [0, 3, 6, 9]
    assert clip_timeline(48, 24.0, 0.0) == list(range(48))  # 0: the clip's own rate
    windows = window_indices(timeline, 5, 1, 3)
    assert windows == [[0, 3, 6, 9, 12], [15, 18, 21, 24, 27], [30, 33, 36, 39, 42]]
    assert window_indices(clip_timeline(30, 12.0, 24.0), 5, 1, 1) == [[0, 0, 1, 1, 2]]  # a higher rate repeats


def test_the_reference_is_a_frame_outside_the_target_window():
    window = list(range(0, 5))
    gen = torch.Generator().manual_seed(0)
    assert reference_index("outside", 20, window, gen) == (12, None)  # the middle of frames 5..19
    assert reference_index("outside", 20, list(range(10, 15)), gen) == (5, None)  # the longer side: before
    assert reference_index("first", 20, window, gen) == (0, None)
    picks = [reference_index("random_outside", 20, window, torch.Generator().manual_seed(s))[0] for s in range(20)]
    assert all(p >= 5 for p in picks) and len(set(picks)) > 3
    again = [reference_index("random_outside", 20, window, torch.Generator().manual_seed(s))[0] for s in range(20)]
    assert picks == again  # seeded: the same reference on every prepare
    at, note = reference_index("outside", 5, window, gen)
    assert at == 0 and "no frame outside the target window" in note


@pytest.fixture(scope="module")
def long_world(tmp_path_factory):
    """Two world clips of 12 frames (64 px, 12 fps), and a tiny model folder."""
    root = tmp_path_factory.mktemp("scale")
    data, model = make_world(root)
    long = root / "long"
    export_world(long, WorldConfig(height=64, width=64, num_frames=12), clips=2, fmt="png")
    return root, long, model


def _job(root, data, model, entry, *extra):
    config = load_config(CONFIG, overrides(root, data, model, "data.pseudo=false", *extra))
    return clip_job(config, entry)


def test_prepare_takes_the_reference_outside_the_window_and_resamples_to_data_fps(long_world, caplog):
    root, data, model = long_world
    entry = {k: v for k, v in read_metadata(data)[0].items() if k != "reference"}
    clip = read_video(data / entry["clip"], fps=entry["fps"]).frames
    job = _job(root, data, model, entry, "data.reference='outside'", "data.fps=6.0")
    (window,) = extract_clip(job)["windows"]
    torch.testing.assert_close(window["target"], clip[[0, 2, 4, 6, 8]])  # 12 -> 6 fps: every other frame
    # frames 9..11 lie outside the window (0..8): the middle one is the reference
    torch.testing.assert_close(window["cues"].reference[0], clip[10])

    whole = _job(root, data, model, entry, "data.reference='outside'", "data.frames=9", "data.fps=9.0")
    with caplog.at_level("WARNING", logger="training.prepare"):
        first = extract_clip(whole)  # a window over the whole clip: no frame outside it
    assert first["windows"][0]["sources"]["frames"] == [0, 1, 3, 4, 5, 7, 8, 9, 11]  # 9 fps: the whole clip
    torch.testing.assert_close(first["windows"][0]["cues"].reference[0], clip[0])
    assert first["reference_fallback"] == 1 and result_fallback(window_job=job) == 0
    assert caplog.text == ""  # no warning per clip: prepare logs one summary (test_reference_fallbacks_...)

    missing = extract_clip(_job(root, data, model, entry, "data.reference='file'"))
    assert "names no reference image" in missing["error"]


def result_fallback(window_job: dict) -> int:
    return extract_clip(window_job)["reference_fallback"]


def test_a_clip_shorter_than_one_window_is_skipped_naming_its_length_and_the_fix(long_world, tmp_path):
    root, data, model = long_world
    entry = read_metadata(data)[0]
    assert window_starts(4, 5, 1, 1) == [] and window_indices(list(range(4)), 5, 1, 1) == []
    # 12 frames at 12 fps resampled to 4 fps: 4 frames, short of one 5-frame window (no frozen-frame padding)
    error = extract_clip(_job(root, data, model, entry, "data.fps=4.0"))["error"]
    assert "4 frames at 4 fps" in error and "one window of 5 frames" in error, error
    assert "--frames" in error and "data.fps / data.frames" in error
    error = extract_clip(_job(root, data, model, entry, "data.stride=3"))["error"]
    assert "12 frames at 12 fps" in error and "one window of 13 frames" in error, error
    assert "windows" in extract_clip(_job(root, data, model, entry, "data.stride=2"))  # 9 fit

    config = load_config(CONFIG, overrides(root, data, model, "data.pseudo=false", "data.frames=13",
                                           f"data.cache={json.dumps(str(tmp_path))}"))
    assert prepare(config) == {"cached": 0, "done": 0, "skipped": 2, "folder": str(cache_folder(config))}
    reasons = [json.loads(line)["reason"] for line in (cache_folder(config) / "skipped.jsonl").read_text().splitlines()]
    assert len(reasons) == 2 and all("12 frames at 12 fps" in r and "window of 13 frames" in r for r in reasons)


def test_reference_fallbacks_are_one_summary_warning_of_prepare(long_world, tmp_path, caplog):
    root, data, model = long_world
    folder = tmp_path / "data"
    folder.mkdir()
    entries = [{**{k: v for k, v in e.items() if k != "reference"}, "clip": str(data / e["clip"]),
                "ground_truth": str(data / e["ground_truth"])} for e in read_metadata(data)]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    # 12 frames at 12 fps resampled to 9 fps: 9 frames 0..11, one window over the whole clip
    config = load_config(CONFIG, overrides(root, folder, model, "data.pseudo=false", "data.frames=9", "data.fps=9.0",
                                           "data.reference='outside'", f"data.cache={json.dumps(str(tmp_path))}"))
    with caplog.at_level("WARNING", logger="training.prepare"):
        assert prepare(config)["done"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "2 of the 2 clips encoded" in warnings[0], warnings
    assert "no frame outside" in warnings[0]


def test_a_metadata_reference_is_kept_in_every_mode(long_world):
    root, data, model = long_world
    entry = read_metadata(data)[0]
    outside = extract_clip(_job(root, data, model, entry, "data.reference='outside'"))["windows"][0]
    first = extract_clip(_job(root, data, model, entry, "data.reference='first'"))["windows"][0]
    torch.testing.assert_close(outside["cues"].reference, first["cues"].reference)


def test_crop_of_a_wide_world_clip_keeps_its_person_whole(long_world, tmp_path):
    root, _, model = long_world
    wide = tmp_path / "wide"
    export_world(wide, WorldConfig(height=64, width=128, num_frames=5), clips=1, fmt="png")
    entry = read_metadata(wide)[0]
    truth = load_file(str(wide / entry["ground_truth"]))
    masks = truth["person_masks"].float() / 255
    clip = read_video(wide / entry["clip"], fps=entry["fps"]).frames
    for fit in ("crop", "letterbox"):
        job = _job(root, wide, model, entry, f"data.fit='{fit}'")
        (window,) = extract_clip(job)["windows"]
        framing = (person_framing((64, 128), (64, 64), mask_box(masks)) if fit == "crop"
                   else letterbox_framing((64, 128), (64, 64)))
        # prepare's frames are the clip's through the framing around the person (a centre crop would differ)
        torch.testing.assert_close(window["target"], framing.apply(clip), rtol=0, atol=2 / 255)
        assert window["sources"]["framing"] == list(framing.window)
        kept = framing.apply(masks).sum() / (masks.sum() * (framing.size[1] / framing.window[3]) ** 2 *
                                             (framing.scaled[1] / 128) ** 2)
        assert abs(float(kept) - 1) < 0.03, fit  # the whole person is inside the working frame
    centre = resize_frames(clip, (64, 64), "crop")
    assert (person_framing((64, 128), (64, 64), mask_box(masks)).apply(clip) - centre).abs().max() > 0.2


def test_extract_reports_an_odd_entry_per_clip_instead_of_raising(long_world, tmp_path):
    root, data, model = long_world
    entry = read_metadata(data)[0]
    truth = load_file(str(data / entry["ground_truth"]))
    short = tmp_path / "short_truth.safetensors"
    save_file({k: v[:2].contiguous() if k.startswith("person") else v for k, v in truth.items()}, str(short))
    error = extract_clip(_job(root, data, model, {**entry, "ground_truth": str(short)}, "data.fit='crop'"))["error"]
    assert error.startswith("IndexError"), error  # ground truth of 2 frames for a 12-frame clip
    error = extract_clip(_job(root, data, model, {**entry, "fps": None}))["error"]
    assert error.startswith("TypeError"), error


# --------------------------------------------------------------------------- buckets and positions
def test_aspect_buckets_are_refused_for_learned_positional_embeddings_and_allowed_for_rotary(long_world):
    root, data, model = long_world
    config = load_config(CONFIG, overrides(root, data, model, "data.buckets=[[480, 720], [720, 480]]"))
    learned = tiny_backbone_config("1.0", use_learned_positional_embeddings=True, sample_height=60, sample_width=90)
    expected = r"learned positional embeddings for 480x720 px only.*data.buckets=\[\[480, 720\]\]"
    with pytest.raises(InputError, match=expected):
        check_buckets(config, learned)
    check_buckets(load_config(CONFIG, overrides(root, data, model, "data.buckets=[[480, 720]]")), learned)
    check_buckets(config, tiny_backbone_config("1.0", use_learned_positional_embeddings=False))
    portrait = clip_job(config, {"clip": "x.mp4", "fps": 24.0, "height": 1920, "width": 1080})
    landscape = clip_job(config, {"clip": "y.mp4", "fps": 24.0, "height": 720, "width": 1280})
    assert portrait["bucket"] == [720, 480] and landscape["bucket"] == [480, 720]


PATH_KEYS = ("clip", "reference", "driving", "pseudo_driving", "cross_reference", "cross_target", "ground_truth")


def test_length_buckets_give_each_clip_the_longest_window_it_fills(long_world, tmp_path):
    root, long, model = long_world
    lines = [{**e, **{k: f"{folder}/{e[k]}" for k in PATH_KEYS if k in e}}
             for folder in ("world", "long") for e in read_metadata(root / folder)
             if e.get("split", "train") == "train"]
    (root / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    config = load_config(CONFIG, overrides(root, root / "metadata.jsonl", model, "data.pseudo=false",
                                           "data.lengths=[9, 13]", f"data.cache={json.dumps(str(tmp_path / 'cache'))}"))
    assert prepare(config)["done"] == len(lines)
    clips = CachedClips(config)
    assert sorted({it.bucket for it in clips.items}) == [(64, 64, 5), (64, 64, 9)]  # 5-frame clips; 12-frame ones
    for k, item in enumerate(clips.items):
        assert clips.load(k)["target"].shape[0] == (item.bucket[2] - 1) // 4 + 1
    sampler = BucketBatchSampler([it.bucket for it in clips.items], 2, seed=0)
    for _ in range(6):
        assert len({clips.items[i].bucket for i in sampler.next()}) == 1  # a batch holds one length

    learned = tiny_backbone_config("1.0", use_learned_positional_embeddings=True, sample_height=8, sample_width=8)
    with pytest.raises(InputError, match="data.lengths=.*learned positional embeddings for one window length"):
        check_buckets(config, learned)
    with pytest.raises(InputError, match="data.lengths"):  # 1 + 2 latents do not pair into CogVideoX 1.5's patches
        check_buckets(load_config(CONFIG, overrides(root, root / "metadata.jsonl", model, "data.frames=9",
                                                    "data.lengths=[5]")), tiny_backbone_config("1.5"))


def test_new_data_options_enter_the_cache_key_only_when_they_change_the_tensors(long_world):
    root, data, model = long_world
    base = load_config(CONFIG, overrides(root, data, model))
    keys = {cache_key(load_config(CONFIG, overrides(root, data, model, *extra)))
            for extra in ([], ["data.fit='crop'"], ["data.fps=6.0"], ["data.reference='outside'"])}
    assert len(keys) == 4 and cache_key(base) in keys
    same = load_config(CONFIG, overrides(root, data, model, "data.reference_noise=[-3.0, 0.5]", "data.device='cpu'"))
    assert cache_key(same) == cache_key(base)  # batch-time noise and the VAE's device do not change the cache


# --------------------------------------------------------------------------- reference noise at batch time
@pytest.fixture(scope="module")
def prepared_small(long_world):
    root, _, model = long_world
    data = root / "world"
    config = load_config(CONFIG, overrides(root, data, model, "data.pseudo=false"))
    prepare(config, limit=2)
    return root, data, model


def test_reference_noise_changes_only_the_reference_and_is_reproducible(prepared_small):
    root, data, model = prepared_small
    plain = CachedClips(load_config(CONFIG, overrides(root, data, model, "data.pseudo=false")))
    noisy = CachedClips(load_config(CONFIG, overrides(root, data, model, "data.pseudo=false",
                                                      "data.reference_noise=[-1.0, 0.5]")))
    assert noisy.folder == plain.folder

    def batch(clips):
        return make_batch(clips, [0, 1], sample_generators(0, 3, 0, 0, 2))

    a, b, again = batch(plain), batch(noisy), batch(noisy)
    torch.testing.assert_close(a.target, b.target)
    torch.testing.assert_close(a.cues.pose, b.cues.pose)
    assert torch.equal(a.drop_cues, b.drop_cues) and torch.equal(a.drop_reference, b.drop_reference)
    difference = (b.reference - a.reference).std(dim=(1, 2, 3, 4))
    assert bool((difference > 0.05).all()) and bool((difference < 3).all())  # sigma = exp(-1 +- ...)
    assert not torch.allclose(difference[0], difference[1])  # a sigma of each sample's own
    torch.testing.assert_close(b.reference, again.reference, rtol=0, atol=0)  # same generators: same noise
    torch.testing.assert_close(a.reference, batch(plain).reference, rtol=0, atol=0)


# --------------------------------------------------------------------------- many processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, config_overrides: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    result = prepare(load_config(CONFIG, config_overrides))
    assert result["done"] == 4 and result["skipped"] == 1, result  # the totals, on every process
    import torch.distributed as dist

    dist.destroy_process_group()


def test_the_process_group_waits_run_dist_timeout_minutes(monkeypatch):
    import accelerate
    from datetime import timedelta

    made = []
    monkeypatch.setattr(accelerate, "PartialState", lambda **kwargs: made.append(kwargs) or "state")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _process_group(90.0) is None and made == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _process_group(90.0) == "state"
    assert made[0]["timeout"] == timedelta(minutes=90)  # not NCCL's 10 minutes while rank 0 encodes captions


def _failing_rank(rank: int, world: int, port: int, config_overrides: list[str], out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    try:
        prepare(load_config(CONFIG, config_overrides))
        outcome = "finished"
    except Exception as error:  # noqa: BLE001 - the test reads what each rank raised
        outcome = f"{type(error).__name__}: {error}"
    with open(f"{out}.{rank}", "w") as fh:
        fh.write(outcome)


@pytest.mark.slow
def test_a_failure_of_rank_0_before_the_first_barrier_stops_every_rank(long_world, tmp_path):
    root, data, model = long_world
    folder = tmp_path / "data"
    folder.mkdir()
    entries = [{**e, "clip": str(data / e["clip"]), "caption": 123} for e in read_metadata(data)]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    config = overrides(root, folder, model, "run.dist_timeout_minutes=2.0", f"data.cache={json.dumps(str(tmp_path))}")
    out = str(tmp_path / "outcome")
    mp.start_processes(_failing_rank, args=(2, _free_port(), config, out), nprocs=2, join=True, start_method="spawn")
    first, second = (open(f"{out}.{r}").read() for r in (0, 1))
    assert first.startswith("InputError") and "caption must be a string" in first, first
    # the other rank stops with rank 0's error, not after the collective's timeout
    assert second.startswith("RankError") and "caption must be a string" in second, second


@pytest.mark.slow
def test_two_processes_prepare_the_cache_one_process_prepares(long_world, tmp_path):
    root, _, model = long_world
    data = tmp_path / "world"
    export_world(data, WorldConfig(height=64, width=64, num_frames=5), clips=4, fmt="png")
    (data / "broken.mp4").write_bytes(b"not a video")
    with (data / "metadata.jsonl").open("a") as fh:
        fh.write(json.dumps({"clip": "broken.mp4", "fps": 12.0, "height": 64, "width": 64}) + "\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = load_config(CONFIG, overrides(root, data, model, f"data.cache={json.dumps(str(tmp_path / 'one'))}"))
        assert prepare(one)["done"] == 4
    finally:
        torch.set_num_threads(threads)
    two = overrides(root, data, model, f"data.cache={json.dumps(str(tmp_path / 'two'))}")
    mp.start_processes(_rank, args=(2, _free_port(), two), nprocs=2, join=True, start_method="spawn")

    a, b = cache_folder(one), cache_folder(load_config(CONFIG, two))
    assert a.name == b.name
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and len(names) == 7  # 4 clips, null text, prepare.json, skipped
    for name in names:
        if name.endswith(".safetensors"):
            x, y = load_file(str(a / name)), load_file(str(b / name))
            assert x.keys() == y.keys()
            for key in x:
                torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, msg=f"{name} {key}")
        else:
            assert (a / name).read_text() == (b / name).read_text(), name


def test_crop_of_the_real_portrait_footage_frames_the_dancer_whole():
    from directanimator.cues.segmentation import segment_person
    from directanimator.cues import CueConfig
    from tests.helpers import DANCE, needs_real_data
    from training.framing import read_size
    from training.prepare import _read_frames, _window_framing

    needs_real_data()
    source, size = (1920, 1080), (128, 128)
    rows = list(range(0, 96, 12))
    decoded = _read_frames(DANCE, rows, read_size(source, size, "crop"), 24.0)
    framing = _window_framing("crop", source, size, scene=False, truth=None, rows=rows, frames_scaled=decoded,
                              cues=CueConfig())
    assert framing.place(decoded).shape == (len(rows), 128, 128, 3)
    # the dancer found independently, on the whole frames at another size, lies inside the working frame
    check = read_video(DANCE, size=(480, 270), resize="stretch", max_frames=96).frames[rows]
    box = mask_box(segment_person(check))
    assert box is not None
    inside = framing.map_boxes((box * torch.tensor([4.0, 4.0, 4.0, 4.0]))[None])[0]
    assert float(inside[0]) >= -2 and float(inside[1]) >= -2 and float(inside[2]) <= 130 and float(inside[3]) <= 130
    assert max(float(inside[2] - inside[0]), float(inside[3] - inside[1])) > 0.8 * 128  # and fills it on one side
    centre = person_framing(source, size, None).map_boxes((box * 4.0)[None])[0]
    assert float(centre[1]) < -2 or float(centre[3]) > 130  # where the plain centre crop cuts the dancer


def test_the_device_flag_is_checked_before_the_cache_folder_is_made(long_world, tmp_path):
    import argparse

    from directanimator.devices import process_device
    from training.prepare import add_arguments, run

    root, data, model = long_world
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sets = [x for o in overrides(root, data, model, f"data.cache={json.dumps(str(tmp_path / 'cache'))}")
            for x in ("--set", o)]
    with pytest.raises(InputError, match="data.device cuda:99"):
        run(parser.parse_args([str(CONFIG), *sets, "--device", "cuda:99"]))
    assert not (tmp_path / "cache").exists()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert process_device("auto").type == expected and process_device("cpu").type == "cpu"


def test_a_clip_without_a_stored_frame_count_is_counted_before_windows_are_cut(tmp_path):
    from directanimator.video import probe_video
    from training.prepare import _frame_count

    export_world(tmp_path, WorldConfig(height=64, width=64, num_frames=7), clips=1, fmt="mp4")
    path = tmp_path / read_metadata(tmp_path)[0]["clip"]
    probe = probe_video(path)
    assert _frame_count(path, probe) == 7
    assert _frame_count(path, dict(probe, frame_count=None, frame_count_exact=False)) == 7  # (mkv, webm streams)
    assert _frame_count(path, dict(probe, frame_count=9, frame_count_exact=False)) == 7  # an estimate is not used
