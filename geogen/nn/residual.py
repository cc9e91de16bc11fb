"""Plain residual blocks (no spectral normalisation) for likelihood-trained networks (VAE).

Shapes are ``(N, C, H, W)``. ``GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> conv3x3``
plus a shortcut (a 1x1 convolution when the channels change), optionally followed or preceded
by a 2x resampling of both branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _groups(channels: int, preferred: int = 8) -> int:
    """The largest divisor of ``channels`` not above ``preferred`` (GroupNorm groups)."""
    for groups in range(min(preferred, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


class ResBlock(nn.Module):
    """Pre-activation residual block with group norm; resamples by 2 when asked.

    Parameters
    ----------
    in_channels, out_channels
        Channels in and out.
    resample
        ``None`` (same size), ``"down"`` (2x average pooling at the end) or ``"up"`` (2x
        nearest-neighbour upsampling at the start).
    """

    def __init__(self, in_channels: int, out_channels: int, resample: str | None = None) -> None:
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.in_channels, self.out_channels, self.resample = in_channels, out_channels, resample
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H', W')`` with ``H' = H, H / 2`` or ``2 H``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResBlock expects (N, C, H, W) with C={self.in_channels}, got {tuple(x.shape)}"
            )
        if self.resample == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        out = h + (x if self.shortcut is None else self.shortcut(x))
        if self.resample == "down":
            out = F.avg_pool2d(out, 2)
        return out
