"""Gridded climate fields (netCDF, GRIB, zarr) read with xarray.

A gridded source config (``conf/source/era5.yaml``)::

    name: era5
    kind: xarray
    root: /data/era5
    files: "era5_t2m_*.nc"          # glob(s) under root
    engine: null                    # netcdf4 | h5netcdf | cfgrib | zarr; by extension if null
    variable: t2m
    units: K                        # what the file must hold (checked); null takes the file's
    convert_units: null             # e.g. degC, converted with pint (CF unit names)
    dims: {y: latitude, x: longitude}
    crs: "EPSG:4326"
    timestep: 60                    # minutes; null infers it from the time coordinate
    select: {}                      # xarray .sel() of extra dims, e.g. {number: 0}

The files are opened lazily (:func:`xarray.open_mfdataset`, one Dask chunk per time step), the
variable is renamed to dims ``(time, y, x)`` and, if asked, converted to other units.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field

from geogen.io.archive import missing_times
from geogen.io.cf import Grid
from geogen.io.sources import Source, SourceError, TimeLike, register_source, validate_config

log = logging.getLogger(__name__)

_ENGINES = {
    ".nc": "netcdf4",
    ".nc4": "netcdf4",
    ".netcdf": "netcdf4",
    ".h5": "h5netcdf",
    ".grib": "cfgrib",
    ".grb": "cfgrib",
    ".grib2": "cfgrib",
    ".grb2": "cfgrib",
    ".zarr": "zarr",
}


class GriddedSourceConfig(BaseModel):
    """Schema of a ``kind: xarray`` source config."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["xarray"] = "xarray"
    root: str
    files: str | list[str]
    engine: str | None = None
    variable: str
    units: str | None = None
    convert_units: str | None = None
    standard_name: str | None = None
    dims: dict[str, str] = Field(default_factory=dict)
    crs: str = "EPSG:4326"
    timestep: float | None = Field(default=None, gt=0)
    select: dict[str, Any] = Field(default_factory=dict)
    open_kwargs: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    provider: str = ""


def _cf_units() -> Any:
    """Pint's registry with CF unit names (cf_xarray), imported quietly."""
    pint_log = logging.getLogger("pint.util")
    level = pint_log.level
    pint_log.setLevel(logging.ERROR)  # cf_xarray redefines a few pint units at import
    try:
        from cf_xarray.units import units
    finally:
        pint_log.setLevel(level)
    return units


def unit_conversion(from_units: str, to_units: str) -> tuple[float, float]:
    """Affine conversion ``to = scale * from + offset`` between two CF unit strings (pint).

    A water mass flux or amount (``kg m-2 s-1``, ``kg m-2``) converts to a depth rate or depth
    (``mm/h``, ``mm``) as liquid water equivalent, with a density of 1000 kg m-3.
    """
    ureg = _cf_units()
    try:
        source = ureg(from_units).units
        target = ureg(to_units).units
    except Exception as exc:
        raise SourceError(f"cannot parse units {from_units!r} or {to_units!r}: {exc}") from None
    water = ureg.Quantity(1000.0, "kg/m**3")
    for factor in (1.0, 1.0 / water, water):
        try:
            zero = (ureg.Quantity(0.0, source) * factor).to(target).magnitude
            one = (ureg.Quantity(1.0, source) * factor).to(target).magnitude
        except Exception:
            continue
        return float(one - zero), float(zero)
    raise SourceError(
        f"cannot convert units {from_units!r} to {to_units!r}: "
        f"{ureg.Quantity(1.0, source).dimensionality} vs "
        f"{ureg.Quantity(1.0, target).dimensionality}"
    )


