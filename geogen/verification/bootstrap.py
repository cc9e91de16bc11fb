"""Weighted bootstrap confidence intervals over cases.

Cases are resampled uniformly with replacement; each resample sums the cases' statistics
with their importance weights (``1 / sample_prob``) times how often they were drawn, and the
metric's scores are recomputed from those sums. Every metric and lead time uses the same
resamples for the same number of cases (the generator is seeded), so intervals of different
models scored on the same cases are paired.
"""

from __future__ import annotations

import numpy as np

from geogen.verification.interface import Metric, MetricState, ScoreKey, VerificationError


def resample_counts(n_cases: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """How often each case is drawn in each resample: ``(n_boot, n_cases)`` int."""
    if n_cases < 1 or n_boot < 1:
        raise VerificationError(f"bootstrap needs cases and resamples, got {n_cases}, {n_boot}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=n_boot)


def bootstrap_draws(
    metric: Metric, state: MetricState, n_boot: int = 1000, seed: int = 0
) -> dict[ScoreKey, np.ndarray]:
    """Scores of ``n_boot`` weighted resamples of the cases: key -> ``(n_boot, lead)``.

    Statistics that are only summed (diagram inputs) are not resampled; metrics whose
    scores need them are not supported here.
    """
    arrays = state.case_arrays()
    if not arrays:
        return {}
    weights = resample_counts(state.n_cases, n_boot, seed) * np.asarray(state.weights)[None, :]
    stats = {
        key: np.tensordot(weights, value, axes=(1, 0)) for key, value in arrays.items()
    }  # (n_boot, lead, ...)
    with np.errstate(divide="ignore", invalid="ignore"):
        return metric.scores(stats)


def confidence_interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, ...]:
    """Percentile interval of bootstrap draws ``(n_boot, ...)``: ``(low, high)``, NaN-aware."""
    if not 0 < confidence < 1:
        raise VerificationError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    draws = np.asarray(draws, dtype=np.float64)
    out = np.full((2, *draws.shape[1:]), np.nan)
    finite = np.isfinite(draws).any(axis=0)
    if finite.any():
        out[:, finite] = np.nanpercentile(
            draws[:, finite], [100 * alpha, 100 * (1 - alpha)], axis=0
        )
    return out[0], out[1]
