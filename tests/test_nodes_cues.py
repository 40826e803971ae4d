"""The cue nodes adapt ComfyUI types to the library, report progress per frame and stop when interrupted."""

import pytest
import torch
from helpers import REAL_DATA, figure

import nodes._comfy as comfy_shim
from directanimator.errors import DirectAnimatorError, InputError
from nodes.cues import (
    DirectAnimatorCuePreview,
    DirectAnimatorCueTriplet,
    DirectAnimatorFaceCrop,
    DirectAnimatorLocationCue,
    DirectAnimatorPoseCue,
)


@pytest.fixture(autouse=True)
def like_comfyui():
    """ComfyUI executes every node under torch.inference_mode(); so do these tests."""
    with torch.inference_mode():
        yield


SIZE = (96, 64)  # (H, W), multiples of 16


def puppet(frames: int = 5):
    """Frames [F,H,W,3] of a textured stick figure walking right, its masks [F,H,W] and face boxes [F,4]."""
    masks, faces = [], []
    for i in range(frames):
        mask, face = figure(SIZE, top=10, centre_x=24 + 3 * i, height=70)
        masks.append(mask)
        faces.append(face)
    masks = torch.stack(masks)
    texture = (torch.arange(SIZE[1]) % 2).float()[None, None, :, None] * 0.5 + 0.25
    frames_ = masks[..., None] * texture + (1 - masks[..., None]) * 0.9
    return frames_.expand(-1, -1, -1, 3).contiguous(), masks, torch.stack(faces)


def test_pose_cue_node_uses_the_given_mask_and_keeps_the_frame_size():
    frames, masks, _ = puppet()
    (cue,) = DirectAnimatorPoseCue().run(frames, cutoff=0.2, filter="gaussian", blank_bad_frames=True, mask=masks)
    assert cue.shape == (5, *SIZE, 3) and cue.dtype == torch.float32
    far_outside = torch.nn.functional.max_pool2d(masks[:, None], 15, 1, 7)[:, 0] == 0
    assert cue[..., 0][far_outside].abs().max() < 0.02
    assert cue[..., 0][masks > 0].mean() > 0.1


def test_pose_cue_node_rejects_a_mask_of_another_size():
    frames, masks, _ = puppet()
    with pytest.raises(InputError, match="Resize the mask"):
        DirectAnimatorPoseCue().run(frames, 0.12, "gaussian", True, mask=masks[:, :80])


def test_interrupt_between_frames_stops_the_node(monkeypatch):
    frames, masks, _ = puppet(frames=6)
    calls = []

    def interrupt_after_three():
        calls.append(1)
        if len(calls) == 3:
            raise InterruptedError("cancelled")

    monkeypatch.setattr(comfy_shim, "check_interrupted", interrupt_after_three)
    with pytest.raises(InterruptedError):
        DirectAnimatorPoseCue().run(frames, 0.12, "gaussian", True, mask=masks)
    assert len(calls) == 3


def test_location_node_lands_the_driver_on_the_reference_person():
    frames, masks, faces = puppet()
    reference_mask, reference_face = figure(SIZE, top=30, centre_x=40, height=50)
    reference = (reference_mask[None, ..., None] * 0.6 + 0.2).expand(1, -1, -1, 3)
    track = __import__("directanimator.cues", fromlist=["FaceTrack"]).FaceTrack(faces, torch.ones(5, dtype=torch.bool))
    body, face, ref_out = DirectAnimatorLocationCue().run(
        reference, frames, grid_cell=4, grid_blur=1.0, detector="auto", mask=masks, faces=track,
        reference_mask=reference_mask[None])
    assert body.shape == face.shape == (5, *SIZE) and ref_out.shape == (1, *SIZE, 3)
    inside = torch.nn.functional.max_pool2d(reference_mask[None, None], 9, 1, 4)[0, 0] > 0
    assert (body[0] * inside).sum() / body[0].sum() > 0.9  # the first frame stands on the reference
    assert face.sum() > 0
    # anchored on the clip, the driver's median position (its middle frame) stands there instead
    clip_body, _, _ = DirectAnimatorLocationCue().run(
        reference, frames, grid_cell=4, grid_blur=1.0, detector="auto", anchor="clip", mask=masks, faces=track,
        reference_mask=reference_mask[None])
    assert (clip_body[2] * inside).sum() / clip_body[2].sum() > 0.9
    assert (clip_body[0] * inside).sum() / clip_body[0].sum() < (body[0] * inside).sum() / body[0].sum() - 0.1


def test_location_node_asks_for_a_multiple_of_16():
    frames, masks, _ = puppet()
    with pytest.raises(DirectAnimatorError, match="multiple of 16"):
        DirectAnimatorLocationCue().run(frames[:1], frames[:, :90], 16, 4.0, "auto", mask=masks[:, :90])


def test_preview_node_from_separate_outputs_and_from_a_bundle():
    frames, masks, faces = puppet()
    (pose,) = DirectAnimatorPoseCue().run(frames, 0.2, "gaussian", True, mask=masks)
    (sheet,) = DirectAnimatorCuePreview().run(columns=3, frames=frames, pose_cue=pose, body_location=masks,
                                              reference=frames[:1])
    assert sheet.ndim == 4 and sheet.shape[0] == 1 and sheet.shape[-1] == 3
    assert sheet.shape[2] > 3 * SIZE[1]  # three columns side by side


