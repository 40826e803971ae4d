"""Training checkpoints: everything needed to continue a run exactly, written atomically, the last N kept.

``RUN/checkpoints/step_000500/``:
  ``trainable.safetensors``  the trained parameters by name (fp32), what resume loads;
  ``ema.safetensors``        their EMA (when enabled);
  ``model.safetensors``      a DirectAnimator checkpoint (EMA weights when enabled) for sampling, export and stage 2;
  ``state.safetensors`` + ``state.json``  optimizer, LR scheduler, RNG states (python, numpy, torch, the training
  generator), data position and step: tensors in the first, the structure (with tensor references) in the second.
  ``digests.json``          the sha256 of every other file, checked at resume and at export.
Under FSDP the trained parameters, their EMA and the optimizer state stay sharded: every rank writes its shards
into ``sharded/`` with torch.distributed.checkpoint (DCP) instead of ``trainable.safetensors``/``ema.safetensors``
and the optimizer entry of the state; ``model.safetensors`` holds the full weights gathered on rank 0.
A folder is written as ``.tmp-step_...`` and renamed, so every ``step_*`` folder is complete; the ``.tmp-step_*``
folders a killed write leaves are removed when the run starts again. Under DeepSpeed every rank also writes the
engine's own files into ``deepspeed/`` (training/deepspeed_support.py). No pickles, except in two formats the
trainer does not define: DCP's ``sharded/`` (its ``.metadata`` index, and the optimizer state's non-tensor entries
such as the step counts and hyperparameters inside the ``.distcp`` files) and DeepSpeed's ``deepspeed/`` files
(torch.save). Resume reads them only after their sha256 is verified against ``digests.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from directanimator.atomic import atomic_path
from directanimator.errors import CheckpointError, InputError
from directanimator.models.checkpoint import check_finite

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d+)$")
PARTIAL_DIR = re.compile(r"^\.tmp-step_\d+-\d+$")  # a write killed before its rename (save_training_checkpoint)
TRAINABLE = "trainable.safetensors"
EMA = "ema.safetensors"
MODEL = "model.safetensors"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
DIGESTS = "digests.json"
SHARDED = "sharded"  # the DCP folder of an FSDP run's checkpoint
_TENSOR_REF = "__tensor__"


def flatten_state(obj: Any, tensors: dict[str, Tensor], prefix: str = "t") -> Any:
    """JSON-able structure of `obj` with every tensor (and numpy array) moved into `tensors` under a reference."""
    if isinstance(obj, Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR_REF: key}
    if isinstance(obj, np.ndarray):
        return {"__numpy__": flatten_state(torch.from_numpy(obj.copy()), tensors, prefix)}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, tensors, prefix), flatten_state(v, tensors, prefix)]
                             for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, prefix) for v in obj]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    raise InputError(f"checkpoint state: cannot store a {type(obj).__name__} ({obj!r}).")


def unflatten_state(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(obj, dict):
        if _TENSOR_REF in obj:
            return tensors[obj[_TENSOR_REF]]
        if "__numpy__" in obj:
            return unflatten_state(obj["__numpy__"], tensors).numpy()
        if "__dict__" in obj:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def rng_state() -> dict:
    """Global RNG states of python, numpy and torch (and CUDA when present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def is_legacy_run(folder: Path, *, log: str) -> bool:
    """A run folder written before folders carried output markers: its config.json, and checkpoints or its `log`
    (the file the run writes as it goes or at its end)."""
    return (folder / "config.json").is_file() and ((folder / "checkpoints").is_dir() or (folder / log).is_file())


def remove_partial_checkpoints(run_dir: Path) -> list[str]:
    """Delete the ``.tmp-step_*`` folders that killed writes left in the run's own checkpoint folder (nothing
    else); returns their names."""
    folder = Path(run_dir) / "checkpoints"
    found = sorted(p for p in folder.iterdir() if p.is_dir() and PARTIAL_DIR.match(p.name)) if folder.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    if found:
        log.info("removed %d unfinished checkpoint folder(s) of a killed run in %s: %s", len(found), folder,
                 ", ".join(p.name for p in found))
    return [p.name for p in found]


def file_digest(path: Path) -> str:
    """The sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_digests(folder: Path) -> None:
    """Record the sha256 of every file of a checkpoint folder being written (those of ``sharded/`` too)."""
    digests = {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*"))
               if p.is_file() and p.name != DIGESTS}
    (folder / DIGESTS).write_text(json.dumps({"sha256": digests}, indent=1) + "\n")


def verify_checkpoint(folder: Path, names: tuple[str, ...] | None = None, *, skip: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError when a file of checkpoint `folder` (those of `names` only, when given; not those of
    `skip`) differs from the sha256 recorded when it was saved. A checkpoint written before digests were recorded is
    accepted (one log line)."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / DIGESTS).read_text())["sha256"]
    except FileNotFoundError:
        log.info("checkpoint %s has no %s (written before digests were recorded); its files are not verified",
                 folder, DIGESTS)
        return
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {folder}: {DIGESTS} is unreadable ({error}); the folder is damaged. "
                              f"{_older_hint(folder)}") from error
    for name, expected in recorded.items():
        if (names is not None and name not in names) or name in skip:
            continue
        path = folder / name
        found = file_digest(path) if path.is_file() else None
        if found != expected:
            what = "is missing" if found is None else "differs from the sha256 recorded when it was saved"
            raise CheckpointError(f"checkpoint {folder}: {name} {what} (changed or damaged on disk since). "
                                  f"{_older_hint(folder)}")


def _older_hint(folder: Path) -> str:
    """What to do with a damaged checkpoint folder: the older checkpoints of its run, if any."""
    run = folder.parent.parent
    match = STEP_DIR.match(folder.name)
    own = int(match.group(1)) if match else None
    older = [p for step, p in step_dirs(run) if own is not None and step < own]
    if older:
        return (f"Resume or export from an older checkpoint ({', '.join(str(p) for p in older[-2:])}), after "
                f"moving {folder.name} out of {folder.parent}.")
    return f"Move {folder} away and train again (or restore it from a copy)."


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the records of a metrics.jsonl up to `step` (a killed run may have logged steps after its last
    checkpoint, or died while writing a line: a torn last line is dropped with a warning)."""
    if not path.is_file():
        return
    keep = [json.dumps(r) for r in read_jsonl(path) if r["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines log; a torn last line (a write cut short by a kill) is dropped with a warning,
    any other unreadable line raises InputError naming it."""
    lines = [(n, line) for n, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if i == len(lines) - 1:
                log.warning("%s: dropping its last line %d, cut short by an interrupted write (%s)", path, number,
                            error)
                break
            raise InputError(f"{path}: line {number} is not JSON ({error}); delete that line (or the file: it is "
                             "the training log, the checkpoints do not need it).") from error
    return records


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """``None``/"" -> None; ``"latest"`` -> the newest checkpoint of the run (None when there is none yet);
    a path -> that checkpoint folder (checked)."""
    if not resume:
        return None
    if resume == "latest":
        dirs = step_dirs(run_dir)
        return dirs[-1][1] if dirs else None
    path = Path(resume)
    if not (path / STATE_JSON).is_file() or not ((path / TRAINABLE).is_file() or (path / SHARDED).is_dir()):
        raise CheckpointError(f"--resume {resume}: not a training checkpoint folder (no {STATE_JSON} / {TRAINABLE}). "
                              f"Give RUN/checkpoints/step_N or 'latest'.")
    return path


def save_training_checkpoint(run_dir: Path, step: int, *, trainable: dict[str, Tensor] | None, state: dict,
                             ema: dict[str, Tensor] | None = None, write_model=None, keep_last: int = 3,
                             sharded: dict | None = None) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep_last`. `write_model(path)` writes
    the DirectAnimator checkpoint file into the folder. `sharded` (FSDP): a DCP state dict of sharded tensors every
    rank writes its part of into ``sharded/``.

    With many processes every rank calls this (and `write_model`, which may gather weights, and writes only on
    rank 0); rank 0 writes the other files; a failure on any rank is raised on all of them, and all ranks return
    after the folder is complete (no rank runs ahead into a collective while rank 0 is still writing)."""
    from .distributed import barrier, gather_objects, on_all_ranks

    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step_{step:06d}"
    tmp = folder / f".tmp-step_{step:06d}-{gather_objects(os.getpid())[0]}"  # rank 0's pid names it on every rank
    main = _is_main()

    def begin() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()

    def files() -> None:
        if trainable is not None:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in trainable.items()}, str(tmp / TRAINABLE))
        if ema is not None:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in ema.items()}, str(tmp / EMA))
        tensors: dict[str, Tensor] = {}
        structure = flatten_state(state, tensors)
        save_file(tensors, str(tmp / STATE_TENSORS))
        groups = {"sharded": sorted(sharded)} if sharded is not None else {}  # has_ema reads it, not DCP's index
        (tmp / STATE_JSON).write_text(json.dumps({"step": step, "state": structure, **groups}))

    def finish() -> None:
        write_digests(tmp)
        if final.exists():  # a re-run of the same step after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in step_dirs(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)

    try:
        on_all_ranks(begin, only_main=True)
        if sharded is not None:
            import torch.distributed.checkpoint as dcp

            on_all_ranks(lambda: dcp.save(sharded, checkpoint_id=str(tmp / SHARDED)))
        on_all_ranks(files, only_main=True)
        if write_model is not None:
            on_all_ranks(lambda: write_model(tmp / MODEL))
        on_all_ranks(finish, only_main=True)
    finally:
        if main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    if main:
        log.info("saved checkpoint %s", final)
    return final