@register_source("xarray")
class GriddedSource(Source):
    """Gridded fields from netCDF/GRIB/zarr files through xarray.

    Parameters
    ----------
    config
        A ``kind: xarray`` source config (see module docstring).
    start, end
        Optional inclusive bounds on valid time.
    on_bad_file
        Accepted for interface symmetry with radar sources; an unreadable file always raises
        (xarray opens all files up front), with its name in the message.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        start: TimeLike = None,
        end: TimeLike = None,
        on_bad_file: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(config, start, end)
        self.spec: GriddedSourceConfig = validate_config(self.config, GriddedSourceConfig)
        self.on_bad_file = on_bad_file
        self.files = self._find_files()
        data = self._open()
        self.times = pd.DatetimeIndex(data["time"].values)
        if self.spec.timestep is not None:
            self.timestep = pd.Timedelta(minutes=self.spec.timestep)
        elif len(self.times) > 1:
            self.timestep = pd.Series(self.times).diff().dropna().mode().iloc[0]
        else:
            raise SourceError(f"{self.name}: one time step only; set timestep in the config")
        self.missing = missing_times(self.times, self.timestep, self.start, self.end)
        y, x = data["y"].values, data["x"].values
        units = "degrees" if _is_geographic(data) else str(data["x"].attrs.get("units", "m"))
        self.grid = Grid(
            x=np.asarray(x, float), y=np.asarray(y, float), crs=self.spec.crs, units=units
        )
        self.variable = self.spec.variable
        self.variable_attrs = {
            k: v
            for k, v in data.attrs.items()
            if k in ("units", "standard_name", "long_name") and isinstance(v, str)
        }
        if self.spec.standard_name:
            self.variable_attrs["standard_name"] = self.spec.standard_name
        self.attrs = {"files": len(self.files), "root": self.spec.root}
        self._data: xr.DataArray | None = data
        self._report_gaps()

    def _find_files(self) -> list[str]:
        root = self.spec.root
        patterns = [self.spec.files] if isinstance(self.spec.files, str) else self.spec.files
        found: list[str] = []
        for pattern in patterns:
            found.extend(sorted(glob.glob(os.path.join(root, pattern))))
        if not found:
            raise SourceError(
                f"{self.name}: no file matches {patterns} under {root!r} "
                "(set source.root and source.files)"
            )
        return found

    def _engine(self) -> str:
        if self.spec.engine:
            return self.spec.engine
        ext = os.path.splitext(self.files[0].rstrip("/"))[1].lower()
        if ext not in _ENGINES:
            raise SourceError(
                f"{self.name}: cannot tell the format of {self.files[0]!r}; set source.engine "
                f"to one of {sorted(set(_ENGINES.values()))}"
            )
        return _ENGINES[ext]

    def _open(self) -> xr.DataArray:
        engine = self._engine()
        kwargs = {"chunks": {}, **self.spec.open_kwargs}
        if engine == "cfgrib":
            kwargs.setdefault("backend_kwargs", {"indexpath": ""})
        try:
            if len(self.files) == 1:
                ds = xr.open_dataset(self.files[0], engine=engine, **kwargs)
            else:
                ds = xr.open_mfdataset(self.files, engine=engine, combine="by_coords", **kwargs)
        except Exception as exc:
            raise SourceError(
                f"{self.name}: cannot open {self.files if len(self.files) < 4 else self.files[:3]} "
                f"with engine {engine!r}: {type(exc).__name__}: {exc}"
            ) from exc
        var = self.spec.variable
        if var not in ds.data_vars:
            raise SourceError(
                f"{self.name}: variable {var!r} not in {self.files[0]}; it has {list(ds.data_vars)}"
            )
        data = ds[var]
        if self.spec.select:
            data = data.sel(self.spec.select)
        rename = {v: k for k, v in self.spec.dims.items() if v in data.dims and v != k}
        data = data.rename(rename)
        for dim, candidates in (
            ("y", ("latitude", "lat", "rlat", "projection_y_coordinate")),
            ("x", ("longitude", "lon", "rlon", "projection_x_coordinate")),
        ):
            if dim not in data.dims:
                hit = [c for c in candidates if c in data.dims]
                if hit:
                    data = data.rename({hit[0]: dim})
        if "time" not in data.dims and "valid_time" in data.coords:
            data = data.swap_dims({data["valid_time"].dims[0]: "valid_time"}).rename(
                valid_time="time"
            )
        extra = [d for d in data.dims if d not in ("time", "y", "x")]
        for dim in extra:
            if data.sizes[dim] == 1:
                data = data.isel({dim: 0}, drop=True)
        if set(data.dims) != {"time", "y", "x"}:
            raise SourceError(
                f"{self.name}: variable {var!r} has dims {data.dims}; expected time, y, x "
                "(map them with source.dims, pick extra dims with source.select)"
            )
        data = data.transpose("time", "y", "x").sortby("time")
        if self.start is not None or self.end is not None:
            data = data.sel(time=slice(self.start, self.end))
        if data.sizes["time"] == 0:
            raise SourceError(f"{self.name}: no time step between {self.start} and {self.end}")
        file_units = data.attrs.get("units")
        if self.spec.units is not None and file_units is not None and file_units != self.spec.units:
            raise SourceError(
                f"{self.name}: {var!r} in {self.files[0]} has units {file_units!r}, the config "
                f"expects {self.spec.units!r}"
            )
        units = file_units or self.spec.units
        data = data.astype(np.float32)
        if self.spec.convert_units and units and self.spec.convert_units != units:
            scale, offset = unit_conversion(units, self.spec.convert_units)
            attrs = dict(data.attrs)
            data = data * np.float32(scale) + np.float32(offset)
            data.attrs = attrs
            data.attrs["units"] = self.spec.convert_units
        elif self.spec.convert_units and not units:
            raise SourceError(f"{self.name}: cannot convert units: {var!r} declares none")
        return data.chunk({"time": 1, "y": -1, "x": -1})

    @property
    def data(self) -> xr.DataArray:
        """The lazy ``(time, y, x)`` array (reopened after unpickling)."""
        if self._data is None:
            self._data = self._open()
        return self._data

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_data"] = None  # reopen lazily in the worker process
        return state

    def read(self, index: int) -> np.ndarray:
        """Read time step ``index``: ``(y, x)`` float32 in the (converted) units."""
        return np.asarray(self.data.isel(time=index).values, dtype=np.float32)

    def to_dataset(self) -> xr.Dataset:
        """The lazy CF dataset (xarray's own Dask chunks, one per time step)."""
        from geogen.io.cf import field_dataset

        attrs = dict(self.attrs)
        attrs["gaps"] = [f"{a.isoformat()}/{b.isoformat()}" for a, b in self.gaps()]
        attrs["n_missing"] = len(self.missing)
        return field_dataset(
            self.data.data,
            self.times,
            self.grid,
            variable=self.variable,
            variable_attrs=self.variable_attrs,
            source=self.name,
            timestep_minutes=self.timestep / pd.Timedelta(minutes=1),
            attrs=attrs,
        )

    def describe(self, index: int) -> str:
        """Where frame ``index`` comes from."""
        return f"{self.files[0] if len(self.files) == 1 else self.spec.root} at {self.times[index]}"


def _is_geographic(data: xr.DataArray) -> bool:
    units = str(data["x"].attrs.get("units", ""))
    name = str(data["x"].attrs.get("standard_name", ""))
    return units.startswith("degree") or name == "longitude"
