"""A spectral loss: the log power spectrum of generated members against the observation's.

Pixel scores (CRPS, MSE) are blind to how power is spread over scales: an ensemble can score
well with blurred members, or with members that hold too much power at the pixel scale. The
loss compares the radially averaged power spectrum (as
:func:`geogen.verification.spectra.rapsd` and pysteps' ``rapsd``: ``|FFT|^2 / size`` averaged
over rings of rounded radius) of the member-mean spectrum with the observed one, in log10, each
ring weighted by ``1 / radius`` so that every octave of wavelengths counts the same.
"""

from __future__ import annotations

from functools import lru_cache

import torch

#: Added to powers before the log (mm^2/h^2 per ring; far below radar precision).
POWER_FLOOR = 1e-6


@lru_cache(maxsize=8)
def _rings(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Ring index of each half-plane frequency, its weight (the mirror counts twice), rings."""
    ky = torch.fft.fftfreq(height) * height
    kx = torch.arange(width // 2 + 1, dtype=torch.float32)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long()
    weight = torch.full((width // 2 + 1,), 2.0)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    n_rings = max(height, width) // 2
    return radius.flatten(), weight.expand(height, -1).flatten().clone(), n_rings


def radial_power(fields: torch.Tensor) -> torch.Tensor:
    """``(..., y, x)`` -> ``(..., rings)`` mean power per ring (radius ``1 .. n - 1``; no mean)."""
    h, w = fields.shape[-2:]
    index, weight, n_rings = _rings(h, w)
    spectrum = torch.fft.rfft2(fields if fields.is_floating_point() else fields.float())
    power = (spectrum.real**2 + spectrum.imag**2).flatten(-2) / (h * w)
    keep = index < n_rings
    index = index[keep].to(fields.device)
    weight = weight[keep].to(fields.device, power.dtype)
    flat = power[..., keep.to(fields.device)].reshape(-1, index.numel())
    sums = torch.zeros(flat.shape[0], n_rings, device=fields.device, dtype=flat.dtype)
    sums.index_add_(1, index, flat * weight)
    counts = torch.zeros(n_rings, device=fields.device, dtype=flat.dtype).index_add_(
        0, index, weight
    )
    psd = sums / counts.clamp_min(1.0)
    return psd.reshape(*fields.shape[:-2], n_rings)[..., 1:]


def log_spectral_distance(samples: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared log10 ratio of the member-mean power spectrum to the observed one.

    Parameters
    ----------
    samples
        ``(S, batch, lead, y, x)`` members (physical units; missing pixels filled).
    target
        ``(batch, lead, y, x)``.

    Returns
    -------
    torch.Tensor
        Scalar: ``mean_k w_k (log10 P_members(k) - log10 P_obs(k))^2`` with ``w_k ~ 1 / k``
        (normalised), averaged over batch and lead.
    """
    if samples.dim() != target.dim() + 1 or samples.shape[1:] != target.shape:
        raise ValueError(
            f"samples must be (samples, *target.shape); got {tuple(samples.shape)} for a "
            f"target of {tuple(target.shape)}"
        )
    members = radial_power(samples).mean(dim=0)
    return _weighted_log_ratio(members, radial_power(target), POWER_FLOOR).mean()


def log_spectral_loss(
    samples: torch.Tensor, target: torch.Tensor, *, floor: float = 1e-8
) -> torch.Tensor:
    """:func:`log_spectral_distance` of flat fields, leaving out targets without variance.

    Parameters
    ----------
    samples
        ``(S, N, h, w)``.
    target
        ``(N, h, w)``; fields without variance (dry) are left out.
    floor
        Added to both powers before the logarithm.

    Returns
    -------
    torch.Tensor
        Scalar (0 when no target field varies).
    """
    if samples.dim() != 4 or samples.shape[1:] != target.shape:
        raise ValueError(
            f"samples must be (S, N, h, w) and target (N, h, w); got {tuple(samples.shape)} "
            f"and {tuple(target.shape)}"
        )
    per_field = _weighted_log_ratio(radial_power(samples).mean(dim=0), radial_power(target), floor)
    keep = (target.flatten(1).std(dim=1) > 0).to(per_field.dtype)
    return (per_field * keep).sum() / keep.sum().clamp_min(1.0)


def _weighted_log_ratio(
    forecast: torch.Tensor, observed: torch.Tensor, floor: float
) -> torch.Tensor:
    """``sum_k w_k (log10 forecast_k - log10 observed_k)^2`` with ``w_k ~ 1 / k``, per field."""
    log_ratio = torch.log10(forecast + floor) - torch.log10(observed + floor)
    k = torch.arange(1, log_ratio.shape[-1] + 1, device=log_ratio.device, dtype=log_ratio.dtype)
    weight = (1.0 / k) / (1.0 / k).sum()
    return (log_ratio.square() * weight).sum(dim=-1)
