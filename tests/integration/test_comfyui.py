"""The pack inside a real ComfyUI server: node definitions, the example workflows run by API, model reuse,
interruption. Skipped unless COMFYUI_DIR is set (see conftest.py); needs the real footage in ../shared/data/real
(the cue backends need real people to find)."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
import torch

from tests.integration.shipped import CLIP_FPS, CLIP_FRAMES, api, build, run, video_facts

TINY_SIZE = (112, 64)
BACKBONE = "tiny-cogvideox15-itest"
CHECKPOINT = "tiny-directanimator-itest.safetensors"


@pytest.fixture(scope="module")
def tiny_model(comfy):
    """A tiny CogVideoX 1.5-layout diffusers folder and a DirectAnimator checkpoint in the server's model folders."""
    from directanimator.models import save_checkpoint
    from tests.tiny import TEXT_DIM, TEXT_LEN, save_tiny_diffusers, tiny_animator

    save_tiny_diffusers(comfy.models_dir / "diffusers" / BACKBONE, "1.5", seed=0)
    torch.manual_seed(0)
    save_checkpoint(comfy.models_dir / "directanimator" / CHECKPOINT, tiny_animator("1.5", seed=0, randomize_cues=True),
                    weights="none", null_text=torch.zeros(1, TEXT_LEN, TEXT_DIM), backbone_name=BACKBONE)
    return BACKBONE, CHECKPOINT


def animate_prompt(*, seed: int = 1, steps: int = 2, offload: bool = True) -> dict:
    """Workflow (b) with the tiny model: small frames, a window the 1.5 layout takes, few steps."""
    prompt = api("animate_cogvideox_5b_i2v_long_video")
    prompt["2"]["inputs"].update(height=TINY_SIZE[0], width=TINY_SIZE[1])
    prompt["5"]["inputs"].update(backbone=BACKBONE, checkpoint=CHECKPOINT, precision="fp32", offload=offload)
    prompt["6"]["inputs"]["tiled"] = False
    prompt["7"]["inputs"].update(steps=steps, seed=seed, window=3, overlap=1)
    prompt["8"]["inputs"]["tiled"] = False
    return prompt


WAN_FILES = dict(diffusion_model="wan/tiny_wan2.1_i2v_itest.safetensors", vae="tiny_wan_2.1_vae_itest.safetensors",
                 clip_vision="tiny_clip_vision_itest.safetensors")
WAN_CHECKPOINT = "tiny-directanimator-wan-itest.safetensors"


def save_tiny_wan_files(models_dir, *, seed: int = 0) -> dict:
    """A tiny Wan2.1 I2V as ComfyUI users keep it, in `models_dir`'s diffusion_models, vae and clip_vision folders:
    native-layout transformer and VAE, CLIP vision tower in the ``vision_model.*`` layout, each with the sidecar
    config the loader reads for shapes that match no bundled config. Returns the Model Loader's file inputs."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    from tests.test_loader_wan import TINY_CLIP, TINY_NATIVE_VAES, clip_file_state, save_native_vae, save_native_wan
    from tests.tiny import tiny_backbone, tiny_backbone_config

    for name, folder in (("diffusion_model", "diffusion_models"), ("vae", "vae"), ("clip_vision", "clip_vision")):
        (models_dir / folder / WAN_FILES[name]).parent.mkdir(parents=True, exist_ok=True)
    transformer = models_dir / "diffusion_models" / WAN_FILES["diffusion_model"]
    save_native_wan(transformer, tiny_backbone("wan-i2v", seed=seed), config=tiny_backbone_config("wan-i2v"))
    torch.manual_seed(seed)
    save_native_vae(models_dir / "vae" / WAN_FILES["vae"], AutoencoderKLWan(**TINY_NATIVE_VAES["2.1"]).eval(), "2.1")
    # 224 px like clip_vision_h: single files are embedded with Wan2.1's own processor (224 px crops)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    clip_config = dict(TINY_CLIP, image_size=224, patch_size=32)
    torch.manual_seed(seed)
    clip = models_dir / "clip_vision" / WAN_FILES["clip_vision"]
    save_file(clip_file_state(CLIPVisionModel(CLIPVisionConfig(**clip_config)).eval()), str(clip))
    clip.with_suffix(".json").write_text(json.dumps(clip_config))
    return dict(WAN_FILES)


@pytest.fixture(scope="module")
def tiny_wan(comfy):
    """Tiny Wan2.1 I2V single files in ComfyUI's own model folders and a DirectAnimator checkpoint for them."""
    from directanimator.models import save_checkpoint
    from tests.tiny import TEXT_DIM, WAN_TEXT_LEN, tiny_animator

    files = save_tiny_wan_files(comfy.models_dir)
    torch.manual_seed(0)
    save_checkpoint(comfy.models_dir / "directanimator" / WAN_CHECKPOINT,
                    tiny_animator("wan-i2v", seed=0, randomize_cues=True), weights="none",
                    null_text=torch.zeros(1, WAN_TEXT_LEN, TEXT_DIM), backbone_name="tiny-wan2.1-i2v")
    return files, WAN_CHECKPOINT


