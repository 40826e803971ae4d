"""The example workflows, described once and written in both of ComfyUI's formats, so the two cannot drift.

- ``workflows/<name>.json``: the UI format the frontend saves and loads by drag and drop. ComfyUI's template
  browser lists a pack's ``workflows/*.json`` (app/custom_node_manager.py scans ``example_workflows``, ``example``,
  ``examples``, ``workflow`` and ``workflows``; only top-level files) and shows ``<name>.jpg`` beside each as its
  thumbnail (the frontend asks for ``/api/workflow_templates/<pack>/<name>.jpg``).
- ``workflows/api/<name>.json``: the API format ``POST /prompt`` takes; the tests run these.
- ``workflows/api/core_nodes.json``: the definitions of the core ComfyUI nodes the workflows use, recorded from a
  running server's ``/object_info`` (the integration tests check that it still matches).

Usage (from the project root, with the project's Python)::

    python workflows/build.py                 # write the UI and API files
    python workflows/build.py --check         # exit 1 when the committed files differ from the description
    python workflows/build.py --core-from http://127.0.0.1:8188   # re-record core_nodes.json
    python workflows/build.py --thumbnails    # render <name>.jpg from real runs (--only NAME for one)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    ("DirectAnimatorCueTriplet", "sam_checkpoint"),
    ("DirectAnimatorPersonMask", "sam_checkpoint"),
}
CORE_TYPES = ("LoadVideo", "GetVideoComponents", "LoadImage", "CreateVideo", "SaveVideo", "SaveImage",
              "PreviewImage", "ImageToMask", "GrowMask")


# ------------------------------------------------------------------------------------------- description
@dataclass
class Node:
    """One node: its widget values by input name and its links as ``input name -> (node id, output slot)``."""

    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)
    title: str | None = None
    width: int = 320


REFERENCE = "reference.png"
DRIVING = "driving.mp4"

DEMO_REFERENCE = "directanimator_demo_reference.png"
DEMO_DRIVING = "directanimator_demo_driving.mp4"
BUNDLED = "directanimator-demo (bundled)"  # nodes.model.BUNDLED

NOTE_A = ("Animate with the demo model bundled in this pack.\n\n"
          "1. Copy the bundled inputs into ComfyUI/input: models/demo/demo/driving.mp4 of this pack as "
          f"{DEMO_DRIVING} and models/demo/demo/reference.png as {DEMO_REFERENCE} (or load any clip and picture).\n"
          "2. Queue. The cues are detected (mediapipe) from the loaded video, then the small model trained on the "
          "procedural world animates the puppet at 128x128 px on the CPU in seconds (one DDIM step, the "
          "setting it was validated with: it was trained on the noisiest timesteps only, so more steps make it "
          "worse).\n"
          "It knows only puppets; real people work through the same nodes with a real backbone (the long-video "
          "workflow).")
NOTE_B = ("Animate a reference with CogVideoX-5B-I2V and a DirectAnimator checkpoint.\n\n"
          "1. Put the diffusers folder CogVideoX-5b-I2V (transformer/, vae/, scheduler/) in models/diffusers and "
          "the DirectAnimator checkpoint in models/directanimator.\n"
          "2. Load your driving video and reference image.\n"
          "CogVideoX-5B-I2V only takes 720x480 and learned 13 latent frames: the sampler runs windows of 12 latent "
          "frames (48 video frames) plus the reference, overlapping by 3, so any length works; memory depends on "
          "the window. Offload keeps the model on the CPU between runs.")
NOTE_C = ("Inspect the Driving Cue Triplet and tune the pose-cue cutoff.\n\n"
          "The sheet shows driving frames, pose cue, face cue and location cue. The two pose cues below compare a "
          "low cutoff (hides more of the driver's clothing and identity) with a high one (keeps more motion "
          "detail). Pick a cutoff, then use it in the Cue Triplet of the animation workflow.")
NOTE_D = ("Bring your own person mask.\n\n"
          "Any MASK batch with the driving frames' count and size can replace the built-in segmentation: replace "
          "Load Video (mask) -> Get Video Components -> Driving Video -> Convert Image to Mask with your mask "
          "pack's node (SAM2, rembg, BiRefNet, ...) fed with the driving frames. Keep start, stride and size equal "
          "in both Driving Video nodes so the frames and the mask line up.")


# the Cue Triplet's widget values, the same in every workflow
TRIPLET = {"cutoff": 0.12, "filter": "gaussian", "segmenter": "mediapipe", "sam_checkpoint": "none (use mediapipe)",
           "detector": "auto", "face_scale": 1.5, "grid_cell": 16, "grid_blur": 4.0, "anchor": "first"}


def _animation(note: str, *, fps: float, loader: dict, sampler: dict, tiled: bool, prefix: str) -> list[Node]:
    """Nodes 5-13 of an animation workflow: load the model, encode the cues (node 4) at the driving fps (node 2),
    sample, decode, save the video, preview the cues, and the note."""
    return [
        Node(5, "DirectAnimatorModelLoader", (720, 520), loader),
        Node(6, "DirectAnimatorEncode", (1080, 0), {"fps": fps, "tiled": tiled},
             {"model": (5, 0), "cues": (4, 0), "fps": (2, 1)}),
        Node(7, "DirectAnimatorSampler", (1080, 260), sampler, {"model": (5, 0), "conditioning": (6, 0)}),
        Node(8, "DirectAnimatorDecode", (1440, 0), {"tiled": tiled}, {"model": (5, 0), "latent": (7, 0)}),
        Node(9, "CreateVideo", (1440, 200), {"fps": fps}, {"images": (8, 0), "fps": (8, 1)}),
        Node(10, "SaveVideo", (1800, 200),
             {"filename_prefix": prefix, "format": "auto", "codec": "auto"}, {"video": (9, 0)}),
        Node(11, "DirectAnimatorCuePreview", (1080, 700), {"columns": 6}, {"cues": (4, 0), "frames": (2, 0)}),
        Node(12, "PreviewImage", (1440, 700), {}, {"images": (11, 0)}),
        Node(13, "Note", (0, 820), {"text": note}, title="About", width=400),
    ]


def _animate_demo() -> list[Node]:
    return [
        Node(1, "LoadVideo", (0, 0), {"file": DEMO_DRIVING}, title="Load Video (driving)"),
        Node(2, "DirectAnimatorDrivingVideo", (360, 0),
             {"width": 128, "height": 128, "resize": "pad", "start": 0, "stride": 1, "max_frames": 0,
              "frames_fps": 12.0}, {"video": (1, 0)}),
        Node(3, "LoadImage", (0, 420), {"image": DEMO_REFERENCE}, title="Load Image (reference)"),
        Node(4, "DirectAnimatorCueTriplet", (720, 0), dict(TRIPLET), {"reference": (3, 0), "frames": (2, 0)}),
        *_animation(NOTE_A, fps=12.0, tiled=False, prefix="directanimator/demo",
                    loader={"backbone": BUNDLED, "repo_id": "", "checkpoint": BUNDLED, "precision": "fp32",
                            "offload": False},
                    # the demo model's sampling setting (demo.json)
                    sampler={"steps": 1, "guidance": 1.0, "seed": 0, "scheduler": "ddim", "window": 0, "overlap": 0,
                             "denoise": 1.0, "average_of": 4}),
    ]


def _animate_long() -> list[Node]:
    return [
        Node(1, "LoadVideo", (0, 0), {"file": DRIVING}, title="Load Video (driving)"),
        Node(2, "DirectAnimatorDrivingVideo", (360, 0),
             {"width": 720, "height": 480, "resize": "pad", "start": 0, "stride": 1, "max_frames": 0,
              "frames_fps": 24.0}, {"video": (1, 0)}),
        Node(3, "LoadImage", (0, 420), {"image": REFERENCE}, title="Load Image (reference)"),
        Node(4, "DirectAnimatorCueTriplet", (720, 0), dict(TRIPLET), {"reference": (3, 0), "frames": (2, 0)}),
        *_animation(NOTE_B, fps=24.0, tiled=True, prefix="directanimator/animation",
                    loader={"backbone": "CogVideoX-5b-I2V", "repo_id": "",
                            "checkpoint": "directanimator_cogvideox_5b_i2v.safetensors", "precision": "bf16",
                            "offload": True},
                    sampler={"steps": 25, "guidance": 3.0, "seed": 42, "scheduler": "dpm", "window": 12,
                             "overlap": 3, "denoise": 1.0, "average_of": 1}),
    ]


def _inspect_cues() -> list[Node]:
    return [
        Node(1, "LoadVideo", (0, 0), {"file": DRIVING}, title="Load Video (driving)"),
        Node(2, "DirectAnimatorDrivingVideo", (360, 0),
             {"width": 512, "height": 896, "resize": "pad", "start": 0, "stride": 2, "max_frames": 49,
              "frames_fps": 24.0}, {"video": (1, 0)}),
        Node(3, "LoadImage", (0, 420), {"image": REFERENCE}, title="Load Image (reference)"),
        Node(4, "DirectAnimatorCueTriplet", (720, 0), dict(TRIPLET), {"reference": (3, 0), "frames": (2, 0)}),
        Node(5, "DirectAnimatorCuePreview", (1080, 0), {"columns": 6}, {"cues": (4, 0), "frames": (2, 0)}),
        Node(6, "SaveImage", (1440, 0), {"filename_prefix": "directanimator/cue_sheet"}, {"images": (5, 0)}),
        Node(7, "CreateVideo", (1080, 300), {"fps": 24.0}, {"images": (4, 1), "fps": (2, 1)}),
        Node(8, "SaveVideo", (1440, 380),
             {"filename_prefix": "directanimator/pose_cue", "format": "auto", "codec": "auto"}, {"video": (7, 0)}),
        Node(9, "DirectAnimatorPersonMask", (360, 520),
             {"segmenter": "mediapipe", "sam_checkpoint": "none (use mediapipe)"}, {"frames": (2, 0)}),
        Node(10, "DirectAnimatorPoseCue", (720, 620),
             {"cutoff": 0.05, "filter": "gaussian", "blank_bad_frames": True}, {"frames": (2, 0), "mask": (9, 0)},
             title="Pose Cue (low cutoff 0.05)"),
        Node(11, "DirectAnimatorPoseCue", (720, 860),
             {"cutoff": 0.3, "filter": "gaussian", "blank_bad_frames": True}, {"frames": (2, 0), "mask": (9, 0)},
             title="Pose Cue (high cutoff 0.30)"),
        Node(12, "DirectAnimatorCuePreview", (1080, 620), {"columns": 6}, {"frames": (2, 0), "pose_cue": (10, 0)}),
        Node(13, "PreviewImage", (1440, 620), {}, {"images": (12, 0)}),
        Node(14, "DirectAnimatorCuePreview", (1080, 860), {"columns": 6}, {"frames": (2, 0), "pose_cue": (11, 0)}),
        Node(15, "PreviewImage", (1440, 860), {}, {"images": (14, 0)}),
        Node(16, "Note", (0, 820), {"text": NOTE_C}, title="About", width=400),
    ]


def _own_mask() -> list[Node]:
    frames = {"width": 512, "height": 896, "resize": "pad", "start": 0, "stride": 2, "max_frames": 49,
              "frames_fps": 24.0}
    return [
        Node(1, "LoadVideo", (0, 0), {"file": DRIVING}, title="Load Video (driving)"),
        Node(2, "GetVideoComponents", (360, 0), {}, {"video": (1, 0)}),
        Node(3, "DirectAnimatorDrivingVideo", (720, 0), dict(frames),
             {"frames": (2, 0), "frames_fps": (2, 2)}),
        Node(4, "LoadVideo", (0, 480), {"file": "driving_mask.mp4"}, title="Load Video (person mask, white = person)"),
        Node(5, "GetVideoComponents", (360, 480), {}, {"video": (4, 0)}),
        Node(6, "DirectAnimatorDrivingVideo", (720, 480), dict(frames),
             {"frames": (5, 0), "frames_fps": (5, 2)}, title="DirectAnimator Driving Video (mask)"),
        Node(7, "ImageToMask", (1080, 480), {"channel": "red"}, {"image": (6, 0)}),
        Node(8, "GrowMask", (1080, 620), {"expand": 4, "tapered_corners": True}, {"mask": (7, 0)}),
        Node(9, "LoadImage", (0, 960), {"image": REFERENCE}, title="Load Image (reference)"),
        Node(10, "DirectAnimatorCueTriplet", (1440, 0), dict(TRIPLET),
             {"reference": (9, 0), "frames": (3, 0), "mask": (8, 0)}),
        Node(11, "DirectAnimatorPoseCue", (1440, 560), {"cutoff": 0.12, "filter": "gaussian", "blank_bad_frames": True},
             {"frames": (3, 0), "mask": (8, 0)}),
        Node(12, "DirectAnimatorCuePreview", (1800, 0), {"columns": 6}, {"cues": (10, 0), "frames": (3, 0)}),
        Node(13, "SaveImage", (2160, 0), {"filename_prefix": "directanimator/own_mask_sheet"}, {"images": (12, 0)}),
        Node(14, "CreateVideo", (1800, 560), {"fps": 24.0}, {"images": (11, 0), "fps": (3, 1)}),
        Node(15, "SaveVideo", (2160, 560),
             {"filename_prefix": "directanimator/own_mask_pose", "format": "auto", "codec": "auto"},
             {"video": (14, 0)}),
        Node(16, "Note", (360, 960), {"text": NOTE_D}, title="About", width=400),
    ]


WORKFLOWS = {
    "animate_bundled_demo_model": _animate_demo,
    "animate_cogvideox_5b_i2v_long_video": _animate_long,
    "inspect_cue_triplet_tune_cutoff": _inspect_cues,
    "bring_your_own_person_mask": _own_mask,
}


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
def to_ui(nodes: list[Node], defs: dict[str, dict]) -> dict:
    """The frontend's saved-workflow format (version 0.4)."""
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
    order = _topological(nodes)
    ui_nodes = []
    for node in nodes:
        if node.type in FRONTEND_ONLY:
            values = [node.widgets[k] for k in FRONTEND_ONLY[node.type]]
            ui_nodes.append(_ui_node(node, order, [], [], values, 60 + 12 * node.widgets["text"].count("\n")))
            continue
        definition = defs[node.type]
        inputs, values = [], []
        for name, _section in ordered_inputs(definition):
            kind, options = input_spec(definition, name)
            linked = link_of.get((node.id, name))
            if is_widget(kind, options):
                values.append(node.widgets.get(name, default_value(kind, options)))
                if widget_extras(name, kind, options):
                    values.append("randomize" if kind == "INT" else "image")
                if linked is not None:
                    inputs.append({"name": name, "type": kind, "widget": {"name": name}, "link": linked})
            else:
                inputs.append({"name": name, "type": kind, "link": linked})
            if linked is not None:
                links[linked - 1][4] = len(inputs) - 1
        outputs = [{"name": oname, "type": otype, "links": out_links.get((node.id, i), []), "slot_index": i}
                   for i, (otype, oname) in enumerate(zip(definition["output"], definition["output_name"]))]
        height = 46 + 22 * max(len(inputs), len(outputs)) + 24 * len(values)
        ui_nodes.append(_ui_node(node, order, inputs, outputs, values, height))
    return {
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}},
        "version": 0.4,
    }


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
    for name, make in WORKFLOWS.items():
        nodes = make()
        files[HERE / f"{name}.json"] = json.dumps(to_ui(nodes, defs), indent=2) + "\n"
        files[API_DIR / f"{name}.json"] = json.dumps(to_api(nodes, defs), indent=2) + "\n"
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
    """Render each workflow's thumbnail (or those named in `only`) from a real run: the cue branch on the real
    footage, or the bundled demo model's own sheet."""
    import torch
    from PIL import Image

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from directanimator.video import read_image, read_video
    from nodes.cues import DirectAnimatorCuePreview, DirectAnimatorCueTriplet, DirectAnimatorPersonMask

    if not REAL_DATA.is_dir():
        raise SystemExit(f"real footage not found at {REAL_DATA}; thumbnails are rendered from it.")
    reference = read_image(REAL_DATA / "ref_anime_character.jpg")
    triplet = DirectAnimatorCueTriplet()

    def cue_sheet(size: tuple[int, int], mask: bool) -> torch.Tensor:
        clip = read_video(REAL_DATA / "dance_1080x1920_24fps.mp4", stride=8, max_frames=25, size=size)
        person = DirectAnimatorPersonMask().run(clip.frames, "mediapipe", "none (use mediapipe)")[0] if mask else None
        if person is not None:  # a mask from "another pack": the mediapipe mask, grown by 4 px
            person = torch.nn.functional.max_pool2d(person[:, None], 9, 1, 4)[:, 0]
        cues = triplet.run(reference, clip.frames, 0.12, "gaussian", "mediapipe", "none (use mediapipe)", "auto",
                           1.5, 16, 4.0, mask=person)[0]
        return DirectAnimatorCuePreview().run(4, cues=cues, frames=clip.frames)[0]

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
        "animate_cogvideox_5b_i2v_long_video": lambda: cue_sheet((480, 720), mask=False),
        "inspect_cue_triplet_tune_cutoff": lambda: cue_sheet((896, 512), mask=False),
        "bring_your_own_person_mask": lambda: cue_sheet((896, 512), mask=True),
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
        image.save(HERE / f"{name}.jpg", quality=80, optimize=True)
        log.info("wrote %s (%dx%d)", HERE / f"{name}.jpg", image.width, image.height)


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
