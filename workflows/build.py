"""The example workflows, described once and written in both of ComfyUI's formats, so the two cannot drift.

- ``workflows/<title>.json``: the UI format the frontend saves and loads by drag and drop. ComfyUI's template
  browser lists a pack's ``workflows/*.json`` (app/custom_node_manager.py scans ``example_workflows``, ``example``,
  ``examples``, ``workflow`` and ``workflows``; only top-level files), shows ``<title>.jpg`` beside each as its
  thumbnail (the frontend asks for ``/api/workflow_templates/<pack>/<title>.jpg``) and the file name as its title and
  description: frontend 1.27.10 reads no other metadata for a pack's templates (no index.json, no workflow field).
- ``workflows/api/<name>.json``: the API format ``POST /prompt`` takes; the tests run these.
- ``workflows/api/core_nodes.json``: the definitions of the core ComfyUI nodes the workflows use, recorded from a
  running server's ``/object_info`` (the integration tests check that it still matches).

Nodes are laid out for what the editor draws once media load: a video or image preview grows its node by the media
at the node's width (a portrait clip makes Load Video about 650 px tall), and notes are as tall as their text.

Usage (from the project root, with the project's Python)::

    python workflows/build.py                 # write the UI and API files
    python workflows/build.py --check         # exit 1 when the committed files differ from the description
    python workflows/build.py --core-from http://127.0.0.1:8188   # re-record core_nodes.json
    python workflows/build.py --thumbnails    # render <title>.jpg from real runs (--only NAME for one)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
API_DIR = HERE / "api"
CORE_NODES = API_DIR / "core_nodes.json"
REAL_DATA = ROOT.parent / "shared" / "data" / "real"

log = logging.getLogger("directanimator.workflows")

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")  # the frontend adds a control_after_generate widget after these INTs
SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")  # add an "upload" widget valued "image"
FRONTEND_ONLY = {"Note": ["text"], "MarkdownNote": ["text"]}  # nodes that live in the UI only, never in the API
# Combo widgets whose options are files on the user's machine (uploads, model folders): a workflow names a file
# that is not there until the user provides it.
FILE_WIDGETS = {
    ("LoadImage", "image"),
    ("LoadVideo", "file"),
    ("DirectAnimatorModelLoader", "backbone"),
    ("DirectAnimatorModelLoader", "checkpoint"),
    ("DirectAnimatorModelLoader", "diffusion_model"),
    ("DirectAnimatorModelLoader", "vae"),
    ("DirectAnimatorModelLoader", "clip_vision"),
    ("DirectAnimatorCueTriplet", "sam_checkpoint"),
    ("DirectAnimatorPersonMask", "sam_checkpoint"),
}
CORE_TYPES = ("LoadVideo", "GetVideoComponents", "LoadImage", "CreateVideo", "SaveVideo", "SaveImage",
              "PreviewImage", "ImageToMask", "GrowMask")


# ------------------------------------------------------------------------------------------- how the editor draws
# What ComfyUI's frontend (1.27.10: litegraph LGraphNode.computeSize, useNodeVideo, useImagePreviewWidget, the Note
# node's textarea) draws for a node. The layout below places nodes by it, and tests/test_workflows.py checks the
# written files against it.
TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT: the title bar is drawn above a node's pos
SLOT_HEIGHT = 20  # one row of input slots (not widgets) and outputs
WIDGET_HEIGHT = 24  # LiteGraph.NODE_WIDGET_HEIGHT and the 4 px computeSize adds after each widget
WIDGETS_PADDING = 8
NODE_MARGIN = 6  # computeSize's bottom margin
PREVIEW_SPACING = 4  # the preview is a widget too
VIDEO_PREVIEW_MIN = 64  # fitDimensionsToNodeWidth: a video spans the node's width at its aspect ratio
IMAGE_PREVIEW_MIN = 220  # the canvas image preview's minHeight; the image is fitted into the node below the widgets
VIDEO_PREVIEWS = ("LoadVideo", "SaveVideo")
IMAGE_PREVIEWS = ("LoadImage", "PreviewImage", "SaveImage", "DirectAnimatorSampler")  # the sampler: latent previews
USER_MEDIA = (1080, 1920)  # (width, height) assumed for a user's clip or picture: portrait phone footage
NOTE_CHAR_PX = 6.0  # the Note textarea draws 10 px monospace by default (Comfy.TextareaWidget.FontSize)
NOTE_LINE_PX = 14
NOTE_PADDING = 10
GAP = 40  # px between neighbouring nodes' drawn rectangles


def preview_height(kind: str, width: int, media: tuple[int, int] | None) -> int:
    """What a node's media preview adds below its widgets: `media` ``(width, height)`` drawn at the node's width."""
    if media is None or kind not in VIDEO_PREVIEWS + IMAGE_PREVIEWS:
        return 0
    least = VIDEO_PREVIEW_MIN if kind in VIDEO_PREVIEWS else IMAGE_PREVIEW_MIN
    return max(least, math.ceil(width * media[1] / media[0])) + PREVIEW_SPACING


def note_height(text: str, width: int) -> int:
    """Height a Note of `width` px needs to show `text` without scrolling."""
    per_line = int((width - 2 * NOTE_PADDING) // NOTE_CHAR_PX)
    lines = sum(max(1, len(textwrap.wrap(paragraph, per_line))) for paragraph in text.split("\n"))
    return lines * NOTE_LINE_PX + 2 * NOTE_PADDING


def sheet_size(rows: tuple[str, ...], frame: tuple[int, int], columns: int) -> tuple[int, int]:
    """``(width, height)`` of the contact sheet DirectAnimator Cue Preview draws: `rows` of `frame`-sized frames."""
    import torch

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from directanimator.cues.preview import contact_sheet

    sheet = contact_sheet([(name, torch.zeros(columns, frame[1], frame[0], 3)) for name in rows], columns=columns)
    return int(sheet.shape[2]), int(sheet.shape[1])


# ------------------------------------------------------------------------------------------- description
@dataclass
class Node:
    """One node: its widget values by input name, its links as ``input name -> (node id, output slot)``, and the
    ``(width, height)`` of the media its preview will show (videos, pictures, sheets, latent previews)."""

    id: int
    type: str
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)
    title: str | None = None
    width: int = 320
    media: tuple[int, int] | None = None
    color: tuple[str, str] | None = None  # (title bar, body): marks the node a user is meant to replace
    pos: tuple[int, int] = (0, 0)  # set by `arrange`


@dataclass(frozen=True)
class Workflow:
    """A workflow and the title it goes by. ComfyUI 0.3.64's template browser (frontend 1.27.10) reads nothing but
    the file name of a pack's template: it shows it as the title, and again with - and _ as spaces as the
    description, so the UI file is named by its title; the API copy keeps the short `name`."""

    title: str
    columns: Callable[[], list[list[Node]]]  # nodes top to bottom in columns left to right


DRIVING = "driving.mp4"  # what the user's own clip and picture are called until they upload theirs
REFERENCE = "reference.png"
BUNDLED = "directanimator-demo (bundled)"  # nodes.model.BUNDLED
NO_FOLDER = "none (use repo_id)"  # nodes.model.NO_FOLDER: the backbone comes from another input
REPLACE_ME = ("#353", "#232")  # the frontend's "green": the node to replace with the user's own

NOTE_A = ("Animate with the demo model bundled in this pack. Queue: nothing to download or copy.\n\n"
          "DirectAnimator Bundled Media loads the reference picture and the driving clip shipped with the pack "
          "(models/demo/demo). The cues are detected (mediapipe) from the clip, then the small model trained on the "
          "procedural world animates the puppet at 128x128 px on the CPU in seconds (one DDIM step, the setting it "
          "was validated with: it was trained on the noisiest timesteps only, so more steps make it worse). Save "
          "Video keeps the result; the cue sheet shows what the model was given.\n\n"
          "It knows only puppets; real people work through the same nodes with a real backbone (the long-video "
          "workflow). To feed it your own media anyway, replace Bundled Media with Load Video -> DirectAnimator "
          "Driving Video and Load Image.")
NOTE_B = ("Animate a reference with CogVideoX-5B-I2V and a DirectAnimator checkpoint.\n\n"
          "1. Put the diffusers folder CogVideoX-5b-I2V (transformer/, vae/, scheduler/) in models/diffusers and "
          "your DirectAnimator checkpoint in models/directanimator, press R to refresh, and pick both in "
          "DirectAnimator Model Loader.\n"
          "2. In Load Video (driving) and Load Image (reference), click 'choose file to upload' and pick your "
          "driving clip and your character.\n"
          "3. Queue. Save Video writes output/directanimator/animation*.mp4.\n\n"
          "CogVideoX-5B-I2V only takes 720x480 and learned 13 latent frames: the sampler runs windows of 12 latent "
          "frames (48 video frames) plus the reference, overlapping by 3, so any length works; memory depends on "
          "the window. Offload keeps the model on the CPU between runs.")
NOTE_C = ("Inspect the Driving Cue Triplet and tune the pose-cue cutoff.\n\n"
          "1. In Load Video (driving) and Load Image (reference), click 'choose file to upload' and pick your "
          "driving clip and your character.\n"
          "2. Queue.\n\n"
          "Save Image keeps the sheet of driving frames, pose cue, face cue and location cue. The two Preview "
          "Images side by side compare the pose cue at a low cutoff (0.05: hides more of the driver's clothing and "
          "identity) with a high one (0.30: keeps more motion detail). Pick a cutoff, then set it in the Cue "
          "Triplet of an animation workflow.")
NOTE_D = ("Bring your own person mask.\n\n"
          "1. In Load Video (driving) and Load Image (reference), click 'choose file to upload' and pick your "
          "driving clip and your character.\n"
          "2. Queue. As shipped, the mask comes from the green node, DirectAnimator Person Mask (mediapipe).\n"
          "3. Replace the green node with your mask pack's node (SAM2, rembg, BiRefNet, ...), fed with the frames "
          "of DirectAnimator Driving Video, and connect its MASK to Grow Mask. Any MASK batch with the driving "
          "frames' count and size works. A mask video works too: Load Video -> Get Video Components -> "
          "DirectAnimator Driving Video (the same start, stride and size) -> Convert Image to Mask.")
NOTE_E = ("Animate a reference with Wan2.1-I2V-14B and a DirectAnimator checkpoint, from ComfyUI's model folders.\n\n"
          "1. Put the files where ComfyUI keeps them: the transformer (wan2.1_i2v_480p_14B_bf16.safetensors, or the "
          "fp16 / fp8_e4m3fn file; not an fp8_scaled one) in models/diffusion_models, wan_2.1_vae.safetensors in "
          "models/vae, clip_vision_h.safetensors in models/clip_vision, and your DirectAnimator checkpoint trained on "
          "Wan2.1-I2V-14B in models/directanimator. Press R and pick them in DirectAnimator Model Loader.\n"
          "2. In Load Video (driving) and Load Image (reference), click 'choose file to upload' and pick your "
          "driving clip and your character.\n"
          "3. Queue. Save Video writes output/directanimator/wan*.mp4.\n\n"
          "The prompt is the checkpoint's null prompt; to add one, load umt5_xxl in models/text_encoders with "
          "CLIP Loader (type wan), encode it with CLIP Text Encode and connect it to Encode's text. Wan takes any "
          "length: the sampler runs windows of 20 latent frames (80 video frames, Wan's own 81-frame length with "
          "the reference) overlapping by 5, with UniPC as the Wan pipelines sample. 480x832 is Wan's 480P size. "
          "For 16-24 GB cards the loader stores the 14B weights in fp8 and keeps one block at a time on the GPU "
          "(about 8 GB planned, `python -m directanimator info --plan`); with more memory set offload to none.")
NOTE_WIDTH = 400

# the Cue Triplet's widget values, the same in every workflow
TRIPLET = {"cutoff": 0.12, "filter": "gaussian", "segmenter": "mediapipe", "sam_checkpoint": "none (use mediapipe)",
           "detector": "auto", "face_scale": 1.5, "grid_cell": 16, "grid_blur": 4.0, "anchor": "first"}
SHEET_COLUMNS = 6  # DirectAnimator Cue Preview's columns in every workflow
TRIPLET_ROWS = ("driving", "pose", "face", "location")  # a Cue Preview of a triplet and its driving frames
POSE_ROWS = ("driving", "pose")


def _frames(width: int, height: int, *, stride: int = 1, max_frames: int = 0, fps: float = 24.0) -> dict:
    """DirectAnimator Driving Video's widget values."""
    return {"width": width, "height": height, "resize": "pad", "start": 0, "stride": stride,
            "max_frames": max_frames, "frames_fps": fps}


