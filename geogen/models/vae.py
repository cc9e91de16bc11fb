"""Conditional variational autoencoders (Kingma and Welling 2014, conditional form) for rain.

Two networks share one design:

- :class:`NowcastVAE`: condition = ``context`` frames ``(B, C, H, W)``, target = ``lead``
  frames ``(B, L, H, W)``;
- :class:`DownscaleVAE`: condition = a low-resolution sequence ``(B, T, H / f, W / f)``,
  target = the high-resolution sequence ``(B, T, H, W)``.

Each has

- a *posterior* encoder ``q(z | condition, target)``: a diagonal Gaussian over a spatial
  latent ``z`` of ``latent_channels`` channels on a coarse grid (``H / 2**levels`` for
  nowcasting, the low-resolution grid for downscaling);
- a *prior* ``p(z | condition)``: learned (a diagonal Gaussian from the condition) or the fixed
  standard normal (``prior="standard"``);
- a convolutional recurrent *decoder*: a :class:`~geogen.nn.ConvGRU` on the coarse grid steps
  through the output frames, fed with ``z`` and the condition; each step's state is upsampled
  to full resolution (residual blocks, skip connections from the condition) into the
  per-pixel parameters of the reconstruction likelihood.

The decoder's output ``params`` is ``(B, L, P, H, W)``: for ``likelihood="gaussian"`` ``P = 2``
(mean, log-scale), for ``likelihood="zero_inflated"`` ``P = 3`` (wet logit, mean, log-scale);
see :mod:`geogen.losses.vae`. With ``residual=True`` the mean is an increment on the last
context frame (nowcasting: persistence) or on the upsampled low-resolution frame
(downscaling). Values are in *model space* (after the training data's value transform); the
networks never see units, files or Lightning.

Ensembles come from drawing ``z`` from the prior: member ``m`` is ``point(decode(c, z_m))``,
the decoder's point forecast (the Gaussian mean, or the mean where the wet probability is at
least 1/2 and the dry value elsewhere). The likelihood's per-pixel noise is not sampled: it is
white noise without spatial structure.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geogen.nn import ConvGRU, ResBlock, depth_to_space, space_to_depth

LIKELIHOODS = {"gaussian": 2, "zero_inflated": 3}
PRIORS = ("learned", "standard")


def _width(base: int, level: int, max_multiplier: int) -> int:
    return base * min(2**level, max_multiplier)


def _check(name: str, x: torch.Tensor, channels: int | None, multiple: int) -> None:
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        expected = f"{channels}" if channels is not None else "any number of"
        raise ValueError(
            f"{name} must be (batch, time, y, x) with {expected} frames, got {tuple(x.shape)}"
        )
    if x.shape[-1] % multiple or x.shape[-2] % multiple:
        raise ValueError(
            f"{name}: y and x ({x.shape[-2]} x {x.shape[-1]}) must be multiples of {multiple}"
        )


class Tower(nn.Module):
    """Encoder: frames ``(B, T, H, W)`` -> features at ``H/2, H/4, ..., H/2**levels``.

    ``space_to_depth(2)``, a 3x3 convolution to ``base`` channels and a residual block at
    ``H / 2``, then one down-sampling residual block per further level (channels doubling up
    to ``base * max_multiplier``).
    """

    def __init__(self, frames: int, base: int, levels: int, max_multiplier: int = 4) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.frames, self.levels = frames, levels
        self.widths = [_width(base, level, max_multiplier) for level in range(levels)]
        self.stem = nn.Conv2d(4 * frames, base, 3, padding=1)
        self.first = ResBlock(base, self.widths[0])
        self.downs = nn.ModuleList(
            ResBlock(self.widths[i - 1], self.widths[i], resample="down") for i in range(1, levels)
        )

    def forward(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """``(B, T, H, W)`` -> ``[(B, w0, H/2, W/2), ..., (B, w_{L-1}, H/2**L, W/2**L)]``."""
        _check("Tower input", frames, self.frames, 2**self.levels)
        h = self.first(self.stem(space_to_depth(frames, 2)))
        features = [h]
        for down in self.downs:
            h = down(h)
            features.append(h)
        return features


class UpPath(nn.Module):
    """Decoder: coarse states ``(N, w_{L-1}, h, w)`` -> likelihood parameters ``(N, P, H, W)``.

    At each level a residual block merges the state with that level's skip features (channels
    ``skip_widths[level]``, 0 for none), then an up-sampling block goes one level finer; at
    ``H / 2`` a 3x3 convolution gives ``4 P`` channels, ``depth_to_space(2)`` the full
    resolution.
    """

    def __init__(self, widths: list[int], skip_widths: list[int], params: int) -> None:
        super().__init__()
        if len(widths) != len(skip_widths):
            raise ValueError("one skip width per level")
        self.widths, self.skip_widths, self.params = widths, skip_widths, params
        levels = len(widths)
        self.merge = nn.ModuleList(
            ResBlock(widths[i] + skip_widths[i], widths[i]) for i in range(levels)
        )
        self.ups = nn.ModuleList(
            ResBlock(widths[i], widths[i - 1], resample="up") for i in range(levels - 1, 0, -1)
        )
        self.norm = nn.GroupNorm(math.gcd(widths[0], 8), widths[0])
        self.head = nn.Conv2d(widths[0], 4 * params, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, state: torch.Tensor, skips: list[torch.Tensor | None]) -> torch.Tensor:
        """``state`` at the coarsest level, ``skips[level]`` (or None) -> ``(N, P, H, W)``."""
        levels = len(self.widths)
        h = state
        for step, level in enumerate(range(levels - 1, -1, -1)):
            skip = skips[level]
            h = self.merge[level](h if skip is None else torch.cat([h, skip], dim=1))
            if level > 0:
                h = self.ups[step](h)
        return depth_to_space(self.head(F.silu(self.norm(h))), 2)


class _ConditionalVAE(nn.Module):
    """What both VAEs share: latent heads, prior, likelihood parameters, sampling."""

    def __init__(
        self,
        latent_channels: int,
        prior: str,
        likelihood: str,
        min_log_scale: float,
        residual: bool,
    ) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(
                f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}"
            )
        if latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {latent_channels}")
        self.latent_channels = int(latent_channels)
        self.prior = prior
        self.likelihood = likelihood
        self.n_params = LIKELIHOODS[likelihood]
        self.min_log_scale = float(min_log_scale)
        self.residual = bool(residual)

    # -- latent distributions ---------------------------------------------------------------
    @staticmethod
    def _split(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = stats.chunk(2, dim=1)
        return mean, logvar.clamp(-12.0, 8.0)

    def prior_distribution(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, logvar)`` of ``p(z | condition)`` from the coarse condition features."""
        if self.prior == "standard":
            shape = (features.shape[0], self.latent_channels, *features.shape[-2:])
            zeros = features.new_zeros(shape)
            return zeros, zeros
        return self._split(self.prior_head(features))

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(latent_channels, h, w)`` of ``z`` for outputs of ``height x width`` pixels."""
        raise NotImplementedError

    def sample_latent(
        self,
        batch: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Standard normal noise ``(batch, latent_channels, h, w)`` (mapped through the prior)."""
        shape = (batch, *self.latent_shape(height, width))
        gen_device = generator.device if generator is not None else device
        eps = torch.randn(shape, generator=generator, device=gen_device)
        return eps if device is None else eps.to(device)

    # -- likelihood parameters --------------------------------------------------------------
    def _finish(self, raw: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Raw head output ``(B, L, P, H, W)`` -> parameters (residual mean, bounded scale)."""
        parts = list(raw.unbind(2))
        mean_index = 0 if self.likelihood == "gaussian" else 1
        if self.residual:
            parts[mean_index] = parts[mean_index] + base
        # log-scale = min + softplus(raw + offset): 0 (scale 1) for a raw output of 0
        offset = math.log(math.expm1(max(-self.min_log_scale, 1e-3)))
        parts[-1] = self.min_log_scale + F.softplus(parts[-1] + offset)
        return torch.stack(parts, dim=2)

    def point(self, params: torch.Tensor, dry_value: float = 0.0) -> torch.Tensor:
        """The point forecast ``(B, L, H, W)`` of likelihood parameters ``(B, L, P, H, W)``.

        Gaussian: the mean. Zero-inflated: the mean where the wet probability is at least 1/2,
        ``dry_value`` (the model-space value of no rain) elsewhere.
        """
        if self.likelihood == "gaussian":
            return params[:, :, 0]
        wet = params[:, :, 0] >= 0.0
        return torch.where(wet, params[:, :, 1], torch.full_like(params[:, :, 1], dry_value))

    @staticmethod
    def reparameterise(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``mean + exp(logvar / 2) * eps``."""
        return mean + torch.exp(0.5 * logvar) * eps

    def extra_repr(self) -> str:
        """Latent size, prior, likelihood."""
        return (
            f"latent_channels={self.latent_channels}, prior={self.prior!r}, "
            f"likelihood={self.likelihood!r}, residual={self.residual}"
        )


class NowcastVAE(_ConditionalVAE):
    """Conditional VAE for nowcasting: ``q(z | context, future)``, ``p(z | context)``.

    Parameters
    ----------
    context_frames
        Context frames ``C`` (the last one is the issue time).
    lead_frames
        Default number of lead frames ``L`` (any number can be decoded).
    base_channels
        Width at ``H / 2``; doubling at each coarser level up to ``4 x``.
    latent_channels
        Channels of ``z``, on the ``H / 2**levels`` grid.
    levels
        Resolution levels (``H / 2 ... H / 2**levels``); inputs must be multiples of
        ``2**levels`` (:attr:`size_multiple`).
    prior
        ``"learned"`` (``p(z | context)``) or ``"standard"`` (fixed N(0, I)).
    likelihood
        ``"zero_inflated"`` or ``"gaussian"`` (see :mod:`geogen.losses.vae`).
    min_log_scale
        Lower bound of the likelihood's log-scale (keeps the NLL finite).
    residual
        The mean is an increment on the last context frame.
    """

    def __init__(
        self,
        context_frames: int = 4,
        lead_frames: int = 18,
        base_channels: int = 32,
        latent_channels: int = 16,
        levels: int = 3,
        prior: str = "learned",
        likelihood: str = "zero_inflated",
        min_log_scale: float = -4.0,
        residual: bool = True,
    ) -> None:
        super().__init__(latent_channels, prior, likelihood, min_log_scale, residual)
        self.context_frames, self.lead_frames = int(context_frames), int(lead_frames)
        self.levels = int(levels)
        self.size_multiple = 2**self.levels
        self.context_encoder = Tower(context_frames, base_channels, levels)
        self.target_encoder = Tower(context_frames + lead_frames, base_channels, levels)
        widths = self.context_encoder.widths
        bottom = widths[-1]
        self.posterior_head = nn.Sequential(
            ResBlock(2 * bottom, bottom), nn.Conv2d(bottom, 2 * latent_channels, 3, padding=1)
        )
        self.prior_head = (
            nn.Sequential(
                ResBlock(bottom, bottom), nn.Conv2d(bottom, 2 * latent_channels, 3, padding=1)
            )
            if prior == "learned"
            else None
        )
        self.initial_state = nn.Conv2d(bottom, bottom, 3, padding=1)
        self.gru = ConvGRU(latent_channels + bottom, bottom, sn=False)
        self.up = UpPath(widths, widths, self.n_params)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(latent_channels, height / 2**levels, width / 2**levels)``."""
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(f"frames of {height} x {width}: need multiples of {m}")
        return self.latent_channels, height // m, width // m

    def posterior_distribution(
        self, context: torch.Tensor, target: torch.Tensor, features: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, logvar)`` of ``q(z | context, target)``."""
        seen = self.target_encoder(torch.cat([context, target], dim=1))[-1]
        return self._split(self.posterior_head(torch.cat([seen, features[-1]], dim=1)))

    def decode(
        self,
        context: torch.Tensor,
        z: torch.Tensor,
        leads: int | None = None,
        features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Likelihood parameters ``(B, leads, P, H, W)`` of the lead frames given ``z``."""
        leads = int(leads or self.lead_frames)
        if features is None:
            _check("context", context, self.context_frames, self.size_multiple)
            features = self.context_encoder(context)
        batch, _, height, width = context.shape
        if z.shape != (batch, *self.latent_shape(height, width)):
            raise ValueError(
                f"z must be {(batch, *self.latent_shape(height, width))}, got {tuple(z.shape)}"
            )
        bottom = features[-1]
        state = torch.tanh(self.initial_state(bottom))
        step_input = torch.cat([z, bottom], dim=1)
        states = []
        for _ in range(leads):
            state = self.gru(step_input, state)
            states.append(state)
        stacked = torch.stack(states, dim=1).flatten(0, 1)  # (B * L, w, h, w)
        skips = [f.repeat_interleave(leads, dim=0) for f in features]
        raw = self.up(stacked, skips).unflatten(0, (batch, leads))
        return self._finish(raw, context[:, -1:])

    def forward(
        self, context: torch.Tensor, target: torch.Tensor, eps: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode, sample ``z`` from the posterior, decode (the training pass).

        Parameters
        ----------
        context
            ``(B, C, H, W)`` context frames (model space); ``H, W`` multiples of
            ``2**levels``.
        target
            ``(B, L, H, W)`` observed lead frames (model space).
        eps
            Standard normal noise for the reparameterisation (default: drawn here).

        Returns
        -------
        dict
            ``params`` ``(B, L, P, H, W)``, ``posterior_mean``/``posterior_logvar`` and
            ``prior_mean``/``prior_logvar`` ``(B, Z, H / 2**levels, W / 2**levels)``, ``z``.
        """
        _check("context", context, self.context_frames, self.size_multiple)
        _check("target", target, None, self.size_multiple)
        if target.shape[0] != context.shape[0] or target.shape[-2:] != context.shape[-2:]:
            raise ValueError(
                f"target {tuple(target.shape)} does not match context {tuple(context.shape)}"
            )
        if target.shape[1] + self.context_frames != self.target_encoder.frames:
            raise ValueError(
                f"target must have {self.lead_frames} lead frames (the posterior encoder's), "
                f"got {target.shape[1]}"
            )
        features = self.context_encoder(context)
        post_mean, post_logvar = self.posterior_distribution(context, target, features)
        prior_mean, prior_logvar = self.prior_distribution(features[-1])
        if eps is None:
            eps = torch.randn_like(post_mean)
        z = self.reparameterise(post_mean, post_logvar, eps)
        params = self.decode(context, z, target.shape[1], features=features)
        return {
            "params": params,
            "posterior_mean": post_mean,
            "posterior_logvar": post_logvar,
            "prior_mean": prior_mean,
            "prior_logvar": prior_logvar,
            "z": z,
        }

    def sample(
        self,
        context: torch.Tensor,
        leads: int | None = None,
        eps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Likelihood parameters ``(B, leads, P, H, W)`` with ``z`` drawn from the prior.

        ``eps`` (``(B, Z, h, w)`` standard normal) fixes the draw; otherwise it comes from
        ``generator``.
        """
        _check("context", context, self.context_frames, self.size_multiple)
        features = self.context_encoder(context)
        mean, logvar = self.prior_distribution(features[-1])
        if eps is None:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.decode(context, self.reparameterise(mean, logvar, eps), leads, features)


class DownscaleVAE(_ConditionalVAE):
    """Conditional VAE for downscaling: ``q(z | lowres, highres)``, ``p(z | lowres)``.

    The latent lives on the low-resolution grid; the decoder's ConvGRU steps through the
    sequence there, fed with ``z`` and each low-resolution frame, and every step is upsampled
    ``factor`` times with the low-resolution frame (nearest-neighbour) joined at every level.

    Parameters
    ----------
    factor
        Resolution factor ``f`` (a power of 2, at least 2).
    base_channels
        Width at ``H / 2``; doubling at each coarser level up to ``4 x``.
    latent_channels
        Channels of ``z``.
    prior, likelihood, min_log_scale
        See :class:`NowcastVAE`.
    residual
        The mean is an increment on the nearest-neighbour upsampled low-resolution frame.
    """

    def __init__(
        self,
        factor: int = 16,
        base_channels: int = 32,
        latent_channels: int = 16,
        prior: str = "learned",
        likelihood: str = "zero_inflated",
        min_log_scale: float = -4.0,
        residual: bool = True,
    ) -> None:
        super().__init__(latent_channels, prior, likelihood, min_log_scale, residual)
        levels = round(math.log2(factor)) if factor >= 2 else 0
        if factor < 2 or 2**levels != factor:
            raise ValueError(f"factor must be a power of 2 (>= 2), got {factor}")
        self.factor, self.levels = int(factor), levels
        self.size_multiple = 1
        self.widths = [_width(base_channels, level, 4) for level in range(levels)]
        bottom = self.widths[-1]
        self.condition_encoder = nn.Sequential(
            nn.Conv2d(1, bottom, 3, padding=1), ResBlock(bottom, bottom)
        )
        self.target_encoder = Tower(1, base_channels, levels)
        self.posterior_rnn = ConvGRU(2 * bottom, bottom, sn=False)
        self.posterior_head = nn.Conv2d(bottom, 2 * latent_channels, 3, padding=1)
        self.condition_rnn = ConvGRU(bottom, bottom, sn=False)
        self.prior_head = (
            nn.Sequential(
                ResBlock(bottom, bottom), nn.Conv2d(bottom, 2 * latent_channels, 3, padding=1)
            )
            if prior == "learned"
            else None
        )
        self.gru = ConvGRU(latent_channels + bottom, bottom, sn=False)
        self.up = UpPath(self.widths, [1] * levels, self.n_params)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(latent_channels, height / factor, width / factor)``."""
        f = self.factor
        if height % f or width % f:
            raise ValueError(f"frames of {height} x {width}: need multiples of {f}")
        return self.latent_channels, height // f, width // f

    def _check_lowres(self, lowres: torch.Tensor) -> None:
        if lowres.dim() != 4:
            raise ValueError(f"lowres must be (batch, time, y, x), got {tuple(lowres.shape)}")

    def _condition(self, lowres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame features ``(B, T, w, h, w)`` and their summary over time ``(B, w, h, w)``."""
        batch, frames = lowres.shape[:2]
        per_frame = self.condition_encoder(lowres.flatten(0, 1).unsqueeze(1))
        per_frame = per_frame.unflatten(0, (batch, frames))
        state = torch.zeros_like(per_frame[:, 0])
        for t in range(frames):
            state = self.condition_rnn(per_frame[:, t], state)
        return per_frame, state

    def posterior_distribution(
        self, target: torch.Tensor, per_frame: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, logvar)`` of ``q(z | lowres, target)``: a ConvGRU over both, per frame."""
        batch, frames = target.shape[:2]
        seen = self.target_encoder(target.flatten(0, 1).unsqueeze(1))[-1].unflatten(
            0, (batch, frames)
        )
        state = torch.zeros_like(per_frame[:, 0])
        for t in range(frames):
            state = self.posterior_rnn(torch.cat([seen[:, t], per_frame[:, t]], dim=1), state)
        return self._split(self.posterior_head(state))

    def decode(
        self,
        lowres: torch.Tensor,
        z: torch.Tensor,
        condition: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Likelihood parameters ``(B, T, P, f h, f w)`` of the high-resolution frames."""
        self._check_lowres(lowres)
        batch, frames, h, w = lowres.shape
        if z.shape != (batch, self.latent_channels, h, w):
            raise ValueError(
                f"z must be {(batch, self.latent_channels, h, w)}, got {tuple(z.shape)}"
            )
        per_frame, summary = condition if condition is not None else self._condition(lowres)
        state = summary
        states = []
        for t in range(frames):
            state = self.gru(torch.cat([z, per_frame[:, t]], dim=1), state)
            states.append(state)
        stacked = torch.stack(states, dim=1).flatten(0, 1)
        flat_lowres = lowres.flatten(0, 1).unsqueeze(1)
        skips = [
            F.interpolate(flat_lowres, scale_factor=2 ** (self.levels - 1 - level), mode="nearest")
            for level in range(self.levels)
        ]
        raw = self.up(stacked, skips).unflatten(0, (batch, frames))
        base = F.interpolate(lowres, scale_factor=self.factor, mode="nearest")
        return self._finish(raw, base)

    def forward(
        self, lowres: torch.Tensor, target: torch.Tensor, eps: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode, sample ``z`` from the posterior, decode (the training pass).

        Parameters
        ----------
        lowres
            ``(B, T, h, w)`` low-resolution frames (model space).
        target
            ``(B, T, f h, f w)`` high-resolution frames (model space).
        eps
            Standard normal noise for the reparameterisation (default: drawn here).

        Returns
        -------
        dict
            As :meth:`NowcastVAE.forward`, with ``z`` on the ``h x w`` grid.
        """
        self._check_lowres(lowres)
        expected = (*lowres.shape[:2], lowres.shape[2] * self.factor, lowres.shape[3] * self.factor)
        if tuple(target.shape) != expected:
            raise ValueError(
                f"target must be {expected} for lowres {tuple(lowres.shape)} and factor "
                f"{self.factor}, got {tuple(target.shape)}"
            )
        condition = self._condition(lowres)
        post_mean, post_logvar = self.posterior_distribution(target, condition[0])
        prior_mean, prior_logvar = self.prior_distribution(condition[1])
        if eps is None:
            eps = torch.randn_like(post_mean)
        z = self.reparameterise(post_mean, post_logvar, eps)
        return {
            "params": self.decode(lowres, z, condition),
            "posterior_mean": post_mean,
            "posterior_logvar": post_logvar,
            "prior_mean": prior_mean,
            "prior_logvar": prior_logvar,
            "z": z,
        }

    def sample(
        self,
        lowres: torch.Tensor,
        eps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Likelihood parameters ``(B, T, P, f h, f w)`` with ``z`` drawn from the prior."""
        self._check_lowres(lowres)
        condition = self._condition(lowres)
        mean, logvar = self.prior_distribution(condition[1])
        if eps is None:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.decode(lowres, self.reparameterise(mean, logvar, eps), condition)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["DownscaleVAE", "NowcastVAE", "Tower", "UpPath", "count_parameters"]
