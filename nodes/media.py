"""The media bundled with this pack (the demo model's reference picture and driving clip), so a workflow runs in a
fresh ComfyUI without copying files into its input folder first."""

from __future__ import annotations

from pathlib import Path

from directanimator.demo import DEMO_DIR
from directanimator.errors import InputError
from directanimator.video import GIF_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_image, read_video

CATEGORY = "DirectAnimator/video"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
CLIP_EXTENSIONS = VIDEO_EXTENSIONS + GIF_EXTENSIONS  # what read_video reads as one file


def bundled_media(suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Bundled files with one of `suffixes`, by name ``<model>/<file>`` (``demo/reference.png``), sorted by name."""
    found = {f"{path.parents[1].name}/{path.name}": path for path in MODELS_DIR.glob(f"*/{DEMO_DIR}/*")
             if path.suffix.lower() in suffixes}
    return dict(sorted(found.items()))


def bundled_path(name: str, suffixes: tuple[str, ...]) -> Path:
    """The file behind a name `bundled_media` lists; an InputError naming the choices for anything else."""
    choices = bundled_media(suffixes)
    if name not in choices:
        available = ", ".join(choices) or "none: reinstall the pack"
        raise InputError(f"bundled media {name!r}: not in this pack's models/*/{DEMO_DIR}/; choose one of "
                         f"{available}.")
    return choices[name]


def _combo(suffixes: tuple[str, ...], preferred: str, tooltip: str):
    choices = list(bundled_media(suffixes))
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
                "reference": _combo(IMAGE_EXTENSIONS, "reference.png",
                                    "Bundled reference picture: the character to animate."),
                "driving": _combo(CLIP_EXTENSIONS, "driving.mp4",
                                  "Bundled driving clip: the motion to follow (target.mp4 is the demo's ground "
                                  "truth, the reference performing the same motion)."),
            },
        }

    def run(self, reference, driving):
        clip = read_video(bundled_path(driving, CLIP_EXTENSIONS))
        return (read_image(bundled_path(reference, IMAGE_EXTENSIONS)), clip.frames, float(clip.fps))


NODE_CLASS_MAPPINGS = {"DirectAnimatorBundledMedia": DirectAnimatorBundledMedia}
NODE_DISPLAY_NAME_MAPPINGS = {"DirectAnimatorBundledMedia": "DirectAnimator Bundled Media"}
