"""Headless command line: `python -m directanimator {demo,cues,animate,info} ...`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("directanimator")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "real"
DEMO_DRIVING = REAL_DATA / "dance_1080x1920_24fps.mp4"
DEMO_REFERENCE = REAL_DATA / "ref_anime_character.jpg"
DEMO_MODEL = PROJECT_ROOT / "models" / "demo"
# Without a model folder the demo shows the cue triplet of the real footage at these settings.
CUES_DEMO_DEFAULTS = {"frames": 49, "stride": 2, "size": (896, 512)}


def _size(text: str) -> tuple[int, int]:
    """Parse 'HxW' (height x width) in pixels."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: use HEIGHTxWIDTH in pixels, e.g. 896x512") from None
    return height, width


def _add_cue_options(p: argparse.ArgumentParser) -> None:
    # --cutoff, --filter and --grid-cell default to None: the model's own setting (animate, demo), else CueConfig's
    p.add_argument("--frames", type=int, default=None, help="read at most this many driving frames (after stride)")
    p.add_argument("--stride", type=int, default=1, help="keep every n-th driving frame")
    p.add_argument("--size", type=_size, default=None,
                   help="working size HEIGHTxWIDTH, multiples of 16 from 64 to 4096")
    p.add_argument("--cutoff", type=float, default=None,
                   help="pose-cue low-pass cutoff, fraction of Nyquist (default: the model's, else 0.12)")
    p.add_argument("--filter", choices=["gaussian", "ideal", "butterworth"], default=None,
                   help="pose-cue low-pass filter (default: the model's, else gaussian)")
    p.add_argument("--segmenter", choices=["mediapipe", "sam"], default="mediapipe")
    p.add_argument("--sam-checkpoint", default=None, help="segment-anything checkpoint for --segmenter sam")
    p.add_argument("--face-detector", choices=["auto", "mediapipe", "opencv"], default="auto")
    p.add_argument("--grid-cell", type=int, default=None,
                   help="location-cue grid cell in pixels (default: the model's, else 16)")
    p.add_argument("--anchor", choices=["first", "clip"], default=None,  # cues.types.ANCHORS (no torch here)
                   help="driving frames the location cue puts onto the reference: the first good one, or the median "
                        "over the clip (default: the model's own setting, else first)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m directanimator", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    cues = sub.add_parser("cues", help="extract the Driving Cue Triplet: three cue videos and a preview sheet")
    cues.add_argument("--reference", required=True, help="reference image (png/jpg/webp)")
    cues.add_argument("--driving", required=True, help="driving video (mp4/webm/gif) or a folder of frames")
    cues.add_argument("--out", required=True, help="output folder")
    _add_cue_options(cues)

    animate = sub.add_parser("animate", help="animate a reference image with a driving video")
    animate.add_argument("--reference", required=True, help="reference image (png/jpg/webp)")
    animate.add_argument("--driving", required=True, help="driving video (mp4/webm/gif) or a folder of frames")
    animate.add_argument("--model", required=True,
                         help="backbone: a diffusers folder, a .safetensors file, or a Hugging Face repo id")
    animate.add_argument("--checkpoint", default=None, help="DirectAnimator checkpoint (.safetensors)")
    animate.add_argument("--vae", default=None,
                         help="VAE folder, repo id or single .safetensors file (e.g. wan_2.1_vae.safetensors) when "
                              "the backbone source has none")
    animate.add_argument("--image-encoder", default=None,
                         help="Wan2.1 I2V: the CLIP vision tower (image_encoder/ folder, repo id or a "
                              "clip_vision_h.safetensors file) when the backbone source has none")
    animate.add_argument("--out", required=True, help="output video (.mp4, .webm or .gif)")
    animate.add_argument("--steps", type=int, default=25)
    animate.add_argument("--guidance", type=float, default=3.0, help="cue guidance scale; 1 = one pass per step")
    animate.add_argument("--seed", type=int, default=0)
    animate.add_argument("--scheduler", choices=["auto", "dpm", "ddim", "unipc", "euler"], default="auto",
                         help="auto: the backbone's own (dpm for CogVideoX, unipc for Wan); dpm/ddim for CogVideoX, "
                              "unipc/euler for Wan (directanimator.sampling.SCHEDULER_CHOICES)")
    animate.add_argument("--samples", type=int, default=1,
                         help="the mean of this many results, seeds seed, seed + 1, ... (helps one-step estimates)")
    animate.add_argument("--cache", choices=["off", "first_block", "mag", "taylorseer"], default="off",
                         help="step cache (diffusers' hooks, one state per window and guidance branch)")
    animate.add_argument("--cache-threshold", type=float, default=None,
                         help="the cache's setting: first_block relative change (0.05), mag accumulated error "
                              "(0.06), taylorseer refresh interval in steps (5)")
    animate.add_argument("--batch-guidance", action="store_true",
                         help="run the guidance branches as one batch of 2 (faster, twice the activations)")
    animate.add_argument("--window", type=int, default=None, help="context window in latent frames")
    animate.add_argument("--overlap", type=int, default=None, help="latent frames shared by neighbouring windows")
    animate.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                         help="default: bf16 on a GPU, fp32 on the CPU")
    animate.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    # the memory options (directanimator.models.memory.MemoryOptions; its STORAGE, OFFLOAD and ATTENTION_BACKENDS)
    animate.add_argument("--weights", choices=["bf16", "fp8"], default="bf16",
                         help="transformer weight storage: bf16 keeps them in --dtype; fp8 stores the backbone's "
                              "linear layers as float8 e4m3 and computes in --dtype (about half the weight memory, "
                              "output within fp8 rounding; norms, embeddings and the cue modules stay in --dtype)")
    animate.add_argument("--offload", nargs="?", choices=["none", "model", "blocks"], const="model", default="none",
                         help="none: everything on the device; model (also a bare --offload): each network on the CPU "
                              "between uses, moved whole to the device while it runs; blocks: the transformer's "
                              "blocks on the CPU, --blocks-on-gpu of them moved in at a time (least GPU memory, "
                              "slower: the weights cross PCIe every step)")
    animate.add_argument("--blocks-on-gpu", type=int, default=None, metavar="N",
                         help="with --offload blocks: blocks per transfer group (default 1; more: fewer, larger "
                              "transfers and more GPU memory)")
    animate.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                         help="with --offload blocks: overlap block transfers with compute on a CUDA stream (default: "
                              "on CUDA with one block per group)")
    animate.add_argument("--attention", choices=["native", "flash", "sage", "xformers"], default="native",
                         help="attention kernel: native (PyTorch SDPA) or, on CUDA GPUs with the package installed, "
                              "flash (flash-attn), sage (sageattention), xformers")
    animate.add_argument("--compile", action="store_true",
                         help="torch.compile each transformer block (one compile reused by every block): faster steps "
                              "after a first step that takes minutes")
    animate.add_argument("--cache-dir", default=None, help="Hugging Face cache folder for repo ids")
    _add_cue_options(animate)

    info = sub.add_parser("info", help="size report and LoRA memory plan of the real CogVideoX and Wan backbones "
                                       "with CueFusion (meta device); --plan: the sampling memory plan per card")
    info.add_argument("--config", action="append", default=None,
                      help="a bundled config name (cogvideox-5b-i2v, cogvideox1.5-5b-i2v, wan2.1-i2v-14b[-480p|-720p], "
                           "wan2.2-ti2v-5b) or a config.json path (repeatable; default: every bundled backbone)")
    info.add_argument("--frames", type=int, default=None, help="latent frames per window, reference included")
    info.add_argument("--size", type=_size, default=None, help="window size HEIGHTxWIDTH in pixels")
    info.add_argument("--markdown", action="store_true", help="markdown tables")
    info.add_argument("--plan", action="store_true",
                      help="the sampling memory plan instead of the size report: peak GPU memory of one window for "
                           "each storage (bf16, fp8), offload (none, model, blocks) and guidance (batched, two passes) "
                           "on 12/16/24/48/80 GB cards, then the LoRA training plan (computed, not measured)")
    info.add_argument("--blocks-on-gpu", type=int, action="append", default=None,
                      help="with --plan: blocks per offload group to tabulate (repeatable; default 1 and 4)")
    info.add_argument("--activation-factor", type=float, default=None,
                      help="with --plan: scale on info's activation model, e.g. a measured peak over the computed "
                           "one (default 1.0: none measured yet)")

    demo = sub.add_parser("demo", help="the main job: the bundled model on its bundled inputs (or yours)")
    demo.add_argument("--model", default=None,
                      help="demo model folder (default: models/demo of the project when it exists)")
    demo.add_argument("--reference", default=None, help="reference image (default: the model's bundled one)")
    demo.add_argument("--driving", default=None,
                      help="driving video (default: the model's bundled puppet clip; a real video runs detectors)")
    demo.add_argument("--out", default="out/demo", help="output folder")
    demo.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's demo setting)")
    demo.add_argument("--guidance", type=float, default=None, help="cue guidance scale (default: the model's)")
    demo.add_argument("--scheduler", choices=["dpm", "ddim"], default=None, help="sampler (default: the model's)")
    demo.add_argument("--samples", type=int, default=None,
                      help="the mean of this many results, seeds seed, seed + 1, ... (default: the model's)")
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--device", default="cpu")
    _add_cue_options(demo)
    demo.set_defaults(stride=None)
    return parser


