"""VAE input/output of the pipeline: chunked and tiled encoding and decoding, masks on the latent grid."""

from __future__ import annotations

import pytest
import torch

from directanimator.errors import InputError
from directanimator.vae_io import (
    _run_tiled,
    _Tiling,
    decode_latents,
    encode_frames,
    image_latent_scale,
    is_wan_vae,
    latent_channels,
    latent_preview,
    latent_scale,
    masks_to_latent_grid,
    ramp_weights,
    spatial_compression,
    temporal_compression,
    tile_spans,
)
from tests.tiny import LATENT, LATENT_CHANNELS, PIXELS, WAN_TI2V_CHANNELS, tiny_vae, tiny_wan_vae


SIDE, GRID = 32, 4  # small frames keep the exactness tests cheap


@pytest.fixture(scope="module")
def vae():
    return tiny_vae(seed=0)


def test_untiled_encoding_equals_the_vae_posterior_mode_in_the_transformer_layout(vae):
    torch.manual_seed(0)
    frames = torch.rand(9, SIDE, SIDE, 3)
    latents = encode_frames(vae, frames, tiling=False)
    with torch.no_grad():
        expected = vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    assert latents.shape == (1, 3, LATENT_CHANNELS, GRID, GRID)
    torch.testing.assert_close(latents, expected.permute(0, 2, 1, 3, 4), rtol=0, atol=0)


def test_untiled_decoding_equals_the_vae_decoder_for_odd_latent_counts(vae):
    torch.manual_seed(1)
    latents = torch.randn(1, 3, LATENT_CHANNELS, GRID, GRID)
    frames = decode_latents(vae, latents, tiling=False)
    with torch.no_grad():
        expected = vae.decode(latents.permute(0, 2, 1, 3, 4) / vae.config.scaling_factor).sample
    expected = (expected[0].permute(1, 2, 3, 0) * 0.5 + 0.5).clamp(0, 1)
    assert frames.shape == (9, SIDE, SIDE, 3) and frames.device.type == "cpu"
    torch.testing.assert_close(frames, expected, rtol=0, atol=0)


def test_even_latent_counts_decode_to_4k_plus_1_frames_and_keep_earlier_chunks(vae):
    torch.manual_seed(2)
    latents = torch.randn(1, 4, LATENT_CHANNELS, GRID, GRID)  # 13 frames: the VAE alone would give 16
    frames = decode_latents(vae, latents, tiling=False)
    assert frames.shape[0] == 13
    first_chunk = decode_latents(vae, latents[:, :3], tiling=False)  # the first decoder chunk is latents 0..2
    torch.testing.assert_close(frames[:9], first_chunk, rtol=0, atol=0)


