"""The shipped workflows in ComfyUI's own frontend, in a real browser: opened from the template browser's URL, run
from the editor where they can run here, then measured once their previews show. Checks what
tests/test_workflows.py estimates: no node is drawn over another, notes show their whole text, and no node grew past
the size the workflow was saved with.

Skipped unless COMFYUI_DIR is set (conftest.py), COMFYUI_FRONTEND=1 (the server then serves the frontend installed
with ComfyUI), CHROMIUM names a Chromium binary, and playwright is importable (no ``playwright install`` needed)::

    COMFYUI_DIR=... COMFYUI_PYTHON=... COMFYUI_FRONTEND=1 CHROMIUM=/usr/bin/chromium python -m pytest tests/integration
"""

from __future__ import annotations

import itertools
import os
import time
from urllib.parse import quote

import pytest

from tests.integration.shipped import build

RUNS_HERE = ("animate_bundled_demo_model", "inspect_cue_triplet_tune_cutoff", "bring_your_own_person_mask")
RUN_TIMEOUT_S = 600
PREVIEW_TIMEOUT_S = 60

DRAWN = """() => app.graph._nodes.map(n => ({
    id: n.id, title: n.title, type: n.type, rect: [...n.boundingRect], size: [...n.size],
    video: (n.widgets || []).some(w => w.name === 'video-preview'), images: (n.imgs || []).length,
    text: n.type === 'Note' ? [n.widgets[0].element.scrollHeight, n.widgets[0].element.clientHeight] : null}))"""


@pytest.fixture(scope="module")
def page(comfy):
    if not os.environ.get("COMFYUI_FRONTEND"):
        pytest.skip("COMFYUI_FRONTEND is not set: the server runs without a frontend")
    chromium = os.environ.get("CHROMIUM")
    if not chromium:
        pytest.skip("CHROMIUM is not set: point it to a Chromium binary (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1800, "height": 1100})
            tab.goto(comfy.url)
            tab.wait_for_function("() => window.app && window.app.graph", timeout=120_000)
            yield tab
        finally:
            browser.close()


def run_from_the_editor(comfy, tab) -> None:
    """Queue the open workflow as the Run button does, and wait until the server has finished it."""
    before = len(comfy.get("/history"))
    tab.evaluate("() => app.queuePrompt(0, 1)")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(comfy.get("/history")) == before or any(comfy.get("/queue").values()):
        assert time.monotonic() < deadline, f"the run did not finish in {RUN_TIMEOUT_S} s:\n{comfy.log_tail()}"
        time.sleep(1.0)
    (entry,) = [v for k, v in comfy.get("/history").items()][before:]
    assert entry["status"]["status_str"] == "success", entry["status"]


def shown(node: dict, ran: bool) -> bool:
    """Whether `node` shows the preview it will have once media load (and, when the workflow ran, its outputs)."""
    if node["type"] == "LoadVideo" or node["type"] == "SaveVideo" and ran:
        return node["video"]
    if node["type"] == "LoadImage" or node["type"] in ("PreviewImage", "SaveImage", "DirectAnimatorSampler") and ran:
        return node["images"] > 0
    return True


@pytest.mark.parametrize("name", sorted(build.WORKFLOWS))
def test_workflow_as_the_editor_draws_it_once_its_previews_show(comfy, media, page, name):  # noqa: F811
    saved = comfy.get(f"/api/workflow_templates/{quote(comfy.pack_name)}/{quote(build.WORKFLOWS[name].title)}.json")
    page.evaluate("(workflow) => app.loadGraphData(workflow)", saved)
    ran = name in RUNS_HERE  # the long-video workflow needs CogVideoX-5B-I2V
    if ran:
        run_from_the_editor(comfy, page)
    deadline = time.monotonic() + PREVIEW_TIMEOUT_S
    while missing := [node["title"] for node in page.evaluate(DRAWN) if not shown(node, ran)]:
        assert time.monotonic() < deadline, f"no preview after {PREVIEW_TIMEOUT_S} s: {missing}"
        time.sleep(0.5)
    time.sleep(1.0)  # let the last preview settle its node's size
    drawn = page.evaluate(DRAWN)
    sizes = {node["id"]: node["size"] for node in saved["nodes"]}
    for node in drawn:
        assert node["size"][1] <= sizes[node["id"]][1] + 1, f"{node['title']} grew to {node['size']}"
        if node["text"]:
            assert node["text"][0] <= node["text"][1], f"{node['title']}: its text scrolls ({node['text']})"
    for a, b in itertools.combinations(drawn, 2):
        (ax, ay, aw, ah), (bx, by, bw, bh) = a["rect"], b["rect"]
        assert not (ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah), (a, b)