def _animation(*, size: tuple[int, int], fps: float, sampler: dict, tiled: bool, prefix: str) -> list[list[Node]]:
    """The last three columns of an animation workflow (nodes 6-12): encode the cues (node 4) for the model (node 5)
    at the driving fps (node 2), sample, decode, save the video, and the cue sheet."""
    return [
        [Node(6, "DirectAnimatorEncode", {"fps": fps, "tiled": tiled},
              {"model": (5, 0), "cues": (4, 0), "fps": (2, 1)}),
         Node(7, "DirectAnimatorSampler", sampler, {"model": (5, 0), "conditioning": (6, 0)}, media=size)],
        [Node(8, "DirectAnimatorDecode", {"tiled": tiled}, {"model": (5, 0), "latent": (7, 0)}),
         Node(9, "CreateVideo", {"fps": fps}, {"images": (8, 0), "fps": (8, 1)}),
         Node(11, "DirectAnimatorCuePreview", {"columns": SHEET_COLUMNS}, {"cues": (4, 0), "frames": (2, 0)})],
        [Node(10, "SaveVideo", {"filename_prefix": prefix, "format": "auto", "codec": "auto"}, {"video": (9, 0)},
              media=size),
         Node(12, "PreviewImage", {}, {"images": (11, 0)}, width=400,
              media=sheet_size(TRIPLET_ROWS, size, SHEET_COLUMNS))],
    ]


