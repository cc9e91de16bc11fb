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

**Explicit noise** (``noise_scales``, e.g. ``[2, 8, 32]``). DGMR's only randomness is its
latent ``z`` at 1/32 of the resolution; a network trained for minutes turns it into little
spread, and none at the pixel scale the scores see. With ``noise_scales`` the head has a
second output channel ``s_t`` and the forecast becomes

``y_t = relu(a_t + g * r_t + tau * 2 sigmoid(s_t) * eps_t)``

where ``eps_t`` is multi-scale noise: for each scale ``k`` a field of ``N(0, 1)`` values on a
grid ``k`` times coarser, correlated in time by a learned AR(1) coefficient ``rho_k``
(``n_t = rho_k n_{t-1} + sqrt(1 - rho_k^2) e_t``), upsampled bilinearly and summed with learned
weights. The network predicts *where* and *how much* the members should differ
(``2 sigmoid(s_t)``, bounded, from the context, the advection and ``z``); the noise gives
every member its own realisation, as the cascade noise of STEPS does. ``tau`` starts at 0.05, so the
samples differ from the first step and the ensemble CRPS has a spread gradient to follow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from geogen.models.dgmr import DOWNSCALE, Generator, Sampler, _check_frames
from geogen.nn.blocks import DBlock
from geogen.nn.layers import space_to_depth

