"""`python -m training recipe`: the driver that runs the stages in order, and its command line."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from directanimator.atomic import claim_output_folder
from directanimator.errors import InputError

from .card import CARD_JSON, STAGES
from .config import SCALES, load_recipe
from .stages import (RECIPE_JSON, WORK_COMMAND, Markers, _backbone, _card, _export, _is_work_folder, _prepare,
                     _pseudo, _stage1, _stage2, _synth, _vae, _validate, check_folders)

log = logging.getLogger("training.recipe")


def run_recipe(out: str | Path, *, scale: str = "demo", overrides: list[str] | tuple[str, ...] = (),
               work: str | Path | None = None, resume: bool = False, config_path: str | Path | None = None) -> dict:
    """Run every stage (skipping completed ones with `resume`) and write the model folder `out`; returns the
    model card's numbers. The card's reproduce line is the recipe command line of these arguments without `work`
    and `resume`; the line with them is recorded beside it when they are given."""
    recipe = load_recipe(scale, overrides, path=config_path)
    reproduce = recipe_command(out, scale, overrides, config_path=config_path)
    run_as = recipe_command(out, scale, overrides, config_path=config_path, work=work, resume=resume)
    work = Path(work) if work is not None else Path("runs") / f"recipe_{scale}"
    out = Path(out)
    check_folders(out, work)
    markers = Markers(work)
    if markers.folder.is_dir() and any(markers.folder.iterdir()) and not resume:
        raise InputError(f"work folder {work} holds a previous recipe run; pass --resume to continue it or choose "
                         "another --work folder.")
    claim_output_folder(work, WORK_COMMAND, option="--work", legacy=_is_work_folder)
    (work / RECIPE_JSON).write_text(json.dumps(asdict(recipe), indent=1) + "\n")
    steps: dict[str, Callable[[], dict]] = {
        "synth": lambda: _synth(recipe, work), "vae": lambda: _vae(recipe, work),
        "backbone": lambda: _backbone(recipe, work), "prepare": lambda: _prepare(recipe, work),
        "stage1": lambda: _stage1(recipe, work), "pseudo": lambda: _pseudo(recipe, work),
        "stage2": lambda: _stage2(recipe, work, markers), "export": lambda: _export(recipe, work, markers),
        "validate": lambda: _validate(recipe, work),
        "card": lambda: _card(recipe, work, markers, out, reproduce, run_as),
    }
    for stage in STAGES:
        if markers.done(stage) is not None and stage != "card":
            log.info("recipe: %s already done (marker in %s)", stage, markers.folder)
            continue
        log.info("recipe: %s", stage)
        started = time.perf_counter()
        record = steps[stage]()
        record.setdefault("seconds", round(time.perf_counter() - started, 1))  # trained stages count resumes
        markers.write(stage, record)
    card = json.loads((out / CARD_JSON).read_text())
    val = card["stages"]["validate"]
    log.info("recipe done: %s (%.1f MB); held-out PSNR %s dB (static reference %s), SSIM %s (%s)", out,
             card["megabytes"], val["psnr"], val["baseline_psnr"], val["ssim"], val["baseline_ssim"])
    return card


def recipe_command(out: str | Path, scale: str, overrides, *, config_path: str | Path | None = None,
                   work: str | Path | None = None, resume: bool = False) -> str:
    """The `python -m training recipe` command line of these arguments (``--work`` and ``--resume`` only when
    given: they say where and how a run was done, not what it makes)."""
    parts = ["python", "-m", "training", "recipe", "--out", str(out), "--scale", scale]
    if config_path is not None:
        parts += ["--config", str(config_path)]
    for text in overrides:
        parts += ["--set", text]
    if work is not None:
        parts += ["--work", str(work)]
    if resume:
        parts.append("--resume")
    return shlex.join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="model folder to write (e.g. models/demo)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo",
                        help="tiny: a one-minute smoke run; demo: the real configuration (DESIGN.md 9)")
    parser.add_argument("--config", default=None, help="a recipe TOML instead of the --scale one")
    parser.add_argument("--work", default=None, help="work folder (default runs/recipe_<scale>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set stage1.steps=200 --set train.optim.lr=1e-3 "
                             "(both stages) --set stage2.optim.lr=2e-4 (stage 2 only)")
    parser.add_argument("--resume", action="store_true", help="continue a previous run in the work folder")


def run(args: argparse.Namespace) -> int:
    run_recipe(args.out, scale=args.scale, overrides=args.overrides, work=args.work, resume=args.resume,
               config_path=args.config)
    return 0
