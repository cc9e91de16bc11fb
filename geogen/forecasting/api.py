"""``geogen.forecast``: run any forecaster on an xarray context and get a CF DataArray back."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geogen.forecasting.interface import Forecaster, ForecastError, get_forecaster

log = logging.getLogger(__name__)

FORECAST_VARIABLE = "precip"


def _timestep_minutes(context: xr.DataArray) -> float:
    times = pd.DatetimeIndex(context["time"].values)
    if len(times) < 2:
        step = context.attrs.get("timestep") or context.attrs.get("timestep_minutes")
        if step is None:
            raise ForecastError(
                "one context frame and no 'timestep' attribute: cannot tell the time step"
            )
        return float(step)
    steps = np.diff(times.values).astype("timedelta64[s]").astype(np.int64) / 60.0
    if not np.allclose(steps, steps[0]):
        raise ForecastError(
            f"context frames are not evenly spaced (steps in minutes: {sorted(set(steps))}); "
            "a missing frame cannot be bridged"
        )
    return float(steps[0])


def grid_spacing_km(data: xr.DataArray) -> float | None:
    """Pixel size in km of a projected grid (``x`` in metres or km), else ``None``.

    Geographic grids (degrees) and data without an ``x`` coordinate give ``None``.
    """
    if "x" not in data.coords or data.sizes.get("x", 0) < 2:
        return None
    units = str(data["x"].attrs.get("units", "m")).strip().lower()
    scale = {"m": 1e-3, "metre": 1e-3, "meter": 1e-3, "metres": 1e-3, "km": 1.0}.get(units)
    if scale is None:
        return None
    x = np.asarray(data["x"].values, dtype=np.float64)
    return float(abs(x[1] - x[0]) * scale)


def as_context(context: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """The rain-rate DataArray of ``context``: itself, or the variable of a Dataset.

    A Dataset (what :func:`geogen.open_source` returns) gives its only variable, else its
    ``precip``; its attributes (``timestep``, ``source``) are kept.
    """
    if isinstance(context, xr.DataArray):
        return context
    if not isinstance(context, xr.Dataset):
        raise ForecastError(f"context must be an xarray DataArray or Dataset, not {type(context)}")
    names = list(context.data_vars)
    if len(names) == 1:
        name = names[0]
    elif FORECAST_VARIABLE in names:
        name = FORECAST_VARIABLE
    else:
        raise ForecastError(
            f"the context Dataset has variables {names}: pass the rain-rate one "
            f"(context[{names[0]!r}])"
        )
    data = context[name]
    return data.assign_attrs({**context.attrs, **data.attrs})


def forecast(
    model: Forecaster | str,
    context: xr.DataArray | xr.Dataset,
    members: int = 1,
    leads: int = 18,
    *,
    seed: int = 0,
    margin: int = 0,
    progress: bool = False,
    **model_kwargs: Any,
) -> xr.DataArray:
    """Forecast ``leads`` frames after the last frame of ``context``.

    Parameters
    ----------
    model
        A :class:`~geogen.forecasting.Forecaster`, or a registered name (``"persistence"``,
        ``"pysteps_steps"``, ``"dgmr"``) built with ``model_kwargs``.
    context
        ``(time, y, x)`` rain rate in mm/h, regularly spaced; at least ``model.n_context``
        frames (the last ones are used). ``x``/``y`` coordinates and a ``crs`` coordinate are
        carried over to the forecast. A Dataset (:func:`geogen.open_source`'s) gives its rain
        variable (:func:`as_context`); only the last frames are read.
    members
        Ensemble size (deterministic methods repeat their forecast).
    leads
        Number of lead frames, one time step apart.
    seed
        Seed of the ensemble; the same seed gives the same forecast.
    margin
        Pixels of ``context`` on each side of the region of interest: the method forecasts
        the whole context (rain advected into the region comes from the data around it) and
        the forecast is returned without them (as ``geogen-forecast margin=N``).
    progress
        Show a progress bar.

    Returns
    -------
    xarray.DataArray
        ``precip`` with dims ``(member, lead_time, y, x)`` in mm/h; coordinates ``lead_time``
        (timedelta), ``time`` (valid time, along ``lead_time``), ``issue_time`` (scalar, the
        last context frame), ``x``, ``y`` (and ``crs`` when the context has one); attributes
        describe the model: ``model``, ``margin`` and ``settings``, the method's settings and
        provenance as a JSON string (``json.loads(fc.attrs["settings"])``), so that
        ``fc.to_netcdf(path)`` works as it is.
    """
    if isinstance(model, str):
        model = get_forecaster(model, **model_kwargs)
    elif model_kwargs:
        raise TypeError("model_kwargs are only used when model is given by name")
    if members < 1 or leads < 1:
        raise ForecastError(f"members ({members}) and leads ({leads}) must be >= 1")
    context = as_context(context)
    if set(context.dims) != {"time", "y", "x"}:
        raise ForecastError(f"context must have dims (time, y, x), not {context.dims}")
    context = context.transpose("time", "y", "x")
    margin = int(margin)
    if margin < 0 or 2 * margin >= min(context.sizes["y"], context.sizes["x"]):
        raise ForecastError(
            f"margin={margin} must be >= 0 and leave pixels of the {context.sizes['y']} x "
            f"{context.sizes['x']} context"
        )
    if context.sizes["time"] < model.n_context:
        raise ForecastError(
            f"{model.name} needs {model.n_context} context frames, got {context.sizes['time']}"
        )
    step = _timestep_minutes(context)
    if model.timestep_minutes is not None and not np.isclose(step, model.timestep_minutes):
        raise ForecastError(
            f"{model.name} was trained on {model.timestep_minutes:g}-minute steps; the context "
            f"is every {step:g} minutes"
        )
    frames = np.asarray(context.isel(time=slice(-model.n_context, None)).values, dtype=np.float32)
    model.set_grid_spacing(grid_spacing_km(context))
    values = model.predict(
        frames, leads=leads, members=members, seed=seed, timestep_minutes=step, progress=progress
    )
    expected = (members, leads, *frames.shape[1:])
    if values.shape != expected:
        raise ForecastError(f"{model.name} returned shape {values.shape}, expected {expected}")
    issue = pd.Timestamp(context["time"].values[-1])
    lead_time = pd.to_timedelta(np.arange(1, leads + 1) * step, unit="min")
    coords: dict[str, Any] = {
        "member": ("member", np.arange(members, dtype=np.int32)),
        "lead_time": ("lead_time", lead_time.values, {"standard_name": "forecast_period"}),
        "time": ("lead_time", (issue + lead_time).values, {"standard_name": "time"}),
        "issue_time": (
            (),
            np.datetime64(issue, "ns"),
            {"standard_name": "forecast_reference_time"},
        ),
    }
    for name in ("y", "x"):
        if name in context.coords:
            coords[name] = context[name]
    if "crs" in context.coords:
        coords["crs"] = context["crs"]
    attrs = {
        "units": "mm/h",
        "standard_name": "lwe_precipitation_rate",
        "long_name": f"precipitation rate forecast ({model.name})",
        "model": model.name,
        "members": members,
        "seed": seed,
        "timestep_minutes": step,
        "margin": margin,
    }
    if "crs" in context.coords:
        attrs["grid_mapping"] = "crs"
    out = xr.DataArray(
        values.astype(np.float32, copy=False),
        dims=("member", "lead_time", "y", "x"),
        coords=coords,
        name=FORECAST_VARIABLE,
        attrs=attrs,
    )
    out.attrs["settings"] = json.dumps(model.describe(), default=str)
    if margin:
        out = out.isel(y=slice(margin, -margin), x=slice(margin, -margin))
    return out
