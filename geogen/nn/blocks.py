"""Residual blocks, a convolutional GRU and spatial attention (the DGMR / BigGAN family).

Shapes are ``(N, C, H, W)`` (2D) or ``(N, C, T, H, W)`` (3D). Written from the DGMR paper
(Ravuri et al. 2021, Extended Data Fig. 1) and DeepMind's released pseudocode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geogen.nn.layers import conv2d, conv3d, sequence_norm


def _check_channels(name: str, x: torch.Tensor, channels: int, dims: int) -> None:
    if x.dim() != dims or x.shape[1] != channels:
        layout = "(N, C, H, W)" if dims == 4 else "(N, C, T, H, W)"
        raise ValueError(f"{name} expects {layout} with C={channels}, got shape {tuple(x.shape)}")


class DBlock(nn.Module):
    """Residual down-block of the discriminators and the conditioning stack.

    ``[ReLU] -> conv3x3 -> ReLU -> conv3x3 -> [avg-pool 2]`` plus a shortcut (1x1 conv when
    channels change or when downsampling, then the same pooling). Spectrally normalised.

    Parameters
    ----------
    in_channels, out_channels
        Channels in and out.
    downsample
        Halve every spatial (and, in 3D, the time) axis by 2x average pooling.
    pre_activation
        Apply ReLU to the input of the residual branch (False for a network's first block).
    dims
        2 for images ``(N, C, H, W)``, 3 for sequences ``(N, C, T, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        downsample: bool = True,
        pre_activation: bool = True,
        dims: int = 2,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        conv = conv2d if dims == 2 else conv3d
        self.in_channels, self.out_channels, self.dims = in_channels, out_channels, dims
        self.downsample = downsample
        self.pre_activation = pre_activation
        self.conv1 = conv(in_channels, out_channels, 3)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.shortcut = (
            conv(in_channels, out_channels, 1)
            if in_channels != out_channels or downsample
            else None
        )

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.dims == 2 else F.avg_pool3d(x, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, [T,] H, W) -> (N, C_out, [T/2,] H/2, W/2)`` (halved when downsampling)."""
        _check_channels("DBlock", x, self.in_channels, self.dims + 2)
        h = F.relu(x) if self.pre_activation else x
        h = self.conv2(F.relu(self.conv1(h)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        if self.downsample:
            h, shortcut = self._pool(h), self._pool(shortcut)
        return h + shortcut


class GBlock(nn.Module):
    """Residual generator block: ``BN-ReLU-conv3x3-BN-ReLU-conv3x3`` plus a shortcut.

    With ``upsample`` (DGMR's "upsampling G block") both branches are upsampled 2x by nearest
    neighbour and the shortcut is a 1x1 convolution; otherwise the shortcut is a 1x1
    convolution only when the channels change. Spectrally normalised convolutions; the batch
    norms keep statistics per time step when called with ``steps`` (see
    :class:`~geogen.nn.layers.SequenceBatchNorm2d`); ``norm="none"`` leaves them out.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, upsample: bool = False, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.upsample = in_channels, out_channels, upsample
        self.bn1 = sequence_norm(in_channels, norm)
        self.conv1 = conv2d(in_channels, out_channels, 3)
        self.bn2 = sequence_norm(out_channels, norm)
        self.conv2 = conv2d(out_channels, out_channels, 3)
        self.shortcut = (
            conv2d(in_channels, out_channels, 1)
            if upsample or in_channels != out_channels
            else None
        )

    def forward(
        self, x: torch.Tensor, steps: int | None = None, first_step: int = 0
    ) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H, W)``, or ``2H, 2W`` when upsampling.

        ``steps``, ``first_step``: the time steps of the rows of ``x`` (``(batch, time)``
        ordered) and the index of the first, for the per-step batch norms.
        """
        _check_channels("GBlock", x, self.in_channels, 4)
        shortcut = x
        if self.upsample:
            shortcut = F.interpolate(shortcut, scale_factor=2, mode="nearest")
        if self.shortcut is not None:
            shortcut = self.shortcut(shortcut)
        h = F.relu(self.bn1(x, steps, first_step))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv1(h)
        h = self.conv2(F.relu(self.bn2(h, steps, first_step)))
        return h + shortcut


class LBlock(nn.Module):
    """Residual block of the latent conditioning stack that widens the channels.

    ``ReLU-conv3x3-ReLU-conv3x3``; the shortcut concatenates the input with a 1x1 convolution
    of it to the missing ``out - in`` channels. Plain (not spectrally normalised) convolutions,
    as the pseudocode's ``LBlock(conv=layers.Conv2D)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"LBlock widens: out_channels {out_channels} < {in_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv1 = conv2d(in_channels, out_channels, 3, sn=False)
        self.conv2 = conv2d(out_channels, out_channels, 3, sn=False)
        self.shortcut = (
            conv2d(in_channels, out_channels - in_channels, 1, sn=False)
            if out_channels > in_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H, W)``."""
        _check_channels("LBlock", x, self.in_channels, 4)
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        shortcut = x if self.shortcut is None else torch.cat([x, self.shortcut(x)], dim=1)
        return h + shortcut


class SpatialAttention(nn.Module):
    """Self-attention over the pixels of each example, with a learned gain starting at 0.

    Query and key have ``channels / ratio_kq`` channels, the value ``channels / ratio_v``;
    ``softmax(q k^T)`` (unscaled, as the pseudocode) weights the values, a 1x1 convolution
    maps back to ``channels`` and ``gamma`` (initialised to 0) scales the residual. Plain
    convolutions without bias.
    """

    def __init__(self, channels: int, ratio_kq: int = 8, ratio_v: int = 8) -> None:
        super().__init__()
        if channels % ratio_kq or channels % ratio_v:
            raise ValueError(f"channels {channels} must divide by {ratio_kq} and {ratio_v}")
        self.channels = channels
        self.query = conv2d(channels, channels // ratio_kq, 1, sn=False, bias=False)
        self.key = conv2d(channels, channels // ratio_kq, 1, sn=False, bias=False)
        self.value = conv2d(channels, channels // ratio_v, 1, sn=False, bias=False)
        self.out = conv2d(channels // ratio_v, channels, 1, sn=False, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        _check_channels("SpatialAttention", x, self.channels, 4)
        n, _, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (N, HW, Ck)
        k = self.key(x).flatten(2)  # (N, Ck, HW)
        v = self.value(x).flatten(2).transpose(1, 2)  # (N, HW, Cv)
        weights = torch.softmax(torch.bmm(q, k), dim=-1)  # (N, HW, HW)
        attended = torch.bmm(weights, v).transpose(1, 2).reshape(n, -1, h, w)
        return x + self.gamma * self.out(attended)


class ConvGRU(nn.Module):
    """Convolutional GRU cell with spectrally normalised 3x3 convolutions (DGMR's sampler).

    ``r = sigmoid(conv_r([x, h]))``, ``u = sigmoid(conv_u([x, h]))``,
    ``c = relu(conv_c([x, r * h]))``, ``h' = u * h + (1 - u) * c``; the output is ``h'``.
    The read and update gates are two separately normalised convolutions evaluated in one call.

    Parameters
    ----------
    input_channels
        Channels of the input ``x``.
    hidden_channels
        Channels of the state ``h``.
    kernel_size
        Side of the gate convolutions.
    sn
        Spectrally normalise the convolutions (False: plain convolutions, as the generator of
        Leinonen et al. 2020).
    padding_mode
        ``"zeros"`` or ``"reflect"`` (Leinonen et al. pad by reflection).
    """

    def __init__(
        self,
        input_channels: int,
        hidden_channels: int,
        kernel_size: int = 3,
        *,
        sn: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
        self.input_channels, self.hidden_channels = input_channels, hidden_channels
        both = input_channels + hidden_channels
        self.read_gate = conv2d(both, hidden_channels, kernel_size, sn=sn)
        self.update_gate = conv2d(both, hidden_channels, kernel_size, sn=sn)
        self.output = conv2d(both, hidden_channels, kernel_size, sn=sn)
        self.padding = kernel_size // 2
        self.padding_mode = padding_mode
        if padding_mode == "reflect":
            self.output.padding_mode = "reflect"

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """One step: ``x`` ``(N, C_in, H, W)``, ``state`` ``(N, C_h, H, W)`` -> new state."""
        _check_channels("ConvGRU input", x, self.input_channels, 4)
        _check_channels("ConvGRU state", state, self.hidden_channels, 4)
        xh = torch.cat([x, state], dim=1)
        weight = torch.cat([self.read_gate.weight, self.update_gate.weight])
        bias = torch.cat([self.read_gate.bias, self.update_gate.bias])
        if self.padding_mode == "reflect":
            pad = (self.padding,) * 4
            gates = torch.sigmoid(F.conv2d(F.pad(xh, pad, mode="reflect"), weight, bias))
        else:
            gates = torch.sigmoid(F.conv2d(xh, weight, bias, padding=self.padding))
        read, update = gates.chunk(2, dim=1)
        candidate = F.relu(self.output(torch.cat([x, read * state], dim=1)))
        return update * state + (1.0 - update) * candidate
