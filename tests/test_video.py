"""directanimator.video: reading, writing, probing and resizing videos, GIFs, image folders and images."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from directanimator.errors import InputError, VideoError
from directanimator.video import (
    VideoClip,
    probe_video,
    read_image,
    read_video,
    resize_frames,
    resize_plan,
    snap_size,
    write_image,
    write_video,
)

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
DANCE = REAL / "dance_1080x1920_24fps.mp4"

FRAMES, HEIGHT, WIDTH, SQUARE = 16, 64, 96, 16


def moving_square(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """Frame i: grey background at level 0.1 + 0.05 i (identifies the frame) and a red square moving right by 4 px."""
    video = torch.zeros(frames, height, width, 3)
    for i in range(frames):
        video[i] = 0.1 + 0.05 * i
        x = 4 * i
        video[i, 24 : 24 + SQUARE, x : x + SQUARE] = torch.tensor([0.9, 0.1, 0.1])
    return video


def frame_index(frame: torch.Tensor) -> int:
    """Inverse of moving_square's background level, read in the bottom-left corner."""
    return round((frame[-8:, :8].mean().item() - 0.1) / 0.05)


def red_centroid_x(frame: torch.Tensor) -> float:
    red = (frame[..., 0] > 0.6) & (frame[..., 1] < 0.4)
    return red.nonzero()[:, 1].float().mean().item()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_video_round_trip_keeps_count_rate_size_and_pixels(tmp_path, suffix):
    video = moving_square()
    path = write_video(tmp_path / f"clip{suffix}", video, 12)
    clip = read_video(path)
    assert isinstance(clip, VideoClip)
    assert clip.frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and clip.frames.dtype == torch.float32
    assert clip.fps == pytest.approx(12) and clip.source_fps == pytest.approx(12)
    assert clip.source_size == (HEIGHT, WIDTH) and clip.source_frame_count == FRAMES
    assert 0.0 <= clip.frames.min() and clip.frames.max() <= 1.0
    assert (clip.frames - video).abs().mean() < 0.05
    assert [frame_index(f) for f in clip.frames] == list(range(FRAMES))
    for i in (0, 7, 15):
        assert red_centroid_x(clip.frames[i]) == pytest.approx(4 * i + SQUARE / 2 - 0.5, abs=1.0)
    assert listing(tmp_path) == [f"clip{suffix}"]


def test_odd_sizes_are_padded_to_even_and_logged(tmp_path, caplog):
    video = moving_square(frames=3, height=63, width=95)
    with caplog.at_level(logging.INFO, logger="directanimator.video"):
        write_video(tmp_path / "odd.mp4", video, 8)
    assert "padded to 96x64" in caplog.text
    clip = read_video(tmp_path / "odd.mp4")
    assert clip.frames.shape == (3, 64, 96, 3)
    # the added row and column repeat the edge instead of adding a black line
    assert (clip.frames[:, -1, :95] - clip.frames[:, -2, :95]).abs().mean() < 0.03
    assert (clip.frames[:, 2:60, -1] - clip.frames[:, 2:60, -2]).abs().mean() < 0.03


def test_uint8_numpy_frames_are_written_like_float_tensors(tmp_path):
    video = moving_square(frames=4)
    write_video(tmp_path / "u8.mp4", (video.numpy() * 255).round().astype(np.uint8), 8)
    assert (read_video(tmp_path / "u8.mp4").frames - video).abs().mean() < 0.05


def test_gif_round_trip_keeps_frames_even_identical_ones(tmp_path):
    video = moving_square()
    video[5] = video[4]  # Pillow merges identical neighbours into one longer GIF frame
    write_video(tmp_path / "clip.gif", video, 10)
    clip = read_video(tmp_path / "clip.gif")
    assert clip.frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert clip.fps == pytest.approx(10)
    assert (clip.frames - video).abs().mean() < 0.05
    assert [frame_index(f) for f in clip.frames] == [0, 1, 2, 3, 4, 4] + list(range(6, FRAMES))