def wan_prompt(files: dict, *, seed: int = 1, steps: int = 2) -> dict:
    """The Wan2.1 single-files workflow with the tiny files: small frames, few steps, a small window."""
    prompt = api("animate_wan21_i2v_14b_comfyui_files")
    prompt["2"]["inputs"].update(height=TINY_SIZE[0], width=TINY_SIZE[1])
    prompt["5"]["inputs"].update(checkpoint=WAN_CHECKPOINT, precision="fp32", **files)
    prompt["6"]["inputs"]["tiled"] = False
    prompt["7"]["inputs"].update(steps=steps, seed=seed, window=3, overlap=1)
    prompt["8"]["inputs"]["tiled"] = False
    return prompt


def test_object_info_lists_every_node_with_its_declared_types(comfy):
    info = comfy.get("/object_info")
    for name, definition in build.pack_definitions().items():
        assert name in info, f"{name} missing from /object_info; log:\n{comfy.log_tail()}"
        live = info[name]
        assert live["output"] == definition["output"] and live["output_name"] == definition["output_name"]
        assert live["display_name"] == definition["display_name"] and live["category"] == definition["category"]
        for section in ("required", "optional"):
            declared = definition["input"].get(section, {})
            assert list(live["input"].get(section, {})) == list(declared), (name, section)
            for key, entry in declared.items():
                kind = live["input"][section][key][0]
                if isinstance(entry[0], list):  # combos: model-folder lists differ, the sentinel comes first
                    assert isinstance(kind, list) and kind[:1] == entry[0][:1], (name, key)
                else:
                    assert kind == entry[0], (name, key)
    for name, recorded in build.core_definitions().items():  # the recording the unit tests validate against
        live = info[name]
        assert live["output"] == recorded["output"] and live["input_order"] == recorded["input_order"], name


def test_template_browser_lists_the_workflows_by_title_and_serves_them_with_their_thumbnails(comfy):
    templates = comfy.get("/workflow_templates")
    assert sorted(templates.get(comfy.pack_name, [])) == sorted(w.title for w in build.WORKFLOWS.values())
    for name, workflow in build.WORKFLOWS.items():
        base = f"/api/workflow_templates/{quote(comfy.pack_name)}/{quote(workflow.title)}"  # what the frontend asks
        served = comfy.get(f"{base}.json")
        served = served if isinstance(served, dict) else json.loads(served)
        assert served == json.loads(build.ui_path(name).read_text())
        assert comfy.get(f"{base}.jpg") == build.thumbnail_path(name).read_bytes()


