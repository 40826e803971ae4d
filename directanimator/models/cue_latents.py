"""VAE latents of the Driving Cue Triplet on the transformer's latent grid (DESIGN.md sections 3 and 5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError

_FIELDS = ("pose", "face", "body_mask", "face_mask")


@dataclass
class CueLatents:
    """Cue latents in the transformer layout ``[B, F', C, h, w]``.

    pose, face: ``[B, F', Cz, h, w]`` VAE latents of the pose- and face-cue videos, scaled like image latents;
    body_mask, face_mask: ``[B, F', 1, h, w]`` location masks resized to the latent grid, in 0..1.
    """

    pose: Tensor
    face: Tensor
    body_mask: Tensor
    face_mask: Tensor

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise InputError(f"CueLatents.{name}: expected a torch tensor, got {type(value).__name__}.")
            if value.ndim != 5:
                raise InputError(
                    f"CueLatents.{name}: expected shape [B, F', C, h, w] (transformer layout), got "
                    f"{tuple(value.shape)}. VAE latents [B, C, F', h, w] must be permuted with .permute(0, 2, 1, 3, 4)."
                )
        if self.pose.shape != self.face.shape:
            raise InputError(
                f"CueLatents: pose latents {tuple(self.pose.shape)} and face latents {tuple(self.face.shape)} differ. "
                "Encode both cue videos at the same size and frame count."
            )
        b, f, _, h, w = self.pose.shape
        for name in ("body_mask", "face_mask"):
            mask = getattr(self, name)
            if tuple(mask.shape) != (b, f, 1, h, w):
                raise InputError(
                    f"CueLatents.{name}: expected shape {(b, f, 1, h, w)} to match the pose latents, got "
                    f"{tuple(mask.shape)}. Resize the location mask to the latent grid (h = H/8, w = W/8) "
                    "with one mask per latent frame."
                )

    @property
    def num_frames(self) -> int:
        """Number of latent frames ``F'``."""
        return int(self.pose.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.pose.shape[0])

    @property
    def latent_channels(self) -> int:
        """``Cz``, the VAE latent channels of the pose and face latents."""
        return int(self.pose.shape[2])

    @property
    def grid(self) -> tuple[int, int]:
        """Latent height and width ``(h, w)``."""
        return int(self.pose.shape[3]), int(self.pose.shape[4])

    def frames(self, index: slice | Tensor | list[int] | int) -> "CueLatents":
        """Select latent frames on dim 1 (a slice, an index list or LongTensor, or one int kept as a frame)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.long)
        if isinstance(index, Tensor):
            index = index.to(self.pose.device)
            return CueLatents(*(getattr(self, n).index_select(1, index) for n in _FIELDS))
        return CueLatents(*(getattr(self, n)[:, index] for n in _FIELDS))

    def cat(self, other: "CueLatents", dim: int = 1) -> "CueLatents":
        """Concatenate with `other` along latent frames (dim 1) or batch (dim 0)."""
        if dim not in (0, 1):
            raise InputError(f"CueLatents.cat: dim={dim}; only 0 (batch) or 1 (latent frames) make sense.")
        return CueLatents(*(torch.cat([getattr(self, n), getattr(other, n).to(getattr(self, n))], dim=dim)
                            for n in _FIELDS))

    def repeat_batch(self, times: int) -> "CueLatents":
        """Repeat along the batch (e.g. to match a guidance batch)."""
        return CueLatents(*(getattr(self, n).repeat(times, 1, 1, 1, 1) for n in _FIELDS))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "CueLatents":
        """Move/cast every tensor; masks are only cast, never rescaled."""
        return CueLatents(*(getattr(self, n).to(device=device, dtype=dtype) for n in _FIELDS))

    def check_matches(self, hidden_states: Tensor, *, name: str = "hidden_states") -> None:
        """Raise InputError unless these cues match `hidden_states` ``[B, F', C, h, w]`` in batch, frames and grid."""
        b, f, _, h, w = hidden_states.shape
        if (self.batch_size, self.num_frames, *self.grid) != (b, f, h, w):
            raise InputError(
                f"cues: latents are [B={self.batch_size}, F'={self.num_frames}, h={self.grid[0]}, w={self.grid[1]}] "
                f"but {name} is [B={b}, F'={f}, h={h}, w={w}]. Encode the cue videos at the video's size and frame "
                "count (including the leading reference frame) and repeat them over the batch."
            )
