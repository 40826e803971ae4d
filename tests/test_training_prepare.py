"""prepare: caches per clip under the config's key, resumes, skips and lists bad videos, blanks scene clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.training_world import CONFIG, make_world, overrides
from directanimator.errors import InputError
from training.config import load_config
from training.data import SKIPPED, CachedClips, cache_folder, clip_id
from training.prepare import encode_autocast, prepare, random_similarity, realign
from training.world.dataset import read_metadata


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("prep")
    data, model = make_world(root)
    entries = read_metadata(data)
    (data / "broken.mp4").write_bytes(b"not a video at all")
    scene = dict(entries[0], person=False, index=99)
    broken = {"clip": "broken.mp4", "fps": 12.0, "height": 64, "width": 64}
    lines = [json.dumps(e) for e in [*entries, broken, scene]]
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    config = load_config(CONFIG, overrides(root, data, model))
    first = prepare(config)
    second = prepare(config)
    yield config, first, second, broken, scene
    torch.set_num_threads(threads)


def test_prepare_caches_every_good_clip_and_a_second_run_skips_them(prepared):
    config, first, second, _, _ = prepared
    assert first["done"] == 5 and first["cached"] == 0
    assert second["done"] == 0 and second["cached"] == 5
    clips = CachedClips(config, stage=2)
    item = clips.load(0)
    n = config.data.frames // 4 + 1  # video latent frames
    assert item["target"].shape == (n, 16, 8, 8) and item["reference"].shape == (1, 16, 8, 8)
    assert item["cues.pose"].shape == (1 + n, 16, 8, 8) and item["pseudo.body_mask"].shape == (1 + n, 1, 8, 8)


def test_bad_video_is_skipped_and_listed_with_its_reason(prepared):
    config, first, second, broken, _ = prepared
    assert first["skipped"] == 1 and second["skipped"] == 1  # retried, still bad
    listed = [json.loads(line) for line in (cache_folder(config) / SKIPPED).read_text().splitlines()]
    assert [s["clip"] for s in listed] == ["broken.mp4"]
    assert "VideoError" in listed[0]["reason"]
    assert not (cache_folder(config) / f"{clip_id(broken)}.safetensors").exists()


def test_loading_tells_skipped_clips_from_clips_left_out_on_purpose(prepared, caplog):
    config, _, _, _, _ = prepared
    with caplog.at_level("INFO", logger="training.data"):
        CachedClips(config, stage=1)
    assert "1 clips of split 'train' were skipped by prepare" in caplog.text  # broken.mp4
    assert "not prepared" not in caplog.text

    cached = sorted(cache_folder(config).glob("*.safetensors"))
    kept = next(p for p in cached if p.stem != "null_text")
    aside = kept.with_suffix(".aside")
    kept.rename(aside)  # as if prepare had run with --limit (or a recipe's train_clips)
    try:
        caplog.clear()
        with caplog.at_level("INFO", logger="training.data"):
            CachedClips(config, stage=1)
        assert "1 clips of split 'train' were skipped by prepare" in caplog.text
        assert "1 clips of split 'train' were not prepared and are left out" in caplog.text
    finally:
        aside.rename(kept)


def test_scene_clip_without_person_gets_blank_location_cues(prepared):
    config, _, _, _, scene = prepared
    tensors = load_file(str(cache_folder(config) / f"{clip_id(scene)}.safetensors"))
    assert tensors["w0.cues.body_mask"].abs().max() == 0 and tensors["w0.cues.face_mask"].abs().max() == 0
    assert tensors["w0.pseudo0.body_mask"].abs().max() == 0
    normal = load_file(str(next(p for p in cache_folder(config).glob("*.safetensors")
                                if p.stem not in (clip_id(scene),) and p.name != "null_text.safetensors")))
    assert normal["w0.cues.body_mask"].max() > 0.1


def test_cache_key_changes_with_settings_that_change_the_tensors(prepared):
    config, _, _, _, _ = prepared
    other = load_config(CONFIG, [f"data.metadata={json.dumps(config.data.metadata)}",
                                 f"model.backbone={json.dumps(config.model.backbone)}", "cues.cutoff=0.3"])
    same = load_config(CONFIG, [f"data.metadata={json.dumps(config.data.metadata)}",
                                f"model.backbone={json.dumps(config.model.backbone)}", "optim.lr=0.5"])
    assert cache_folder(other) != cache_folder(config)
    assert cache_folder(same) == cache_folder(config)
    base = [f"data.metadata={json.dumps(config.data.metadata)}", f"model.backbone={json.dumps(config.model.backbone)}"]
    reseeded = load_config(CONFIG, [*base, "run.seed=5"])
    pinned = load_config(CONFIG, [*base, "run.seed=5", f"data.seed={config.run.seed}"])
    assert cache_folder(reseeded) != cache_folder(config)  # run.seed drives the cached realignments by default
    assert cache_folder(pinned) == cache_folder(config)  # unless data.seed pins them



def test_the_cache_follows_the_backbone_content_not_its_path(prepared, tmp_path):
    config, _, _, _, _ = prepared
    backbone = Path(config.model.backbone)
    copied = tmp_path / "moved_backbone"
    shutil.copytree(backbone, copied)

    def keyed(folder):
        return load_config(CONFIG, [f"data.metadata={json.dumps(config.data.metadata)}",
                                    f"model.backbone={json.dumps(str(folder))}"])

    assert cache_folder(keyed(copied)) == cache_folder(config)  # a moved backbone keeps its prepared clips
    weights = next((copied / "vae").glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(weights))  # a VAE retrained into the same folder: its latents differ
    assert cache_folder(keyed(copied)) != cache_folder(config)


def test_realign_moves_frames_masks_and_boxes_together():
    torch.manual_seed(0)
    frames = torch.zeros(1, 64, 64, 3)
    frames[:, 20:30, 10:20] = 1.0
    mask = frames[..., 0].clone()
    box = torch.tensor([[10.0, 20.0, 20.0, 30.0]])
    move = random_similarity((64, 64), [0.6, 0.8], 0.1, torch.Generator().manual_seed(1))
    out, out_mask, out_box = realign(frames, mask, box, move)
    ys, xs = torch.nonzero(out_mask[0] > 0.5, as_tuple=True)
    found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    assert torch.allclose(found, out_box[0], atol=1.0)
    assert torch.allclose(out[..., 0], out_mask, atol=1e-6)


def elsewhere(config, tmp_path: Path, *extra: str):
    """`config`'s data and backbone with runs and cache under `tmp_path`, and `extra` overrides."""
    return load_config(CONFIG, [f"data.metadata={json.dumps(str(config.metadata_path.parent))}",
                                f"model.backbone={json.dumps(str(config.model.backbone))}",
                                f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}",
                                f"data.cache={json.dumps(str(tmp_path / 'cache'))}", *extra])


