"""Pure planning maths of the crop pipeline: tiles, sequence windows, splits, importance sampling.

Nothing here reads or writes files; every function is deterministic and vectorised, so the
same inputs always give the same crops, whatever the order or the number of workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SPLIT_NAMES = ("train", "val", "test")

# Columns of the per-(frame, tile) statistics: counts and sums add up over frames; the
# extremes (min, max) combine by min/max.
STAT_NAN, STAT_WET, STAT_SOFT, STAT_SUM, STAT_SQ, STAT_MIN, STAT_MAX = range(7)
N_STATS = 7
N_SUMS = 5


# --------------------------------------------------------------------------------------------
# counter-based random numbers
# --------------------------------------------------------------------------------------------
def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """Uniform numbers in [0, 1) that depend only on ``seed`` and the integer ``keys``.

    A counter-based generator (SplitMix64 chained over the keys): the number drawn for a crop
    is a function of the crop's identity (time, position), not of the order crops are visited,
    so acceptance decisions are identical across runs, resumes and worker counts.
    """
    arrays = [np.asarray(k, dtype=np.int64).astype(np.uint64) for k in keys]
    shape = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
    with np.errstate(over="ignore"):
        h = _splitmix64(np.full(shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64))
        for a in arrays:
            h = _splitmix64(h ^ np.broadcast_to(a, shape))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# --------------------------------------------------------------------------------------------
# tiles
# --------------------------------------------------------------------------------------------
def tile_origins(shape: tuple[int, int], size: int, stride: int) -> np.ndarray:
    """Top-left corners ``(y0, x0)`` of ``size`` x ``size`` tiles covering a grid.

    Tiles are spaced by ``stride`` and the tiled block is centred in the grid (radar domains
    usually have no-data borders).

    Returns
    -------
    numpy.ndarray
        ``(n_tiles, 2)`` int64, row-major order.
    """
    ny, nx = shape
    if size <= 0 or stride <= 0:
        raise ValueError(f"crop size ({size}) and stride ({stride}) must be positive")
    if size > ny or size > nx:
        raise ValueError(f"crop size {size} is larger than the grid {ny} x {nx}")

    def axis(n: int) -> np.ndarray:
        count = (n - size) // stride + 1
        used = (count - 1) * stride + size
        return (n - used) // 2 + stride * np.arange(count)

    ys, xs = axis(ny), axis(nx)
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)


def integral_image(values: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row/column: ``(..., y + 1, x + 1)`` float64."""
    out = np.zeros((*values.shape[:-2], values.shape[-2] + 1, values.shape[-1] + 1))
    out[..., 1:, 1:] = values.cumsum(-2, dtype=np.float64).cumsum(-1)
    return out


def tile_stats(
    frame: np.ndarray, tiles: np.ndarray, size: int, rain_threshold: float
) -> np.ndarray:
    """Per-tile statistics of one frame.

    The tiled region is cut into blocks of ``g = gcd(size, tile offsets)`` pixels, reduced once
    with reshapes; each tile then adds up its ``(size / g)**2`` blocks through a small
    summed-area table (extremes: a min/max over the blocks). Pixels outside every tile are
    never touched.

    Parameters
    ----------
    frame
        ``(y, x)`` field (rain rate in mm/h for precipitation), NaN where there is no data.
    tiles
        ``(n_tiles, 2)`` tile corners from :func:`tile_origins`.
    size
        Tile size in pixels.
    rain_threshold
        Rain rate (mm/h) at or above which a pixel counts as wet.

    Returns
    -------
    numpy.ndarray
        ``(n_tiles, 7)`` float64: count of NaN pixels, count of wet pixels, sum over valid
        pixels of ``1 - exp(-x)`` (DGMR's saturating rain measure), sum of ``x``, sum of
        ``x**2``, min and max of ``x`` (``+inf``/``-inf`` for a tile with no valid pixel).
    """
    tiles = np.asarray(tiles, dtype=np.int64)
    if len(tiles) == 0:
        return np.zeros((0, N_STATS))
    y_min, x_min = tiles.min(axis=0)
    offsets = tiles - [y_min, x_min]
    g = int(np.gcd.reduce(np.r_[offsets.ravel(), size]))
    y_max, x_max = tiles.max(axis=0) + size
    region = frame[y_min:y_max, x_min:x_max]
    valid = np.isfinite(region)
    x = np.where(valid, region, np.float32(0)).astype(np.float64)
    by, bx = region.shape[0] // g, region.shape[1] // g

    def blocks(values: np.ndarray, reduce: Any = np.sum) -> np.ndarray:
        return reduce(np.asarray(values).reshape(by, g, bx, g), axis=(1, 3))

    sums = np.stack(
        [
            blocks(~valid),
            blocks(valid & (x >= rain_threshold)),
            blocks(-np.expm1(-np.maximum(x, 0.0))),
            blocks(x),
            blocks(x * x),
        ]
    ).astype(np.float64)
    table = integral_image(sums)
    y0, x0 = offsets[:, 0] // g, offsets[:, 1] // g
    span = size // g
    y1, x1 = y0 + span, x0 + span
    out = np.empty((len(tiles), N_STATS))
    out[:, :N_SUMS] = (table[:, y1, x1] - table[:, y0, x1] - table[:, y1, x0] + table[:, y0, x0]).T
    low = blocks(np.where(valid, x, np.inf), np.min)
    high = blocks(np.where(valid, x, -np.inf), np.max)
    for k, (a, b) in enumerate(zip(y0, x0, strict=True)):
        out[k, STAT_MIN] = low[a : a + span, b : b + span].min()
        out[k, STAT_MAX] = high[a : a + span, b : b + span].max()
    return out