def _animate_demo() -> list[list[Node]]:
    size = (128, 128)  # the demo model's working size (demo.json)
    return [
        [Node(13, "Note", {"text": NOTE_A}, title="About", width=NOTE_WIDTH),
         Node(1, "DirectAnimatorBundledMedia", {"reference": "demo/reference.png", "driving": "demo/driving.mp4"})],
        [Node(2, "DirectAnimatorDrivingVideo", _frames(*size, fps=12.0), {"frames": (1, 1), "frames_fps": (1, 2)}),
         Node(5, "DirectAnimatorModelLoader", {"backbone": BUNDLED, "repo_id": "", "checkpoint": BUNDLED,
                                               "precision": "fp32", "offload": "none"})],
        [Node(4, "DirectAnimatorCueTriplet", dict(TRIPLET), {"reference": (1, 0), "frames": (2, 0)})],
        # the demo model's sampling setting (demo.json)
        *_animation(size=size, fps=12.0, tiled=False, prefix="directanimator/demo",
                    sampler={"steps": 1, "guidance": 1.0, "seed": 0, "scheduler": "ddim", "window": 0, "overlap": 0,
                             "denoise": 1.0, "average_of": 4}),
    ]


def _animate_long() -> list[list[Node]]:
    size = (720, 480)
    return [
        [Node(13, "Note", {"text": NOTE_B}, title="About", width=NOTE_WIDTH),
         Node(1, "LoadVideo", {"file": DRIVING}, title="Load Video (driving)", media=USER_MEDIA),
         Node(3, "LoadImage", {"image": REFERENCE}, title="Load Image (reference)", media=USER_MEDIA)],
        [Node(2, "DirectAnimatorDrivingVideo", _frames(*size), {"video": (1, 0)}),
         Node(5, "DirectAnimatorModelLoader", {"backbone": "CogVideoX-5b-I2V", "repo_id": "",
                                               "checkpoint": "directanimator_cogvideox_5b_i2v.safetensors",
                                               "precision": "bf16", "offload": "model"})],
        [Node(4, "DirectAnimatorCueTriplet", dict(TRIPLET), {"reference": (3, 0), "frames": (2, 0)})],
        *_animation(size=size, fps=24.0, tiled=True, prefix="directanimator/animation",
                    sampler={"steps": 25, "guidance": 3.0, "seed": 42, "scheduler": "dpm", "window": 12,
                             "overlap": 3, "denoise": 1.0, "average_of": 1}),
    ]


