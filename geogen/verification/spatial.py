"""Fractions skill score (Roberts and Lean 2008) at spatial scales and thresholds.

Identical to :func:`pysteps.verification.spatialscores.fss` (events ``value >= threshold``,
fractions from a ``scale x scale`` moving average with zero padding, non-finite pixels as
non-events), computed with summed-area tables so every scale costs the same, and summed over
members for ensembles (pysteps' ``fss_accum`` called once per member) or taken on the
ensemble mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geogen.verification.interface import (
    Metric,
    Pair,
    ScoreKey,
    VerificationError,
    as_scales,
    as_thresholds,
    register_metric,
)

#: Index of each sum in the last axis of FSS statistics.
SUM_FCT_SQ, SUM_FCT_OBS, SUM_OBS_SQ = range(3)


def padded_summed_area_table(
    binary: np.ndarray, pad: int, dtype: np.dtype | type | None = None
) -> np.ndarray:
    """Summed-area table of the last two axes, padded for windows reaching ``pad`` outside.

    Entry ``[..., pad + i, pad + j]`` is the sum of ``binary[..., :i, :j]``; rows and columns
    before the field are 0 and those after repeat the last one (zero padding of the field).
    Integer so that every window sum is exact: by default int32 for a binary field that
    small enough, else int64 (``dtype`` overrides: the caller knows the values' bound).
    """
    ny, nx = binary.shape[-2:]
    if dtype is None:
        small = binary.dtype == bool and ny * nx < 2**31
        dtype = np.int32 if small else np.int64
    shape = (*binary.shape[:-2], ny + 1 + 2 * pad, nx + 1 + 2 * pad)
    table = np.zeros(shape, dtype=dtype)
    inner = table[..., pad + 1 : pad + 1 + ny, pad + 1 : pad + 1 + nx]
    np.cumsum(binary, axis=-1, dtype=dtype, out=inner)
    np.cumsum(inner, axis=-2, out=inner)
    table[..., pad + 1 + ny :, :] = table[..., pad + ny : pad + ny + 1, :]
    table[..., pad + 1 + nx :] = table[..., pad + nx : pad + nx + 1]
    return table


def _box_sum(
    table: np.ndarray,
    pad: int,
    size: int,
    shape: tuple[int, int],
    out: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Window sums for ``size`` (scipy ``uniform_filter`` placement: ``i - size // 2`` on).

    Two passes: the difference of two table rows (``rows``, a buffer of ``(..., y, x + 1 + 2
    pad)``), then of two of its columns (into ``out`` when given).
    """
    ny, nx = shape
    lo = pad - size // 2
    hi = lo + size
    rows = np.subtract(table[..., hi : hi + ny, :], table[..., lo : lo + ny, :], out=rows)
    return np.subtract(rows[..., hi : hi + nx], rows[..., lo : lo + nx], out=out)


def box_sum(binary: np.ndarray, size: int) -> np.ndarray:
    """Sum over a ``size x size`` window around each pixel of the last two axes (zero padded).

    ``box_sum(a, s) / s**2`` equals ``scipy.ndimage.uniform_filter(a, s, mode="constant")``
    applied to each 2-D slice (``a`` of integers, e.g. a binary field).
    """
    table = padded_summed_area_table(np.asarray(binary), size)
    return _box_sum(table, size, size, binary.shape[-2:])


#: Members whose summed-area tables are built together (a few MB: the passes stay in cache).
MEMBER_BLOCK = 4


def fss_statistics(
    forecast: np.ndarray,
    observation: np.ndarray,
    thresholds: Sequence[float] | float,
    scales: Sequence[int] | int,
) -> np.ndarray:
    """FSS sums per lead, threshold and scale, summed over members.

    Every window sum comes from a summed-area table (two subtractions per scale, whatever
    the scale). The forecast-observation term needs only the window sums of the number of
    members forecasting the event, so one table serves all members; the forecast squares are
    summed over blocks of :data:`MEMBER_BLOCK` members, exactly, in integers.

    Parameters
    ----------
    forecast
        ``(member, lead, y, x)`` mm/h (non-finite values are non-events).
    observation
        ``(lead, y, x)`` mm/h.
    thresholds
        Event thresholds (``value >= threshold``), mm/h.
    scales
        Neighbourhood widths in pixels.

    Returns
    -------
    numpy.ndarray
        ``(lead, threshold, scale, 3)``: sums of forecast fractions squared, of forecast x
        observed fractions, of observed fractions squared (pysteps' ``fss_accum`` sums, the
        observation counted once per member). Window sums are exact integers.
    """
    forecast = np.asarray(forecast)
    observation = np.asarray(observation)
    if forecast.ndim != 4 or observation.shape != forecast.shape[1:]:
        raise VerificationError(
            f"forecast (member, lead, y, x) {forecast.shape} and observation (lead, y, x) "
            f"{observation.shape} do not match"
        )
    thr = as_thresholds(thresholds)
    sizes = as_scales(scales)
    members, leads = forecast.shape[:2]
    ny, nx = shape = forecast.shape[-2:]
    pad = max(sizes)
    block = min(MEMBER_BLOCK, members)
    width = nx + 1 + 2 * pad
    # Window sums are <= size**2 and their squares <= size**4: int32 while that fits.
    exact32 = pad**4 < 2**31 and members * ny * nx < 2**31
    window = np.empty((block, ny, nx), dtype=np.int32 if exact32 else np.int64)
    rows = np.empty((block, ny, width), dtype=window.dtype)
    out = np.zeros((leads, thr.size, len(sizes), 3))
    area2 = np.asarray(sizes, dtype=np.float64) ** 4
    for lead in range(leads):
        for k, t in enumerate(thr):
            events = forecast[:, lead] >= t
            obs_table = padded_summed_area_table(observation[lead] >= t, pad)
            count_table = padded_summed_area_table(
                np.count_nonzero(events, axis=0), pad, window.dtype
            )
            squares = np.zeros(len(sizes), dtype=np.int64)
            for j, size in enumerate(sizes):
                if size == 1:  # the window sums are the events themselves: 0 or 1
                    squares[j] = np.count_nonzero(events)
            wide = [j for j, size in enumerate(sizes) if size > 1]
            for first in range(0, members, block) if wide else ():
                table = padded_summed_area_table(events[first : first + block], pad, window.dtype)
                n = table.shape[0]
                for j in wide:
                    sums = _box_sum(table, pad, sizes[j], shape, window[:n], rows[:n])
                    np.multiply(sums, sums, out=sums)
                    squares[j] += sums.sum(dtype=np.int64)
            for j, size in enumerate(sizes):
                obs_sum = _box_sum(obs_table, pad, size, shape).astype(np.int64)
                count_sum = _box_sum(count_table, pad, size, shape)
                cross = np.einsum("ij,ij->", count_sum, obs_sum, dtype=np.int64)
                obs_sq = np.einsum("ij,ij->", obs_sum, obs_sum, dtype=np.int64)
                out[lead, k, j] = squares[j], cross, members * obs_sq
            out[lead, k] /= area2[:, None]
    return out


def fss_from_statistics(stats: np.ndarray) -> np.ndarray:
    """FSS from summed statistics ``(..., 3)``: ``1 - MSE(fractions) / reference MSE``."""
    stats = np.asarray(stats, dtype=np.float64)
    numer = stats[..., SUM_FCT_SQ] - 2.0 * stats[..., SUM_FCT_OBS] + stats[..., SUM_OBS_SQ]
    denom = stats[..., SUM_FCT_SQ] + stats[..., SUM_OBS_SQ]
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - numer / denom


def fss(forecast: np.ndarray, observation: np.ndarray, threshold: float, scale: int) -> float:
    """FSS of one 2-D field pair (the same as ``pysteps.verification.spatialscores.fss``)."""
    forecast = np.asarray(forecast)
    if forecast.ndim != 2 or np.shape(observation) != forecast.shape:
        raise VerificationError("fss needs two 2-D fields of the same shape")
    stats = fss_statistics(forecast[None, None], np.asarray(observation)[None], threshold, scale)
    return float(fss_from_statistics(stats)[0, 0, 0])


@register_metric("fss")
class FractionsSkillScore(Metric):
    """FSS per lead time, threshold (mm/h) and scale (pixels).

    Parameters
    ----------
    thresholds
        Event thresholds in mm/h (``value >= threshold``).
    scales
        Neighbourhood widths in pixels.
    ensemble
        ``"members"`` (sums over members) or ``"mean"`` (the ensemble mean).
    """

    def __init__(
        self,
        thresholds: Sequence[float] = (0.5, 1, 2, 4, 8, 16),
        scales: Sequence[int] = (1, 2, 4, 8, 16, 32),
        ensemble: str = "members",
    ) -> None:
        self.thresholds = as_thresholds(thresholds)
        self.scales = as_scales(scales)
        if ensemble not in ("members", "mean"):
            raise VerificationError(f"ensemble must be 'members' or 'mean', got {ensemble!r}")
        self.ensemble = ensemble

    def settings(self) -> dict[str, Any]:
        """Thresholds, scales and ensemble treatment."""
        return {
            "thresholds": self.thresholds.tolist(),
            "scales": self.scales,
            "ensemble": self.ensemble,
        }

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """``sums``: ``(lead, threshold, scale, 3)``."""
        forecast = pair.forecast if self.ensemble == "members" else pair.ensemble_mean[None]
        return {"sums": fss_statistics(forecast, pair.observation, self.thresholds, self.scales)}

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """FSS at each threshold and scale: ``(..., lead)``."""
        values = fss_from_statistics(stats["sums"])
        return {
            ("fss", float(t), size, "none"): values[..., k, j]
            for k, t in enumerate(self.thresholds)
            for j, size in enumerate(self.scales)
        }
