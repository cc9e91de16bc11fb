"""Seeded synthetic rain fields for unit tests and demos.

The fields are built in three steps, all vectorised with :mod:`numpy.fft`:

1. **Latent Gaussian field** (:func:`latent_gaussian_field`). White noise is filtered in
   Fourier space so that the radially averaged power spectrum follows ``k**-spectral_slope``.
   Each Fourier mode then evolves as an AR(1) process with a scale-dependent lifetime (small
   scales decorrelate faster, as in the cascade of pysteps' S-PROG/STEPS), and the whole field
   is advected by a constant velocity through a Fourier phase shift, so sub-pixel motion is
   exact on the periodic domain.
2. **Intermittency.** Each standardised frame is thresholded at its ``1 - wet_fraction``
   quantile: pixels below it are dry (exactly zero).
3. **Rain rate.** The excess over the threshold is mapped through an exponential, so the
   wet-pixel rain rate is a truncated log-normal (the same construction as a thresholded
   Gaussian field in dB units in pysteps), scaled so that the mean over wet pixels of the whole
   sequence equals ``mean_wet_rain``.

:func:`synthetic_dataset` wraps the rain fields into the same CF-style dataset a radar source
produces (:func:`geogen.io.cf.field_dataset`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geogen.io.cf import PRECIP_ATTRS, Grid, field_dataset

log = logging.getLogger(__name__)

#: Projection of synthetic datasets: polar stereographic, true at 60°N (as many radar
#: composites).
SYNTHETIC_CRS = "+proj=stere +lat_0=90 +lon_0=0 +lat_ts=60 +ellps=WGS84 +units=m +no_defs"

#: Centre ``(x, y)`` of synthetic grids in :data:`SYNTHETIC_CRS`, metres (about 50°N, 10°E).
SYNTHETIC_CENTRE: tuple[float, float] = (750_000.0, -4_275_000.0)

#: Standard deviation of the natural logarithm of the rain rate per standard deviation of the
#: latent field (about 6.5 dB): sets the spread of wet-pixel intensities. With the defaults
#: of :func:`synthetic_rain` the wet pixels range from about 0.5 mm/h at the edges of rain
#: areas over a median of about 1 mm/h to peaks of 100 mm/h and more.
LOG_RAIN_STD = 1.5

#: Smallest grid dimension accepted: below it almost no Fourier modes are left once the mean
#: and the Nyquist modes are removed.
MIN_SIZE = 4


def latent_gaussian_field(
    n_times: int,
    shape: tuple[int, int] = (256, 256),
    *,
    seed: int = 0,
    velocity: tuple[float, float] = (0.5, 1.5),
    spectral_slope: float = 3.0,
    lifetime: float = 20.0,
    lifetime_exponent: float = 0.5,
) -> np.ndarray:
    """Advected, slowly evolving Gaussian random field with a power-law spectrum.

    In Fourier space, with ``k`` the wavenumber in cycles per pixel and ``k0 = 1 / max(ny, nx)``
    the wavenumber of the domain scale, every mode follows

    ``Z[t](k) = exp(-2πi k·v) (φ(k) Z[t-1](k) + sqrt(1 - φ(k)²) A(k) W[t](k))``

    with ``W[t]`` the transform of white noise, ``A(k) = (k / k0)**(-spectral_slope / 2)``,
    ``φ(k) = exp(-1 / τ(k))`` and ``τ(k) = lifetime * (k / k0)**(-lifetime_exponent)``. The
    process is stationary: every frame has the same power spectrum ``A(k)²``. The mean and the
    Nyquist modes are set to zero (a Nyquist mode cannot be shifted by a fraction of a pixel).
    The domain is periodic.

    Parameters
    ----------
    n_times
        Number of frames, ``time``.
    shape
        Grid size ``(ny, nx)``, pixels, each at least 4.
    seed
        Non-negative seed of :func:`numpy.random.default_rng`; the same seed gives a
        bit-identical field.
    velocity
        Advection ``(vy, vx)`` in pixels per time step along the array axes (row, column): a
        positive ``vy`` moves features towards higher row indices. Note the order differs from
        pysteps' motion fields, which are ``(u, v) = (vx, vy)``.
    spectral_slope
        Exponent ``β >= 0`` of the radially averaged power spectrum ``P(k) ~ k**-β``
        (0 is white noise, 3 is typical of radar rain fields).
    lifetime
        E-folding time of the autocorrelation of the domain-scale mode, in time steps (> 0;
        ``math.inf`` freezes the field so that it is purely advected).
    lifetime_exponent
        How fast the lifetime shrinks with scale, ``>= 0``: ``τ(k) ∝ k**-lifetime_exponent``
        (0 gives every scale the same lifetime).

    Returns
    -------
    numpy.ndarray
        Shape ``(time, y, x)``, float64, each frame standardised to zero mean and unit
        variance (dimensionless).

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    ny, nx = _check_common(n_times, shape, velocity, spectral_slope, lifetime, lifetime_exponent)
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(seed)

    ky = np.fft.fftfreq(ny)[:, np.newaxis]  # cycles per pixel
    kx = np.fft.rfftfreq(nx)[np.newaxis, :]
    k_domain = 1.0 / max(ny, nx)
    relative_k = np.maximum(np.hypot(ky, kx), k_domain) / k_domain  # >= 1

    resolved = (ky != 0) | (kx != 0)
    resolved &= (np.abs(ky) < 0.5) & (kx < 0.5)  # drop the Nyquist modes of even sizes
    amplitude = np.where(resolved, relative_k ** (-spectral_slope / 2.0), 0.0)

    inverse_tau = relative_k**lifetime_exponent / lifetime  # 1 / τ(k); 0 when lifetime is inf
    persistence = np.exp(-inverse_tau)
    innovation = amplitude * np.sqrt(-np.expm1(-2.0 * inverse_tau))
    vy, vx = velocity
    propagator = persistence * np.exp(-2j * np.pi * (ky * vy + kx * vx))

    field = np.empty((n_times, ny, nx), dtype=np.float64)
    spectrum = amplitude * np.fft.rfft2(rng.standard_normal((ny, nx)))
    field[0] = np.fft.irfft2(spectrum, s=(ny, nx))
    for step in range(1, n_times):
        noise = np.fft.rfft2(rng.standard_normal((ny, nx)))
        spectrum = propagator * spectrum + innovation * noise
        field[step] = np.fft.irfft2(spectrum, s=(ny, nx))

    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True)
    return field