def _animate_wan() -> list[list[Node]]:
    size = (480, 832)  # Wan2.1 480P, portrait for dancers
    return [
        [Node(13, "Note", {"text": NOTE_E}, title="About", width=NOTE_WIDTH),
         Node(1, "LoadVideo", {"file": DRIVING}, title="Load Video (driving)", media=USER_MEDIA),
         Node(3, "LoadImage", {"image": REFERENCE}, title="Load Image (reference)", media=USER_MEDIA)],
        [Node(2, "DirectAnimatorDrivingVideo", _frames(*size), {"video": (1, 0)}),
         Node(5, "DirectAnimatorModelLoader", {"backbone": NO_FOLDER, "repo_id": "",
                                               "checkpoint": "directanimator_wan2.1_i2v_14b.safetensors",
                                               "precision": "bf16", "offload": "blocks",
                                               "diffusion_model": "wan2.1_i2v_480p_14B_bf16.safetensors",
                                               "vae": "wan_2.1_vae.safetensors",
                                               "clip_vision": "clip_vision_h.safetensors", "weights": "fp8",
                                               "blocks_on_gpu": 1})],
        [Node(4, "DirectAnimatorCueTriplet", dict(TRIPLET), {"reference": (3, 0), "frames": (2, 0)})],
        *_animation(size=size, fps=24.0, tiled=True, prefix="directanimator/wan",
                    sampler={"steps": 30, "guidance": 3.0, "seed": 42, "scheduler": "unipc", "window": 20,
                             "overlap": 5, "denoise": 1.0, "average_of": 1}),
    ]


