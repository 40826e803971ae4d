"""Fresh output buffers for the cue builders.

The cues are written into memory the process has never touched, and on the CPU paging it in costs more than
computing the cues: on the 2-core test VM torch.empty + one write took about 0.7 ms per 512x896 float32 plane.
numpy advises the kernel to back large arrays with transparent huge pages (its Linux default, see
``numpy.core.multiarray._set_madvise_hugepage``), which took 0.3 ms for the same plane; torch.empty does not
(unless THP_MEM_ALLOC_ENABLE is set before torch starts). So the builders allocate with numpy and hand the memory
to torch without a copy. `clip_unit` writes a clamped frame into such a buffer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .resample import opencv


def empty_buffer(*shape: int, device: torch.device | str = "cpu") -> Tensor:
    """An uninitialised float32 tensor of `shape`; on the CPU numpy-allocated (huge pages, see the module)."""
    if torch.device(device).type != "cpu":
        return torch.empty(*shape, device=device)
    return torch.from_numpy(np.empty(shape, np.float32))


def zeroed_buffer(*shape: int, device: torch.device | str = "cpu") -> Tensor:
    """A float32 tensor of zeros; on the CPU from numpy's calloc, which leaves fresh pages to the kernel to zero
    when first touched instead of writing every byte (torch.zeros does), so parts never written (the black bars
    beside the face square) cost little."""
    if torch.device(device).type != "cpu":
        return torch.zeros(*shape, device=device)
    return torch.from_numpy(np.zeros(shape, np.float32))


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
