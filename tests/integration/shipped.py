"""The shipped workflows as the integration tests (and test_workflows.py) use them: workflows/build.py, their API
prompts, the real clip they are given, and running a prompt on the test server (conftest.py's `comfy`)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("workflows_build", ROOT / "workflows" / "build.py")
build = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(build)

CLIP_FRAMES = 17  # 8m+1: the tiny CogVideoX 1.5 layout needs an even latent count with the reference
CLIP_FPS = 12.0
CLIP_SIZE = (224, 128)  # (height, width)


def api(name: str) -> dict:
    """The API prompt of the shipped workflow `name`."""
    return json.loads(build.api_path(name).read_text())


def run(comfy, prompt, **kwargs):
    """Queue `prompt` on the server and follow it to the end; returns what `comfy.follow` returns."""
    ws, client_id = comfy.connect()
    try:
        return comfy.follow(ws, comfy.queue(prompt, client_id), **kwargs)
    finally:
        ws.close()


def video_facts(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(frame count, fps, (height, width)) of the video at `path`."""
    from directanimator.video import read_video

    clip = read_video(path)
    return clip.num_frames, clip.fps, tuple(clip.frames.shape[1:3])
