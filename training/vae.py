"""`python -m training vae --data DIR --out DIR`: train a small CogVideoX VAE from scratch (DESIGN.md 9).

The bundled demo model cannot download the pretrained CogVideoX VAE, and a random one does not reconstruct, so a
small `diffusers.AutoencoderKLCogVideoX` (16-channel latents, 8x spatial and 4x temporal compression, like the
real one) is trained first on world clips: L1 + MSE reconstruction plus a light KL term, AdamW, random temporal
windows and crops. Afterwards the latent ``scaling_factor`` (1 / std of the posterior means on training clips)
is stored in its config, so diffusion latents are unit-scale, and the PSNR of held-out clips is measured.

``OUT/`` gets ``vae/`` (diffusers folder, safetensors), ``report.json`` (steps, losses, PSNR, scaling factor,
wall time), ``metrics.jsonl``, ``config.json`` and ``checkpoints/step_N/`` (exact resume with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from directanimator.atomic import check_output_folder, claim_output_folder
from directanimator.errors import InputError

from .checkpointing import (is_legacy_run, load_training_checkpoint, read_jsonl, remove_partial_checkpoints,
                            resolve_resume, rng_state, save_training_checkpoint, set_rng_state, truncate_metrics)
from .config import apply_overrides, build_config
from directanimator.metrics import psnr

log = logging.getLogger(__name__)

VAE_DIR = "vae"
REPORT = "report.json"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
VAE_COMMAND = "python -m training vae"  # the output marker of a VAE run folder (directanimator.atomic)
SPATIAL_DOWNSAMPLES = 3  # 4 blocks -> 8x spatial compression, as CogVideoX
LATENT_CHANNELS = 16  # the real CogVideoX VAE's latent width, which the transformer's in_channels follow
SCALE_SAMPLES = 16  # training windows encoded to measure the latent std


@dataclass
class VaeTrainConfig:
    """Architecture and training of the small VAE; every value can be set with ``--set key=value``."""

    block_out_channels: list = field(default_factory=lambda: [24, 48, 48, 48])
    layers_per_block: int = 1
    norm_num_groups: int = 8
    latent_channels: int = LATENT_CHANNELS
    steps: int = 2000
    batch_size: int = 2
    frames: int = 9  # frames per training window, 8k+1
    # the first image_steps steps train on single frames, about 7x cheaper per step on the CPU: the causal encoder
    # treats one frame as a clip's first, so colours and shapes are learnt before the costly temporal windows
    image_steps: int = 0
    crop: int = 64  # square training crop in px, a multiple of 8 (the VAE is convolutional: crops suffice)
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    kl_weight: float = 1e-4  # "light KL": weight of the per-element KL divergence to N(0, 1)
    mse_weight: float = 1.0  # reconstruction = L1 + mse_weight * MSE on frames in [-1, 1]
    clip_norm: float = 1.0
    max_clips: int = 256  # training clips held in memory (uint8)
    val_clips: int = 4  # held-out clips for PSNR (the data's split "val" first)
    seed: int = 0
    save_every: int = 200
    keep_last: int = 2
    log_every: int = 10
    budget_minutes: float = 0.0  # stop early (saving) once training has run this long; 0 = no limit

    def validate(self) -> "VaeTrainConfig":
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(f"vae config {message}")

        need(len(self.block_out_channels) == SPATIAL_DOWNSAMPLES + 1
             and all(isinstance(c, int) and c > 0 and c % self.norm_num_groups == 0 for c in self.block_out_channels),
             f"block_out_channels={self.block_out_channels}: give {SPATIAL_DOWNSAMPLES + 1} positive widths (8x "
             f"spatial compression), each a multiple of norm_num_groups={self.norm_num_groups}.")
        need(self.latent_channels >= 1 and self.layers_per_block >= 1, "latent_channels, layers_per_block >= 1.")
        # the CogVideoX decoder maps an odd latent count to 4k+1 frames (an even one gives 4F'): windows of 8k+1
        need(self.frames >= 1 and (self.frames - 1) % 8 == 0,
             f"frames={self.frames}: training windows need 8k+1 frames (9, 17, 25: an odd number of latent "
             f"frames, which the decoder maps back to the same length); use {max(1, (self.frames - 1) // 8 * 8 + 1)} "
             f"or {(self.frames - 1) // 8 * 8 + 9}.")
        need(self.crop >= 16 and self.crop % 8 == 0, f"crop={self.crop}: a multiple of 8, at least 16 px.")
        need(self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1.")
        need(0 <= self.image_steps < self.steps,
             f"image_steps={self.image_steps}: 0 up to steps - 1 = {self.steps - 1} (the last steps train on "
             f"windows of {self.frames} frames).")
        need(self.lr > 0 and self.kl_weight >= 0 and self.mse_weight >= 0 and self.clip_norm >= 0,
             "lr > 0; kl_weight, mse_weight and clip_norm >= 0.")
        need(self.max_clips >= 1 and self.val_clips >= 1, "max_clips and val_clips must be >= 1.")
        need(self.save_every >= 1 and self.keep_last >= 1 and self.log_every >= 1,
             "save_every, keep_last and log_every must be >= 1.")
        need(self.budget_minutes >= 0, f"budget_minutes={self.budget_minutes}: 0 (no limit) or more.")
        return self

    def architecture(self) -> dict:
        """Init kwargs of `AutoencoderKLCogVideoX` (4x temporal compression is the class default)."""
        return dict(block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
                    norm_num_groups=self.norm_num_groups, latent_channels=self.latent_channels,
                    temporal_compression_ratio=4)


def load_vae_config(overrides: list[str] | tuple[str, ...] = ()) -> VaeTrainConfig:
    """A validated `VaeTrainConfig` from the defaults and ``key=value`` overrides (TOML values)."""
    return build_config(VaeTrainConfig, apply_overrides({}, overrides), "vae").validate()


# --------------------------------------------------------------------------- data
@dataclass
class ClipPool:
    """Clips held in memory as uint8 ``[F, H, W, 3]``: training and held-out."""

    train: list[Tensor]
    val: list[Tensor]
    source: str


def _read_clip(path: Path, fps: float) -> Tensor:
    from directanimator.video import read_video

    return read_video(path, fps=fps, dtype=torch.uint8).frames


def clips_from_folder(data: str | Path, *, max_clips: int, val_clips: int) -> ClipPool:
    """Training clips (every video of the train entries: clip, cross target, pseudo driving) and held-out clips
    (entries with split "val", else the last entries) of an exported folder (docs/data_format.md)."""
    from .validate import metadata_file, read_entries

    file = metadata_file(data)
    root = file.parent
    entries = read_entries(file)
    val = [e for e in entries if e.get("split") == "val"]
    train = [e for e in entries if e.get("split", "train") != "val"]
    if not val:
        if len(train) < 2:
            raise InputError(f"{file}: {len(entries)} clip(s); VAE training needs at least 2 (one is held out).")
        keep = min(val_clips, max(1, len(train) // 10))
        val, train = train[-keep:], train[:-keep]
        log.info("no split 'val' in %s: holding out its last %d clips", file, keep)
    paths = [(root / e[key], float(e["fps"])) for e in train for key in ("clip", "cross_target", "pseudo_driving")
             if key in e][:max_clips]
    train_clips = [_read_clip(p, fps) for p, fps in paths]
    val_list = [_read_clip(root / e["clip"], float(e["fps"])) for e in val[:val_clips]]
    return ClipPool(train_clips, val_list, str(file))


def clips_from_world(count: int, *, size: int = 128, frames: int = 17, val_clips: int = 4, seed: int = 0) -> ClipPool:
    """`count` training clips and `val_clips` held-out clips rendered on the fly by `training.world.WorldDataset`."""
    from .world import WorldConfig, WorldDataset

    world = WorldDataset(count + val_clips, WorldConfig(height=size, width=size, num_frames=frames, cross_id=False,
                                                       pseudo=False), seed=seed)
    clips = [(world[i]["target"] * 255).round().to(torch.uint8) for i in range(len(world))]
    return ClipPool(clips[:count], clips[count:], f"world(seed={seed}, {size}px, {frames} frames)")


def check_pool(pool: ClipPool, config: VaeTrainConfig) -> None:
    """Raise InputError before training when the clips cannot give the configured windows and crops."""
    if not pool.train:
        raise InputError(f"VAE data {pool.source}: no training clips.")
    short = min(int(c.shape[0]) for c in pool.train)
    small = min(min(int(c.shape[1]), int(c.shape[2])) for c in pool.train)
    if short < config.frames or small < config.crop:
        raise InputError(
            f"VAE data {pool.source}: the shortest clip has {short} frames and the smallest side is {small} px; "
            f"training windows need frames={config.frames} and crop={config.crop}. Lower them with --set frames=... "
            "--set crop=... or export longer/larger clips."
        )


def sample_batch(pool: ClipPool, config: VaeTrainConfig, generator: torch.Generator, *,
                 frames: int | None = None) -> Tensor:
    """A batch ``[B, 3, frames, crop, crop]`` in [-1, 1]: random clip, window, crop and horizontal flip.
    `frames` defaults to ``config.frames``."""
    frames = config.frames if frames is None else frames
    out = []
    for _ in range(config.batch_size):
        clip = pool.train[int(torch.randint(len(pool.train), (1,), generator=generator))]
        f, h, w = (int(s) for s in clip.shape[:3])
        t0 = int(torch.randint(f - frames + 1, (1,), generator=generator))
        y0 = int(torch.randint(h - config.crop + 1, (1,), generator=generator))
        x0 = int(torch.randint(w - config.crop + 1, (1,), generator=generator))
        window = clip[t0:t0 + frames, y0:y0 + config.crop, x0:x0 + config.crop]
        if bool(torch.rand(1, generator=generator) < 0.5):
            window = window.flip(2)
        out.append(window.permute(3, 0, 1, 2).float() / 127.5 - 1.0)
    return torch.stack(out)


def _trim(clip: Tensor) -> Tensor:
    """A clip cut to 4k+1 frames and to multiples of 8 px."""
    f, h, w = (int(s) for s in clip.shape[:3])
    return clip[: (f - 1) // 4 * 4 + 1, : h // 8 * 8, : w // 8 * 8]


# --------------------------------------------------------------------------- model and loss
def build_vae(config: VaeTrainConfig, *, seed: int = 0):
    """A fresh `AutoencoderKLCogVideoX` of `config`'s architecture."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(**config.architecture())