@pytest.mark.slow
def test_worker_processes_write_the_same_cache_as_one_process(prepared, tmp_path):
    config, first, _, _, _ = prepared
    parallel = elsewhere(config, tmp_path, "data.workers=2")
    result = prepare(parallel)
    assert result["done"] == first["done"] and result["skipped"] == first["skipped"] == 1
    serial_folder, parallel_folder = cache_folder(config), cache_folder(parallel)
    names = sorted(p.name for p in serial_folder.glob("*.safetensors"))
    assert names == sorted(p.name for p in parallel_folder.glob("*.safetensors")) and names
    for name in names:
        a, b = load_file(str(serial_folder / name)), load_file(str(parallel_folder / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bf16_encoding_caches_latents_near_the_fp32_ones_under_its_own_key(prepared, tmp_path):
    config, first, _, _, _ = prepared
    bf16 = elsewhere(config, tmp_path, "data.encode_precision='bf16'")
    assert cache_folder(bf16).name != cache_folder(config).name  # fp32 caches keep their key; bf16 gets its own
    assert prepare(bf16)["done"] == first["done"]
    names = sorted(p.name for p in cache_folder(config).glob("*.safetensors"))
    assert names == sorted(p.name for p in cache_folder(bf16).glob("*.safetensors")) and names
    differs = False
    for name in names:
        a, b = load_file(str(cache_folder(config) / name)), load_file(str(cache_folder(bf16) / name))
        for key in a:
            assert b[key].dtype == a[key].dtype == torch.float32, key
            scale = float(a[key].float().std()) or 1.0
            assert float((a[key] - b[key]).float().pow(2).mean().sqrt()) < 0.05 * scale, key  # random weights: 2 %
            differs |= not torch.equal(a[key], b[key])
    assert differs  # the encoder really ran in bf16
    with pytest.raises(InputError, match="data.encode_precision='fp16'"):
        elsewhere(config, tmp_path, "data.encode_precision='fp16'")


def test_bf16_encoding_warns_only_on_a_cpu_without_native_bf16(monkeypatch, caplog):
    from training import precision

    vae = torch.nn.Linear(2, 2)
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        caplog.clear()
        with encode_autocast(vae, "bf16"):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        with encode_autocast(vae, "fp32"):
            assert not torch.is_autocast_enabled("cpu")
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warned == ([] if native else [
            "data.encode_precision='bf16' on a CPU without native bf16 (AVX512-BF16 or AMX): the VAE encodes slower "
            "than in fp32; set data.encode_precision='fp32'."])


@pytest.mark.slow
def test_skeleton_source_caches_skeleton_maps_with_blank_face_and_location(prepared):
    config, _, _, broken, scene = prepared
    base = [f"data.metadata={json.dumps(config.data.metadata)}", f"model.backbone={json.dumps(config.model.backbone)}"]
    skeleton = load_config(CONFIG, [*base, "data.pose_source='skeleton'", "data.pseudo=false"])
    assert cache_folder(skeleton) != cache_folder(config)
    prepare(skeleton)
    name = next(p.name for p in cache_folder(config).glob("*.safetensors")
                if p.stem not in (clip_id(scene), clip_id(broken)) and p.name != "null_text.safetensors")
    cues, skel = load_file(str(cache_folder(config) / name)), load_file(str(cache_folder(skeleton) / name))
    assert torch.equal(cues["w0.target"], skel["w0.target"]) and torch.equal(cues["w0.reference"], skel["w0.reference"])
    assert not torch.allclose(cues["w0.cues.pose"], skel["w0.cues.pose"], atol=1e-3)
    assert skel["w0.cues.body_mask"].abs().max() == 0 and skel["w0.cues.face_mask"].abs().max() == 0
    assert cues["w0.cues.body_mask"].max() > 0.1
    assert not any(k.startswith("w0.pseudo") for k in skel)


def test_skeleton_source_needs_ground_truth_and_no_pseudo_cues(prepared):
    config = prepared[0]
    base = [f"data.metadata={json.dumps(config.data.metadata)}", f"model.backbone={json.dumps(config.model.backbone)}"]
    with pytest.raises(InputError, match="data.pseudo=false"):
        load_config(CONFIG, [*base, "data.pose_source='skeleton'"])
    with pytest.raises(InputError, match="pose_source='bones'"):
        load_config(CONFIG, [*base, "data.pose_source='bones'"])