def test_tile_blending_reassembles_a_pointwise_map_exactly():
    torch.manual_seed(3)
    source = torch.randn(1, 3, 5, 10, 14)  # [1, C, T, h, w] on a 10x14 latent grid

    def upsample(x, cache):  # a pointwise "decoder": every latent cell becomes 4x4 pixels
        y = x[0].permute(1, 2, 3, 0).repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
        return y, cache

    whole = torch.zeros(5, 40, 56, 3)
    _run_tiled(upsample, source, whole, _Tiling([(0, 10)], [(0, 14)], 0), [(0, 3), (3, 5)],
               src_factor=1, out_factor=4, on_chunk=None)
    tiles = _Tiling(tile_spans(10, 4, 2), tile_spans(14, 6, 2), 2)
    assert tiles.count > 4
    tiled = torch.zeros(5, 40, 56, 3)
    _run_tiled(upsample, source, tiled, tiles, [(0, 3), (3, 5)], src_factor=1, out_factor=4, on_chunk=None)
    torch.testing.assert_close(tiled, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_tiled_vae_round_trip_stays_close_to_the_untiled_one(vae):
    torch.manual_seed(4)
    frames = torch.rand(5, PIXELS, PIXELS, 3)
    latents = encode_frames(vae, frames, tiling=False)
    tiled_latents = encode_frames(vae, frames, tiling=True, tile=(6, 6), tile_overlap=2)
    assert tiled_latents.shape == latents.shape
    chunks = []
    tiled = decode_latents(vae, latents, tiling=True, tile=(6, 6), tile_overlap=2,
                           on_chunk=lambda done, total: chunks.append((done, total)))
    plain = decode_latents(vae, latents, tiling=False)
    assert tiled.shape == plain.shape == (5, PIXELS, PIXELS, 3)
    assert chunks[-1] == (4, 4)  # 2x2 tiles, one temporal chunk each
    # a random VAE sees across tile seams, so only the bulk agrees; a misplaced tile would be far off
    assert (tiled - plain).abs().mean() < 0.05
    assert (tiled_latents - latents).abs().mean() < 0.5 * latents.abs().mean()


def test_ramp_weights_rise_and_fall_only_at_shared_borders():
    w = ramp_weights(6, 2, rise=True, fall=False)
    assert torch.all(w > 0) and torch.all(w[1:] >= w[:-1]) and w[-1] == 1
    assert torch.equal(ramp_weights(4, 2, rise=False, fall=False), torch.ones(4))
    assert tile_spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert tile_spans(3, 4, 1) == [(0, 3)]


def test_masks_reach_the_latent_grid_by_area_in_space_and_groups_of_four_in_time():
    masks = torch.zeros(9, PIXELS, PIXELS)
    masks[0, :, : PIXELS // 2] = 1.0  # frame 0: left half
    masks[1:5, : PIXELS // 2] = 1.0  # frames 1..4: top half
    masks[5] = 1.0  # one of the frames 5..8: full
    grid = masks_to_latent_grid(masks, (LATENT, LATENT))
    assert grid.shape == (1, 3, 1, LATENT, LATENT)
    assert torch.equal(grid[0, 0, 0, :, : LATENT // 2], torch.ones(LATENT, LATENT // 2))
    assert grid[0, 0, 0, :, LATENT // 2:].abs().max() == 0
    assert torch.equal(grid[0, 1, 0, : LATENT // 2], torch.ones(LATENT // 2, LATENT))
    torch.testing.assert_close(grid[0, 2], torch.full((1, LATENT, LATENT), 0.25))


def test_bad_sizes_and_counts_are_refused_with_the_fix(vae):
    with pytest.raises(InputError, match="4k\\+1"):
        masks_to_latent_grid(torch.zeros(6, PIXELS, PIXELS), (LATENT, LATENT))
    with pytest.raises(InputError, match="multiples of 8"):
        encode_frames(vae, torch.rand(1, 60, PIXELS, 3))
    with pytest.raises(InputError, match="channels"):
        decode_latents(vae, torch.zeros(1, 1, LATENT_CHANNELS + 1, LATENT, LATENT))


def test_latent_preview_is_an_rgb_video_in_range():
    preview = latent_preview(torch.randn(1, 3, LATENT_CHANNELS, LATENT, LATENT) * 10)
    assert preview.shape == (3, LATENT, LATENT, 3)
    assert preview.min() >= 0 and preview.max() <= 1
    factors = torch.zeros(LATENT_CHANNELS, 3)
    factors[5, 1] = 1.0
    green = latent_preview(torch.ones(1, 1, LATENT_CHANNELS, 2, 2), rgb_factors=factors)
    assert green[..., 1].min() > green[..., 0].max()


# --------------------------------------------------------------------------- Wan VAEs (AutoencoderKLWan)
@pytest.fixture(scope="module", params=["2.1", "2.2"])
def wan_vae(request):
    return tiny_wan_vae(request.param, seed=0)


def _wan_pipeline_normalized(vae, raw: torch.Tensor) -> torch.Tensor:
    """The Wan pipelines' normalisation of raw latents [B, C, F', h, w] (WanImageToVideoPipeline.prepare_latents)."""
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
    return (raw - mean) * inv_std


def test_wan_vae_compression_and_channels_come_from_its_config(wan_vae):
    wan21 = wan_vae.config.patch_size is None
    assert is_wan_vae(wan_vae) and not is_wan_vae(tiny_vae())
    assert spatial_compression(wan_vae) == (8 if wan21 else 16)
    assert temporal_compression(wan_vae) == 4
    assert latent_channels(wan_vae) == (LATENT_CHANNELS if wan21 else WAN_TI2V_CHANNELS)
    assert latent_scale(wan_vae) == image_latent_scale(wan_vae) == 1.0


def test_wan_encoding_equals_the_pipelines_normalised_posterior_mode(wan_vae):
    torch.manual_seed(5)
    frames = torch.rand(9, SIDE, SIDE, 3)
    latents = encode_frames(wan_vae, frames, tiling=False)
    with torch.no_grad():
        raw = wan_vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode()
    expected = _wan_pipeline_normalized(wan_vae, raw).permute(0, 2, 1, 3, 4)
    grid = SIDE // spatial_compression(wan_vae)
    assert latents.shape == (1, 3, latent_channels(wan_vae), grid, grid)
    # the whole-clip encode runs the same chunks (frame 0, then 4 frames) through the same feature cache
    torch.testing.assert_close(latents, expected, rtol=0, atol=1e-6)
    # normalisation really happens: the raw mode is off by the per-channel statistics
    assert (latents - raw.permute(0, 2, 1, 3, 4)).abs().max() > 0.1
    image = encode_frames(wan_vae, frames, image_latents=True, tiling=False)
    torch.testing.assert_close(image, latents, rtol=0, atol=0)  # image latents share the diffusion scale on Wan


def test_wan_temporal_chunks_match_encoding_each_prefix_alone(wan_vae):
    torch.manual_seed(6)
    frames = torch.rand(13, SIDE, SIDE, 3)
    whole = encode_frames(wan_vae, frames, tiling=False)
    prefix = encode_frames(wan_vae, frames[:5], tiling=False)  # causal: later frames do not change earlier latents
    torch.testing.assert_close(whole[:, :2], prefix, rtol=0, atol=1e-6)
    later = encode_frames(wan_vae, torch.cat([frames[:5], torch.rand(8, SIDE, SIDE, 3)]), tiling=False)
    assert (later[:, 2:] - whole[:, 2:]).abs().max() > 1e-3


def test_wan_decoding_equals_the_vae_decoder_of_the_denormalised_latents(wan_vae):
    torch.manual_seed(7)
    grid = SIDE // spatial_compression(wan_vae)
    latents = torch.randn(1, 4, latent_channels(wan_vae), grid, grid)  # even counts decode directly on Wan
    frames = decode_latents(wan_vae, latents, tiling=False)
    mean = torch.tensor(wan_vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(wan_vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():  # WanImageToVideoPipeline.__call__: latents / latents_std + latents_mean, then decode
        expected = wan_vae.decode(latents.permute(0, 2, 1, 3, 4) / inv_std + mean).sample
    expected = (expected[0].permute(1, 2, 3, 0) * 0.5 + 0.5).clamp(0, 1)
    assert frames.shape == (13, SIDE, SIDE, 3) == expected.shape
    torch.testing.assert_close(frames, expected, rtol=0, atol=1e-6)


def test_wan_tiled_round_trip_keeps_the_grid_and_stays_close(wan_vae):
    torch.manual_seed(8)
    factor = spatial_compression(wan_vae)
    side = 6 * factor  # a 6x6 latent grid, tiled 4x4 with 2 cells of overlap
    frames = torch.rand(5, side, side, 3)
    plain = encode_frames(wan_vae, frames, tiling=False)
    tiled = encode_frames(wan_vae, frames, tiling=True, tile=(4, 4), tile_overlap=2)
    assert tiled.shape == plain.shape == (1, 2, latent_channels(wan_vae), 6, 6)
    # a random VAE sees across tile seams, so only the bulk agrees; a misplaced tile would be far off
    assert (tiled - plain).abs().mean() < 0.5 * plain.abs().mean()
    chunks = []
    decoded = decode_latents(wan_vae, plain, tiling=True, tile=(4, 4), tile_overlap=2,
                             on_chunk=lambda done, total: chunks.append((done, total)))
    whole = decode_latents(wan_vae, plain, tiling=False)
    assert decoded.shape == whole.shape == (5, side, side, 3)
    assert chunks[-1] == (8, 8)  # 2x2 tiles, one decoder call per latent frame
    assert (decoded - whole).abs().mean() < 0.05


def test_masks_reach_a_16x_latent_grid():
    masks = torch.zeros(5, 64, 64)
    masks[0, :16, :16] = 1.0  # frame 0: exactly the top-left 16x16 cell
    masks[1:5, :, 32:] = 0.5
    grid = masks_to_latent_grid(masks, (4, 4))
    assert grid.shape == (1, 2, 1, 4, 4)
    assert grid[0, 0, 0, 0, 0] == 1 and grid[0, 0, 0].sum() == 1
    torch.testing.assert_close(grid[0, 1, 0, :, 2:], torch.full((4, 2), 0.5))
    assert grid[0, 1, 0, :, :2].abs().max() == 0


def test_wan_vae_refuses_sizes_off_its_grid():
    with pytest.raises(InputError, match="multiples of 16"):
        encode_frames(tiny_wan_vae("2.2"), torch.rand(1, 40, 32, 3))


def test_wan_tiles_by_default_only_when_the_vae_has_tiling_enabled():
    vae = tiny_wan_vae("2.1")
    torch.manual_seed(9)
    frames = torch.rand(1, 96, 96, 3)  # 12x12 latent cells
    with torch.no_grad():
        raw = vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode()
    expected = _wan_pipeline_normalized(vae, raw).permute(0, 2, 1, 3, 4)
    vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64)  # 8x8 cells
    vae.use_tiling = False
    torch.testing.assert_close(encode_frames(vae, frames), expected, rtol=0, atol=1e-6)  # as the pipeline: whole
    vae.use_tiling = True
    tiled = encode_frames(vae, frames)
    assert tiled.shape == expected.shape and (tiled - expected).abs().max() > 1e-4
    torch.testing.assert_close(tiled, encode_frames(vae, frames, tiling=True, tile=(8, 8)), rtol=0, atol=0)


def test_wan_statistics_of_the_wrong_length_are_refused():
    from diffusers import AutoencoderKLWan

    from tests.tiny import TINY_WAN_VAE_CONFIGS

    vae = AutoencoderKLWan(**TINY_WAN_VAE_CONFIGS["2.2"] | dict(latents_mean=[0.0] * 16, latents_std=[1.0] * 16))
    with pytest.raises(InputError, match="latents_mean/latents_std have 16/16 values"):
        encode_frames(vae, torch.rand(1, 32, 32, 3))
