"""Scores of xarray in, an ``xarray.Dataset`` out (weatherbench2 style): :func:`score`.

:func:`score` scores one ensemble forecast against its observation with the metrics of
:mod:`geogen.verification` through the same :class:`~geogen.verification.scorer.Scorer` as
``geogen-score``; :func:`~geogen.verification.scorer.scores_to_dataset` (also
``ScoreResult.to_dataset()``) turns any tidy score table into the same layout, one variable per
metric with the dimensions it depends on::

    crps        (lead_time)                    crps_max_pool (lead_time, scale)
    csi         (lead_time, threshold)         fss           (lead_time, threshold, scale)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geogen.verification.interface import VerificationError
from geogen.verification.scorer import Scorer, scores_to_dataset
from geogen.verification.settings import ScoringSettings, validate_settings

__all__ = ["score", "scores_to_dataset"]

_DIMS = ("member", "lead_time", "y", "x")


def score(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    *,
    metrics: Sequence[str] | None = None,
    thresholds: Sequence[float] | None = None,
    scales: Sequence[int] | None = None,
    settings: Mapping[str, Any] | ScoringSettings | None = None,
) -> xr.Dataset:
    """Score an ensemble forecast against its observation.

    Parameters
    ----------
    forecast
        ``(member, lead_time, y, x)`` in mm/h (``member`` may be absent: one member), as
        :func:`geogen.forecast` returns. ``lead_time`` is a timedelta or minutes.
    observation
        ``(lead_time, y, x)`` with the forecast's lead times, or ``(time, y, x)`` holding the
        forecast's valid times (its ``time`` coordinate, or ``issue_time + lead_time``), in
        mm/h on the same grid.
    metrics
        Metric names (:func:`geogen.verification.available_metrics`); default: those of
        ``conf/scoring/default.yaml``.
    thresholds
        Rain thresholds in mm/h of the categorical, FSS and reliability scores.
    scales
        Spatial scales in pixels: the FSS neighbourhoods and, above 1, the pooled-CRPS windows.
    settings
        Any other scoring setting (``conf/scoring/default.yaml``); ``metrics``, ``thresholds``
        and ``scales`` override it. One case has no bootstrap interval: ``bootstrap.n`` is 0
        unless set here.

    Returns
    -------
    xarray.Dataset
        One variable per metric (``crps``, ``csi``, ``fss``, ...; pooled scores as
        ``crps_avg_pool``, ``crps_max_pool``) over ``lead_time`` and, where the metric has
        them, ``threshold`` (mm/h) and ``scale`` (pixels); pixel counts in ``scored_pixels``
        and ``excluded_pixels``.

    Raises
    ------
    VerificationError
        For dimensions, lead or valid times, or grids that do not match, or bad settings.

    Examples
    --------
    >>> scores = geogen.score(fc, obs, metrics=["crps", "fss"], thresholds=[1, 4], scales=[1, 8])
    >>> scores["fss"].sel(threshold=1, scale=8)  # doctest: +SKIP
    """
    fc = _as_forecast(forecast)
    minutes = _lead_minutes(fc["lead_time"])
    obs = _align_observation(observation, fc, minutes)
    config = _settings(settings, metrics, thresholds, scales)
    scorer = Scorer(config)
    scorer.pixel_size_km = _pixel_size_km(fc)
    name = str(forecast.attrs.get("model") or forecast.name or "forecast")
    values = np.asarray(fc.values, dtype=np.float32)
    case = (
        f"issued {pd.Timestamp(fc['issue_time'].values):%Y-%m-%dT%H:%M}"
        if "issue_time" in fc.coords
        else "the forecast"
    )
    scorer.add_case(case, {name: values}, np.asarray(obs.values, dtype=np.float32), minutes)
    result = scorer.result({"mode": "xarray"})
    ds = scores_to_dataset(result.scores, model_dim=False, intervals=config.bootstrap.n > 0)
    ds.attrs["model"] = name
    return ds


def _as_forecast(forecast: xr.DataArray) -> xr.DataArray:
    if not isinstance(forecast, xr.DataArray):
        raise VerificationError(f"forecast must be an xarray.DataArray, got {type(forecast)}")
    fc = forecast if "member" in forecast.dims else forecast.expand_dims("member")
    if set(fc.dims) != set(_DIMS):
        raise VerificationError(f"forecast must have dims {_DIMS}, got {forecast.dims}")
    return fc.transpose(*_DIMS)


def _lead_minutes(lead_time: xr.DataArray) -> list[int]:
    values = lead_time.values
    if np.issubdtype(values.dtype, np.timedelta64):
        return [int(v) for v in values.astype("timedelta64[m]").astype(np.int64)]
    return [int(v) for v in values]


def _align_observation(
    observation: xr.DataArray, fc: xr.DataArray, minutes: list[int]
) -> xr.DataArray:
    if not isinstance(observation, xr.DataArray):
        raise VerificationError(f"observation must be an xarray.DataArray, got {type(observation)}")
    if "lead_time" in observation.dims:
        obs = observation.transpose("lead_time", "y", "x")
        if _lead_minutes(obs["lead_time"]) != minutes:
            raise VerificationError(
                f"observation lead times {_lead_minutes(obs['lead_time'])} (minutes) differ "
                f"from the forecast's {minutes}"
            )
    elif "time" in observation.dims:
        obs = observation.transpose("time", "y", "x")
        if "time" in fc.coords and fc["time"].dims == ("lead_time",):
            valid = pd.DatetimeIndex(fc["time"].values)
        elif "issue_time" in fc.coords:
            issue = pd.Timestamp(fc["issue_time"].values)
            valid = pd.DatetimeIndex([issue + pd.Timedelta(minutes=m) for m in minutes])
        else:
            raise VerificationError(
                "an observation over time needs the forecast's valid times: a time or "
                "issue_time coordinate (or give the observation a lead_time dimension)"
            )
        missing = valid.difference(pd.DatetimeIndex(obs["time"].values))
        if len(missing):
            raise VerificationError(
                f"the observation has no frame at the valid times {[str(t) for t in missing]}"
            )
        obs = obs.sel(time=valid)
    else:
        raise VerificationError(
            f"observation must have dims (lead_time|time, y, x), got {observation.dims}"
        )
    if obs.shape[1:] != fc.shape[2:]:
        raise VerificationError(
            f"observation grid {obs.shape[1:]} differs from the forecast's {fc.shape[2:]}"
        )
    for axis in ("y", "x"):
        if axis in obs.coords and axis in fc.coords:
            if not np.allclose(obs[axis].values, fc[axis].values):
                raise VerificationError(f"observation and forecast {axis} coordinates differ")
    return obs


def _settings(
    settings: Mapping[str, Any] | ScoringSettings | None,
    metrics: Sequence[str] | None,
    thresholds: Sequence[float] | None,
    scales: Sequence[int] | None,
) -> ScoringSettings:
    base = settings.model_dump() if isinstance(settings, ScoringSettings) else dict(settings or {})
    base.setdefault("bootstrap", {"n": 0})
    if metrics is not None:
        base["metrics"] = list(metrics)
    if thresholds is not None:
        base["thresholds"] = [float(t) for t in thresholds]
    if scales is not None:
        base["fss_scales"] = [int(s) for s in scales]
        crps = dict(base.get("crps") or {})
        crps["windows"] = [int(s) for s in scales if int(s) > 1]
        base["crps"] = crps
    return validate_settings(base)


def _pixel_size_km(fc: xr.DataArray) -> float | None:
    if "x" not in fc.coords or fc.sizes["x"] < 2:
        return None
    units = str(fc["x"].attrs.get("units", "m"))
    step = abs(float(fc["x"].values[1] - fc["x"].values[0]))
    if units in ("m", "metre", "meter", "metres", "meters"):
        return step / 1000.0
    return step if units == "km" else None