def test_gif_per_frame_durations_give_a_constant_rate(tmp_path):
    levels = [40, 80, 120, 160]
    images = [Image.new("RGB", (64, 64), (v, v, v)) for v in levels]
    images[0].save(tmp_path / "vfr.gif", save_all=True, append_images=images[1:], duration=[100, 100, 300, 100])
    clip = read_video(tmp_path / "vfr.gif")
    assert clip.fps == pytest.approx(10)
    got = [round(f.mean().item() * 255) for f in clip.frames]
    assert got == [40, 80, 120, 120, 120, 160]  # the 300 ms frame lasts three 100 ms frames
    assert probe_video(tmp_path / "vfr.gif")["duration"] == pytest.approx(0.6)


def test_gif_rate_is_rounded_to_whole_centiseconds(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="directanimator.video"):
        write_video(tmp_path / "24.gif", moving_square(frames=3), 24)
    assert "25 fps" in caplog.text
    assert read_video(tmp_path / "24.gif").fps == pytest.approx(25)


def test_image_folder_is_read_in_natural_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for number, level in [(10, 200), (2, 100), (1, 50), (11, 250)]:
        Image.new("RGB", (64, 64), (level, level, level)).save(folder / f"frame{number}.png")
    (folder / "notes.txt").write_text("not a frame")
    Image.new("RGB", (64, 64), (255, 0, 0)).save(folder / ".hidden.png")
    clip = read_video(folder)
    assert [round(f.mean().item() * 255) for f in clip.frames] == [50, 100, 200, 250]
    assert clip.fps == 24 and clip.source_frame_count == 4
    strided = read_video(folder, fps=8, stride=2, start=1)
    assert [round(f.mean().item() * 255) for f in strided.frames] == [100, 250]
    assert strided.fps == 4 and strided.source_fps == 8
    assert probe_video(folder, fps=8) | {"path": None} == {
        "kind": "folder", "path": None, "fps": 8.0, "frame_count": 4, "frame_count_exact": True,
        "width": 64, "height": 64, "duration": 0.5,
    }


def test_image_folder_with_mixed_sizes_needs_a_size(tmp_path):
    Image.new("RGB", (64, 64), (10, 10, 10)).save(tmp_path / "a1.png")
    Image.new("RGB", (128, 96), (20, 20, 20)).save(tmp_path / "a2.png")
    with pytest.raises(VideoError, match=r"a2|frame 1 is 128x96.*size="):
        read_video(tmp_path)
    assert read_video(tmp_path, size=(64, 64)).frames.shape == (2, 64, 64, 3)


def test_stride_start_and_max_frames_pick_frames_and_set_fps(tmp_path):
    write_video(tmp_path / "clip.mp4", moving_square(), 12)
    clip = read_video(tmp_path / "clip.mp4", start=1, stride=2, max_frames=5)
    assert clip.frames.shape[0] == 5
    assert [frame_index(f) for f in clip.frames] == [1, 3, 5, 7, 9]
    assert clip.fps == pytest.approx(6) and clip.source_fps == pytest.approx(12)
    tail = read_video(tmp_path / "clip.mp4", start=13, max_frames=10)
    assert [frame_index(f) for f in tail.frames] == [13, 14, 15]


def test_resize_while_reading_sets_shape_and_records_the_plan(tmp_path):
    write_video(tmp_path / "clip.mp4", moving_square(), 12)
    for mode, scaled in [("stretch", (32, 32)), ("crop", (32, 48)), ("pad", (21, 32))]:
        clip = read_video(tmp_path / "clip.mp4", size=(32, 32), resize=mode, max_frames=2)
        assert clip.frames.shape == (2, 32, 32, 3)
        assert clip.resize.mode == mode and clip.resize.scaled_size == scaled
        assert clip.source_size == (HEIGHT, WIDTH)
    assert read_video(tmp_path / "clip.mp4", max_frames=1).resize is None


