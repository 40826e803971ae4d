"""Writing videos (mp4, mov, mkv, webm, GIF) and single images.

Writing is atomic (`directanimator.atomic.atomic_path`): data goes to a hidden temporary file in the target
folder, which replaces the target only when complete and is removed on any error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_path
from ..errors import InputError, VideoError
from ..tensors import as_frames
from .reading import GIF_MIN_DELAY_MS, IMAGE_EXTENSIONS, _av, _check_fps

log = logging.getLogger(__package__)  # "directanimator.video", as before the split

WRITE_VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".gif")
WRITE_CHUNK = 8
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def _write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` through `atomic_path`, with a failing folder, disk or encoder as a VideoError naming `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VideoError(
            f"{path}: cannot create the folder {path.parent} ({exc}). Choose a writable location."
        ) from exc
    try:
        with atomic_path(path) as tmp:  # the writers name their format, so the temporary's suffix does not matter
            write(tmp)
    except VideoError:
        raise
    except Exception as exc:
        if isinstance(exc, (OSError, _av().error.FFmpegError)):
            raise VideoError(
                f"{path}: writing failed ({exc}). Check the folder is writable and has free space."
            ) from exc
        raise
    return path


def _frames_for_writing(frames, path: Path) -> Tensor:
    """Validate shape and dtype without copying; values are checked chunk by chunk while writing."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, Tensor):
        raise VideoError(f"frames for {path}: expected a torch tensor or numpy array, got {type(frames).__name__}.")
    if frames.ndim == 3 and frames.shape[-1] in (1, 3, 4):
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4) or frames.shape[0] < 1 or min(frames.shape[1:3]) < 1:
        raise VideoError(
            f"frames for {path}: expected [F, H, W, 3] with F >= 1 (channels last), got shape {tuple(frames.shape)}. "
            "Permute channels-first tensors and pass at least one frame."
        )
    if not (frames.is_floating_point() or frames.dtype == torch.uint8):
        raise VideoError(
            f"frames for {path}: expected float (0..1) or uint8 (0..255) values, got dtype {frames.dtype}."
        )
    return frames


def _uint8_chunks(frames: Tensor, path: Path, *, even: bool) -> Iterator[np.ndarray]:
    """Yield ``[n, H, W, 3]`` uint8 arrays; with ``even`` odd sizes are padded by repeating the last row/column."""
    height, width = frames.shape[1:3]
    pad_h, pad_w = (height % 2, width % 2) if even else (0, 0)
    if pad_h or pad_w:
        log.info("%s: frames are %dx%d px; padded to %dx%d (the encoder needs even sizes) by repeating the edge",
                 path, width, height, width + pad_w, height + pad_h)
    for at in range(0, frames.shape[0], WRITE_CHUNK):
        chunk = frames[at : at + WRITE_CHUNK]
        if chunk.dtype != torch.uint8:
            try:
                chunk = as_frames(chunk, name=f"frames {at}..{at + len(chunk) - 1} for {path}", check_sizes=False)
            except InputError as exc:
                raise VideoError(str(exc)) from exc
            chunk = (chunk * 255.0).round_().to(torch.uint8)
        elif chunk.shape[-1] != 3:
            chunk = (as_frames(chunk, check_sizes=False) * 255.0).round_().to(torch.uint8)
        arr = chunk.cpu().numpy()
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        yield arr


