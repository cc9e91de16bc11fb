"""A spectral loss: the log ratio of the samples' radially averaged power to the target's."""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=16)
def _ring_index(h: int, w: int) -> tuple[torch.Tensor, int]:
    """Ring (rounded radius) of each ``rfft2`` coefficient of an ``(h, w)`` field, ring count."""
    ky = torch.fft.fftfreq(h) * h
    kx = torch.arange(w // 2 + 1, dtype=torch.float32)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long()
    rings = max(h, w) // 2
    return radius.clamp_max(rings).flatten(), rings


def radial_power(fields: torch.Tensor) -> torch.Tensor:
    """Mean ``|rfft2|^2`` per ring of radius ``1 ..`` (half the longest side): ``(..., n)``."""
    *lead, h, w = fields.shape
    index, rings = _ring_index(h, w)
    index = index.to(fields.device)
    power = torch.fft.rfft2(fields).abs().pow(2).reshape(*lead, -1) / (h * w)
    sums = torch.zeros(*lead, rings + 1, dtype=power.dtype, device=power.device)
    sums = sums.index_add(-1, index, power)
    counts = torch.bincount(index, minlength=rings + 1).to(power.dtype)
    return (sums / counts)[..., 1:rings]


def log_spectral_loss(
    samples: torch.Tensor, target: torch.Tensor, *, floor: float = 1e-8
) -> torch.Tensor:
    """Mean squared ``log10`` ratio of the member-mean ring power to the target's, per octave.

    Rings are weighted by ``1 / radius``, so that each octave of wavelengths weighs the same.

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
    observed = radial_power(target)
    forecast = radial_power(samples).mean(dim=0)
    ratio = torch.log10(forecast + floor) - torch.log10(observed + floor)
    # rings weighted by 1 / radius: every octave of wavelengths counts the same (the
    # verification's bands), not the many rings of the finest scales
    radius = torch.arange(1, ratio.shape[-1] + 1, dtype=ratio.dtype, device=ratio.device)
    weights = 1.0 / radius
    per_field = (ratio**2 * weights).sum(dim=-1) / weights.sum()
    keep = (target.flatten(1).std(dim=1) > 0).to(ratio.dtype)
    return (per_field * keep).sum() / keep.sum().clamp_min(1.0)
