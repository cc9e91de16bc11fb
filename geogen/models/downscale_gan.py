"""Recurrent stochastic downscaling GAN (Leinonen, Nerini and Berne 2020, IEEE TGRS 59(9)).

Written from the paper ("Stochastic super-resolution for downscaling time-evolving
atmospheric fields with a generative adversarial network", Fig. 2 and Section III).

Generator (Fig. 2a), for a low-resolution sequence ``(batch, time, h, w)`` and Gaussian noise
at the low-resolution size:

- initial-state network: the first low-res frame -> 3x3 conv to ``width - noise`` channels,
  concatenated with ``noise`` noise channels (``width`` in all), three residual blocks (ReLU)
  -> the initial ConvGRU state;
- per time step: the same stem (its own weights) on each frame + its own noise, three residual
  blocks (ReLU), a ``width``-channel ConvGRU over time;
- residual blocks (leaky ReLU 0.2) of ``upsample_channels`` (256/256/128/64/32), with bilinear
  2x upsampling before each of the last ``log2(factor)`` blocks (4 for factor 16), and a 3x3
  output convolution to one channel (linear: the model space of the data transform);
  optionally (``input_skip``, not in the paper) plus the bilinearly upsampled input.

Discriminator (critic, Fig. 2b), for a high-res sequence and its low-res condition:

- high-res branch: residual blocks ``branch_channels`` (32-64-128-256) of which the first
  ``log2(factor)`` have stride 2, so that the branch reaches the low-res size;
- low-res branch: residual blocks ``branch_channels`` at stride 1;
- a joint path (both branches concatenated, two ``width``-channel residual blocks) and a
  high-res-only path (two ``width``-channel residual blocks), each followed by its own
  spectrally normalised ConvGRU over time (zero initial state);
- per time step: global average pooling of both paths, concatenated, SN dense ``width``,
  leaky ReLU 0.2, SN dense 1 -> one Wasserstein score per time step ``(batch, time)``.

All convolutions pad by reflection (as the published code); the discriminator's convolutions
and dense layers are spectrally normalised, the generator's are not. Frames are processed as
``(batch * time, C, y, x)`` everywhere except in the ConvGRUs, which step over time.
Everything is fully convolutional in space and takes any number of time steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from geogen.nn import ConvGRU
from geogen.nn.layers import conv2d, linear

#: Slope of the leaky ReLUs.
LEAKY_SLOPE = 0.2


def _reflect_conv(
    in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1, sn: bool
) -> nn.Conv2d:
    """A reflection-padded convolution (spectrally normalised when ``sn``)."""
    conv = conv2d(in_channels, out_channels, kernel_size, sn=sn)
    conv.padding_mode = "reflect" if kernel_size > 1 else "zeros"
    conv.stride = (stride, stride)
    return conv


def _factor_steps(factor: int) -> int:
    """``log2(factor)``; raises for factors that are not powers of two >= 2."""
    steps = round(math.log2(factor)) if factor >= 1 else -1
    if factor < 2 or 2**steps != factor:
        raise ValueError(f"factor must be a power of two >= 2, got {factor}")
    return steps


class ResidualBlock(nn.Module):
    """Leinonen et al.'s residual block: ``act-conv3x3(stride)-act-conv3x3`` plus a shortcut.

    The shortcut is average-pooled by ``stride`` and passed through a 1x1 convolution when the
    channels change.

    Parameters
    ----------
    in_channels, out_channels
        Channels in and out.
    stride
        1, or 2 to halve ``y`` and ``x``.
    activation
        ``"relu"`` or ``"leaky_relu"`` (slope 0.2).
    sn
        Spectrally normalise the convolutions (the discriminator's blocks).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        activation: str = "leaky_relu",
        sn: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ("relu", "leaky_relu"):
            raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {activation!r}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.activation = activation
        self.conv1 = _reflect_conv(in_channels, out_channels, 3, stride=stride, sn=sn)
        self.conv2 = _reflect_conv(out_channels, out_channels, 3, sn=sn)
        self.shortcut = (
            _reflect_conv(in_channels, out_channels, 1, sn=sn)
            if in_channels != out_channels
            else None
        )

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.activation == "relu" else F.leaky_relu(x, LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResidualBlock expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if self.stride > 1 and (x.shape[-2] % self.stride or x.shape[-1] % self.stride):
            raise ValueError(f"a stride-{self.stride} block needs even sides, got {x.shape[-2:]}")
        shortcut = F.avg_pool2d(x, self.stride) if self.stride > 1 else x
        if self.shortcut is not None:
            shortcut = self.shortcut(shortcut)
        h = self.conv2(self._act(self.conv1(self._act(x))))
        return h + shortcut


def _check_sequence(name: str, x: torch.Tensor, expected: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be {expected}, got shape {tuple(x.shape)}")


class Generator(nn.Module):
    """Leinonen et al.'s recurrent downscaling generator (see module docstring).

    Parameters
    ----------
    factor
        Resolution factor (a power of two): ``(h, w) -> (h * factor, w * factor)``.
    width
        Channels of the stems, the ConvGRU and the dense paths (256).
    noise_channels
        Noise channels concatenated to the stems (8).
    preproc_blocks
        Residual blocks after each stem (3).
    upsample_channels
        Channels of the residual blocks after the ConvGRU (256, 256, 128, 64, 32); the
        upsampling precedes each of the last ``log2(factor)`` of them.
    in_channels
        Variables per low-res frame (1).
    input_skip
        Add the bilinearly upsampled low-res input to the output (whose convolution then
        starts at zero, so an untrained generator interpolates). Not in the published model
        (default off); it lets the small CPU configs learn in minutes what the paper's model
        learns in days.
    """

    def __init__(
        self,
        factor: int = 16,
        width: int = 256,
        noise_channels: int = 8,
        preproc_blocks: int = 3,
        upsample_channels: Sequence[int] = (256, 256, 128, 64, 32),
        in_channels: int = 1,
        input_skip: bool = False,
    ) -> None:
        super().__init__()
        steps = _factor_steps(factor)
        upsample_channels = [int(c) for c in upsample_channels]
        if steps > len(upsample_channels):
            raise ValueError(
                f"factor {factor} needs {steps} upsampling blocks; upsample_channels has "
                f"{len(upsample_channels)}"
            )
        if not 0 <= noise_channels < width:
            raise ValueError(f"noise_channels ({noise_channels}) must lie in [0, width={width})")
        self.factor, self.width, self.noise_channels = int(factor), int(width), int(noise_channels)
        self.in_channels = int(in_channels)

        def stem() -> nn.ModuleDict:
            return nn.ModuleDict(
                {
                    "conv": _reflect_conv(in_channels, width - noise_channels, 3, sn=False),
                    "blocks": nn.Sequential(
                        *[
                            ResidualBlock(width, width, activation="relu")
                            for _ in range(preproc_blocks)
                        ]
                    ),
                }
            )

        self.initial = stem()
        self.update = stem()
        self.gru = ConvGRU(width, width, sn=False, padding_mode="reflect")
        blocks, upsample = [], []
        channels = width
        for index, out in enumerate(upsample_channels):
            upsample.append(index >= len(upsample_channels) - steps)
            blocks.append(ResidualBlock(channels, out, activation="leaky_relu"))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.upsample = upsample
        self.output = _reflect_conv(channels, in_channels, 3, sn=False)
        self.input_skip = bool(input_skip)
        if self.input_skip:
            nn.init.zeros_(self.output.weight)

    def sample_noise(
        self,
        batch: int,
        steps: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Standard normal noise ``(batch, steps + 1, noise_channels, height, width)``.

        Index 0 feeds the initial-state network, index ``t + 1`` the update at step ``t``.
        """
        shape = (batch, steps + 1, self.noise_channels, height, width)
        if generator is not None:
            device = generator.device
        return torch.randn(shape, generator=generator, device=device)

    def _stem(self, stem: nn.ModuleDict, frames: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h = stem["conv"](frames)
        if self.noise_channels:
            h = torch.cat([h, noise.to(h.dtype)], dim=1)
        return stem["blocks"](h)

    def forward(
        self,
        lowres: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Downscale a low-resolution sequence.

        Parameters
        ----------
        lowres
            ``(batch, time, h, w)`` in model space (one variable).
        noise
            ``(batch, time + 1, noise_channels, h, w)`` (:meth:`sample_noise`); drawn with
            ``generator`` when ``None``. Zeros give the deterministic twin.
        generator
            Random generator of the noise.

        Returns
        -------
        torch.Tensor
            ``(batch, time, h * factor, w * factor)`` in model space.
        """
        _check_sequence("lowres", lowres, "(batch, time, h, w)")
        b, t, h, w = lowres.shape
        if h < 2 or w < 2:
            raise ValueError(f"low-res frames of {h} x {w}: need at least 2 x 2 pixels")
        if noise is None:
            noise = self.sample_noise(b, t, h, w, generator=generator, device=lowres.device)
        expected = (b, t + 1, self.noise_channels, h, w)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must be {expected}, got {tuple(noise.shape)}")
        noise = noise.to(lowres.device)
        frames = lowres.unsqueeze(2)  # (B, T, 1, h, w)
        state = self._stem(self.initial, frames[:, 0], noise[:, 0])
        inputs = self._stem(
            self.update, frames.reshape(b * t, 1, h, w), noise[:, 1:].reshape(b * t, -1, h, w)
        ).reshape(b, t, self.width, h, w)
        states = []
        for step in range(t):
            state = self.gru(inputs[:, step], state)
            states.append(state)
        x = torch.stack(states, dim=1).reshape(b * t, self.width, h, w)
        for block, upsample in zip(self.blocks, self.upsample, strict=True):
            if upsample:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(x)
        out = self.output(x).reshape(b, t, h * self.factor, w * self.factor)
        if self.input_skip:
            out = out + F.interpolate(
                lowres, scale_factor=self.factor, mode="bilinear", align_corners=False
            ).to(out.dtype)
        return out


class Discriminator(nn.Module):
    """Leinonen et al.'s conditional recurrent critic (see module docstring).

    Parameters
    ----------
    factor
        Resolution factor between the high-res sample and its low-res condition.
    width
        Channels of the joint and high-res paths, their ConvGRUs and the dense layer (256).
    branch_channels
        Residual blocks of both branches (32, 64, 128, 256); the high-res branch strides by
        2 in its first ``log2(factor)`` blocks.
    path_blocks
        Residual blocks of the joint and high-res-only paths (2).
    in_channels
        Variables per frame (1).
    """

    def __init__(
        self,
        factor: int = 16,
        width: int = 256,
        branch_channels: Sequence[int] = (32, 64, 128, 256),
        path_blocks: int = 2,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        steps = _factor_steps(factor)
        branch_channels = [int(c) for c in branch_channels]
        if steps > len(branch_channels):
            raise ValueError(
                f"factor {factor} needs {steps} stride-2 blocks; branch_channels has "
                f"{len(branch_channels)}"
            )
        self.factor, self.width = int(factor), int(width)

        def branch(strided: int) -> nn.Sequential:
            blocks, channels = [], in_channels
            for index, out in enumerate(branch_channels):
                stride = 2 if index < strided else 1
                blocks.append(ResidualBlock(channels, out, stride=stride, sn=True))
                channels = out
            return nn.Sequential(*blocks)

        def path(channels: int) -> nn.Sequential:
            blocks = []
            for _ in range(path_blocks):
                blocks.append(ResidualBlock(channels, width, sn=True))
                channels = width
            return nn.Sequential(*blocks)

        last = branch_channels[-1]
        self.highres_branch = branch(steps)
        self.lowres_branch = branch(0)
        self.joint_path = path(2 * last)
        self.highres_path = path(last)
        self.joint_gru = ConvGRU(width, width, sn=True, padding_mode="reflect")
        self.highres_gru = ConvGRU(width, width, sn=True, padding_mode="reflect")
        self.dense = linear(2 * width, width)
        self.score = linear(width, 1)

    def _recur(self, gru: ConvGRU, x: torch.Tensor) -> torch.Tensor:
        """ConvGRU over ``(B, T, C, h, w)`` from a zero state -> pooled ``(B, T, C)``."""
        state = torch.zeros_like(x[:, 0])
        pooled = []
        for step in range(x.shape[1]):
            state = gru(x[:, step], state)
            pooled.append(state.mean(dim=(-2, -1)))
        return torch.stack(pooled, dim=1)

    def forward(self, highres: torch.Tensor, lowres: torch.Tensor) -> torch.Tensor:
        """Score high-res sequences given their low-res conditions.

        Parameters
        ----------
        highres
            ``(batch, time, H, W)`` in model space.
        lowres
            ``(batch, time, H / factor, W / factor)`` in model space.

        Returns
        -------
        torch.Tensor
            ``(batch, time)`` Wasserstein critic scores (higher: more real).
        """
        _check_sequence("highres", highres, "(batch, time, H, W)")
        _check_sequence("lowres", lowres, "(batch, time, h, w)")
        b, t, hh, ww = highres.shape
        f = self.factor
        if lowres.shape != (b, t, hh // f, ww // f) or hh % f or ww % f:
            raise ValueError(
                f"highres {tuple(highres.shape)} and lowres {tuple(lowres.shape)} do not match "
                f"for factor {f}: need lowres (batch, time, H / {f}, W / {f})"
            )
        h, w = hh // f, ww // f
        # Each spectrally normalised weight once per call (the ConvGRUs reuse theirs per step).
        with parametrize.cached():
            return self._scores(highres, lowres, b, t, h, w)

    def _scores(
        self, highres: torch.Tensor, lowres: torch.Tensor, b: int, t: int, h: int, w: int
    ) -> torch.Tensor:
        hh, ww = highres.shape[-2:]
        x_hr = self.highres_branch(highres.reshape(b * t, 1, hh, ww))
        x_lr = self.lowres_branch(lowres.reshape(b * t, 1, h, w))
        joint = self.joint_path(torch.cat([x_lr, x_hr], dim=1)).reshape(b, t, self.width, h, w)
        only = self.highres_path(x_hr).reshape(b, t, self.width, h, w)
        pooled = torch.cat(
            [self._recur(self.joint_gru, joint), self._recur(self.highres_gru, only)], -1
        )
        hidden = F.leaky_relu(self.dense(pooled), LEAKY_SLOPE)
        return self.score(hidden).squeeze(-1)


class DownscaleGAN(nn.Module):
    """The generator and (for adversarial training) the critic.

    Parameters
    ----------
    generator
        A :class:`Generator`.
    discriminator
        A :class:`Discriminator` of the same factor, or ``None`` (the deterministic twin,
        trained with MSE only).
    """

    def __init__(self, generator: Generator, discriminator: Discriminator | None = None) -> None:
        super().__init__()
        if discriminator is not None and discriminator.factor != generator.factor:
            raise ValueError(
                f"generator factor {generator.factor} != discriminator factor "
                f"{discriminator.factor}"
            )
        self.generator = generator
        self.discriminator = discriminator

    @property
    def factor(self) -> int:
        """Resolution factor."""
        return self.generator.factor

    def forward(self, lowres: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """The generator's output (see :meth:`Generator.forward`)."""
        return self.generator(lowres, **kwargs)