# the command-line flag of each CueConfig field it sets, for messages
CUE_FLAGS = {"height": "--size", "width": "--size", "cutoff": "--cutoff", "filter": "--filter",
             "grid_cell": "--grid-cell"}


def cue_options(args: argparse.Namespace) -> dict:
    """The CueConfig fields given on the command line (--size, --cutoff, --filter, --grid-cell), each checked, so
    a bad one fails before any file is read or model loaded; options left out are not in the result."""
    from .cues.types import CueConfig
    from .errors import CueError, InputError
    from .tensors import MAX_SIDE_PX, MIN_SIDE_PX, SIZE_MULTIPLE

    options = {}
    if args.size is not None:
        height, width = args.size
        if any(v < MIN_SIDE_PX or v > MAX_SIDE_PX or v % SIZE_MULTIPLE for v in args.size):
            def near(v: int) -> int:
                return min(MAX_SIDE_PX, max(MIN_SIDE_PX, round(v / SIZE_MULTIPLE) * SIZE_MULTIPLE))

            raise InputError(f"--size {height}x{width}: each side must be a multiple of {SIZE_MULTIPLE} from "
                             f"{MIN_SIDE_PX} to {MAX_SIDE_PX} px, e.g. --size {near(height)}x{near(width)}.")
        options.update(height=height, width=width)
    for key in ("cutoff", "filter", "grid_cell"):
        value = getattr(args, key, None)
        if value is None:
            continue
        try:
            CueConfig(**{key: value})
        except CueError as error:
            raise InputError(f"{CUE_FLAGS[key]} {value}: {error}") from None
        options[key] = value
    try:
        CueConfig(segmenter=args.segmenter, sam_checkpoint=args.sam_checkpoint, face_detector=args.face_detector)
    except CueError as error:
        raise InputError(f"--segmenter {args.segmenter}: {error} Pass it with --sam-checkpoint.") from None
    if args.sam_checkpoint and not Path(args.sam_checkpoint).is_file():
        raise InputError(f"--sam-checkpoint {args.sam_checkpoint}: no such file. Give a segment-anything checkpoint "
                         "(e.g. models/sams/sam_vit_b_01ec64.pth).")
    return options