# --------------------------------------------------------------------------------------------
# sequence windows
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Windows:
    """Candidate sequence windows of a time series.

    Attributes
    ----------
    starts
        Frame index of the first frame of each candidate window that is complete.
    n_candidates
        Windows considered: every frame on the stride grid that can start a window.
    n_gap
        Candidates rejected because a frame of the window is missing.
    gap_starts
        Start indices of those rejected windows.
    """

    starts: np.ndarray
    n_candidates: int
    n_gap: int
    gap_starts: np.ndarray


def sequence_windows(
    times: pd.DatetimeIndex, step: pd.Timedelta, length: int, stride: int = 1
) -> Windows:
    """Windows of ``length`` consecutive frames, ``step`` apart, starting every ``stride`` steps.

    A window starts at an existing frame whose time is on the stride grid (anchored at the
    first frame); it is complete when the next ``length - 1`` frames exist exactly one
    ``step`` apart. Windows spanning a gap are counted in ``n_gap``, never shifted.
    """
    if length < 1 or stride < 1:
        raise ValueError(f"sequence length ({length}) and stride ({stride}) must be >= 1")
    n = len(times)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Windows(empty, 0, 0, empty)
    offset = (times - times[0]) / step
    on_grid = np.isclose(offset, np.round(offset)) & (
        np.round(offset).astype(np.int64) % stride == 0
    )
    # Windows must also fit before the end of the series (nothing to wait for there).
    fits = times <= times[-1] - (length - 1) * step
    candidates = np.flatnonzero(on_grid & fits)
    regular = np.r_[(np.diff(times.values) == np.timedelta64(step)).astype(np.int64), 0]
    csum = np.r_[0, np.cumsum(regular)]
    if length == 1:
        complete = np.ones(len(candidates), dtype=bool)
    else:
        end = np.minimum(candidates + length - 1, n)
        complete = (end - candidates == length - 1) & (csum[end] - csum[candidates] == length - 1)
    return Windows(
        starts=candidates[complete],
        n_candidates=len(candidates),
        n_gap=int((~complete).sum()),
        gap_starts=candidates[~complete],
    )


