"""A stochastic rain downscaler that learns a residual over RainFARM.

RainFARM (Rebora et al. 2006, as in :mod:`pysteps.downscaling.rainfarm`) makes a fine field
``R_fine = exp(z) * R_coarse / block_mean(exp(z))`` from Gaussian noise ``z`` of unit variance
whose power spectrum is the power law ``|k|^-alpha`` fitted to the coarse field: the block
means are kept and the sub-grid structure is pure noise. :class:`ResidualGenerator` keeps that
structure and lets a small network correct it where data show RainFARM to be wrong:

``R_fine = B(x) * exp(mu(x) + sigma(x) * z(x))``, rescaled in each ``factor x factor`` block
so that its mean equals the coarse cell (exact mass conservation), where

- ``B`` is the bilinear interpolation of the coarse rain rates (RainFARM: the coarse value of
  the cell; bilinear removes the block edges);
- ``mu`` is a learned log-rain pattern inside each coarse cell (a sub-pixel convolution of the
  network's features: ``factor**2`` channels per coarse cell, pixel-shuffled);
- ``sigma = sigma0 * exp(g)``, ``g`` a learned log-gain at the coarse cells, bilinearly
  upsampled;
- ``z`` is Gaussian noise of unit variance with the spectrum ``|k|^-beta``, ``beta = w *
  alpha + b`` where ``alpha`` is RainFARM's slope fitted to each coarse frame.

The network sees each coarse frame with ``context`` neighbouring frames on either side
(``log(R + floor)``). Its output layers start at zero (``mu = 0``, ``g = 0``) and ``w = 1``,
``b = 0``, so an untrained generator is RainFARM with a bilinear base. Everything is in mm/h
(the training data's ``transform`` must be ``identity``).

The interface is :class:`geogen.models.downscale_gan.Generator`'s (``factor``,
``noise_channels``, :meth:`sample_noise`, ``forward(lowres, noise=..., generator=...)``), so the
downscaling GAN's training method and loaders take it: the noise is ``factor**2`` channels at
the coarse size per frame, pixel-shuffled into one white-noise field at the fine size (index 0
of the time axis, the GAN's initial-state noise, is not used).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from geogen.models.downscale_gan import ResidualBlock, _factor_steps, _reflect_conv

#: Largest exponent of the log-normal weights (keeps ``exp`` finite in float32).
MAX_EXPONENT = 20.0


@lru_cache(maxsize=32)
def _slope_design(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``log|k|`` of the ``(h, w)`` FFT and RainFARM's selection (middle 2/3 of ``log|k|``)."""
    ky = torch.fft.fftfreq(h, dtype=torch.float64)
    kx = torch.fft.fftfreq(w, dtype=torch.float64)
    k = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    log_k = torch.log(torch.where(k > 0, k, torch.ones_like(k)))
    valid = k > 0
    low, high = log_k[valid].min(), log_k[valid].max()
    span = high - low
    selected = valid & (log_k >= low + span / 6) & (log_k <= high - span / 6)
    return log_k, selected


def rainfarm_slope(coarse: torch.Tensor) -> torch.Tensor:
    """RainFARM's spectral slope ``alpha`` of each coarse field (pysteps' ``_estimate_alpha``).

    Parameters
    ----------
    coarse
        ``(..., h, w)`` rain rates.

    Returns
    -------
    torch.Tensor
        ``(...)``: minus the least-squares slope of ``log |FFT|^2`` against ``log |k|`` over
        the middle two thirds of the ``log |k|`` range; NaN for a field with no power there
        (a dry frame).
    """
    *lead, h, w = coarse.shape
    log_k, selected = _slope_design(h, w)
    power = torch.fft.fft2(coarse.to(torch.float64)).abs() ** 2
    log_power = torch.log(power)[..., selected]  # (..., n)
    x = log_k.to(coarse.device)[selected]
    x = x - x.mean()
    finite = torch.isfinite(log_power).all(dim=-1)
    y = torch.where(torch.isfinite(log_power), log_power, torch.zeros_like(log_power))
    slope = (y * x).sum(-1) / (x * x).sum()
    alpha = torch.where(finite, -slope, torch.full_like(slope, float("nan")))
    return alpha.to(coarse.dtype).reshape(lead)


