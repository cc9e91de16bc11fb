"""Radially averaged power spectral density (RAPSD) of forecasts and observations.

The same as :func:`pysteps.utils.spectral.rapsd` (``fft_method=numpy.fft``): power
``|FFT|**2 / size`` averaged over rings of rounded radius, for radii up to half the longest
side. Vectorised over members; forecasts are summarised by the member-mean spectrum.
Unscored pixels are set to 0 mm/h first (the FFT needs finite values).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from geogen.verification.interface import Diagram, Metric, Pair, ScoreKey, register_metric


@lru_cache(maxsize=16)
def _rings(ny: int, nx: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Ring-averaging matrix ``(y * x, n)`` of fft-shifted frequencies, ring sizes, frequencies."""
    from scipy import sparse

    yc = np.arange(ny) - ny // 2
    xc = np.arange(nx) - nx // 2
    radius = np.sqrt(yc[:, None] ** 2 + xc[None, :] ** 2).round().astype(np.int64).ravel()
    longest = max(ny, nx)
    n_rings = longest // 2 + 1 if longest % 2 == 1 else longest // 2
    keep = np.flatnonzero(radius < n_rings)
    counts = np.bincount(radius[keep], minlength=n_rings).astype(np.float64)
    matrix = sparse.csr_matrix(
        (1.0 / counts[radius[keep]], (keep, radius[keep])), shape=(ny * nx, n_rings)
    )
    return matrix, counts, np.fft.fftfreq(longest)[:n_rings]


def rapsd(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RAPSD of each 2-D field of ``(..., y, x)``.

    Returns
    -------
    psd
        ``(..., n)`` mean power per ring of rounded radius (NaN fields give NaN).
    frequency
        ``(n,)`` spatial frequency in cycles per pixel (``numpy.fft.fftfreq``).
    """
    fields = np.asarray(fields, dtype=np.float64)
    ny, nx = fields.shape[-2:]
    matrix, _, frequency = _rings(ny, nx)
    power = np.abs(np.fft.fftshift(np.fft.fft2(fields), axes=(-2, -1))) ** 2 / (ny * nx)
    psd = np.asarray(power.reshape(-1, ny * nx) @ matrix)
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
