"""Segment-anything (SAM 1): safe checkpoint loading, architecture inference, and prompting from a guide mask.

Checkpoints are read weights-only (``torch.load(weights_only=True)`` or safetensors). The three official image
encoders (vit_b, vit_l, vit_h) are recognised from their width; any other architecture, such as the tiny models of
the tests, carries its description in the checkpoint (safetensors metadata ``sam_arch``, JSON of `SamArch`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import save_safetensors
from ..errors import BackendUnavailableError, CheckpointError, CueError
from ..tensors import as_frames, as_masks

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
ARCH_METADATA_KEY = "sam_arch"
SAM_INSTALL_HINT = 'install segment-anything and torchvision (`pip install "segment-anything>=1.0" torchvision`)'


@dataclass(frozen=True)
class SamArch:
    """Everything needed to build a segment-anything model; defaults are the official values."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "checkpoint") -> "SamArch":
        """Parse `text` (JSON object of SamArch fields); CheckpointError naming `source` when it is unusable."""
        try:
            values = json.loads(text)
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"unknown fields {unknown}")
            values["encoder_global_attn_indexes"] = tuple(int(i) for i in values["encoder_global_attn_indexes"])
            arch = cls(**values)
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(
                f"{source}: metadata {ARCH_METADATA_KEY!r} is not a valid SAM architecture ({exc}). Expected a JSON "
                f"object with the fields of SamArch; re-save the checkpoint with save_sam_checkpoint()."
            ) from exc
        sizes = (arch.encoder_embed_dim, arch.encoder_depth, arch.encoder_num_heads, arch.img_size, arch.patch_size,
                 arch.prompt_embed_dim, arch.decoder_depth, arch.decoder_num_heads)
        if min(sizes) < 1 or arch.img_size % arch.patch_size or arch.encoder_embed_dim % arch.encoder_num_heads:
            raise CheckpointError(f"{source}: metadata {ARCH_METADATA_KEY!r} describes an impossible model: {arch}.")
        return arch


OFFICIAL_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
}


def _segment_anything():
    try:
        from segment_anything import SamPredictor
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    except Exception as exc:
        raise BackendUnavailableError(
            f"SAM segmentation is unavailable ({type(exc).__name__}: {exc}); {SAM_INSTALL_HINT}, or use the "
            "mediapipe segmenter."
        ) from exc
    return SamPredictor, ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


def build_sam(arch: SamArch) -> nn.Module:
    """A segment-anything ``Sam`` of architecture `arch` with fresh weights, in eval mode."""
    _, ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer = _segment_anything()
    grid = arch.img_size // arch.patch_size
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.encoder_embed_dim,
            depth=arch.encoder_depth, num_heads=arch.encoder_num_heads, mlp_ratio=arch.mlp_ratio,
            out_chans=arch.prompt_embed_dim, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=arch.window_size, global_attn_indexes=arch.encoder_global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(arch.img_size, arch.img_size), mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth, embedding_dim=arch.prompt_embed_dim, mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim, iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
    )
    return model.eval()


def save_sam_checkpoint(model: nn.Module, path: str | Path, arch: SamArch) -> Path:
    """Write `model`'s weights as safetensors with `arch` in the metadata (temporary name, then rename)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"save_sam_checkpoint: {path} must end in .safetensors.")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save_safetensors(state, path, {"format": "pt", ARCH_METADATA_KEY: arch.to_json()})


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], SamArch | None]:
    """State dict and the architecture the file declares (None when it declares none)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"SAM checkpoint {path}: not a readable safetensors file ({exc}).") from exc
        text = metadata.get(ARCH_METADATA_KEY)
        return state, None if text is None else SamArch.from_json(text, source=f"SAM checkpoint {path}")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for truncated zip archives
        raise CheckpointError(
            f"SAM checkpoint {path}: cannot be loaded weights-only ({type(exc).__name__}: {str(exc)[:200]}). "
            "Pickled models are refused because unpickling can run code; use an official segment-anything "
            "checkpoint (a plain state dict, e.g. sam_vit_b_01ec64.pth) or convert it to .safetensors."
        ) from exc
    arch = None
    if isinstance(loaded, dict) and isinstance(loaded.get(ARCH_METADATA_KEY), str):
        arch = SamArch.from_json(loaded[ARCH_METADATA_KEY], source=f"SAM checkpoint {path}")
    for wrapper in ("model", "state_dict"):  # training frameworks nest the weights one level down
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise CheckpointError(
            f"SAM checkpoint {path}: holds a {type(loaded).__name__}, not a state dict of tensors. "
            "Use an official segment-anything checkpoint or a .safetensors file."
        )
    return loaded, arch


