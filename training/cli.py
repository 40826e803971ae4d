"""Headless training command line: `python -m training COMMAND ...`.

A command is a module with ``add_arguments(parser)`` and ``run(args) -> int``, registered by one line in
COMMANDS. Only the chosen command's module is imported, so ``--help`` and light commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

log = logging.getLogger("training")

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.world.synth", "render procedural-world clips with ground truth in the training data format"),
    "prepare": ("training.prepare", "extract cues and cache VAE latents of a training set"),
    "stage1": ("training.stage1", "same-identity training (denoising loss)"),
    "stage2": ("training.stage2", "cross-identity training (denoising + S2X alignment)"),
    "validate": ("training.validate", "sample held-out pairs and score them against ground truth (PSNR, SSIM)"),
    "pseudo": ("training.pseudo", "make or ingest pseudo cross-identity driving clips for stage 2"),
    "ingest": ("training.ingest.cli", "turn a folder of your own videos into a training set (scene cuts, quality "
               "checks, report)"),
    "export": ("training.export", "export a training checkpoint to a DirectAnimator checkpoint"),
    "vae": ("training.vae", "train a small CogVideoX VAE from scratch on world clips (the demo model's VAE)"),
    "recipe": ("training.recipe", "one command: world data, VAE, both Same2X stages, export, validation, model card"),
}


# what --out names, for the commands that have one: a folder the command writes into, or a file; an existing path of
# the other kind is refused before the command starts
OUT_KINDS: dict[str, str] = {"synth": "folder", "pseudo": "folder", "ingest": "folder", "recipe": "folder",
                             "vae": "folder", "validate": "folder", "export": "file"}


# flags renamed after the config keys they stand for, answering to the old name for one release: (new, old, key)
DEPRECATED = "_deprecated_flags"


class _RenamedFlag(argparse.Action):
    """Stores its value; when given under its old name, notes a deprecation message that `main` logs."""

    def __init__(self, option_strings, dest, *, old: str, key: str, **kwargs):
        self.old, self.key = old, key
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        if option_string == self.old:
            new = next(s for s in self.option_strings if s != self.old)
            notes = getattr(namespace, DEPRECATED, None) or []
            notes.append(f"{self.old} is deprecated and will be removed in the next release: use {new} (named after "
                         f"the config key {self.key}).")
            setattr(namespace, DEPRECATED, notes)


def add_renamed_argument(parser: argparse.ArgumentParser, flag: str, *, old: str, key: str, help: str,
                         **kwargs) -> None:
    """Option `flag`, named after the config key `key` (``--backbone`` for ``model.backbone``), that also answers to
    its old name `old` for one release, with a deprecation message when used so."""
    parser.add_argument(flag, old, action=_RenamedFlag, old=old, key=key, dest=flag.lstrip("-").replace("-", "_"),
                        help=f"{help} ({key}; {old}: its old name, deprecated)", **kwargs)


def _chosen(argv: list[str]) -> str | None:
    """The command named in `argv` (first token that is one), or None."""
    return next((token for token in argv if token in COMMANDS), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the options of `command` (or of every command when None) are loaded from its module."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=module.__doc__,
                                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_chosen(argv) or "").parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for note in getattr(args, DEPRECATED, None) or []:
        log.warning("%s", note)
    from directanimator.errors import DirectAnimatorError

    try:
        if args.command in OUT_KINDS and getattr(args, "out", None):
            from directanimator.atomic import check_output

            check_output(args.out, name="--out", folder=OUT_KINDS[args.command] == "folder")
        if getattr(args, "device", None):  # pseudo render, validate
            from directanimator.devices import usable_device

            usable_device(args.device, name="--device")
        return int(args.run(args) or 0)
    except DirectAnimatorError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
