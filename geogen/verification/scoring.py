"""Scoring forecasts over cases, into tidy tables.

Forecast files are scored against archive observations; models are scored over the test
cases of a crop store (or on the cases of the files).

- :class:`Scorer` accumulates cases (``add_case``) per model and lead time and produces the
  tidy tables (:meth:`Scorer.result`); it holds no I/O.
- :func:`score_files`: forecast files (any region, deterministic or ensemble) against the
  observations read from the same archive at the same grid cells; models given by name are
  run on the same cases.
- :func:`score_store`: models run on the context frames of each crop of a store split and
  scored against its lead frames, each case weighted by ``1 / sample_prob``.

Conventions (see the README):

- A pixel is scored where the observation is finite and every forecast of the case is
  finite: models scored together are compared on the same pixels. NaN in the observation
  (outside the radar domain, missing frames) is not scored and is counted. NaN in a forecast
  where the observation is valid (pixels advected in from outside the grid by extrapolation)
  is excluded for every model of the case with a warning (``forecast_nan: exclude``, the
  default), or an error (``forecast_nan: raise``).
- A forecast whose members are all identical (a deterministic method) is scored as one member.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geogen.verification.bootstrap import bootstrap_draws, confidence_interval
from geogen.verification.interface import (
    Metric,
    MetricState,
    Pair,
    ScoreKey,
    VerificationError,
    available_metrics,
    get_metric,
)

log = logging.getLogger(__name__)

SCORE_COLUMNS = (
    "model",
    "lead_time",
    "metric",
    "threshold",
    "scale",
    "pooling",
    "value",
    "ci_low",
    "ci_high",
    "n_cases",
)
DIAGRAM_COLUMNS = ("model", "lead_time", "diagram", "threshold", "x", "y", "count")


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CrpsSettings(_Strict):
    """Pooled CRPS: window widths (pixels), pooling modes, stride (default: the width)."""

    windows: list[int] = Field(default_factory=lambda: [4, 16])
    pooling: list[Literal["avg", "max"]] = Field(default_factory=lambda: ["avg", "max"])
    stride: int | None = Field(default=None, ge=1)


class RankHistogramSettings(_Strict):
    """Rank histogram: rain rate below which values tie (pysteps' ``X_min``)."""

    x_min: float | None = 0.1


class ReliabilitySettings(_Strict):
    """Reliability diagram bins."""

    n_bins: int = Field(default=10, ge=1)
    min_count: int = Field(default=10, ge=0)


class BootstrapSettings(_Strict):
    """Bootstrap over cases: resamples (0 disables), confidence level, seed."""

    n: int = Field(default=1000, ge=0)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    seed: int = 0


class PaperSettings(_Strict):
    """The ``paper`` metric (Leinonen et al. 2020 units): image tile and MS-SSIM window."""

    tile: int = Field(default=128, ge=2)
    sigma: float = Field(default=1.5, gt=0)


class ScoringSettings(_Strict):
    """What to score and how (``conf/scoring/default.yaml``)."""

    metrics: list[str] = Field(
        default_factory=lambda: [
            "categorical",
            "fss",
            "crps",
            "rank_histogram",
            "reliability",
            "spread_skill",
            "continuous",
            "rapsd",
        ]
    )
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 1, 2, 4, 8, 16])
    fss_scales: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    ensemble: Literal["members", "mean"] = "members"
    crps: CrpsSettings = Field(default_factory=CrpsSettings)
    rank_histogram: RankHistogramSettings = Field(default_factory=RankHistogramSettings)
    reliability: ReliabilitySettings = Field(default_factory=ReliabilitySettings)
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings)
    paper: PaperSettings = Field(default_factory=PaperSettings)
    forecast_nan: Literal["exclude", "raise"] = "exclude"
    seed: int = 0

    def build_metrics(self) -> dict[str, Metric]:
        """The configured metrics, by name."""
        valid = available_metrics()
        unknown = [m for m in self.metrics if m not in valid]
        if unknown:
            raise VerificationError(
                f"unknown metrics {unknown} in scoring.metrics; valid metrics: {', '.join(valid)}"
            )
        settings: dict[str, dict[str, Any]] = {
            "categorical": {"thresholds": self.thresholds, "ensemble": self.ensemble},
            "fss": {
                "thresholds": self.thresholds,
                "scales": self.fss_scales,
                "ensemble": self.ensemble,
            },
            "crps": self.crps.model_dump(),
            "rank_histogram": self.rank_histogram.model_dump(),
            "reliability": {"thresholds": self.thresholds, **self.reliability.model_dump()},
            "paper": self.paper.model_dump(),
        }
        return {name: get_metric(name, **settings.get(name, {})) for name in self.metrics}


