"""The example workflows load in ComfyUI's frontend and validate against the node definitions they use.

Definitions: this pack's from its node classes; core ComfyUI nodes' from workflows/api/core_nodes.json, recorded
from a real server (tests/integration checks the recording against the live /object_info).
"""

import copy
import hashlib
import inspect
import itertools
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from directanimator.errors import InputError
from nodes import NODE_CLASS_MAPPINGS
from nodes.video import DirectAnimatorDrivingVideo
from tests.integration.shipped import build

ROOT = Path(__file__).resolve().parents[1]

WORKFLOWS = sorted(build.WORKFLOWS)
SCANNED_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")  # ComfyUI custom_node_manager


@pytest.fixture(scope="module")
def defs():
    return build.definitions()


def load_ui(name):
    return json.loads(build.ui_path(name).read_text())


def load_api(name):
    return json.loads(build.api_path(name).read_text())


# ------------------------------------------------------------------------------------------- the checker
def ui_problems(workflow: dict, defs: dict) -> list[str]:
    """Everything that would stop the frontend from loading `workflow` as saved, or ComfyUI from validating it."""
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in build.FRONTEND_ONLY:
            continue
        if kind not in defs:
            problems.append(f"node {node['id']}: unknown type {kind}")
            continue
        definition = defs[kind]
        values = list(node["widgets_values"])
        linked = {i["name"] for i in node["inputs"] if i.get("link") is not None}
        for name, section in build.ordered_inputs(definition):
            spec, options = build.input_spec(definition, name)
            if not build.is_widget(spec, options):
                if section == "required" and name not in linked:
                    problems.append(f"node {node['id']} {kind}: required input {name} is not connected")
                continue
            if not values:
                problems.append(f"node {node['id']} {kind}: no widget value for {name}")
                break
            value = values.pop(0)
            problems += [f"node {node['id']} {kind}.{name}: {p}" for p in value_problems(kind, name, spec, options,
                                                                                          value)]
            if build.widget_extras(name, spec, options):
                extra = values.pop(0) if values else None
                allowed = build.SEED_CONTROLS if spec == "INT" else ("image",)
                if extra not in allowed:
                    problems.append(f"node {node['id']} {kind}.{name}: control value {extra!r} not in {allowed}")
        if values:
            problems.append(f"node {node['id']} {kind}: {len(values)} widget values too many: {values}")
    for link_id, src, src_slot, dst, dst_slot, link_type in workflow["links"]:
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id}: joins missing nodes {src} -> {dst}")
            continue
        out_type = defs[nodes[src]["type"]]["output"][src_slot]
        target = nodes[dst]["inputs"][dst_slot]
        in_type, _ = build.input_spec(defs[nodes[dst]["type"]], target["name"])
        if target.get("link") != link_id:
            problems.append(f"link {link_id}: input {target['name']} of node {dst} names link {target.get('link')}")
        if link_id not in nodes[src]["outputs"][src_slot]["links"]:
            problems.append(f"link {link_id}: missing from the outputs of node {src}")
        if not (out_type == link_type == in_type == target["type"]) and "*" not in (out_type, in_type):
            problems.append(f"link {link_id}: {out_type} from node {src} into {in_type} {target['name']} of node "
                            f"{dst} (link says {link_type})")
    return problems


def value_problems(node_type: str, name: str, spec, options: dict, value) -> list[str]:
    if spec == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{value!r} is not a boolean"]
    if spec == "STRING":
        return [] if isinstance(value, str) else [f"{value!r} is not a string"]
    if spec == "COMBO":
        if (node_type, name) in build.FILE_WIDGETS:
            return [] if isinstance(value, str) and value else [f"{value!r} is not a file name"]
        return [] if value in options["options"] else [f"{value!r} not in {options['options']}"]
    if spec == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
        return [f"{value!r} is not an integer"]
    if spec == "FLOAT" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return [f"{value!r} is not a number"]
    low, high = options.get("min", -float("inf")), options.get("max", float("inf"))
    return [] if low <= value <= high else [f"{value} outside [{low}, {high}]"]


def api_problems(prompt: dict, defs: dict) -> list[str]:
    """What ComfyUI's validate_inputs would reject in an API prompt (before any node runs)."""
    problems = []
    for node_id, node in prompt.items():
        definition = defs[node["class_type"]]
        for name, section in build.ordered_inputs(definition):
            spec, options = build.input_spec(definition, name)
            value = node["inputs"].get(name)
            if value is None:
                if section == "required":
                    problems.append(f"{node_id}: required {name} missing")
                continue
            if isinstance(value, list):
                src, slot = value
                out = defs[prompt[src]["class_type"]]["output"]
                if slot >= len(out) or out[slot] != spec:
                    problems.append(f"{node_id}.{name}: {out[slot] if slot < len(out) else '?'} into {spec}")
            else:
                problems += [f"{node_id}.{name}: {p}" for p in value_problems(node["class_type"], name, spec,
                                                                               options, value)]
    return problems


