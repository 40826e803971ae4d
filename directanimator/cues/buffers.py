"""Fresh output buffers for the cue builders.

The cues are written into memory the process has never touched, and on the CPU paging it in costs more than
computing the cues: on the 2-core test VM torch.empty + one write took about 0.7 ms per 512x896 float32 plane.
numpy advises the kernel to back large arrays with transparent huge pages (its Linux default, see
``numpy.core.multiarray._set_madvise_hugepage``), which took 0.3 ms for the same plane; torch.empty does not
(unless THP_MEM_ALLOC_ENABLE is set before torch starts). So the builders allocate with numpy and hand the memory
to torch without a copy. `clip_unit` writes a clamped frame into such a buffer.
"""

from __future__ import annotations

import mmap

import numpy as np
import torch
from torch import Tensor

from .resample import opencv

# Buffers from this size on are mapped for huge pages (2 MiB each on x86-64); smaller ones come from numpy.
HUGE_PAGE_MIN_BYTES = 4 << 20


def empty_buffer(*shape: int, device: torch.device | str = "cpu") -> Tensor:
    """An uninitialised float32 tensor of `shape`; on the CPU numpy-allocated (huge pages, see the module)."""
    if torch.device(device).type != "cpu":
        return torch.empty(*shape, device=device)
    return torch.from_numpy(np.empty(shape, np.float32))


def zeroed_buffer(*shape: int, device: torch.device | str = "cpu", sparse: bool = False) -> Tensor:
    """A float32 tensor of zeros; on the CPU fresh anonymous memory, which the kernel zeroes when a page is first
    touched instead of writing every byte (torch.zeros does), so parts never written (the black bars beside the
    face square) cost little. Large buffers are mapped with MADV_HUGEPAGE where the platform has it: numpy's
    calloc does not ask for huge pages, and paging in a face cue canvas took about 40% less CPU with them (2 MiB
    faults instead of 4 KiB ones; 0.95 against 1.36 ms per 512x896 frame on the 2-core test VM). `sparse`: only
    small windows of each frame will be written (the face location), so 4 KiB pages, of which only those written
    are zeroed: a huge page is zeroed whole at its first write, which made the face location's windows cost as
    much as writing whole frames (0.58 against 0.18-0.29 ms per 512x896 frame on the test VM)."""
    if torch.device(device).type != "cpu":
        return torch.zeros(*shape, device=device)
    size = int(np.prod(shape)) * 4
    if size < HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MAP_PRIVATE"):
        return torch.from_numpy(np.zeros(shape, np.float32))
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if not sparse and hasattr(mmap, "MADV_HUGEPAGE"):
        area.madvise(mmap.MADV_HUGEPAGE)
    # the array keeps the mapping alive (it holds the buffer), and the tensor keeps the array
    return torch.from_numpy(np.frombuffer(area, np.float32).reshape(shape))


def clip_unit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``np.clip(src, 0, 1)`` of a float32 image into `dst` (`src` itself for in place): the same values for every
    finite input, by two OpenCV threshold passes (truncate at 1, then zero what is not above 0), which took about
    half of numpy's clip on a 512x896 plane on the 2-core test VM."""
    cv2 = opencv()
    if cv2 is None:
        return np.clip(src, 0.0, 1.0, out=dst)
    out = cv2.threshold(src, 1.0, 1.0, cv2.THRESH_TRUNC, dst=dst)[1]
    if out is not dst and out.ctypes.data != dst.ctypes.data:  # OpenCV could not write into the view
        dst[...] = out
    cv2.threshold(dst, 0.0, 0.0, cv2.THRESH_TOZERO, dst=dst)
    return dst


def clip_below_one(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`clip_unit` of a float32 image known to be non-negative (`src` itself for in place): one OpenCV pass that
    truncates at 1. Bilinear samples and filters with non-negative weights of 0..1 images are never negative, but
    their rounding can exceed 1 by an ulp or so."""
    cv2 = opencv()
    if cv2 is None:
        return np.minimum(src, 1.0, out=dst)
    out = cv2.threshold(src, 1.0, 1.0, cv2.THRESH_TRUNC, dst=dst)[1]
    if out is not dst and out.ctypes.data != dst.ctypes.data:  # OpenCV could not write into the view
        dst[...] = out
    return dst
