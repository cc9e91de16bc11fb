"""DGMR conditioned on an advection forecast: the generator learns what extrapolation misses.

NowcastNet (Zhang et al. 2023, *Skilful nowcasting of extreme precipitation with NowcastNet*,
Nature 619, 526-532) conditions its generative network on the output of a physical evolution
network, and beats DGMR. geogen's :class:`AdvectionGenerator` takes that idea with the
advection forecast pysteps already makes for geogen's references (optical flow and
semi-Lagrangian extrapolation of the last context frame, see
:func:`geogen.data.advection.advect`): the network receives, besides the 4 context frames and
the latent noise of DGMR, the ``L`` advected frames, and forecasts

``y_t = relu(a_t + g * r_t(context, a, z))``

in model space, where ``a_t`` is the advected frame of lead ``t`` and ``r_t`` the output of
DGMR's sampler. The gain ``g`` starts at 0, so a new network forecasts exactly the
extrapolation and training learns the residual: growth and decay, the loss of predictability
with lead time, and (through ``z``) the stochastic part.

Architecture (widths for ``base_channels = c``):

- DGMR's context conditioning stack and latent conditioning stack, unchanged;
- an advection encoder: every advected frame, on its own (weights shared over leads),
  through space-to-depth and four residual down-blocks of ``2c, 4c, 8c, 16c`` channels, giving
  features at ``H/4, H/8, H/16, H/32``;
- DGMR's sampler whose ConvGRU at each level also reads, at lead step ``t``, the advection
  features of lead ``t`` at that level's resolution (concatenated with its usual input);
- the output head of DGMR (batch norm, ReLU, 1x1 convolution, depth-to-space), scaled by
  ``g`` and added to ``a_t``, then a ReLU.

With ``model space = log1p(mm/h)`` (the shipped configs) the residual is multiplicative in rain
rate. The discriminators are DGMR's (:class:`~geogen.models.dgmr.Discriminator`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from geogen.models.dgmr import DOWNSCALE, Generator, Sampler, _check_frames
from geogen.nn.blocks import DBlock
from geogen.nn.layers import space_to_depth


class AdvectionEncoder(nn.Module):
    """Advected frames ``(B, L, H, W)`` -> features per lead at 4 scales (coarse to fine).

    Parameters
    ----------
    base_channels
        ``c``: the four levels have ``2c, 4c, 8c, 16c`` channels at ``H/4 .. H/32``.
    in_channels
        Channels per frame (1).
    """

    def __init__(self, base_channels: int = 24, in_channels: int = 1) -> None:
        super().__init__()
        c = base_channels
        self.in_channels = in_channels
        widths = [4 * in_channels, 2 * c, 4 * c, 8 * c, 16 * c]
        self.widths = widths[1:]
        self.blocks = nn.ModuleList(
            DBlock(widths[i], widths[i + 1], downsample=True, pre_activation=i > 0)
            for i in range(4)
        )

    def forward(self, advected: torch.Tensor) -> list[torch.Tensor]:
        """``(B, L, H, W)`` -> ``[(B, L, 16c, H/32, W/32), ..., (B, L, 2c, H/4, W/4)]``."""
        _check_frames("AdvectionEncoder", advected, None, DOWNSCALE)
        b, leads, h, w = advected.shape
        x = space_to_depth(advected.reshape(b * leads, self.in_channels, h, w))
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x.unflatten(0, (b, leads)))
        return features[::-1]


class AdvectionGenerator(Generator):
    """DGMR's generator conditioned on advected frames (see the module docstring).

    Parameters
    ----------
    context_frames, lead_frames, base_channels, latent_channels
        As :class:`~geogen.models.dgmr.Generator`.
    output_activation
        ``"relu"`` (non-negative output in model space) or ``"none"``.
    """

    #: Extra inputs of :meth:`forward` that the data module must provide.
    conditions: tuple[str, ...] = ("advected",)

    def __init__(
        self,
        context_frames: int = 4,
        lead_frames: int = 18,
        base_channels: int = 24,
        latent_channels: int = 8,
        output_activation: str = "relu",
    ) -> None:
        super().__init__(
            context_frames, lead_frames, base_channels, latent_channels, output_activation
        )
        self.advection_encoder = AdvectionEncoder(base_channels)
        self.sampler = Sampler(base_channels, extra_channels=self.advection_encoder.widths[::-1])
        self.residual_gain = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        context: torch.Tensor,
        lead_frames: int | None = None,
        *,
        advected: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Forecast lead frames from context frames and their advection forecast.

        Parameters
        ----------
        context
            ``(batch, context_frames, y, x)`` in model space; ``y`` and ``x`` multiples of 32.
        lead_frames
            Number of lead frames (default: ``advected.shape[1]``).
        advected
            ``(batch, lead_frames, y, x)``: the extrapolation of the last context frame, in
            model space (:func:`geogen.data.advection.advect`).
        z, generator
            Latent noise, as :meth:`Generator.forward`.

        Returns
        -------
        torch.Tensor
            ``(batch, lead_frames, y, x)`` in model space.
        """
        _check_frames("AdvectionGenerator", context, self.context_frames, DOWNSCALE)
        if advected is None:
            raise ValueError(
                "AdvectionGenerator needs the advected frames (advected=, batch, lead, y, x)"
            )
        lead_frames = advected.shape[1] if lead_frames is None else int(lead_frames)
        b, _, h, w = context.shape
        if advected.dim() != 4 or tuple(advected.shape) != (b, lead_frames, h, w):
            raise ValueError(
                f"advected must be (batch, lead, y, x) = {(b, lead_frames, h, w)}, got "
                f"{tuple(advected.shape)}"
            )
        if z is None:
            z = self.sample_latent(
                b, h, w, generator=generator, device=context.device, dtype=context.dtype
            )
        elif tuple(z.shape) != (b, *self.latent_shape(h, w)):
            raise ValueError(
                f"z must have shape {(b, *self.latent_shape(h, w))}, got {tuple(z.shape)}"
            )
        advected = advected.to(context.dtype)
        with parametrize.cached():
            states = self.conditioning_stack(context)
            latent = self.latent_stack(z.to(context.dtype))
            extras = self.advection_encoder(advected)
            residual = self.sampler(states, latent, lead_frames, extras)
        out = advected + self.residual_gain * residual
        return F.relu(out) if self.output_activation == "relu" else out
