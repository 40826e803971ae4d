"""The table of bad inputs: every surface (command lines, library, nodes, training configs) refuses each one with
one error of the library's family that names the input and the fix, before any model loads.

Each row is one test: surface, a short name, what is done wrong, the error class expected and a fragment (regex)
of its message. Command-line rows run `main(argv)` in process and also check the error path: exit code 2 and one
logged line, no traceback. Node VALIDATE_INPUTS rows check the message ComfyUI shows before running (`Refused`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from directanimator.errors import CheckpointError, CueError, InputError, VideoError

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "models" / "demo"
TRAIN_CONFIG = ROOT / "training" / "configs" / "world_tiny.toml"
SIZE = (64, 64)


class Refused(Exception):
    """A node's VALIDATE_INPUTS returned this message: ComfyUI shows it and does not run the graph."""


class ModelLoaded(AssertionError):
    """A row got as far as loading a model: its check came too late."""


@dataclass
class Context:
    """What a row may use: a fresh folder, and pytest's log capture and monkeypatch."""

    tmp: Path
    caplog: pytest.LogCaptureFixture
    monkeypatch: pytest.MonkeyPatch


@dataclass(frozen=True)
class Bad:
    surface: str  # "cli", "library", "node" or "training"
    name: str
    run: Callable[[Context], object]  # does the bad thing in a fresh folder
    error: type[Exception]
    fragment: str  # regex searched in the message

    @property
    def id(self) -> str:
        return f"{self.surface}-{self.name}"


# --------------------------------------------------------------------------- tiny inputs, made in the row's folder
def png(ctx: Context, name: str = "ref.png", size: tuple[int, int] = SIZE) -> Path:
    from PIL import Image

    path = ctx.tmp / name
    Image.fromarray(np.full((*size, 3), 128, np.uint8)).save(path)
    return path


def mp4(ctx: Context, name: str = "driving.mp4", frames: int = 5) -> Path:
    from directanimator.video import write_video

    return write_video(ctx.tmp / name, torch.full((frames, *SIZE, 3), 0.5), 12)


def a_file(ctx: Context, name: str = "taken", text: str = "not a folder") -> Path:
    path = ctx.tmp / name
    path.write_text(text)
    return path


def frames(count: int = 5, size: tuple[int, int] = SIZE) -> torch.Tensor:
    return torch.full((count, *size, 3), 0.5)


def world_data(ctx: Context, *, entries: int = 1) -> Path:
    """A metadata.jsonl with `entries` lines (0: an empty training set)."""
    data = ctx.tmp / "data"
    data.mkdir(exist_ok=True)
    (data / "metadata.jsonl").write_text('{"clip": "a.mp4", "fps": 12}\n' * entries)
    return data


def backbone_folder(ctx: Context) -> Path:
    """A folder that passes for a backbone source (the rows fail before anything reads it)."""
    folder = ctx.tmp / "backbone"
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    (folder / "transformer" / "config.json").write_text("{}")
    return folder


def train_overrides(ctx: Context, *extra: str, entries: int = 1, backbone: str | None = None) -> list[str]:
    data = world_data(ctx, entries=entries)
    source = backbone if backbone is not None else str(backbone_folder(ctx))
    return [f"data.metadata={json.dumps(str(data))}", f"model.backbone={json.dumps(source)}",
            f"run.out_dir={json.dumps(str(ctx.tmp / 'runs'))}", *extra]


def train_sets(*extra: str, **kwargs) -> Callable[[Context], list[str]]:
    """``--set KEY=VALUE`` arguments of a training command for `train_overrides`."""
    return lambda ctx: [arg for text in train_overrides(ctx, *extra, **kwargs) for arg in ("--set", text)]


def load_train_config(ctx: Context, *extra: str, **kwargs):
    from training.config import load_config

    return load_config(TRAIN_CONFIG, train_overrides(ctx, *extra, **kwargs))