def _inspect_cues() -> list[list[Node]]:
    size = (512, 896)

    def pose(node_id: int, cutoff: float, label: str) -> Node:
        return Node(node_id, "DirectAnimatorPoseCue",
                    {"cutoff": cutoff, "filter": "gaussian", "blank_bad_frames": True},
                    {"frames": (2, 0), "mask": (9, 0)}, title=f"Pose Cue ({label} cutoff {cutoff:.2f})")

    def pose_sheet(node_id: int, cue: int) -> Node:
        return Node(node_id, "DirectAnimatorCuePreview", {"columns": SHEET_COLUMNS},
                    {"frames": (2, 0), "pose_cue": (cue, 0)})

    def preview(node_id: int, sheet: int, label: str) -> Node:
        return Node(node_id, "PreviewImage", {}, {"images": (sheet, 0)}, title=f"Preview Image ({label} cutoff)",
                    width=400, media=sheet_size(POSE_ROWS, size, SHEET_COLUMNS))

    return [
        [Node(16, "Note", {"text": NOTE_C}, title="About", width=NOTE_WIDTH),
         Node(1, "LoadVideo", {"file": DRIVING}, title="Load Video (driving)", media=USER_MEDIA),
         Node(3, "LoadImage", {"image": REFERENCE}, title="Load Image (reference)", media=USER_MEDIA)],
        [Node(2, "DirectAnimatorDrivingVideo", _frames(*size, stride=2, max_frames=49), {"video": (1, 0)}),
         Node(9, "DirectAnimatorPersonMask", {"segmenter": "mediapipe", "sam_checkpoint": "none (use mediapipe)"},
              {"frames": (2, 0)}),
         pose(10, 0.05, "low"), pose(11, 0.3, "high")],
        [Node(4, "DirectAnimatorCueTriplet", dict(TRIPLET), {"reference": (3, 0), "frames": (2, 0)}),
         Node(5, "DirectAnimatorCuePreview", {"columns": SHEET_COLUMNS}, {"cues": (4, 0), "frames": (2, 0)}),
         Node(7, "CreateVideo", {"fps": 24.0}, {"images": (4, 1), "fps": (2, 1)}),
         pose_sheet(12, 10), pose_sheet(14, 11)],
        [Node(6, "SaveImage", {"filename_prefix": "directanimator/cue_sheet"}, {"images": (5, 0)}, width=400,
              media=sheet_size(TRIPLET_ROWS, size, SHEET_COLUMNS)),
         Node(8, "SaveVideo", {"filename_prefix": "directanimator/pose_cue", "format": "auto", "codec": "auto"},
              {"video": (7, 0)}, media=size)],
        [preview(13, 12, "low")],
        [preview(15, 14, "high")],
    ]


def _own_mask() -> list[list[Node]]:
    size = (512, 896)
    return [
        [Node(12, "Note", {"text": NOTE_D}, title="About", width=NOTE_WIDTH),
         Node(1, "LoadVideo", {"file": DRIVING}, title="Load Video (driving)", media=USER_MEDIA),
         Node(3, "LoadImage", {"image": REFERENCE}, title="Load Image (reference)", media=USER_MEDIA)],
        [Node(2, "DirectAnimatorDrivingVideo", _frames(*size, stride=2, max_frames=49), {"video": (1, 0)}),
         Node(4, "DirectAnimatorPersonMask", {"segmenter": "mediapipe", "sam_checkpoint": "none (use mediapipe)"},
              {"frames": (2, 0)}, title="Person Mask (replace with your mask node)", color=REPLACE_ME),
         Node(5, "GrowMask", {"expand": 4, "tapered_corners": True}, {"mask": (4, 0)})],
        [Node(6, "DirectAnimatorCueTriplet", dict(TRIPLET), {"reference": (3, 0), "frames": (2, 0), "mask": (5, 0)}),
         Node(7, "DirectAnimatorPoseCue", {"cutoff": 0.12, "filter": "gaussian", "blank_bad_frames": True},
              {"frames": (2, 0), "mask": (5, 0)})],
        [Node(8, "DirectAnimatorCuePreview", {"columns": SHEET_COLUMNS}, {"cues": (6, 0), "frames": (2, 0)}),
         Node(10, "CreateVideo", {"fps": 24.0}, {"images": (7, 0), "fps": (2, 1)})],
        [Node(9, "SaveImage", {"filename_prefix": "directanimator/own_mask_sheet"}, {"images": (8, 0)}, width=400,
              media=sheet_size(TRIPLET_ROWS, size, SHEET_COLUMNS)),
         Node(11, "SaveVideo", {"filename_prefix": "directanimator/own_mask_pose", "format": "auto", "codec": "auto"},
              {"video": (10, 0)}, media=size)],
    ]


WORKFLOWS = {
    "animate_bundled_demo_model": Workflow("Animate the bundled demo model on the CPU", _animate_demo),
    "animate_cogvideox_5b_i2v_long_video": Workflow("Animate a long video with CogVideoX-5B-I2V", _animate_long),
    "animate_wan21_i2v_14b_comfyui_files": Workflow("Animate with Wan2.1-I2V-14B files",
                                                    _animate_wan),
    "inspect_cue_triplet_tune_cutoff": Workflow("Inspect the cue triplet and tune the cutoff", _inspect_cues),
    "bring_your_own_person_mask": Workflow("Bring your own person mask", _own_mask),
}


