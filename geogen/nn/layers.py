"""Small layers: spectrally normalised convolutions, space/depth shuffles, batch norms.

Spectral normalisation uses :func:`torch.nn.utils.parametrizations.spectral_norm` (one power
iteration per weight computation, ``eps=1e-4`` as DeepMind's DGMR pseudocode). Convolutions are
initialised orthogonally with zero biases, as in that pseudocode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

#: Epsilon of the spectral normalisation (DGMR pseudocode: ``sn_eps=0.0001``).
SN_EPS = 1e-4


def _init(module: nn.Module) -> nn.Module:
    nn.init.orthogonal_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    *,
    sn: bool = True,
    bias: bool = True,
) -> nn.Conv2d:
    """A 'same'-padded 2D convolution, spectrally normalised unless ``sn=False``."""
    conv = _init(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
    )
    return spectral_norm(conv, eps=SN_EPS) if sn else conv


def conv3d(
    in_channels: int, out_channels: int, kernel_size: int = 3, *, sn: bool = True
) -> nn.Conv3d:
    """A 'same'-padded 3D convolution, spectrally normalised unless ``sn=False``."""
    conv = _init(nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))
    return spectral_norm(conv, eps=SN_EPS) if sn else conv


def linear(in_features: int, out_features: int, *, sn: bool = True) -> nn.Linear:
    """A linear layer, spectrally normalised unless ``sn=False``."""
    layer = _init(nn.Linear(in_features, out_features))
    return spectral_norm(layer, eps=SN_EPS) if sn else layer


def space_to_depth(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C * block**2, H / block, W / block)``."""
    return F.pixel_unshuffle(x, block)


def depth_to_space(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """``(N, C * block**2, H, W) -> (N, C, H * block, W * block)``."""
    return F.pixel_shuffle(x, block)


class MeanOnlyBatchNorm(nn.Module):
    """Batch normalisation that only removes the batch mean (no division by sigma).

    The discriminators' ``BatchNorm(calc_sigma=False)`` of the DGMR pseudocode: centring keeps
    the spectrally normalised head 1-Lipschitz, where dividing by a batch standard deviation
    would not. Running means are kept for evaluation; a learnable offset follows.

    Parameters
    ----------
    num_features
        Features (channels) ``C`` of ``(N, C)`` or ``(N, C, ...)`` inputs.
    momentum
        Weight of the newest batch mean in the running mean.
    """

    def __init__(self, num_features: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Centre ``x`` ``(N, C, ...)`` over every axis but the channels."""
        if x.dim() < 2 or x.shape[1] != self.bias.numel():
            raise ValueError(
                f"MeanOnlyBatchNorm expects (N, {self.bias.numel()}, ...), got {tuple(x.shape)}"
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.training:
            dims = [0, *range(2, x.dim())]
            mean = x.mean(dim=dims)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
        else:
            mean = self.running_mean.to(x.dtype)
        return x - mean.view(shape) + self.bias.view(shape).to(x.dtype)


class SequenceBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` over ``(batch * time, C, H, W)`` with statistics per time step.

    DGMR's sampler applies its G blocks frame by frame (each call normalising with the
    statistics of that lead time); here the frames of all lead times are processed in one
    batched call and still normalised per lead time. The running statistics are updated once
    per call with the mean of the per-step statistics; evaluation uses them for every step.

    Call with ``steps``: the number of time steps ``T``; the rows of ``x`` are ordered
    ``(batch, time)``. ``steps=1`` is an ordinary ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """Normalise ``x`` ``(batch * steps, C, H, W)`` (rows ordered batch-major)."""
        if steps == 1 or not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % steps:
            raise ValueError(f"{n} rows are not a multiple of {steps} time steps")
        grouped = x.reshape(n // steps, steps * c, h, w)
        running_mean = self.running_mean.repeat(steps)
        running_var = self.running_var.repeat(steps)
        out = F.batch_norm(
            grouped,
            running_mean,
            running_var,
            self.weight.repeat(steps),
            self.bias.repeat(steps),
            training=True,
            momentum=self.momentum,
            eps=self.eps,
        )
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(steps, c).mean(0))
            self.running_var.copy_(running_var.view(steps, c).mean(0))
            self.num_batches_tracked.add_(1)
        return out.reshape(n, c, h, w)
