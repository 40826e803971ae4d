"""Reading video files, animated GIFs, image folders and single images; probing them without decoding.

- Frames are ``[F, H, W, 3]`` float32 in 0..1 (ComfyUI IMAGE), a single image is ``[1, H, W, 3]``.
- ``fps`` of a :class:`VideoClip` is the rate of the frames it holds: the source rate divided by ``stride``.
- Sources: video files (mp4, mov, mkv, webm, avi, m4v; decoded with PyAV, the video stream only, display
  rotation applied), animated GIFs (read as a constant-rate video: the commonest frame duration sets the rate
  and longer frames are repeated), and folders of images (png, jpg, jpeg, webp, bmp; natural order, so
  ``frame2`` comes before ``frame10``; the caller gives the rate).
- Memory: frames are resized as they are decoded, kept as uint8 until the end and only then converted to
  float, so reading 288 frames of 1080x1920 at 896x512 needs about the output's size, not 7 GB.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import VideoError
from ..tensors import MAX_SIDE_PX
from .geometry import ResizeMode, ResizePlan, _check_mode, _check_size, resize_frames, resize_plan

log = logging.getLogger(__package__)  # "directanimator.video", as before the split

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
GIF_EXTENSIONS = (".gif",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

DEFAULT_FOLDER_FPS = 24.0
# Browsers show GIF frames with a delay of 10 ms or less (or none) for 100 ms; do the same.
GIF_MIN_DELAY_MS = 20
GIF_FALLBACK_DELAY_MS = 100
# Frames resized together: large enough to batch, small enough that full-size decoded frames stay few.
DECODE_CHUNK = 8
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8)


# ------------------------------------------------------------------------------------------------ clips


@dataclass
class VideoClip:
    """Frames read from a video file, GIF or image folder, with their rates and the source's geometry."""

    frames: Tensor  # [F, H, W, 3] float32 0..1 (or the dtype asked for)
    fps: float  # rate of `frames`: source_fps / stride
    source_fps: float
    source_size: tuple[int, int]  # (height, width) as displayed, before resizing
    source_frame_count: int | None  # frames in the source at source_fps, when known
    resize: ResizePlan | None = None  # how source pixels map onto `frames`, when resized
    path: Path | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Seconds covered by `frames` at `fps`."""
        return self.num_frames / self.fps


# ------------------------------------------------------------------------------------------ path checks


def _natural_key(name: str) -> list:
    # re.split with a capture group alternates text and digits, so the types line up between keys.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _folder_images(folder: Path) -> list[Path]:
    files = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _source_kind(path: Path) -> str:
    """'video', 'gif' or 'folder' for an existing readable source; VideoError otherwise."""
    if not path.exists():
        raise VideoError(
            f"video {path}: no such file or folder. Check the path (relative paths start at {Path.cwd()})."
        )
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in GIF_EXTENSIONS:
        return "gif"
    if suffix in IMAGE_EXTENSIONS:
        raise VideoError(
            f"video {path}: is a single image, not a video. Use read_image for a reference image, or put the "
            "frames of a video in a folder and pass the folder."
        )
    raise VideoError(
        f"video {path}: unsupported extension {path.suffix!r}. Supported: "
        f"{', '.join(VIDEO_EXTENSIONS + GIF_EXTENSIONS)}, or a folder of {', '.join(IMAGE_EXTENSIONS)} images. "
        "Convert the file (e.g. ffmpeg -i input output.mp4)."
    )


def _av():
    import av

    return av


def _corrupt(path: Path, exc: BaseException) -> VideoError:
    return VideoError(
        f"video {path}: cannot be decoded ({exc}). The file is damaged, truncated or not a video; "
        "re-export or re-download it, or convert it with ffmpeg."
    )


# ----------------------------------------------------------------------------------------------- images


def _pil_to_rgb(img) -> np.ndarray:
    """A Pillow image as ``[H, W, 3]`` uint8: EXIF orientation applied, alpha composited onto black."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.round(np.asarray(img) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return rgb.astype(np.uint8)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy: torch warns on read-only arrays