@pytest.fixture(scope="module")
def real_reference():
    path = REAL_DATA / "ref_real_person.jpg"
    if not path.exists():
        pytest.skip(f"real footage not found at {REAL_DATA} (shared/data/real)")
    from directanimator.video import read_image

    return read_image(path, size=(320, 192))


def test_face_crop_and_triplet_nodes_on_a_real_person(real_reference):
    frames = real_reference.expand(3, -1, -1, -1).contiguous()
    face_cue, track = DirectAnimatorFaceCrop().run(frames, "auto", 1.5, 3, 4)
    assert bool(track.valid.all()) and face_cue.shape == frames.shape
    outputs = DirectAnimatorCueTriplet().run(real_reference, frames, 0.12, "gaussian", "mediapipe",
                                             "none (use mediapipe)", "auto", 1.5, 16, 4.0)
    cues, pose, face, body, face_location, reference = outputs
    assert pose.shape == frames.shape and body.shape == frames.shape[:3] and reference.shape == (1, 320, 192, 3)
    assert cues.record.face_valid.all()
    (sheet,) = DirectAnimatorCuePreview().run(columns=3, cues=cues, frames=frames)
    assert sheet.shape[0] == 1


# --- file names: only what the model folders list -----------------------------------------------------------------


def test_sam_checkpoint_outside_models_sams_is_refused_at_validation_and_at_run(tmp_path):
    from tests.comfy_folders import comfy_model_folders
    from nodes.cues import NO_SAM, DirectAnimatorPersonMask

    (tmp_path / "sam_vit_b.pth").write_bytes(b"not a model")  # outside the model folders
    with comfy_model_folders(tmp_path / "models") as models:
        (models / "sams" / "sam_vit_b.pth").write_bytes(b"not a model either")
        for node in (DirectAnimatorPersonMask, DirectAnimatorCueTriplet):
            for name in (str(tmp_path / "sam_vit_b.pth"), "../../sam_vit_b.pth", "/etc/passwd", "..", "other.pth"):
                message = node.VALIDATE_INPUTS(sam_checkpoint=name)
                assert isinstance(message, str) and "ComfyUI/models/sams" in message, (node, name)
            for name in (NO_SAM, "sam_vit_b.pth", None):  # None: linked, checked when it runs
                assert node.VALIDATE_INPUTS(sam_checkpoint=name) is True, (node, name)
        frames, _, _ = puppet(2)
        with pytest.raises(InputError, match="ComfyUI/models/sams"):
            DirectAnimatorPersonMask().run(frames, "sam", str(tmp_path / "sam_vit_b.pth"))


def test_every_node_input_that_names_a_model_file_is_checked_against_the_model_folders(tmp_path):
    """Whatever node lists files of a model folder refuses, at validation, a name that is not in that folder."""
    import inspect

    from tests.comfy_folders import comfy_model_folders
    from nodes import NODE_CLASS_MAPPINGS

    from directanimator.models import save_checkpoint
    from tests.tiny import save_tiny_diffusers, tiny_animator

    # Loadable models of each kind, but outside the model folders: refused by absolute path and by a path relative
    # to any models/<folder> ("../../x" from there is tmp_path/x).
    elsewhere = save_tiny_diffusers(tmp_path / "elsewhere", "1.5")
    (elsewhere / "model_index.json").write_text("{}")
    save_checkpoint(tmp_path / "outside.safetensors", tiny_animator("1.5"), weights="none", backbone_name="elsewhere")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "outside.pth")
    valid_outside = [p for name in ("elsewhere", "outside.safetensors", "outside.pth")
                     for p in (str(tmp_path / name), f"../../{name}")]
    with comfy_model_folders(tmp_path / "models") as models:
        (models / "sams" / "sentinel.pth").write_bytes(b"x")
        (models / "directanimator" / "sentinel.safetensors").write_bytes(b"x")
        (models / "diffusers" / "sentinel").mkdir()
        (models / "diffusers" / "sentinel" / "model_index.json").write_text("{}")
        checked = []
        for key, cls in NODE_CLASS_MAPPINGS.items():
            spec = cls.INPUT_TYPES()
            for name, entry in {**spec.get("required", {}), **spec.get("optional", {})}.items():
                if not (isinstance(entry[0], list) and any(str(o).startswith("sentinel") for o in entry[0])):
                    continue
                validate = getattr(cls, "VALIDATE_INPUTS", None)
                assert validate is not None and name in inspect.signature(validate).parameters, \
                    f"{key}.{name} lists model files but VALIDATE_INPUTS does not check it"
                for outside in ("/etc/passwd", "../../../etc/passwd", str(tmp_path), *valid_outside):
                    message = validate(**{name: outside})
                    assert isinstance(message, str) and "ComfyUI/models/" in message, (key, name, outside)
                checked.append(f"{key}.{name}")
    assert {"DirectAnimatorModelLoader.backbone", "DirectAnimatorModelLoader.checkpoint",
            "DirectAnimatorPersonMask.sam_checkpoint", "DirectAnimatorCueTriplet.sam_checkpoint"} <= set(checked)
