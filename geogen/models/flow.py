"""Conditional multi-scale normalizing flows (Glow / RealNVP / SRFlow style), pure torch.

Building blocks (every one maps ``x -> (y, log|det dy/dx|)`` and back exactly):

- :class:`ActNorm`: per-channel affine map, initialised from the first training batch (Glow);
- :class:`InvConv1x1`: invertible 1x1 convolution, LU-decomposed (Glow, sec. 3.2);
- :class:`ConditionalAffineCoupling`: half of the channels are scaled and shifted by a
  network of the other half *and of condition features* (RealNVP, SRFlow);
- :func:`squeeze` / :func:`unsqueeze`: 2x2 space-to-depth;
- :class:`ConditionalSplit`: half of the channels leave the flow and are scored under a
  Gaussian whose mean and scale come from the kept half and the condition features.

:class:`ConditionalGlow` stacks them over ``levels`` scales: at each scale a squeeze, ``steps``
flow steps (actnorm, 1x1 convolution, coupling) and a split (but at the last scale, where the
rest is scored under a Gaussian prior computed from the condition alone). Condition features
come from :class:`ConditionEncoder`, one map per scale.

Two conditional models use it:

- :class:`FlowNowcaster`: ``p(frame_t | frames_{t-k..t-1})``, one frame at a time; the
  likelihood of a forecast sequence is the product over lead times (chain rule with the
  observed previous frames, "teacher forcing"); sampling is autoregressive;
- :class:`FlowDownscaler`: ``p(high-res frames | low-res frames)``, the ``frames`` frames of a
  sequence jointly as channels, conditioned on the low-resolution input upsampled to the fine
  grid (SRFlow-like).

Everything is in *flow space* (the model space of the data, see :mod:`geogen.methods.flow`);
these modules know nothing about rain, thresholds or transforms. Log-probabilities are in nats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geogen.losses.flow import gaussian_log_prob

#: One noise tensor per latent of a flow (standard normal), top latent last.
Noise = list[torch.Tensor]


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)``: each 2x2 block becomes 4 channels."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs even height and width, got {h} x {w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`squeeze`: ``(B, 4C, H, W) -> (B, C, 2H, 2W)``."""
    b, c, h, w = x.shape
    if c % 4:
        raise ValueError(f"unsqueeze needs a multiple of 4 channels, got {c}")
    x = x.reshape(b, c // 4, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


def soft_clamp(values: torch.Tensor, bound: float) -> torch.Tensor:
    """``bound * tanh(values / bound)``: the identity near 0, within ``(-bound, bound)``."""
    return bound * torch.tanh(values / bound)


class ZeroConv2d(nn.Conv2d):
    """A 3x3 convolution initialised to output zeros (so a flow starts as the identity)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class ActNorm(nn.Module):
    """``y = (x + bias) * exp(log_scale)`` per channel, ``log|det| = H W sum(log_scale)``.

    Starts as the identity; on the first forward pass in training mode (when ``data_init``)
    the bias and scale are set so that that batch has zero mean and unit variance per channel
    (Glow's data-dependent initialisation). Whether it happened is a buffer, saved in
    checkpoints.

    Parameters
    ----------
    channels
        Number of channels.
    data_init
        Initialise from the first training batch.
    """

    def __init__(self, channels: int, data_init: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.data_init = bool(data_init)
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log_det)`` with ``log_det`` of shape ``(B,)``."""
        if self.training and self.data_init and not bool(self.initialized):
            self._initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        log_det = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return y, log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``x`` from ``y``."""
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution ``W = P L (U + diag(sign(s) exp(log|s|)))`` (Glow, LU form).

    ``log|det| = H W sum(log|s|)``: linear in the channels instead of cubic.

    Parameters
    ----------
    channels
        Number of channels.
    init
        ``"orthogonal"`` (a random rotation, Glow's) or ``"identity"``.
    generator
        Random generator of the orthogonal initialisation.
    """

    def __init__(
        self,
        channels: int,
        init: str = "orthogonal",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if init == "orthogonal":
            weight = torch.linalg.qr(torch.randn(channels, channels, generator=generator))[0]
        elif init == "identity":
            weight = torch.eye(channels)
        else:
            raise ValueError(f"init must be 'orthogonal' or 'identity', got {init!r}")
        permutation, lower, upper = torch.linalg.lu(weight)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", torch.sign(diagonal))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_abs_diagonal = nn.Parameter(torch.log(torch.abs(diagonal)))

    def weight(self) -> torch.Tensor:
        """The ``(C, C)`` matrix."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(
            self.sign * torch.exp(self.log_abs_diagonal)
        )
        return self.permutation @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log_det)`` with ``log_det`` of shape ``(B,)``."""
        weight = self.weight()
        y = F.conv2d(x, weight[:, :, None, None].to(x.dtype))
        log_det = self.log_abs_diagonal.sum() * x.shape[2] * x.shape[3]
        return y, log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``x`` from ``y``."""
        inverse = torch.linalg.inv(self.weight().double()).to(y.dtype)
        return F.conv2d(y, inverse[:, :, None, None])


class ConditionalAffineCoupling(nn.Module):
    """Affine coupling whose scale and shift see the condition features (SRFlow).

    ``x = [x_a, x_b]``; ``(shift, s) = NN([x_a, features])``, ``log_scale = clamp *
    tanh(s / clamp)``; ``y = [x_a, x_b * exp(log_scale) + shift]``,
    ``log|det| = sum(log_scale)``. The last convolution starts at zero, so a new coupling is
    the identity.

    Parameters
    ----------
    channels
        Channels of ``x`` (>= 2).
    condition_channels
        Channels of the condition features at this scale.
    hidden
        Channels of the coupling network.
    clamp
        Bound of ``|log_scale|`` (soft, tanh), for stable training.
    """

    def __init__(
        self, channels: int, condition_channels: int, hidden: int = 64, clamp: float = 2.0
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling needs >= 2 channels, got {channels}")
        self.kept = channels // 2
        self.changed = channels - self.kept
        self.clamp = float(clamp)
        self.net = nn.Sequential(
            nn.Conv2d(self.kept + condition_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, 2 * self.changed),
        )

    def _shift_log_scale(
        self, kept: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([kept, features], dim=1))
        shift, raw = out[:, 0::2], out[:, 1::2]
        return shift, soft_clamp(raw, self.clamp)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log_det)`` with ``log_det`` of shape ``(B,)``."""
        kept, changed = x[:, : self.kept], x[:, self.kept :]
        shift, log_scale = self._shift_log_scale(kept, features)
        changed = changed * torch.exp(log_scale) + shift
        return torch.cat([kept, changed], dim=1), log_scale.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``x`` from ``y``."""
        kept, changed = y[:, : self.kept], y[:, self.kept :]
        shift, log_scale = self._shift_log_scale(kept, features)
        return torch.cat([kept, (changed - shift) * torch.exp(-log_scale)], dim=1)


class FlowStep(nn.Module):
    """One Glow step: actnorm, invertible 1x1 convolution, conditional affine coupling."""

    def __init__(
        self,
        channels: int,
        condition_channels: int,
        hidden: int,
        clamp: float = 2.0,
        conv_init: str = "orthogonal",
    ) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.conv = InvConv1x1(channels, init=conv_init)
        self.coupling = ConditionalAffineCoupling(channels, condition_channels, hidden, clamp)

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log_det)``."""
        x, log_det = self.actnorm(x)
        x, conv_log_det = self.conv(x)
        x, coupling_log_det = self.coupling(x, features)
        return x, log_det + conv_log_det + coupling_log_det

    def inverse(self, y: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``x`` from ``y``."""
        y = self.coupling.inverse(y, features)
        return self.actnorm.inverse(self.conv.inverse(y))


class ConditionalSplit(nn.Module):
    """Factor out half of the channels under ``N(mean, exp(log_scale)^2)`` of the rest + condition.

    Parameters
    ----------
    channels
        Channels before the split; ``channels // 2`` are kept, the rest leave the flow.
    condition_channels
        Channels of the condition features at this scale.
    clamp
        Bound of the prior's ``|log_scale|`` (soft, tanh): out-of-distribution conditions
        (an autoregressive forecast's own frames) cannot blow the noise up.
    """

    def __init__(self, channels: int, condition_channels: int, clamp: float = 5.0) -> None:
        super().__init__()
        self.kept = channels // 2
        self.out = channels - self.kept
        self.clamp = float(clamp)
        self.prior = ZeroConv2d(self.kept + condition_channels, 2 * self.out)

    def _prior(self, kept: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.prior(torch.cat([kept, features], dim=1))
        return out[:, 0::2], soft_clamp(out[:, 1::2], self.clamp)

    def forward(
        self, x: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(kept, latent, log_prob of the latent (B,))``."""
        kept, latent = x[:, : self.kept], x[:, self.kept :]
        mean, log_scale = self._prior(kept, features)
        log_prob = gaussian_log_prob(latent, mean, log_scale).flatten(1).sum(1)
        return kept, latent, log_prob

    def inverse(
        self,
        kept: torch.Tensor,
        features: torch.Tensor,
        latent: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``x`` from the kept half and the ``latent`` (or standard ``noise`` through the prior)."""
        if latent is None:
            mean, log_scale = self._prior(kept, features)
            latent = mean + temperature * torch.exp(log_scale) * noise
        return torch.cat([kept, latent], dim=1)


class ConditionEncoder(nn.Module):
    """Features of the condition at each scale of a flow: ``levels`` maps, each 2x coarser.

    A 3x3 convolution stack at the input resolution, then per level a stride-2 convolution
    and a 3x3 convolution (ReLU after each). Output ``i`` is at ``1 / 2^(i+1)`` of the input.

    Parameters
    ----------
    in_channels
        Channels of the condition (context frames, upsampled low-res frames).
    hidden
        Channels of every feature map.
    levels
        Number of scales.
    """

    def __init__(self, in_channels: int, hidden: int = 32, levels: int = 3) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.hidden = int(hidden)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
        )
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                nn.ReLU(),
            )
            for _ in range(levels)
        )

    def forward(self, condition: torch.Tensor) -> list[torch.Tensor]:
        """``levels`` feature maps ``(B, hidden, H / 2^(i+1), W / 2^(i+1))``."""
        features, out = self.stem(condition), []
        for block in self.down:
            features = block(features)
            out.append(features)
        return out


class ConditionalGlow(nn.Module):
    """Multi-scale conditional Glow: ``x`` (given condition features) <-> Gaussian latents.

    Parameters
    ----------
    in_channels
        Channels of ``x``.
    condition_channels
        Channels of the condition features (the encoder's ``hidden``).
    levels
        Scales (squeezes); ``x``'s height and width must be multiples of ``2^levels``.
    steps
        Flow steps per scale.
    hidden
        Channels of the coupling networks.
    clamp
        Bound of the couplings' log-scales.
    conv_init
        Initialisation of the 1x1 convolutions (``"orthogonal"`` or ``"identity"``).
    prior_clamp
        Bound of the Gaussian priors' log-scales.
    """

    def __init__(
        self,
        in_channels: int,
        condition_channels: int,
        levels: int = 3,
        steps: int = 4,
        hidden: int = 64,
        clamp: float = 2.0,
        conv_init: str = "orthogonal",
        prior_clamp: float = 5.0,
    ) -> None:
        super().__init__()
        if levels < 1 or steps < 1:
            raise ValueError(f"levels ({levels}) and steps ({steps}) must be >= 1")
        self.in_channels = int(in_channels)
        self.levels = int(levels)
        self.blocks = nn.ModuleList()
        self.splits = nn.ModuleList()
        channels = in_channels
        for level in range(levels):
            channels *= 4
            self.blocks.append(
                nn.ModuleList(
                    FlowStep(channels, condition_channels, hidden, clamp, conv_init)
                    for _ in range(steps)
                )
            )
            if level < levels - 1:
                split = ConditionalSplit(channels, condition_channels, prior_clamp)
                self.splits.append(split)
                channels = split.kept
        self.top_channels = channels
        self.prior_clamp = float(prior_clamp)
        self.top_prior = ZeroConv2d(condition_channels, 2 * channels)

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this (``2^levels``)."""
        return 2**self.levels

    def latent_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """``(channels, y, x)`` of each latent for an ``x`` of ``height x width`` (top last)."""
        shapes, channels = [], self.in_channels
        for level in range(self.levels):
            channels *= 4
            scale = 2 ** (level + 1)
            if level < self.levels - 1:
                split = self.splits[level]
                shapes.append((split.out, height // scale, width // scale))
                channels = split.kept
        scale = 2**self.levels
        shapes.append((channels, height // scale, width // scale))
        return shapes

    def _check(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(
                f"height and width must be multiples of {self.multiple} (2^levels), got {h} x {w}"
            )
        if len(features) != self.levels:
            raise ValueError(f"expected {self.levels} condition feature maps, got {len(features)}")

    def forward(
        self, x: torch.Tensor, features: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Map ``x`` to its latents.

        Parameters
        ----------
        x
            ``(B, C, H, W)``.
        features
            Condition features, one per level, ``(B, F, H / 2^(i+1), W / 2^(i+1))``.

        Returns
        -------
        tuple
            ``(latents, log_det, log_prior)``: the latents (one per split, then the top one;
            shapes :meth:`latent_shapes`), ``log|det dz/dx|`` ``(B,)`` and the log-density
            of the latents under their (conditional) Gaussians ``(B,)``, nats.
        """
        self._check(x, features)
        log_det = x.new_zeros(x.shape[0])
        log_prior = x.new_zeros(x.shape[0])
        latents = []
        h = x
        for level in range(self.levels):
            h = squeeze(h)
            for step in self.blocks[level]:
                h, step_log_det = step(h, features[level])
                log_det = log_det + step_log_det
            if level < self.levels - 1:
                h, latent, log_prob = self.splits[level](h, features[level])
                latents.append(latent)
                log_prior = log_prior + log_prob
        mean, log_scale = self._top(features[-1])
        log_prior = log_prior + gaussian_log_prob(h, mean, log_scale).flatten(1).sum(1)
        latents.append(h)
        return latents, log_det, log_prior

    def _top(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.top_prior(features)
        return out[:, 0::2], soft_clamp(out[:, 1::2], self.prior_clamp)

    def log_prob(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``log p(x | condition)`` in nats, ``(B,)``."""
        _, log_det, log_prior = self(x, features)
        return log_prior + log_det

    def inverse(
        self,
        features: Sequence[torch.Tensor],
        latents: Sequence[torch.Tensor] | None = None,
        noise: Sequence[torch.Tensor] | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``x`` from ``latents`` (exact inverse of :meth:`forward`) or from standard ``noise``.

        With ``noise`` (standard normal, shapes :meth:`latent_shapes`), each latent is
        ``mean + temperature * scale * noise`` under its conditional prior: a sample of
        ``p(x | condition)`` at ``temperature`` 1.
        """
        if (latents is None) == (noise is None):
            raise ValueError("give exactly one of latents and noise")
        given = latents if latents is not None else noise
        if len(given) != self.levels:
            raise ValueError(f"expected {self.levels} latents, got {len(given)}")
        if latents is not None:
            h = latents[-1]
        else:
            mean, log_scale = self._top(features[-1])
            h = mean + temperature * torch.exp(log_scale) * noise[-1]
        for level in reversed(range(self.levels)):
            if level < self.levels - 1:
                h = self.splits[level].inverse(
                    h,
                    features[level],
                    latent=latents[level] if latents is not None else None,
                    noise=noise[level] if noise is not None else None,
                    temperature=temperature,
                )
            for step in reversed(self.blocks[level]):
                h = step.inverse(h, features[level])
            h = unsqueeze(h)
        return h

    def sample_noise(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Noise:
        """Standard normal noise for :meth:`inverse`: one tensor per latent."""
        return [
            torch.randn((batch, *shape), generator=generator, device=device)
            for shape in self.latent_shapes(height, width)
        ]


class FlowNowcaster(nn.Module):
    """Autoregressive conditional flow ``p(frame_t | the context_frames frames before it)``.

    Each lead frame is one flow pass conditioned on the ``context_frames`` frames before it
    (observed ones for likelihoods, the model's own for later leads when sampling), so the
    likelihood of ``L`` lead frames is ``prod_t p(frame_t | frames_{t-k..t-1})``.

    Parameters
    ----------
    context_frames
        Frames the flow is conditioned on.
    lead_frames
        Default number of lead frames to forecast.
    levels, steps, hidden, clamp, conv_init
        See :class:`ConditionalGlow`.
    condition_hidden
        Channels of the condition features (:class:`ConditionEncoder`).
    """

    def __init__(
        self,
        context_frames: int = 4,
        lead_frames: int = 18,
        levels: int = 3,
        steps: int = 4,
        hidden: int = 64,
        condition_hidden: int = 32,
        clamp: float = 2.0,
        conv_init: str = "orthogonal",
    ) -> None:
        super().__init__()
        self.context_frames = int(context_frames)
        self.lead_frames = int(lead_frames)
        self.encoder = ConditionEncoder(context_frames, condition_hidden, levels)
        self.flow = ConditionalGlow(1, condition_hidden, levels, steps, hidden, clamp, conv_init)

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this."""
        return self.flow.multiple

    def _check(self, context: torch.Tensor) -> None:
        if context.ndim != 4 or context.shape[1] < self.context_frames:
            raise ValueError(
                f"context must be (batch, >= {self.context_frames} frames, y, x), got "
                f"{tuple(context.shape)}"
            )

    def frame_log_prob(self, previous: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """``log p(frame | previous)`` in nats, ``(B,)``.

        ``previous (B, >= k, H, W)`` (its last ``context_frames`` are used), ``frame (B, 1, H, W)``.
        """
        self._check(previous)
        return self.flow.log_prob(frame, self.encoder(previous[:, -self.context_frames :]))

    def log_prob(
        self,
        context: torch.Tensor,
        target: torch.Tensor,
        leads: Sequence[int] | None = None,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-lead ``log p(target_l | the k frames before it)`` (teacher forcing), nats.

        Parameters
        ----------
        context
            ``(B, k, H, W)`` observed context frames.
        target
            ``(B, L, H, W)`` lead frames whose density is evaluated (dequantised).
        leads
            Lead indices to evaluate (default: all), batched into one flow pass.
        observed
            ``(B, L, H, W)`` lead frames used as *conditions* for later leads (default:
            ``target``); the method passes the observations before dequantisation.

        Returns
        -------
        torch.Tensor
            ``(B, len(leads))``.
        """
        self._check(context)
        if target.ndim != 4:
            raise ValueError(f"target must be (batch, lead, y, x), got {tuple(target.shape)}")
        leads = list(range(target.shape[1])) if leads is None else list(leads)
        observed = target if observed is None else observed
        frames = torch.cat([context[:, -self.context_frames :], observed], dim=1)
        k, b = self.context_frames, target.shape[0]
        previous = torch.cat([frames[:, lead : lead + k] for lead in leads])
        current = torch.cat([target[:, lead : lead + 1] for lead in leads])
        log_prob = self.flow.log_prob(current, self.encoder(previous))
        return log_prob.reshape(len(leads), b).T

    def sample(
        self,
        context: torch.Tensor,
        leads: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: Sequence[Noise] | None = None,
        condition_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Forecast ``leads`` frames one after another.

        Parameters
        ----------
        context
            ``(B, >= k, H, W)``, H and W multiples of :attr:`multiple`.
        leads
            Number of lead frames (default :attr:`lead_frames`).
        temperature
            Scale of the latent noise (1: samples of the model; < 1: smoother).
        generator
            Random generator of the noise (when ``noise`` is not given).
        noise
            Per lead, the standard noise of :meth:`ConditionalGlow.sample_noise`.
        condition_map
            Applied to each generated frame before it conditions later leads (the method
            maps dequantised dry values back to the dry value of the observations).

        Returns
        -------
        torch.Tensor
            ``(B, leads, H, W)``: the generated frames (before ``condition_map``).
        """
        self._check(context)
        leads = self.lead_frames if leads is None else int(leads)
        b, _, h, w = context.shape
        previous = context[:, -self.context_frames :]
        out = []
        for lead in range(leads):
            features = self.encoder(previous)
            lead_noise = (
                noise[lead]
                if noise is not None
                else self.flow.sample_noise(b, h, w, generator, context.device)
            )
            frame = self.flow.inverse(features, noise=lead_noise, temperature=temperature)
            out.append(frame)
            conditioned = condition_map(frame) if condition_map is not None else frame
            previous = torch.cat([previous[:, 1:], conditioned], dim=1)
        return torch.cat(out, dim=1)


class FlowDownscaler(nn.Module):
    """Conditional flow ``p(high-res frames | low-res frames)``, frames jointly (SRFlow-like).

    The ``frames`` frames of a sequence are the flow's channels; the condition is the low-res
    sequence upsampled ``factor`` times (nearest), encoded at every scale.

    Parameters
    ----------
    frames
        Frames per sequence (the store's ``sequence.length``).
    factor
        Resolution factor.
    levels, steps, hidden, clamp, conv_init
        See :class:`ConditionalGlow`.
    condition_hidden
        Channels of the condition features.
    """

    def __init__(
        self,
        frames: int = 8,
        factor: int = 16,
        levels: int = 3,
        steps: int = 4,
        hidden: int = 64,
        condition_hidden: int = 32,
        clamp: float = 2.0,
        conv_init: str = "orthogonal",
    ) -> None:
        super().__init__()
        self.frames = int(frames)
        self.factor = int(factor)
        self.encoder = ConditionEncoder(frames, condition_hidden, levels)
        self.flow = ConditionalGlow(
            frames, condition_hidden, levels, steps, hidden, clamp, conv_init
        )

    @property
    def multiple(self) -> int:
        """High-res height and width must be multiples of this."""
        return self.flow.multiple

    def features(self, lowres: torch.Tensor) -> list[torch.Tensor]:
        """Condition features of ``lowres (B, frames, h, w)``."""
        if lowres.ndim != 4 or lowres.shape[1] != self.frames:
            raise ValueError(
                f"lowres must be (batch, {self.frames} frames, y, x), got {tuple(lowres.shape)}"
            )
        upsampled = F.interpolate(lowres, scale_factor=self.factor, mode="nearest")
        return self.encoder(upsampled)

    def log_prob(self, lowres: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``log p(target | lowres)`` nats ``(B,)``; target ``(B, frames, h f, w f)``."""
        expected = (lowres.shape[0], self.frames, *(s * self.factor for s in lowres.shape[-2:]))
        if tuple(target.shape) != expected:
            raise ValueError(f"target must be {expected}, got {tuple(target.shape)}")
        return self.flow.log_prob(target, self.features(lowres))

    def sample(
        self,
        lowres: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: Noise | None = None,
    ) -> torch.Tensor:
        """``(B, frames, h f, w f)`` samples given ``lowres (B, frames, h, w)``."""
        features = self.features(lowres)
        h, w = (s * self.factor for s in lowres.shape[-2:])
        if noise is None:
            noise = self.flow.sample_noise(lowres.shape[0], h, w, generator, lowres.device)
        return self.flow.inverse(features, noise=noise, temperature=temperature)


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
