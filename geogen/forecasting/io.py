"""Reading context and observations from archives; writing and reading forecast files.

Forecast files are CF netCDF (``.nc``) or zarr (``.zarr``) holding ``precip`` with dims
``(member, lead_time, y, x)`` in mm/h, coordinates ``lead_time`` (``forecast_period``),
``time`` (valid time), ``issue_time`` (``forecast_reference_time``), ``x``/``y`` in the source
projection and the ``crs`` grid mapping. Nested attributes (model settings, provenance) are
stored as JSON strings and decoded again by :func:`open_forecast`. Files are written to a
temporary path and renamed, so a forecast file is either complete or absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geogen.forecasting.interface import ForecastError
from geogen.io.sources import TimeLike, load_source, to_timestamp
from geogen.io.writers import decode_json_attrs, json_attrs, open_dataset, write_dataset

JSON_ATTRS = ("settings", "provenance", "source_config", "region")


def _check_region(
    region: Sequence[int] | None, shape: tuple[int, int]
) -> tuple[slice, slice] | None:
    if region is None:
        return None
    if len(region) != 4:
        raise ForecastError(f"region must be [y0, x0, height, width], got {list(region)}")
    y0, x0, h, w = (int(v) for v in region)
    ny, nx = shape
    if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y0 + h > ny or x0 + w > nx:
        raise ForecastError(
            f"region [y0={y0}, x0={x0}, height={h}, width={w}] does not fit the source grid "
            f"of {ny} x {nx} pixels"
        )
    return slice(y0, y0 + h), slice(x0, x0 + w)


def read_frames(
    source: Mapping[str, Any] | str,
    start: TimeLike,
    end: TimeLike,
    *,
    region: Sequence[int] | None = None,
    require_all: bool = True,
    **overrides: Any,
) -> xr.DataArray:
    """Read the frames of ``source`` from ``start`` to ``end`` (inclusive), loaded in memory.

    Parameters
    ----------
    source
        A source config or the name of a shipped one.
    start, end
        Valid times of the first and last frame.
    region
        Optional ``[y0, x0, height, width]`` pixel window of the source grid.
    require_all
        Raise :class:`ForecastError` naming the missing times when a frame is missing;
        otherwise return only the frames present.
    **overrides
        Source config overrides (``root=...``).

    Returns
    -------
    xarray.DataArray
        ``(time, y, x)`` float32 with the source's coordinates and attributes.
    """
    start_ts, end_ts = to_timestamp(start), to_timestamp(end)
    src = load_source(source, start_ts, end_ts, **overrides)
    if require_all and len(src.missing):
        missing = ", ".join(f"{t:%Y-%m-%d %H:%M}" for t in src.missing[:10])
        raise ForecastError(
            f"{src.name}: {len(src.missing)} frame(s) missing between {start_ts} and {end_ts} "
            f"(every {src.timestep}): {missing}"
        )
    ds = src.to_dataset()
    data = ds[src.variable]
    window = _check_region(region, src.grid.shape)
    if window is not None:
        data = data.isel(y=window[0], x=window[1])
    data = data.load()
    data.attrs.update({k: v for k, v in ds.attrs.items() if k in ("source", "timestep")})
    if region is not None:
        data.attrs["region"] = [int(v) for v in region]
    return data


def read_context(
    source: Mapping[str, Any] | str,
    time: TimeLike,
    n_context: int,
    *,
    region: Sequence[int] | None = None,
    **overrides: Any,
) -> xr.DataArray:
    """The ``n_context`` frames ending at ``time`` (the issue time), all required.

    Raises
    ------
    ForecastError
        When a context frame is missing (the message names the times).
    """
    from geogen.config import source_config

    src_cfg = source_config(source, **overrides)
    step = pd.Timedelta(minutes=float(src_cfg["timestep"]))
    issue = to_timestamp(time)
    if issue is None:
        raise ForecastError("the issue time is required (time=2016-07-11T22:00)")
    return read_frames(src_cfg, issue - (n_context - 1) * step, issue, region=region)


def expand_region(
    region: Sequence[int] | None, margin: int, shape: tuple[int, int]
) -> tuple[list[int] | None, tuple[slice, slice]]:
    """A region grown by ``margin`` pixels on each side, clipped to the grid.

    Forecasting a region from a larger context lets extrapolation methods bring in rain
    from around it instead of leaving pixels advected in from outside empty (NaN).

    Returns
    -------
    expanded
        ``[y0, x0, height, width]`` of the larger window (``None`` when ``region`` is).
    crop
        ``(y slice, x slice)`` selecting the original region inside the larger window.
    """
    if region is None or margin <= 0:
        return (None if region is None else [int(v) for v in region]), (slice(None), slice(None))
    window = _check_region(region, shape)
    assert window is not None
    (ys, xs), (ny, nx) = window, shape
    y0, x0 = max(ys.start - margin, 0), max(xs.start - margin, 0)
    y1, x1 = min(ys.stop + margin, ny), min(xs.stop + margin, nx)
    crop = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    return [y0, x0, y1 - y0, x1 - x0], crop


def read_observations(
    source: Mapping[str, Any] | str,
    issue_time: TimeLike,
    leads: int,
    *,
    region: Sequence[int] | None = None,
    **overrides: Any,
) -> xr.DataArray:
    """Observed frames at each lead time after ``issue_time`` (missing ones are left out)."""
    from geogen.config import source_config

    src_cfg = source_config(source, **overrides)
    step = pd.Timedelta(minutes=float(src_cfg["timestep"]))
    issue = to_timestamp(issue_time)
    return read_frames(
        src_cfg, issue + step, issue + leads * step, region=region, require_all=False
    )


# --------------------------------------------------------------------------------------------
# forecast files
# --------------------------------------------------------------------------------------------
def forecast_to_dataset(forecast: xr.DataArray, **attrs: Any) -> xr.Dataset:
    """A forecast DataArray as a CF dataset with JSON-encoded nested attributes."""
    name = forecast.name or "precip"
    ds = forecast.to_dataset(name=name)
    var = ds[name]
    for key in [k for k in var.attrs if k in JSON_ATTRS or isinstance(var.attrs[k], dict | list)]:
        ds.attrs[key] = var.attrs.pop(key)
    ds.attrs.update(attrs)
    ds.attrs = json_attrs(ds.attrs)
    ds.attrs.setdefault("Conventions", "CF-1.8")
    ds.attrs.setdefault("title", f"geogen precipitation nowcast ({var.attrs.get('model', '?')})")
    return ds


def write_forecast(
    forecast: xr.DataArray | xr.Dataset, path: str | os.PathLike, **attrs: Any
) -> Path:
    """Write a forecast to CF netCDF (``.nc``) or zarr (``.zarr``), atomically.

    Parameters
    ----------
    forecast
        From :func:`geogen.forecast` (dims ``member, lead_time, y, x``).
    path
        Output path; the extension picks the format.
    **attrs
        Extra global attributes (provenance, source config; dicts become JSON strings).
    """
    ds = forecast if isinstance(forecast, xr.Dataset) else forecast_to_dataset(forecast, **attrs)
    name = "precip" if "precip" in ds else next(iter(ds.data_vars))
    minutes = {"units": "minutes since 1970-01-01 00:00:00", "dtype": "int64"}
    encoding = {
        name: {"chunks": (1, 1, *ds[name].shape[2:])},
        "lead_time": {"units": "minutes", "dtype": "int32"},
        "time": dict(minutes),
        "issue_time": dict(minutes),
    }
    try:
        return write_dataset(ds, path, encoding)
    except ValueError as exc:
        raise ForecastError(str(exc)) from None


def open_forecast(path: str | os.PathLike) -> xr.DataArray:
    """Open a forecast file written by :func:`write_forecast` (loaded lazily).

    Returns
    -------
    xarray.DataArray
        ``(member, lead_time, y, x)``, ``lead_time`` as timedelta, JSON attributes decoded.
    """
    path = Path(path)
    if not path.exists():
        raise ForecastError(f"no forecast file at {path}")
    try:
        ds = open_dataset(path)
    except Exception as exc:
        raise ForecastError(f"cannot open the forecast file {path}: {exc}") from exc
    if "precip" not in ds:
        raise ForecastError(f"{path} holds no 'precip' variable (variables: {list(ds.data_vars)})")
    da = ds["precip"]
    if set(da.dims) != {"member", "lead_time", "y", "x"}:
        raise ForecastError(
            f"{path}: 'precip' has dims {da.dims}, expected member, lead_time, y, x"
        )
    da = da.transpose("member", "lead_time", "y", "x")
    for key, value in decode_json_attrs(ds.attrs, JSON_ATTRS).items():
        if key in JSON_ATTRS or key not in da.attrs:
            da.attrs[key] = value
    return da


def lead_minutes(forecast: xr.DataArray) -> np.ndarray:
    """Lead times of a forecast in minutes (int)."""
    return (forecast["lead_time"].values / np.timedelta64(1, "m")).astype(np.int64)