def ui_path(name: str) -> Path:
    """The UI file of workflow `name`: the template browser's title."""
    return HERE / f"{WORKFLOWS[name].title}.json"


def thumbnail_path(name: str) -> Path:
    return HERE / f"{WORKFLOWS[name].title}.jpg"  # the frontend asks for /api/workflow_templates/<pack>/<title>.jpg


def api_path(name: str) -> Path:
    return API_DIR / f"{name}.json"


def nodes_of(columns: list[list[Node]]) -> list[Node]:
    return sorted((node for column in columns for node in column), key=lambda n: n.id)


# ------------------------------------------------------------------------------------------- node definitions
def pack_definitions() -> dict[str, dict]:
    """This pack's node definitions in ``/object_info`` form, from the node classes themselves."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    out = {}
    for name, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        inputs = {section: {k: list(v) for k, v in spec.get(section, {}).items()} for section in ("required", "optional")}
        out[name] = {
            "input": inputs,
            "input_order": {section: list(spec.get(section, {})) for section in ("required", "optional")},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "display_name": NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
            "category": cls.CATEGORY,
        }
    return out


def core_definitions() -> dict[str, dict]:
    """The recorded definitions of the core nodes the workflows use."""
    return json.loads(CORE_NODES.read_text())


def definitions() -> dict[str, dict]:
    return {**core_definitions(), **pack_definitions()}


def input_spec(definition: dict, name: str) -> tuple[Any, dict]:
    """``(type, options)`` of input `name`; type is "COMBO" for choice lists (options then hold "options")."""
    for section in ("required", "optional"):
        entry = definition["input"].get(section, {}).get(name)
        if entry is not None:
            kind = entry[0]
            options = dict(entry[1]) if len(entry) > 1 and entry[1] else {}
            if isinstance(kind, list):
                options["options"] = list(kind)
                kind = "COMBO"
            return kind, options
    raise KeyError(name)


def ordered_inputs(definition: dict) -> list[tuple[str, str]]:
    """``(name, section)`` in the order the frontend creates slots and widgets: required, then optional."""
    order = definition.get("input_order") or {s: list(definition["input"].get(s, {})) for s in ("required", "optional")}
    return [(name, section) for section in ("required", "optional") for name in order.get(section, [])]


def is_widget(kind: Any, options: dict) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput")


def widget_extras(name: str, kind: Any, options: dict) -> int:
    """Extra values the frontend stores after this widget's own: seed control, upload button."""
    if kind == "INT" and options.get("control_after_generate", name in SEED_NAMES):
        return 1
    if kind == "COMBO" and any(options.get(key) for key in UPLOAD_OPTIONS):
        return 1
    return 0


def default_value(kind: Any, options: dict) -> Any:
    if "default" in options:
        return options["default"]
    if kind == "COMBO":
        return options["options"][0] if options.get("options") else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]


# ------------------------------------------------------------------------------------------- the two formats
def to_ui(columns: list[list[Node]], defs: dict[str, dict]) -> dict:
    """The frontend's saved-workflow format (version 0.4), nodes placed by `arrange`."""
    nodes = nodes_of(columns)
    by_id = {n.id: n for n in nodes}
    links: list[list] = []
    link_of: dict[tuple[int, str], int] = {}
    out_links: dict[tuple[int, int], list[int]] = {}
    for node in nodes:
        for name, (src, slot) in node.links.items():
            link_id = len(links) + 1
            kind = defs[by_id[src].type]["output"][slot]
            links.append([link_id, src, slot, node.id, None, kind])
            link_of[(node.id, name)] = link_id
            out_links.setdefault((src, slot), []).append(link_id)
    parts = {}
    for node in nodes:
        if node.type in FRONTEND_ONLY:
            values = [node.widgets[k] for k in FRONTEND_ONLY[node.type]]
            parts[node.id] = ([], [], values, note_height(node.widgets["text"], node.width))
            continue
        definition = defs[node.type]
        inputs, values = [], []
        for name, _section in ordered_inputs(definition):
            kind, options = input_spec(definition, name)
            linked = link_of.get((node.id, name))
            if is_widget(kind, options):
                values.append(node.widgets.get(name, default_value(kind, options)))
                if widget_extras(name, kind, options):
                    values.append("fixed" if kind == "INT" else "image")  # a shipped seed stays as shipped
                if linked is not None:
                    inputs.append({"name": name, "type": kind, "widget": {"name": name}, "link": linked})
            else:
                inputs.append({"name": name, "type": kind, "link": linked})
            if linked is not None:
                links[linked - 1][4] = len(inputs) - 1
        outputs = [{"name": oname, "type": otype, "links": out_links.get((node.id, i), []), "slot_index": i}
                   for i, (otype, oname) in enumerate(zip(definition["output"], definition["output_name"]))]
        slots = max(1, len(outputs), sum(1 for i in inputs if "widget" not in i))
        height = (slots * SLOT_HEIGHT + len(values) * WIDGET_HEIGHT + WIDGETS_PADDING + NODE_MARGIN
                  + preview_height(node.type, node.width, node.media))
        parts[node.id] = (inputs, outputs, values, height)
    arrange(columns, {node_id: part[3] for node_id, part in parts.items()})
    order = _topological(nodes)
    return {
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": len(links),
        "nodes": [_ui_node(node, order, *parts[node.id]) for node in nodes],
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}},
        "version": 0.4,
    }


