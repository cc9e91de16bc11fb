"""CF-style construction of gridded field datasets.

Every source in geogen (pysteps radar archives, xarray climate fields, synthetic fields) ends
up as the same kind of :class:`xarray.Dataset`, built here:

- dims ``(time, y, x)``, one data variable (``precip`` for rain rate in mm/h);
- ``x``/``y`` coordinates of cell centres in the source projection, with CF attributes;
- a scalar ``crs`` grid-mapping variable carrying the projection (``crs_wkt`` and ``proj4``);
- dataset attributes naming the source and its time step (minutes).
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

log = logging.getLogger(__name__)

#: CF attributes of the rain-rate variable every radar source produces.
PRECIP_ATTRS: dict[str, str] = {
    "units": "mm/h",
    "standard_name": "lwe_precipitation_rate",
    "long_name": "precipitation rate (liquid water equivalent)",
}


@dataclass(frozen=True)
class Grid:
    """A regular 2-D grid in a projected (or geographic) coordinate system.

    Parameters
    ----------
    x, y
        Cell-centre coordinates, shapes ``(nx,)`` and ``(ny,)``, in the order of the array
        axes (``y`` decreasing when row 0 is the northern edge, as for most radar composites).
    crs
        Anything :class:`pyproj.CRS` understands (proj4 string, WKT, ``"EPSG:4326"``).
    units
        Units of ``x`` and ``y`` (``"m"`` for projected grids, ``"degrees"`` for lat/lon).
    """

    x: np.ndarray
    y: np.ndarray
    crs: str
    units: str = "m"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)``."""
        return (len(self.y), len(self.x))

    @property
    def geographic(self) -> bool:
        """Whether the coordinates are longitude/latitude in degrees."""
        return self.units.startswith("degree")

    def to_attrs(self) -> dict[str, Any]:
        """A JSON-friendly description (first centre, spacing, shape, CRS) for store attrs."""
        dx = float(self.x[1] - self.x[0]) if len(self.x) > 1 else float("nan")
        dy = float(self.y[1] - self.y[0]) if len(self.y) > 1 else float("nan")
        return {
            "x0": float(self.x[0]),
            "y0": float(self.y[0]),
            "dx": dx,
            "dy": dy,
            "shape": [int(s) for s in self.shape],
            "units": self.units,
            "crs": self.crs,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Grid:
        """Inverse of :meth:`to_attrs`."""
        ny, nx = attrs["shape"]
        x = attrs["x0"] + attrs["dx"] * np.arange(nx)
        y = attrs["y0"] + attrs["dy"] * np.arange(ny)
        return cls(x=x, y=y, crs=attrs["crs"], units=attrs.get("units", "m"))


def crs_variable(crs: str) -> xr.DataArray:
    """Scalar CF grid-mapping variable for ``crs`` (``crs_wkt``, ``proj4`` and CF params)."""
    import pyproj

    try:
        parsed = pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise ValueError(f"cannot interpret the projection {crs!r}: {exc}") from exc
    try:
        with warnings.catch_warnings():
            # e.g. Swiss somerc: "angle from rectified to skew grid parameter lost in
            # conversion to CF"; crs_wkt and proj4 below keep the full definition.
            warnings.simplefilter("ignore", UserWarning)
            attrs = dict(parsed.to_cf())
    except Exception:  # pragma: no cover - some custom projections have no CF mapping
        attrs = {"crs_wkt": parsed.to_wkt()}
    attrs = {k: v for k, v in attrs.items() if isinstance(v, str | int | float)}
    if crs.lstrip().startswith("+"):
        attrs["proj4"] = crs
    else:
        with warnings.catch_warnings():
            # "You will likely lose important projection information" (EPSG codes); crs_wkt
            # holds the full definition.
            warnings.simplefilter("ignore", UserWarning)
            attrs["proj4"] = parsed.to_proj4()
    return xr.DataArray(np.int32(0), attrs=attrs)


def coordinate_attrs(grid: Grid) -> tuple[dict[str, str], dict[str, str]]:
    """CF attributes of the ``x`` and ``y`` coordinates of ``grid``."""
    if grid.geographic:
        return (
            {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east"},
            {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north"},
        )
    return (
        {"standard_name": "projection_x_coordinate", "long_name": "x", "units": grid.units},
        {"standard_name": "projection_y_coordinate", "long_name": "y", "units": grid.units},
    )


def field_dataset(
    data: Any,
    times: Sequence[Any] | pd.DatetimeIndex,
    grid: Grid,
    *,
    variable: str,
    variable_attrs: Mapping[str, Any],
    source: str,
    timestep_minutes: float,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Wrap a ``(time, y, x)`` array (numpy or dask) into a CF-style dataset.

    Parameters
    ----------
    data
        Array of shape ``(time, y, x)``, float32, in the units of ``variable_attrs``.
    times
        Valid times of the frames, length ``time``.
    grid
        The spatial grid; ``data.shape[1:]`` must equal ``grid.shape``.
    variable
        Name of the data variable (``"precip"`` for radar rain rate).
    variable_attrs
        CF attributes of the variable (``units``, ``standard_name``, ``long_name``).
    source
        Name of the source (for example ``"mch"``), stored in ``attrs["source"]``.
    timestep_minutes
        Nominal time step between frames, stored in ``attrs["timestep"]`` (minutes).
    attrs
        Further dataset attributes.

    Returns
    -------
    xarray.Dataset
        With dims ``(time, y, x)``, coordinates ``time``, ``y``, ``x`` and ``crs``.
    """
    times = pd.DatetimeIndex(times)
    if data.ndim != 3 or data.shape[0] != len(times) or tuple(data.shape[1:]) != grid.shape:
        raise ValueError(
            f"{source}: data of shape {tuple(data.shape)} does not match "
            f"(time={len(times)}, y={grid.shape[0]}, x={grid.shape[1]})"
        )
    x_attrs, y_attrs = coordinate_attrs(grid)
    var_attrs = dict(variable_attrs)
    var_attrs["grid_mapping"] = "crs"
    ds = xr.Dataset(
        {variable: (("time", "y", "x"), data, var_attrs)},
        coords={
            "time": ("time", times.values.astype("datetime64[ns]"), {"standard_name": "time"}),
            "y": ("y", np.asarray(grid.y, dtype=np.float64), y_attrs),
            "x": ("x", np.asarray(grid.x, dtype=np.float64), x_attrs),
            "crs": crs_variable(grid.crs),
        },
    )
    ds.attrs.update(
        {
            "Conventions": "CF-1.8",
            "source": source,
            "timestep": float(timestep_minutes),
            "timestep_units": "minutes",
            "variable": variable,
        }
    )
    if attrs:
        ds.attrs.update(attrs)
    return ds