# --------------------------------------------------------------------------- how each surface is driven
def cli(*argv: str | Callable[[Context], object], training: bool = False) -> Callable[[Context], object]:
    """Run a command line in process (an argument may be a callable of the context, giving one value or a list);
    check exit code 2 and one error line without traceback, then raise the error it reported, for the row's class
    and message."""

    def run(ctx: Context):
        from directanimator.cli import main as directanimator_main
        from training.cli import main as training_main

        args = []
        for a in argv:
            value = a(ctx) if callable(a) else a
            args += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        ctx.caplog.clear()
        with ctx.caplog.at_level(logging.INFO):
            code = (training_main if training else directanimator_main)(args)
        errors = [r for r in ctx.caplog.records if r.levelno >= logging.ERROR]
        assert code == 2, f"exit code {code}; log: {ctx.caplog.text}"
        assert len(errors) == 1, f"expected one error line, got: {[r.getMessage() for r in errors]}"
        assert errors[0].exc_info is None and "\n" not in errors[0].getMessage() and "Traceback" not in ctx.caplog.text
        raise errors[0].args[0]  # main logs the exception object itself: log.error("%s", exc)

    return run


def validate_inputs(node: str, **inputs) -> Callable[[Context], object]:
    def run(ctx: Context):
        import importlib

        module, name = node.rsplit(".", 1)
        answer = getattr(importlib.import_module(module), name).VALIDATE_INPUTS(**inputs)
        if answer is not True:
            raise Refused(answer)
        return answer

    return run


def pose_cue_node(driving: torch.Tensor, mask: torch.Tensor):
    from nodes.cues import DirectAnimatorPoseCue

    return DirectAnimatorPoseCue().run(driving, cutoff=0.12, filter="gaussian", blank_bad_frames=True, mask=mask)


def cue_triplet_node(reference: torch.Tensor, driving: torch.Tensor, **options):
    from nodes.cues import DirectAnimatorCueTriplet

    settings = dict(cutoff=0.12, filter="gaussian", segmenter="mediapipe", sam_checkpoint="", detector="auto",
                    face_scale=1.5, grid_cell=16, grid_blur=4.0, anchor="first")
    settings.update(options)
    return DirectAnimatorCueTriplet().run(reference, driving, **settings)


def extract(reference=None, driving=None, config=None, **kwargs):
    from directanimator.cues import CueConfig, extract_cues

    config = config or CueConfig(segmenter="given", face_detector="given")
    driving = frames() if driving is None else driving
    reference = frames(1) if reference is None else reference
    kwargs.setdefault("driving_mask", torch.ones(driving.shape[:3]))
    kwargs.setdefault("driving_face_boxes", torch.tensor([[20.0, 10, 40, 30]]).expand(driving.shape[0], 4))
    return extract_cues(reference, driving, config, **kwargs)


def bad_cue_config(name: str, fragment: str, **options) -> Bad:
    """A row: building CueConfig(**options) raises a CueError matching `fragment`."""
    def run(ctx: Context):
        from directanimator.cues import CueConfig

        return CueConfig(**options)

    return Bad("library", f"cueconfig-{name}", run, CueError, fragment)


def demo_cli(*extra: str | Callable[[Context], object]) -> Callable[[Context], object]:
    return cli("demo", "--model", str(DEMO_MODEL), "--out", lambda ctx: ctx.tmp / "demo", *extra)


def cues_cli(*extra: str | Callable[[Context], object]) -> Callable[[Context], object]:
    return cli("cues", "--reference", png, "--driving", mp4, "--out", lambda ctx: ctx.tmp / "cues", *extra)


def animate_cli(*extra: str | Callable[[Context], object]) -> Callable[[Context], object]:
    return cli("animate", "--reference", png, "--driving", mp4, "--model", backbone_folder, "--out",
               lambda ctx: ctx.tmp / "result.mp4", "--device", "cpu", *extra)


def bomb(ctx: Context, limit_share: float) -> Path:
    """A small PNG read with Pillow's decompression-bomb limit lowered so that it counts as one."""
    from PIL import Image

    path = png(ctx, "huge.png", (100, 100))
    ctx.monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(100 * 100 * limit_share))
    return path


def gif_bomb(ctx: Context) -> Path:
    """A small two-frame GIF read with Pillow's decompression-bomb limit lowered so that it counts as one."""
    from PIL import Image

    path = ctx.tmp / "huge.gif"
    first, second = (Image.fromarray(np.full((100, 100, 3), v, np.uint8)) for v in (40, 200))
    first.save(path, save_all=True, append_images=[second], duration=40)
    ctx.monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 3)
    return path