def arrange(columns: list[list[Node]], heights: dict[int, int]) -> None:
    """Set each node's pos: columns left to right, nodes top to bottom, `GAP` px between drawn rectangles (title
    bar included; a column is as wide as its widest node)."""
    x = 0
    for column in columns:
        y = TITLE_HEIGHT
        for node in column:
            node.pos = (x, y)
            y += heights[node.id] + GAP + TITLE_HEIGHT
        x += max(node.width for node in column) + GAP


def _ui_node(node: Node, order: dict[int, int], inputs, outputs, values, height: int) -> dict:
    out = {
        "id": node.id,
        "type": node.type,
        "pos": list(node.pos),
        "size": [node.width, height],
        "flags": {},
        "order": order[node.id],
        "mode": 0,
        "inputs": inputs,
        "outputs": outputs,
        "properties": {"Node name for S&R": node.type},
        "widgets_values": values,
    }
    if node.title:
        out["title"] = node.title
    if node.color:
        out["color"], out["bgcolor"] = node.color
    return out


def _topological(nodes: list[Node]) -> dict[int, int]:
    done: dict[int, int] = {}
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(src in done for src, _ in n.links.values())]
        if not ready:
            raise ValueError(f"cycle among nodes {[n.id for n in pending]}")
        for n in ready:
            done[n.id] = len(done)
        pending = [n for n in pending if n.id not in done]
    return done


def to_api(nodes: list[Node], defs: dict[str, dict]) -> dict:
    """The ``POST /prompt`` format: ``{id: {class_type, inputs, _meta}}``, frontend-only nodes left out."""
    prompt = {}
    for node in nodes:
        if node.type in FRONTEND_ONLY:
            continue
        definition = defs[node.type]
        inputs: dict[str, Any] = {}
        for name, _section in ordered_inputs(definition):
            kind, options = input_spec(definition, name)
            if name in node.links:
                src, slot = node.links[name]
                inputs[name] = [str(src), slot]
            elif is_widget(kind, options):
                inputs[name] = node.widgets.get(name, default_value(kind, options))
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                "_meta": {"title": node.title or definition.get("display_name", node.type)}}
    return prompt


def render(defs: dict[str, dict] | None = None) -> dict[Path, str]:
    """Every generated file and its text."""
    defs = defs or definitions()
    files = {}
    for name, workflow in WORKFLOWS.items():
        columns = workflow.columns()
        files[ui_path(name)] = json.dumps(to_ui(columns, defs), indent=2) + "\n"
        files[api_path(name)] = json.dumps(to_api(nodes_of(columns), defs), indent=2) + "\n"
    return files


# ------------------------------------------------------------------------------------------- recording, thumbnails
def record_core(url: str) -> None:
    """Write core_nodes.json from a running ComfyUI's /object_info (only the fields the workflows rely on)."""
    import urllib.request

    with urllib.request.urlopen(f"{url.rstrip('/')}/object_info", timeout=60) as response:
        info = json.load(response)
    keep = ("input", "input_order", "output", "output_name", "display_name", "category")
    core = {}
    for name in CORE_TYPES:
        core[name] = {k: info[name][k] for k in keep if k in info[name]}
        for section in core[name]["input"].values():  # upload lists depend on the machine's input folder
            for entry in section.values():
                if isinstance(entry, list) and len(entry) > 1 and isinstance(entry[1], dict) and \
                        any(entry[1].get(key) for key in UPLOAD_OPTIONS):
                    if isinstance(entry[0], list):
                        entry[0] = []
                    if "options" in entry[1]:
                        entry[1]["options"] = []
    CORE_NODES.write_text(json.dumps(core, indent=2, sort_keys=True) + "\n")


THUMB_WIDTH = 512


