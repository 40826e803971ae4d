"""`info`: size reports and LoRA memory plans of the real CogVideoX and Wan configurations, built on the meta device."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from directanimator.errors import InputError
from directanimator.models import backbone_config, positional_embedding_case
from directanimator.models.info import (
    CUDA_OVERHEAD_GB,
    SAMPLING_GPUS_GB,
    default_report_names,
    format_sampling_plan,
    format_size_report,
    memory_plan,
    sampling_plan,
    size_report,
)

MAX_CUE_FRACTION = 0.03
BF16 = 2


@pytest.mark.parametrize("name", ["cogvideox-5b-i2v", "cogvideox1.5-5b-i2v"])
def test_real_configs_report_5b_parameters_and_cheap_cues(name):
    report = size_report(name)
    assert 5.0e9 < report["backbone_parameters"] < 6.0e9
    assert report["config"]["inner_dim"] == 3072 and report["config"]["num_layers"] == 42
    assert 0 < report["cue_fraction"] <= MAX_CUE_FRACTION
    assert report["cue_parameters"] == sum(report["cue_parameters_by_part"].values())
    assert report["full_rank_cue_parameters"] > 10 * report["cue_parameters"]  # why the modulation is factorised
    assert report["weights_bytes"]["bf16"] * 2 == report["weights_bytes"]["fp32"]
    assert report["fits_positional_embeddings"]


@pytest.mark.slow
def test_5b_i2v_window_is_13_latent_frames_at_480x720():
    report = size_report("cogvideox-5b-i2v")
    window = report["window"]
    assert (window["latent_frames"], window["height"], window["width"], window["driving_frames"]) == (13, 480, 720, 45)
    assert report["tokens"] == {"vision": 13 * 30 * 45, "text": 226, "total": 13 * 30 * 45 + 226}
    act = report["activations"]["bf16"]
    assert act["attention_sdpa_bytes"] < act["attention_scores_naive_bytes"] / 10
    longer = size_report("cogvideox-5b-i2v", window_latent_frames=14)
    assert not longer["fits_positional_embeddings"] and "exactly F'=13" in longer["fit_note"]
    other_size = size_report("cogvideox-5b-i2v", height=512, width=512)
    assert not other_size["fits_positional_embeddings"]


def test_15_takes_other_sizes_but_only_even_latent_frames():
    assert size_report("cogvideox1.5-5b-i2v", window_latent_frames=10, height=512, width=512)["fits_positional_embeddings"]
    odd = size_report("cogvideox1.5-5b-i2v", window_latent_frames=11, height=512, width=512)
    assert not odd["fits_positional_embeddings"] and "patches of 2" in odd["fit_note"]
    assert size_report("cogvideox1.5-5b-i2v", window_latent_frames=10, height=512, width=512)["tokens"]["vision"] == 5 * 32 * 32


def test_bundled_configs_build_the_real_layouts():
    with torch.device("meta"):
        v10 = CogVideoXTransformer3DModel(**backbone_config("cogvideox-5b-i2v"))
        v15 = CogVideoXTransformer3DModel(**backbone_config("cogvideox1.5-5b-i2v"))
    assert isinstance(v10.patch_embed.proj, torch.nn.Conv2d) and v10.patch_embed.pos_embedding.shape == (1, 226 + 17550, 3072)
    assert isinstance(v15.patch_embed.proj, torch.nn.Linear) and v15.patch_embed.proj.in_features == 32 * 8
    assert v15.ofs_embedding is not None and v10.ofs_embedding is None
    assert "exactly 13 latent frames" in positional_embedding_case(dict(v10.config))
    assert "rotary positional embeddings only" in positional_embedding_case(dict(v15.config))


def test_report_formats_as_text_and_markdown():
    report = size_report("cogvideox-5b-i2v")
    text = format_size_report(report)
    assert "cue parameters" in text and "% of the backbone" in text
    md = format_size_report(report, markdown=True)
    assert md.splitlines()[2] == "| quantity | value |" and "| window fits | yes |" in md


def test_unknown_config_name_is_refused():
    with pytest.raises(InputError, match="not a bundled name.*cogvideox-5b-i2v"):
        size_report("cogvideox-7b")


@pytest.mark.parametrize("name, low, high", [("wan2.1-i2v-14b", 16.0e9, 17.0e9), ("wan2.2-ti2v-5b", 4.9e9, 5.1e9)])
def test_wan_configs_report_their_size_and_cheap_cues(name, low, high):
    report = size_report(name)
    assert report["family"] == "wan" and low < report["backbone_parameters"] < high
    assert 0 < report["cue_fraction"] < MAX_CUE_FRACTION
    assert report["cue_parameters"] == sum(report["cue_parameters_by_part"].values())
    assert report["weights_bytes"]["bf16"] == (report["backbone_parameters"] + report["cue_parameters"]) * BF16
    assert report["fits_positional_embeddings"] and "rotary" in report["positional_embeddings"]
    # LoRA on to_q/k/v/out of both attentions (self and cross) of every block, all D x D after Wan's context projection
    d, layers = report["config"]["inner_dim"], report["config"]["num_layers"]
    assert report["lora"]["modules"] == 8 * layers and report["lora"]["parameters_per_rank"] == 8 * layers * 2 * d


def test_wan21_i2v_window_tokens_and_activations_by_hand():
    report = size_report("wan2.1-i2v-14b")
    # 81 frames at 480x832, 8x VAE: 21 latent frames (the reference latent in the image latent's slot + 20 driving
    # latents = 77 frames), 60x104 latents, 2x2 patches -> 30x52 tokens per frame
    window = report["window"]
    assert (window["latent_frames"], window["height"], window["width"], window["vae_factor"]) == (21, 480, 832, 8)
    assert window["driving_frames"] == 77
    n = 21 * (480 // 8 // 2) * (832 // 8 // 2)
    assert n == 32760 and report["tokens"] == {"vision": n, "text": 512, "image": 257, "total": n + 512 + 257}
    d, heads, ffn = 5120, 40, 13824
    act = report["activations"]["bf16"]
    assert act["mlp_bytes"] == n * ffn * 2 * BF16  # Wan's ffn_dim, not 4 x D
    assert act["attention_scores_naive_bytes"] == heads * n * n * BF16  # self-attention over vision tokens only
    assert act["cross_attention_sdpa_bytes"] == (3 * n * d + 2 * (512 + 257) * d) * BF16  # q, text and image out; k, v
    assert act["timestep_embedding_bytes"] == 0  # one timestep per sample
    assert names_in(report["encoders"]) == {"UMT5-XXL", "CLIP"}
    assert 5.6e9 < report["encoders"]["UMT5-XXL text encoder"] < 5.8e9
    assert 6.2e8 < report["encoders"]["CLIP ViT-H/14 image encoder"] < 6.4e8


def names_in(encoders: dict) -> set[str]:
    return {key.split()[0] for key in encoders}


def test_wan22_ti2v_window_tokens_by_hand_and_its_16x_vae():
    report = size_report("wan2.2-ti2v-5b")
    # 121 frames at 704x1280, 16x VAE: 31 latent frames, 44x80 latents, 2x2 patches -> 22x40 tokens per frame
    window = report["window"]
    assert (window["latent_frames"], window["height"], window["width"], window["vae_factor"]) == (31, 704, 1280, 16)
    n = 31 * (704 // 16 // 2) * (1280 // 16 // 2)
    assert n == 27280 and report["tokens"] == {"vision": n, "text": 512, "image": 0, "total": n + 512}
    act = report["activations"]["bf16"]
    assert act["mlp_bytes"] == n * 14336 * 2 * BF16
    assert act["timestep_embedding_bytes"] == 7 * n * 3072 * BF16  # per-token temb and its 6-way projection
    assert names_in(report["encoders"]) == {"UMT5-XXL"}
    odd = size_report("wan2.2-ti2v-5b", height=720, width=1280)  # 45 latent rows: not a multiple of the 2x2 patch
    assert not odd["fits_positional_embeddings"] and "patch size 2" in odd["fit_note"]
    with pytest.raises(InputError, match="multiple of 16"):
        size_report("wan2.2-ti2v-5b", height=480, width=840)


def test_wan21_720p_alias_defaults_to_its_own_size():
    report = size_report("wan2.1-i2v-14b-720p")
    assert (report["window"]["height"], report["window"]["width"]) == (720, 1280)
    assert report["tokens"]["vision"] == 21 * 45 * 80
    assert size_report("wan2.1-i2v-14b-480p")["tokens"] == size_report("wan2.1-i2v-14b")["tokens"]


def test_default_names_cover_every_bundled_config_once():
    names = default_report_names()
    assert names == ["cogvideox-5b-i2v", "cogvideox1.5-5b-i2v", "wan2.1-i2v-14b", "wan2.1-i2v-14b-720p",
                     "wan2.2-ti2v-5b"]


@pytest.mark.parametrize("name", ["cogvideox-5b-i2v", "wan2.1-i2v-14b", "wan2.2-ti2v-5b"])
def test_memory_plan_has_lora_stage_rows_for_24_48_80_gb(name):
    report = size_report(name)
    rows = memory_plan(report, modes=("lora",))
    keys = [(r["stage"], r["teacher"], r["adam"]) for r in rows]
    for adam in ("fp32", "8-bit"):
        assert {(1, "-", adam), (2, "copy", adam), (2, "lora_disabled", adam)} <= set(keys)
    by_key = dict(zip(keys, rows))
    one, two = by_key[(1, "-", "fp32")], by_key[(2, "copy", "fp32")]
    # stage 2 adds the frozen bf16 copy and its forward to block D (no graph: one block's activations)
    act = report["activations"]["bf16"]
    assert two["total"] - one["total"] == (report["backbone_parameters"] + report["cue_parameters"]) * BF16 \
        + act["inference_peak_bytes"]
    for r in rows:
        assert set(r["fits"]) == {24, 48, 80}
        assert all(fits == (r["total"] + 1.5e9 <= gb * 1e9) for gb, fits in r["fits"].items())
    text = format_size_report(report)
    plan_lines = [line for line in text.splitlines() if "LoRA stage" in line and "24 GB" in line and "80 GB" in line]
    assert len(plan_lines) == 18  # 3 teachers x 2 AdamW x frozen bf16 / fp8 / fp8 with offloaded blocks
    assert sum("frozen fp8, blocks offloaded " in line for line in plan_lines) == 6


def test_cogvideox_memory_plan_by_hand_and_in_the_training_benchmark():
    from benchmarks.training import memory_plan as benchmark_plan

    report = size_report("cogvideox-5b-i2v")
    backbone, cue = report["backbone_parameters"], report["cue_parameters"]
    act = report["activations"]["bf16"]
    trained = cue + 4 * 42 * 128 * (3072 + 3072)  # CueFusion + LoRA rank 128 on to_q/k/v/out of 42 blocks
    total = {(r["mode"], r["adam"], r["stage"], r["teacher"]): r["total"] for r in memory_plan(report)}
    # frozen backbone bf16; trained tensors fp32 weights + grads + AdamW m, v
    stage1 = backbone * 2 + trained * (4 + 4 + 8) + act["training_checkpointed_bytes"]
    assert total[("lora", "fp32", 1, "-")] == stage1
    assert total[("lora", "8-bit", 1, "-")] == stage1 - trained * 6
    assert total[("lora", "fp32", 2, "lora_disabled")] == stage1 + act["inference_peak_bytes"]
    full = backbone + cue  # bf16 weights and grads, fp32 master, fp32 AdamW
    assert total[("full", "fp32", 1, "-")] == full * (2 + 2 + 4 + 8) + act["training_checkpointed_bytes"]
    rows, _ = benchmark_plan()  # docs/benchmarks.md's table comes from the same rows
    assert rows == memory_plan(report)


# ------------------------------------------------------------------------------------------------ sampling plan
GB = 1e9
OFFLOADS = {("none", None), ("model", None), ("blocks", 1), ("blocks", 4)}


@pytest.fixture(scope="module")
def reports() -> dict:
    return {name: size_report(name) for name in default_report_names()}


def test_sampling_plan_has_every_option_on_every_card_for_every_bundled_backbone(reports):
    assert {"cogvideox-5b-i2v", "cogvideox1.5-5b-i2v", "wan2.1-i2v-14b", "wan2.2-ti2v-5b"} <= set(reports)
    for name, report in reports.items():
        rows = sampling_plan(report)
        keys = {(r["storage"], r["offload"], r["blocks_on_gpu"], r["guidance"]) for r in rows}
        assert keys == {(s, o, k, g) for s in ("bf16", "fp8") for o, k in OFFLOADS for g in ("batched", "two passes")}
        for r in rows:
            assert tuple(r["fits"]) == SAMPLING_GPUS_GB == (12, 16, 24, 48, 80)
            assert all(ok == (r["peak"] + CUDA_OVERHEAD_GB * GB <= gb * GB) for gb, ok in r["fits"].items())
            assert r["peak"] == r["transformer_weights"] + r["other_weights"] + r["activations"]
            assert r["streamed"] == (r["offload"] == "blocks" and r["blocks_on_gpu"] == 1)
        by = {(r["storage"], r["offload"], r["blocks_on_gpu"], r["guidance"]): r for r in rows}
        # batched guidance is one forward of batch 2: twice the activations of a pass
        passes = by[("bf16", "model", None, "two passes")]["activations"]
        assert by[("bf16", "model", None, "batched")]["activations"] == 2 * passes


def test_workflow_windows_are_the_plan_windows(reports):
    window = {name: (r["window"]["latent_frames"], r["window"]["height"], r["window"]["width"])
              for name, r in reports.items()}
    assert window["cogvideox-5b-i2v"] == (13, 480, 720)
    assert window["wan2.1-i2v-14b"] == (21, 480, 832)  # workflows/build.py: window 20 + the reference
    assert window["wan2.2-ti2v-5b"] == (31, 704, 1280)
    assert window["cogvideox1.5-5b-i2v"] == (22, 768, 1360)


def fp8_per_block_by_hand(name: str) -> int:
    """Parameters of the Linear layers memory.py stores as fp8 in one block: attention projections and the MLP,
    not the norms (CogVideoX's norm1/norm2 modulation linears included) nor Wan's scale_shift_table."""
    if name == "cogvideox-5b-i2v":
        d = 3072
        return 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)  # to_q/k/v/out; ff up, ff down
    d, ffn = 5120, 13824  # Wan2.1-I2V-14B: self-attention 4, cross-attention 4 + add_k/add_v for the image tokens
    return 10 * (d * d + d) + (d * ffn + ffn) + (ffn * d + d)


@pytest.mark.parametrize("name, blocks", [("cogvideox-5b-i2v", 42), ("wan2.1-i2v-14b", 40)])
def test_fp8_shrinks_the_weights_by_the_share_computed_from_the_config(reports, name, blocks):
    report = reports[name]
    layout = report["weights_layout"]
    assert layout["fp8_parameters"] == blocks * fp8_per_block_by_hand(name)  # nothing outside the blocks is fp8
    assert layout["fp8_share"] == layout["fp8_parameters"] / (report["backbone_parameters"] + report["cue_parameters"])
    bf16, fp8 = layout["bytes"]["bf16"], layout["bytes"]["fp8"]
    assert bf16["transformer"] - fp8["transformer"] == layout["fp8_parameters"]  # 2 bytes -> 1 each
    rows = {(r["storage"], r["offload"], r["guidance"]): r for r in sampling_plan(report) if r["offload"] == "model"}
    saved = rows[("bf16", "model", "two passes")]["peak"] - rows[("fp8", "model", "two passes")]["peak"]
    assert saved == layout["fp8_parameters"] - 2 * layout["largest_fp8_layer_parameters"]  # less the bf16 upcast


def test_fp8_shares_match_what_memory_options_report(reports):
    # memory.py's note on the real configs: 96.9% of Wan2.1-14B's and 96.0% of Wan2.2-5B's weights become fp8
    assert f"{100 * reports['wan2.1-i2v-14b']['weights_layout']['fp8_share']:.1f}" == "96.9"
    assert f"{100 * reports['wan2.2-ti2v-5b']['weights_layout']['fp8_share']:.1f}" == "96.0"


def test_block_offload_of_one_block_is_below_model_offload_everywhere(reports):
    for report in reports.values():
        rows = sampling_plan(report)
        for storage in ("bf16", "fp8"):
            for guidance in ("batched", "two passes"):
                pick = {(r["offload"], r["blocks_on_gpu"]): r["peak"] for r in rows
                        if r["storage"] == storage and r["guidance"] == guidance}
                assert pick[("blocks", 1)] < pick[("blocks", 4)] < pick[("model", None)] < pick[("none", None)]


def test_one_sampling_row_by_hand(reports):
    """CogVideoX-5B-I2V, bf16, whole-model offload, two guidance passes: every weight in bf16 (no module kept in
    fp32 on CogVideoX), the learned positional table's buffer, one block's inference peak at batch 1."""
    report = reports["cogvideox-5b-i2v"]
    rows = {(r["storage"], r["offload"], r["blocks_on_gpu"], r["guidance"]): r for r in sampling_plan(report)}
    tokens = 226 + 17550
    weights = (report["backbone_parameters"] + report["cue_parameters"]) * BF16 + tokens * 3072 * BF16
    peak = weights + report["activations"]["bf16"]["inference_peak_bytes"]
    assert rows[("bf16", "model", None, "two passes")]["peak"] == peak
    assert rows[("bf16", "none", None, "two passes")]["peak"] == peak + report["vae_parameters"] * BF16
    # streamed block offload: everything but 40 of the 42 blocks (one computes, one is prefetched)
    layout = report["weights_layout"]["bytes"]["bf16"]
    block = layout["block"]
    assert layout["blocks"] == 42 * block  # identical blocks, each with its CueFusion
    assert rows[("bf16", "blocks", 1, "two passes")]["peak"] == peak - 40 * block
    with pytest.raises(InputError, match="activation_factor"):
        sampling_plan(report, activation_factor=0)
    with pytest.raises(InputError, match="blocks_on_gpu"):
        sampling_plan(report, blocks_on_gpu=(0,))
    everything = {r["guidance"]: r["peak"] for r in sampling_plan(report, blocks_on_gpu=(42,))
                  if r["storage"] == "bf16" and r["offload"] == "blocks"}
    assert everything["two passes"] == peak  # all 42 blocks in one group: the whole transformer, as model offload
    doubled = {(r["storage"], r["offload"], r["blocks_on_gpu"], r["guidance"]): r
               for r in sampling_plan(report, activation_factor=2.0)}
    assert doubled[("bf16", "model", None, "two passes")]["peak"] == peak + report["activations"]["bf16"][
        "inference_peak_bytes"]


def test_sampling_plan_formats_with_what_is_computed(reports):
    report = reports["wan2.2-ti2v-5b"]
    text = format_sampling_plan(report, sampling_plan(report))
    assert "computed, not measured" in text and "no measured factor yet" in text
    assert "VAE decode of a window: not modelled" in text and "after the transformer is offloaded" in text
    md = format_sampling_plan(report, sampling_plan(report), markdown=True).splitlines()
    header = next(i for i, line in enumerate(md) if line.startswith("| storage | offload |"))
    assert md[header].endswith("| 12 GB | 16 GB | 24 GB | 48 GB | 80 GB |") and md[header + 1].startswith("|---|")
    assert sum(line.startswith(("| bf16 |", "| fp8 |")) for line in md) == 16
    assert sum(line.startswith("| LoRA stage") for line in md) == 18
    longer = size_report("cogvideox-5b-i2v", window_latent_frames=14)
    assert "this window does not fit" in format_sampling_plan(longer, sampling_plan(longer)).splitlines()[0]


# ------------------------------------------------------------------------------------------------ training with fp8
def test_training_fp8_and_offload_rows_by_hand_and_within_24_gb_for_cogvideox(reports):
    report = reports["cogvideox-5b-i2v"]
    layout = report["weights_layout"]
    rows = memory_plan(report)
    # today's rows unchanged: the default modes add rows, never change the bf16 ones
    assert [r for r in rows if r["mode"] in ("lora", "full")] == memory_plan(report, modes=("lora", "full"))
    total = {(r["mode"], r["adam"], r["stage"], r["teacher"]): r["total"] for r in rows}
    assert f"{total[('lora', 'fp32', 1, '-')] / GB:.1f}" == "25.0"
    assert f"{total[('lora', 'fp32', 2, 'lora_disabled')] / GB:.1f}" == "26.9"
    backbone, fp8 = report["backbone_parameters"], layout["fp8_parameters"]
    block_fp8 = fp8_per_block_by_hand("cogvideox-5b-i2v")
    # fp8 frozen backbone: 1 byte per fp8 parameter, 2 for the rest, plus the bf16 copy of one block's fp8 layers
    # that autograd holds while that block's backward runs
    saved = backbone * BF16 - (fp8 + (backbone - fp8) * BF16 + block_fp8 * BF16)
    for key in [("fp32", 1, "-"), ("fp32", 2, "lora_disabled"), ("8-bit", 1, "-"), ("8-bit", 2, "lora_disabled")]:
        assert total[("lora",) + key] - total[("lora_fp8",) + key] == saved
        assert total[("lora_fp8_offload",) + key] < total[("lora_fp8",) + key]
    fits = {(r["mode"], r["adam"], r["stage"], r["teacher"]): r["fits"][24] for r in rows}
    for mode in ("lora_fp8", "lora_fp8_offload"):  # the goal: both stages on one 24 GB card
        assert fits[(mode, "fp32", 1, "-")] and fits[(mode, "fp32", 2, "lora_disabled")]
    assert fits[("lora_fp8_offload", "fp32", 2, "copy")] and not fits[("lora_fp8", "fp32", 2, "copy")]
    assert not fits[("lora", "fp32", 1, "-")]
    with pytest.raises(InputError, match="lora_fp8_offload"):
        memory_plan(report, modes=("qlora",))



@pytest.mark.parametrize("layout", ["1.0", "wan-i2v"])
def test_the_cache_state_model_equals_the_bytes_a_tiny_model_holds(layout):
    """info's per-context cache state (sampling plan) against what diffusers' hooks keep on a tiny model."""
    from directanimator.models.caching import StepCache, remember_mag_ratios
    from directanimator.models.info import CACHE_STATE_TENSORS, cache_state_bytes, size_report
    from tests.tiny import tiny_animator, tiny_backbone_config, tiny_cue_latents, tiny_inputs, tiny_wan_inputs

    model = tiny_animator(layout, randomize_cues=True)
    remember_mag_ratios(model, ("plan", 4), torch.full((4,), 1.01))
    frames = 4 if layout == "1.0" else 3
    inputs = tiny_inputs(layout, frames=frames) if layout == "1.0" else tiny_wan_inputs(layout, frames=frames)
    latent = inputs["hidden_states"].shape[-1]
    report = size_report(dict(tiny_backbone_config(layout)), window_latent_frames=frames, height=8 * latent,
                         width=8 * latent)
    for mode, threshold in (("first_block", 0.5), ("mag", 0.5), ("taylorseer", 2)):
        cache = StepCache(model, mode, threshold, steps=4, key=("plan",))
        with cache, torch.no_grad():
            cache.new_run()
            for _ in range(4):
                with cache.context("one window"):
                    model(inputs["hidden_states"], inputs["encoder_hidden_states"], inputs["timestep"],
                          cues=tiny_cue_latents(frames=frames), image_embeds=inputs.get("image_embeds"))
            held = cache.state_bytes()
        assert held == cache_state_bytes(report, mode, dtype="fp32") > 0, (mode, CACHE_STATE_TENSORS[mode])