def memory_options(args: argparse.Namespace):
    """`MemoryOptions` of animate's --weights, --offload, --blocks-on-gpu, --stream, --attention and --compile,
    checked (an attention package that is absent included) before anything is read."""
    from .errors import InputError
    from .models.memory import MemoryOptions

    if args.blocks_on_gpu is not None and args.offload != "blocks":
        raise InputError(f"--blocks-on-gpu {args.blocks_on_gpu}: sets the blocks per group of --offload blocks; add "
                         f"--offload blocks or leave it out (--offload is {args.offload}).")
    if args.stream is not None and args.offload != "blocks":
        raise InputError(f"--{'' if args.stream else 'no-'}stream: streams carry the block transfers of --offload "
                         f"blocks; add --offload blocks or leave it out (--offload is {args.offload}).")
    options = MemoryOptions(storage=args.weights, offload=args.offload,
                            blocks_on_gpu=1 if args.blocks_on_gpu is None else args.blocks_on_gpu, stream=args.stream,
                            attention=args.attention, compile=args.compile)
    try:
        return options.validate()
    except InputError as exc:
        raise InputError(f"{exc} (command line: --weights, --offload, --blocks-on-gpu, --stream, --attention, "
                         "--compile)") from None


def check_clip_options(args: argparse.Namespace) -> None:
    """--stride and --frames, checked before anything is read."""
    from .errors import InputError

    if args.stride is not None and args.stride < 1:
        raise InputError(f"--stride {args.stride}: keep every n-th driving frame with n >= 1 (1 keeps every frame).")
    if args.frames is not None and args.frames < 1:
        raise InputError(f"--frames {args.frames}: read at most this many driving frames, at least 1 (leave it out "
                         "for the whole clip).")