def render_thumbnails(only: list[str] | None = None) -> None:
    """Render each workflow's thumbnail (or those named in `only`) from a real run of what it shows: the bundled demo
    model's own sheet, the cue triplet, the pose cue at a low and a high cutoff, the brought mask and its cues."""
    import torch
    from PIL import Image

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from directanimator.cues.preview import contact_sheet, location_overlay
    from directanimator.video import read_image, read_video
    from nodes.cues import DirectAnimatorCuePreview, DirectAnimatorCueTriplet, DirectAnimatorPersonMask, \
        DirectAnimatorPoseCue

    if not REAL_DATA.is_dir():
        raise SystemExit(f"real footage not found at {REAL_DATA}; thumbnails are rendered from it.")
    reference = read_image(REAL_DATA / "ref_anime_character.jpg")
    columns = 4  # frames per row: the thumbnail is seen at 256 px

    def clip(size: tuple[int, int]) -> torch.Tensor:
        return read_video(REAL_DATA / "dance_1080x1920_24fps.mp4", stride=8, max_frames=25, size=size).frames

    def triplet(frames: torch.Tensor, mask: torch.Tensor | None = None):
        return DirectAnimatorCueTriplet().run(reference, frames, 0.12, "gaussian", "mediapipe", "none (use mediapipe)",
                                              "auto", 1.5, 16, 4.0, mask=mask)[0]

    def cue_sheet() -> torch.Tensor:
        frames = clip((480, 720))
        return DirectAnimatorCuePreview().run(columns, cues=triplet(frames), frames=frames)[0]

    def wan_cue_sheet() -> torch.Tensor:
        """The cue triplet at the Wan workflow's portrait 480x832."""
        frames = clip((832, 480))
        return DirectAnimatorCuePreview().run(columns, cues=triplet(frames), frames=frames)[0]

    def cutoff_sheet() -> torch.Tensor:
        """Driving frames, then the pose cue at the workflow's low (coarse) and high (detailed) cutoff."""
        frames = clip((896, 512))
        mask = DirectAnimatorPersonMask().run(frames, "mediapipe", "none (use mediapipe)")[0]
        poses = [DirectAnimatorPoseCue().run(frames, cutoff, "gaussian", True, mask=mask)[0] for cutoff in (0.05, 0.3)]
        return contact_sheet([("driving", frames), ("coarse", poses[0]), ("detail", poses[1])], columns=columns)

    def mask_sheet() -> torch.Tensor:
        """Driving frames, the brought person mask (mediapipe's grown by 4 px, as the workflow's Grow Mask), and the
        pose and location cues made with it."""
        frames = clip((896, 512))
        person = DirectAnimatorPersonMask().run(frames, "mediapipe", "none (use mediapipe)")[0]
        person = torch.nn.functional.max_pool2d(person[:, None], 9, 1, 4)[:, 0]
        cues = triplet(frames, person)
        return contact_sheet([("driving", frames), ("person", person), ("pose", cues.pose),
                              ("location", location_overlay(cues))], columns=columns)

    def demo_sheet() -> torch.Tensor:
        """The bundled model's own demo run: reference, driving frames, cues, result and ground truth."""
        import tempfile

        from directanimator.demo import run_demo

        bundled = ROOT / "models" / "demo"
        with tempfile.TemporaryDirectory() as tmp:
            run_demo(bundled, out=tmp)
            return read_image(Path(tmp) / "sheet.png")

    makers = {
        "animate_bundled_demo_model": demo_sheet,
        "animate_cogvideox_5b_i2v_long_video": cue_sheet,
        "animate_wan21_i2v_14b_comfyui_files": wan_cue_sheet,
        "inspect_cue_triplet_tune_cutoff": cutoff_sheet,
        "bring_your_own_person_mask": mask_sheet,
    }
    unknown = sorted(set(only or ()) - set(makers))
    if unknown:
        raise SystemExit(f"--only {unknown}: no such workflow; choose from {', '.join(makers)}.")
    for name, make in makers.items():
        if only and name not in only:
            continue
        sheet = make()
        image = Image.fromarray(sheet[0].clamp(0, 1).mul(255).byte().numpy())
        image = image.resize((THUMB_WIDTH, round(image.height * THUMB_WIDTH / image.width)), Image.LANCZOS)
        path = thumbnail_path(name)
        image.save(path, quality=80, optimize=True)
        log.info("wrote %s (%dx%d)", path.relative_to(ROOT), image.width, image.height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    parser.add_argument("--core-from", metavar="URL", help="re-record core_nodes.json from a running ComfyUI")
    parser.add_argument("--thumbnails", action="store_true", help="render the thumbnails from real runs")
    parser.add_argument("--only", action="append", default=None, metavar="NAME",
                        help="with --thumbnails: only this workflow's (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.core_from:
        record_core(args.core_from)
    if args.thumbnails:
        render_thumbnails(args.only)
        return 0
    stale = []
    for path, text in render().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        log.error("out of date: %s (run python workflows/build.py)", path.relative_to(ROOT))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