def synthetic_rain(
    n_times: int,
    shape: tuple[int, int] = (256, 256),
    *,
    seed: int = 0,
    velocity: tuple[float, float] = (0.5, 1.5),
    spectral_slope: float = 3.0,
    wet_fraction: float = 0.35,
    mean_wet_rain: float = 2.0,
    lifetime: float = 20.0,
    lifetime_exponent: float = 0.5,
) -> np.ndarray:
    """Seeded synthetic rain-rate fields: correlated, advected, evolving and intermittent.

    With ``z`` the latent field of :func:`latent_gaussian_field` (standard normal per frame)
    and ``q[t]`` the ``1 - wet_fraction`` quantile of frame ``t``, the rain rate is

    ``R[t] = a * exp(LOG_RAIN_STD * (z[t] - q[t]))`` where ``z[t] > q[t]``, and 0 elsewhere,

    with the constant ``a`` (mm/h, the rain rate at the edge of rain areas) chosen so that the
    mean over all wet pixels of all frames equals ``mean_wet_rain``. Every frame therefore has
    a wet fraction within one pixel of ``wet_fraction``, and frame ``t + 1`` is close to frame
    ``t`` shifted by ``velocity`` (exactly so, on the periodic domain, when ``lifetime`` is
    infinite and the velocity is a whole number of pixels).

    Parameters
    ----------
    n_times
        Number of frames, ``time``.
    shape
        Grid size ``(ny, nx)``, pixels, each at least 4.
    seed
        Seed of :func:`numpy.random.default_rng`; the same seed gives a bit-identical array.
    velocity
        Advection ``(vy, vx)`` in pixels per time step along the array axes (row, column).
    spectral_slope
        Exponent ``β >= 0`` of the power spectrum ``k**-β`` of the latent Gaussian field.
    wet_fraction
        Fraction of wet (> 0) pixels in each frame, in ``(0, 1)``.
    mean_wet_rain
        Mean rain rate over wet pixels, mm/h, > 0.
    lifetime
        Temporal decorrelation (e-folding) time of the domain-scale features, time steps
        (> 0, may be ``math.inf``); smaller scales decorrelate faster.
    lifetime_exponent
        Scale dependence of the lifetime, ``τ(k) ∝ k**-lifetime_exponent`` (``>= 0``).

    Returns
    -------
    numpy.ndarray
        Rain rate, shape ``(time, y, x)``, float32, mm/h: finite, ``>= 0`` and exactly 0 at dry
        pixels.

    Raises
    ------
    ValueError
        If an argument is out of range.

    Examples
    --------
    >>> rain = synthetic_rain(8, (64, 64), seed=1)
    >>> rain.shape, rain.dtype
    ((8, 64, 64), dtype('float32'))
    """
    if not 0.0 < wet_fraction < 1.0:
        raise ValueError(f"wet_fraction must lie in (0, 1), got {wet_fraction}")
    if not (math.isfinite(mean_wet_rain) and mean_wet_rain > 0):
        raise ValueError(f"mean_wet_rain must be a positive number of mm/h, got {mean_wet_rain}")
    latent = latent_gaussian_field(
        n_times,
        shape,
        seed=seed,
        velocity=velocity,
        spectral_slope=spectral_slope,
        lifetime=lifetime,
        lifetime_exponent=lifetime_exponent,
    )
    threshold = np.quantile(latent.reshape(n_times, -1), 1.0 - wet_fraction, axis=1)
    excess = latent - threshold[:, np.newaxis, np.newaxis]
    wet = excess > 0
    rain = np.zeros(latent.shape, dtype=np.float32)
    if not wet.any():  # pragma: no cover - only for a constant latent field
        return rain
    growth = np.exp(LOG_RAIN_STD * excess[wet])
    rain[wet] = (mean_wet_rain / growth.mean()) * growth
    log.debug(
        "synthetic rain: %d frames of %s pixels, seed %d, wet fraction %g, wet mean %g mm/h",
        n_times,
        latent.shape[1:],
        seed,
        wet_fraction,
        mean_wet_rain,
    )
    return rain


