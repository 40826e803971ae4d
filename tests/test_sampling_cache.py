"""Step caches and batched guidance in sampling, on tiny models of the real classes with random (as if trained) cue
modules: diffusers' first-block, MagCache and TaylorSeer hooks on the wrapped blocks, one cache state per context
window and guidance branch (a cached step never reuses what was computed for other cues), each cache's result
against the uncached one, and the two guidance branches in one forward against two."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from directanimator.conditioning import encode_conditioning
from directanimator.errors import InputError
from directanimator.models.caching import CacheStats, StepCache, context_name, mag_ratios, remember_mag_ratios
from directanimator.sampling import sample_latents
from tests.tiny import (
    PIXELS,
    synthetic_triplet,
    tiny_animator,
    tiny_animator_model,
    tiny_cue_latents,
    tiny_inputs,
    tiny_wan_inputs,
)

LAYOUTS = ("1.0", "wan-i2v", "wan-ti2v")
STEPS = 12
GUIDANCE = 2.0
# The largest error of the final latents allowed, as max |cached - uncached| / std(uncached), with the settings
# below; measured on these tiny random models at 12 steps: first_block 0.06-0.10, mag 0.13-0.23, taylorseer
# 0.09-0.23 (random weights make a rougher trajectory than a trained model's). Two seeds differ by 2.5 to 3.5 on
# this scale, so a cached result stays the same sample.
SETTINGS = {"first_block": (0.2, 0.2), "mag": (None, 0.35), "taylorseer": (3, 0.35)}  # threshold, tolerance
SEED_GAP = 2.0


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).abs().max() / reference.std())


@pytest.fixture(scope="module", params=LAYOUTS)
def world(request):
    """(layout, model with random cue modules, conditioning of 4 video latent frames)."""
    layout = request.param
    if layout == "1.0":
        model = tiny_animator_model("1.0", randomize_cues=True)
        return layout, model, encode_conditioning(model, synthetic_triplet(9, height=PIXELS, width=PIXELS, seed=1),
                                                  tiling=False)
    from tests.test_sampling_wan import _inputs, _model

    model = replace(_model(layout), transformer=tiny_animator(layout, randomize_cues=True))
    return layout, model, encode_conditioning(model, _inputs(layout)[0])


# ------------------------------------------------------------------------------------------------ each cache
@pytest.mark.parametrize("mode", list(SETTINGS))
def test_each_cache_stays_within_its_tolerance_of_the_uncached_result_and_skips_steps(world, mode):
    layout, model, cond = world
    threshold, tolerance = SETTINGS[mode]
    window = None if layout == "1.0" else 2  # 1.0 has a fixed length; on Wan also check windows
    plain = sample_latents(model, cond, steps=STEPS, guidance=GUIDANCE, seed=0, window=window)
    if mode == "mag":  # the first run measures the ratios
        sample_latents(model, cond, steps=STEPS, guidance=GUIDANCE, seed=0, window=window, cache="mag")
    stats = CacheStats()
    cached = sample_latents(model, cond, steps=STEPS, guidance=GUIDANCE, seed=0, window=window, cache=mode,
                            cache_threshold=threshold, stats=stats)
    other_seed = sample_latents(model, cond, steps=STEPS, guidance=GUIDANCE, seed=1, window=window)
    error = _relative_error(cached, plain)
    assert stats.mode == mode and stats.skipped_share >= 0.3, stats
    assert 0 < error <= tolerance, (mode, layout, error)
    assert _relative_error(other_seed, plain) >= SEED_GAP
    assert not model.transformer.backbone.is_cache_enabled  # the hooks are gone after sampling
    windows = 1 if window is None else 3
    assert stats.forwards == STEPS * windows * 2
    assert stats.contexts == {context_name(w, b): STEPS for w in range(windows) for b in ("cues", "bare")}


@pytest.mark.parametrize("mode", list(SETTINGS))
def test_a_cache_that_skips_nothing_leaves_the_result_bit_identical(mode):
    model = tiny_animator_model("1.0", randomize_cues=True)
    cond = encode_conditioning(model, synthetic_triplet(9, height=PIXELS, width=PIXELS, seed=1), tiling=False)
    plain = sample_latents(model, cond, steps=6, guidance=GUIDANCE, seed=0)
    threshold = {"first_block": 1e-9, "mag": None, "taylorseer": 1}[mode]  # mag: its measuring run
    stats = CacheStats()
    out = sample_latents(model, cond, steps=6, guidance=GUIDANCE, seed=0, cache=mode, cache_threshold=threshold,
                         stats=stats)
    assert stats.skipped == 0 and stats.forwards == 12
    assert torch.equal(out, plain)
    assert stats.calibrated == (mode == "mag")


def test_mag_measures_the_ratios_on_its_first_run_then_skips():
    model = tiny_animator_model("1.0", randomize_cues=True)
    cond = encode_conditioning(model, synthetic_triplet(9, height=PIXELS, width=PIXELS, seed=1), tiling=False)
    first, second = CacheStats(), CacheStats()
    sample_latents(model, cond, steps=8, guidance=GUIDANCE, seed=0, cache="mag", stats=first)
    ratios = mag_ratios(model.transformer, ("dpm", 8, 8))
    assert ratios is not None and ratios.shape == (8,) and ratios[0] == 1 and (ratios > 0).all()
    assert (ratios[1:] - 1).abs().max() > 1e-3  # measured, not a constant
    sample_latents(model, cond, steps=8, guidance=GUIDANCE, seed=0, cache="mag", stats=second)
    assert first.calibrated and first.skipped == 0
    assert not second.calibrated and second.skipped > 0
    assert "measured the model's magnitude ratios" in first.note() and "served from the cache" in second.note()
    # another step count is another schedule: measured anew
    third = CacheStats()
    sample_latents(model, cond, steps=6, guidance=GUIDANCE, seed=0, cache="mag", stats=third)
    assert third.calibrated and third.skipped == 0


# ------------------------------------------------------------------------------------------------ keying
def _stream(layout: str, seed: int):
    """Inputs of one window over a few steps: latents drifting slowly, timesteps falling."""
    frames = 4 if layout == "1.0" else 3
    if layout == "1.0":
        inputs = tiny_inputs(layout, frames=frames, seed=seed)
        inputs.update(timestep=torch.tensor([900.0]))
    else:
        inputs = tiny_wan_inputs(layout, frames=frames, seed=seed)
        inputs.update(timestep=torch.tensor([900.0]))
    drift = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(seed + 10))
    channels = 48 if layout == "wan-ti2v" else 16
    cues = tiny_cue_latents(frames=frames, seed=seed + 20, channels=channels)
    steps = []
    for step in range(8):
        x = inputs["hidden_states"] + 0.01 * step * drift
        steps.append(dict(inputs, hidden_states=x, timestep=inputs["timestep"] - 40 * step, cues=cues))
    return steps


def _run(transformer, cache: StepCache, windows: dict[int, list[dict]], names: dict[int, str]):
    """Each step: a forward of every window under its cache context; returns outputs by (window, step)."""
    out = {}
    with cache, torch.no_grad():
        cache.new_run()
        for step in range(8):
            for w, inputs in windows.items():
                x = inputs[step]
                with cache.context(names[w]):
                    out[w, step] = transformer(x["hidden_states"], x["encoder_hidden_states"], x["timestep"],
                                               cues=x["cues"], image_embeds=x.get("image_embeds"))
    return out


@pytest.mark.parametrize("layout", ["1.0", "wan-i2v"])
@pytest.mark.parametrize("mode, threshold", [("first_block", 0.5), ("mag", 0.5), ("taylorseer", 2)])
def test_two_windows_with_different_cues_never_share_a_cached_residual(layout, mode, threshold):
    transformer = tiny_animator(layout, randomize_cues=True)
    windows = {0: _stream(layout, 1), 1: _stream(layout, 2)}
    # the same model twice more, each serving one window with a cache of its own
    separate = {w: copy.deepcopy(transformer) for w in windows}
    ratios = torch.full((8,), 1.01)
    for model in (transformer, *separate.values()):
        remember_mag_ratios(model, ("test", 8), ratios)

    def cache(model):
        return StepCache(model, mode, threshold, steps=8, key=("test",))

    keyed_cache = cache(transformer)
    keyed = _run(transformer, keyed_cache, windows, {w: context_name(w, "cues") for w in windows})
    reference, skipped = {}, 0
    for w, model in separate.items():
        own = cache(model)
        reference.update(_run(model, own, {w: windows[w]}, {w: context_name(0, "cues")}))
        skipped += own.stats.skipped
    assert skipped >= 4 and keyed_cache.stats.skipped == skipped
    for key, value in reference.items():
        assert torch.equal(keyed[key], value), key
    # the cues matter: a cached step served from the other window's state gives another output
    plain = _run(transformer, StepCache(transformer, "off", steps=8), windows, {0: "", 1: ""})
    assert (plain[1, 7] - plain[0, 7]).abs().max() > 1e-2
    shared_cache = cache(transformer)
    shared = _run(transformer, shared_cache, windows, {w: "one cache for all" for w in windows})
    assert any(not torch.equal(shared[key], reference[key]) for key in reference)


def test_sampling_names_one_context_per_window_and_branch():
    from tests.test_sampling_wan import _inputs, _model

    model = replace(_model("wan-ti2v"), transformer=tiny_animator("wan-ti2v", randomize_cues=True))
    cond = encode_conditioning(model, _inputs("wan-ti2v")[0])
    for batch_guidance, branches in ((False, ("cues", "bare")), (True, ("both",))):
        stats = CacheStats()
        sample_latents(model, cond, steps=3, guidance=GUIDANCE, seed=0, window=2, overlap=1, cache="first_block",
                       stats=stats, batch_guidance=batch_guidance)
        assert stats.contexts == {context_name(w, b): 3 for w in range(3) for b in branches}
    stats = CacheStats()
    sample_latents(model, cond, steps=3, guidance=1.0, seed=0, samples=2, cache="taylorseer", stats=stats)
    assert stats.contexts == {context_name(0, "cues"): 6}  # two samples, one context, state cleared between


# ------------------------------------------------------------------------------------------------ batched guidance
@pytest.mark.parametrize("window", [None, 2])
def test_batched_guidance_equals_two_passes(world, window):
    layout, model, cond = world
    if layout == "1.0" and window is not None:
        pytest.skip("CogVideoX 1.0 samples its fixed length only")
    calls = []
    handle = model.transformer.backbone.register_forward_pre_hook(
        lambda _m, _a, kwargs: calls.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        two = sample_latents(model, cond, steps=4, guidance=GUIDANCE, seed=0, window=window)
        passes = list(calls)
        calls.clear()
        one = sample_latents(model, cond, steps=4, guidance=GUIDANCE, seed=0, window=window, batch_guidance=True)
    finally:
        handle.remove()
    assert set(passes) == {1} and set(calls) == {2} and len(passes) == 2 * len(calls)
    torch.testing.assert_close(one, two, rtol=0, atol=1e-4 * float(two.abs().max()))
    # guidance 1 runs one forward whatever the switch says
    calls.clear()
    single = sample_latents(model, cond, steps=2, guidance=1.0, seed=0, window=window, batch_guidance=True)
    assert torch.equal(single, sample_latents(model, cond, steps=2, guidance=1.0, seed=0, window=window))


def test_the_bare_branch_in_a_batch_is_exactly_the_bare_backbone():
    transformer = tiny_animator("1.0", randomize_cues=True)
    inputs = tiny_inputs("1.0", batch=2, seed=3)
    cues = tiny_cue_latents(batch=1, seed=4)
    with torch.no_grad():
        both = transformer(**inputs, cues=cues.repeat_batch(2), cue_weight=torch.tensor([1.0, 0.0]))
        bare = transformer(**inputs, cues=None)
        cued = transformer(**inputs, cues=cues.repeat_batch(2))
    assert torch.equal(both[1], bare[1])
    assert torch.equal(both[0], cued[0])
    assert (cued[1] - bare[1]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("kwargs, message", [
    (dict(cache="tea"), "cache='tea'"),
    (dict(cache="first_block", cache_threshold=0.0), "cache_threshold=0.0"),
    (dict(cache="off", cache_threshold=0.1), "cache='off'"),
    (dict(cache="taylorseer", cache_threshold=2.5), "whole steps"),
    (dict(batch_guidance="yes"), "batch_guidance"),
])
def test_bad_speed_options_are_refused_before_any_forward(kwargs, message):
    model = tiny_animator_model("1.0")
    cond = encode_conditioning(model, synthetic_triplet(9, height=PIXELS, width=PIXELS, seed=1), tiling=False)
    calls = []
    handle = model.transformer.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError, match=message):
            sample_latents(model, cond, steps=2, **kwargs)
    finally:
        handle.remove()
    assert calls == []


def test_animate_triplet_records_the_speed_options_in_the_notes():
    from directanimator.pipeline import animate_triplet
    from directanimator.sampling import speed_notes

    model = tiny_animator_model("1.0", randomize_cues=True)
    triplet = synthetic_triplet(9, height=PIXELS, width=PIXELS, seed=1)
    assert speed_notes(CacheStats(), batch_guidance=False, guidance=GUIDANCE) == []  # all off: nothing recorded
    assert speed_notes(CacheStats(), batch_guidance=True, guidance=1.0) == []  # one forward anyway
    fast = animate_triplet(model, triplet, steps=4, guidance=GUIDANCE, cache="first_block", cache_threshold=0.2,
                           batch_guidance=True)
    cache_note = [n for n in fast.notes if n.startswith("step cache: first-block cache (threshold 0.2)")]
    assert len(cache_note) == 1 and "of 4 backbone forwards served from the cache" in cache_note[0]
    assert any("guidance branches batched" in n for n in fast.notes)


@pytest.mark.parametrize("mode, threshold", [("first_block", 0.5), ("mag", 0.5), ("taylorseer", 2)])
def test_parked_states_give_the_same_outputs_and_every_state_tensor_is_moved(mode, threshold, monkeypatch):
    """Parking (on a GPU: the idle contexts' states on the CPU) moves each context's whole state out after its
    forward and back before the next one, and changes no output. Here both devices are the CPU, so the moved
    tensors are recorded instead of seen elsewhere."""
    from directanimator.models import caching

    transformer = tiny_animator("1.0", randomize_cues=True)
    remember_mag_ratios(transformer, ("test", 8), torch.full((8,), 1.01))
    windows = {0: _stream("1.0", 1), 1: _stream("1.0", 2)}
    names = {w: context_name(w, "cues") for w in windows}
    assert not StepCache(transformer, mode, threshold, steps=8, contexts=2).park  # not on a CPU by default
    expected = _run(transformer, StepCache(transformer, mode, threshold, steps=8, key=("test",)), windows, names)
    moved: set[int] = set()
    real_moved = caching._moved

    def recording(value, device):
        out = real_moved(value, device)
        if isinstance(value, torch.Tensor):
            moved.add(id(out))
        return out

    monkeypatch.setattr(caching, "_moved", recording)
    parking = StepCache(transformer, mode, threshold, steps=8, key=("test",), park=True)
    real_move_states = parking._move_states
    calls = []

    def checked(name, device):
        moved.clear()
        real_move_states(name, device)
        state = [t for manager in caching._state_managers(parking.backbone)
                 if name in manager._state_cache for t in caching._tensors(vars(manager._state_cache[name]))]
        assert {id(t) for t in state} <= moved, name  # every tensor of the context's state was moved
        calls.append(len(state))


    parking._move_states = checked
    parked = _run(transformer, parking, windows, names)
    for key, value in expected.items():
        assert torch.equal(parked[key], value), key
    parks = calls[1::2]  # in before each forward, out after it
    assert len(parks) == 2 * 8 and min(parks) > 0  # every one of the 16 forwards parked a non-empty state


def test_a_step_cache_on_a_one_block_model_is_refused_clearly():
    with pytest.raises(InputError, match="1 transformer block; a step cache needs at least 2"):
        with StepCache(tiny_animator("1.0", num_layers=1), "first_block", steps=4):
            pass
