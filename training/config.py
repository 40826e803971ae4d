"""One run's configuration: dataclasses loaded from TOML (or the JSON a run folder keeps), with ``--set`` overrides.

Every key is checked (unknown names, types, ranges) before any model or data is touched, and the resolved
configuration is written into the run folder, so a run can be repeated from its folder alone.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from directanimator.atomic import atomic_path, check_output
from directanimator.cues.types import CueConfig
from directanimator.errors import CueError, InputError

TRAIN_MODES = ("lora", "full", "cue")
FROZEN_STORAGE = ("dtype", "fp8")  # model.frozen_storage (training.frozen)
FROZEN_OFFLOAD = ("none", "blocks")  # model.frozen_offload
SCHEDULES = ("constant", "cosine", "wsd")
LAMBDA_SCHEDULES = ("constant", "linear")
TEACHER_MODES = ("copy", "lora_disabled")
POSE_SOURCES = ("cues", "skeleton")
PRECISIONS = ("auto", "no", "bf16")
ENCODE_PRECISIONS = ("fp32", "bf16")
FITS = ("crop", "letterbox")
REFERENCES = ("outside", "random_outside", "first", "file")
METADATA = "metadata.jsonl"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as directanimator.models.loader reads it


@dataclass
class ModelConfig:
    """Backbone source, weights to start from and what is trained."""

    backbone: str = ""  # diffusers folder (transformer/, vae/, scheduler/) or Hugging Face repo id
    vae: str = ""  # VAE folder or repo id when the backbone source has none
    checkpoint: str = ""  # DirectAnimator checkpoint to start from (stage 2: the stage-1 result)
    dtype: str = "fp32"  # storage dtype of the frozen weights; trained weights stay fp32
    train: str = "lora"  # "lora" (backbone LoRA), "full" (whole backbone) or "cue" (backbone frozen)
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_targets: list = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    modulation_rank: int = 64  # CueFusion ranks of a fresh model (a checkpoint brings its own)
    text_rank: int = 64
    reference_in_every_frame: bool = False  # CueFusionConfig.reference_in_every_frame of a fresh model
    residual_reference: bool = False  # CueFusionConfig.residual_reference of a fresh model
    gradient_checkpointing: bool = True
    # frozen weights (the backbone under lora/cue training, the stage-2 teacher): "dtype" stores them in model.dtype,
    # "fp8" as float8 e4m3 computed in model.dtype (training.frozen); one process or DDP
    frozen_storage: str = "dtype"
    # "blocks": each block's frozen weights on the CPU, moved to the GPU for its forward (needs gradient checkpointing)
    frozen_offload: str = "none"
    null_text: str = ""  # safetensors file with the null-prompt embedding; "" -> the text encoder's "", else zeros
    # T5 encoder of captions and of the null prompt at prepare: a folder with text_encoder/ and tokenizer/ (a CogVideoX
    # repo), a T5 folder holding its tokenizer, or a repo id in the local Hugging Face cache; "" -> the backbone's own
    text_encoder: str = ""


@dataclass
class DataConfig:
    """Where the clips are, how they are cut, sized and dropped out."""

    metadata: str = ""  # metadata.jsonl or the folder holding it (docs/data_format.md)
    cache: str = ""  # prepare cache folder; "" -> <data folder>/cache
    split: str = "train"
    frames: int = 17  # driving frames per sample, 4k+1
    stride: int = 1  # source frames between sampled frames
    max_windows: int = 1  # windows of `frames` cut from each clip (non-overlapping, from the start)
    buckets: list = field(default_factory=lambda: [[128, 128]])  # working sizes [H, W]; a clip takes the nearest aspect
    # more window lengths (4k+1) beside `frames`, for backbones without a fixed length (rotary positions only): a clip
    # takes the longest that it fills (at data.fps), the shortest when it fills none; batches hold one length each
    lengths: list = field(default_factory=list)
    cue_dropout: float = 0.1  # samples trained without cues (the guidance negative branch)
    reference_dropout: float = 0.05  # samples trained with blank reference latents
    text_dropout: float = 0.1  # samples with a caption embedding trained on the null text instead
    ground_truth: bool = True  # world clips with a ground-truth file: exact cues, no detector
    pseudo: bool = True  # prepare stage-2 cues from each entry's pseudo_driving clip
    pseudo_variants: int = 1  # random realignments cached per pseudo clip
    align_scale: list = field(default_factory=lambda: [0.75, 1.25])  # range of the random driving rescale
    align_shift: float = 0.15  # random driving shift, fraction of the frame side
    workers: int = 0  # cue-extraction processes in prepare (0: in the main process)
    # "cues": the Driving Cue Triplet; "skeleton": the skeleton-map baseline (benchmarks/claims.py): the pose slot
    # holds an OpenPose-style map of the ground-truth joints through a simulated estimator, face and location are
    # blank (world clips with ground truth only)
    pose_source: str = "cues"
    seed: int = -1  # seed of the cached random realignments; -1: run.seed (re-seed training alone with data.seed)
    skeleton_errors: list = field(default_factory=lambda: [0.05, 0.05, 1.0, 0.03])  # swap, drop, jitter px, front_back
    # "bf16": prepare runs the VAE encoder under bf16 autocast (on a CPU with AVX512-BF16 or AMX about 2.7x as fast,
    # latents within 0.5 % rms of fp32: docs/benchmarks.md); "fp32": as the model's dtype gives
    encode_precision: str = "fp32"
    device: str = "auto"  # prepare's VAE: "auto" (the GPU of this process when there is one, else the CPU), cpu, cuda:N
    # how a clip fills its bucket: "crop" (bucket aspect, centred on the person over the whole window and widened
    # towards a letterbox rather than cutting them) or "letterbox" (the whole frame, black bars)
    fit: str = "crop"
    fps: float = 0.0  # frame rate windows are cut at (source frames resampled to it); 0: each clip's own rate
    # the reference of a clip whose metadata names no `reference` image (one that does is always used):
    # "outside" (a frame of the clip outside the target window: the middle of the longer part before or after it),
    # "random_outside" (a seeded random such frame), "first" (frame 0, the older behaviour), "file" (no fallback:
    # entries without a reference image are skipped)
    reference: str = "outside"
    # noise on the cached reference latent at batch time (a latent-space version of CogVideoX image-to-video
    # fine-tuning's noise, which goes on the pixel image before encoding): [mean, std] of log sigma,
    # sigma = exp(mean + std * N(0, 1)) per sample, e.g. [-3.0, 0.5]; [] is off
    reference_noise: list = field(default_factory=list)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    # after a linear warmup: "constant", "cosine" (down to min_lr_ratio over the run), or "wsd" (warmup-stable-decay:
    # constant, then linear down to min_lr_ratio over the last decay_steps)
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the floor of cosine and wsd as a fraction of lr
    decay_steps: int = 0  # wsd only: the length of the final linear decay
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    clip_norm: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.0  # 0 disables the EMA of the trained weights
    adamw_8bit: str = "auto"  # "auto" (bitsandbytes on CUDA when importable), "yes" or "no"


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    steps: int = 1000  # optimizer steps
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    validate_every: int = 0  # 0: never; else samples the held-out pairs (training.validate) every N steps
    validate_clips: int = 2  # held-out pairs per validation
    validate_steps: int = 10  # sampling steps per validation clip
    mixed_precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on the CPU; "bf16": autocast on either
    timestep_min: int = 0
    timestep_max: int = 1000  # uniform timesteps in [timestep_min, timestep_max)
    # minutes a process waits in a collective for the others (rank 0 writing the largest checkpoint, a full 5B
    # model file plus its sharded optimizer, on a slow shared filesystem); NCCL's own default is 10 minutes
    dist_timeout_minutes: float = 60.0


@dataclass
class Stage2Config:
    teacher: str = ""  # stage-1 checkpoint for the frozen teacher; "" -> model.checkpoint
    teacher_mode: str = "copy"  # "copy" (frozen copy) or "lora_disabled" (the student with its LoRA off)
    depth: int = 0  # S2X aligns the vision tokens after block `depth` (0-based)
    lambda_value: float = 0.1  # weight of S2X at full strength
    lambda_schedule: str = "constant"  # "constant" or "linear" (ramp from lambda_start over lambda_ramp_steps)
    lambda_start: float = 0.0
    lambda_ramp_steps: int = 1000


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cues: CueConfig = field(default_factory=CueConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def data_seed(self) -> int:
        """The seed of prepared data: data.seed, or run.seed when it is -1."""
        return self.data.seed if self.data.seed >= 0 else self.run.seed

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name

    @property
    def data_root(self) -> Path:
        """The folder of metadata.jsonl."""
        path = Path(self.data.metadata)
        return path if path.is_dir() else path.parent

    @property
    def metadata_path(self) -> Path:
        path = Path(self.data.metadata)
        return path / METADATA if path.is_dir() else path

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache) if self.data.cache else self.data_root / "cache"

    def lambda_at(self, step: int) -> float:
        """The S2X weight at optimizer step `step` (0-based)."""
        s = self.stage2
        if s.lambda_schedule == "constant" or s.lambda_ramp_steps <= 0:
            return float(s.lambda_value)
        ramp = min(1.0, step / s.lambda_ramp_steps)
        return float(s.lambda_start + (s.lambda_value - s.lambda_start) * ramp)


# --------------------------------------------------------------------------- loading
def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_value(where: str, value: Any, default: Any) -> Any:
    """`value` checked against the type of the field's default; ints are accepted for floats."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    elif isinstance(default, dict):  # a raw table checked where it is used (e.g. a recipe stage's TrainConfig tables)
        ok = isinstance(value, dict)
    else:  # None defaults (optional numbers or strings)
        ok = value is None or isinstance(value, (int, float, str)) and not isinstance(value, bool)
    if not ok:
        want = type(default).__name__ if default is not None else "a number, a string or nothing"
        raise InputError(f"config {where}: {value!r} is a {type(value).__name__}; expected {want}.")
    return value