def write_video(path: str | os.PathLike, frames, fps: float, *, crf: int = 18, preset: str = "medium") -> Path:
    """Write frames ``[F, H, W, 3]`` (0..1 float or uint8, tensor or numpy) as .mp4/.mov/.mkv, .webm or .gif.

    Codecs: H.264 (libx264, yuv420p) for mp4/mov/mkv, VP9 for webm, Pillow's adaptive palettes for GIF.

    ``crf`` is the quality (lower is better; 18 is visually lossless for H.264). ``preset`` is H.264's speed
    preset (``X264_PRESETS``; "veryfast" encoded 49 frames of 404x720 about 4x as fast as "medium", at a similar
    size). Odd sizes are padded to even for H.264/VP9. GIF delays are whole centiseconds, so the rate is rounded to
    one (10 fps stays exact, 24 becomes 25). Atomic: the file appears complete or not at all. Returns ``path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_VIDEO_EXTENSIONS:
        raise VideoError(
            f"{path}: cannot write {path.suffix!r} videos; use one of {', '.join(WRITE_VIDEO_EXTENSIONS)}."
        )
    _check_fps(fps, path)
    if fps is None:
        raise VideoError(f"{path}: fps is required (frames per second, e.g. 24).")
    if not isinstance(crf, int) or not 0 <= crf <= 51:
        raise VideoError(
            f"{path}: crf must be a whole number from 0 (lossless) to 51 (worst), got {crf!r}; 18 is a good default."
        )
    if preset not in X264_PRESETS:
        raise VideoError(f"{path}: preset {preset!r} is not an H.264 preset; use one of {', '.join(X264_PRESETS)}.")
    frames = _frames_for_writing(frames, path)
    if suffix == ".gif":
        return _write_atomically(path, lambda tmp: _write_gif(tmp, frames, fps, path))
    return _write_atomically(path, lambda tmp: _write_av(tmp, frames, fps, crf, path, preset))


def _write_av(tmp: Path, frames: Tensor, fps: float, crf: int, path: Path, preset: str = "medium") -> None:
    av = _av()
    suffix = path.suffix.lower()
    rate = Fraction(fps).limit_denominator(1001)
    height, width = frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
    if suffix == ".webm":
        # b=0 makes crf a constant-quality target; cpu-used 4 keeps encoding fast on small machines.
        options = {"crf": str(crf), "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}
        fmt, codec = "webm", "libvpx-vp9"
    else:
        fmt = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}[suffix]
        codec, options = "libx264", {"crf": str(crf), "preset": preset}
    container_options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
    with av.open(str(tmp), mode="w", format=fmt, container_options=container_options) as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        index = 0
        for chunk in _uint8_chunks(frames, path, even=True):
            for rgb in chunk:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = index
                index += 1
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    log.debug("wrote %s: %d frames %dx%d at %s fps (%s, crf %d)", path, index, width, height, rate, codec, crf)


def _write_gif(tmp: Path, frames: Tensor, fps: float, path: Path) -> None:
    from PIL import Image

    centiseconds = max(GIF_MIN_DELAY_MS // 10, round(100.0 / fps))
    if abs(100.0 / centiseconds - fps) > 1e-6:
        log.info("%s: GIF delays are whole centiseconds; writing %.4g fps as %.4g fps", path, fps, 100.0 / centiseconds)
    images = [Image.fromarray(rgb) for chunk in _uint8_chunks(frames, path, even=False) for rgb in chunk]
    # Pillow merges identical consecutive frames into one longer frame; read_video expands them again.
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=centiseconds * 10, loop=0)


def write_image(path: str | os.PathLike, image) -> Path:
    """Write one image ``[1, H, W, 3]`` or ``[H, W, 3]`` (0..1 float or uint8) as PNG (or JPEG/WebP/BMP by extension).

    Atomic like :func:`write_video`. Returns ``path``.
    """
    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise VideoError(f"{path}: cannot write {path.suffix!r} images; use one of {', '.join(IMAGE_EXTENSIONS)}.")
    frames = _frames_for_writing(image, path)
    if frames.shape[0] != 1:
        raise VideoError(
            f"image for {path}: got {frames.shape[0]} frames; pass one image ([1, H, W, 3] or [H, W, 3]), "
            "e.g. frames[0], or use write_video."
        )
    rgb = next(_uint8_chunks(frames, path, even=False))[0]
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}[suffix]
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    return _write_atomically(path, lambda tmp: Image.fromarray(rgb).save(tmp, format=fmt, **options))
