"""The ensemble CRPS of generator samples, a proper scoring rule to train generative models.

Training a generator by minimising a proper scoring rule of its samples (Gneiting and Raftery
2007; Pacchiardi et al. 2024, *Probabilistic forecasting with generative networks via scoring
rule minimization*, JMLR 25) makes its ensemble calibrated: the CRPS

``CRPS(F, y) = E|X - y| - 1/2 E|X - X'|``

rewards samples close to the observation (first term) *and* samples that differ from each other
(second term), whereas DGMR's grid-cell regulariser only compares the samples' mean with the
observation, which a collapsed ensemble (all members equal to the conditional mean) minimises.
With ``S`` samples the *fair* (unbiased) estimate divides the spread term by ``S (S - 1)``
instead of ``S^2`` (Ferro 2014; Leutbecher 2019): its expectation is the CRPS of the generator's
distribution, not of an ``S``-member ensemble.

Pooling the fields before scoring (average pooling over ``k x k`` windows, as the pooled CRPS
of DGMR's evaluation) scores the samples' spatial structure too: independent pixel noise
averages out at coarser scales, where it is penalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def ensemble_crps(
    samples: torch.Tensor,
    target: torch.Tensor,
    *,
    fair: bool = True,
    mask: torch.Tensor | None = None,
    alpha: float | None = None,
) -> torch.Tensor:
    """Mean CRPS of an ensemble of ``S`` samples against ``target``, per pixel.

    Parameters
    ----------
    samples
        ``(S, *shape)``, ``S >= 2`` for ``fair``.
    target
        ``shape``.
    fair
        Use the fair estimate (``1 / (2 S (S - 1))`` for the spread term) instead of the CRPS
        of the ``S``-member empirical distribution (``1 / (2 S^2)``).
    mask
        ``shape`` bool, False where the target is missing (those pixels are left out of the
        mean).
    alpha
        The *almost fair* CRPS of AIFS-CRPS (Lang et al. 2024): ``alpha`` x fair CRPS +
        ``(1 - alpha)`` x the CRPS of the empirical distribution (overrides ``fair``;
        ``0.95`` keeps the fair estimate's unbiasedness almost whole while its gradient no
        longer vanishes when two members coincide).

    Returns
    -------
    torch.Tensor
        Scalar: the mean over the (valid) pixels.
    """
    if samples.dim() != target.dim() + 1 or samples.shape[1:] != target.shape:
        raise ValueError(
            f"samples must be (samples, *target.shape); got {tuple(samples.shape)} for a "
            f"target of {tuple(target.shape)}"
        )
    s = samples.shape[0]
    if alpha is not None:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if s < 2 and float(alpha) > 0:
            raise ValueError("the almost fair CRPS needs at least 2 samples")
    elif fair and s < 2:
        raise ValueError("the fair CRPS needs at least 2 samples")
    skill = (samples - target.unsqueeze(0)).abs().mean(dim=0)
    # sum over ordered pairs |x_i - x_j| = 2 * sum over i < j
    pairs = torch.zeros_like(skill)
    for i in range(s - 1):
        pairs = pairs + (samples[i + 1 :] - samples[i].unsqueeze(0)).abs().sum(dim=0)
    if alpha is not None:
        a = float(alpha)
        spread = pairs * ((a / (s * (s - 1)) if s > 1 else 0.0) + (1.0 - a) / (s * s))
    else:
        spread = pairs / (s * (s - 1) if fair else s * s)
    crps = skill - spread
    if mask is None:
        return crps.mean()
    weights = mask.to(crps.dtype)
    return (crps * weights).sum() / weights.sum().clamp_min(1.0)


def pooled_crps(
    samples: torch.Tensor,
    target: torch.Tensor,
    pools: Sequence[int] = (1,),
    *,
    fair: bool = True,
    mask: torch.Tensor | None = None,
    alpha: float | None = None,
) -> torch.Tensor:
    """The mean over ``pools`` of the CRPS of ``k x k`` average-pooled fields.

    Parameters
    ----------
    samples
        ``(S, batch, lead, y, x)``.
    target
        ``(batch, lead, y, x)``.
    pools
        Window sides (1: the pixels themselves); non-overlapping windows (stride ``k``).
    fair, mask, alpha
        As :func:`ensemble_crps`; with pooling, a window counts when it has valid pixels, and
        missing pixels should be filled with the same value in samples and target.

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    if target.dim() != 4:
        raise ValueError(f"target must be (batch, lead, y, x), got {tuple(target.shape)}")
    if not pools:
        raise ValueError("pools must name at least one window size")
    terms = []
    s = samples.shape[0]
    for k in pools:
        k = int(k)
        if k < 1:
            raise ValueError(f"pool sizes must be >= 1, got {k}")
        if k == 1:
            terms.append(ensemble_crps(samples, target, fair=fair, mask=mask, alpha=alpha))
            continue
        pooled = F.avg_pool2d(samples.flatten(0, 1), k).unflatten(0, (s, target.shape[0]))
        pooled_target = F.avg_pool2d(target, k)
        pooled_mask = None
        if mask is not None:
            pooled_mask = F.avg_pool2d(mask.to(target.dtype), k) > 0
        terms.append(ensemble_crps(pooled, pooled_target, fair=fair, mask=pooled_mask, alpha=alpha))
    return torch.stack(terms).mean()


def ensemble_spread_skill(samples: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spread and skill of an ensemble, as the ``spread_skill`` metric defines them.

    Returns the mean ensemble variance's square root ``spread`` (with the ``(S + 1) / S``
    correction), the RMSE of the ensemble mean ``rmse`` and their ratio ``spread_skill``
    (1 for a reliable ensemble, near 0 for a collapsed one). ``samples`` ``(S, *shape)``.
    """
    s = samples.shape[0]
    mean = samples.mean(dim=0)
    variance = samples.var(dim=0, unbiased=True).mean() if s > 1 else samples.new_zeros(())
    spread = torch.sqrt(variance * (s + 1) / s)
    rmse = torch.sqrt(((mean - target) ** 2).mean())
    return {"spread": spread, "rmse": rmse, "spread_skill": spread / rmse.clamp_min(1e-12)}


def almost_fair_crps(
    samples: torch.Tensor, target: torch.Tensor, *, alpha: float = 0.95
) -> torch.Tensor:
    """The almost fair CRPS (Lang et al. 2024, AIFS-CRPS): ``alpha`` fair + ``1 - alpha`` plain.

    ``afCRPS = mean|X_i - y| - (1 - eps) / (2 S (S - 1)) sum_{i != j} |X_i - X_j|`` with
    ``eps = (1 - alpha) / S``: the fair CRPS (``alpha = 1``) has a degenerate minimum when two
    members agree; a little of the plain ensemble CRPS (``alpha < 1``) removes it.

    Parameters
    ----------
    samples
        ``(S, *shape)``, ``S >= 2``.
    target
        ``shape``.
    alpha
        Weight of the fair estimate, in ``[0, 1]``.

    Returns
    -------
    torch.Tensor
        Scalar: the mean over every value of ``target``.
    """
    if samples.shape[0] < 2:
        raise ValueError(f"need at least 2 samples and alpha in [0, 1]; got {samples.shape[0]}")
    return ensemble_crps(samples, target, alpha=alpha)
