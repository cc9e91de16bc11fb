"""Ensemble forecast generation: one interface for learned models and pysteps references.

- :func:`forecast` (also ``geogen.forecast``): a forecaster + an xarray context -> an ensemble.
- :func:`get_forecaster` / :func:`register_forecaster`: the registry of methods by name.
- :func:`read_context`, :func:`read_observations`: frames straight from an archive.
- :func:`write_forecast`, :func:`open_forecast`: CF netCDF / zarr forecast files.
"""

from geogen.forecasting.api import forecast
from geogen.forecasting.interface import (
    Forecaster,
    ForecastError,
    available_forecasters,
    get_forecaster,
    register_forecaster,
)
from geogen.forecasting.io import (
    expand_region,
    lead_minutes,
    open_forecast,
    read_context,
    read_frames,
    read_observations,
    write_forecast,
)

__all__ = [
    "ForecastError",
    "Forecaster",
    "available_forecasters",
    "expand_region",
    "forecast",
    "get_forecaster",
    "lead_minutes",
    "open_forecast",
    "read_context",
    "read_frames",
    "read_observations",
    "register_forecaster",
    "write_forecast",
]