CUES_COMMAND = "python -m directanimator cues"  # the output marker of the folder `cues` writes
CUES_FILES = ("pose.mp4", "face.mp4", "location.mp4", "cues.png")


def run_cues(args: argparse.Namespace) -> Path:
    """Extract the cue triplet and write pose.mp4, face.mp4, location.mp4 and cues.png into args.out."""
    from tqdm import tqdm

    from .atomic import check_output_folder, claim_output_folder, holding
    from .cues import cue_sheet, extract_cues, location_overlay
    from .tensors import MAX_SIDE_PX
    from .video import check_video_sides, read_image, read_video, write_image, write_video

    config = _cue_config(args)  # every cue option checked before anything is read
    check_clip_options(args)
    out = check_output_folder(args.out, CUES_COMMAND, legacy=holding(*CUES_FILES))
    reference = read_image(args.reference, max_side=MAX_SIDE_PX)  # letterboxed to the working size anyway
    if args.size is None:  # refused before decoding a clip too large to handle at its own size
        check_video_sides(args.driving, name="--driving", hint="Pass --size HEIGHTxWIDTH to read it smaller")
    clip = read_video(args.driving, max_frames=args.frames, stride=args.stride, size=args.size, resize="pad")
    log.info("driving: %d frames at %.3g fps, %dx%d", clip.frames.shape[0], clip.fps,
             clip.frames.shape[2], clip.frames.shape[1])
    start = time.perf_counter()
    with tqdm(total=len(clip.frames), desc="cues", unit="frame") as bar:
        triplet = extract_cues(reference, clip.frames, config, on_frame=lambda i: bar.update(1))
    elapsed = time.perf_counter() - start
    claim_output_folder(out, CUES_COMMAND, legacy=holding(*CUES_FILES))
    write_video(out / "pose.mp4", triplet.pose, clip.fps)
    write_video(out / "face.mp4", triplet.face, clip.fps)
    write_video(out / "location.mp4", location_overlay(triplet), clip.fps)
    write_image(out / "cues.png", cue_sheet(triplet, driving=clip.frames)[0])
    record = triplet.record
    log.info("cue triplet: %d frames in %.1f s (%.1f fps); faces in %d/%d frames; %d bad frames",
             triplet.num_frames, elapsed, triplet.num_frames / max(elapsed, 1e-9),
             int(record.face_valid.sum()), triplet.num_frames, int(record.bad_frames.sum()))
    for note in record.notes:
        log.info("note: %s", note)
    log.info("wrote %s", ", ".join(str(out / n) for n in CUES_FILES))
    return out