def test_uint8_dtype_returns_raw_values(tmp_path):
    write_video(tmp_path / "clip.mp4", moving_square(frames=2), 12)
    as_float = read_video(tmp_path / "clip.mp4")
    as_bytes = read_video(tmp_path / "clip.mp4", dtype=torch.uint8)
    assert as_bytes.frames.dtype == torch.uint8
    assert torch.equal(as_bytes.frames.float() / 255, as_float.frames)


def test_display_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(90)  # counter-clockwise, as phones store portrait video
        marker = np.zeros((64, 96, 3), np.uint8)
        marker[:16, :16] = 255  # top-left
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(marker, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    clip = read_video(path)
    assert clip.frames.shape == (2, 96, 64, 3) and clip.source_size == (96, 64)
    assert clip.frames[0, -8:, :8].mean() > 0.9  # a quarter turn counter-clockwise moves top-left to bottom-left
    assert clip.frames[0, :8, :8].mean() < 0.1
    assert (probe_video(path)["width"], probe_video(path)["height"]) == (64, 96)


def test_probe_reports_rate_count_size_and_duration_of_a_file(tmp_path):
    write_video(tmp_path / "clip.mp4", moving_square(), 12)
    info = probe_video(tmp_path / "clip.mp4")
    assert info["kind"] == "video" and info["codec"] == "h264"
    assert info["fps"] == pytest.approx(12) and info["frame_count"] == FRAMES and info["frame_count_exact"]
    assert (info["width"], info["height"]) == (WIDTH, HEIGHT)
    assert info["duration"] == pytest.approx(FRAMES / 12, abs=0.01)


# ---------------------------------------------------------------------------------------------- resizing


def bordered(height: int, width: int, border: int = 4) -> torch.Tensor:
    """One white frame with a blue border of `border` px."""
    frame = torch.ones(1, height, width, 3)
    blue = torch.tensor([0.0, 0.0, 1.0])
    frame[:, :border] = frame[:, -border:] = frame[:, :, :border] = frame[:, :, -border:] = blue
    return frame


def test_pad_letterboxes_and_keeps_the_whole_picture():
    out = resize_frames(bordered(64, 128), (128, 128), "pad")
    assert out.shape == (1, 128, 128, 3)
    assert out[0, :32].abs().max() == 0 and out[0, 96:].abs().max() == 0  # black bars above and below
    blue = torch.tensor([0.0, 0.0, 1.0])
    for row in (33, 94):  # both horizontal border lines survive, just inside the bars
        assert torch.allclose(out[0, row, 10:118], blue.expand(108, 3), atol=0.02)
    for col in (1, 126):  # and both vertical ones
        assert torch.allclose(out[0, 40:88, col], blue.expand(48, 3), atol=0.02)
    assert out[0, 64, 64].min() > 0.98  # the white middle


def test_crop_keeps_the_centre_and_fills_the_frame():
    frame = torch.zeros(1, 64, 128, 3)
    frame[..., :32, 0] = 1.0  # red left quarter
    frame[..., 32:96, 1] = 1.0  # green middle half
    frame[..., 96:, 2] = 1.0  # blue right quarter
    out = resize_frames(frame, (32, 32), "crop")
    assert out.shape == (1, 32, 32, 3)
    green = torch.tensor([0.0, 1.0, 0.0])
    assert torch.allclose(out[0, :, 1:-1], green.expand(32, 30, 3), atol=1e-5)
    # only the antialiasing filter's tail reaches past the crop edge
    assert out[0, :, [0, -1], 1].min() > 0.85 and out[..., [0, 2]].max() < 0.15


def test_stretch_changes_the_aspect_ratio_and_masks_resize_too():
    out = resize_frames(bordered(64, 128), (64, 64), "stretch")
    assert out.shape == (1, 64, 64, 3) and out[0, 32, 32].min() > 0.98
    masks = torch.zeros(2, 64, 128)
    masks[:, 16:48, 32:96] = 1.0
    small = resize_frames(masks, (32, 64), "stretch")
    assert small.shape == (2, 32, 64) and small.sum().item() == pytest.approx(masks.sum().item() / 4, rel=1e-4)


def test_uint8_resize_matches_float_resize():
    torch.manual_seed(0)
    frames = torch.rand(2, 70, 90, 3)
    as_bytes = (frames * 255).round().to(torch.uint8)
    for mode in ("stretch", "crop", "pad"):
        got = resize_frames(as_bytes, (32, 48), mode)
        want = resize_frames(as_bytes.float() / 255, (32, 48), mode)
        assert got.dtype == torch.uint8
        assert (got.float() / 255 - want).abs().max() <= 1.5 / 255


@pytest.mark.parametrize("mode", ["stretch", "crop", "pad"])
def test_plan_maps_boxes_onto_where_resize_puts_pixels(mode):
    frame = torch.zeros(1, 60, 100, 3)
    frame[:, 10:40, 30:80] = 1.0  # box (30, 10, 80, 40)
    size = (48, 48)
    out = resize_frames(frame, size, mode)[0, ..., 0]
    plan = resize_plan((60, 100), size, mode)
    box = torch.tensor([30.0, 10.0, 80.0, 40.0])
    mapped = plan.map_boxes(box)
    ys, xs = (out > 0.5).nonzero(as_tuple=True)
    found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    visible = mapped.clone()
    visible[0::2] = visible[0::2].clamp(0, size[1])
    visible[1::2] = visible[1::2].clamp(0, size[0])
    assert torch.allclose(found, visible, atol=1.0)
    assert torch.allclose(plan.unmap_boxes(mapped), box, atol=1e-4)


def test_resize_rejects_bad_modes_and_sizes():
    with pytest.raises(InputError, match="resize mode 'fit'.*stretch, crop, pad"):
        resize_frames(torch.zeros(1, 8, 8, 3), (4, 4), "fit")
    with pytest.raises(InputError, match=r"\(height, width\)"):
        resize_frames(torch.zeros(1, 8, 8, 3), (0, 4))


# ------------------------------------------------------------------------------------------------ images


def test_read_image_composites_rgba_onto_black(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :32, 3] = 255  # opaque left half
    rgba[:, 32:48, 3] = 128  # half-transparent strip; right quarter fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (1, 64, 64, 3)
    assert image[0, 0, 0, 0].item() == pytest.approx(200 / 255, abs=1 / 255)
    assert image[0, 0, 40, 0].item() == pytest.approx(100 / 255, abs=1 / 255)
    assert image[0, :, 48:].abs().max() == 0


def test_snap_size_has_one_rule_in_two_modes():
    # both sides given: taken as they are, in either mode
    assert snap_size((1080, 1920), 480, 720) == snap_size((1080, 1920), 480, 720, rule="source") == (480, 720)
    # "aspect" (cues, CLI): the other side follows the aspect, nearest multiple of 16; long side at most 1024
    assert snap_size((1080, 1920), 480) == (480, 848)
    assert snap_size((1920, 1080)) == (1024, 576)
    assert snap_size((100, 130)) == (96, 128)  # never upscaled
    assert snap_size((20, 400)) == (64, 400)  # at least 64
    # "source" (the Driving Video node, which pads or crops into the size): the source's own side, rounded down
    assert snap_size((1080, 1920), 480, rule="source") == (480, 1920)
    assert snap_size((1919, 1081), rule="source") == (1904, 1072)
    with pytest.raises(InputError, match="too small"):
        snap_size((15, 400), rule="source")


def test_read_image_replicates_greyscale_and_resizes(tmp_path):
    Image.new("L", (128, 64), 77).save(tmp_path / "grey.png")
    image = read_image(tmp_path / "grey.png", size=(64, 64), resize="pad")
    assert image.shape == (1, 64, 64, 3)
    assert torch.allclose(image[0, 32], torch.full((64, 3), 77 / 255), atol=1 / 255)
    assert image[0, 0].abs().max() == 0  # letterbox bar


def test_read_image_applies_exif_orientation(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:5, :5] = 255  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    image = read_image(tmp_path / "phone.png")
    assert image.shape == (1, 40, 20, 3)
    assert image[0, :5, -5:].min() == 1.0  # top-left turned clockwise lands top-right
    assert image[0, :5, :5].max() == 0.0


def test_write_image_round_trip_is_exact_to_one_level(tmp_path):
    torch.manual_seed(0)
    image = torch.rand(1, 33, 47, 3)
    write_image(tmp_path / "out.png", image)
    assert listing(tmp_path) == ["out.png"]
    back = read_image(tmp_path / "out.png")
    assert (back - image).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(VideoError, match="got 2 frames"):
        write_image(tmp_path / "two.png", torch.rand(2, 8, 8, 3))


# ------------------------------------------------------------------------------------------ read errors


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(VideoError, match="nope.mp4.*no such file"):
        read_video(tmp_path / "nope.mp4")
    with pytest.raises(VideoError, match="nope.png.*no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(VideoError, match="no such file"):
        probe_video(tmp_path / "nope.mp4")


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("no frames here")
    with pytest.raises(VideoError, match="holds no images"):
        read_video(tmp_path)
    with pytest.raises(VideoError, match="holds no images"):
        probe_video(tmp_path)


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "random.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="random.mp4: cannot be decoded"):
        read_video(tmp_path / "random.mp4")
    with pytest.raises(VideoError, match="cannot be decoded"):
        probe_video(tmp_path / "random.mp4")
    write_video(tmp_path / "whole.mp4", moving_square(), 12)
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError, match="cut.mp4: cannot be decoded"):
        read_video(tmp_path / "cut.mp4")
    # cut near the end: the index is intact and the first frames decode, so the missing ones must be noticed
    (tmp_path / "tail_cut.mp4").write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(VideoError, match=r"tail_cut.mp4: stores 16 frames but only \d+ could be decoded.*max_frames"):
        read_video(tmp_path / "tail_cut.mp4")
    assert read_video(tmp_path / "tail_cut.mp4", max_frames=4).num_frames == 4
    (tmp_path / "bad.gif").write_bytes(b"GIF89a" + bytes(20))
    with pytest.raises(VideoError, match="bad.gif"):
        read_video(tmp_path / "bad.gif")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(VideoError, match="bad.png: cannot be read"):
        read_image(tmp_path / "bad.png")


def test_video_without_frames_is_refused(tmp_path):
    path = tmp_path / "empty.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
        container.mux(stream.encode(None))
    assert path.exists()
    with pytest.raises(VideoError, match="empty.mp4: contains no video frames"):
        read_video(path)


def test_unsupported_extensions_are_refused(tmp_path):
    (tmp_path / "clip.txt").write_text("hello")
    with pytest.raises(VideoError, match=r"unsupported extension '.txt'.*\.mp4"):
        read_video(tmp_path / "clip.txt")
    Image.new("RGB", (64, 64)).save(tmp_path / "still.png")
    with pytest.raises(VideoError, match="single image.*read_image"):
        read_video(tmp_path / "still.png")
    with pytest.raises(VideoError, match="unsupported extension"):
        read_image(tmp_path / "clip.txt")


def test_bad_options_are_refused_before_reading(tmp_path):
    write_video(tmp_path / "clip.mp4", moving_square(frames=4), 12)
    path = tmp_path / "clip.mp4"
    for options, message in [
        ({"stride": 0}, "stride must be.*>= 1"),
        ({"max_frames": 0}, "max_frames must be.*>= 1"),
        ({"start": -1}, "start must be"),
        ({"size": (64, 0)}, r"size.*\(height, width\)"),
        ({"resize": "fit"}, "unknown resize mode"),
        ({"fps": 0}, "fps must be a positive"),
        ({"dtype": torch.int32}, "dtype"),
    ]:
        with pytest.raises(VideoError, match=message):
            read_video(path, **options)


def test_start_beyond_the_end_is_refused(tmp_path):
    write_video(tmp_path / "clip.mp4", moving_square(frames=4), 12)
    with pytest.raises(VideoError, match="start=4 but the video has only 4 frames"):
        read_video(tmp_path / "clip.mp4", start=4)
    write_video(tmp_path / "clip.webm", moving_square(frames=4), 12)  # no stored frame count: found by decoding
    with pytest.raises(VideoError, match="start=9 but the video has only 4 frames"):
        read_video(tmp_path / "clip.webm", start=9)
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "0.png")
    with pytest.raises(VideoError, match="start=1 but the video has only 1 frames"):
        read_video(folder, start=1)