def synthetic_dataset(
    n_times: int,
    shape: tuple[int, int] = (256, 256),
    *,
    seed: int = 0,
    start: Any = "2020-01-01T00:00",
    timestep_minutes: float = 5.0,
    pixel_size: float = 1000.0,
    nan_border: int = 0,
    **field_kwargs: Any,
) -> xr.Dataset:
    """Synthetic rain wrapped exactly like a radar source (see :mod:`geogen.io.cf`).

    The grid is centred on :data:`SYNTHETIC_CENTRE` in :data:`SYNTHETIC_CRS`, with ``y``
    decreasing along the rows (row 0 is the northern edge, as in radar composites).

    Parameters
    ----------
    n_times
        Number of frames, ``time``.
    shape
        Grid size ``(ny, nx)``, pixels.
    seed
        Seed of the generator (see :func:`synthetic_rain`).
    start
        Valid time of the first frame (anything :class:`pandas.Timestamp` accepts).
    timestep_minutes
        Time between frames, minutes, > 0.
    pixel_size
        Grid spacing, metres, > 0.
    nan_border
        Width in pixels of a frame of NaN along every edge of every frame, mimicking pixels
        outside the radar domain (``0 <= 2 * nan_border < min(shape)``).
    **field_kwargs
        Further arguments of :func:`synthetic_rain` (``velocity``, ``spectral_slope``,
        ``wet_fraction``, ``mean_wet_rain``, ``lifetime``, ``lifetime_exponent``).

    Returns
    -------
    xarray.Dataset
        Variable ``precip`` of shape ``(time, y, x)``, float32, mm/h, with coordinates
        ``time``, ``y``, ``x`` (cell centres, metres) and ``crs``; ``attrs`` name the source
        (``"synthetic"``), the time step (minutes) and the generator parameters
        (``synthetic_*``).

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    if not (math.isfinite(timestep_minutes) and timestep_minutes > 0):
        raise ValueError(f"timestep_minutes must be positive, got {timestep_minutes}")
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of metres, got {pixel_size}")
    ny, nx = _check_shape(shape)
    if not _is_int(nan_border) or nan_border < 0 or 2 * nan_border >= min(ny, nx):
        raise ValueError(
            f"nan_border must be an integer with 0 <= 2 * nan_border < {min(ny, nx)}, "
            f"got {nan_border}"
        )

    rain = synthetic_rain(n_times, (ny, nx), seed=seed, **field_kwargs)
    if nan_border:
        rain[:, :nan_border, :] = np.nan
        rain[:, -nan_border:, :] = np.nan
        rain[:, :, :nan_border] = np.nan
        rain[:, :, -nan_border:] = np.nan

    centre_x, centre_y = SYNTHETIC_CENTRE
    grid = Grid(
        x=centre_x + pixel_size * (np.arange(nx) + 0.5 - nx / 2.0),
        y=centre_y - pixel_size * (np.arange(ny) + 0.5 - ny / 2.0),
        crs=SYNTHETIC_CRS,
        units="m",
    )
    times = pd.date_range(
        pd.Timestamp(start), periods=n_times, freq=pd.Timedelta(minutes=timestep_minutes)
    )
    parameters = _generator_parameters(seed, nan_border, field_kwargs)
    return field_dataset(
        rain,
        times,
        grid,
        variable="precip",
        variable_attrs=PRECIP_ATTRS,
        source="synthetic",
        timestep_minutes=timestep_minutes,
        attrs={f"synthetic_{key}": value for key, value in parameters.items()},
    )


def _generator_parameters(
    seed: int, nan_border: int, field_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """All generator parameters (defaults filled in) as netCDF/zarr-friendly attributes."""
    defaults = {
        "velocity": (0.5, 1.5),
        "spectral_slope": 3.0,
        "wet_fraction": 0.35,
        "mean_wet_rain": 2.0,
        "lifetime": 20.0,
        "lifetime_exponent": 0.5,
    }
    merged = {**defaults, **field_kwargs}
    parameters: dict[str, Any] = {"seed": int(seed), "nan_border": int(nan_border)}
    for key, value in merged.items():
        if key == "velocity":
            parameters[key] = [float(component) for component in value]
        else:
            parameters[key] = float(value)
    return parameters


def _is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), excluding booleans."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    """Validate a ``(ny, nx)`` grid size and return it as a tuple of ints."""
    if len(shape) != 2 or not all(_is_int(size) for size in shape):
        raise ValueError(f"shape must be two integers (ny, nx), got {shape!r}")
    ny, nx = int(shape[0]), int(shape[1])
    if min(ny, nx) < MIN_SIZE:
        raise ValueError(f"shape must be at least ({MIN_SIZE}, {MIN_SIZE}), got {shape!r}")
    return ny, nx


def _check_common(
    n_times: int,
    shape: Sequence[int],
    velocity: Sequence[float],
    spectral_slope: float,
    lifetime: float,
    lifetime_exponent: float,
) -> tuple[int, int]:
    """Validate the arguments of the latent field; return ``(ny, nx)``."""
    if not _is_int(n_times) or n_times < 1:
        raise ValueError(f"n_times must be a positive integer, got {n_times!r}")
    ny, nx = _check_shape(shape)
    if len(velocity) != 2 or not all(math.isfinite(component) for component in velocity):
        raise ValueError(f"velocity must be two finite numbers (vy, vx), got {velocity!r}")
    if not (math.isfinite(spectral_slope) and spectral_slope >= 0):
        raise ValueError(f"spectral_slope must be finite and >= 0, got {spectral_slope}")
    if not lifetime > 0:
        raise ValueError(f"lifetime must be > 0 time steps (inf allowed), got {lifetime}")
    if not (math.isfinite(lifetime_exponent) and lifetime_exponent >= 0):
        raise ValueError(f"lifetime_exponent must be finite and >= 0, got {lifetime_exponent}")
    return ny, nx
