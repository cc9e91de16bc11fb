"""The accumulator of scores over cases: :class:`Scorer` (no I/O) and its :class:`ScoreResult`.

Cases are added per model and lead time (``add_case``); :meth:`Scorer.result` turns the summed
statistics into the tidy tables, with bootstrap confidence intervals over cases.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geogen.verification.bootstrap import bootstrap_draws, confidence_interval
from geogen.verification.interface import (
    Metric,
    MetricState,
    Pair,
    ScoreKey,
    VerificationError,
)
from geogen.verification.settings import (
    DIAGRAM_COLUMNS,
    SCORE_COLUMNS,
    ScoringSettings,
    validate_settings,
)

log = logging.getLogger(__name__)


@dataclass
class Example:
    """Fields of one case kept for plots: observation and a few members per model (mm/h)."""

    case: str
    lead_minutes: list[int] = field(default_factory=list)
    observation: list[np.ndarray] = field(default_factory=list)
    members: dict[str, list[np.ndarray]] = field(default_factory=dict)
    mean: dict[str, list[np.ndarray]] = field(default_factory=dict)
    pixel_size_km: float | None = None


@dataclass
class ScoreResult:
    """Tidy scores and diagrams, the example case and what was scored.

    ``states`` holds each ``(model, lead, metric)``'s per-case statistics (cases in the
    order of ``metadata["cases"]``) and ``metrics`` the metric objects, for resampling
    (:mod:`geogen.verification.paired`).
    """

    scores: pd.DataFrame
    diagrams: pd.DataFrame
    lead_means: pd.DataFrame
    example: Example | None
    metadata: dict[str, Any]
    states: dict[tuple[str, int, str], MetricState] = field(default_factory=dict, repr=False)
    metrics: dict[str, Metric] = field(default_factory=dict, repr=False)

    def to_dataset(self) -> xr.Dataset:
        """The scores as a Dataset over model, lead time, threshold, scale (with intervals)."""
        return scores_to_dataset(self.scores, model_dim=True, intervals=True)


class Scorer:
    """Accumulate cases per model and lead time; produce tidy tables.

    Parameters
    ----------
    settings
        Scoring settings (a mapping or :class:`ScoringSettings`).
    example_case
        Id of the case whose fields are kept for plots (default: the first case added).
    plot_members
        Members kept per model for plots.
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | ScoringSettings | None = None,
        *,
        example_case: str | None = None,
        plot_members: int = 3,
    ) -> None:
        self.settings = validate_settings(settings)
        self.metrics = self.settings.build_metrics()
        self.states: dict[tuple[str, int, str], MetricState] = {}
        self.counts: dict[tuple[str, int], dict[str, float]] = {}
        self.members: dict[str, int] = {}
        self.case_ids: list[str] = []
        self.example_case = example_case
        self.plot_members = plot_members
        self.example: Example | None = None
        self.pixel_size_km: float | None = None

    # -- adding cases -----------------------------------------------------------------------
    def add_case(
        self,
        case: str,
        forecasts: Mapping[str, np.ndarray],
        observation: np.ndarray,
        lead_minutes: Sequence[int],
        *,
        weight: float = 1.0,
    ) -> None:
        """Score the forecasts of every model for one case (or some lead times of it).

        Parameters
        ----------
        case
            Case id (issue time and region, or the crop index).
        forecasts
            Model name -> ``(member, lead, y, x)`` mm/h.
        observation
            ``(lead, y, x)`` mm/h (NaN: not scored).
        lead_minutes
            Lead time of each lead index, minutes.
        weight
            Importance weight of the case (``1 / sample_prob``).
        """
        observation = np.asarray(observation, dtype=np.float32)
        leads = [int(m) for m in lead_minutes]
        if observation.ndim != 3 or observation.shape[0] != len(leads):
            raise VerificationError(
                f"case {case}: observation must be (lead, y, x) with {len(leads)} leads, "
                f"got {observation.shape}"
            )
        arrays: dict[str, np.ndarray] = {}
        for model, values in forecasts.items():
            values = np.asarray(values, dtype=np.float32)
            if values.ndim != 4 or values.shape[1:] != observation.shape:
                raise VerificationError(
                    f"case {case}: forecast of {model} has shape {values.shape}, expected "
                    f"(member, {', '.join(str(s) for s in observation.shape)})"
                )
            if values.shape[0] > 1 and members_identical(values):
                values = values[:1]  # deterministic: score it as one member
            arrays[model] = values
        if case not in self.case_ids:
            self.case_ids.append(case)
        observed = np.isfinite(observation)
        common = observed.copy()
        for model, values in arrays.items():
            missing = observed & ~np.isfinite(values).all(axis=0)
            n_missing = int(missing.sum())
            if n_missing:
                if self.settings.forecast_nan == "raise":
                    first = leads[int(np.argmax(missing.any(axis=(1, 2))))]
                    raise VerificationError(
                        f"case {case}: the {model} forecast is NaN at {n_missing} pixels where "
                        f"the observation is valid (first at lead {first} min); set "
                        "scoring.forecast_nan=exclude to leave them out for every model"
                    )
                log.warning(
                    "case %s: %s forecast is NaN at %d pixels (%.1f%%) where the observation "
                    "is valid; they are excluded for every model of the case",
                    case,
                    model,
                    n_missing,
                    100.0 * n_missing / max(int(observed.sum()), 1),
                )
            common &= ~missing
        self._keep_example(case, arrays, observation, leads)
        for index, lead in enumerate(leads):
            if not observed[index].any():
                log.warning("case %s: no observation at lead %d min; not scored", case, lead)
                continue
            obs = np.where(common[index], observation[index], np.nan)[None]
            for model, values in arrays.items():
                pair = Pair(values[:, index : index + 1], obs)
                self._accumulate(case, model, lead, pair, weight)
                counter = self.counts.setdefault(
                    (model, lead), {"scored_pixels": 0.0, "excluded_pixels": 0.0}
                )
                counter["scored_pixels"] += float(common[index].sum())
                counter["excluded_pixels"] += float((observed[index] & ~common[index]).sum())

    def _accumulate(self, case: str, model: str, lead: int, pair: Pair, weight: float) -> None:
        members = self.members.setdefault(model, pair.members)
        if members != pair.members:
            raise VerificationError(
                f"case {case}: {model} has {pair.members} members, other cases {members}; "
                "score ensembles of one size per model"
            )
        index = self.case_ids.index(case)
        for name, metric in self.metrics.items():
            rng = None
            if metric.random:
                rng = np.random.default_rng([self.settings.seed, index, lead])
            state = self.states.setdefault((model, lead, name), metric.init())
            metric.accum(state, pair, weight=weight, rng=rng)

    def _keep_example(
        self,
        case: str,
        arrays: Mapping[str, np.ndarray],
        observation: np.ndarray,
        leads: list[int],
    ) -> None:
        if self.example_case is None:
            self.example_case = case
        if case != self.example_case:
            return
        if self.example is None:
            self.example = Example(case=case, pixel_size_km=self.pixel_size_km)
        ex = self.example
        new = [i for i, lead in enumerate(leads) if lead not in ex.lead_minutes]
        if not new:  # the same leads again: more models of the case
            new_models = [m for m in arrays if m not in ex.members]
            for model in new_models:
                ex.members[model] = list(arrays[model][: self.plot_members].swapaxes(0, 1))
                ex.mean[model] = list(arrays[model].mean(axis=0))
            return
        for i in new:
            ex.lead_minutes.append(leads[i])
            ex.observation.append(observation[i])
            for model, values in arrays.items():
                ex.members.setdefault(model, []).append(values[: self.plot_members, i])
                ex.mean.setdefault(model, []).append(values[:, i].mean(axis=0))

    # -- results ----------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        """Models scored so far, in the order they came."""
        return list(dict.fromkeys(model for model, _, _ in self.states))

    def result(self, metadata: Mapping[str, Any] | None = None) -> ScoreResult:
        """Tidy scores (with bootstrap intervals), diagrams and lead-averaged scores.

        Undefined scores (no event at a threshold, no scored pixel) are NaN.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN means and percentiles
            return self._result(metadata)

    def _result(self, metadata: Mapping[str, Any] | None) -> ScoreResult:
        boot = self.settings.bootstrap
        for metric in self.metrics.values():  # grid-aware metrics (spectral_bands): km per pixel
            if getattr(metric, "pixel_km", False) is None and self.pixel_size_km:
                metric.pixel_km = float(self.pixel_size_km)
        rows: list[dict[str, Any]] = []
        curves: list[dict[str, Any]] = []
        draws_by_key: dict[tuple[str, ScoreKey], dict[int, np.ndarray]] = {}
        values_by_key: dict[tuple[str, ScoreKey], dict[int, float]] = {}
        for (model, lead, name), state in sorted(self.states.items(), key=_state_order):
            metric = self.metrics[name]
            values = metric.compute(state)
            draws: dict[ScoreKey, np.ndarray] = {}
            if boot.n > 0 and state.n_cases >= 2:
                draws = bootstrap_draws(metric, state, boot.n, boot.seed)
            draws = {_canonical(k): v for k, v in draws.items()}
            for key, value in ((_canonical(k), v) for k, v in values.items()):
                low = high = np.nan
                if key in draws:
                    low, high = (
                        float(v[0]) for v in confidence_interval(draws[key], boot.confidence)
                    )
                    draws_by_key.setdefault((model, key), {})[lead] = draws[key][:, 0]
                values_by_key.setdefault((model, key), {})[lead] = float(value[0])
                rows.append(_row(model, lead, key, float(value[0]), low, high, state.n_cases))
            for diagram in metric.compute_diagrams(state):
                for j in range(diagram.x.shape[-1]):
                    curves.append(
                        {
                            "model": model,
                            "lead_time": lead,
                            "diagram": diagram.diagram,
                            "threshold": diagram.threshold,
                            "x": float(diagram.x[0, j]),
                            "y": float(diagram.y[0, j]),
                            "count": float(diagram.count[0, j])
                            if diagram.count is not None
                            else np.nan,
                        }
                    )
        for (model, lead), counter in sorted(self.counts.items()):
            n = self._n_cases(model, lead)
            for name, value in counter.items():
                rows.append(_row(model, lead, (name, np.nan, 1, "none"), value, np.nan, np.nan, n))
        scores = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
        diagrams = pd.DataFrame(curves, columns=list(DIAGRAM_COLUMNS))
        lead_means = _lead_means(values_by_key, draws_by_key, boot.confidence)
        meta = {
            "models": self.models,
            "cases": list(self.case_ids),
            "members": dict(self.members),
            "settings": self.settings.model_dump(),
            "metric_settings": {name: m.settings() for name, m in self.metrics.items()},
            "pixel_size_km": self.pixel_size_km,
            **dict(metadata or {}),
        }
        return ScoreResult(
            scores, diagrams, lead_means, self.example, meta, dict(self.states), dict(self.metrics)
        )

    def _n_cases(self, model: str, lead: int) -> int:
        for (m, lead_, _), state in self.states.items():
            if m == model and lead_ == lead:
                return state.n_cases
        return 0


def _canonical(key: ScoreKey) -> ScoreKey:
    """The key with a NaN threshold as one shared object (NaN keys are otherwise distinct)."""
    metric, threshold, scale, pooling = key
    return (metric, _NAN if np.isnan(threshold) else float(threshold), int(scale), pooling)


_NAN = float("nan")


def _state_order(item: tuple[tuple[str, int, str], MetricState]) -> tuple[int, str, str]:
    (model, lead, name), _ = item
    return (lead, model, name)


def _row(
    model: str, lead: int, key: ScoreKey, value: float, low: float, high: float, n: int
) -> dict[str, Any]:
    metric, threshold, scale, pooling = key
    return {
        "model": model,
        "lead_time": int(lead),
        "metric": metric,
        "threshold": float(threshold),
        "scale": int(scale),
        "pooling": pooling,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n_cases": int(n),
    }


def _lead_means(
    values: Mapping[tuple[str, ScoreKey], Mapping[int, float]],
    draws: Mapping[tuple[str, ScoreKey], Mapping[int, np.ndarray]],
    confidence: float,
) -> pd.DataFrame:
    """Scores averaged over lead times, with intervals from the same (paired) resamples."""
    rows = []
    for (model, key), by_lead in values.items():
        mean = float(np.nanmean(list(by_lead.values()))) if by_lead else np.nan
        low = high = np.nan
        lead_draws = draws.get((model, key), {})
        if lead_draws and len(lead_draws) == len(by_lead):
            sizes = {len(d) for d in lead_draws.values()}
            if len(sizes) == 1:
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples
                    stacked = np.nanmean(np.stack(list(lead_draws.values())), axis=0)
                low, high = (float(v[0]) for v in confidence_interval(stacked[:, None], confidence))
        rows.append(_row(model, -1, key, mean, low, high, 0) | {"lead_time": "mean"})
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def members_identical(values: np.ndarray) -> bool:
    """Whether every member along the first axis equals the first (NaN equal to NaN)."""
    first = values[0]
    return all(np.array_equal(first, values[m], equal_nan=True) for m in range(1, values.shape[0]))


def scores_to_dataset(
    scores: pd.DataFrame, *, model_dim: bool = True, intervals: bool = True
) -> xr.Dataset:
    """A tidy score table (one row per model, lead, metric, threshold, scale, pooling) as a Dataset.

    Parameters
    ----------
    scores
        ``ScoreResult.scores`` (lead times in minutes).
    model_dim
        Keep a ``model`` dimension (needed when the table has several models).
    intervals
        Add ``<name>_ci_low`` / ``<name>_ci_high`` (the bootstrap interval) beside each score.
    """
    if not model_dim and scores["model"].nunique() > 1:
        raise VerificationError("scores of several models need model_dim=True")
    variables: dict[str, xr.DataArray] = {}
    columns = [("value", "")] + ([("ci_low", "_ci_low"), ("ci_high", "_ci_high")] * intervals)
    for (metric, pooling), rows in scores.groupby(["metric", "pooling"], sort=False):
        name = metric if pooling == "none" else f"{metric}_{pooling}_pool"
        dims = ["model"] if model_dim else []
        dims.append("lead_time")
        if rows["threshold"].notna().any():
            dims.append("threshold")
        if metric == "fss" or pooling != "none" or set(rows["scale"]) != {1}:
            dims.append("scale")
        table = rows.assign(
            lead_time=pd.to_timedelta(rows["lead_time"].astype(np.int64), unit="min")
        ).set_index(dims)
        for column, suffix in columns:
            variables[name + suffix] = table[column].astype(np.float64).to_xarray()
    ds = xr.Dataset(variables)
    ds["lead_time"].attrs.update({"standard_name": "forecast_period"})
    if "threshold" in ds.coords:
        ds["threshold"].attrs.update({"units": "mm/h", "long_name": "rain-rate threshold"})
    if "scale" in ds.coords:
        ds["scale"].attrs.update({"units": "pixels", "long_name": "spatial scale"})
    ds.attrs["description"] = (
        "geogen scores: one variable per metric (pooled scores as <metric>_<pooling>_pool)"
    )
    return ds