def validate_settings(settings: Mapping[str, Any] | ScoringSettings | None) -> ScoringSettings:
    """Validate scoring settings (errors name the bad keys)."""
    if isinstance(settings, ScoringSettings):
        return settings
    try:
        return ScoringSettings(**dict(settings or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"scoring.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise VerificationError(f"invalid scoring settings: {problems}") from None


# ---------------------------------------------------------------------------------------------
# the accumulator
# ---------------------------------------------------------------------------------------------
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
    """Tidy scores and diagrams, the example case and what was scored."""

    scores: pd.DataFrame
    diagrams: pd.DataFrame
    lead_means: pd.DataFrame
    example: Example | None
    metadata: dict[str, Any]


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
            if values.shape[0] > 1 and _members_identical(values):
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
        return ScoreResult(scores, diagrams, lead_means, self.example, meta)

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


def _members_identical(values: np.ndarray) -> bool:
    first = values[0]
    return all(np.array_equal(first, values[m], equal_nan=True) for m in range(1, values.shape[0]))


# ---------------------------------------------------------------------------------------------
# forecast files against the archive
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """A forecaster to run on each case: registered name, keyword arguments, and its label.

    ``label`` names the model's rows in the scores (default: ``name``), so one forecaster
    can be scored twice, e.g. two checkpoints of ``dgmr_advect``.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def display(self) -> str:
        """The name of the model's rows in the scores."""
        return self.label or self.name

    def build(self) -> Any:
        """The :class:`~geogen.forecasting.Forecaster`."""
        from geogen.forecasting import get_forecaster

        return get_forecaster(self.name, **self.kwargs)


def region_in_grid(forecast: Any, grid: Any, label: str, source: str) -> list[int]:
    """``[y0, x0, height, width]`` of a forecast's cells in a source grid.

    Raises
    ------
    VerificationError
        When the forecast has no ``x``/``y`` coordinates or they do not fall on the grid.
    """
    for name in ("x", "y"):
        if name not in forecast.coords:
            raise VerificationError(
                f"{label} has no {name} coordinate: cannot find its cells in the {source} grid"
            )
    offsets = []
    for name, axis in (("y", np.asarray(grid.y)), ("x", np.asarray(grid.x))):
        coords = np.asarray(forecast[name].values, dtype=np.float64)
        step = abs(float(axis[1] - axis[0])) if len(axis) > 1 else 1.0
        tol = 1e-3 * step
        start = int(np.argmin(np.abs(axis - coords[0])))
        stop = start + len(coords)
        if (
            abs(axis[start] - coords[0]) > tol
            or stop > len(axis)
            or not np.allclose(axis[start:stop], coords, rtol=0, atol=tol)
        ):
            raise VerificationError(
                f"{label}: its {name} coordinates ({coords[0]:g} .. {coords[-1]:g}, "
                f"{len(coords)} cells) do not fall on the {source} grid ({name} from "
                f"{axis[0]:g} every {axis[1] - axis[0]:g} {grid.units}, {len(axis)} cells): "
                "forecast and observations must share a grid"
            )
        offsets.append(start)
    return [offsets[0], offsets[1], forecast.sizes["y"], forecast.sizes["x"]]


def _check_crs(forecast: Any, grid: Any, label: str, source: str) -> None:
    if "crs" not in forecast.coords:
        return
    import pyproj

    attrs = forecast["crs"].attrs
    text = attrs.get("crs_wkt") or attrs.get("proj4")
    if not text:
        return
    try:
        same = pyproj.CRS.from_user_input(text) == pyproj.CRS.from_user_input(grid.crs)
    except pyproj.exceptions.CRSError:
        return
    if not same:
        raise VerificationError(
            f"{label} is in another projection than the {source} archive "
            f"({attrs.get('proj4', '?')} vs {grid.crs}): forecast and observations must "
            "share a grid"
        )


def _valid_times(forecast: Any, label: str, step_minutes: float) -> tuple[pd.Timestamp, list]:
    if "issue_time" not in forecast.coords:
        raise VerificationError(f"{label} has no issue_time coordinate")
    issue = pd.Timestamp(forecast["issue_time"].values)
    lead = pd.to_timedelta(forecast["lead_time"].values)
    valid = [issue + d for d in lead]
    if "time" in forecast.coords:
        stored = pd.DatetimeIndex(np.atleast_1d(forecast["time"].values))
        if len(stored) == len(valid) and not (stored == pd.DatetimeIndex(valid)).all():
            raise VerificationError(
                f"{label}: its time coordinate does not equal issue_time + lead_time"
            )
    step = pd.Timedelta(minutes=step_minutes)
    off_grid = [t for t in valid if (t - issue) % step != pd.Timedelta(0)]
    if off_grid:
        raise VerificationError(
            f"{label}: valid time {off_grid[0]} is not a multiple of the archive's "
            f"{step_minutes:g}-minute step after the issue time {issue}: forecast and "
            "observation times must match"
        )
    return issue, valid


def _open(path: str | os.PathLike) -> Any:
    from geogen.forecasting import ForecastError, open_forecast

    try:
        return open_forecast(path)
    except ForecastError as exc:
        raise VerificationError(str(exc)) from None


def expand_paths(patterns: Iterable[str | os.PathLike]) -> list[Path]:
    """Forecast files from paths and glob patterns (sorted, without duplicates)."""
    import glob

    out: list[Path] = []
    for pattern in patterns:
        text = os.fspath(pattern)
        matches = sorted(glob.glob(text)) if any(c in text for c in "*?[") else [text]
        if not matches:
            raise VerificationError(f"no forecast file matches {text!r}")
        out.extend(Path(m) for m in matches)
    return list(dict.fromkeys(out))


def _model_name(forecast: Any, path: Path) -> str:
    return str(forecast.attrs.get("model") or path.stem)


def score_files(
    paths: Iterable[str | os.PathLike],
    source: Mapping[str, Any] | str,
    *,
    settings: Mapping[str, Any] | ScoringSettings | None = None,
    models: Sequence[ModelSpec] = (),
    members: int = 20,
    seed: int = 0,
    cases: Sequence[tuple[Any, Sequence[int] | None, int]] = (),
    margin: int = 0,
    progress: bool = False,
    plot_members: int = 3,
) -> ScoreResult:
    """Score forecast files (and models run on the same cases) against archive observations.

    Parameters
    ----------
    paths
        Forecast files (``.nc``/``.zarr`` from ``geogen-forecast`` or any file with the same
        layout: ``precip (member, lead_time, y, x)`` in mm/h, ``issue_time``, ``x``/``y`` in
        the source projection).
    source
        The archive the observations come from (a source config or a shipped name).
    settings
        Scoring settings.
    models
        Forecasters run on every case (the issue time and region of each file, and
        ``cases``), with ``members`` members and seed ``seed``.
    cases
        Extra cases ``(issue_time, region or None, leads)`` for ``models``.
    margin
        Models forecast a region from a context this many pixels wider on each side.
    progress
        Show a progress bar.

    Returns
    -------
    ScoreResult
    """
    from geogen.forecasting import (
        ForecastError,
        expand_region,
        forecast,
        read_context,
        read_frames,
    )
    from geogen.io import SourceError, load_source

    scorer = Scorer(settings, plot_members=plot_members)
    files = expand_paths(paths)
    if not files and not (models and cases):
        raise VerificationError("nothing to score: give forecast files, or models and cases")
    opened = []
    for path in files:
        fc = _open(path)
        opened.append((path, fc))
    grouped: dict[tuple[pd.Timestamp, tuple[int, ...] | None], dict[str, Any]] = {}
    src_cfg = _source_dict(source)
    step_minutes = float(src_cfg["timestep"])
    grid_cache: dict[pd.Timestamp, Any] = {}

    def grid_for(issue: pd.Timestamp) -> Any:
        if issue not in grid_cache:
            try:
                grid_cache[issue] = load_source(src_cfg, issue, issue).grid
            except (SourceError, FileNotFoundError) as exc:
                raise VerificationError(
                    f"cannot read the {src_cfg['name']} archive at {issue}: {exc}"
                ) from None
        return grid_cache[issue]

    names: dict[str, Path] = {}
    for path, fc in opened:
        label = str(path)
        issue, _ = _valid_times(fc, label, step_minutes)
        grid = grid_for(issue)
        _check_crs(fc, grid, label, src_cfg["name"])
        region = tuple(region_in_grid(fc, grid, label, src_cfg["name"]))
        name = _model_name(fc, path)
        if name in grouped.get((issue, region), {}):
            name = f"{name}:{path.stem}"
        names[name] = path
        grouped.setdefault((issue, region), {})[name] = fc
    for issue_time, region, leads in cases:
        key = (pd.Timestamp(issue_time), tuple(int(v) for v in region) if region else None)
        grouped.setdefault(key, {}).setdefault("__leads__", int(leads))
    if scorer.pixel_size_km is None and opened:
        from geogen.forecasting.api import grid_spacing_km

        scorer.pixel_size_km = grid_spacing_km(opened[0][1])
    clash = sorted({spec.display for spec in models} & set(names))
    if clash:
        raise VerificationError(
            f"{clash} name both a forecast file and a model run on its cases; give the model "
            "a label (ModelSpec(..., label=...)) so neither replaces the other"
        )
    built = [(spec, spec.build()) for spec in models]
    items = sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] or ()))
    iterator = _progress(items, progress, "cases")
    for (issue, region), entries in iterator:
        region_list = list(region) if region else None
        n_leads = max(
            [fc.sizes["lead_time"] for k, fc in entries.items() if k != "__leads__"]
            + [entries.get("__leads__", 0)]
        )
        if n_leads == 0:
            continue
        in_memory: dict[str, Any] = {k: v for k, v in entries.items() if k != "__leads__"}
        for spec, model in built:
            try:
                wide, crop = expand_region(region_list, margin, grid_for(issue).shape)
                context = read_context(src_cfg, issue, model.n_context, region=wide)
                run = forecast(model, context, members=members, leads=n_leads, seed=seed)
                run = run.isel(y=crop[0], x=crop[1])
            except (ForecastError, SourceError) as exc:
                raise VerificationError(f"{spec.name} at {issue}: {exc}") from None
            in_memory[spec.display] = run
            if scorer.pixel_size_km is None:
                from geogen.forecasting.api import grid_spacing_km

                scorer.pixel_size_km = grid_spacing_km(context)
        lead_list = sorted({m for fc in in_memory.values() for m in _lead_minutes(fc)})
        first, last = (issue + pd.Timedelta(minutes=m) for m in (lead_list[0], lead_list[-1]))
        try:
            obs_da = read_frames(src_cfg, first, last, region=region_list, require_all=False)
        except (ForecastError, SourceError) as exc:
            raise VerificationError(f"observations for {issue}: {exc}") from None
        case = f"{issue:%Y-%m-%dT%H:%M}" + (f" region {list(region)}" if region else "")
        obs_times = pd.DatetimeIndex(obs_da["time"].values)
        for lead in lead_list:
            valid_time = issue + pd.Timedelta(minutes=lead)
            if valid_time in obs_times:
                obs = np.asarray(obs_da.sel(time=valid_time).values, dtype=np.float32)
            else:
                log.warning("%s: no observation at %s (lead %d min)", case, valid_time, lead)
                continue
            slices = {}
            for name, fc in in_memory.items():
                leads_fc = _lead_minutes(fc)
                if lead not in leads_fc:
                    continue
                values = np.asarray(
                    fc.isel(lead_time=leads_fc.index(lead)).values, dtype=np.float32
                )
                if values.shape[-2:] != obs.shape:
                    raise VerificationError(
                        f"{name}: forecast grid {values.shape[-2:]} differs from the "
                        f"observation {obs.shape} for {case}"
                    )
                slices[name] = values[:, None]
            if slices:
                scorer.add_case(case, slices, obs[None], [lead])
    if not scorer.states:
        raise VerificationError(
            "nothing was scored: no observation of the archive at the forecasts' valid times "
            f"(source {src_cfg.get('name')}, root {src_cfg.get('root')})"
        )
    meta = {
        "mode": "files",
        "source": src_cfg.get("name"),
        "files": {name: str(path) for name, path in names.items()},
        "reference_models": [spec.display for spec in models],
        "weights": "equal (1 per case)",
    }
    return scorer.result(meta)