# ------------------------------------------------------------------------------------------- what the editor draws
def upstream(workflow: dict, node: dict):
    """Nodes that feed `node`, nearest first."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    sources = {link[0]: link[1] for link in workflow["links"]}
    queue, seen = [node], {node["id"]}
    while queue:
        current = queue.pop(0)
        for slot in current["inputs"]:
            source = nodes[sources[slot["link"]]] if slot.get("link") is not None else None
            if source is not None and source["id"] not in seen:
                seen.add(source["id"])
                queue.append(source)
                yield source


def frame_size(workflow: dict, node: dict) -> tuple[int, int]:
    """``(width, height)`` of the frames reaching `node`: those of the nearest DirectAnimator Driving Video."""
    driving = next(n for n in upstream(workflow, node) if n["type"] == "DirectAnimatorDrivingVideo")
    return tuple(driving["widgets_values"][:2])


def shown_media(workflow: dict, node: dict) -> tuple[int, int] | None:
    """``(width, height)`` of what `node` will preview: the user's media, frames, or a Cue Preview sheet."""
    kind = node["type"]
    if kind in ("LoadVideo", "LoadImage"):
        return build.USER_MEDIA
    if kind in ("SaveVideo", "DirectAnimatorSampler"):
        return frame_size(workflow, node)
    if kind in ("PreviewImage", "SaveImage"):
        source = next(upstream(workflow, node))
        if source["type"] != "DirectAnimatorCuePreview":
            return frame_size(workflow, node)
        linked = {i["name"] for i in source["inputs"] if i.get("link") is not None}
        rows = (("driving",) if "frames" in linked else ()) + (
            ("pose", "face", "location") if "cues" in linked else
            tuple(name for name in ("pose_cue", "face_cue") if name in linked))
        return build.sheet_size(rows, frame_size(workflow, source), source["widgets_values"][0])
    return None


