"""Training data from the prepare cache: clips cut into windows, resolution buckets, a deterministic bucketed batch
order, and batches with cue / reference / text dropout flags.

A cache folder (``<data.cache>/<key>/``, written by `training.prepare`) holds one safetensors file per clip; the key
is a hash of everything that made the files (`cache_key`), so a changed setting never reads stale latents.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from torch import Tensor

from directanimator.errors import InputError
from directanimator.models.cue_latents import CueLatents
from directanimator.text import text_encoder_fingerprint

from .config import TrainConfig
from .framing import MARGIN as CROP_MARGIN, MARGIN_PX as CROP_MARGIN_PX
from .world.dataset import read_metadata

log = logging.getLogger(__name__)

# 2: location cues aligned on body centre lines (cues.fit_similarity); 3: keyed by the backbone's content
# (`backbone_fingerprint`), not its path
CACHE_VERSION = "3"
CUE_FIELDS = ("pose", "face", "body_mask", "face_mask")
SKIPPED = "skipped.jsonl"
PREPARE_INFO = "prepare.json"
NULL_TEXT = "null_text.safetensors"


def clip_id(entry: dict) -> str:
    """A stable name for a metadata entry: a hash of its JSON (paths are relative, so folders can move)."""
    return hashlib.sha1(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, remembered by its path, size and mtime (a real VAE is hundreds of MB; the key is asked
    for several times per prepare and training start)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _digest(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{_file_digest(str(path), stat.st_size, stat.st_mtime_ns)}".encode())
    return digest.hexdigest()[:16]


def vae_folder(root: Path) -> Path:
    """The VAE folder of a backbone folder (its ``vae/``) or of a VAE folder itself."""
    return root / "vae" if (root / "vae" / "config.json").is_file() else root


def backbone_fingerprint(config: TrainConfig) -> dict:
    """What the cached tensors take from the backbone, by content where it is a local folder: the VAE (config and
    weights: the latents) and the transformer's config (latent grid, text shape). A moved or copied folder keeps its
    cache; a VAE retrained into the same folder gets a new one. A Hugging Face repo id stands for itself."""
    m = config.model
    backbone = Path(m.backbone)
    vae = vae_folder(Path(m.vae or m.backbone))
    transformer = backbone / "transformer" / "config.json"
    found = {
        "vae": (_digest(sorted(p for p in vae.iterdir() if p.suffix in (".json", ".safetensors")), vae)
                if (vae / "config.json").is_file() else m.vae or m.backbone),
        "transformer": _digest([transformer], backbone) if transformer.is_file() else m.backbone,
    }
    if (backbone / "image_encoder" / "config.json").is_file():  # Wan2.1 I2V: the reference's CLIP embedding is cached
        parts = [backbone / "image_encoder", backbone / "image_processor"]
        found["image_encoder"] = _digest(sorted(p for part in parts if part.is_dir() for p in part.iterdir()
                                                if p.suffix in (".json", ".safetensors")), backbone)
    return found


def cache_material(config: TrainConfig) -> dict:
    """Every setting the cached tensors depend on."""
    d = config.data
    material = {
        "version": CACHE_VERSION, "backbone": backbone_fingerprint(config),
        "null_text": config.model.null_text, "frames": d.frames, "stride": d.stride, "max_windows": d.max_windows,
        "buckets": d.buckets, "ground_truth": d.ground_truth, "pseudo": d.pseudo,
        "pseudo_variants": d.pseudo_variants, "align_scale": d.align_scale, "align_shift": d.align_shift,
        "seed": config.data_seed, "cues": asdict(config.cues),
    }  # fmt: skip
    if d.pose_source != "cues":  # (the key of a cue cache is unchanged by this option)
        material.update(pose_source=d.pose_source, skeleton_errors=d.skeleton_errors)
    if d.encode_precision != "fp32":  # (nor of an fp32 one by this)
        material.update(encode_precision=d.encode_precision)
    # options added later enter when they differ from what caches were made with before them (keys stay valid)
    if d.fit != "letterbox":  # (crops made before the person's box got its margin have no crop_margin)
        material.update(fit=d.fit, crop_margin=[CROP_MARGIN, CROP_MARGIN_PX])
    if d.fps:
        material.update(fps=d.fps)
    if d.reference != "first":
        material.update(reference=d.reference)
    if d.lengths:
        material.update(lengths=sorted(set(d.lengths) | {d.frames}))
    text_encoder = text_encoder_fingerprint(config.model.text_encoder or config.model.backbone)
    if text_encoder is not None:  # it makes the null prompt and the captions (without one the key is as before)
        material.update(text_encoder=text_encoder)
    return material


def cache_key(config: TrainConfig) -> str:
    """16 hex digits naming the cache folder of `config`."""
    return hashlib.sha256(json.dumps(cache_material(config), sort_keys=True).encode()).hexdigest()[:16]


def cache_folder(config: TrainConfig) -> Path:
    return config.cache_dir / cache_key(config)


def choose_bucket(height: int, width: int, buckets: list[list[int]]) -> tuple[int, int]:
    """The bucket ``(H, W)`` whose aspect is nearest (in log ratio) to the clip's; ties go to the larger area."""
    aspect = math.log(width / height)
    best = min(buckets, key=lambda b: (abs(math.log(b[1] / b[0]) - aspect), -b[0] * b[1]))
    return int(best[0]), int(best[1])