def wide_frames(ctx: Context) -> Path:
    """A driving video as an image folder of two 4112x64 frames: wider than the 4096 px the project handles."""
    from PIL import Image

    folder = ctx.tmp / "wide"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(np.full((64, 4112, 3), 100, np.uint8)).save(folder / f"{index:03d}.png")
    return folder


def foreign_folder(ctx: Context) -> Path:
    """A folder of the user's that holds a file no command wrote: a command writing there must refuse it."""
    folder = ctx.tmp / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    return folder


def no_gpu_device() -> str:
    return f"cuda:{torch.cuda.device_count() + 7}"  # never there: a GPU index too high, or no GPU at all


# --------------------------------------------------------------------------- the table
ROWS = [
    # ---- python -m directanimator demo: every cue option is checked (today's rows) before the model loads
    Bad("cli", "demo-stride-0", demo_cli("--stride", "0"), InputError, r"--stride 0: .*n >= 1"),
    Bad("cli", "demo-frames-0", demo_cli("--frames", "0"), InputError, r"--frames 0: .*at least 1"),
    Bad("cli", "demo-size-below-64", demo_cli("--size", "32x32"), InputError, r"--size 32x32: .*from 64 .*64x64"),
    Bad("cli", "demo-size-not-multiple-of-16", demo_cli("--size", "100x128"), InputError, r"--size 100x128.*96x128"),
    Bad("cli", "demo-size-above-4096", demo_cli("--size", "8192x512"), InputError, r"--size 8192x512: .*to 4096"),
    Bad("cli", "demo-cutoff-0", demo_cli("--cutoff", "0"), InputError, r"--cutoff 0.0: .*\(0, 1\]"),
    Bad("cli", "demo-cutoff-above-1", demo_cli("--cutoff", "1.5"), InputError, r"--cutoff 1.5: .*Nyquist"),
    Bad("cli", "demo-grid-cell-0", demo_cli("--grid-cell", "0"), InputError,
        r"--grid-cell 0: .*grid_cell=0.*at least 1"),
    Bad("cli", "demo-out-is-a-file", demo_cli("--out", a_file), InputError,
        r"--out .*taken: is an existing file.*folder"),
    Bad("cli", "demo-out-under-a-file", demo_cli("--out", lambda ctx: a_file(ctx) / "demo"), InputError,
        r"taken is a file, so no folder can be made"),
    Bad("cli", "demo-device-without-that-gpu", demo_cli("--device", no_gpu_device()), InputError,
        r"--device cuda:\d+: (no CUDA GPU is usable here|this machine has)"),
    Bad("cli", "demo-device-not-a-device", demo_cli("--device", "gpu"), InputError, r"--device 'gpu': not a device"),
    Bad("cli", "demo-sam-without-checkpoint", demo_cli("--segmenter", "sam"), InputError,
        r"--segmenter sam: .*sam_checkpoint.*--sam-checkpoint"),
    Bad("cli", "demo-missing-reference", demo_cli("--reference", lambda ctx: ctx.tmp / "absent.png"), InputError,
        r"--reference .*absent\.png: no such file"),
    Bad("cli", "demo-not-a-model-folder", cli("demo", "--model", lambda ctx: ctx.tmp, "--out",
                                              lambda ctx: ctx.tmp / "o"), InputError, r"not a demo model folder"),
    # ---- python -m directanimator cues
    Bad("cli", "cues-size-below-64", cues_cli("--size", "48x48"), InputError, r"--size 48x48: .*from 64"),
    Bad("cli", "cues-cutoff-0", cues_cli("--cutoff", "0"), InputError, r"--cutoff 0.0"),
    Bad("cli", "cues-stride-0", cues_cli("--stride", "0"), InputError, r"--stride 0"),
    Bad("cli", "cues-out-is-a-file", cli("cues", "--reference", png, "--driving", mp4, "--out", a_file), InputError,
        r"--out .*taken: is an existing file"),
    Bad("cli", "cues-missing-reference", cli("cues", "--reference", "absent.png", "--driving", mp4, "--out",
                                             lambda ctx: ctx.tmp / "o"), VideoError, r"absent\.png: no such file"),
    Bad("cli", "cues-driving-is-an-image", cli("cues", "--reference", png, "--driving", png, "--out",
                                               lambda ctx: ctx.tmp / "o"), VideoError, r"is a single image"),
    Bad("cli", "cues-sam-checkpoint-missing",
        cues_cli("--segmenter", "sam", "--sam-checkpoint", lambda ctx: ctx.tmp / "sam.pth"), InputError,
        r"--sam-checkpoint .*sam\.pth: no such file"),
    Bad("cli", "cues-reference-decompression-bomb",
        cli("cues", "--reference", lambda ctx: bomb(ctx, 0.3), "--driving", mp4, "--out", lambda ctx: ctx.tmp / "o"),
        VideoError, r"huge\.png: too large to open safely.*downscale it"),
    # ---- python -m directanimator animate
    Bad("cli", "animate-size-below-64", animate_cli("--size", "32x64"), InputError, r"--size 32x64: .*from 64"),
    Bad("cli", "animate-size-not-multiple-of-16", animate_cli("--size", "72x64"), InputError, r"--size 72x64"),
    Bad("cli", "animate-grid-cell-0", animate_cli("--grid-cell", "0"), InputError, r"--grid-cell 0"),
    Bad("cli", "animate-stride-0", animate_cli("--stride", "0"), InputError, r"--stride 0"),
    Bad("cli", "animate-out-not-a-video-name", cli("animate", "--reference", png, "--driving", mp4, "--model", "x/y",
                                                   "--out", lambda ctx: ctx.tmp / "result.txt"), InputError,
        r"result\.txt: give a video file name ending in \.mp4"),
    Bad("cli", "animate-out-is-a-folder", cli("animate", "--reference", png, "--driving", mp4, "--model", "x/y",
                                              "--out", lambda ctx: (ctx.tmp / "v.mp4").mkdir() or ctx.tmp / "v.mp4"),
        InputError, r"v\.mp4: is an existing folder.*file path"),
    Bad("cli", "animate-device-without-that-gpu", animate_cli("--device", no_gpu_device()), InputError,
        r"--device cuda:\d+"),
    # ---- python -m training
    Bad("cli", "training-prepare-empty-metadata", cli("prepare", str(TRAIN_CONFIG), train_sets(entries=0),
                                                      training=True),
        InputError, r"metadata\.jsonl has no entries.*training synth"),
    Bad("cli", "training-prepare-limit-0", cli("prepare", str(TRAIN_CONFIG), "--limit", "0", train_sets(),
                                               training=True),
        InputError, r"--limit 0: prepare at least one"),
    Bad("cli", "training-stage1-missing-backbone",
        cli("stage1", str(TRAIN_CONFIG), lambda ctx: train_sets(backbone=str(ctx.tmp / "no_backbone"))(ctx),
            training=True),
        InputError, r"model\.backbone=.*no_backbone.*no such file or folder"),
    Bad("cli", "training-stage1-out-dir-is-a-file",
        cli("stage1", str(TRAIN_CONFIG), train_sets(), "--set",
            lambda ctx: f"run.out_dir={json.dumps(str(a_file(ctx)))}", training=True),
        InputError, r"run\.out_dir=.*taken is a file"),
    # (small settings and a work folder of the row's own, so that a check gone missing costs little)
    Bad("cli", "training-synth-out-is-a-file",
        cli("synth", "--out", a_file, "--clips", "1", "--size", "64", "--frames", "5", training=True),
        InputError, r"--out .*taken: is an existing file, but this writes a folder"),
    Bad("cli", "training-recipe-out-under-a-file",
        cli("recipe", "--out", lambda ctx: a_file(ctx) / "model", "--scale", "tiny", "--work",
            lambda ctx: ctx.tmp / "work", training=True), InputError, r"taken is a file, so no folder can be made"),
    Bad("cli", "training-export-out-is-a-folder",
        cli("export", "step_1", "--backbone", "m", "--out", lambda ctx: ctx.tmp, training=True), InputError,
        r"--out .*: is an existing folder, but this writes a file"),
    Bad("cli", "training-validate-device-without-that-gpu",
        cli("validate", "--model", "m", "--data", "d", "--out", lambda ctx: ctx.tmp / "v", "--device",
            no_gpu_device(), training=True), InputError, r"--device cuda:\d+"),
    Bad("cli", "cues-out-a-folder-it-did-not-write", cli("cues", "--reference", png, "--driving", mp4, "--out",
        foreign_folder), InputError, r"--out .*mine: the folder is not empty.*python -m directanimator cues"),
    Bad("cli", "demo-out-a-folder-it-did-not-write", cli("demo", "--model", str(DEMO_MODEL), "--out", foreign_folder),
        InputError, r"--out .*mine: the folder is not empty.*python -m directanimator demo"),
    Bad("cli", "training-validate-out-a-folder-it-did-not-write",
        cli("validate", "--model", "m", "--data", world_data, "--out", foreign_folder, training=True), InputError,
        r"--out .*mine: the folder is not empty.*python -m training validate"),
    Bad("cli", "cues-driving-over-4096-px", cli("cues", "--reference", png, "--driving", wide_frames, "--out",
        lambda ctx: ctx.tmp / "o"), VideoError, r"--driving .*wide: frames are 4112x64 px.*Pass --size"),
    Bad("cli", "demo-driving-over-4096-px", demo_cli("--driving", wide_frames), VideoError,
        r"--driving .*wide: frames are 4112x64 px.*at most 4096"),
    Bad("cli", "training-missing-config", cli("stage1", "absent.toml", training=True), InputError,
        r"config absent\.toml: no such file"),
    Bad("cli", "training-unknown-key", cli("stage1", str(TRAIN_CONFIG), "--set", "optim.warmup=10", training=True),
        InputError, r"unknown key 'optim\.warmup'.*warmup_steps"),

    # ---- library: cue extraction
    Bad("library", "extract-reference-0-255", lambda ctx: extract(reference=frames(1) * 255), CueError,
        r"reference: float values up to 127\.5.*0\.\.255.*Divide by 255"),
    Bad("library", "extract-driving-0-255", lambda ctx: extract(driving=frames() * 255), CueError,
        r"driving: .*Divide by 255"),
    Bad("library", "extract-mask-0-255", lambda ctx: extract(driving_mask=torch.full((5, *SIZE), 255.0)),
        CueError, r"driving_mask: .*Divide by 255"),
    Bad("library", "extract-numpy-0-255", lambda ctx: extract(reference=np.full((1, *SIZE, 3), 200.0)),
        CueError, r"reference: .*Divide by 255"),
    Bad("library", "extract-reference-of-two-frames", lambda ctx: extract(reference=frames(2)), CueError,
        r"reference: expected one image.*Pick one frame"),
    Bad("library", "extract-channels-first", lambda ctx: extract(driving=frames().permute(0, 3, 1, 2)),
        InputError, r"driving: .*permuted to channels-last"),
    Bad("library", "extract-nan",
        lambda ctx: extract(driving=frames().index_fill(0, torch.tensor([2]), float("nan"))), InputError,
        r"driving: contains NaN"),
    Bad("library", "extract-frames-below-64-px", lambda ctx: extract(driving=frames(5, (32, 32))), InputError,
        r"driving: frames are 32x32 px; at least 64"),
    Bad("library", "extract-given-segmenter-without-mask", lambda ctx: extract(driving_mask=None), CueError,
        r"segmenter is 'given' but no driving mask"),
    Bad("library", "extract-face-boxes-per-frame", lambda ctx: extract(driving_face_boxes=torch.zeros(4, 4)),
        CueError, r"4 face boxes for 5 driving frames"),
    # ---- library: CueConfig checks itself when built
    bad_cue_config("height-not-multiple-of-16", r"CueConfig\.height=100: must be a multiple of 16.*e\.g\. 96",
                   height=100),
    bad_cue_config("width-below-64", r"CueConfig\.width=48.*at least 64", width=48),
    bad_cue_config("height-a-string", r"CueConfig\.height='128'", height="128"),
    bad_cue_config("cutoff-out-of-range", r"CueConfig\.cutoff=2\.0: must be in \(0, 1\]", cutoff=2.0),
    bad_cue_config("grid-cell-fraction", r"CueConfig\.grid_cell=1\.5: must be a whole number", grid_cell=1.5),
    bad_cue_config("filter", r"CueConfig\.filter='box'", filter="box"),
    bad_cue_config("anchor", r"CueConfig\.anchor='median'", anchor="median"),
    bad_cue_config("sam-without-checkpoint", r"needs sam_checkpoint", segmenter="sam"),
    bad_cue_config("face-scale-nan", r"CueConfig\.face_scale=nan", face_scale=float("nan")),
    Bad("library", "cueconfig-from-dict-unknown-key",
        lambda ctx: __import__("directanimator.cues", fromlist=["CueConfig"]).CueConfig.from_dict({"cutof": 0.2}),
        CueError, r"unknown option 'cutof'\. Did you mean 'cutoff'\?"),
    Bad("library", "cueconfig-from-saved-bad-value",
        lambda ctx: __import__("directanimator.cues", fromlist=["CueConfig"]).CueConfig.from_saved(
            {"grid_cell": 0}, name="checkpoint x.safetensors"),
        CueError, r"checkpoint x\.safetensors: CueConfig\.grid_cell=0"),
    # ---- library: images and videos
    Bad("library", "read-image-missing", lambda ctx: _video().read_image(ctx.tmp / "absent.png"), VideoError,
        r"absent\.png: no such file"),
    Bad("library", "read-image-folder", lambda ctx: _video().read_image(ctx.tmp), VideoError,
        r"is a folder, not an image file"),
    Bad("library", "read-image-extension", lambda ctx: _video().read_image(a_file(ctx, "ref.txt")), VideoError,
        r"unsupported extension '\.txt'"),
    Bad("library", "read-image-damaged", lambda ctx: _video().read_image(a_file(ctx, "ref.png", "garbage")),
        VideoError, r"ref\.png: cannot be read.*re-export"),
    Bad("library", "read-image-decompression-bomb-error", lambda ctx: _video().read_image(bomb(ctx, 0.3)),
        VideoError, r"huge\.png: too large to open safely.*at most 4096 px per side"),
    Bad("library", "read-image-decompression-bomb-warning", lambda ctx: _video().read_image(bomb(ctx, 0.8)),
        VideoError, r"huge\.png: too large to open safely"),
    Bad("library", "read-video-gif-decompression-bomb", lambda ctx: _video().read_video(gif_bomb(ctx)),
        VideoError, r"huge\.gif: too large to open safely"),
    Bad("library", "read-image-max-side-0", lambda ctx: _video().read_image(png(ctx), max_side=0), VideoError,
        r"max_side must be a whole number"),
    Bad("library", "read-video-missing", lambda ctx: _video().read_video(ctx.tmp / "absent.mp4"), VideoError,
        r"absent\.mp4: no such file or folder"),
    Bad("library", "read-video-stride-0", lambda ctx: _video().read_video(mp4(ctx), stride=0), VideoError,
        r"stride must be a whole number >= 1"),
    Bad("library", "read-video-max-frames-0", lambda ctx: _video().read_video(mp4(ctx), max_frames=0),
        VideoError, r"max_frames must be a whole number >= 1"),
    Bad("library", "read-video-empty-folder", lambda ctx: _video().read_video(ctx.tmp), VideoError,
        r"the folder holds no images"),
    Bad("library", "read-video-not-a-video", lambda ctx: _video().read_video(a_file(ctx, "clip.mp4", "x" * 64)),
        VideoError, r"clip\.mp4: cannot be decoded"),
    Bad("library", "write-video-extension", lambda ctx: _video().write_video(ctx.tmp / "a.avi", frames(), 12),
        VideoError, r"cannot write '\.avi' videos"),
    # ---- library: models and the demo
    Bad("library", "load-model-missing-backbone",
        lambda ctx: _real_load_model()(ctx.tmp / "missing" / "folder", dtype="fp32"), CheckpointError,
        r"no such file or folder"),
    Bad("library", "load-model-pickle-checkpoint",
        lambda ctx: _real_load_model()(ctx.tmp, a_file(ctx, "model.pt")), CheckpointError,
        r"model\.pt.*pickle.*safetensors"),
    Bad("library", "run-demo-stride-0", lambda ctx: _demo().run_demo(DEMO_MODEL, out=ctx.tmp / "o", stride=0),
        InputError, r"--stride 0"),
    Bad("library", "run-demo-unknown-cue-option",
        lambda ctx: _demo().run_demo(DEMO_MODEL, out=ctx.tmp / "o", cues={"cell": 8}), CueError,
        r"unknown option 'cell'"),
    Bad("library", "run-demo-cue-option-out-of-range",
        lambda ctx: _demo().run_demo(DEMO_MODEL, out=ctx.tmp / "o", cues={"height": 40, "width": 64}),
        CueError, r"CueConfig\.height=40"),
    Bad("library", "run-demo-out-is-a-file", lambda ctx: _demo().run_demo(DEMO_MODEL, out=a_file(ctx)),
        InputError, r"is an existing file"),
    Bad("library", "usable-device-cuda-index", lambda ctx: _devices().usable_device(no_gpu_device()), InputError,
        r"cuda:\d+"),
    Bad("library", "load-model-device-without-that-gpu",
        lambda ctx: _real_load_model()(DEMO_MODEL, device=no_gpu_device()), InputError,
        r"device cuda:\d+: (no CUDA GPU is usable here|this machine has)"),
    Bad("library", "demo-settings-not-json", lambda ctx: _demo().DemoSettings.read(a_file(ctx, "demo.json")),
        InputError, r"demo\.json: not valid JSON"),

    # ---- nodes: what ComfyUI shows before running, and node functions called as ComfyUI calls them
    Bad("node", "driving-video-width-not-multiple-of-16",
        validate_inputs("nodes.video.DirectAnimatorDrivingVideo", width=100, height=0), Refused,
        r"width is 100; use 0 .* multiple of 16"),
    Bad("node", "driving-video-height-above-4096",
        validate_inputs("nodes.video.DirectAnimatorDrivingVideo", width=0, height=8192), Refused, r"up to 4096"),
    Bad("node", "sampler-overlap-not-below-window",
        validate_inputs("nodes.model.DirectAnimatorSampler", window=4, overlap=4), Refused,
        r"overlap \(4\) must be smaller than window \(4\)"),
    Bad("node", "model-loader-nothing-chosen",
        validate_inputs("nodes.model.DirectAnimatorModelLoader", backbone="none (use repo_id)", repo_id=" "),
        Refused, r"Choose a backbone folder"),
    Bad("node", "cue-triplet-0-255-reference", lambda ctx: cue_triplet_node(frames(1) * 255, frames()),
        CueError, r"reference: .*Divide by 255"),
    Bad("node", "cue-triplet-0-255-driving", lambda ctx: cue_triplet_node(frames(1), frames() * 255),
        InputError, r"frames: float values up to 127\.5.*Divide by 255"),
    Bad("node", "pose-cue-0-255-mask", lambda ctx: pose_cue_node(frames(), torch.full((5, *SIZE), 255.0)),
        InputError, r"mask: .*Divide by 255"),
    Bad("node", "cue-triplet-odd-frame-size", lambda ctx: cue_triplet_node(frames(1), frames(5, (100, 64))),
        CueError, r"multiple of 16"),

    # ---- training configs (library: load_config, train_stage1, prepare)
    Bad("training", "out-dir-is-a-file", lambda ctx: load_train_config(
        ctx, f"run.out_dir={json.dumps(str(a_file(ctx)))}"), InputError, r"run\.out_dir=.*taken is a file"),
    Bad("training", "out-dir-under-a-file", lambda ctx: load_train_config(
        ctx, f"run.out_dir={json.dumps(str(a_file(ctx) / 'runs'))}"), InputError, r"taken is a file"),
    Bad("training", "stage1-missing-backbone-folder",
        lambda ctx: stage1_with(ctx, backbone=str(ctx.tmp / "no_backbone")), InputError,
        r"model\.backbone=.*no_backbone.*no such file or folder"),
    Bad("training", "stage1-missing-backbone-repo-offline",
        lambda ctx: _offline(ctx) and stage1_with(ctx, backbone="tiny-org/absent-backbone"), InputError,
        r"model\.backbone='tiny-org/absent-backbone'.*not in the cache.*hf download"),
    Bad("training", "stage1-missing-vae", lambda ctx: stage1_with(ctx, vae=str(ctx.tmp / "no_vae")),
        InputError, r"model\.vae=.*no_vae"),
    Bad("training", "stage1-missing-checkpoint",
        lambda ctx: stage1_with(ctx, checkpoint=str(ctx.tmp / "x.safetensors")), InputError,
        r"model\.checkpoint=.*x\.safetensors.*no such file"),
    Bad("training", "stage2-missing-backbone-folder", lambda ctx: stage2_with(
        ctx, backbone=str(ctx.tmp / "no_backbone"), checkpoint=str(a_file(ctx))), InputError,
        r"model\.backbone=.*no_backbone.*no such file or folder"),
    Bad("training", "stage2-missing-checkpoint",
        lambda ctx: stage2_with(ctx, checkpoint=str(ctx.tmp / "x.safetensors")), InputError,
        r"model\.checkpoint=.*x\.safetensors.*no such file"),
    Bad("training", "stage2-missing-teacher", lambda ctx: stage2_with(
        ctx, checkpoint=str(a_file(ctx)), teacher=str(ctx.tmp / "t.safetensors")), InputError,
        r"stage2\.teacher=.*t\.safetensors.*no such file"),
    Bad("training", "prepare-missing-backbone",
        lambda ctx: _training_prepare().prepare(load_train_config(ctx, backbone=str(ctx.tmp / "no_backbone"))),
        InputError, r"model\.backbone=.*no_backbone.*no such file or folder"),
    Bad("training", "prepare-empty-metadata", lambda ctx: _training_prepare().prepare(
        load_train_config(ctx, entries=0)), InputError, r"has no entries"),
    Bad("training", "cues-value", lambda ctx: load_train_config(ctx, "cues.cutoff=2.0"), InputError,
        r"config \[cues\]: CueConfig\.cutoff=2\.0"),
    Bad("training", "cues-unknown-key", lambda ctx: load_train_config(ctx, "cues.cutof=0.2"), InputError,
        r"unknown key 'cues\.cutof'.*Did you mean 'cutoff'"),
    Bad("training", "frames-not-4k-plus-1", lambda ctx: load_train_config(ctx, "data.frames=6"), InputError,
        r"data\.frames=6: the VAE needs 4k\+1 frames"),
    Bad("training", "metadata-missing", lambda ctx: load_train_config(
        ctx, "data.metadata='/nonexistent/metadata.jsonl'"), InputError, r"does not exist"),
    Bad("training", "wrong-type", lambda ctx: load_train_config(ctx, "run.steps='many'"), InputError,
        r"run\.steps: 'many' is a str; expected int"),
]


