"""The terms of a (conditional) VAE's evidence lower bound, as pure functions of tensors.

For an example with observation ``y``, condition ``c`` and latent ``z``::

    ELBO = E_q(z | c, y)[log p(y | z, c)] - KL(q(z | c, y) || p(z | c))

estimated with one reparameterised sample of ``z``. The distributions are diagonal Gaussians
given by a mean and a log-variance; the reconstruction likelihoods work on rain in model
space (after a value transform such as ``log1p``):

- :func:`gaussian_nll`: a Gaussian with a per-pixel mean and log-scale;
- :func:`zero_inflated_nll`: a mixture of a point mass at "dry" (probability ``1 - p``) and a
  Gaussian for wet pixels (probability ``p``): the log-likelihood of a dry pixel is
  ``log(1 - p)``, of a wet one ``log p + log N(y | mean, scale)``. Radar rain is exactly zero
  on most pixels, where a Gaussian alone would pile up its density (and its loss) on one value.

Every function returns values per pixel (or per latent element); :func:`masked_sum` sums them
per example over valid pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_kl(
    mean_q: torch.Tensor,
    logvar_q: torch.Tensor,
    mean_p: torch.Tensor | None = None,
    logvar_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))), elementwise.

    ``0.5 * (logvar_p - logvar_q + (exp(logvar_q) + (mean_q - mean_p)^2) / exp(logvar_p) - 1)``;
    without ``mean_p``/``logvar_p`` the prior is the standard normal N(0, 1).

    Returns
    -------
    torch.Tensor
        The KL divergence (nats) of each element, the broadcast shape of the inputs.
    """
    if mean_p is None:
        mean_p = torch.zeros_like(mean_q)
    if logvar_p is None:
        logvar_p = torch.zeros_like(logvar_q)
    return 0.5 * (
        logvar_p
        - logvar_q
        + (logvar_q.exp() + (mean_q - mean_p).square()) * (-logvar_p).exp()
        - 1.0
    )


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """``-log N(target | mean, exp(log_scale)^2)`` per element (nats)."""
    return 0.5 * ((target - mean) * torch.exp(-log_scale)).square() + log_scale + _HALF_LOG_2PI


def zero_inflated_nll(
    target: torch.Tensor,
    wet_logit: torch.Tensor,
    mean: torch.Tensor,
    log_scale: torch.Tensor,
    dry: torch.Tensor,
) -> torch.Tensor:
    """Negative log-likelihood of a zero-inflated Gaussian, per element (nats).

    Parameters
    ----------
    target
        Observed values (model space).
    wet_logit
        Logit of the probability that the pixel is wet.
    mean, log_scale
        The Gaussian of wet values (model space).
    dry
        Boolean, True where the observed pixel is dry (the point mass).

    Returns
    -------
    torch.Tensor
        ``-log(1 - p)`` on dry pixels, ``-log p - log N(target | mean, scale)`` on wet ones.
    """
    dry_nll = F.softplus(wet_logit)  # -log(1 - sigmoid(l)) = softplus(l)
    wet_nll = F.softplus(-wet_logit) + gaussian_nll(target, mean, log_scale)
    return torch.where(dry, dry_nll, wet_nll)


def masked_sum(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of ``values`` per example (over every axis but the first), counting only ``mask``."""
    if mask is not None:
        values = torch.where(mask, values, torch.zeros_like(values))
    return values.flatten(1).sum(1)


def kl_weight(step: int, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """KL weight at optimisation ``step``: ``beta`` ramped linearly from 0 over ``warmup_steps``."""
    if warmup_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(0, int(step)) / float(warmup_steps))
