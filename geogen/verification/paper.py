"""Downscaling scores in the normalised log units of Leinonen et al. (2020).

Leinonen, Nerini and Berne (2020), "Stochastic super-resolution for downscaling time-evolving
atmospheric fields with a generative adversarial network", IEEE TGRS, score the MeteoSwiss
rain-rate (MCH-RZC) downscaling on transformed values (their code: ``jleinonen/
downscaling-rnn-gan``, ``dsrnngan/data.py`` ``RainRateDecoder``):

    x = log10(R) for R >= 0.1 mm/h, log10(0.025) below; x clipped at log10(100);
    normalised: (x - log10(0.025)) / (log10(100) - log10(0.025))

so 0 is "no rain" (< 0.1 mm/h) and 1 is 100 mm/h. On these values, per 128 x 128 image and
ensemble member, they report the RMSE, the MS-SSIM (data range 1), the log-spectral
distance (LSD, dB) and the CRPS of the ensemble (100 members there). Their table for
MCH-RZC: GAN RMSE 0.097, MS-SSIM 0.680, LSD 8.37, CRPS 0.029; RainFARM LSD 16.48,
CRPS 0.131 (:data:`PAPER_TABLE`).

This module computes the same quantities (our own code): :func:`to_paper_units`,
:func:`log_spectral_distance`, :func:`ms_ssim` (torchmetrics' MS-SSIM, vectorised),
:func:`image_tiles`, and
the streaming metric ``paper`` (scores ``paper_rmse``, ``paper_ms_ssim``, ``paper_lsd``,
``paper_crps``).

Differences from the paper, on purpose or by necessity: the truth is not smoothed (their
batch generator smooths the high-resolution target with a 5 x 5 Gaussian); MS-SSIM is
torchmetrics' (same Gaussian window, sigma 1.5, same 5 scale weights; the 'same' convolution
is reflect-padded where theirs is 'valid', and theirs multiplies the SSIM rather than the
contrast terms of the finer scales, a clipping slip in their ``msssim.py``); fields larger
than a tile are cut into whole ``tile x tile`` images (tiles with an unscored pixel are
skipped).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geogen.verification.interface import (
    Metric,
    Pair,
    ScoreKey,
    VerificationError,
    register_metric,
)
from geogen.verification.probabilistic import crps_per_pixel

#: Rain rates below this (mm/h) are "no rain" in the paper's units.
PAPER_MIN_RAIN = 0.1
#: The log10 value given to "no rain".
PAPER_BELOW = float(np.log10(0.025))
#: log10 of the largest rain rate (100 mm/h); larger values are clipped.
PAPER_MAX = 2.0
#: MS-SSIM scale weights (Wang et al. 2003), as in the paper.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Leinonen et al. (2020), Table (MCH-RZC test set), in the normalised log units.
PAPER_TABLE: dict[str, dict[str, float]] = {
    "GAN (Leinonen et al. 2020)": {
        "paper_rmse": 0.097,
        "paper_ms_ssim": 0.680,
        "paper_lsd": 8.37,
        "paper_crps": 0.029,
    },
    "RainFARM (Leinonen et al. 2020)": {"paper_lsd": 16.48, "paper_crps": 0.131},
}


def to_paper_units(rain: np.ndarray) -> np.ndarray:
    """Rain rates (mm/h) -> the paper's normalised log10 units in [0, 1] (NaN stays NaN).

    ``log10(R)`` for ``R >= 0.1``, ``log10(0.025)`` below, clipped at ``log10(100)``, then
    ``(x - log10(0.025)) / (2 - log10(0.025))``.
    """
    rain = np.asarray(rain, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(
            rain >= PAPER_MIN_RAIN,
            np.log10(np.clip(rain, PAPER_MIN_RAIN, 10.0**PAPER_MAX)),
            PAPER_BELOW,
        )
    x = (x - PAPER_BELOW) / (PAPER_MAX - PAPER_BELOW)
    return np.where(np.isnan(rain), np.nan, x)


def log_spectral_distance(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Log-spectral distance (dB) between fields ``(..., y, x)``, per field.

    ``sqrt(mean((10 log10 |F1|^2 - 10 log10 |F2|^2)^2))`` over the ``y // 2 x x // 2``
    quadrant of the 2-D FFT, leaving out frequencies where either power is 0 (as the paper
    does); NaN when none is left.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.ndim < 2:
        raise VerificationError(
            f"log_spectral_distance needs two (..., y, x) arrays of one shape, got "
            f"{first.shape} and {second.shape}"
        )
    ny, nx = first.shape[-2:]

    def decibels(field: np.ndarray) -> np.ndarray:
        power = np.abs(np.fft.fft2(field)[..., : ny // 2, : nx // 2]) ** 2
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(power)

    with np.errstate(invalid="ignore"):
        squared = (decibels(first) - decibels(second)) ** 2
    squared[~np.isfinite(squared)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN spectra
        return np.sqrt(np.nanmean(squared, axis=(-2, -1)))


def gaussian_window(sigma: float) -> np.ndarray:
    """The 1-D Gaussian window of torchmetrics' SSIM: ``2 * int(3.5 sigma + 0.5) + 1`` wide."""
    half = int(3.5 * sigma + 0.5)
    distance = np.arange(-half, half + 1, dtype=np.float64)
    window = np.exp(-0.5 * (distance / sigma) ** 2)
    return window / window.sum()


