"""The exact cue path on world clips: ground-truth masks and face boxes in place of every detector.

Detectors only partly see puppets (docs/world.md), so training and tests on the world pass its ground truth
to `directanimator.cues.extract_cues` with the "given" segmenter and face detector.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor

from directanimator.cues import CueConfig, CueTriplet, extract_cues
from directanimator.errors import InputError

from .render import RenderedClip


def exact_cue_inputs(driving: RenderedClip, reference: RenderedClip) -> dict[str, Tensor]:
    """Keyword arguments of `extract_cues` that give it the ground truth of `driving` and of `reference` (1 frame)."""
    if len(reference) != 1:
        raise InputError(f"reference: expected a one-frame RenderedClip, got {len(reference)} frames.")
    return {
        "driving_mask": driving.person_masks,
        "driving_face_boxes": driving.face_boxes,
        "driving_face_valid": driving.face_valid,
        "reference_mask": reference.person_masks,
        "reference_face_box": reference.face_boxes[0] if bool(reference.face_valid[0]) else None,
    }


def truth_cue_inputs(truth: dict[str, Tensor], *, driving: str = "", reference: str = "reference_") -> dict:
    """The same from a ground-truth file of an export (``gt/*.safetensors``, uint8 masks), by key prefix.

    ``driving=""`` is the clip itself, ``"pseudo_"`` its pseudo driving clip; ``reference="cross_reference_"``
    picks the cross-identity reference.
    """
    try:
        masks = truth[f"{driving}person_masks"]
        ref_valid = bool(truth[f"{reference}face_valid"][0])
        return {
            "driving_mask": masks.float() / 255.0 if not masks.is_floating_point() else masks,
            "driving_face_boxes": truth[f"{driving}face_boxes"],
            "driving_face_valid": truth[f"{driving}face_valid"].bool(),
            "reference_mask": truth[f"{reference}person_masks"].float() / 255.0,
            "reference_face_box": truth[f"{reference}face_boxes"][0] if ref_valid else None,
        }
    except KeyError as error:
        raise InputError(
            f"ground truth: no entry {error.args[0]!r}; the file has {sorted(truth)}. Check the prefixes "
            "(see docs/data_format.md)."
        ) from error


def exact_cues(reference: RenderedClip, driving: RenderedClip, config: CueConfig | None = None) -> CueTriplet:
    """The Driving Cue Triplet of a world clip from ground truth only: no segmenter or face detector runs."""
    config = replace(config or CueConfig(), segmenter="given", face_detector="given")
    return extract_cues(reference.frames, driving.frames, config, **exact_cue_inputs(driving, reference))
