"""Continuous scores of the ensemble mean: mean error (bias), MAE and RMSE (mm/h).

The same as :func:`pysteps.verification.detcontscores.det_cont_fct` (``ME``, ``MAE``,
``RMSE``) applied to the ensemble mean, accumulated as sums so that cases add up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from geogen.verification.interface import Metric, Pair, ScoreKey, register_metric


def error_sums(prediction: np.ndarray, observation: np.ndarray) -> np.ndarray:
    """Sums of the error, its absolute value and its square, and the count, per lead.

    Parameters
    ----------
    prediction, observation
        ``(lead, y, x)`` mm/h; pixels where either is NaN are left out.

    Returns
    -------
    numpy.ndarray
        ``(lead, 4)``: sum of errors, of absolute errors, of squared errors, number of pixels.
    """
    err = np.asarray(prediction, dtype=np.float64) - np.asarray(observation, dtype=np.float64)
    finite = np.isfinite(err)
    err = np.where(finite, err, 0.0)
    axes = tuple(range(1, err.ndim))
    return np.stack(
        [
            err.sum(axis=axes),
            np.abs(err).sum(axis=axes),
            (err**2).sum(axis=axes),
            finite.sum(axis=axes),
        ],
        axis=-1,
    )


@register_metric("continuous")
class Continuous(Metric):
    """ME, MAE and RMSE of the ensemble mean per lead time (mm/h)."""

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """``sums``: ``(lead, 4)``, see :func:`error_sums`."""
        return {"sums": error_sums(pair.ensemble_mean, pair.observation)}

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """``me``, ``mae``, ``rmse``: ``(..., lead)``."""
        s = stats["sums"]
        nan = float("nan")
        return {
            ("me", nan, 1, "none"): s[..., 0] / s[..., 3],
            ("mae", nan, 1, "none"): s[..., 1] / s[..., 3],
            ("rmse", nan, 1, "none"): np.sqrt(s[..., 2] / s[..., 3]),
        }