def test_inspect_cues_workflow_saves_a_sheet_and_the_pose_cue_video(comfy, media):
    result = run(comfy, api("inspect_cue_triplet_tune_cutoff"))
    assert result.status == "success", result.error
    assert comfy.output_files(result, "6") and all(p.suffix == ".png" for p in comfy.output_files(result, "6"))
    (video,) = comfy.output_files(result, "8")
    kept = (CLIP_FRAMES + 1) // 2  # stride 2 in the Driving Video node
    assert video_facts(video) == (kept, pytest.approx(CLIP_FPS / 2), (896, 512))


def test_own_mask_workflow_runs_as_shipped_with_the_mask_from_its_stand_in_node(comfy, media):
    prompt = api("bring_your_own_person_mask")
    assert prompt["4"]["class_type"] == "DirectAnimatorPersonMask" and prompt["5"]["inputs"]["mask"] == ["4", 0]
    result = run(comfy, prompt)
    assert result.status == "success", result.error
    # the mask (its node may be served from cache: the cue workflow ran the same one), grown, into the cues
    assert "4" in result.executed + result.cached and {"5", "6", "7"} <= set(result.executed)
    (video,) = comfy.output_files(result, "11")
    assert video_facts(video)[:2] == ((CLIP_FRAMES + 1) // 2, pytest.approx(CLIP_FPS / 2))


def test_animate_workflow_end_to_end_then_reuses_the_loaded_model(comfy, media, tiny_model):
    first = run(comfy, animate_prompt(seed=1))
    assert first.status == "success", f"{first.error}\n{comfy.log_tail()}"
    (video,) = comfy.output_files(first, "10")
    assert video_facts(video) == (CLIP_FRAMES, pytest.approx(CLIP_FPS), TINY_SIZE)
    assert first.progress.get("7") and max(first.progress["7"]) == 2  # one progress event per step
    assert first.previews >= 2  # a latent preview per sampling step

    second = run(comfy, animate_prompt(seed=2))
    assert second.status == "success", second.error
    assert "5" in second.cached and "5" not in second.executed  # the model loader did not run again
    assert "7" in second.executed


def test_wan_single_files_workflow_end_to_end_from_comfyuis_own_model_folders(comfy, media, tiny_wan):
    files, checkpoint = tiny_wan
    shipped = api("animate_wan21_i2v_14b_comfyui_files")
    loader, sampler = shipped["5"]["inputs"], shipped["7"]["inputs"]
    assert loader["backbone"] == "none (use repo_id)" and loader["repo_id"] == ""  # the files replace both
    assert sampler["scheduler"] == "unipc" and (sampler["window"], sampler["overlap"]) == (20, 5)
    info = comfy.get("/object_info")["DirectAnimatorModelLoader"]["input"]
    for name, value in files.items():  # ComfyUI lists the files from its own folders (sidecar configs not)
        assert value in info["optional"][name][0] and not any(v.endswith(".json") for v in info["optional"][name][0])
    assert checkpoint in info["required"]["checkpoint"][0]

    result = run(comfy, wan_prompt(files))
    assert result.status == "success", f"{result.error}\n{comfy.log_tail()}"
    (video,) = comfy.output_files(result, "10")
    assert video_facts(video) == (CLIP_FRAMES, pytest.approx(CLIP_FPS), TINY_SIZE)
    assert result.progress.get("7") and max(result.progress["7"]) == 2  # UniPC, one progress event per step
    assert comfy.output_files(result, "12")  # the cue preview sheet


def test_interrupt_stops_sampling_within_a_step_and_the_next_run_works(comfy, media, tiny_model):
    steps = 200
    sent = {}

    def interrupt_on_third_step(result, kind, message):
        values = result.progress.get("7", [])
        if not sent and len(values) >= 3:
            comfy.post("/interrupt")
            sent["at"] = len(values)

    stopped = run(comfy, animate_prompt(seed=3, steps=steps), on_message=interrupt_on_third_step)
    assert stopped.status == "interrupted"
    after = len(stopped.progress["7"]) - sent["at"]
    assert after <= 2, f"{after} steps ran after /interrupt"  # the step under way, at most one message in flight
    assert max(stopped.progress["7"]) < steps

    again = run(comfy, animate_prompt(seed=4))
    assert again.status == "success", again.error
    (video,) = comfy.output_files(again, "10")
    assert video_facts(video)[0] == CLIP_FRAMES


def vhs_prompt(*, nth: int = 2) -> dict:
    """VideoHelperSuite's Load Video -> IMAGE frames + its loaded fps -> our nodes -> IMAGE + fps -> its Video Combine."""
    prompt = animate_prompt(seed=5)
    del prompt["1"], prompt["9"], prompt["10"]
    prompt["20"] = {"class_type": "VHS_LoadVideo",
                    "inputs": {"video": build.DRIVING, "force_rate": 0, "custom_width": 0, "custom_height": 0,
                               "frame_load_cap": 0, "skip_first_frames": 0, "select_every_nth": nth}}
    prompt["21"] = {"class_type": "VHS_VideoInfo", "inputs": {"video_info": ["20", 3]}}
    inputs = prompt["2"]["inputs"]
    del inputs["video"]
    inputs.update(frames=["20", 0], frames_fps=["21", 5])  # loaded_fps: the source rate / select_every_nth
    prompt["22"] = {"class_type": "VHS_VideoCombine",
                    "inputs": {"images": ["8", 0], "frame_rate": ["8", 1], "loop_count": 0,
                               "filename_prefix": "directanimator/vhs", "format": "video/h264-mp4",
                               "pix_fmt": "yuv420p", "crf": 19, "save_metadata": True, "trim_to_audio": False,
                               "pingpong": False, "save_output": True}}
    return prompt


def test_videohelpersuite_load_video_in_and_video_combine_out(comfy, media, tiny_model):
    info = comfy.get("/object_info")
    if "VHS_VideoCombine" not in info:
        pytest.skip("VideoHelperSuite is not installed in this ComfyUI: set VHS_DIR to a ComfyUI-VideoHelperSuite "
                    "checkout to link it")
    result = run(comfy, vhs_prompt(nth=2))
    assert result.status == "success", f"{result.error}\n{comfy.log_tail()}"
    videos = [p for p in comfy.output_files(result, "22") if p.suffix == ".mp4"]
    assert len(videos) == 1, comfy.output_files(result, "22")
    kept = (CLIP_FRAMES + 1) // 2  # every 2nd of 17 frames
    # the frame count and the halved rate travelled VHS -> Driving Video -> ... -> Decode -> VHS
    assert video_facts(videos[0]) == (kept, pytest.approx(CLIP_FPS / 2), TINY_SIZE)


def test_comfyuis_model_manager_holds_our_networks_and_unload_models_frees_them(comfy, media, tiny_model):
    def loads(name: str) -> int:  # ComfyUI's load_models_gpu logs each model it (re)loads
        return comfy.log_path.read_text(errors="replace").count(f"Requested to load {name}")

    warm = run(comfy, animate_prompt(seed=6, offload=False))
    assert warm.status == "success", warm.error
    assert loads("DirectAnimatorCFDiT") >= 1 and loads("DirectAnimatorVAE") >= 1
    before = loads("DirectAnimatorCFDiT"), loads("DirectAnimatorVAE")

    again = run(comfy, animate_prompt(seed=7, offload=False))  # still loaded: nothing requested again
    assert again.status == "success", again.error
    assert (loads("DirectAnimatorCFDiT"), loads("DirectAnimatorVAE")) == before

    comfy.post("/free", {"unload_models": True})  # the "Unload models" button
    time.sleep(2.0)  # the prompt worker wakes on the flag and unloads before it takes the next prompt
    after = run(comfy, animate_prompt(seed=8, offload=False))
    assert after.status == "success", after.error
    assert "5" in after.cached  # the same loaded model object, its networks placed again by ComfyUI
    assert (loads("DirectAnimatorCFDiT"), loads("DirectAnimatorVAE")) == (before[0] + 1, before[1] + 1)