def _video():
    import directanimator.video as video

    return video


def _devices():
    import directanimator.devices as devices

    return devices


def _demo():
    import directanimator.demo as demo

    return demo


def _training_prepare():
    import training.prepare as prepare

    return prepare


def _offline(ctx: Context) -> bool:
    ctx.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ctx.monkeypatch.setenv("HF_HUB_CACHE", str(ctx.tmp / "hub"))
    import huggingface_hub.constants as constants

    ctx.monkeypatch.setattr(constants, "HF_HUB_CACHE", str(ctx.tmp / "hub"))
    return True


def stage1_with(ctx: Context, **model: str):
    """train_stage1 with these model.* settings: a missing source is named, not taken for a cache never prepared."""
    from training.stage1 import train_stage1

    config = load_train_config(ctx)
    for key, value in model.items():
        setattr(config.model, key, value)
    return train_stage1(config)


def stage2_with(ctx: Context, teacher: str = "", **model: str):
    """train_stage2 with these model.* settings (and stage2.teacher): missing sources are named before the cache."""
    from training.stage2 import train_stage2

    config = load_train_config(ctx)
    for key, value in model.items():
        setattr(config.model, key, value)
    config.stage2.teacher = teacher
    return train_stage2(config)


_LOADERS: dict[str, Callable] = {}


def _real_load_model():
    return _LOADERS["load_model"]


@pytest.fixture
def context(tmp_path, caplog, monkeypatch) -> Context:
    """A fresh folder, and no model may load: each row must fail before that."""
    import directanimator.models as models
    import directanimator.models.loader as loader
    import nodes.model as node_model
    import training.prepare as prepare
    import training.stage1 as stage1
    import training.stage2 as stage2
    import training.trainer as trainer

    _LOADERS["load_model"] = loader.load_model

    def refuse(*args, **kwargs):
        raise ModelLoaded("a model was loaded before the bad input was refused")

    # Each module that binds a loader by name (`from ... import load_model`) needs its own patch.
    for module, name in ((models, "load_model"), (loader, "load_model"), (node_model, "load_model"),
                         (trainer, "load_model"), (stage1, "load_student"), (stage2, "load_student"),
                         (prepare, "load_vae"), (prepare, "read_backbone_config")):
        monkeypatch.setattr(module, name, refuse)
    return Context(tmp_path, caplog, monkeypatch)


def test_rows_are_named_once():
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_refused_with_a_clear_error(row: Bad, context: Context):
    with pytest.raises(row.error, match=row.fragment):
        row.run(context)