@contextmanager
def _open_checked(path: Path):
    """`PIL.Image.open(path)`, with Pillow's decompression-bomb limit as a VideoError naming the file and the fix.
    Pillow only warns between its pixel limit and twice that; both are refused here, before decoding."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise VideoError(
            f"image {path}: too large to open safely ({exc}). If you trust the file, downscale it to at most "
            f"{MAX_SIDE_PX} px per side (an image editor, or ffmpeg -i IN -vf "
            f"scale={MAX_SIDE_PX}:{MAX_SIDE_PX}:force_original_aspect_ratio=decrease OUT) and pass that."
        ) from None


def _load_image(path: Path) -> np.ndarray:
    from PIL import UnidentifiedImageError

    try:
        with _open_checked(path) as img:
            return np.ascontiguousarray(_pil_to_rgb(img))
    except VideoError:  # a ValueError too: not "damaged"
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise VideoError(
            f"image {path}: cannot be read ({exc}). The file is damaged or not an image; re-export it as PNG or JPEG."
        ) from exc


def _fit_long_side(frame: Tensor, max_side: int, path: Path) -> Tensor:
    """`frame` ``[1, H, W, 3]`` scaled down (aspect kept) so that its long side is at most `max_side` px."""
    height, width = frame.shape[1:3]
    if max(height, width) <= max_side:
        return frame
    scale = max_side / max(height, width)
    size = (max(1, min(max_side, round(height * scale))), max(1, min(max_side, round(width * scale))))
    log.info("image %s: %dx%d px scaled to %dx%d (long side at most %d px)", path, width, height, size[1], size[0],
             max_side)
    return resize_frames(frame, size, "stretch")


def read_image(path: str | os.PathLike, *, size: tuple[int, int] | None = None, resize: ResizeMode = "pad",
               dtype: torch.dtype = torch.float32, max_side: int | None = None) -> Tensor:
    """Read one image as ``[1, H, W, 3]`` in 0..1, optionally resized to ``size`` ``(height, width)``, or (without
    `size`) scaled down, aspect kept, so that its long side is at most `max_side` px.

    RGBA is composited onto black, greyscale is replicated to RGB, EXIF orientation is applied. Images beyond
    Pillow's decompression-bomb limit (about 89 megapixels) are refused with a VideoError.
    """
    path = Path(path)
    if size is not None:
        size = _check_size(size, f"size for {path}", VideoError)
    if max_side is not None and not (isinstance(max_side, int) and not isinstance(max_side, bool) and max_side >= 1):
        raise VideoError(f"image {path}: max_side must be a whole number of pixels >= 1 (or None), got {max_side!r}.")
    _check_mode(resize, f"resize for {path}", VideoError)
    _check_dtype(dtype, path)
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "no such file"
        raise VideoError(f"image {path}: {what}. Pass the path of a {'/'.join(IMAGE_EXTENSIONS)} file.")
    if path.suffix.lower() not in IMAGE_EXTENSIONS + GIF_EXTENSIONS:
        raise VideoError(
            f"image {path}: unsupported extension {path.suffix!r}; use one of {', '.join(IMAGE_EXTENSIONS)}."
        )
    frame = torch.from_numpy(_load_image(path))[None]
    if size is not None:
        frame = resize_frames(frame, size, resize)
    elif max_side is not None:
        frame = _fit_long_side(frame, max_side, path)
    return _to_dtype(frame, dtype)


def _check_dtype(dtype, path: Path) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise VideoError(f"{path}: dtype {dtype} is not supported; use torch.float32 (0..1) or torch.uint8 (0..255).")


def _to_dtype(frames_u8: Tensor, dtype: torch.dtype) -> Tensor:
    if dtype == torch.uint8:
        return frames_u8
    return frames_u8.to(dtype).div_(255.0)


# ----------------------------------------------------------------------------------------------- probing


def _video_rate(stream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _gif_delays(path: Path) -> list[int]:
    """Per-frame delays in ms as browsers show them."""
    from PIL import ImageSequence, UnidentifiedImageError

    delays = []
    try:
        with _open_checked(path) as img:  # read before any frame: a decompression bomb stops here
            for frame in ImageSequence.Iterator(img):
                delay = int(frame.info.get("duration") or 0)
                delays.append(delay if delay >= GIF_MIN_DELAY_MS else GIF_FALLBACK_DELAY_MS)
    except VideoError:  # a ValueError too: not "damaged"
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _corrupt(path, exc) from exc
    return delays


def _gif_timing(delays: list[int]) -> tuple[int, list[int]]:
    """Base delay (the commonest) and how many constant-rate frames each GIF frame stands for."""
    base = Counter(delays).most_common(1)[0][0]
    return base, [max(1, round(d / base)) for d in delays]


def probe_video(path: str | os.PathLike, *, fps: float | None = None) -> dict:
    """Describe a video file, GIF or image folder without decoding it all.

    Returns ``{"kind", "path", "fps", "frame_count", "frame_count_exact", "width", "height", "duration"}``
    (``duration`` in seconds; ``frame_count`` estimated from the duration when the container does not store it).
    ``fps`` is the rate of an image folder (default 24); for files it replaces the stored rate.
    """
    path = Path(path)
    _check_fps(fps, path)
    kind = _source_kind(path)
    if kind == "folder":
        files = _folder_images(path)
        if not files:
            raise _empty_folder(path)
        height, width = _load_image(files[0]).shape[:2]
        rate = float(fps or DEFAULT_FOLDER_FPS)
        return _probe_dict(kind, path, rate, len(files), True, width, height, len(files) / rate)
    if kind == "gif":
        delays = _gif_delays(path)
        base, repeats = _gif_timing(delays)
        height, width = _load_image(path).shape[:2]  # Pillow opens a GIF at its first frame
        count = sum(repeats)
        rate = float(fps) if fps else 1000.0 / base
        return _probe_dict(kind, path, rate, count, True, width, height, count / rate)
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _no_frames(path)
            stream = container.streams.video[0]
            rate = float(fps) if fps else _video_rate(stream)
            if not rate:
                raise VideoError(f"video {path}: stores no frame rate. Pass fps= to say what it is.")
            rate = float(rate)
            first = next(container.decode(stream), None)
            if first is None:
                raise _no_frames(path)
            width, height = first.width, first.height
            if round(first.rotation / 90) % 2:
                width, height = height, width
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                duration = None
            exact = bool(stream.frames)
            count = int(stream.frames) if exact else (round(duration * rate) if duration else None)
            if duration is None and count:
                duration = count / rate
            codec = stream.codec_context.name
    except av.error.FFmpegError as exc:
        raise _corrupt(path, exc) from exc
    info = _probe_dict(kind, path, rate, count, exact, width, height, duration)
    info["codec"] = codec
    return info


def check_video_sides(path: str | os.PathLike, *, name: str = "driving video", hint: str = "") -> dict:
    """Probe `path` and raise VideoError, before any frame is decoded, when its frames are larger than the
    project handles (MAX_SIDE_PX per side); `hint` names the caller's own way to read it smaller. Returns the
    probe."""
    info = probe_video(path)
    if max(info["width"], info["height"]) > MAX_SIDE_PX:
        raise VideoError(
            f"{name} {path}: frames are {info['width']}x{info['height']} px; at most {MAX_SIDE_PX} px per side is "
            f"supported. {hint or 'Downscale it first'} (or ffmpeg -i IN -vf "
            f"scale={MAX_SIDE_PX}:{MAX_SIDE_PX}:force_original_aspect_ratio=decrease OUT.mp4)."
        )
    return info


def _probe_dict(kind, path, fps, count, exact, width, height, duration) -> dict:
    return {"kind": kind, "path": str(path), "fps": fps, "frame_count": count, "frame_count_exact": exact,
            "width": int(width), "height": int(height), "duration": duration}


def _empty_folder(path: Path) -> VideoError:
    return VideoError(
        f"video {path}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)}). Put the frames there, "
        "or pass a video file."
    )


def _no_frames(path: Path) -> VideoError:
    return VideoError(
        f"video {path}: contains no video frames (no video stream or an empty one). Pass a video with frames."
    )


def _check_fps(fps, path: Path) -> None:
    if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise VideoError(f"{path}: fps must be a positive number of frames per second, got {fps!r}.")


# ----------------------------------------------------------------------------------------------- reading

# A source yields (index, convert) for every frame in order; convert() returns [H, W, 3] uint8 and is only
# called for frames that are kept, so skipped frames cost a decode at most.
FrameSource = Iterator[tuple[int, Callable[[], np.ndarray]]]


def _av_frames(container, stream) -> FrameSource:
    def convert(frame) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            rgb = frame.to_ndarray(format="rgb24")
            quarter_turns = round(frame.rotation / 90) % 4
            # VideoFrame.rotation is counter-clockwise, as np.rot90 turns an image.
            return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb

        return run

    for index, frame in enumerate(container.decode(stream)):
        yield index, convert(frame)


def _gif_frames(path: Path, repeats: list[int]) -> FrameSource:
    from PIL import Image, ImageSequence

    index = 0
    try:
        with Image.open(path) as img:
            for gif_index, frame in enumerate(ImageSequence.Iterator(img)):
                cache: list[np.ndarray] = []

                def run(frame=frame, cache=cache) -> np.ndarray:
                    if not cache:
                        cache.append(np.ascontiguousarray(_pil_to_rgb(frame.copy())))
                    return cache[0]

                for _ in range(repeats[gif_index]):
                    yield index, run
                    index += 1
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _corrupt(path, exc) from exc


def _folder_frames(files: list[Path]) -> FrameSource:
    for index, file in enumerate(files):
        yield index, (lambda file=file: _load_image(file))


class _Collector:
    """Resizes kept frames in small batches as they arrive and stores them as uint8."""

    def __init__(self, path: Path, size: tuple[int, int] | None, mode: str):
        self.path, self.size, self.mode = path, size, mode
        self.pending: list[np.ndarray] = []
        self.done: list[Tensor] = []
        self.source_size: tuple[int, int] | None = None
        self.plan: ResizePlan | None = None
        self.count = 0
        self.scratch: np.ndarray | None = None  # reused batch of full-size frames waiting to be resized

    def add(self, rgb: np.ndarray) -> None:
        frame_size = (int(rgb.shape[0]), int(rgb.shape[1]))
        if self.source_size is None:
            self.source_size = frame_size
            if self.size is not None:
                self.plan = resize_plan(frame_size, self.size, self.mode)
        elif frame_size != self.source_size:
            if self.size is None:
                raise VideoError(
                    f"video {self.path}: frame {self.count} is {frame_size[1]}x{frame_size[0]} px but the first is "
                    f"{self.source_size[1]}x{self.source_size[0]} px. Pass size=(height, width) to resize all frames."
                )
            self.flush()
            self.source_size = frame_size
            self.plan = resize_plan(frame_size, self.size, self.mode)
        self.pending.append(rgb)
        self.count += 1
        if len(self.pending) >= DECODE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        into = None
        if self.plan is not None and not self.plan.is_identity:
            # the batch is only read by the resize: stack into one reused buffer rather than fresh memory each
            # time (paging in ~50 MB per batch of 1080p frames cost more than the resize)
            shape = self.pending[0].shape
            if self.scratch is None or self.scratch.shape[1:] != shape:
                self.scratch = np.empty((DECODE_CHUNK, *shape), np.uint8)
            into = self.scratch[: len(self.pending)]
        batch = torch.from_numpy(np.stack(self.pending, out=into))
        self.pending = []
        if self.size is not None:
            batch = resize_frames(batch, self.size, self.mode)
        self.done.append(batch)

    def result(self, dtype: torch.dtype) -> Tensor:
        self.flush()
        height, width = self.done[0].shape[1:3]
        out = torch.empty((self.count, height, width, 3), dtype=dtype)
        at = 0
        while self.done:  # release each uint8 chunk as soon as it is converted
            chunk = self.done.pop(0)
            target = out[at : at + len(chunk)]
            target.copy_(chunk)  # converts in place: no float temporary of the chunk
            if dtype != torch.uint8:
                target.div_(255.0)
            at += len(chunk)
        return out


def read_video(
    path: str | os.PathLike,
    *,
    max_frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    size: tuple[int, int] | None = None,
    resize: ResizeMode = "pad",
    fps: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> VideoClip:
    """Read a video file, animated GIF or folder of images as a :class:`VideoClip`.

    Keeps source frames ``start, start + stride, ...``, at most ``max_frames`` of them; ``size`` ``(height, width)``
    resizes each frame as it is decoded with ``resize`` ("pad" by default: letterbox, so no body part is cut;
    "crop" or "stretch"). ``fps`` is the rate of an image folder (default 24); for files it replaces the stored
    rate (frames are not resampled). ``dtype=torch.uint8`` returns 0..255 values in a quarter of the memory.
    """
    path = Path(path)
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise VideoError(f"video {path}: max_frames must be a whole number >= 1 (or None for all), got {max_frames!r}.")
    if not isinstance(stride, int) or stride < 1:
        raise VideoError(f"video {path}: stride must be a whole number >= 1 (1 keeps every frame), got {stride!r}.")
    if not isinstance(start, int) or start < 0:
        raise VideoError(f"video {path}: start must be a frame index >= 0, got {start!r}.")
    if size is not None:
        size = _check_size(size, f"size for video {path}", VideoError)
    _check_mode(resize, f"resize for video {path}", VideoError)
    _check_fps(fps, path)
    _check_dtype(dtype, path)
    kind = _source_kind(path)

    container = None
    try:
        if kind == "folder":
            files = _folder_images(path)
            if not files:
                raise _empty_folder(path)
            source: FrameSource = _folder_frames(files)
            source_fps, known_count = float(fps or DEFAULT_FOLDER_FPS), len(files)
        elif kind == "gif":
            delays = _gif_delays(path)
            if not delays:
                raise _no_frames(path)
            base, repeats = _gif_timing(delays)
            if any(r > 1 for r in repeats):
                log.debug("%s: GIF delays %s ms read at a constant %d ms per frame", path, sorted(set(delays)), base)
            source = _gif_frames(path, repeats)
            source_fps, known_count = float(fps) if fps else 1000.0 / base, sum(repeats)
        else:
            av = _av()
            try:
                container = av.open(str(path))
            except av.error.FFmpegError as exc:
                raise _corrupt(path, exc) from exc
            if not container.streams.video:
                raise _no_frames(path)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(fps) if fps else _video_rate(stream)
            if not rate:
                raise VideoError(f"video {path}: stores no frame rate. Pass fps= to say what it is.")
            source_fps, known_count = float(rate), (int(stream.frames) or None)
            source = _av_frames(container, stream)
        if known_count is not None and start >= known_count:
            raise _start_error(path, start, known_count)

        collector = _Collector(path, size, resize)
        seen = 0
        try:
            for index, convert in source:
                seen = index + 1
                if index < start or (index - start) % stride:
                    continue
                collector.add(convert())
                if max_frames is not None and collector.count >= max_frames:
                    break
        except VideoError:
            raise
        except Exception as exc:
            if kind == "video" and isinstance(exc, _av().error.FFmpegError):
                raise _corrupt(path, exc) from exc
            raise
        if collector.count == 0:
            if seen == 0:
                raise _no_frames(path)
            raise _start_error(path, start, seen)
        reached_end = max_frames is None or collector.count < max_frames
        if reached_end and kind == "video":
            # Containers that store a frame count (mp4, mov) reveal truncation: the index outlives the data.
            # A few frames of difference are normal (edit lists trimming B-frame or priming delays).
            if known_count is not None and seen < known_count - max(2, known_count // 100):
                raise VideoError(
                    f"video {path}: stores {known_count} frames but only {seen} could be decoded; the file is "
                    f"truncated or damaged. Re-export or re-download it, or pass max_frames <= {seen} "
                    "(with start and stride) to use the readable part."
                )
            known_count = seen
        frames = collector.result(dtype)
    finally:
        if container is not None:
            container.close()

    clip = VideoClip(
        frames=frames,
        fps=source_fps / stride,
        source_fps=source_fps,
        source_size=collector.source_size,
        source_frame_count=known_count,
        resize=collector.plan,
        path=path,
    )
    log.debug("read %s: %d frames %dx%d at %.4g fps (source %.4g fps, %s frames, %dx%d)", path, clip.num_frames,
              frames.shape[2], frames.shape[1], clip.fps, source_fps, known_count, clip.source_size[1],
              clip.source_size[0])
    return clip


def _start_error(path: Path, start: int, count: int) -> VideoError:
    return VideoError(
        f"video {path}: start={start} but the video has only {count} frames (0..{count - 1}). Pass a smaller start."
    )