# ----------------------------------------------------------------------------------------- write errors


def test_wrong_shapes_are_refused_before_any_file_exists(tmp_path):
    out = tmp_path / "out"
    for frames in [torch.rand(4, 3, 64, 64), torch.rand(64, 64), torch.rand(0, 64, 64, 3),
                   torch.randint(0, 9, (2, 64, 64, 3), dtype=torch.int64), [[0.0]]]:
        with pytest.raises(VideoError, match="frames for"):
            write_video(out / "clip.mp4", frames, 12)
    assert not out.exists()


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"previous version")
    video = moving_square()
    video[-1, 0, 0, 0] = float("nan")  # found only when the last chunk is encoded
    with pytest.raises(VideoError, match="NaN"):
        write_video(target, video, 12)
    assert listing(tmp_path) == ["clip.mp4"]
    assert target.read_bytes() == b"previous version"
    with pytest.raises(VideoError, match="NaN"):
        write_video(tmp_path / "clip.gif", video, 10)
    assert listing(tmp_path) == ["clip.mp4"]


def test_write_refuses_bad_extension_fps_and_crf(tmp_path):
    video = moving_square(frames=2)
    with pytest.raises(VideoError, match="cannot write '.avi'"):
        write_video(tmp_path / "clip.avi", video, 12)
    with pytest.raises(VideoError, match="fps must be a positive"):
        write_video(tmp_path / "clip.mp4", video, 0)
    with pytest.raises(VideoError, match="crf must be"):
        write_video(tmp_path / "clip.mp4", video, 12, crf=99)
    with pytest.raises(VideoError, match="cannot write '.tif'"):
        write_image(tmp_path / "x.tif", video[:1])
    assert listing(tmp_path) == []


