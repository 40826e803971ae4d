"""The recipe's settings: a TOML of tables (``[world]``, ``[vae]``, ``[transformer]``, ``[train]``, ``[stage1]``,
``[stage2]``, ``[validate]``), each stage's TrainConfig resolved from them."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

from directanimator.cues.types import ANCHORS
from directanimator.errors import InputError

from ..config import (TrainConfig, apply_overrides, build_config, merge_tables, parse_override, read_config_file,
                      set_value, validate)
from ..vae import VaeTrainConfig
from ..world.pairs import WorldConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SCALES = {"tiny": "demo_tiny.toml", "demo": "demo_full.toml"}
# WorldSpec fields passed to WorldConfig (and recorded in the synth marker) only when they differ from its defaults
WORLD_OPTIONS = ("limb_thickness", "close_up_probability", "turn_probability", "moving_background_probability",
                 "plain_clothes", "reference_in_place")


@dataclass
class WorldSpec:
    clips: int = 600
    val_clips: int = 8
    size: int = 128  # square frame side in px, the working size of the model
    frames: int = 17
    fps: float = 12.0
    identities: int = 200
    seed: int = 0
    format: str = "mp4"
    backgrounds: list = field(default_factory=list)  # backdrop kinds to draw from; empty: all (world/background.py)
    limb_thickness: float = WorldConfig.limb_thickness  # arms and legs this many times as thick
    close_up_probability: float = WorldConfig.close_up_probability
    turn_probability: float = WorldConfig.turn_probability
    moving_background_probability: float = WorldConfig.moving_background_probability
    plain_clothes: bool = WorldConfig.plain_clothes  # one-colour long sleeves and trousers, no accessories
    reference_in_place: bool = WorldConfig.reference_in_place  # same-ID references where the clip starts


@dataclass
class StageSpec:
    """One training stage: its length, and TrainConfig tables of this stage only, merged over the recipe's
    ``[train]`` (``[stage2.optim] lr = 2e-4`` in the recipe TOML)."""

    steps: int = 1000
    budget_minutes: float = 0.0  # stop at the first checkpoint after this much training time (0: no limit)
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    cues: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    stage2: dict = field(default_factory=dict)

    def tables(self) -> dict:
        """The stage's own TrainConfig tables (the empty ones left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), dict) and getattr(self, f.name)}


# the TrainConfig tables a stage may set (StageSpec has a dict field for each: tests/test_recipe_config.py)
STAGE_TABLES = tuple(f.name for f in fields(TrainConfig))


@dataclass
class ValidateSpec:
    clips: int = 4
    steps: int = 25
    guidance: float = 3.0
    scheduler: str = "dpm"  # "dpm" or "ddim" (directanimator.sampling.SCHEDULERS)
    seed: int = 0
    samples: int = 1  # the mean of this many results (seeds seed, seed + 1, ...; sampling.sample_latents)
    anchor: str = ""  # the location cue's anchor at inference (CueConfig.anchor); empty: the model's own

    def sampling(self) -> dict:
        """The sampling settings: keyword arguments of `validate_model`, recorded in demo.json and the card."""
        return {"steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler, "seed": self.seed,
                "samples": self.samples, "anchor": self.anchor or None}


@dataclass
class RecipeConfig:
    world: WorldSpec = field(default_factory=WorldSpec)
    vae: VaeTrainConfig = field(default_factory=VaeTrainConfig)
    transformer: dict = field(default_factory=dict)  # CogVideoXTransformer3DModel kwargs (1.5 I2V layout)
    train: dict = field(default_factory=dict)  # a TrainConfig table shared by both stages
    stage1: StageSpec = field(default_factory=StageSpec)
    stage2: StageSpec = field(default_factory=StageSpec)
    validate: ValidateSpec = field(default_factory=ValidateSpec)
    max_megabytes: float = 30.0  # the whole output folder, weights and demo inputs
    train_clips: int = 0  # world clips prepared for the two stages (the first ones); 0: every training clip