def _lead_minutes(fc: Any) -> list[int]:
    from geogen.forecasting import lead_minutes

    return [int(v) for v in lead_minutes(fc)]


def _source_dict(source: Mapping[str, Any] | str) -> dict[str, Any]:
    from geogen.config import load_source_config, to_plain

    if isinstance(source, str):
        return load_source_config(source)
    return to_plain(source)


def _progress(items: Sequence[Any], show: bool, unit: str) -> Iterable[Any]:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, unit=unit, desc="scoring")


# ---------------------------------------------------------------------------------------------
# a crop store: models over the test cases
# ---------------------------------------------------------------------------------------------
def open_store_cases(
    store: str,
    split: str,
    *,
    task: str,
    wrong_task: str,
    noun: str,
    max_cases: int | None,
    seed: int,
) -> tuple[Any, Any, np.ndarray, int]:
    """Open a crop store and the sample indices of ``split`` to score.

    Returns the zarr group, its :class:`~geogen.io.store.StoreInfo`, the indices (a seeded,
    sorted subset of ``max_cases`` when given) and the number of samples in the split.

    Raises
    ------
    VerificationError
        When the store cannot be read, is not a ``task`` store (``wrong_task`` says what is
        needed) or has no sample in ``split``.
    """
    from geogen.io import StoreError, open_crop_store, split_indices, store_info

    try:
        group = open_crop_store(store)
        info = store_info(group)
        indices = split_indices(group, split)
    except StoreError as exc:
        raise VerificationError(str(exc)) from None
    if info.task != task:
        raise VerificationError(f"{store} is a {info.task} store; {wrong_task}")
    if len(indices) == 0:
        raise VerificationError(f"{store} has no {split} {noun} ({info.split_counts})")
    available = len(indices)
    if max_cases is not None and max_cases < len(indices):
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(indices, size=max_cases, replace=False))
    return group, info, indices, available


