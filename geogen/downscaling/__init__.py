"""Downscaling: one interface for learned models and references (interpolation, RainFARM).

- :func:`downscale` (also ``geogen.downscale``): a downscaler + a low-res sequence -> ensemble.
- :func:`get_downscaler` / :func:`register_downscaler`: the registry of methods by name.
- :func:`coarsen`, :func:`read_sequence`, :func:`read_lowres_file`: inputs.
- :func:`write_downscaled`, :func:`open_downscaled`: CF netCDF / zarr outputs.
"""

from geogen.downscaling.api import downscale, refine_coordinate
from geogen.downscaling.interface import (
    DownscaleError,
    Downscaler,
    available_downscalers,
    get_downscaler,
    register_downscaler,
)
from geogen.downscaling.io import (
    coarsen,
    open_downscaled,
    read_lowres_file,
    read_sequence,
    write_downscaled,
)

__all__ = [
    "DownscaleError",
    "Downscaler",
    "available_downscalers",
    "coarsen",
    "downscale",
    "get_downscaler",
    "open_downscaled",
    "read_lowres_file",
    "read_sequence",
    "refine_coordinate",
    "register_downscaler",
    "write_downscaled",
]
