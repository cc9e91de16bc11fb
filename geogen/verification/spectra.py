"""Radially averaged power spectral density (RAPSD) of forecasts and observations.

The same as :func:`pysteps.utils.spectral.rapsd` (``fft_method=numpy.fft``): power
``|FFT|**2 / size`` averaged over rings of rounded radius, for radii up to half the longest
side (here from the half-plane real FFT, which holds the same power). Vectorised over
members; forecasts are summarised by the member-mean spectrum.
Unscored pixels are set to 0 mm/h first (the FFT needs finite values).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from geogen.verification.interface import (
    Diagram,
    Metric,
    Pair,
    ScoreKey,
    VerificationError,
    register_metric,
)

log = logging.getLogger(__name__)


@lru_cache(maxsize=16)
def _rings(ny: int, nx: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Ring averaging over the half plane of a real FFT.

    Returns the matrix ``(n, y * (x // 2 + 1))`` that averages the ``rfft2`` power over rings
    of rounded radius, the ring sizes (pixels of the full plane) and the ring frequencies.
    The power of a real field is symmetric, ``P(-k) = P(k)``: a column ``0 < kx < x / 2`` of
    the half plane stands for itself and its mirror and counts twice, the ``kx = 0`` column
    (and ``kx = x / 2`` for even ``x``, the mirror of the full plane's ``-x / 2``) once.
    """
    from scipy import sparse

    ky = np.round(np.fft.fftfreq(ny) * ny)
    kx = np.arange(nx // 2 + 1)
    radius = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().astype(np.int64).ravel()
    column_weight = np.full(kx.size, 2.0)
    column_weight[0] = 1.0
    if nx % 2 == 0:
        column_weight[-1] = 1.0
    weight = np.broadcast_to(column_weight, (ny, kx.size)).ravel()
    longest = max(ny, nx)
    n_rings = longest // 2 + 1 if longest % 2 == 1 else longest // 2
    keep = np.flatnonzero(radius < n_rings)
    counts = np.bincount(radius[keep], weights=weight[keep], minlength=n_rings)
    matrix = sparse.csr_matrix(
        (weight[keep] / counts[radius[keep]], (radius[keep], keep)),
        shape=(n_rings, ny * kx.size),
    )
    return matrix, counts, np.fft.fftfreq(longest)[:n_rings]


def rapsd(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RAPSD of each 2-D field of ``(..., y, x)``.

    Computed from the half-plane real FFT (:func:`scipy.fft.rfft2`, float64), half the work of
    pysteps' full complex FFT, with the same rings.

    Returns
    -------
    psd
        ``(..., n)`` mean power per ring of rounded radius (NaN fields give NaN).
    frequency
        ``(n,)`` spatial frequency in cycles per pixel (``numpy.fft.fftfreq``).
    """
    from scipy import fft

    fields = np.asarray(fields, dtype=np.float64)
    ny, nx = fields.shape[-2:]
    matrix, _, frequency = _rings(ny, nx)
    spectrum = fft.rfft2(fields)
    power = spectrum.real**2
    power += spectrum.imag**2
    power /= ny * nx
    flat = power.reshape(-1, matrix.shape[1])
    psd = np.asarray(matrix @ flat.T).T
    return psd.reshape(*fields.shape[:-2], -1), frequency


@register_metric("rapsd")
class PowerSpectrum(Metric):
    """Member-mean RAPSD of forecasts and RAPSD of observations per lead time (diagrams)."""

    summed_only = ("psd", "count", "frequency")

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Spectra of the case.

        ``psd``: ``(lead, 2, n)`` (forecast member mean, observation); ``count``: ``(lead, 1)``
        (1 when the lead has scored pixels); ``frequency``: ``(lead, n)``.
        """
        rows = []
        frequency = np.zeros(0)
        for lead in range(pair.leads):
            valid = pair.valid[lead]
            fct, frequency = rapsd(np.where(valid, pair.forecast[:, lead], 0.0))
            obs, _ = rapsd(np.where(valid, pair.observation[lead], 0.0))
            rows.append(np.stack([fct.mean(axis=0), obs]))
        count = (pair.n_valid > 0).astype(np.float64)[:, None]
        return {
            "psd": np.stack(rows) * count[..., None],
            "count": count,
            "frequency": frequency[None, :] * count,
        }

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """No scalar score."""
        return {}

    def diagrams(self, stats: Mapping[str, np.ndarray]) -> list[Diagram]:
        """``rapsd_forecast`` and ``rapsd_observation``: x is the wavelength in pixels."""
        count = stats["count"]
        psd = stats["psd"] / count[..., None]
        frequency = stats["frequency"] / count
        with np.errstate(divide="ignore"):
            wavelength = np.where(frequency > 0, 1.0 / frequency, np.inf)
        return [
            Diagram("rapsd_forecast", float("nan"), wavelength, psd[:, 0]),
            Diagram("rapsd_observation", float("nan"), wavelength.copy(), psd[:, 1]),
        ]


#: Wavelength bands (km) of the spectral-realism score: octaves from 2 km (the Nyquist
#: wavelength of a 1 km grid) to 256 km (a 256 x 256 crop).
SPECTRAL_BANDS_KM: tuple[tuple[float, float], ...] = (
    (2.0, 4.0),
    (4.0, 8.0),
    (8.0, 16.0),
    (16.0, 32.0),
    (32.0, 64.0),
    (64.0, 128.0),
    (128.0, 256.0),
)


def band_log_ratio(
    psd_forecast: np.ndarray,
    psd_observation: np.ndarray,
    wavelength_km: np.ndarray,
    bands: tuple[tuple[float, float], ...] = SPECTRAL_BANDS_KM,
) -> np.ndarray:
    """Mean ``log10(P_forecast / P_observation)`` over the rings of each wavelength band.

    Parameters
    ----------
    psd_forecast, psd_observation
        ``(..., n)`` RAPSD (e.g. the member-mean spectrum and the observed one) on the same rings.
    wavelength_km
        ``(n,)`` wavelength of each ring in km (``pixel_km / frequency``; ``inf`` for the mean).
    bands
        ``(low, high)`` km; a ring belongs to a band when ``low <= wavelength < high`` (the last
        band also takes ``wavelength == high``).

    Returns
    -------
    ``(..., n_bands)``: 0 where the forecast has the observed power, +1 for ten times too much;
    NaN for a band with no ring, or where either power is 0 or not finite.
    """
    psd_forecast = np.asarray(psd_forecast, dtype=np.float64)
    psd_observation = np.asarray(psd_observation, dtype=np.float64)
    wavelength_km = np.asarray(wavelength_km, dtype=np.float64)
    if psd_forecast.shape != psd_observation.shape or psd_forecast.shape[-1] != wavelength_km.size:
        raise ValueError(
            f"spectra {psd_forecast.shape} and {psd_observation.shape} must share their shape, "
            f"ending with the {wavelength_km.size} rings of wavelength_km"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log10(psd_forecast) - np.log10(psd_observation)
    ratio = np.where(np.isfinite(ratio), ratio, np.nan)
    out = np.full((*ratio.shape[:-1], len(bands)), np.nan)
    for index, (low, high) in enumerate(bands):
        upper = wavelength_km <= high if index == len(bands) - 1 else wavelength_km < high
        rings = np.flatnonzero((wavelength_km >= low) & upper)
        if rings.size:
            values = ratio[..., rings]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[..., index] = np.nanmean(values, axis=-1)
    return out


def band_label(band: tuple[float, float]) -> str:
    """``"2-4"`` for the band ``(2.0, 4.0)`` (km)."""
    return f"{band[0]:g}-{band[1]:g}"


def band_score_name(band: tuple[float, float]) -> str:
    """``"spectral_2-4km"``: the score of one wavelength band in the tidy tables."""
    return f"spectral_{band_label(band)}km"


#: Score name of the largest absolute band log ratio (per lead time).
SPECTRAL_MAX_ABS = "spectral_max_abs"


@register_metric("spectral_bands")
class SpectralBands(Metric):
    """Spectral realism: mean ``log10(P_forecast / P_observation)`` per wavelength band.

    ``P_forecast`` is the member-mean RAPSD (member spectra averaged, as the ``rapsd``
    diagrams), ``P_observation`` the observed RAPSD, both averaged over cases (weighted) before
    the ratio; each band's score is the mean over its rings (:func:`band_log_ratio`). 0 is the
    observed power at that scale, +1 ten times too much (speckle, checkerboards), -1 ten times
    too little (blur). Scores: one per band (``spectral_2-4km`` ... ``spectral_128-256km``)
    and ``spectral_max_abs``, the largest ``|log ratio|`` over the bands that have rings.
    Spectra are kept per case, so bootstrap intervals resample them.

    Parameters
    ----------
    bands
        ``(low, high)`` wavelength bands in km (default :data:`SPECTRAL_BANDS_KM`).
    pixel_km
        Grid spacing in km; None: set by the scorer from the store or forecast grid
        (``Scorer.pixel_size_km``), else 1 km is assumed with a warning.
    """

    def __init__(
        self,
        bands: Sequence[Sequence[float]] = SPECTRAL_BANDS_KM,
        pixel_km: float | None = None,
    ) -> None:
        self.bands = tuple((float(low), float(high)) for low, high in bands)
        if not self.bands or any(not 0 < low < high for low, high in self.bands):
            raise VerificationError(f"bands must be (low, high) km with 0 < low < high: {bands}")
        if pixel_km is not None and not pixel_km > 0:
            raise VerificationError(f"pixel_km must be positive, got {pixel_km}")
        self.pixel_km = pixel_km
        self._warned = False

    def settings(self) -> dict[str, Any]:
        """Bands (km) and grid spacing."""
        return {"bands": [list(b) for b in self.bands], "pixel_km": self.pixel_km}

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Spectra of the case.

        ``psd``: ``(lead, 2, n)`` (member-mean forecast, observation); ``count``: ``(lead,)``
        (1 when the lead has scored pixels); ``frequency``: ``(lead, n)`` (cycles/pixel).
        """
        rows = []
        frequency = np.zeros(0)
        for lead in range(pair.leads):
            valid = pair.valid[lead]
            forecast, frequency = rapsd(np.where(valid, pair.forecast[:, lead], 0.0))
            observed, _ = rapsd(np.where(valid, pair.observation[lead], 0.0))
            rows.append(np.stack([forecast.mean(axis=0), observed]))
        count = (pair.n_valid > 0).astype(np.float64)
        return {
            "psd": np.stack(rows) * count[:, None, None],
            "count": count,
            "frequency": frequency[None, :] * count[:, None],
        }

    def _pixel_km(self) -> float:
        if self.pixel_km is not None:
            return float(self.pixel_km)
        if not self._warned:
            log.warning("spectral_bands: grid spacing unknown, 1 km per pixel assumed")
            self._warned = True
        return 1.0

    def band_ratios(self, stats: Mapping[str, np.ndarray]) -> np.ndarray:
        """``(..., lead, band)`` mean log10 power ratios from summed statistics."""
        count = np.asarray(stats["count"], dtype=np.float64)
        psd = stats["psd"] / count[..., None, None]
        frequency = stats["frequency"] / count[..., None]
        # every case has the same rings: the wavelengths of the first lead and resample
        frequency = frequency.reshape(-1, frequency.shape[-1])
        frequency = frequency[np.isfinite(frequency).all(axis=-1)][:1]
        if frequency.size == 0:
            return np.full((*count.shape, len(self.bands)), np.nan)
        with np.errstate(divide="ignore"):
            wavelength = np.where(frequency[0] > 0, self._pixel_km() / frequency[0], np.inf)
        return band_log_ratio(psd[..., 0, :], psd[..., 1, :], wavelength, self.bands)

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """One score per band and ``spectral_max_abs``: ``(..., lead)``."""
        ratios = self.band_ratios(stats)
        out: dict[ScoreKey, np.ndarray] = {
            (band_score_name(band), float("nan"), 1, "none"): ratios[..., index]
            for index, band in enumerate(self.bands)
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # leads without any ring
            out[(SPECTRAL_MAX_ABS, float("nan"), 1, "none")] = np.nanmax(np.abs(ratios), axis=-1)
        return out
