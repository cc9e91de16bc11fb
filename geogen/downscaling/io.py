"""Low-resolution inputs (files, or archive frames coarsened) and downscaled output files.

Output files are CF netCDF (``.nc``) or zarr (``.zarr``) holding the downscaled ensemble
``<variable>`` with dims ``(member, time, y, x)`` on the fine grid and the input
``<variable>_lowres`` ``(time, y_lowres, x_lowres)`` on the coarse grid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geogen.downscaling.interface import DownscaleError
from geogen.io.sources import TimeLike, to_timestamp
from geogen.io.writers import decode_json_attrs, json_attrs, open_dataset, write_dataset

JSON_ATTRS = ("settings", "provenance", "source_config", "region")


def coarsen(field: xr.DataArray, factor: int) -> xr.DataArray:
    """Block means over ``factor x factor`` pixels (NaN if a block holds NaN).

    The coarse ``x``/``y`` are the means of the fine cell centres of each block.
    """
    ny, nx = field.sizes["y"], field.sizes["x"]
    if ny % factor or nx % factor:
        raise DownscaleError(
            f"the grid of {ny} x {nx} pixels is not divisible by the factor {factor}; "
            "choose a region whose height and width are multiples of it"
        )
    out = field.coarsen(y=factor, x=factor).reduce(np.mean)  # NaN propagates
    out.attrs = dict(field.attrs)
    out.name = field.name
    return out


def read_lowres_file(path: str | os.PathLike, variable: str | None = None) -> xr.DataArray:
    """The ``(time, y, x)`` variable of a netCDF/zarr file (the only one, or ``variable``)."""
    path = Path(path)
    if not path.exists():
        raise DownscaleError(f"no input file at {path}")
    ds = open_dataset(path)
    names = [
        v
        for v in ds.data_vars
        if {"y", "x"} <= set(ds[v].dims) or {"y_lowres", "x_lowres"} <= set(ds[v].dims)
    ]
    if variable is None:
        if len(names) != 1:
            raise DownscaleError(
                f"{path}: say which variable to downscale (variable=...); it has {names}"
            )
        variable = names[0]
    if variable not in ds:
        raise DownscaleError(f"{path}: no variable {variable!r}; it has {list(ds.data_vars)}")
    da = ds[variable]
    if {"y_lowres", "x_lowres"} <= set(da.dims):  # the input of an earlier geogen-downscale
        da = da.rename({"y_lowres": "y", "x_lowres": "x"})
    if "time" not in da.dims and da.ndim == 2:
        da = da.expand_dims("time")
    if set(da.dims) != {"time", "y", "x"}:
        raise DownscaleError(f"{path}: {variable!r} has dims {da.dims}; expected (time, y, x)")
    return da.transpose("time", "y", "x").load()


def read_sequence(
    source: Mapping[str, Any] | str,
    time: TimeLike,
    length: int,
    *,
    region: Sequence[int] | None = None,
    **overrides: Any,
) -> xr.DataArray:
    """The ``length`` frames of ``source`` ending at ``time`` (all required)."""
    from geogen.config import source_config
    from geogen.forecasting.io import read_frames

    cfg = source_config(source, **overrides)
    end = to_timestamp(time)
    if end is None:
        raise DownscaleError("time is required (the last frame of the sequence)")
    step = pd.Timedelta(minutes=float(cfg["timestep"]))
    return read_frames(cfg, end - (length - 1) * step, end, region=region)


def write_downscaled(
    downscaled: xr.DataArray,
    path: str | os.PathLike,
    *,
    lowres: xr.DataArray | None = None,
    **attrs: Any,
) -> Path:
    """Write a downscaled ensemble (and its input) to netCDF/zarr, atomically."""
    name = str(downscaled.name or "field")
    ds = downscaled.to_dataset(name=name)
    var = ds[name]
    for key in [k for k in var.attrs if k in JSON_ATTRS or isinstance(var.attrs[k], dict | list)]:
        ds.attrs[key] = var.attrs.pop(key)
    if lowres is not None:
        low = lowres.rename({"y": "y_lowres", "x": "x_lowres"}).drop_vars("crs", errors="ignore")
        ds[f"{name}_lowres"] = low.transpose("time", "y_lowres", "x_lowres")
    ds.attrs.update(attrs)
    ds.attrs = json_attrs(ds.attrs)
    ds.attrs.setdefault("Conventions", "CF-1.8")
    ds.attrs.setdefault("title", f"geogen downscaling ({var.attrs.get('model', '?')})")
    encoding: dict[str, dict[str, Any]] = {name: {"chunks": (1, 1, *var.shape[2:])}}
    if "time" in ds.coords and np.issubdtype(ds["time"].dtype, np.datetime64):
        encoding["time"] = {"units": "minutes since 1970-01-01 00:00:00", "dtype": "int64"}
    try:
        return write_dataset(ds, path, encoding)
    except ValueError as exc:
        raise DownscaleError(str(exc)) from None


def open_downscaled(path: str | os.PathLike, variable: str | None = None) -> xr.DataArray:
    """Open a file written by :func:`write_downscaled`: the ``(member, time, y, x)`` ensemble."""
    path = Path(path)
    if not path.exists():
        raise DownscaleError(f"no downscaled file at {path}")
    ds = open_dataset(path)
    names = [v for v in ds.data_vars if ds[v].dims == ("member", "time", "y", "x")]
    variable = variable or (names[0] if len(names) == 1 else None)
    if variable is None or variable not in ds:
        raise DownscaleError(f"{path}: no (member, time, y, x) variable to read (found {names})")
    da = ds[variable]
    for key, value in decode_json_attrs(ds.attrs, JSON_ATTRS).items():
        if key in JSON_ATTRS or key not in da.attrs:
            da.attrs[key] = value
    return da