def window_sums(frame_stats: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Combine per-frame statistics over windows: ``(n_frames, ...)`` -> ``(n_windows, ...)``.

    Columns add up, except :data:`STAT_MIN` and :data:`STAT_MAX` (when the last axis has
    :data:`N_STATS` columns), which take the window's minimum and maximum.
    """
    sums = frame_stats[..., :N_SUMS] if frame_stats.shape[-1] == N_STATS else frame_stats
    csum = np.concatenate([np.zeros((1, *sums.shape[1:])), np.cumsum(sums, axis=0)])
    out = csum[starts + length] - csum[starts]
    if frame_stats.shape[-1] != N_STATS:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(frame_stats, length, axis=0)[starts]
    return np.concatenate(
        [
            out,
            windows[..., STAT_MIN, :].min(-1)[..., None],
            windows[..., STAT_MAX, :].max(-1)[..., None],
        ],
        axis=-1,
    )


# --------------------------------------------------------------------------------------------
# importance sampling
# --------------------------------------------------------------------------------------------
def dgmr_acceptance(soft_rain_mean: np.ndarray, q_min: float = 2e-4, m: float = 0.1) -> np.ndarray:
    """DGMR's crop acceptance probability (Ravuri et al. 2021, Methods, "Data").

    ``q = min(1, q_min + m * mean(1 - exp(-x)))`` over the crop's pixels and frames, ``x`` in
    mm/h: a dry crop is kept with probability ``q_min``, a crop saturated with rain with
    probability ``min(1, q_min + m)``.
    """
    return np.minimum(1.0, q_min + m * np.asarray(soft_rain_mean, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def block_splits(block_index: np.ndarray, fractions: Mapping[str, float], seed: int) -> np.ndarray:
    """Split code of each time block: blocks are assigned at random (seeded) by ``fractions``."""
    total = sum(fractions.get(s, 0.0) for s in SPLIT_NAMES)
    edges = np.cumsum([fractions.get(s, 0.0) / total for s in SPLIT_NAMES])
    u = hash_uniform(seed, block_index, 0x5B117)
    return np.minimum(np.searchsorted(edges, u, side="right"), 2).astype(np.int8)


def assign_splits_blocks(
    first: pd.DatetimeIndex,
    last: pd.DatetimeIndex,
    *,
    block: pd.Timedelta,
    fractions: Mapping[str, float],
    guard: pd.Timedelta,
    seed: int,
) -> np.ndarray:
    """Split of each window ``[first, last]`` with time blocks of length ``block``.

    Time is cut into contiguous blocks (anchored at the Unix epoch) and each block goes to one
    split. A window gets the split of the blocks within ``guard`` of it; when those blocks
    belong to different splits the window is dropped (code ``-1``), so no sample of one split
    lies within ``guard`` of a sample of another.
    """
    epoch = pd.Timestamp("1970-01-01")
    lo = np.floor(np.asarray(((first - guard) - epoch) / block, dtype=np.float64)).astype(np.int64)
    hi = np.floor(np.asarray(((last + guard) - epoch) / block, dtype=np.float64)).astype(np.int64)
    codes = block_splits(lo, fractions, seed)
    for k in range(1, int((hi - lo).max(initial=0)) + 1):
        inside = lo + k <= hi
        other = block_splits(lo + k, fractions, seed)
        codes = np.where(inside & (other != codes), -1, codes)
    return codes.astype(np.int8)


def assign_splits_ranges(
    first: pd.DatetimeIndex,
    last: pd.DatetimeIndex,
    *,
    ranges: Mapping[str, Sequence[Sequence[str]]],
    guard: pd.Timedelta,
) -> np.ndarray:
    """Split of each window with explicit ``val``/``test`` date ranges (everything else train).

    The window ``[first, last]`` extended by ``guard`` on both sides must touch exactly one
    split: lie inside one val/test range, or keep clear of all of them (train). Otherwise it is
    dropped (code ``-1``), so no sample of one split lies within ``guard`` of another split.
    """
    lo, hi = first - guard, last + guard
    touched = np.zeros((len(first), 3), dtype=bool)
    inside_one = np.zeros(len(first), dtype=bool)
    for name in ("val", "test"):
        for bounds in ranges.get(name) or []:
            if len(bounds) != 2:
                raise ValueError(f"split range {bounds!r} for {name} must be [start, end]")
            start, end = pd.Timestamp(bounds[0]), pd.Timestamp(bounds[1])
            if end < start:
                raise ValueError(f"split range {bounds!r} for {name} ends before it starts")
            touched[:, SPLIT_CODES[name]] |= (hi >= start) & (lo <= end)
            inside_one |= (lo >= start) & (hi <= end)
    touched[:, SPLIT_CODES["train"]] = ~inside_one
    ok = touched.sum(axis=1) == 1
    return np.where(ok, touched.argmax(axis=1), -1).astype(np.int8)