def run_demo(args: argparse.Namespace) -> Path:
    """The bundled model on its bundled inputs (or --reference/--driving); without a model folder, the cue
    triplet of the real footage as before."""
    from .demo import is_model_folder

    folder = Path(args.model) if args.model else DEMO_MODEL
    options = cue_options(args)
    check_clip_options(args)
    if args.model is None and not is_model_folder(folder):
        log.warning("no bundled demo model at %s yet (it is trained by `python -m training recipe --out "
                    "models/demo --scale demo`, docs/demo_model.md); showing the cue triplet of the real footage "
                    "instead: pose.mp4, face.mp4, location.mp4, cues.png", folder)
        args.reference = args.reference or str(DEMO_REFERENCE)
        args.driving = args.driving or str(DEMO_DRIVING)
        for key, value in CUES_DEMO_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        return run_cues(args)
    from tqdm import tqdm

    from .demo import run_demo as demo

    bar: list[tqdm] = []

    def advance(step: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc="sampling", unit="step"))
        bar[0].update(1)

    try:
        result = demo(folder, out=args.out, reference=args.reference, driving=args.driving, frames=args.frames,
                      stride=1 if args.stride is None else args.stride, steps=args.steps, guidance=args.guidance,
                      seed=args.seed, scheduler=args.scheduler, samples=args.samples, device=args.device,
                      segmenter=args.segmenter, face_detector=args.face_detector, sam_checkpoint=args.sam_checkpoint,
                      anchor=args.anchor, cues=options, on_step=advance)
    finally:
        for b in bar:
            b.close()
    m = result.metrics
    lines = [f"wrote {result.out / 'result.mp4'} ({result.frames.shape[0]} frames at {result.fps:.3g} fps) and "
             f"{result.out / 'sheet.png'}"]
    if m:
        lines.append(f"against the ground truth: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}; static reference "
                     f"baseline: PSNR {m['baseline_psnr']:.2f} dB, SSIM {m['baseline_ssim']:.4f}")
        lines.append(f"over the {100 * m['moving_share']:.0f} % of pixels that move: mean error "
                     f"{m['moving_error']:.3f} (static reference {m['baseline_moving_error']:.3f}); blanking the pose cue moves the result "
                     f"by {m['pose_moves']:.3f} there")
    print("\n".join(lines))  # the demo's summary is the command's output
    return result.out


def _device_and_dtype(args: argparse.Namespace) -> tuple[str, str]:
    import torch

    from .devices import usable_device

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    usable_device(device, name="--device")
    dtype = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
    return device, dtype


def run_animate(args: argparse.Namespace) -> Path:
    """Cues, encode, sample, decode with progress; writes the video and a side-by-side preview next to it."""
    import torch
    from tqdm import tqdm

    from .atomic import check_output
    from .models import load_model
    from .models.memory import check_device
    from .pipeline import animate
    from .plan import cue_config_for
    from .tensors import MAX_SIDE_PX
    from .video import check_video_sides, read_image, read_video, resize_frames, write_video

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".webm", ".gif", ".mov", ".mkv"):
        raise_input(f"--out {out}: give a video file name ending in .mp4, .webm or .gif.")
    check_output(out, name="--out", folder=False)
    device, dtype = _device_and_dtype(args)
    memory = memory_options(args)
    check_device(memory, device)  # e.g. flash attention on the CPU: refused before any video is read
    settings = _cue_settings(args)  # every cue option checked before anything is read
    check_clip_options(args)
    reference = read_image(args.reference, max_side=MAX_SIDE_PX)  # letterboxed to the working size anyway
    if args.size is None:  # refused before decoding a clip too large to handle at its own size
        check_video_sides(args.driving, name="--driving", hint="Pass --size HEIGHTxWIDTH to read it smaller")
    clip = read_video(args.driving, max_frames=args.frames, stride=args.stride, size=args.size, resize="pad")
    model = load_model(args.model, args.checkpoint, dtype=dtype, device=device, memory=memory,
                       cache_dir=args.cache_dir, vae=args.vae, image_encoder=args.image_encoder,
                       require_image_encoder=True)
    # the model's cue options with the command line's; animate adds the backbone's size rule (sampling_plan)
    cue_config = cue_config_for(model.cue_config, anchor=args.anchor, options=settings)
    bars: dict[str, tqdm] = {}

    def advance(name: str, total: int) -> None:
        if name not in bars:  # opened on first use, so each bar times only its own stage
            bars[name] = tqdm(total=total, desc=name, unit="frame" if name == "cues" else "step")
        bars[name].update(1)

    try:
        result = animate(model, reference, clip, cue_config=cue_config, steps=args.steps, guidance=args.guidance,
                         seed=args.seed, scheduler=args.scheduler, window=args.window, overlap=args.overlap,
                         samples=args.samples, cache=args.cache, cache_threshold=args.cache_threshold,
                         batch_guidance=args.batch_guidance, on_cue_frame=lambda i: advance("cues", len(clip.frames)),
                         callback=lambda step, total, preview: advance("sampling", total))
    finally:
        for bar in bars.values():
            bar.close()
    for note in result.notes:
        log.info("note: %s", note)
    fps = result.fps or clip.fps
    write_video(out, result.frames, fps)
    driving = resize_frames(clip.frames, tuple(result.frames.shape[1:3]), "pad")
    side_by_side = torch.cat([driving, result.frames], dim=2)
    preview = out.with_name(out.stem + "_side_by_side" + out.suffix)
    write_video(preview, side_by_side, fps)
    log.info("wrote %s (%d frames at %.3g fps) and %s", out, result.frames.shape[0], fps, preview)
    return out