def score_store(
    store: str | os.PathLike,
    models: Sequence[ModelSpec],
    *,
    split: str | None = "test",
    settings: Mapping[str, Any] | ScoringSettings | None = None,
    members: int = 20,
    max_cases: int | None = None,
    seed: int = 0,
    weights: Literal["sample_prob", "none"] = "sample_prob",
    progress: bool = False,
    plot_members: int = 3,
) -> ScoreResult:
    """Run ``models`` on every case of a crop-store split and score them.

    Each crop's context frames (time <= 0, mm/h) are the input, its lead frames the
    observation; the case weight is ``1 / sample_prob`` (DGMR importance sampling) unless
    ``weights="none"``.

    Parameters
    ----------
    store
        A nowcast crop store (``geogen-prepare``).
    models
        Forecasters to run (``persistence``, ``pysteps_steps``, a learned model with ``ckpt``).
    split
        ``train``, ``val``, ``test`` or ``None`` (all).
    members
        Ensemble size of stochastic models (deterministic ones are run with one member).
    max_cases
        Score a seeded random subset of this many cases (all when ``None``).
    seed
        Seed of the subset and of the forecasts (case ``i`` uses ``seed + i``).
    """
    from geogen.forecasting import ForecastError

    if not models:
        raise VerificationError("score_store needs models to run (models=[persistence, ...])")
    group, info, indices, available = open_store_cases(
        store,
        split,
        task="nowcast",
        wrong_task="scoring needs a nowcast store",
        noun="cases",
        max_cases=max_cases,
        seed=seed,
    )
    offsets = np.asarray(group["time"][:], dtype=np.int64)
    context_index = np.flatnonzero(offsets <= 0)
    lead_index = np.flatnonzero(offsets > 0)
    lead_minutes = offsets[lead_index].tolist()
    sample_prob = np.asarray(group["sample_prob"][:], dtype=np.float64)
    rain = np.asarray(group["rain_fraction"][:], dtype=np.float64)
    t0 = np.asarray(group["t0"][:])
    grid = info.attrs.get("grid", {})
    pixel_km = None
    if grid.get("units", "m") in ("m", "metre", "meter", "km") and grid.get("dx"):
        pixel_km = abs(float(grid["dx"])) * (1.0 if grid.get("units") == "km" else 1e-3)
    built = []
    for spec in models:
        try:
            model = spec.build()
        except ForecastError as exc:
            raise VerificationError(str(exc)) from None
        if model.n_context > len(context_index):
            raise VerificationError(
                f"{spec.name} needs {model.n_context} context frames; the store has "
                f"{len(context_index)} (rebuild it with sequence.context={model.n_context})"
            )
        if model.timestep_minutes is not None and not np.isclose(
            model.timestep_minutes, info.timestep_minutes
        ):
            raise VerificationError(
                f"{spec.name} works on {model.timestep_minutes:g}-minute steps; the store has "
                f"{info.timestep_minutes:g}-minute steps"
            )
        model.set_grid_spacing(pixel_km)
        built.append((spec, model))
    example = int(indices[np.nanargmax(np.nan_to_num(rain[indices], nan=-1.0))])
    scorer = Scorer(settings, example_case=_case_id(example, t0), plot_members=plot_members)
    scorer.pixel_size_km = pixel_km
    data = group[info.variable]
    for i in _progress(list(indices), progress, "crops"):
        i = int(i)
        frames = np.asarray(data[i], dtype=np.float32)
        context = frames[context_index]
        observation = frames[lead_index]
        forecasts = {}
        for spec, model in built:
            n = members if model.stochastic else 1
            try:
                forecasts[spec.display] = model.predict(
                    context[-model.n_context :],
                    leads=len(lead_index),
                    members=n,
                    seed=seed + i,
                    timestep_minutes=info.timestep_minutes,
                )
            except ForecastError as exc:
                raise VerificationError(f"{spec.display} on crop {i}: {exc}") from None
        p = sample_prob[i]
        weight = 1.0 / p if weights == "sample_prob" else 1.0
        if weights == "sample_prob" and not (np.isfinite(p) and p > 0):
            raise VerificationError(f"crop {i} has sample_prob {p}: cannot weight it")
        scorer.add_case(_case_id(i, t0), forecasts, observation, lead_minutes, weight=weight)
    meta = {
        "mode": "store",
        "store": os.fspath(store),
        "split": split,
        "n_cases_available": available,
        "models": [spec.display for spec in models],
        "weights": "1 / sample_prob" if weights == "sample_prob" else "equal",
    }
    return scorer.result(meta)


def _case_id(index: int, t0: np.ndarray) -> str:
    return f"crop {index} ({pd.Timestamp(t0[index]):%Y-%m-%dT%H:%M})"