#: Learning-rate multiplier of the gains and noise parameters (see AdvectionGenerator).
GAIN_RATE = 20.0


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
    noise_scales
        Coarsening factors of the explicit multi-scale noise (``None``: DGMR's latent only;
        see the module docstring).
    norm
        ``"none"`` (default: no batch norm in the sampler, so a member never depends on the
        other members of its batch and the network is the same in training and forecasting)
        or ``"batch"`` (DGMR's).
    max_log_scale
        Upper bound of the noise amplitude head, ``max_log_scale * sigmoid(s_t)``.
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
        noise_scales: list[int] | tuple[int, ...] | None = None,
        norm: str = "none",
        max_log_scale: float = 2.0,
    ) -> None:
        super().__init__(
            context_frames, lead_frames, base_channels, latent_channels, output_activation
        )
        self.noise_scales = [int(k) for k in noise_scales or ()]
        if any(k < 1 for k in self.noise_scales):
            raise ValueError(f"noise_scales must be >= 1, got {self.noise_scales}")
        heads = 2 if self.noise_scales else 1
        self.advection_encoder = AdvectionEncoder(base_channels)
        self.sampler = Sampler(
            base_channels,
            in_channels=heads,
            extra_channels=self.advection_encoder.widths[::-1],
            norm=norm,
        )
        self.max_log_scale = float(max_log_scale)
        # The gains and noise parameters are stored divided by GAIN_RATE (used multiplied by
        # it): Adam moves a parameter by about lr per step whatever its gradient, so a plain
        # scalar gain would need thousands of steps to leave 0; this is a 20x learning rate
        # for these few numbers (the "equalised learning rate" trick of progressive GANs).
        self.residual_gain = nn.Parameter(torch.zeros(()))
        if self.noise_scales:
            n = len(self.noise_scales)
            self.noise_gain = nn.Parameter(torch.full((), 0.05 / GAIN_RATE))
            self.noise_weights = nn.Parameter(torch.zeros(n))  # softplus: equal weights
            self.noise_memory = nn.Parameter(torch.full((n,), 2.0 / GAIN_RATE))  # rho ~ 0.88

    def sample_noise(
        self,
        batch: int,
        leads: int,
        height: int,
        width: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[torch.Tensor]:
        """The innovations of the multi-scale noise: per scale ``(batch, leads, h/k, w/k)``.

        Drawn on the device of ``generator`` (if given), then moved to ``device``; ``[]``
        without ``noise_scales``.
        """
        where = generator.device if generator is not None else device
        out = []
        for k in self.noise_scales:
            shape = (batch, leads, -(-height // k), -(-width // k))
            draw = torch.randn(shape, generator=generator, device=where)
            out.append(draw.to(device=device, dtype=dtype))
        return out

    def noise_field(self, innovations: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
        """Multi-scale, AR(1)-in-time noise ``(batch, leads, height, width)``, unit weights sum."""
        weights = F.softplus(GAIN_RATE * self.noise_weights)
        weights = weights / weights.square().sum().sqrt()
        rho = torch.sigmoid(GAIN_RATE * self.noise_memory)
        total = None
        for i, draw in enumerate(innovations):
            steps = [draw[:, 0]]
            keep = torch.sqrt(1 - rho[i] ** 2)
            for t in range(1, draw.shape[1]):
                steps.append(rho[i] * steps[-1] + keep * draw[:, t])
            field = torch.stack(steps, dim=1)
            if field.shape[-2:] != (height, width):
                field = F.interpolate(
                    field, size=(height, width), mode="bilinear", align_corners=False
                )
            total = weights[i] * field if total is None else total + weights[i] * field
        return total

    def forward(
        self,
        context: torch.Tensor,
        lead_frames: int | None = None,
        *,
        advected: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: list[torch.Tensor] | None = None,
        lead_chunk: int | None = None,
    ) -> torch.Tensor:
        """Forecast lead frames from context frames and their advection forecast.

        Parameters
        ----------
        context
            ``(batch, context_frames, y, x)`` in model space; ``y`` and ``x`` multiples of 32.
            Batch 1 with ``z`` of batch ``n``: ``n`` members of that one context.
        lead_frames
            Number of lead frames (default: ``advected.shape[1]``).
        advected
            ``(batch, lead_frames, y, x)`` (or batch 1, shared by the members): the
            extrapolation of the last context frame, in model space
            (:func:`geogen.data.advection.advect`).
        z, generator
            Latent noise, as :meth:`Generator.forward`.
        noise
            With ``noise_scales``: the innovations of :meth:`sample_noise` (drawn with
            ``generator`` when ``None``).
        lead_chunk
            Unroll the sampler (and encode the advected frames) over chunks of at most this
            many leads (memory-bounded sampling); the same forecast.

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
        if z is None:
            z = self.sample_latent(
                b, h, w, generator=generator, device=context.device, dtype=context.dtype
            )
        n = b if b > 1 else z.shape[0]
        self.check_latent(z, n, h, w)
        if advected.dim() != 4 or tuple(advected.shape[1:]) != (lead_frames, h, w):
            raise ValueError(
                f"advected must be (batch, lead, y, x) = {(n, lead_frames, h, w)}, got "
                f"{tuple(advected.shape)}"
            )
        if advected.shape[0] not in (1, n):
            raise ValueError(f"advected has batch {advected.shape[0]}, not 1 or {n}")
        advected = advected.to(context.dtype)
        if self.noise_scales and noise is None:
            noise = self.sample_noise(
                n,
                lead_frames,
                h,
                w,
                generator=generator,
                device=context.device,
                dtype=context.dtype,
            )

        def extras(first: int, steps: int) -> list[torch.Tensor]:
            features = self.advection_encoder(advected[:, first : first + steps])
            return [f.expand(n, *f.shape[1:]) for f in features]

        with parametrize.cached():
            states = self.initial_states(context, n)
            latent = self.latent_stack(z.to(context.dtype))
            heads = self.sampler(states, latent, lead_frames, extras, lead_chunk=lead_chunk)
        gain = GAIN_RATE * self.residual_gain
        if not self.noise_scales:
            out = advected + gain * heads
        else:
            expected = [(n, lead_frames, -(-h // k), -(-w // k)) for k in self.noise_scales]
            if [tuple(e.shape) for e in noise] != expected:
                raise ValueError(
                    f"noise must be innovations of shapes {expected}, got "
                    f"{[tuple(e.shape) for e in noise]}"
                )
            eps = self.noise_field([e.to(context.dtype) for e in noise], h, w)
            # bounded: one sample far in the tail of exp(log1p space) would dominate the CRPS
            scale = self.max_log_scale * torch.sigmoid(heads[:, :, 1])
            noise_gain = GAIN_RATE * self.noise_gain
            out = advected + gain * heads[:, :, 0] + noise_gain * scale * eps
        return F.relu(out) if self.output_activation == "relu" else out