def infer_sam_arch(state: dict[str, Tensor], *, source: str = "checkpoint") -> tuple[str, SamArch]:
    """Official model type and architecture of a SAM state dict, from its image-encoder width and depth."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise CheckpointError(
            f"{source}: no {key}; this is not a segment-anything (SAM 1) checkpoint. SAM 2, HQ-SAM, MobileSAM and "
            "other variants are not supported; use sam_vit_b/l/h from segment-anything."
        )
    width = int(state[key].shape[0])
    depth = len({m.group(1) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    for name, arch in OFFICIAL_ARCHS.items():
        if arch.encoder_embed_dim == width:
            if arch.encoder_depth != depth:
                break
            return name, arch
    official = ", ".join(
        f"{n}: width {a.encoder_embed_dim}, {a.encoder_depth} blocks" for n, a in OFFICIAL_ARCHS.items())
    raise CheckpointError(
        f"{source}: image encoder of width {width} with {depth} blocks matches no official SAM model ({official}). "
        f"For a custom architecture, save the checkpoint as .safetensors with its SamArch in the metadata key "
        f"{ARCH_METADATA_KEY!r} (save_sam_checkpoint does this)."
    )


_CACHE_SIZE = 2  # a vit_h is 2.5 GB: keep few
_cache: OrderedDict[tuple, nn.Module] = OrderedDict()
_cache_lock = threading.Lock()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_sam(checkpoint: str | Path, *, device: str | torch.device | None = None) -> nn.Module:
    """Load a segment-anything model from `checkpoint` (.pth/.pt/.safetensors), cached per path and device."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"SAM checkpoint {str(checkpoint)!r}: no such file. Put a segment-anything checkpoint (e.g. "
            "sam_vit_b_01ec64.pth) in ComfyUI/models/sams/ or pass its full path."
        )
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"SAM checkpoint {path}: unsupported extension {path.suffix!r}; expected one of {CHECKPOINT_SUFFIXES}."
        )
    device = torch.device(device) if device is not None else default_device()
    stat = path.resolve().stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(device))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        state, arch = _read_checkpoint(path)
        name = "custom"
        if arch is None:
            name, arch = infer_sam_arch(state, source=f"SAM checkpoint {path}")
        model = build_sam(arch)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"SAM checkpoint {path}: weights do not fit the {name} architecture {arch} "
                f"({str(exc).splitlines()[0][:300]}). Use an unmodified segment-anything checkpoint."
            ) from exc
        model.to(device)
        log.info("Loaded SAM %s from %s on %s", name, path, device)
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return model


def clear_sam_cache() -> None:
    """Forget every cached SAM model (frees its memory once no caller holds it)."""
    with _cache_lock:
        _cache.clear()


@dataclass
class SamPrompt:
    """Prompts for one frame, in pixels: ``box`` (x0, y0, x1, y1), ``points [N, 2]`` (x, y), ``labels [N]`` 1/0."""

    box: np.ndarray
    points: np.ndarray
    labels: np.ndarray