def _is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def load_training_checkpoint(path: Path, *, verify: bool = True
                             ) -> tuple[int, dict[str, Tensor] | None, dict[str, Tensor] | None, dict]:
    """``(step, trainable, ema or None, state)`` of a checkpoint folder; `trainable` and `ema` are None for a sharded
    (FSDP) checkpoint, whose tensors `load_sharded_state` reads. `verify=False` skips the sha256 check (for a
    caller that has verified the folder already)."""
    path = Path(path)
    if verify:  # the files read here; not model.safetensors
        verify_checkpoint(path, (STATE_JSON, STATE_TENSORS, TRAINABLE, EMA))
    try:
        meta = json.loads((path / STATE_JSON).read_text())
        state = unflatten_state(meta["state"], load_file(str(path / STATE_TENSORS)))
        trainable = load_file(str(path / TRAINABLE)) if (path / TRAINABLE).is_file() else None
        ema = load_file(str(path / EMA)) if (path / EMA).is_file() else None
        if trainable is None and not (path / SHARDED).is_dir():
            raise FileNotFoundError(f"neither {TRAINABLE} nor {SHARDED}/")
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path}: cannot read it ({error}); resume from an older one.") from error
    for name, tensors in ((TRAINABLE, trainable or {}), (EMA, ema or {})):
        check_finite(tensors, what=f"checkpoint {path / name}", fix=_older_hint(path) + " Lower optim.lr or "
                     "raise optim.warmup_steps if training diverges again.")
    return int(meta["step"]), trainable, ema, state