def build_config(cls, data: dict, where: str = ""):
    """The dataclass `cls` from the table `data` (nested tables build nested dataclasses), every key and type checked;
    `where` names the table in messages ("" for the top level)."""
    if not isinstance(data, dict):
        raise InputError(f"config [{where}]: expected a table of keys, got {data!r}.")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            raise InputError(f"config: unknown key {name!r}.{_suggest(key, list(known))} "
                             f"Known keys of [{where or 'top level'}]: {', '.join(known)}.")
        default = getattr(cls(), key)
        kwargs[key] = build_config(type(default), value, name) if is_dataclass(default) else _check_value(
            name, value, default)
    try:
        return cls(**kwargs)
    except CueError as error:  # CueConfig checks its values when built
        raise InputError(f"config [{where}]: {error}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4); the value is read as TOML, else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set {text!r}: expected KEY.SUB=VALUE, e.g. --set optim.lr=3e-4.")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def set_value(data: dict, key: str | list[str], value: Any) -> dict:
    """Set the dotted `key` (``"optim.lr"`` or ``["optim", "lr"]``) of the raw table `data` to `value`, making the
    tables on the way; returns `data`, changed in place."""
    path = key.split(".") if isinstance(key, str) else list(key)
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {'.'.join(path)}: {part!r} is a value, not a table.")
    node[path[-1]] = value
    return data


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Apply ``KEY.SUB=VALUE`` strings (TOML values, `parse_override`) to the raw table `data`, in order; returns
    `data`, changed in place."""
    for text in overrides:
        set_value(data, *parse_override(text))
    return data


def merge_tables(base: dict, over: dict) -> dict:
    """A new table: `base` with every value of `over` put over it, tables merged key by key (a value that is not a
    table replaces the base's whole)."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_config_file(path: str | Path) -> dict:
    """The raw table of a TOML (or JSON) config file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path}: no such file. Start from training/configs/world_tiny.toml.")
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"config {path}: cannot parse it ({error}).") from error


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                check_paths: bool = True) -> TrainConfig:
    """Build and validate a TrainConfig from a TOML/JSON file and ``KEY.SUB=VALUE`` overrides (applied in order)."""
    data = apply_overrides(read_config_file(path) if path is not None else {}, overrides)
    return validate(build_config(TrainConfig, data), check_paths=check_paths)


def validate(config: TrainConfig, *, check_paths: bool = True) -> TrainConfig:
    """Raise InputError naming the first key whose value cannot work; return `config`."""
    m, d, o, r, s = config.model, config.data, config.optim, config.run, config.stage2

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise InputError(f"config {message}")

    need(m.train in TRAIN_MODES, f"model.train={m.train!r}: use one of {', '.join(TRAIN_MODES)}.")
    need(m.dtype in ("fp32", "bf16", "fp16"), f"model.dtype={m.dtype!r}: use 'fp32', 'bf16' or 'fp16'.")
    need(m.frozen_storage in FROZEN_STORAGE,
         f"model.frozen_storage={m.frozen_storage!r}: use one of {', '.join(FROZEN_STORAGE)} ('dtype' keeps "
         "model.dtype; 'fp8' stores the frozen layers as float8 e4m3, computing in model.dtype).")
    need(m.frozen_offload in FROZEN_OFFLOAD,
         f"model.frozen_offload={m.frozen_offload!r}: use one of {', '.join(FROZEN_OFFLOAD)}.")
    need(m.train != "full" or (m.frozen_storage == "dtype" and m.frozen_offload == "none"),
         "model.frozen_storage / frozen_offload: model.train='full' trains the whole backbone, so nothing of it is "
         "frozen; use them with model.train='lora' or 'cue', or leave them at 'dtype' / 'none'.")
    need(m.frozen_offload != "blocks" or m.gradient_checkpointing,
         "model.frozen_offload='blocks' needs model.gradient_checkpointing=true: without it autograd keeps every "
         "block's weights on the GPU until the backward, so offloading saves nothing.")
    need(m.lora_rank >= 1 and m.modulation_rank >= 1 and m.text_rank >= 1,
         "model.lora_rank, modulation_rank and text_rank must be >= 1.")
    need(d.frames >= 1 and (d.frames - 1) % 4 == 0,
         f"data.frames={d.frames}: the VAE needs 4k+1 frames (5, 9, 13, 17, ..., 49); use "
         f"{max(1, (d.frames - 1) // 4 * 4 + 1)} or {(d.frames - 1) // 4 * 4 + 5}.")
    need(d.stride >= 1 and d.max_windows >= 1, "data.stride and data.max_windows must be >= 1.")
    need(all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 and (n - 1) % 4 == 0 for n in d.lengths),
         f"data.lengths={d.lengths!r}: frame counts 4k+1 (5, 9, ..., 49), or [] for data.frames alone.")
    need(bool(d.buckets) and all(isinstance(b, list) and len(b) == 2 and all(isinstance(v, int) and v >= 64
                                                                            and v % 16 == 0 for v in b)
                                 for b in d.buckets),
         f"data.buckets={d.buckets!r}: a list of [height, width] pairs, each a multiple of 16 and at least 64.")
    for name in ("cue_dropout", "reference_dropout", "text_dropout"):
        value = getattr(d, name)
        need(0.0 <= value <= 1.0, f"data.{name}={value}: a probability in [0, 1].")
    need(len(d.align_scale) == 2 and 0 < d.align_scale[0] <= d.align_scale[1],
         f"data.align_scale={d.align_scale!r}: [low, high] with 0 < low <= high.")
    need(0.0 <= d.align_shift <= 1.0, f"data.align_shift={d.align_shift}: a fraction of the frame side in [0, 1].")
    need(d.pseudo_variants >= 1 and d.workers >= 0, "data.pseudo_variants must be >= 1 and data.workers >= 0.")
    need(d.seed >= -1, f"data.seed={d.seed}: -1 (use run.seed) or a seed >= 0.")
    need(d.encode_precision in ENCODE_PRECISIONS,
         f"data.encode_precision={d.encode_precision!r}: use one of {', '.join(ENCODE_PRECISIONS)}.")
    need(d.fit in FITS, f"data.fit={d.fit!r}: use one of {', '.join(FITS)}.")
    need(d.reference in REFERENCES, f"data.reference={d.reference!r}: use one of {', '.join(REFERENCES)}.")
    need(d.fps >= 0 and math.isfinite(d.fps), f"data.fps={d.fps}: frames per second > 0, or 0 for each clip's own.")
    need(d.reference_noise == [] or (len(d.reference_noise) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in d.reference_noise)
        and d.reference_noise[1] >= 0),
         f"data.reference_noise={d.reference_noise!r}: [mean, std] of the log noise sigma (std >= 0), e.g. "
         "[-3.0, 0.5], or [] for none.")
    need(bool(d.device), "data.device: empty; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    need(d.pose_source in POSE_SOURCES, f"data.pose_source={d.pose_source!r}: use one of {', '.join(POSE_SOURCES)}.")
    need(len(d.skeleton_errors) == 4 and all(isinstance(v, (int, float)) and v >= 0 for v in d.skeleton_errors)
         and all(v <= 1 for k, v in enumerate(d.skeleton_errors) if k != 2),
         f"data.skeleton_errors={d.skeleton_errors!r}: [swap, drop, jitter_px, front_back], probabilities in "
         "[0, 1] and jitter >= 0 px.")
    need(d.pose_source == "cues" or (d.ground_truth and not d.pseudo),
         "data.pose_source='skeleton' is a stage-1 baseline drawn from the world's ground-truth joints; set "
         "data.ground_truth=true and data.pseudo=false.")
    try:
        config.cues.validate()
    except Exception as error:
        raise InputError(f"config [cues]: {error}") from error
    need(o.lr > 0 and math.isfinite(o.lr), f"optim.lr={o.lr}: must be a positive number.")
    need(o.schedule in SCHEDULES, f"optim.schedule={o.schedule!r}: use one of {', '.join(SCHEDULES)}.")
    need(o.warmup_steps >= 0 and 0.0 <= o.min_lr_ratio <= 1.0, "optim.warmup_steps >= 0, min_lr_ratio in [0, 1].")
    need(o.schedule != "wsd" or 1 <= o.decay_steps <= r.steps - o.warmup_steps,
         f"optim.schedule='wsd' decays over optim.decay_steps={o.decay_steps}: give 1 to run.steps - warmup_steps "
         f"({r.steps - o.warmup_steps}).")
    need(len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas), f"optim.betas={o.betas!r}: two values in [0, 1).")
    need(o.weight_decay >= 0 and o.clip_norm >= 0 and o.eps > 0, "optim.weight_decay and clip_norm >= 0, eps > 0.")
    need(0.0 <= o.ema_decay < 1.0, f"optim.ema_decay={o.ema_decay}: in [0, 1) (0 disables the EMA).")
    need(o.adamw_8bit in ("auto", "yes", "no"), f"optim.adamw_8bit={o.adamw_8bit!r}: 'auto', 'yes' or 'no'.")
    need(bool(r.name) and "/" not in r.name and r.name not in (".", ".."),
         f"run.name={r.name!r}: a plain folder name.")
    try:  # a file where the run folder, or a folder above it, would have to be made
        check_output(config.run_dir, name=f"run.out_dir={r.out_dir!r}: the run folder")
    except InputError as error:
        raise InputError(f"config {error}") from None
    need(r.steps >= 1 and r.batch_size >= 1 and r.grad_accum >= 1,
         "run.steps, run.batch_size and run.grad_accum must be >= 1.")
    need(r.save_every >= 1 and r.keep_last >= 1 and r.log_every >= 1 and r.validate_every >= 0
         and r.validate_clips >= 1 and r.validate_steps >= 1,
         "run.save_every, keep_last, log_every, validate_clips and validate_steps must be >= 1; "
         "validate_every >= 0.")
    need(r.mixed_precision in PRECISIONS, f"run.mixed_precision={r.mixed_precision!r}: use {', '.join(PRECISIONS)}.")
    need(0 <= r.timestep_min < r.timestep_max, "run.timestep_min must be >= 0 and below run.timestep_max.")
    need(r.dist_timeout_minutes > 0 and math.isfinite(r.dist_timeout_minutes),
         f"run.dist_timeout_minutes={r.dist_timeout_minutes}: must be > 0 (minutes a process waits for the others, "
         "e.g. while rank 0 writes a checkpoint).")
    need(s.teacher_mode in TEACHER_MODES, f"stage2.teacher_mode={s.teacher_mode!r}: use {', '.join(TEACHER_MODES)}.")
    need(s.lambda_schedule in LAMBDA_SCHEDULES,
         f"stage2.lambda_schedule={s.lambda_schedule!r}: use {', '.join(LAMBDA_SCHEDULES)}.")
    need(s.depth >= 0 and s.lambda_value >= 0 and s.lambda_ramp_steps >= 0,
         "stage2.depth, lambda_value and lambda_ramp_steps must be >= 0.")
    if check_paths:
        need(bool(m.backbone), "model.backbone: empty; give a diffusers folder or a Hugging Face repo id.")
        need(bool(d.metadata), "data.metadata: empty; give the metadata.jsonl of a training set (docs/data_format.md).")
        need(config.metadata_path.is_file(),
             f"data.metadata={d.metadata!r}: {config.metadata_path} does not exist. Export data first "
             "(python -m training synth --out DIR) or fix the path.")
    return config


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _source_problem(source: str) -> str | None:
    """Why the backbone or VAE `source` (a local folder or file, or a Hugging Face repo id) cannot be used, or None.

    A repo id is looked up in the Hugging Face cache only when downloading is off (HF_HUB_OFFLINE); online it is
    left to the loader. A path whose first folder exists here is taken as a local path, not as a repo id."""
    path = Path(source).expanduser()
    if path.exists():
        return None
    first = Path(source).parts[0] if Path(source).parts else ""
    looks_like_repo = bool(REPO_ID.match(source)) and not source.startswith((".", "/", "~")) and \
        not Path(first).is_dir()
    if not looks_like_repo:
        return "no such file or folder. Give a diffusers folder (transformer/, vae/) or a Hugging Face repo id."
    if not _hub_offline():
        return None
    from huggingface_hub import try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(source, name), str)
           for name in ("transformer/config.json", "vae/config.json", "config.json")):
        return None
    return (f"no local folder of that name, and the Hugging Face repo {source!r} is not in the cache while "
            f"downloading is off (HF_HUB_OFFLINE). Download it where there is network (`hf download {source}`) or "
            "give a local diffusers folder.")


def check_model_sources(config: TrainConfig, *, checkpoint: bool = True) -> TrainConfig:
    """Raise InputError when model.backbone, model.vae or (with `checkpoint`) model.checkpoint names nothing usable.
    Training stages and prepare call it before any cache or model is touched (`validate` does not: a config may be
    written before its backbone). Returns `config`."""
    m = config.model
    for key, value in (("model.backbone", m.backbone), ("model.vae", m.vae)):
        problem = _source_problem(value) if value else None
        if problem:
            raise InputError(f"config {key}={value!r}: {problem}")
    if checkpoint and m.checkpoint and not Path(m.checkpoint).is_file():
        raise InputError(f"config model.checkpoint={m.checkpoint!r}: no such file. Give a DirectAnimator checkpoint "
                         "(.safetensors), e.g. the stage-1 export, or leave it empty to start fresh.")
    return config


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as JSON (readable back by `load_config`), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=1, sort_keys=False) + "\n")
    return path


def add_config_arguments(parser) -> None:
    """``config`` (positional) and ``--set KEY.SUB=VALUE`` (repeatable), shared by prepare, stage1 and stage2."""
    parser.add_argument("config", help="run config (TOML, or a run folder's config.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                        help="override one config value (TOML syntax), e.g. --set optim.lr=3e-4; repeatable")