def choose_length(available: int, lengths: list[int]) -> int:
    """The longest window length in `lengths` that a clip of `available` frames fills, else the shortest."""
    fitting = [n for n in lengths if n <= available]
    return max(fitting) if fitting else min(lengths)


def window_starts(num_frames: int, frames: int, stride: int, max_windows: int) -> list[int]:
    """Start frames of up to `max_windows` non-overlapping windows of `frames` frames `stride` apart; none for a
    clip shorter than one window (prepare skips it: padding would train on a frozen last frame)."""
    span = (frames - 1) * stride + 1
    count = min(max_windows, num_frames // span)
    return [k * span for k in range(count)]


@dataclass(frozen=True)
class Item:
    """One training sample: a window of a cached clip."""

    clip: str  # clip id (file stem in the cache)
    window: int
    bucket: tuple[int, ...]  # (H, W), and the window length with data.lengths
    pseudo_variants: int


def _skipped_ids(folder: Path) -> set[str]:
    """Ids of the clips the last `prepare` into `folder` could not encode."""
    path = folder / SKIPPED
    if not path.is_file():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


class CachedClips:
    """Items of a prepared cache for one split; stage 2 keeps the items that have pseudo cues."""

    def __init__(self, config: TrainConfig, *, stage: int = 1, split: str | None = None):
        self.config = config
        self.stage = stage
        self.folder = cache_folder(config)
        if not (self.folder / PREPARE_INFO).is_file():
            raise InputError(
                f"cache {self.folder}: not prepared for this config (key {cache_key(config)}). Run "
                "`python -m training prepare CONFIG` with the same config and --set overrides first."
            )
        split = config.data.split if split is None else split
        items: list[Item] = []
        failed = _skipped_ids(self.folder)
        missing: list[str] = []
        without_pseudo = 0
        for entry in read_metadata(config.data_root):
            if entry.get("split", "train") != split:
                continue
            path = self.folder / f"{clip_id(entry)}.safetensors"
            if not path.is_file():
                missing.append(path.stem)
                continue
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata()
            variants = int(meta.get("pseudo_variants", "0"))
            if stage == 2 and variants == 0:
                without_pseudo += 1
                continue
            bucket = tuple(json.loads(meta["bucket"]))
            if "frames" in meta:  # length buckets (data.lengths): a batch holds one window length
                bucket = (*bucket, int(meta["frames"]))
            items += [Item(path.stem, w, bucket, variants) for w in range(int(meta["windows"]))]
        skipped = sum(cid in failed for cid in missing)
        if skipped:
            log.warning("%d clips of split %r were skipped by prepare (reasons in %s)", skipped, split,
                        self.folder / SKIPPED)
        if len(missing) > skipped:  # prepare --limit, or a recipe's train_clips: left out on purpose
            log.info("%d clips of split %r were not prepared and are left out", len(missing) - skipped, split)
        if without_pseudo:
            log.info("stage 2: %d clips without a pseudo driving clip are left out", without_pseudo)
        if not items:
            raise InputError(
                f"cache {self.folder}: no usable clips of split {split!r}"
                + (" with pseudo driving cues (metadata key pseudo_driving)" if stage == 2 else "")
                + ". Check data.split, and the prepare log and skipped.jsonl."
            )
        self.items = items
        self.null_text = _read(self.folder / NULL_TEXT)["null_text"]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, *, variant: int = 0) -> dict[str, Tensor]:
        """Tensors of item `index`: target ``[N, C, h, w]``, reference ``[1, C, h, w]``, cue fields ``[1+N, ...]``,
        ``pseudo.<field>`` in stage 2 (realignment `variant`), ``text_embeds`` when the clip has a caption, and on
        Wan2.1 I2V ``image`` ``[1+N, 4+C, h, w]`` (mask + condition latent) and ``image_embeds`` (CLIP)."""
        item = self.items[index]
        prefix = f"w{item.window}."
        keys = [f"{prefix}target", f"{prefix}reference"] + [f"{prefix}cues.{f}" for f in CUE_FIELDS]
        if self.stage == 2:
            keys += [f"{prefix}pseudo{variant % item.pseudo_variants}.{f}" for f in CUE_FIELDS]
        with safe_open(str(self.folder / f"{item.clip}.safetensors"), framework="pt") as fh:
            names = set(fh.keys())
            # Wan2.1 I2V caches the mask + condition latent of each window and the reference's CLIP embedding
            keys += [k for k in (f"{prefix}image", f"{prefix}image_embeds") if k in names]
            out = {k[len(prefix):]: fh.get_tensor(k).float() for k in keys}
            if "text_embeds" in names:
                out["text_embeds"] = fh.get_tensor("text_embeds").float()
        if self.stage == 2:
            tag = f"pseudo{variant % item.pseudo_variants}."
            out.update({f"pseudo.{f}": out.pop(f"{tag}{f}") for f in CUE_FIELDS})
        return out


