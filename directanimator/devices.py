"""Which torch device a command may run on, checked before any model loads."""

from __future__ import annotations

import os

import torch

from .errors import InputError


def usable_device(device: str | torch.device, *, name: str = "--device") -> torch.device:
    """`device` as a torch.device, or an InputError when this machine cannot run on it (an unknown name, CUDA
    without a usable GPU, a GPU index that is not there): checked before any model loads."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{name} {device!r}: not a device; use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{name} {device}: no CUDA GPU is usable here (PyTorch {torch.__version__}, "
                             f"{'built without CUDA' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda}"
                             "); use --device cpu, or check the GPU driver and install a CUDA build of PyTorch.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{name} {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); pick one of them.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{name} {device}: Apple's MPS is not available here; use --device cpu.")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"{name} {device}: not a device this pack runs on; use cpu, cuda or cuda:N.")
    return dev


def process_device(spec: str | torch.device = "auto", *, name: str = "--device") -> torch.device:
    """`spec` checked by `usable_device`; "auto" is this process's GPU when CUDA is usable (its LOCAL_RANK under a
    multi-process launch, so each process of `accelerate launch` / torchrun takes its own), else the CPU."""
    if spec != "auto":
        return usable_device(spec, name=name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")