def load_recipe(scale: str = "demo", overrides: list[str] | tuple[str, ...] = (), *,
                path: str | Path | None = None) -> RecipeConfig:
    """The recipe of `scale` (``training/configs/demo_<tiny|full>.toml``) or of `path`, with ``KEY=VALUE``
    overrides (``vae.steps=5``, ``stage1.steps=100``, ``train.optim.lr=1e-3``, ``stage2.optim.lr=2e-4``), checked
    before any work."""
    if path is None:
        if scale not in SCALES:
            raise InputError(f"--scale {scale!r}: use one of {', '.join(SCALES)}.")
        path = CONFIG_DIR / SCALES[scale]
    return recipe_from_data(apply_overrides(read_config_file(path), overrides))


def _stage_set_as_tables(data: dict) -> dict:
    """`data` with a stage's deprecated ``set = ["table.key=value", ...]`` moved into its tables (read in order,
    after the tables, as before); warns once per stage that uses it."""
    data = copy.deepcopy(data)
    for name in ("stage1", "stage2"):
        stage = data.get(name)
        if not isinstance(stage, dict) or "set" not in stage:
            continue
        texts = stage.pop("set")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"recipe {name}.set={texts!r}: a list of \"table.key=value\" strings (deprecated: write "
                             f"the values as tables, e.g. [{name}.optim] lr = 2e-4).")
        settings = [parse_override(text) for text in texts]
        for text, (key, _) in zip(texts, settings):
            if len(key) < 2 or key[0] not in STAGE_TABLES:
                raise InputError(f"recipe {name}.set: {text!r} names no key of a TrainConfig table "
                                 f"({', '.join(STAGE_TABLES)}).")
        if texts:  # FutureWarning: shown to the users of the command line too
            warnings.warn(f"recipe {name}.set = [...] is deprecated and will be removed in the next release: write "
                          f"its values as TOML tables of the stage, e.g. [{name}.optim] lr = 2e-4 for "
                          f"\"optim.lr=2e-4\" (or --set {name}.optim.lr=2e-4).", FutureWarning, stacklevel=4)
        for key, value in settings:
            set_value(stage, key, value)
    return data


def recipe_from_data(data: dict) -> RecipeConfig:
    """A checked RecipeConfig from the tables of a recipe TOML (already read, overrides applied)."""
    data = _stage_set_as_tables(data)
    raw_transformer, raw_train = data.pop("transformer", {}), data.pop("train", {})
    recipe = build_config(RecipeConfig, data)
    recipe.transformer, recipe.train = dict(raw_transformer), dict(raw_train)
    recipe.vae.validate()
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: RecipeConfig) -> None:
    """Raise InputError naming the first value that cannot work, before anything is written."""
    w = recipe.world
    if w.clips < 2 or not 1 <= w.val_clips < w.clips:
        raise InputError(f"recipe world.clips={w.clips}, world.val_clips={w.val_clips}: need at least 2 clips and "
                         "1 <= val_clips < clips (the held-out pairs of validation and the demo inputs).")
    from ..world.background import BACKGROUND_KINDS

    if set(w.backgrounds) - set(BACKGROUND_KINDS):
        raise InputError(f"recipe world.backgrounds={w.backgrounds}: choose from {', '.join(BACKGROUND_KINDS)}.")
    try:
        world_config(w).validate()
    except InputError as error:
        raise InputError(f"recipe [world]: {error}") from None
    if not 0 <= recipe.train_clips <= w.clips - w.val_clips:
        raise InputError(f"recipe train_clips={recipe.train_clips}: 0 (all) up to world.clips - world.val_clips = "
                         f"{w.clips - w.val_clips}.")
    if w.format not in ("mp4", "png"):
        raise InputError(f"recipe world.format={w.format!r}: 'mp4' or 'png'.")
    if w.size % 16 or w.size < 64:
        raise InputError(f"recipe world.size={w.size}: a multiple of 16, at least 64 px.")
    if w.frames < recipe.vae.frames:
        raise InputError(f"recipe world.frames={w.frames} is shorter than the VAE's training window vae.frames="
                         f"{recipe.vae.frames}; lower vae.frames or render longer clips.")
    needed = {"num_attention_heads", "attention_head_dim", "num_layers"}
    if not needed <= set(recipe.transformer):
        raise InputError(f"recipe [transformer]: needs {sorted(needed)} (CogVideoXTransformer3DModel kwargs); has "
                         f"{sorted(recipe.transformer)}.")
    for name in ("stage1", "stage2"):
        stage = getattr(recipe, name)
        if stage.steps < 1 or stage.budget_minutes < 0:
            raise InputError(f"recipe {name}.steps must be >= 1 and {name}.budget_minutes >= 0.")
        config = stage_config(recipe, Path("work"), name, check_paths=False)
        if stage.budget_minutes and config.optim.schedule != "constant":
            raise InputError(f"recipe {name}.budget_minutes: a time budget stops training early, which a "
                             f"{config.optim.schedule!r} LR schedule over {stage.steps} steps does not expect; use "
                             "train.optim.schedule='constant' (with warmup) or budget_minutes=0.")
    if recipe.validate.clips < 1 or recipe.validate.steps < 1 or recipe.validate.samples < 1:
        raise InputError("recipe validate.clips, validate.steps and validate.samples must be >= 1.")
    from directanimator.sampling import SCHEDULERS

    if recipe.validate.anchor and recipe.validate.anchor not in ANCHORS:
        raise InputError(f"recipe validate.anchor={recipe.validate.anchor!r}: use 'first', 'clip', or leave it out "
                         "for the model's own setting (CueConfig.anchor).")
    if recipe.validate.scheduler not in SCHEDULERS:
        raise InputError(f"recipe validate.scheduler={recipe.validate.scheduler!r}: use one of "
                         f"{', '.join(sorted(SCHEDULERS))}.")