def sam_prompts(
    mask: Tensor | np.ndarray,
    *,
    threshold: float = 0.5,
    num_positive: int = 3,
    num_negative: int = 2,
    box_margin: float = 0.05,
    min_component: float = 0.05,
) -> SamPrompt | None:
    """Box and points prompting SAM for the person of a guide `mask` ``[H, W]``; None when the mask is empty.

    Pixels above `threshold` count as person; connected parts smaller than `min_component` of the largest one
    (background specks) are ignored. The box encloses the rest, widened by `box_margin` of its size on each side
    (guide masks tend to miss blurred hands and feet). Positive points are the deepest mask pixels in
    `num_positive` horizontal bands of the box (head to feet); negative points are the box pixels farthest from the mask
    (e.g. between the legs), at least a tenth of the box width away, greedily spread apart.
    """
    import cv2

    person = np.asarray(mask, dtype=np.float32) > threshold
    height, width = person.shape
    if not person.any():
        return None
    count, labels, stats, _ = cv2.connectedComponentsWithStats(person.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= min_component * areas.max()) + 1
    person = np.isin(labels, keep)
    ys, xs = np.nonzero(person)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    mx, my = box_margin * (x1 - x0), box_margin * (y1 - y0)
    box = np.array([max(0.0, x0 - mx), max(0.0, y0 - my), min(width, x1 + mx), min(height, y1 + my)], np.float32)

    points, point_labels = [], []
    edges = np.linspace(y0, y1, num_positive + 1).round().astype(int)
    for top, bottom in zip(edges[:-1], edges[1:]):
        # zero padding makes the band's cut edges and the image border count as mask boundary
        band = np.pad(person[top:max(bottom, top + 1)], 1).astype(np.uint8)
        depth = cv2.distanceTransform(band, cv2.DIST_L2, 5)
        if depth.max() <= 0:
            continue
        # of the (often many) deepest pixels, the one nearest their mean: the middle of a limb, not its corner
        ys_, xs_ = np.nonzero(depth >= depth.max() - 0.5)
        k = int(np.argmin((ys_ - ys_.mean()) ** 2 + (xs_ - xs_.mean()) ** 2))
        points.append((xs_[k] - 1 + 0.5, top + ys_[k] - 1 + 0.5))
        point_labels.append(1)

    bx0, by0, bx1, by1 = int(box[0]), int(box[1]), int(np.ceil(box[2])), int(np.ceil(box[3]))
    outside = cv2.distanceTransform((~person).astype(np.uint8), cv2.DIST_L2, 5)[by0:by1, bx0:bx1].copy()
    min_distance = max(2.0, 0.1 * (x1 - x0))
    for _ in range(num_negative):
        if outside.size == 0 or outside.max() < min_distance:
            break
        y, x = np.unravel_index(int(outside.argmax()), outside.shape)
        points.append((bx0 + x + 0.5, by0 + y + 0.5))
        point_labels.append(0)
        r = int(outside[y, x])  # no later negative point within this distance
        outside[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = 0
    return SamPrompt(box=box, points=np.array(points, np.float32).reshape(-1, 2),
                     labels=np.array(point_labels, np.int64))


class SamSegmenter:
    """``segmenter(rgb_uint8 [H, W, 3], guide [H, W], threshold=0.5) -> float32 [H, W]`` soft SAM mask."""

    def __init__(self, checkpoint: str | Path, *, device: str | torch.device | None = None) -> None:
        SamPredictor = _segment_anything()[0]
        self.model = load_sam(checkpoint, device=device)
        self.predictor = SamPredictor(self.model)

    def __call__(self, image: np.ndarray, guide: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
        prompt = sam_prompts(guide, threshold=threshold)
        if prompt is None:
            return np.zeros(image.shape[:2], np.float32)
        self.predictor.set_image(image, image_format="RGB")
        logits, _, _ = self.predictor.predict(
            point_coords=prompt.points if len(prompt.points) else None,
            point_labels=prompt.labels if len(prompt.labels) else None,
            box=prompt.box, multimask_output=False, return_logits=True,
        )
        # SAM thresholds its logits at 0; the sigmoid keeps that level at 0.5 and softens the edges.
        return torch.sigmoid(torch.as_tensor(logits[0])).float().cpu().numpy()


def sam_segment(
    frames: Tensor,
    guide_masks: Tensor,
    *,
    checkpoint: str | Path,
    threshold: float = 0.5,
    device: str | torch.device | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> Tensor:
    """SAM person masks ``[F, H, W]`` in 0..1 for `frames`, each frame prompted from its `guide_masks` frame."""
    from .segmentation import frame_uint8

    frames = as_frames(frames, name="frames")
    guide_masks = as_masks(guide_masks, like=frames, name="guide_masks")
    if not 0.0 < threshold < 1.0:
        raise CueError(f"sam_segment: threshold={threshold} must be between 0 and 1 (exclusive), e.g. 0.5.")
    segmenter = SamSegmenter(checkpoint, device=device)
    out = torch.empty(frames.shape[:3], dtype=torch.float32)
    for i in range(frames.shape[0]):
        out[i] = torch.from_numpy(segmenter(frame_uint8(frames[i]), guide_masks[i].numpy(), threshold=threshold))
        if on_frame is not None:
            on_frame(i)
    return out