def raise_input(message: str) -> None:
    from .errors import InputError

    raise InputError(message)


def _cue_settings(args: argparse.Namespace) -> dict:
    """Every CueConfig field the command line sets: the detectors and the options given (`cue_options`)."""
    return {"segmenter": args.segmenter, "sam_checkpoint": args.sam_checkpoint, "face_detector": args.face_detector,
            **cue_options(args)}


def _cue_config(args: argparse.Namespace, model=None):
    """The model's cue options (a default CueConfig without a model) with those given on the command line put in
    (`plan.cue_config_for`)."""
    from .plan import cue_config_for

    return cue_config_for(getattr(model, "cue_config", None), anchor=args.anchor, options=_cue_settings(args))


def run_info(args: argparse.Namespace) -> str:
    """Print the size report and LoRA memory plan of each configuration, or with --plan its sampling memory plan
    (and the LoRA training rows)."""
    from .errors import InputError
    from .models.info import (ACTIVATION_FACTOR, PLAN_BLOCKS_ON_GPU, default_report_names, format_sampling_plan,
                              format_size_report, sampling_plan, size_report)

    plan_only = {"--blocks-on-gpu": args.blocks_on_gpu, "--activation-factor": args.activation_factor}
    given = [flag for flag, value in plan_only.items() if value is not None]
    if given and not args.plan:
        raise InputError(f"info: {', '.join(given)}: {'options' if len(given) > 1 else 'an option'} of the sampling "
                         "plan; add --plan.")
    names = args.config or default_report_names()
    height, width = args.size if args.size else (None, None)
    reports = [size_report(name, window_latent_frames=args.frames, height=height, width=width) for name in names]
    if args.plan:
        factor = ACTIVATION_FACTOR if args.activation_factor is None else args.activation_factor
        blocks = tuple(args.blocks_on_gpu or PLAN_BLOCKS_ON_GPU)
        texts = [format_sampling_plan(report, sampling_plan(report, blocks_on_gpu=blocks, activation_factor=factor),
                                      markdown=args.markdown, activation_factor=factor) for report in reports]
    else:
        texts = [format_size_report(report, markdown=args.markdown) for report in reports]
    text = "\n\n".join(texts)
    print(text)  # the report is the command's output
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from .errors import DirectAnimatorError

    try:
        if args.command == "cues":
            run_cues(args)
        elif args.command == "demo":
            run_demo(args)
        elif args.command == "animate":
            run_animate(args)
        elif args.command == "info":
            run_info(args)
    except DirectAnimatorError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
