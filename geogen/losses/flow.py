"""Likelihood terms of normalizing flows: Gaussian densities, bits per dimension, dequantisation.

Pure torch functions, no state. Natural logarithms throughout (nats); :func:`bits_per_dim`
converts a negative log-likelihood in nats to bits per dimension.
"""

from __future__ import annotations

import math

import torch

#: ``log(2 pi)``.
LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(
    values: torch.Tensor,
    mean: torch.Tensor | None = None,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Elementwise ``log N(values; mean, exp(log_scale)^2)`` in nats.

    Parameters
    ----------
    values
        Any shape.
    mean, log_scale
        Broadcastable to ``values``; ``None`` is 0 (a standard normal).

    Returns
    -------
    torch.Tensor
        The shape of ``values``.
    """
    if mean is not None:
        values = values - mean
    if log_scale is None:
        return -0.5 * (values.square() + LOG_2PI)
    return -0.5 * (values.square() * torch.exp(-2.0 * log_scale) + LOG_2PI) - log_scale


def standard_normal_nll(values: torch.Tensor) -> torch.Tensor:
    """``-log N(values; 0, I)`` summed over all but the first (batch) axis, nats, ``(batch,)``.

    The closed form ``0.5 * |x|^2 + D/2 * log(2 pi)`` for ``D`` dimensions per example.
    """
    flat = values.reshape(values.shape[0], -1)
    return 0.5 * flat.square().sum(1) + 0.5 * flat.shape[1] * LOG_2PI


def bits_per_dim(nll: torch.Tensor, num_dims: int) -> torch.Tensor:
    """Negative log-likelihood ``nll`` (nats, per example) in bits per dimension.

    ``nll / (num_dims * log 2)``; ``num_dims`` is the number of scalar values per example
    (frames x pixels).
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    return nll / (num_dims * math.log(2.0))


def dequantize_dry(
    rain: torch.Tensor,
    threshold: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spread the point mass of dry pixels uniformly below the detection threshold.

    Rain rates below ``threshold`` (``0`` mm/h, and anything the radar reports below its
    detection limit) are replaced by ``threshold * u`` with ``u ~ U(0, 1)`` drawn per pixel;
    wetter pixels are kept. A continuous density ``p`` fitted to the result bounds the
    probability of a dry pixel from below: ``log P(dry) >= E_u[log p(threshold * u)] +
    log(threshold)`` (Jensen; the dequantisation bound of Theis et al. 2016), so the NLL
    of dequantised data is an upper bound on the NLL of the mixed discrete/continuous rain.

    Parameters
    ----------
    rain
        Rain rate in mm/h, any shape, ``>= 0``.
    threshold
        Detection threshold, mm/h, ``> 0``.
    generator
        Random generator of the noise (torch's global one by default).

    Returns
    -------
    tuple of torch.Tensor
        The dequantised rain (same shape, mm/h) and the boolean mask of dry pixels.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 mm/h, got {threshold}")
    dry = rain < threshold
    noise = torch.rand(rain.shape, generator=generator, device=rain.device, dtype=rain.dtype)
    return torch.where(dry, threshold * noise, rain), dry
