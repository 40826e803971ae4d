"""`python -m training recipe --out models/demo --scale demo`: the bundled demo model in one command (DESIGN.md 9).

Stages, in a work folder (``--work``, default ``runs/recipe_<scale>``), each skipped on ``--resume`` once its
marker ``markers/<stage>.json`` exists (an interrupted stage continues from its own checkpoints):

1. ``synth``    procedural-world clips with ground truth, cross-identity pairs and pseudo driving clips
2. ``vae``      a small CogVideoX VAE trained from scratch (`training.vae`), then frozen
3. ``backbone`` a diffusers folder: a fresh small `CogVideoXTransformer3DModel` in the CogVideoX 1.5 layout, the
                trained ``vae/`` and a ``scheduler/`` config
4. ``prepare``  cues (exact, from the world's ground truth) and VAE latents of every clip
5. ``stage1``   same-identity training, whole backbone + CueFusion
6. ``pseudo``   the world's own pseudo driving clips (a third identity performing the clip's motion, exact ground
                truth), already cached by ``prepare``
7. ``stage2``   cross-identity training with the S2X loss to the frozen stage-1 model
8. ``export``   ``transformer/`` (trained weights), ``vae/``, ``scheduler/``, ``directanimator.safetensors``
                (CueFusion, null text, scheduler and cue configs) and the bundled demo inputs
9. ``validate`` held-out cross-identity pairs: PSNR/SSIM of the model and of the static-reference baseline
10. ``card``    ``MODEL_CARD.md`` + ``model_card.json``; the size limit is checked, then the folder is moved to --out

Why CogVideoX 1.5's layout: rotary positions only (no learned table), so any working size and length works,
as the demo's real-video path needs; and temporal patches of 2 halve the tokens, so a CPU step costs half.
Why the world's pseudo clips: they are what a perfect stage-1 renderer would produce (another identity, the same
motion, at another place and size), with exact masks, whereas a from-scratch stage-1 model's renders would be
blurred and leak the source identity; `python -m training pseudo render` remains for real data.

The package: `config` (the recipe's tables and each stage's TrainConfig), `stages` (one function per stage),
`card` (the model card and its template), `cli` (the driver and its command line).
"""

from directanimator.demo import CHECKPOINT as CHECKPOINT_NAME, DEMO_DIR, DEMO_JSON, TRUTH

from .card import CARD, CARD_JSON, STAGES, card_record, model_card_text
from .cli import add_arguments, recipe_command, run, run_recipe
from .config import (CONFIG_DIR, SCALES, STAGE_TABLES, WORLD_OPTIONS, RecipeConfig, StageSpec, ValidateSpec,
                     WorldSpec, check_recipe, load_recipe, recipe_from_data, stage_config, transformer_config,
                     world_config)
from .stages import (ELAPSED, OUT_COMMAND, RECIPE_JSON, WORK_COMMAND, Markers, check_folders, demo_entry,
                     folder_megabytes, run_stage, write_demo_inputs)

__all__ = ["CARD", "CARD_JSON", "CHECKPOINT_NAME", "CONFIG_DIR", "DEMO_DIR", "DEMO_JSON", "ELAPSED", "OUT_COMMAND",
           "RECIPE_JSON", "SCALES", "STAGES", "STAGE_TABLES", "TRUTH", "WORK_COMMAND", "WORLD_OPTIONS", "Markers",
           "RecipeConfig", "StageSpec", "ValidateSpec", "WorldSpec", "add_arguments", "card_record", "check_folders",
           "check_recipe", "demo_entry", "folder_megabytes", "load_recipe", "model_card_text", "recipe_command",
           "recipe_from_data", "run", "run_recipe", "run_stage", "stage_config", "transformer_config",
           "world_config", "write_demo_inputs"]
