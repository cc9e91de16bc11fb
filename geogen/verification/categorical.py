"""Categorical (yes/no) scores at rain-rate thresholds: CSI, POD, FAR, frequency bias, HSS, ETS.

Events are ``value > threshold``, as in :func:`pysteps.verification.detcatscores.det_cat_fct`.
For an ensemble, the contingency table is summed over members (the table of a member drawn
at random), so a deterministic forecast repeated over members scores as itself; with
``ensemble="mean"`` the ensemble mean is scored instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geogen.verification.interface import (
    Metric,
    Pair,
    ScoreKey,
    VerificationError,
    as_thresholds,
    register_metric,
)

#: Scores computed from a contingency table (pysteps' names, lower case).
CATEGORICAL_SCORES: tuple[str, ...] = ("csi", "pod", "far", "bias", "hss", "ets")

#: Index of each count in the last axis of a contingency table.
HITS, MISSES, FALSE_ALARMS, CORRECT_NEGATIVES = range(4)


def contingency_table(
    forecast: np.ndarray, observation: np.ndarray, thresholds: Sequence[float] | float
) -> np.ndarray:
    """Contingency tables per lead time and threshold, summed over members and pixels.

    Parameters
    ----------
    forecast
        ``(member, lead, y, x)`` mm/h.
    observation
        ``(lead, y, x)`` mm/h; pixels where it is NaN are not counted.
    thresholds
        Rain-rate thresholds (mm/h); an event is ``value > threshold``.

    Returns
    -------
    numpy.ndarray
        ``(lead, threshold, 4)`` float64: hits, misses, false alarms, correct negatives.
    """
    forecast = np.asarray(forecast)
    observation = np.asarray(observation)
    if forecast.ndim != 4 or observation.shape != forecast.shape[1:]:
        raise VerificationError(
            f"forecast (member, lead, y, x) {forecast.shape} and observation (lead, y, x) "
            f"{observation.shape} do not match"
        )
    thr = as_thresholds(thresholds)
    members = forecast.shape[0]
    valid = np.isfinite(observation)
    table = np.zeros((observation.shape[0], thr.size, 4))
    for k, t in enumerate(thr):
        observed = (observation > t) & valid
        observed_no = valid & ~observed
        n_yes = np.count_nonzero(forecast > t, axis=0)  # members forecasting the event
        hits = (n_yes * observed).sum(axis=(-2, -1))
        false_alarms = (n_yes * observed_no).sum(axis=(-2, -1))
        table[:, k, HITS] = hits
        table[:, k, FALSE_ALARMS] = false_alarms
        table[:, k, MISSES] = members * observed.sum(axis=(-2, -1)) - hits
        table[:, k, CORRECT_NEGATIVES] = members * observed_no.sum(axis=(-2, -1)) - false_alarms
    return table


def categorical_scores(
    table: np.ndarray, scores: Sequence[str] = CATEGORICAL_SCORES
) -> dict[str, np.ndarray]:
    """Scores from contingency tables ``(..., 4)`` (formulas of pysteps' ``det_cat_fct``).

    Returns
    -------
    dict
        Score name -> array ``table.shape[:-1]`` (NaN where undefined, e.g. no event).
    """
    unknown = set(scores) - set(CATEGORICAL_SCORES)
    if unknown:
        raise VerificationError(
            f"unknown categorical scores {sorted(unknown)}; valid: {', '.join(CATEGORICAL_SCORES)}"
        )
    table = np.asarray(table, dtype=np.float64)
    h, m, f, r = (table[..., i] for i in range(4))
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        pod = h / (h + m)
        fa = f / (f + r)
        s = (h + m) / (h + m + f + r)
        formulas = {
            "csi": lambda: h / (h + m + f),
            "pod": lambda: pod,
            "far": lambda: f / (h + f),
            "bias": lambda: (h + f) / (h + m),
            "hss": lambda: 2 * (h * r - f * m) / ((h + m) * (m + r) + (h + f) * (f + r)),
            "ets": lambda: (pod - fa) / ((1 - s * pod) / (1 - s) + fa * (1 - s) / s),
        }
        for name in scores:
            out[name] = formulas[name]()
    return out


@register_metric("categorical")
class Categorical(Metric):
    """CSI, POD, FAR, frequency bias, HSS and ETS per lead time and threshold.

    Parameters
    ----------
    thresholds
        Rain-rate thresholds in mm/h.
    scores
        Which of :data:`CATEGORICAL_SCORES` to report.
    ensemble
        ``"members"`` (table summed over members) or ``"mean"`` (the ensemble mean).
    """

    def __init__(
        self,
        thresholds: Sequence[float] = (0.5, 1, 2, 4, 8, 16),
        scores: Sequence[str] = CATEGORICAL_SCORES,
        ensemble: str = "members",
    ) -> None:
        self.thresholds = as_thresholds(thresholds)
        self.score_names = tuple(scores)
        categorical_scores(np.zeros(4), self.score_names)  # validates the names
        if ensemble not in ("members", "mean"):
            raise VerificationError(f"ensemble must be 'members' or 'mean', got {ensemble!r}")
        self.ensemble = ensemble

    def settings(self) -> dict[str, Any]:
        """Thresholds, scores and ensemble treatment."""
        return {
            "thresholds": self.thresholds.tolist(),
            "scores": list(self.score_names),
            "ensemble": self.ensemble,
        }

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """``table``: ``(lead, threshold, 4)`` contingency counts."""
        forecast = pair.forecast if self.ensemble == "members" else pair.ensemble_mean[None]
        return {"table": contingency_table(forecast, pair.observation, self.thresholds)}

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """Each score at each threshold: ``(..., lead)``."""
        values = categorical_scores(stats["table"], self.score_names)
        return {
            (name, float(t), 1, "none"): values[name][..., k]
            for name in self.score_names
            for k, t in enumerate(self.thresholds)
        }