def _read(path: Path) -> dict[str, Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


class BucketBatchSampler:
    """Batches of item indices from one bucket each, in an order that depends only on (seed, epoch).

    Each epoch shuffles every bucket, cuts it into global batches of ``batch_size * world`` (a bucket smaller than
    that gives one smaller batch, rounded down to a multiple of `world`; otherwise incomplete tails are dropped)
    and shuffles the batch order. Process `rank` takes the `rank`-th equal share of every global batch, so
    `world` processes of `batch_size` see exactly the batches of one process of ``batch_size * world``. The
    position ``(epoch, cursor)`` in global batches is all the state there is.
    """

    def __init__(self, buckets: list[tuple[int, int]], batch_size: int, *, seed: int = 0, rank: int = 0,
                 world: int = 1):
        if not 0 <= rank < world:
            raise InputError(f"BucketBatchSampler: rank {rank} is outside 0..{world - 1} for {world} processes.")
        self.buckets = list(buckets)
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.cursor = 0  # global batches of this epoch already taken (by all processes together)
        self._order: list[list[int]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch` (every process's share together), in training order."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, bucket in enumerate(self.buckets):
            groups.setdefault(bucket, []).append(index)
        batches = []
        for bucket in sorted(groups):
            members = groups[bucket]
            order = [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
            size = min(self.batch_size * self.world, len(order)) // self.world * self.world
            if size:
                batches += [order[i:i + size] for i in range(0, len(order) - size + 1, size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def next(self) -> list[int]:
        """This process's share of the next global batch."""
        while True:
            if self._order is None:
                self._order = self.epoch_batches(self.epoch)
                if not self._order:
                    sizes = dict(Counter(f"{h}x{w}" for h, w in self.buckets))
                    raise InputError(f"training data: no bucket holds at least {self.world} items, one per process "
                                     f"(items per bucket: {sizes}). Add clips, use fewer processes or fewer "
                                     "data.buckets.")
            if self.cursor < len(self._order):
                batch = self._order[self.cursor]
                self.cursor += 1
                share = len(batch) // self.world
                return batch[self.rank * share:(self.rank + 1) * share]
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self._order = int(state["epoch"]), int(state["cursor"]), None


def sample_generators(seed: int, step: int, micro: int, first: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, step, micro-batch, global sample index ``first + k``).

    A sample's noise, timestep and dropout flags then depend on where it sits in the global batch, not on which
    process draws it or how many processes there are, and a resumed run needs no generator state."""
    gens = []
    for index in range(first, first + count):
        digest = hashlib.sha256(f"{seed}:{step}:{micro}:{index}".encode()).digest()
        gens.append(torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1)))
    return gens


def per_sample(generator: torch.Generator | Sequence[torch.Generator], count: int) -> list[torch.Generator]:
    """`count` generators: the given list (one per sample), or one shared generator drawn from in sample order."""
    if isinstance(generator, torch.Generator):
        return [generator] * count
    gens = list(generator)
    if len(gens) != count:
        raise InputError(f"generators: {len(gens)} given for a batch of {count}; give one per sample or one shared.")
    return gens


@dataclass
class Batch:
    """A collated batch. target ``[B, N, C, h, w]`` (diffusion scale), reference ``[B, 1, C, h, w]`` (image
    scale), cues ``[B, 1+N, ...]`` (same-ID), pseudo_cues (stage 2), text ``[B, L, D]``, per-sample dropout
    flags ``[B]`` bool, and on Wan2.1 I2V the cached image conditioning ``image`` ``[B, 1+N, 4+C, h, w]`` (mask and
    condition latent, diffusion scale) and the reference's CLIP embedding ``image_embeds`` ``[B, T, D]``."""

    target: Tensor
    reference: Tensor
    cues: CueLatents
    text: Tensor
    drop_cues: Tensor
    drop_reference: Tensor
    pseudo_cues: CueLatents | None = None
    image: Tensor | None = None
    image_embeds: Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        def move(x):
            return None if x is None else x.to(device)

        return Batch(self.target.to(device), self.reference.to(device), self.cues.to(device), self.text.to(device),
                     self.drop_cues.to(device), self.drop_reference.to(device), move(self.pseudo_cues),
                     move(self.image), move(self.image_embeds))


def _cue_latents(samples: list[dict[str, Tensor]], prefix: str) -> CueLatents:
    return CueLatents(*(torch.stack([s[f"{prefix}{f}"] for s in samples]) for f in CUE_FIELDS))


def noisy_reference(reference: Tensor, generators: list[torch.Generator], mean: float, std: float) -> Tensor:
    """`reference` ``[B, ...]`` plus Gaussian noise of a log-normal sigma per sample, ``exp(mean + std * N(0, 1))``,
    drawn from each sample's generator: a latent-space version of the image noise of CogVideoX image-to-video
    fine-tuning (which noises the pixel image before the VAE encodes it; the cache holds the encoded latent, so the
    noise goes on that), so that the model learns not to copy the reference's exact latent."""
    out = []
    for ref, gen in zip(reference, generators):
        sigma = math.exp(mean + std * float(torch.randn(1, generator=gen)))
        out.append(ref + sigma * torch.randn(ref.shape, generator=gen).to(ref.dtype))
    return torch.stack(out)


def make_batch(data: CachedClips, indices: list[int],
               generator: torch.Generator | Sequence[torch.Generator]) -> Batch:
    """Load and collate `indices`; draw each sample's dropout flags and pseudo variant from its generator (one per
    sample, see `sample_generators`, or one shared generator drawn from in sample order), and the reference noise
    (`data.reference_noise`) after them."""
    d = data.config.data
    draws = torch.stack([torch.rand(4, generator=g) for g in per_sample(generator, len(indices))], dim=1)
    variants = (draws[3] * 1_000_000).long().tolist()
    samples = [data.load(i, variant=v) for i, v in zip(indices, variants)]
    null = data.null_text.float().reshape(-1, data.null_text.shape[-1])
    use_caption = draws[2] >= d.text_dropout
    text = torch.stack([s["text_embeds"] if "text_embeds" in s and bool(use_caption[k]) else null
                        for k, s in enumerate(samples)])
    reference = torch.stack([s["reference"] for s in samples])
    if d.reference_noise:
        reference = noisy_reference(reference, per_sample(generator, len(indices)), *d.reference_noise)
    return Batch(
        target=torch.stack([s["target"] for s in samples]),
        reference=reference,
        cues=_cue_latents(samples, "cues."),
        text=text,
        drop_cues=draws[0] < d.cue_dropout,
        drop_reference=draws[1] < d.reference_dropout,
        pseudo_cues=_cue_latents(samples, "pseudo.") if data.stage == 2 else None,
        image=_stacked(samples, "image"),
        image_embeds=_stacked(samples, "image_embeds"),
    )


def _stacked(samples: list[dict[str, Tensor]], key: str) -> Tensor | None:
    """``samples[k][key]`` stacked, None when the cache holds none (every backbone but Wan2.1 I2V)."""
    if not all(key in s for s in samples):
        return None
    return torch.stack([s[key] for s in samples])