def is_sharded(path: Path) -> bool:
    """Whether checkpoint folder `path` keeps its trained tensors sharded (an FSDP run's)."""
    return (Path(path) / SHARDED).is_dir()


def load_sharded_state(path: Path, state: dict) -> None:
    """Fill `state` (the same structure of sharded tensors `save_training_checkpoint` got as `sharded`) in place from
    checkpoint folder `path`; every rank calls it and reads its own shards."""
    import torch.distributed.checkpoint as dcp

    try:
        dcp.load(state, checkpoint_id=str(Path(path) / SHARDED))
    except Exception as error:  # DCP raises CheckpointException and others for missing keys and bad files
        raise CheckpointError(f"checkpoint {path}: cannot read its {SHARDED}/ state ({error}); it was written by "
                              "another model or model.train setting, or is damaged. Resume from an older one."
                              ) from error


def read_sharded_tensors(path: Path, group: str) -> dict[str, Tensor]:
    """The full tensors of entry `group` ("trainable" or "ema") of a sharded checkpoint folder, read in one process
    without a process group (for export and inspection)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = Path(path) / SHARDED
    reader = dcp.FileSystemReader(str(folder))
    prefix = group + "."
    wanted = {key[len(prefix):]: meta for key, meta in reader.read_metadata().state_dict_metadata.items()
              if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)}
    if not wanted:
        raise CheckpointError(f"checkpoint {path}: its {SHARDED}/ holds no {group!r} tensors.")
    tensors = {name: torch.empty(meta.size, dtype=meta.properties.dtype) for name, meta in wanted.items()}
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": one process is what is meant here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({group: tensors}, storage_reader=reader, no_dist=True)
    return tensors


def has_ema(path: Path) -> bool:
    """Whether checkpoint folder `path` keeps an EMA of the trained weights (either format)."""
    path = Path(path)
    if (path / EMA).is_file():
        return True
    if not is_sharded(path):
        return False
    try:
        return "ema" in json.loads((path / STATE_JSON).read_text()).get("sharded", [])
    except (OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: {STATE_JSON} is unreadable ({error}); the folder is damaged. "
                              f"{_older_hint(path)}") from error


def trained_files(path: Path) -> tuple[str, ...]:
    """The files of checkpoint folder `path` that hold its raw trained weights (names as in its digests)."""
    path = Path(path)
    if is_sharded(path):
        return tuple(p.relative_to(path).as_posix() for p in sorted((path / SHARDED).iterdir()) if p.is_file())
    return (TRAINABLE,)


def read_trained(path: Path) -> dict[str, Tensor]:
    """The raw trained weights of checkpoint folder `path` as full tensors by parameter name, from
    ``trainable.safetensors`` or, for an FSDP run, gathered from its ``sharded/`` DCP files (one process)."""
    path = Path(path)
    return read_sharded_tensors(path, "trainable") if is_sharded(path) else load_file(str(path / TRAINABLE))