def power_law_noise(white: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Filter white noise to the spectrum ``|k|^-beta``, zero mean and unit variance per field.

    Parameters
    ----------
    white
        ``(N, H, W)`` independent standard normal values.
    beta
        ``(N,)`` spectral slopes.

    Returns
    -------
    torch.Tensor
        ``(N, H, W)`` Gaussian fields (periodic in ``y`` and ``x``).
    """
    hh, ww = white.shape[-2:]
    ky = torch.fft.fftfreq(hh, device=white.device, dtype=white.dtype)
    kx = torch.fft.rfftfreq(ww, device=white.device, dtype=white.dtype)
    k = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    log_k = torch.log(torch.where(k > 0, k, torch.ones_like(k)))
    amplitude = torch.exp(-0.5 * beta[:, None, None] * log_k[None])
    amplitude = amplitude * (k > 0).to(white.dtype)[None]  # no mean
    field = torch.fft.irfft2(torch.fft.rfft2(white) * amplitude, s=(hh, ww))
    field = field - field.mean(dim=(-2, -1), keepdim=True)
    return field / field.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def conserve_block_means(fine: torch.Tensor, coarse: torch.Tensor, factor: int) -> torch.Tensor:
    """Rescale each ``factor x factor`` block of ``fine`` (>= 0) to the mean ``coarse``.

    Parameters
    ----------
    fine
        ``(N, H, W)`` non-negative, positive wherever the block's ``coarse`` is.
    coarse
        ``(N, H / factor, W / factor)`` non-negative block means.

    Returns
    -------
    torch.Tensor
        ``(N, H, W)``; dry blocks (``coarse == 0``) are 0.
    """
    means = F.avg_pool2d(fine.unsqueeze(1), factor).squeeze(1)
    ratio = torch.where(coarse > 0, coarse / means.clamp_min(1e-30), torch.zeros_like(coarse))
    ratio = ratio.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return fine * ratio


class ResidualGenerator(nn.Module):
    """RainFARM with a learned residual (see module docstring); mm/h in, mm/h out.

    Parameters
    ----------
    factor
        Resolution factor (a power of two).
    width
        Channels of the coarse-resolution network.
    blocks
        Residual blocks of that network.
    context
        Neighbouring frames on either side the network sees (edge frames repeated).
    sigma
        ``sigma0``: standard deviation of the log-normal weights before the learned gain
        (RainFARM: 1).
    floor
        mm/h added before the logarithm of the network's input.
    """

    def __init__(
        self,
        factor: int = 16,
        width: int = 32,
        blocks: int = 2,
        context: int = 1,
        sigma: float = 1.0,
        floor: float = 0.1,
    ) -> None:
        super().__init__()
        _factor_steps(factor)
        if width < 1 or blocks < 0 or context < 0 or sigma <= 0 or floor <= 0:
            raise ValueError(
                f"need width >= 1, blocks >= 0, context >= 0, sigma > 0 and floor > 0; got "
                f"{width}, {blocks}, {context}, {sigma}, {floor}"
            )
        self.factor = int(factor)
        self.noise_channels = self.factor**2
        self.context = int(context)
        self.floor = float(floor)
        self.stem = _reflect_conv(2 * self.context + 1, width, 3, sn=False)
        self.blocks = nn.Sequential(
            *[ResidualBlock(width, width, activation="leaky_relu") for _ in range(blocks)]
        )
        self.structure = _reflect_conv(width, self.factor**2, 3, sn=False)
        self.gain = _reflect_conv(width, 1, 3, sn=False)
        for conv in (self.structure, self.gain):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        self.slope_weight = nn.Parameter(torch.tensor(1.0))
        self.slope_offset = nn.Parameter(torch.tensor(0.0))

    def sample_noise(
        self,
        batch: int,
        steps: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Standard normal noise ``(batch, steps + 1, factor**2, height, width)``."""
        shape = (batch, steps + 1, self.noise_channels, height, width)
        if generator is not None:
            device = generator.device
        return torch.randn(shape, generator=generator, device=device)

    def _features(self, rain: torch.Tensor) -> torch.Tensor:
        """``(B, T, h, w)`` mm/h -> ``(B * T, width, h, w)``."""
        b, t, h, w = rain.shape
        logs = torch.log(rain + self.floor)
        index = torch.arange(t, device=rain.device)
        frames = [
            logs[:, (index + shift).clamp(0, t - 1)]
            for shift in range(-self.context, self.context + 1)
        ]
        x = torch.stack(frames, dim=2).reshape(b * t, 2 * self.context + 1, h, w)
        return self.blocks(self.stem(x))

    def forward(
        self,
        lowres: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Downscale coarse rain rates.

        Parameters
        ----------
        lowres
            ``(batch, time, h, w)`` block means, mm/h (negative values count as 0).
        noise
            ``(batch, time + 1, factor**2, h, w)`` (:meth:`sample_noise`); drawn with
            ``generator`` when ``None``.
        generator
            Random generator of the noise.

        Returns
        -------
        torch.Tensor
            ``(batch, time, h * factor, w * factor)`` mm/h whose ``factor x factor`` block
            means equal ``lowres``.
        """
        if lowres.dim() != 4:
            raise ValueError(f"lowres must be (batch, time, h, w), got {tuple(lowres.shape)}")
        b, t, h, w = lowres.shape
        if h < 2 or w < 2:
            raise ValueError(f"low-res frames of {h} x {w}: need at least 2 x 2 pixels")
        f = self.factor
        if noise is None:
            noise = self.sample_noise(b, t, h, w, generator=generator, device=lowres.device)
        expected = (b, t + 1, self.noise_channels, h, w)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must be {expected}, got {tuple(noise.shape)}")
        rain = lowres.clamp_min(0.0)
        coarse = rain.reshape(b * t, h, w)
        features = self._features(rain)
        mu = F.pixel_shuffle(self.structure(features), f).squeeze(1)  # (BT, H, W)
        gain = F.interpolate(self.gain(features), scale_factor=f, mode="bilinear")
        sigma = torch.exp(self.log_sigma + gain.squeeze(1))
        with torch.no_grad():
            alpha = rainfarm_slope(coarse)
        alpha = torch.nan_to_num(alpha, nan=2.0)
        beta = (self.slope_weight * alpha + self.slope_offset).clamp(0.0, 8.0)
        white = F.pixel_shuffle(noise[:, 1:].reshape(b * t, f * f, h, w).to(rain.dtype), f)
        z = power_law_noise(white.squeeze(1), beta)
        base = F.interpolate(coarse.unsqueeze(1), scale_factor=f, mode="bilinear").squeeze(1)
        exponent = (mu + sigma * z).clamp(-MAX_EXPONENT, MAX_EXPONENT)
        # the largest exponent of each field subtracted: exp stays finite, the ratio is the same
        exponent = exponent - exponent.amax(dim=(-2, -1), keepdim=True).detach()
        fine = conserve_block_means(base * torch.exp(exponent), coarse, f)
        return fine.reshape(b, t, h * f, w * f)
