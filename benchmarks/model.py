"""Model benchmark: CF-DiT forward against the bare backbone forward (CogVideoX or Wan) at the same configuration and
token count, and the cue parameters against the real backbones (from `size_report`, on the meta device).

    python -m benchmarks.model                 # prints the table and writes the "Model" section of docs/benchmarks.md
    python -m benchmarks.model --no-write --repeats 3
    python -m benchmarks.model --family wan    # a Wan2.1-I2V-like layout; writes the "Model (Wan)" section

The timed configuration is mid-size so that attention and MLPs dominate as they do at 5B/14B; both models run in
one process, interleaved, from the same weights, and the median of the repeats is compared.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel
from torch import nn

from benchmarks.report import write_section
from directanimator.models import CueLatents, DirectAnimatorTransformer
from directanimator.models.fusion import CueTokens
from directanimator.models.info import size_report

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = {"cogvideox": "## Model", "wan": "## Model (Wan)"}
REPORT_NAMES = ("cogvideox-5b-i2v", "cogvideox1.5-5b-i2v", "wan2.1-i2v-14b", "wan2.2-ti2v-5b")
WAN_IMAGE_TOKENS = 257  # CLIP ViT-H/14 image tokens of Wan2.1 I2V


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(SECTIONS), default="cogvideox",
                        help="backbone family of the timed layout (wan: Wan2.1-I2V's channels, CLIP image tokens)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--latent-frames", type=int, default=13, help="latent frames, reference included")
    parser.add_argument("--latent-size", type=int, default=36, help="latent height = width (px / 8)")
    parser.add_argument("--text-tokens", type=int, default=None, help="default: 226 (CogVideoX), 512 (Wan)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args()


def build(args) -> tuple[nn.Module, DirectAnimatorTransformer]:
    torch.manual_seed(0)
    inner = args.heads * args.head_dim
    if args.family == "wan":
        # Wan2.1-I2V's layout at a smaller width: 36 input channels (noisy + mask + image latents), CLIP image
        # tokens in the cross-attention context, its FFN ratio (13824 / 5120).
        bare = WanTransformer3DModel(num_attention_heads=args.heads, attention_head_dim=args.head_dim, in_channels=36,
                                     out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=inner * 27 // 10,
                                     num_layers=args.layers, image_dim=1280, added_kv_proj_dim=inner).eval()
    else:
        bare = CogVideoXTransformer3DModel(
            num_attention_heads=args.heads, attention_head_dim=args.head_dim, in_channels=32, out_channels=16,
            time_embed_dim=512, text_embed_dim=4096, num_layers=args.layers, sample_width=args.latent_size,
            sample_height=args.latent_size, sample_frames=(args.latent_frames - 1) * 4 + 1, patch_size=2,
            max_text_seq_length=args.text_tokens, use_rotary_positional_embeddings=True).eval()
    model = DirectAnimatorTransformer(copy.deepcopy(bare)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking cue weights: no shortcut through zeros
        for p in model.cue_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return bare, model


def time_once(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call. CPU time is what this process itself spent, so it is far
    less disturbed than wall time when other jobs share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    args = parse_args()
    wan = args.family == "wan"
    if args.text_tokens is None:
        args.text_tokens = 512 if wan else 226
    torch.set_num_threads(args.threads)
    bare, model = build(args)
    spec = model.spec
    f, s = args.latent_frames, args.latent_size
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, f, spec.in_channels, s, s, generator=gen)
    text = torch.randn(1, args.text_tokens, 4096, generator=gen)
    timestep = torch.tensor([500.0 if wan else 500])
    image = torch.randn(1, WAN_IMAGE_TOKENS, 1280, generator=gen) if wan else None
    c = spec.out_channels
    cues = CueLatents(torch.randn(1, f, c, s, s, generator=gen), torch.randn(1, f, c, s, s, generator=gen),
                      torch.rand(1, f, 1, s, s, generator=gen), torch.rand(1, f, 1, s, s, generator=gen))
    rotary = model.rotary_embeddings(f, s, s)
    vision_tokens = f * (s // 2) ** 2

    def run_bare():
        if wan:  # the raw diffusers call on [B, C, F', h, w]
            bare(hidden_states=hidden.permute(0, 2, 1, 3, 4), timestep=timestep, encoder_hidden_states=text,
                 encoder_hidden_states_image=image, return_dict=False)
        else:
            bare(hidden_states=hidden, encoder_hidden_states=text, timestep=timestep, image_rotary_emb=rotary,
                 return_dict=False)

    def run_cf():
        model(hidden, text, timestep, cues=cues, image_embeds=image)

    temb = torch.randn(1, spec.time_embed_dim, generator=gen)

    def run_cue_modules_alone():  # exactly the extra work of a CF-DiT forward
        pose, face = model.embed_cues(cues)
        tokens = CueTokens.build(pose, face, shared=model.shared_modulation)
        hidden_tokens = torch.zeros_like(pose)
        for block in model.blocks:
            block.fusion(hidden_tokens, tokens, temb)

    with torch.inference_mode():
        run_bare(), run_cf(), run_cue_modules_alone()  # warm-up
        bare_runs, cf_runs, cue_runs = [], [], []
        for i in range(args.repeats):  # interleaved, order alternating, so machine noise hits both alike
            if i % 2:
                cf_runs.append(time_once(run_cf))
                bare_runs.append(time_once(run_bare))
            else:
                bare_runs.append(time_once(run_bare))
                cf_runs.append(time_once(run_cf))
            cue_runs.append(time_once(run_cue_modules_alone))
    med = {name: [statistics.median(t[i] for t in runs) for i in (0, 1)]
           for name, runs in (("bare", bare_runs), ("cf", cf_runs), ("cue", cue_runs))}
    ratio_wall = med["cf"][0] / med["bare"][0]
    ratio_cpu = med["cf"][1] / med["bare"][1]
    ratio_direct = 1 + med["cue"][1] / med["bare"][1]
    tiny_bb = sum(p.numel() for p in bare.parameters())
    tiny_cue = sum(p.numel() for p in model.cue_parameters())

    reports = [size_report(name) for name in REPORT_NAMES]
    section_heading = SECTIONS[args.family]
    date = datetime.date.today().isoformat()
    inner = args.heads * args.head_dim
    if wan:
        layout = (f"Wan2.1-I2V layout (36 input channels, {WAN_IMAGE_TOKENS} CLIP image tokens of width 1280 in the "
                  f"cross-attention context, FFN {inner * 27 // 10}), {args.layers} layers, {args.heads} heads x "
                  f"{args.head_dim} (inner dim {inner}; time embedding e_t of width {inner}), text dim 4096")
        context = f"{args.text_tokens} text + {WAN_IMAGE_TOKENS} image context tokens"
    else:
        layout = (f"CogVideoX 1.0 layout, {args.layers} layers, {args.heads} heads x {args.head_dim} (inner dim "
                  f"{inner}), time embed 512, text dim 4096")
        context = f"{args.text_tokens} text tokens"
    lines = [
        section_heading,
        "",
        f"`python -m benchmarks.model{' --family wan' if wan else ''}` ({date}; {platform.machine()}, "
        f"{args.threads} torch threads, torch {torch.__version__}). Forward pass, batch 1, inference mode, median of "
        f"{args.repeats} interleaved runs (order alternating) after a warm-up; same weights, same inputs, "
        "scaled-dot-product attention in both.",
        "",
        f"Timed configuration: {layout}; {f} latent frames at {s}x{s} latents = {vision_tokens:,} vision + "
        f"{context}; backbone {tiny_bb / 1e6:.1f} M parameters, cue modules {tiny_cue / 1e6:.2f} M.",
        "",
        "| forward | wall s (median) | CPU s (median) | ratio, wall | ratio, CPU |",
        "|---|---:|---:|---:|---:|",
        f"| bare {'Wan' if wan else 'CogVideoX'} | {med['bare'][0]:.3f} | {med['bare'][1]:.3f} | 1.000 | 1.000 |",
        f"| CF-DiT (cues on) | {med['cf'][0]:.3f} | {med['cf'][1]:.3f} | {ratio_wall:.3f} | {ratio_cpu:.3f} |",
        f"| cue modules alone (patch embeddings + {args.layers} CueFusion) | {med['cue'][0]:.3f} | {med['cue'][1]:.3f} "
        f"| | {ratio_direct:.3f} (1 + cue / bare) |",
        "",
        f"CF-DiT / bare: {ratio_wall:.3f}x by wall time, {ratio_cpu:.3f}x by process CPU time; the cue work alone adds "
        f"{100 * (ratio_direct - 1):.1f}% of the bare forward's CPU time (goal: at most 1.05x). The machine is shared "
        "with other jobs, so whole forwards vary by more than the cue overhead between runs; CPU time and the direct "
        "measurement of the cue modules are the steadier figures.",
        "",
        "Cue parameters at the real configurations (`size_report`, meta device, default CueFusion ranks 64):",
        "",
        "| backbone | backbone params | cue params | cue / backbone | full-rank Linear_l + text projection would be |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in reports:
        lines.append(f"| {r['name']} | {r['backbone_parameters'] / 1e6:,.1f} M | {r['cue_parameters'] / 1e6:,.1f} M | "
                     f"{100 * r['cue_fraction']:.2f}% | {r['full_rank_cue_parameters'] / 1e6:,.1f} M |")
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        write_section(args.output, section_heading, section)
        print(f"wrote the {section_heading!r} section of {args.output}")


if __name__ == "__main__":
    main()