# -------------------------------------------------------------------------------------------- real video


@pytest.mark.real_data
def test_real_dance_video_reads_at_working_size():
    if not DANCE.exists():
        pytest.skip(f"real footage not found at {DANCE} (../shared/data/real beside the project)")
    clip = read_video(DANCE, max_frames=8, size=(896, 512))
    assert clip.frames.shape == (8, 896, 512, 3)
    assert clip.fps == pytest.approx(24) and clip.source_size == (1920, 1080) and clip.source_frame_count == 288
    # letterboxed: 1080x1920 scaled to 504x896 leaves 4-px bars left and right, and a real picture between
    assert clip.resize.scaled_size == (896, 504) and clip.resize.offset == (0, 4)
    assert clip.frames[:, :, :4].abs().max() == 0 and clip.frames[:, :, 8:-8].std() > 0.1
    info = probe_video(DANCE)
    assert (info["width"], info["height"], info["frame_count"], info["fps"]) == (1080, 1920, 288, 24.0)


def test_resample_indices_drops_repeats_and_keeps_equal_rates():
    from directanimator.video.timing import resample_indices

    assert resample_indices(24, 12, 10) == [0, 2, 4, 6, 8]
    assert resample_indices(24, 24, 5) == [0, 1, 2, 3, 4]
    assert resample_indices(12, 24, 3) == [0, 0, 1, 1, 2]
    assert resample_indices(30, 24, 10) == [0, 1, 2, 4, 5, 6, 7, 9]
    assert resample_indices(24, 12, 10, start=3, count=2) == [3, 5]
    with pytest.raises(VideoError, match="target_fps"):
        resample_indices(24, 0, 10)