def transformer_config(recipe: RecipeConfig) -> dict:
    """`CogVideoXTransformer3DModel` kwargs: the CogVideoX 1.5 I2V layout at the world's size."""
    latent = recipe.world.size // 8
    base = dict(in_channels=2 * recipe.vae.latent_channels, out_channels=recipe.vae.latent_channels,
                patch_size=2, patch_size_t=2, patch_bias=False, use_rotary_positional_embeddings=True,
                use_learned_positional_embeddings=False, sample_height=latent, sample_width=latent,
                sample_frames=recipe.world.frames, text_embed_dim=32, max_text_seq_length=8)
    return {**base, **recipe.transformer}


def stage_config(recipe: RecipeConfig, work: Path, stage: str, *, check_paths: bool = True,
                 checkpoint: str = "") -> TrainConfig:
    """The TrainConfig of `stage` ("stage1" or "stage2"): the shared [train] table, the paths and sizes of the work
    folder and the world, the stage's steps, then the stage's own tables ([stage2.optim], ...) over them."""
    spec: StageSpec = getattr(recipe, stage)
    data = copy.deepcopy(recipe.train)
    paths = {"model.backbone": str(work / "backbone"), "data.metadata": str(work / "world"),
             "data.cache": str(work / "cache"), "data.frames": recipe.world.frames,
             "data.buckets": [[recipe.world.size, recipe.world.size]], "run.out_dir": str(work / "runs"),
             "run.name": stage, "run.steps": spec.steps, "model.checkpoint": checkpoint,
             "cues.height": recipe.world.size, "cues.width": recipe.world.size}
    for key, value in paths.items():
        set_value(data, key, value)
    data = merge_tables(data, spec.tables())
    return validate(build_config(TrainConfig, data), check_paths=check_paths)


def _world_options(w: WorldSpec) -> dict:
    """The world settings that differ from WorldConfig's defaults: a default world's synth marker reads as before."""
    return {name: getattr(w, name) for name in WORLD_OPTIONS if getattr(w, name) != getattr(WorldConfig, name)}


def world_config(w: WorldSpec) -> WorldConfig:
    """The WorldConfig that `w` renders."""
    return WorldConfig(height=w.size, width=w.size, num_frames=w.frames, fps=w.fps, identities=w.identities,
                       **({"backgrounds": tuple(w.backgrounds)} if w.backgrounds else {}), **_world_options(w))