def vae_loss(vae, batch: Tensor, config: VaeTrainConfig, generator: torch.Generator) -> tuple[Tensor, dict]:
    """Reconstruction (L1 + MSE) of a sampled posterior latent plus `kl_weight` x the per-element KL."""
    posterior = vae.encode(batch).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
    latent = posterior.mean + posterior.std * noise  # the reparameterised sample, drawn from our generator
    recon = vae.decode(latent).sample
    l1 = (recon - batch).abs().mean()
    mse = (recon - batch).square().mean()
    kl = 0.5 * (posterior.mean.square() + posterior.var - 1.0 - posterior.logvar).mean()
    loss = l1 + config.mse_weight * mse + config.kl_weight * kl
    return loss, {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach())}


@torch.no_grad()
def latent_scaling_factor(vae, pool: ClipPool, config: VaeTrainConfig, *, samples: int = SCALE_SAMPLES,
                          seed: int = 0) -> float:
    """1 / std of the posterior means of `samples` training windows (what sampling encodes: the mean)."""
    gen = torch.Generator().manual_seed(seed + 17)
    values = []
    for _ in range(max(1, samples // config.batch_size)):
        values.append(vae.encode(sample_batch(pool, config, gen)).latent_dist.mean.flatten())
    std = float(torch.cat(values).std())
    if not math.isfinite(std) or std <= 0:
        raise InputError(f"VAE: the latents have std {std}; training diverged. Lower lr and train again.")
    return 1.0 / std


@torch.no_grad()
def held_out_psnr(vae, clips: list[Tensor]) -> float:
    """Mean PSNR (dB) of whole held-out clips encoded and decoded as inference does (`directanimator.vae_io`)."""
    from directanimator.vae_io import decode_latents, encode_frames

    scores = []
    for clip in clips:
        frames = _trim(clip).float() / 255.0
        recon = decode_latents(vae, encode_frames(vae, frames, name="held-out clip"))
        scores.append(psnr(recon, frames))
    return sum(scores) / len(scores)


# --------------------------------------------------------------------------- loop
def _lr_factor(config: VaeTrainConfig):
    return lambda step: min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0


def train_vae(pool: ClipPool, out: str | Path, config: VaeTrainConfig, *, resume: bool = False) -> dict:
    """Train (or continue with `resume`) the VAE of `config` on `pool` into `out`; returns the report.

    With `resume`, a run that already reached `config.steps` is not retrained (its report is returned); a
    folder with checkpoints is not overwritten without `resume`.
    """
    config.validate()
    check_pool(pool, config)
    out = check_output_folder(out, VAE_COMMAND, legacy=_is_vae_run)
    if resume and (out / REPORT).is_file() and (out / VAE_DIR / "config.json").is_file():
        report = json.loads((out / REPORT).read_text())
        if report["steps"] >= config.steps:
            log.info("VAE in %s is complete (%d steps); nothing to do", out, report["steps"])
            return report
    latest = resolve_resume(out, "latest")
    if latest is not None and not resume:
        raise InputError(f"VAE run {out} already has checkpoints ({latest.name}); pass --resume to continue it or "
                         "choose another --out.")
    claim_output_folder(out, VAE_COMMAND, legacy=_is_vae_run)
    remove_partial_checkpoints(out)
    (out / CONFIG).write_text(json.dumps(asdict(config), indent=1) + "\n")
    vae = build_vae(config, seed=config.seed).train()
    params = [p for p in vae.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    generator = torch.Generator().manual_seed(config.seed)
    step, elapsed_before = 0, 0.0
    if latest is not None:
        step, trainable, _, state = load_training_checkpoint(latest)
        vae.load_state_dict(trainable)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        elapsed_before = float(state["elapsed"])
        log.info("VAE: resumed from %s at step %d", latest, step)
    metrics = out / METRICS
    truncate_metrics(metrics, step)
    started = time.perf_counter()
    deadline = started + config.budget_minutes * 60 - elapsed_before if config.budget_minutes else math.inf
    params_count = sum(p.numel() for p in params)
    log.info("VAE: %.2f M parameters, %d training clips, %d held out; training to step %d",
             params_count / 1e6, len(pool.train), len(pool.val), config.steps)

    def save() -> None:
        state = {"optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(), "rng": rng_state(),
                 "generator": generator.get_state(), "step": step,
                 "elapsed": elapsed_before + time.perf_counter() - started}
        save_training_checkpoint(out, step, trainable=vae.state_dict(), state=state, keep_last=config.keep_last)

    last: dict = {}
    stopped_early = False
    while step < config.steps:
        frames = 1 if step < config.image_steps else config.frames
        batch = sample_batch(pool, config, generator, frames=frames)
        loss, parts = vae_loss(vae, batch, config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, config.clip_norm if config.clip_norm else math.inf)
        optimizer.step()
        scheduler.step()
        step += 1
        if not math.isfinite(float(loss.detach())):
            raise InputError(f"VAE: the loss became {float(loss)} at step {step}; lower lr (now {config.lr}).")
        last = {"step": step, "loss": float(loss.detach()), **parts, "grad_norm": float(norm),
                "lr": scheduler.get_last_lr()[0], "frames": frames}
        if step % config.log_every == 0 or step == config.steps:
            with metrics.open("a") as fh:
                fh.write(json.dumps(last) + "\n")
            log.info("VAE step %d: loss %.4f (l1 %.4f, kl %.3f)", step, last["loss"], parts["l1"], parts["kl"])
        if time.perf_counter() > deadline and step < config.steps:
            log.warning("VAE: time budget of %.1f min reached at step %d of %d; stopping here",
                        config.budget_minutes, step, config.steps)
            stopped_early = True
            save()
            break
        if step % config.save_every == 0 or step == config.steps:
            save()
    if not last:  # resumed at the last step: recover the final losses from the log
        records = read_jsonl(metrics) if metrics.is_file() else []
        last = records[-1] if records else {}
    return finalize(vae.eval(), pool, out, config, step=step, last=last, stopped_early=stopped_early,
                    seconds=elapsed_before + time.perf_counter() - started)


_is_vae_run = partial(is_legacy_run, log=REPORT)  # a VAE run folder written before output markers


def finalize(vae, pool: ClipPool, out: Path, config: VaeTrainConfig, *, step: int, last: dict,
             stopped_early: bool, seconds: float) -> dict:
    """Set the scaling factor, save ``vae/`` (atomically) and write the report with the held-out PSNR."""
    scale = latent_scaling_factor(vae, pool, config, seed=config.seed)
    vae.register_to_config(scaling_factor=scale)
    tmp = out / f".{VAE_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    vae.save_pretrained(tmp, safe_serialization=True)
    if (out / VAE_DIR).exists():
        shutil.rmtree(out / VAE_DIR)
    tmp.replace(out / VAE_DIR)
    value = held_out_psnr(vae, pool.val) if pool.val else float("nan")
    report = {"steps": step, "target_steps": config.steps, "stopped_by_budget": stopped_early,
              "seconds": round(seconds, 1), "parameters": sum(p.numel() for p in vae.parameters()),
              "megabytes": round(sum(f.stat().st_size for f in (out / VAE_DIR).iterdir()) / 2**20, 3),
              "scaling_factor": scale, "held_out_psnr": round(value, 3), "held_out_clips": len(pool.val),
              "final": last, "data": pool.source, "config": asdict(config)}
    (out / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    log.info("VAE: %d steps in %.0f s; held-out PSNR %.2f dB; scaling factor %.4f; saved %s", step, seconds,
             value, scale, out / VAE_DIR)
    return report


# --------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="exported dataset folder or its metadata.jsonl (docs/data_format.md)")
    source.add_argument("--world", type=int, metavar="N", help="render N world clips on the fly instead")
    parser.add_argument("--out", required=True, help="run folder: vae/, report.json, metrics.jsonl, checkpoints/")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's)")
    parser.add_argument("--size", type=int, default=None, help="square training crop in px (multiple of 8)")
    parser.add_argument("--frames", type=int, default=None, help="frames per training window (4k+1)")
    parser.add_argument("--world-size", type=int, default=128, help="frame side of --world clips in px")
    parser.add_argument("--world-frames", type=int, default=17, help="frames of --world clips")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a VaeTrainConfig value (TOML syntax), e.g. --set kl_weight=1e-5; repeatable")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in ((args.steps, "steps"), (args.size, "crop"), (args.frames, "frames")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    config = load_vae_config(overrides)
    check_output_folder(args.out, VAE_COMMAND, legacy=_is_vae_run)  # before the clips are read or rendered
    if args.data is not None:
        pool = clips_from_folder(args.data, max_clips=config.max_clips, val_clips=config.val_clips)
    else:
        pool = clips_from_world(args.world, size=args.world_size, frames=args.world_frames,
                                val_clips=config.val_clips, seed=config.seed)
    train_vae(pool, args.out, config, resume=args.resume)
    return 0
