"""The media bundled with this pack (the demo model's reference picture and driving clip), so a workflow runs in a
fresh ComfyUI without copying files into its input folder first."""

from __future__ import annotations

from pathlib import Path

from directanimator.errors import InputError
from directanimator.video import read_image, read_video

CATEGORY = "DirectAnimator/video"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
MEDIA_FOLDER = "demo"  # each bundled model keeps its demo inputs in <model>/demo/
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".gif")


def bundled_media(suffixes: tuple[str, ...]) -> list[str]:
    """Bundled files with one of `suffixes`, named ``<model>/<file>`` (``demo/reference.png``), sorted."""
    return sorted(f"{path.parents[1].name}/{path.name}" for path in MODELS_DIR.glob(f"*/{MEDIA_FOLDER}/*")
                  if path.suffix.lower() in suffixes)


def bundled_path(name: str, suffixes: tuple[str, ...]) -> Path:
    """The file behind a name `bundled_media` lists; an InputError naming the choices for anything else."""
    choices = bundled_media(suffixes)
    if name not in choices:
        available = ", ".join(choices) or "none: reinstall the pack"
        raise InputError(f"bundled media {name!r}: not in this pack's models/*/{MEDIA_FOLDER}/; choose one of "
                         f"{available}.")
    model, file = name.split("/")
    return MODELS_DIR / model / MEDIA_FOLDER / file


def _combo(suffixes: tuple[str, ...], preferred: str, tooltip: str):
    choices = bundled_media(suffixes)
    default = next((c for c in choices if c.endswith("/" + preferred)), choices[0] if choices else "")
    return (choices, {"default": default, "tooltip": tooltip})


class DirectAnimatorBundledMedia:
    """A reference picture and a driving clip shipped with this pack -> IMAGE reference, IMAGE frames and fps."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "FLOAT")
    RETURN_NAMES = ("reference", "driving", "fps")
    FUNCTION = "run"
    DESCRIPTION = ("The demo inputs bundled in this pack's models/<model>/demo/ folder: the reference picture and "
                   "the driving clip the bundled demo model was validated with. Replace this node with Load Image "
                   "and Load Video -> DirectAnimator Driving Video to use your own media.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": _combo(IMAGE_SUFFIXES, "reference.png",
                                    "Bundled reference picture: the character to animate."),
                "driving": _combo(VIDEO_SUFFIXES, "driving.mp4",
                                  "Bundled driving clip: the motion to follow (target.mp4 is the demo's ground "
                                  "truth, the reference performing the same motion)."),
            },
        }

    def run(self, reference, driving):
        clip = read_video(bundled_path(driving, VIDEO_SUFFIXES))
        return (read_image(bundled_path(reference, IMAGE_SUFFIXES)), clip.frames, float(clip.fps))


NODE_CLASS_MAPPINGS = {"DirectAnimatorBundledMedia": DirectAnimatorBundledMedia}
NODE_DISPLAY_NAME_MAPPINGS = {"DirectAnimatorBundledMedia": "DirectAnimator Bundled Media"}