def _ssim_and_contrast(
    first: np.ndarray, second: np.ndarray, window: np.ndarray, data_range: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and contrast term per field, as torchmetrics computes them."""
    from scipy.ndimage import correlate1d

    def blur(field: np.ndarray) -> np.ndarray:  # reflect padding, then a 'valid' window
        out = correlate1d(field, window, axis=-1, mode="mirror")
        return correlate1d(out, window, axis=-2, mode="mirror")

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu1, mu2 = blur(first), blur(second)
    var1 = np.maximum(blur(first * first) - mu1**2, 0.0)
    var2 = np.maximum(blur(second * second) - mu2**2, 0.0)
    cov = blur(first * second) - mu1 * mu2
    upper = 2.0 * cov + c2
    lower = var1 + var2 + c2
    ssim = ((2.0 * mu1 * mu2 + c1) * upper) / ((mu1**2 + mu2**2 + c1) * lower)
    pad = len(window) // 2
    contrast = (upper / lower)[..., pad:-pad, pad:-pad]  # torchmetrics drops the padded rim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty rim-less field (unused)
        return ssim.mean(axis=(-2, -1)), contrast.mean(axis=(-2, -1))


def ms_ssim(
    first: np.ndarray,
    second: np.ndarray,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    betas: Sequence[float] = MS_SSIM_BETAS,
) -> np.ndarray:
    """Multi-scale SSIM between fields ``(..., y, x)``, per field.

    The same as torchmetrics'
    :func:`~torchmetrics.functional.image.multiscale_structural_similarity_index_measure`
    (Gaussian window of standard deviation ``sigma``, 11 pixels wide for 1.5, reflect padding,
    ``len(betas)`` scales of 2 x 2 average pooling, ``normalize="relu"``, ``k1=0.01``,
    ``k2=0.03``), vectorised in float64 with separable filters (torchmetrics' 2-D float64
    convolution takes about a minute for 160 images of 128 x 128 on one CPU core; this takes
    about a second). The tests check both agree to 1e-5. 128 x 128 images take five scales
    (the coarsest is 8 x 8); fields need a coarsest scale wider than half the window.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.shape != second.shape or first.ndim < 2:
        raise VerificationError(
            f"ms_ssim needs two (..., y, x) arrays of one shape, got {first.shape} and "
            f"{second.shape}"
        )
    ny, nx = first.shape[-2:]
    window = gaussian_window(sigma)
    coarsest = min(ny, nx) // 2 ** (len(betas) - 1)
    if coarsest <= len(window) // 2:
        raise VerificationError(
            f"ms_ssim: {ny} x {nx} fields are too small for {len(betas)} scales with sigma "
            f"{sigma} (the coarsest scale, {coarsest} px, must exceed {len(window) // 2} px)"
        )
    terms = []
    ssim = np.zeros(first.shape[:-2])
    for level in range(len(betas)):
        ssim, contrast = _ssim_and_contrast(first, second, window, data_range)
        terms.append(np.maximum(contrast, 0.0))
        if level < len(betas) - 1:
            first, second = _pool2(first), _pool2(second)
    terms[-1] = np.maximum(ssim, 0.0)
    weights = np.asarray(betas, dtype=np.float64)
    return np.prod([t**w for t, w in zip(terms, weights, strict=True)], axis=0)


def _pool2(field: np.ndarray) -> np.ndarray:
    """2 x 2 average pooling of the last two axes (an odd last row/column is dropped)."""
    ny, nx = field.shape[-2] // 2, field.shape[-1] // 2
    cut = field[..., : 2 * ny, : 2 * nx]
    return cut.reshape(*field.shape[:-2], ny, 2, nx, 2).mean(axis=(-3, -1))


def image_tiles(field: np.ndarray, size: int) -> np.ndarray:
    """Whole ``size x size`` tiles of ``(..., y, x)``: ``(..., tile, size, size)``.

    Tiles start at the top-left corner; a remainder narrower than ``size`` is left out.
    A field smaller than ``size`` in either direction gives no tile.
    """
    field = np.asarray(field)
    ny, nx = field.shape[-2:]
    ty, tx = ny // size, nx // size
    cut = field[..., : ty * size, : tx * size]
    shaped = cut.reshape(*field.shape[:-2], ty, size, tx, size)
    shaped = np.moveaxis(shaped, -3, -2)  # (..., ty, tx, size, size)
    return shaped.reshape(*field.shape[:-2], ty * tx, size, size)


@register_metric("paper")
class PaperUnits(Metric):
    """RMSE, MS-SSIM, LSD per member and image, and CRPS, in the paper's normalised units.

    Per lead (frame): the fields are cut into ``tile x tile`` images; images with an unscored
    pixel are skipped. RMSE, MS-SSIM and LSD are computed for every (member, image) against
    the truth and averaged (the paper scores single generated samples, not the ensemble
    mean); the CRPS of the ensemble is averaged over every scored pixel.

    Parameters
    ----------
    tile
        Image size in pixels (the paper's 128).
    sigma
        MS-SSIM Gaussian window standard deviation (pixels).
    """

    def __init__(self, tile: int = 128, sigma: float = 1.5) -> None:
        if tile < 2:
            raise VerificationError(f"paper.tile must be >= 2 pixels, got {tile}")
        self.tile = int(tile)
        self.sigma = float(sigma)

    def settings(self) -> dict[str, Any]:
        """Tile size and MS-SSIM window."""
        return {"tile": self.tile, "sigma": self.sigma, "betas": list(MS_SSIM_BETAS)}

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Sums per lead.

        ``sums``: ``(lead, 6)``: images, sum of RMSE, sum of MS-SSIM and images with one,
        sum of LSD and images with one; ``crps``: ``(lead, 2)``: sum and pixels.
        """
        forecast = to_paper_units(pair.forecast)  # (member, lead, y, x)
        truth = to_paper_units(pair.observation)  # (lead, y, x)
        sums = np.zeros((pair.leads, 6))
        crps = np.zeros((pair.leads, 2))
        for lead in range(pair.leads):
            values = crps_per_pixel(forecast[:, lead], truth[lead])
            finite = np.isfinite(values)
            crps[lead] = values[finite].sum(), finite.sum()
            if min(truth.shape[-2:]) < self.tile:
                continue
            complete = image_tiles(pair.valid[lead], self.tile).all(axis=(-2, -1))
            if not complete.any():
                continue
            obs = image_tiles(truth[lead], self.tile)[complete]  # (image, t, t)
            fct = image_tiles(forecast[:, lead], self.tile)[:, complete]  # (member, image, t, t)
            obs_b = np.broadcast_to(obs, fct.shape)
            rmse = np.sqrt(((fct - obs_b) ** 2).mean(axis=(-2, -1)))
            lsd = log_spectral_distance(fct, obs_b)
            try:
                ssim = ms_ssim(fct, obs_b, sigma=self.sigma)
            except VerificationError:
                ssim = np.full(rmse.shape, np.nan)
            sums[lead] = (
                rmse.size,
                rmse.sum(),
                np.nansum(ssim),
                np.isfinite(ssim).sum(),
                np.nansum(lsd),
                np.isfinite(lsd).sum(),
            )
        return {"sums": sums, "crps": crps}

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """``paper_rmse``/``_ms_ssim``/``_lsd`` (scale: tile), ``paper_crps``: ``(..., lead)``."""
        s, c = stats["sums"], stats["crps"]
        nan = float("nan")
        return {
            ("paper_rmse", nan, self.tile, "none"): s[..., 1] / s[..., 0],
            ("paper_ms_ssim", nan, self.tile, "none"): s[..., 2] / s[..., 3],
            ("paper_lsd", nan, self.tile, "none"): s[..., 4] / s[..., 5],
            ("paper_crps", nan, 1, "none"): c[..., 0] / c[..., 1],
        }
