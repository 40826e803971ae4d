"""VAE encoding of frames and masks onto the latent grid, and streamed decoding in temporal chunks and spatial tiles.

Layouts (DESIGN.md 3): frames ``[F, H, W, 3]`` float 0..1, masks ``[F, H, W]``, latents returned in the transformer
layout ``[B, F', C, h, w]`` with ``F' = (F - 1) / 4 + 1`` and ``h = H / s`` (`spatial_compression`: 8 for
CogVideoX and Wan2.1, 16 for Wan2.2's VAE with its own 2x2 patchify).

Two VAE families: diffusers' ``AutoencoderKLCogVideoX`` (latents scaled by ``scaling_factor``) and
``AutoencoderKLWan`` (latents normalised per channel, ``(z - latents_mean) / latents_std``, as the Wan pipelines
do). `encode_frames` returns, and `decode_latents` takes, diffusion-scale latents for either family.

Both directions drive the VAE's own encoder/decoder modules chunk by chunk with their causal conv cache, exactly
as ``AutoencoderKLCogVideoX._encode``/``_decode`` and ``AutoencoderKLWan._encode``/``_decode`` do (so untiled
results equal ``vae.encode``/``vae.decode``; the Wan VAE's chunks are its own: frame 0 alone, then 4 frames per
latent frame on encode, one latent frame per call on decode), but write each chunk straight into a preallocated
output and tile space on whole latent cells. diffusers' own
``enable_tiling`` is not used: its encoder tiles step by a stride that need not be a multiple of 8 px and then
returns a wrong latent grid for small sample sizes (a 64 px tiny VAE gives 9x9 latents for 64x64 frames), and its
decoder keeps every tile of the whole video before blending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

log = logging.getLogger(__name__)

TEMPORAL_COMPRESSION = 4  # CogVideoX VAE: frame 0 alone, then every 4 frames -> one latent frame
TILE_OVERLAP = 0.2  # default tile overlap as a fraction of the tile side
PREVIEW_RANGE = 2.0  # latents (unit variance after scaling) mapped from [-range, range] to 0..1 in previews


def is_wan_vae(vae) -> bool:
    """True for diffusers' ``AutoencoderKLWan`` (Wan2.1 and Wan2.2 VAEs), judged by its config."""
    return hasattr(vae.config, "z_dim") and hasattr(vae.config, "latents_mean")


def latent_channels(vae) -> int:
    """Channels of the VAE's latents (``latent_channels`` on CogVideoX, ``z_dim`` on Wan)."""
    return int(vae.config.z_dim if is_wan_vae(vae) else vae.config.latent_channels)


def spatial_compression(vae) -> int:
    """Pixels per latent cell along each side (8 for CogVideoX and Wan2.1, 16 for Wan2.2)."""
    if is_wan_vae(vae):
        return int(vae.config.scale_factor_spatial)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def temporal_compression(vae) -> int:
    """Pixel frames per latent frame after the lone first frame (4 for both families)."""
    if is_wan_vae(vae):
        return int(vae.config.scale_factor_temporal)
    return int(getattr(vae.config, "temporal_compression_ratio", TEMPORAL_COMPRESSION))


def latent_scale(vae) -> float:
    """Factor from raw VAE latents to the diffusion latent space (``scaling_factor``); 1.0 for Wan, whose
    per-channel normalisation (`latent_normalization`) `encode_frames`/`decode_latents` apply themselves."""
    return 1.0 if is_wan_vae(vae) else float(vae.config.scaling_factor)


def image_latent_scale(vae) -> float:
    """Factor from raw VAE latents to conditioning (image) latents; CogVideoX 1.5 I2V divides instead of multiplying.
    1.0 for Wan: its image latents are normalised exactly like its diffusion latents."""
    factor = latent_scale(vae)
    return 1.0 / factor if getattr(vae.config, "invert_scale_latents", False) else factor


def latent_normalization(vae) -> tuple[Tensor, Tensor] | None:
    """Wan: ``(latents_mean, 1 / latents_std)`` as float32 ``[C]`` tensors, the pipelines' normalisation
    ``(z - mean) * (1 / std)`` on encode and ``z / (1 / std) + mean`` on decode; None for CogVideoX."""
    if not is_wan_vae(vae):
        return None
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32)
    if mean.numel() != latent_channels(vae) or inv_std.numel() != latent_channels(vae):
        raise InputError(
            f"vae: latents_mean/latents_std have {mean.numel()}/{inv_std.numel()} values but the VAE makes "
            f"{latent_channels(vae)}-channel latents. Load the VAE with its own config."
        )
    return mean, inv_std


