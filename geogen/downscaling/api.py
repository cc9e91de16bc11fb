"""``geogen.downscale``: run any downscaler on an xarray sequence, get a CF DataArray back."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from geogen.downscaling.interface import (
    DownscaleError,
    Downscaler,
    get_downscaler,
    is_precipitation,
)


def refine_coordinate(coord: np.ndarray, factor: int) -> np.ndarray:
    """Centres of the ``factor`` fine cells inside each coarse cell of a regular axis."""
    coord = np.asarray(coord, dtype=np.float64)
    if coord.size < 2:
        raise DownscaleError("a coordinate axis needs two cells to know its spacing")
    step = np.diff(coord)
    if not np.allclose(step, step[0], rtol=1e-6):
        raise DownscaleError("the low-resolution grid is not regular")
    fine = step[0] / factor
    offsets = (np.arange(factor) - (factor - 1) / 2.0) * fine
    return (coord[:, None] + offsets[None, :]).ravel()


def downscale(
    model: Downscaler | str,
    lowres: xr.DataArray,
    members: int = 1,
    *,
    factor: int | None = None,
    seed: int = 0,
    progress: bool = False,
    **model_kwargs: Any,
) -> xr.DataArray:
    """Downscale a low-resolution sequence into a high-resolution ensemble.

    Parameters
    ----------
    model
        A :class:`~geogen.downscaling.Downscaler` or a registered name built with
        ``model_kwargs``.
    lowres
        ``(time, y, x)`` in physical units, on a regular grid (x/y coordinates optional).
    members
        Ensemble size.
    factor
        Resolution factor; defaults to the model's own (learned models) and is required
        otherwise.
    seed
        Seed of the ensemble.
    progress
        Show a progress bar.

    Returns
    -------
    xarray.DataArray
        Dims ``(member, time, y, x)``, ``factor`` times finer, with refined ``x``/``y``
        coordinates, the ``time`` and ``crs`` of the input, and its units.
    """
    if isinstance(model, str):
        model = get_downscaler(model, **model_kwargs)
    elif model_kwargs:
        raise TypeError("model_kwargs are only used when model is given by name")
    if set(lowres.dims) != {"time", "y", "x"}:
        raise DownscaleError(f"lowres must have dims (time, y, x), not {lowres.dims}")
    lowres = lowres.transpose("time", "y", "x")
    factor = factor or model.factor
    if factor is None:
        raise DownscaleError(f"{model.name} needs a factor (e.g. factor=16)")
    if model.factor is not None and factor != model.factor:
        raise DownscaleError(f"{model.name} was trained for factor {model.factor}, not {factor}")
    if members < 1 or factor < 2:
        raise DownscaleError(f"members ({members}) must be >= 1 and factor ({factor}) >= 2")
    name = lowres.name or "field"
    if model.precipitation_only and not is_precipitation(str(name), dict(lowres.attrs)):
        raise DownscaleError(
            f"{model.name} downscales precipitation; {name!r} (units "
            f"{lowres.attrs.get('units', '?')!r}) is not (use model=interp or a learned model)"
        )
    if model.variable is not None and name != model.variable:
        raise DownscaleError(
            f"{model.name} was trained on {model.variable!r}, the input is {name!r}"
        )
    values = model.predict(
        np.asarray(lowres.values, dtype=np.float32),
        factor=factor,
        members=members,
        seed=seed,
        progress=progress,
    )
    t, ny, nx = lowres.shape
    expected = (members, t, ny * factor, nx * factor)
    if values.shape != expected:
        raise DownscaleError(f"{model.name} returned {values.shape}, expected {expected}")
    coords: dict[str, Any] = {"member": ("member", np.arange(members, dtype=np.int32))}
    if "time" in lowres.coords:
        coords["time"] = lowres["time"]
    for dim in ("y", "x"):
        if dim in lowres.coords:
            coords[dim] = (
                dim,
                refine_coordinate(lowres[dim].values, factor),
                dict(lowres[dim].attrs),
            )
    if "crs" in lowres.coords:
        coords["crs"] = lowres["crs"]
    attrs = {
        k: v
        for k, v in lowres.attrs.items()
        if k in ("units", "standard_name", "long_name", "grid_mapping")
    }
    attrs.update(
        {
            "model": model.name,
            "members": members,
            "seed": seed,
            "factor": factor,
            "settings": model.describe(),
        }
    )
    return xr.DataArray(
        values.astype(np.float32, copy=False),
        dims=("member", "time", "y", "x"),
        coords=coords,
        name=name,
        attrs=attrs,
    )
