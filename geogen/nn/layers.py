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
    batched call and still normalised per lead time. Running statistics are kept **per time
    step** (``step_mean``, ``step_var`` for the first ``max_steps`` steps; later steps use the
    last one), so evaluation normalises lead ``t`` as training did. (Normalising every lead
    with the mean over leads, as geogen did before, changes the network between training and
    forecasting: a briefly trained DGMR's spread/skill fell from 0.46 to 0.21 and dgmr_advect's
    members blew up.) ``running_mean``/``running_var`` hold the mean over steps and serve
    ``steps=1`` calls and checkpoints written before the per-step statistics existed.

    Call with ``steps``: the number of time steps ``T``; the rows of ``x`` are ordered
    ``(batch, time)``; with ``first_step``, they are the steps ``first_step ..
    first_step + T - 1`` of a longer sequence (a chunk of lead times: the memory-bounded
    sampler unrolls the leads chunk by chunk, and each chunk is normalised with the
    statistics of its own leads). Without ``steps`` it is an ordinary ``BatchNorm2d``.
    """

    def __init__(self, num_features: int, *args, max_steps: int = 32, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.max_steps = int(max_steps)
        self.register_buffer("step_mean", torch.zeros(self.max_steps, num_features))
        self.register_buffer("step_var", torch.ones(self.max_steps, num_features))
        self.register_buffer("step_tracked", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, *args):
        # checkpoints from before the per-step statistics: keep the defaults (step_tracked 0
        # makes evaluation use running_mean / running_var, as those checkpoints did)
        for name in ("step_mean", "step_var", "step_tracked"):
            key = prefix + name
            if key not in state_dict:
                state_dict[key] = getattr(self, name).clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, *args)

    def step_index(self, steps: int, first_step: int, device: torch.device) -> torch.Tensor:
        """Rows of ``step_mean`` for steps ``first_step .. first_step + steps - 1``.

        Steps from ``max_steps - 1`` on share the last row.
        """
        index = torch.arange(first_step, first_step + steps, device=device)
        return index.clamp(max=self.max_steps - 1)

    def forward(
        self, x: torch.Tensor, steps: int | None = None, first_step: int = 0
    ) -> torch.Tensor:
        """Normalise ``x`` ``(batch * steps, C, H, W)`` (rows ordered batch-major).

        Parameters
        ----------
        x
            ``(batch * steps, C, H, W)``.
        steps
            Time steps ``T`` in ``x``; ``None``: an ordinary ``BatchNorm2d``.
        first_step
            Index of the first of these steps in the sequence (lead offset of a chunk).
        """
        if steps is None:
            return super().forward(x)
        if steps < 1 or first_step < 0:
            raise ValueError(f"steps must be >= 1 and first_step >= 0, got {steps}, {first_step}")
        n, c, h, w = x.shape
        if n % steps:
            raise ValueError(f"{n} rows are not a multiple of {steps} time steps")
        index = self.step_index(steps, first_step, x.device)
        grouped = x.reshape(n // steps, steps * c, h, w)
        if not self.training:
            if int(self.step_tracked) == 0:
                return super().forward(x)
            mean, var = self.step_mean[index].reshape(-1), self.step_var[index].reshape(-1)
            out = F.batch_norm(
                grouped,
                mean,
                var,
                self.weight.repeat(steps),
                self.bias.repeat(steps),
                training=False,
                eps=self.eps,
            )
            return out.reshape(n, c, h, w)
        running_mean = self.step_mean[index].reshape(-1).clone()
        running_var = self.step_var[index].reshape(-1).clone()
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
            per_step_mean, per_step_var = running_mean.view(steps, c), running_var.view(steps, c)
            kept = min(steps, max(0, self.max_steps - first_step))
            self.step_mean[first_step : first_step + kept].copy_(per_step_mean[:kept])
            self.step_var[first_step : first_step + kept].copy_(per_step_var[:kept])
            self.step_tracked.add_(1)
            self.running_mean.copy_(per_step_mean.mean(0))
            self.running_var.copy_(per_step_var.mean(0))
            self.num_batches_tracked.add_(1)
        return out.reshape(n, c, h, w)


class NoNorm(nn.Module):
    """Identity with :class:`SequenceBatchNorm2d`'s signature (``norm="none"``)."""

    def __init__(self, num_features: int, **_: object) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(
        self, x: torch.Tensor, steps: int | None = None, first_step: int = 0
    ) -> torch.Tensor:
        """``x`` unchanged."""
        return x


def sequence_norm(num_features: int, norm: str = "batch") -> nn.Module:
    """``"batch"``: :class:`SequenceBatchNorm2d`; ``"none"``: :class:`NoNorm`."""
    if norm == "batch":
        return SequenceBatchNorm2d(num_features)
    if norm == "none":
        return NoNorm(num_features)
    raise ValueError(f"norm must be 'batch' or 'none', not {norm!r}")