def latent_frames_for(num_frames: int, *, compression: int = TEMPORAL_COMPRESSION) -> int:
    """``F' = (F - 1) / 4 + 1``; raises InputError unless ``F = 4k + 1``."""
    if num_frames < 1 or (num_frames - 1) % compression:
        raise InputError(
            f"frame count: got {num_frames} frames; the VAE needs {compression}k+1 frames (1, 5, 9, 13, ...). "
            "Pad the clip by repeating its last frame (animate() and encode_conditioning() do this for you)."
        )
    return (num_frames - 1) // compression + 1


def _vae_device_dtype(vae) -> tuple[torch.device, torch.dtype]:
    param = next(vae.parameters())
    return param.device, param.dtype


def masks_to_latent_grid(masks: Tensor, size: tuple[int, int], *, name: str = "mask",
                         compression: int = TEMPORAL_COMPRESSION) -> Tensor:
    """Resize masks ``[F, H, W]`` to the latent grid ``[1, F', 1, h, w]``, matching the VAE's compression.

    Space: area interpolation to ``size = (h, w)``. Time: frame 0 alone, then the mean of each group of
    `compression` frames, as the causal VAE groups frames.
    """
    if masks.ndim != 3:
        raise InputError(f"{name}: expected masks [F, H, W], got shape {tuple(masks.shape)}.")
    num = int(masks.shape[0])
    latent_frames = latent_frames_for(num, compression=compression)
    small = F.interpolate(masks.float()[:, None], size=size, mode="area")  # [F, 1, h, w]
    first = small[:1]
    rest = small[1:].reshape(latent_frames - 1, compression, 1, *size).mean(dim=1)
    return torch.cat([first, rest], dim=0).unsqueeze(0).clamp(0.0, 1.0)


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Overlapping ``[start, end)`` spans of length `tile` covering ``0..size``, the last one flush with the end."""
    if size <= tile:
        return [(0, size)]
    stride = max(tile - overlap, 1)
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return [(s, s + tile) for s in sorted(set(starts))]


def ramp_weights(length: int, ramp: int, *, rise: bool, fall: bool) -> Tensor:
    """Blend weights ``[length]``: linear ramps of `ramp` samples at the sides that border another tile or window."""
    pos = torch.arange(length, dtype=torch.float32)
    weight = torch.ones(length)
    if ramp > 0:
        if rise:
            weight = torch.minimum(weight, (pos + 1) / (ramp + 1))
        if fall:
            weight = torch.minimum(weight, (length - pos) / (ramp + 1))
    return weight


def _frame_chunks(num: int, batch: int) -> list[tuple[int, int]]:
    """The VAE's own temporal chunking: the first chunk takes the remainder (it holds the lone first frame)."""
    count = max(num // batch, 1)
    remainder = num % batch
    return [(batch * k + (0 if k == 0 else remainder), batch * (k + 1) + remainder) for k in range(count)]


def decoded_frame_count(latent_frames: int, *, compression: int = TEMPORAL_COMPRESSION) -> int:
    """Frames that `decode_latents` returns for `latent_frames`: ``4 (F' - 1) + 1``."""
    return compression * (latent_frames - 1) + 1


@dataclass(frozen=True)
class _Tiling:
    """Spatial tiles on the latent grid: row and column spans in latent cells, and the blend ramp in cells."""

    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]
    overlap: int

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def _plan_tiling(vae, grid: tuple[int, int], tile: tuple[int, int] | None, tile_overlap: int | None,
                 tiling: bool | None) -> _Tiling:
    lh, lw = grid
    if is_wan_vae(vae):
        # Wan keeps its tile size in pixels; `tiling=None` without a `tile` follows the VAE's own switch
        # (``vae.enable_tiling()``, off as built), as the Wan pipelines do, so default results equal theirs
        factor = spatial_compression(vae)
        default = (int(vae.tile_sample_min_height) // factor, int(vae.tile_sample_min_width) // factor)
        if tiling is None and tile is None and not getattr(vae, "use_tiling", False):
            tiling = False
    else:
        default = (int(getattr(vae, "tile_latent_min_height", lh)), int(getattr(vae, "tile_latent_min_width", lw)))
    tile_h, tile_w = tile or default
    if tile_h < 1 or tile_w < 1:
        raise InputError(f"tile={tile}: tiles need at least one latent cell per side.")
    if tiling is None:
        tiling = lh > tile_h or lw > tile_w
    if not tiling:
        return _Tiling([(0, lh)], [(0, lw)], 0)
    overlap = tile_overlap if tile_overlap is not None else max(1, round(min(tile_h, tile_w) * TILE_OVERLAP))
    if not 0 <= overlap < min(tile_h, tile_w):
        raise InputError(
            f"tile_overlap={overlap}: must be at least 0 and below the tile size {tile_h}x{tile_w} latent cells."
        )
    return _Tiling(tile_spans(lh, tile_h, overlap), tile_spans(lw, tile_w, overlap), overlap)


def _run_tiled(run_chunk: Callable, source: Tensor, out: Tensor, tiles: _Tiling, chunks: list[tuple[int, int]], *,
               src_factor: int, out_factor: int, on_chunk: Callable[[int, int], None] | None) -> None:
    """Run a causal video network tile by tile and chunk by chunk, blending tiles into `out` ``[T, H, W, C]``.

    `source` is ``[1, C, T, H, W]``; spans are in latent cells, `src_factor`/`out_factor` pixels per cell on
    each side. ``run_chunk(x, cache) -> (y [T', H', W', C'] float32 CPU, cache)`` carries the causal conv cache.
    """
    weight_sum = torch.zeros(out.shape[1], out.shape[2])
    rows, cols = tiles.rows, tiles.cols
    grid_h, grid_w = rows[-1][1], cols[-1][1]
    ramp = tiles.overlap * out_factor
    total, done = tiles.count * len(chunks), 0
    for y0, y1 in rows:
        wy = ramp_weights((y1 - y0) * out_factor, ramp, rise=y0 > 0, fall=y1 < grid_h)
        for x0, x1 in cols:
            wx = ramp_weights((x1 - x0) * out_factor, ramp, rise=x0 > 0, fall=x1 < grid_w)
            weight = wy[:, None] * wx[None, :]
            oy, ox = slice(y0 * out_factor, y1 * out_factor), slice(x0 * out_factor, x1 * out_factor)
            sy, sx = slice(y0 * src_factor, y1 * src_factor), slice(x0 * src_factor, x1 * src_factor)
            cache, frame = None, 0
            for t0, t1 in chunks:
                y, cache = run_chunk(source[:, :, t0:t1, sy, sx], cache)
                keep = min(int(y.shape[0]), int(out.shape[0]) - frame)
                if keep > 0:
                    out[frame:frame + keep, oy, ox] += y[:keep] * weight[None, :, :, None]
                frame += int(y.shape[0])
                done += 1
                if on_chunk is not None:
                    on_chunk(done, total)
                del y
            del cache
            weight_sum[oy, ox] += weight
    if tiles.count > 1:
        out /= weight_sum[None, :, :, None]


def _wan_frame_chunks(num: int, compression: int) -> list[tuple[int, int]]:
    """The Wan VAE's own temporal chunking on encode: frame 0 alone, then `compression` frames per chunk."""
    return [(0, 1)] + [(t, t + compression) for t in range(1, num, compression)]


def _wan_cache(vae, part: str) -> list:
    """A fresh causal feature cache for the Wan VAE's `part` ("encoder" or "decoder"), one slot per causal conv."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return [None] * sum(isinstance(m, WanCausalConv3d) for m in getattr(vae, part).modules())


def _normalize(raw: Tensor, vae, channel_dim: int) -> Tensor:
    """Raw float32 latents -> diffusion scale (Wan: per-channel normalisation; CogVideoX: ``* scaling_factor``)."""
    norm = latent_normalization(vae)
    if norm is None:
        return raw * latent_scale(vae)
    shape = [1] * raw.ndim
    shape[channel_dim] = -1
    mean, inv_std = (v.view(shape).to(raw.device) for v in norm)
    return (raw - mean) * inv_std


def _denormalize(z: Tensor, vae, channel_dim: int) -> Tensor:
    """Diffusion-scale latents -> raw VAE latents, the inverse of `_normalize`."""
    norm = latent_normalization(vae)
    if norm is None:
        return z / latent_scale(vae)
    shape = [1] * z.ndim
    shape[channel_dim] = -1
    mean, inv_std = (v.view(shape).to(z.device) for v in norm)
    return z / inv_std + mean


def encode_frames(vae, frames: Tensor, *, name: str = "frames", image_latents: bool = False,
                  tiling: bool | None = None, tile: tuple[int, int] | None = None,
                  tile_overlap: int | None = None) -> Tensor:
    """Encode ``[F, H, W, 3]`` (0..1, ``F = 4k+1``) into diffusion-scale latents ``[1, F', C, h, w]`` on the VAE's
    device.

    The encoder runs in the VAE's own temporal chunks (CogVideoX: 8 frames, the remainder first; Wan: frame 0, then
    4 frames) with its causal conv cache, over spatial tiles of `tile` latent cells blended with linear ramps over
    `tile_overlap` cells (`tiling=None`: tile when the grid exceeds one tile). Without tiling this equals
    ``vae.encode(x).latent_dist.mode()`` scaled as the family's pipelines scale it (CogVideoX: ``* scaling_factor``;
    Wan: ``(z - latents_mean) / latents_std`` per channel): the posterior mean, so encoding is deterministic.
    `image_latents` selects the conditioning scale (`image_latent_scale`; the same as the diffusion scale except
    on CogVideoX 1.5).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"{name}: expected frames [F, H, W, 3], got shape {tuple(frames.shape)}.")
    num, height, width = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    factor = spatial_compression(vae)
    if height % factor or width % factor:
        raise InputError(
            f"{name}: frames are {width}x{height} px; the VAE needs multiples of {factor} "
            f"({2 * factor} for the transformer). Set the working size to multiples of {2 * factor} "
            "(CueConfig.height/width)."
        )
    compression = temporal_compression(vae)
    latent_num = latent_frames_for(num, compression=compression)
    device, dtype = _vae_device_dtype(vae)
    channels = latent_channels(vae)
    grid = (height // factor, width // factor)
    tiles = _plan_tiling(vae, grid, tile, tile_overlap, tiling)
    video = frames.permute(3, 0, 1, 2).unsqueeze(0)  # [1, 3, F, H, W] 0..1, moved to the device chunk by chunk
    wan = is_wan_vae(vae)
    patch = int(getattr(vae.config, "patch_size", None) or 1) if wan else 1

    def run_chunk(x: Tensor, cache):
        x = x.to(device=device, dtype=dtype) * 2.0 - 1.0
        if wan:
            if patch > 1:
                x = _wan_patchify(x, patch)
            cache = _wan_cache(vae, "encoder") if cache is None else cache
            moments = vae.encoder(x, feat_cache=cache, feat_idx=[0])
        else:
            moments, cache = vae.encoder(x, conv_cache=cache)
        if getattr(vae, "quant_conv", None) is not None:
            moments = vae.quant_conv(moments)
        return moments[0, :channels].float().permute(1, 2, 3, 0).cpu(), cache

    out = torch.zeros(latent_num, *grid, channels)
    if wan:
        chunks = _wan_frame_chunks(num, compression)
    else:
        chunks = _frame_chunks(num, int(getattr(vae, "num_sample_frames_batch_size", 8)))
    with torch.no_grad():
        _run_tiled(run_chunk, video, out, tiles, chunks, src_factor=factor, out_factor=1, on_chunk=None)
    if image_latents and not wan:
        out = out * image_latent_scale(vae)
    else:
        out = _normalize(out, vae, channel_dim=3)
    return out.permute(0, 3, 1, 2).unsqueeze(0).to(device=device, dtype=dtype)


def _wan_patchify(x: Tensor, patch: int) -> Tensor:
    from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

    return patchify(x, patch_size=patch)


def _wan_unpatchify(x: Tensor, patch: int) -> Tensor:
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    return unpatchify(x, patch_size=patch)


def decode_latents(vae, latents: Tensor, *, tiling: bool | None = None, tile: tuple[int, int] | None = None,
                   tile_overlap: int | None = None, on_chunk: Callable[[int, int], None] | None = None) -> Tensor:
    """Decode diffusion latents ``[1, F', C, h, w]`` into frames ``[4(F'-1)+1, H, W, 3]`` float32 0..1 on the CPU.

    The decoder runs on the VAE's own temporal chunks (CogVideoX: 2 latent frames, the remainder first; Wan: one
    latent frame per call) with its causal conv cache, tile by tile over space (tiles of `tile` latent cells,
    default the VAE's tiling size, blended with linear ramps over `tile_overlap` cells; `tiling=None` tiles when
    the grid exceeds one tile). Each chunk is written straight into the output, so working memory is one chunk of
    one tile. Without tiling this equals ``vae.decode`` of the latents scaled back (Wan: always; CogVideoX: for an
    odd ``F'``). The CogVideoX decoder maps only odd latent counts to ``4k+1`` frames (an even count gives
    ``4F'``); an even ``F'`` is decoded with its last latent repeated and the 4 extra frames dropped, which
    changes nothing before the last chunk.
    """
    if latents.ndim != 5 or latents.shape[0] != 1:
        raise InputError(f"latents: expected [1, F', C, h, w], got shape {tuple(latents.shape)}.")
    channels = latent_channels(vae)
    if latents.shape[2] != channels:
        raise InputError(
            f"latents: {latents.shape[2]} channels but the VAE decodes {channels}. "
            "Use the VAE that belongs to the model that made these latents."
        )
    device, dtype = _vae_device_dtype(vae)
    compression, factor = temporal_compression(vae), spatial_compression(vae)
    num_latent, grid = int(latents.shape[1]), (int(latents.shape[3]), int(latents.shape[4]))
    wan = is_wan_vae(vae)
    patch = int(getattr(vae.config, "patch_size", None) or 1) if wan else 1
    # [1, C, F', h, w]; Wan's per-channel normalisation is undone in float32, CogVideoX's scale as before
    z = _denormalize(latents.float() if wan else latents, vae, channel_dim=2).permute(0, 2, 1, 3, 4)
    if num_latent % 2 == 0 and not wan:
        z = torch.cat([z, z[:, :, -1:]], dim=2)
    tiles = _plan_tiling(vae, grid, tile, tile_overlap, tiling)

    def run_chunk(x: Tensor, cache):
        x = x.to(device=device, dtype=dtype)
        if getattr(vae, "post_quant_conv", None) is not None:
            x = vae.post_quant_conv(x)
        if wan:
            first = cache is None
            cache = _wan_cache(vae, "decoder") if first else cache
            pixels = vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=first)
            if patch > 1:
                pixels = _wan_unpatchify(pixels, patch)
        else:
            pixels, cache = vae.decoder(x, conv_cache=cache)
        return (pixels[0].float().permute(1, 2, 3, 0) * 0.5 + 0.5).clamp(0.0, 1.0).cpu(), cache

    out = torch.zeros(decoded_frame_count(num_latent, compression=compression), grid[0] * factor,
                      grid[1] * factor, 3)
    if wan:
        chunks = [(t, t + 1) for t in range(num_latent)]
    else:
        chunks = _frame_chunks(int(z.shape[2]), int(getattr(vae, "num_latent_frames_batch_size", 2)))
    with torch.no_grad():
        _run_tiled(run_chunk, z, out, tiles, chunks, src_factor=1, out_factor=factor, on_chunk=on_chunk)
    return out


def latent_preview(latents: Tensor, *, rgb_factors: Tensor | None = None) -> Tensor:
    """Cheap preview ``[F', h, w, 3]`` 0..1 of latents ``[1, F', C, h, w]``: a linear map of the channels to RGB.

    `rgb_factors` ``[C, 3]`` gives the map; by default the first three channels are shown.
    """
    z = latents[0].detach().float()  # [F', C, h, w]
    if rgb_factors is not None:
        rgb = torch.einsum("fchw,cr->fhwr", z, rgb_factors.to(z))
    else:
        rgb = z[:, :3].permute(0, 2, 3, 1)
        if rgb.shape[-1] < 3:
            rgb = rgb.mean(dim=-1, keepdim=True).expand(*rgb.shape[:-1], 3)
    return (rgb / (2 * PREVIEW_RANGE) + 0.5).clamp(0.0, 1.0).cpu()
