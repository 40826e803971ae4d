"""bf16 on the CPU: fast with native support (AVX512-BF16 or AMX), slower than fp32 without it."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_without_native_bf16(setting: str, slower: str, fix: str) -> bool:
    """Warn that `setting` (a bf16 option used on the CPU) makes `slower` run slower than fp32 here, and name `fix`;
    returns whether it warned."""
    if cpu_has_native_bf16():
        return False
    log.warning("%s on a CPU without native bf16 (AVX512-BF16 or AMX): %s slower than in fp32; set %s.",
                setting, slower, fix)
    return True