def drawn_rect(workflow: dict, node: dict) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` the editor draws for `node`: title bar, slots, widgets, and the preview a video or image
    node grows by once it shows its media at its own width."""
    (x, y), (width, height) = node["pos"], node["size"]
    slots = max(1, len(node["outputs"]), sum(1 for i in node["inputs"] if "widget" not in i))
    content = (slots * build.SLOT_HEIGHT + len(node["widgets_values"]) * build.WIDGET_HEIGHT + build.WIDGETS_PADDING
               + build.NODE_MARGIN)
    content += build.preview_height(node["type"], width, shown_media(workflow, node))
    return x, y - build.TITLE_HEIGHT, x + width, y + max(height, content)


def layout_problems(workflow: dict, defs: dict) -> list[str]:
    """What a user sees wrong in the editor: nodes drawn over each other, notes that scroll, seeds that change."""
    problems = []
    rects = {n["id"]: drawn_rect(workflow, n) for n in workflow["nodes"]}
    name = {n["id"]: f"node {n['id']} ({n.get('title', n['type'])})" for n in workflow["nodes"]}
    for a, b in itertools.combinations(rects, 2):
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = rects[a], rects[b]
        if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
            problems.append(f"{name[a]} {rects[a]} and {name[b]} {rects[b]} overlap")
    for node in workflow["nodes"]:
        if node["type"] in build.FRONTEND_ONLY:
            needed = build.note_height(node["widgets_values"][0], node["size"][0])
            if node["size"][1] < needed:
                problems.append(f"{name[node['id']]}: {node['size'][1]} px tall, its text needs {needed}")
            continue
        values = list(node["widgets_values"])
        for input_name, _section in build.ordered_inputs(defs[node["type"]]):
            kind, options = build.input_spec(defs[node["type"]], input_name)
            if not build.is_widget(kind, options):
                continue
            values.pop(0)
            if build.widget_extras(input_name, kind, options):
                control = values.pop(0)
                if kind == "INT" and control != "fixed":
                    problems.append(f"{name[node['id']]}.{input_name}: control_after_generate {control!r}, not "
                                    "'fixed': the shipped value changes after every run")
    return problems


# ------------------------------------------------------------------------------------------- the tests
def test_committed_files_are_what_build_py_writes():
    for path, text in build.render().items():
        assert path.is_file(), f"{path} missing: run python workflows/build.py"
        assert path.read_text() == text, f"{path} is stale: run python workflows/build.py"


def test_template_browser_lists_each_workflow_once_with_a_jpg_thumbnail():
    from PIL import Image

    listed = sorted(p.stem for folder in SCANNED_FOLDERS for p in (ROOT / folder).glob("*.json"))
    assert listed == sorted(w.title for w in build.WORKFLOWS.values())  # the API copies in workflows/api stay out
    for name in WORKFLOWS:
        thumb = build.thumbnail_path(name)  # the frontend asks for <pack>/<file name>.jpg
        assert thumb.is_file(), f"no thumbnail {thumb.name}: run python workflows/build.py --thumbnails"
        assert 5_000 < thumb.stat().st_size < 120_000
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and image.width == build.THUMB_WIDTH and image.height > 100


CARD_TITLE_CHARS = 24  # a template card's title: 2 lines (line-clamp-2) of 18 px text in 224 px


def test_template_browser_shows_readable_titles_and_thumbnails_that_tell_workflows_apart():
    """Frontend 1.27.10 names a pack's template by its file name, and describes it by the same name with - and _ as
    spaces: titles must be words that wrap into the card, and the thumbnails must differ at a glance."""
    from PIL import Image

    for workflow in build.WORKFLOWS.values():
        description = workflow.title.replace("-", " ").replace("_", " ")
        assert "_" not in workflow.title and len(description.split()) >= 3, workflow.title
        assert len(textwrap.wrap(workflow.title, CARD_TITLE_CHARS, break_long_words=False)) <= 2, workflow.title
    thumbs = {name: build.thumbnail_path(name) for name in WORKFLOWS}
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in thumbs.values()}) == len(thumbs)
    small = {}
    for name, path in thumbs.items():  # what a card shows: the picture fitted into 256 x 256 px, seen as a whole
        with Image.open(path) as image:
            small[name] = torch.from_numpy(np.asarray(image.convert("L").resize((32, 32)), dtype=np.float32)) / 255
    for a, b in itertools.combinations(small, 2):
        assert (small[a] - small[b]).abs().mean() > 0.05, f"the thumbnails of {a} and {b} look alike"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_looks_right_in_the_editor_once_previews_show(name, defs):
    assert layout_problems(load_ui(name), defs) == []


def test_layout_check_sees_a_video_preview_grow_over_the_node_below(defs):
    workflow = load_ui("inspect_cue_triplet_tune_cutoff")
    video = next(n for n in workflow["nodes"] if n["type"] == "LoadVideo")
    below = next(n for n in workflow["nodes"] if n["type"] == "LoadImage")
    video["size"][1] = 100  # as saved before the clip loads: the 1080x1920 preview still grows it to 650 px
    below["pos"][1] = video["pos"][1] + 100 + build.TITLE_HEIGHT + 10
    problems = layout_problems(workflow, defs)
    assert any("overlap" in p and "Load Video" in p and "Load Image" in p for p in problems), problems
    note = next(n for n in workflow["nodes"] if n["type"] == "Note")
    note["size"][1] = 60
    assert any("its text needs" in p for p in layout_problems(workflow, defs))


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_matches_the_node_definitions(name, defs):
    workflow = load_ui(name)
    assert workflow["version"] == 0.4 and workflow["last_link_id"] == len(workflow["links"])
    assert workflow["last_node_id"] == max(n["id"] for n in workflow["nodes"])
    assert ui_problems(workflow, defs) == []


@pytest.mark.parametrize("name", WORKFLOWS)
def test_api_copy_matches_the_node_definitions_and_passes_cross_field_checks(name, defs):
    prompt = load_api(name)
    assert api_problems(prompt, defs) == []
    ui_ids = {str(n["id"]) for n in load_ui(name)["nodes"] if n["type"] not in build.FRONTEND_ONLY}
    assert set(prompt) == ui_ids
    for node in prompt.values():
        cls = NODE_CLASS_MAPPINGS.get(node["class_type"])
        if cls is None or not hasattr(cls, "VALIDATE_INPUTS"):
            continue
        args = inspect.getfullargspec(cls.VALIDATE_INPUTS).args[1:]
        given = {a: given_value(node["class_type"], a, node["inputs"][a], defs) for a in args if a in node["inputs"]}
        assert cls.VALIDATE_INPUTS(**given) is True, (node["class_type"], given)


def given_value(node_type: str, name: str, value, defs: dict):
    """What ComfyUI hands VALIDATE_INPUTS: None for a linked input; here also None for a file the user provides
    (a model or picture not on this machine until they put it there; the bundled demo model is)."""
    if isinstance(value, list):
        return None
    if (node_type, name) in build.FILE_WIDGETS and value not in build.input_spec(defs[node_type], name)[1]["options"]:
        return None
    return value


def test_checker_finds_a_bad_value_a_wrong_link_and_a_missing_seed_control(defs):
    good = load_ui("animate_cogvideox_5b_i2v_long_video")
    sampler = next(n for n in good["nodes"] if n["type"] == "DirectAnimatorSampler")
    index = good["nodes"].index(sampler)

    too_many_steps = copy.deepcopy(good)
    too_many_steps["nodes"][index]["widgets_values"][0] = 10_000
    assert any("steps" in p and "outside" in p for p in ui_problems(too_many_steps, defs))

    no_control = copy.deepcopy(good)
    del no_control["nodes"][index]["widgets_values"][3]  # "fixed" after the seed
    assert ui_problems(no_control, defs)

    wrong_link = copy.deepcopy(good)
    link = next(lk for lk in wrong_link["links"] if lk[5] == "DA_CONDITIONING")
    link[1], link[2] = 4, 1  # the Cue Triplet's pose_cue IMAGE into the sampler's conditioning
    assert any("IMAGE" in p for p in ui_problems(wrong_link, defs))

    unknown_combo = copy.deepcopy(load_api("inspect_cue_triplet_tune_cutoff"))
    unknown_combo["4"]["inputs"]["filter"] = "box"
    assert any("filter" in p for p in api_problems(unknown_combo, defs))


def test_every_pack_node_keeps_comfyuis_own_input_checks():
    # ComfyUI skips range and combo checks for every input VALIDATE_INPUTS names, and for all inputs when it
    # takes **kwargs; linked inputs arrive as None, unconnected optional ones not at all.
    for key, cls in NODE_CLASS_MAPPINGS.items():
        validate = getattr(cls, "VALIDATE_INPUTS", None)
        if validate is None:
            continue
        spec = inspect.getfullargspec(validate)
        assert spec.varkw is None, f"{key}.VALIDATE_INPUTS takes **kwargs"
        assert len(spec.defaults or ()) == len(spec.args) - 1, f"{key}.VALIDATE_INPUTS needs defaults"
        assert validate() is True  # everything linked


# ------------------------------------------------------------------------------------------- Driving Video node
def ramp_frames(count=10, height=88, width=150):
    """Frames whose red channel encodes the frame index, so kept frames can be identified after resizing."""
    index = torch.arange(count, dtype=torch.float32)[:, None, None, None] / 100
    return torch.cat([index.expand(count, height, width, 1), torch.full((count, height, width, 2), 0.5)], dim=-1)


def test_driving_video_from_image_frames_keeps_the_stride_and_reports_the_rate():
    frames, fps, count = DirectAnimatorDrivingVideo().run(32, 16, "crop", 1, 3, 2, frames=ramp_frames(),
                                                          frames_fps=24.0)
    assert frames.shape == (2, 16, 32, 3) and count == 2 and fps == pytest.approx(8.0)
    assert torch.allclose(frames[:, 8, 16, 0], torch.tensor([0.01, 0.04]), atol=1e-4)  # frames 1 and 4


def test_driving_video_zero_size_rounds_the_source_down_to_multiples_of_16():
    frames, _, _ = DirectAnimatorDrivingVideo().run(0, 0, "pad", 0, 1, 0, frames=ramp_frames(3))
    assert frames.shape == (3, 80, 144, 3)


def test_driving_video_from_a_video_file(tmp_path):
    from directanimator.video import write_video

    path = write_video(tmp_path / "clip.mp4", ramp_frames(9, 64, 96), fps=12.0)

    class VideoFromFile:  # the two methods of ComfyUI's VIDEO type (comfy_api VideoFromFile) the node uses
        def get_stream_source(self):
            return str(path)

        def get_dimensions(self):
            return 96, 64

    frames, fps, count = DirectAnimatorDrivingVideo().run(48, 32, "pad", 2, 2, 0, video=VideoFromFile())
    assert frames.shape == (4, 32, 48, 3) and count == 4 and fps == pytest.approx(6.0)


def test_driving_video_needs_exactly_one_source_and_multiples_of_16():
    node = DirectAnimatorDrivingVideo()
    with pytest.raises(InputError, match="exactly one"):
        node.run(32, 32, "pad", 0, 1, 0)
    with pytest.raises(InputError, match="has only 10 frames"):
        node.run(32, 32, "pad", 10, 1, 0, frames=ramp_frames())
    message = DirectAnimatorDrivingVideo.VALIDATE_INPUTS(width=500, height=896)
    assert "width is 500" in message and "496" in message
    assert DirectAnimatorDrivingVideo.VALIDATE_INPUTS(width=512, height=0) is True
