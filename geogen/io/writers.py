"""Atomic writing of xarray datasets to CF netCDF or zarr (chosen by the file extension)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from geogen.atomic import atomic_path

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")


def json_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes with nested values (dicts, lists of non-strings) as JSON strings."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        nested = isinstance(value, dict) or (
            isinstance(value, list | tuple)
            and not all(isinstance(v, str | int | float) for v in value)
        )
        out[key] = json.dumps(value, default=str) if nested or isinstance(value, dict) else value
    return out


def decode_json_attrs(attrs: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Decode the JSON-string attributes named in ``keys`` (others pass through)."""
    out = dict(attrs)
    for key in keys:
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass
    return out


def write_dataset(
    ds: xr.Dataset, path: str | os.PathLike, encoding: Mapping[str, Mapping[str, Any]]
) -> Path:
    """Write ``ds`` to ``path`` (``.nc``: netCDF4 with zlib; ``.zarr``: zarr v3), atomically.

    The dataset goes to a hidden temporary path beside ``path`` first and is renamed once
    complete, so ``path`` is either the whole file or absent (a previous file is replaced
    only then).

    Parameters
    ----------
    ds
        The dataset.
    path
        Destination; the extension picks the format.
    encoding
        xarray encoding per variable (``chunks`` for zarr; ``zlib``/``chunksizes`` for netCDF
        are filled in from ``chunks`` when absent).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*NETCDF_SUFFIXES, ".zarr"):
        raise ValueError(f"unknown output type {path.name!r}: use .nc or .zarr")
    enc = {name: dict(value) for name, value in encoding.items()}
    with atomic_path(path) as tmp:
        if suffix == ".zarr":
            for value in enc.values():
                for netcdf_only in ("zlib", "complevel", "chunksizes"):
                    value.pop(netcdf_only, None)
            with warnings.catch_warnings():
                # "Consolidated metadata is currently not part in the Zarr format 3 specification"
                warnings.filterwarnings(
                    "ignore", message="Consolidated metadata", category=UserWarning
                )
                ds.to_zarr(tmp, mode="w", encoding=enc, consolidated=True, zarr_format=3)
        else:
            for value in enc.values():
                chunks = value.pop("chunks", None)
                if chunks is not None:
                    value.setdefault("zlib", True)
                    value.setdefault("complevel", 4)
                    value.setdefault("chunksizes", chunks)
            ds.to_netcdf(tmp, engine="netcdf4", encoding=enc)
    return path


def open_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Open a netCDF or zarr file written by :func:`write_dataset` (lazily).

    The engine is named explicitly (``zarr`` or ``netcdf4``): xarray's engine guessing loads
    every installed backend, cfgrib included, whose ecCodes brings a second PROJ library
    beside pyproj's and can crash the process at exit.
    """
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        return xr.open_zarr(path, decode_timedelta=True)
    return xr.open_dataset(path, engine=netcdf_engine(), decode_timedelta=True)


def netcdf_engine() -> str:
    """``netcdf4`` when netCDF4 is installed, else ``h5netcdf`` (both built into xarray)."""
    import importlib.util

    return "netcdf4" if importlib.util.find_spec("netCDF4") is not None else "h5netcdf"
