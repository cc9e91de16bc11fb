"""The pure planner of the crop pipeline: tiles, sequence windows, splits, importance sampling.

The maths (tile statistics, windows, splits, the sampling draw), :class:`SamplePlanner`, which
turns per-frame tile statistics into the table of samples, and :class:`PartBuilder`, which cuts
it into the units of parallel work. Nothing here reads or writes files
(:mod:`data_pipelines.prepare` does); every function is deterministic and vectorised, so the
same inputs always give the same crops, whatever the order or the number of workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from data_pipelines.config import PrepareConfig
    from geogen.io.sources import Source

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


# --------------------------------------------------------------------------------------------
# planning: every sample, decided from per-frame tile statistics alone
# --------------------------------------------------------------------------------------------
def _is_precipitation(source: Source) -> bool:
    name = source.variable_attrs.get("standard_name", "")
    return source.variable == "precip" or "precipitation" in name or "rainfall" in name


def _sampling_method(cfg: PrepareConfig, source: Source) -> str:
    method = cfg.sampling.method
    if method == "auto":
        return "dgmr" if _is_precipitation(source) else "uniform"
    if method == "dgmr" and not _is_precipitation(source):
        raise ValueError(
            f"sampling.method=dgmr weighs crops by rain, but source {source.name!r} holds "
            f"{source.variable!r}; use sampling.method=uniform"
        )
    return method


#: Columns of the sample table (:func:`plan_samples`).
SAMPLE_COLUMNS = (
    "start",
    "tile",
    "y0",
    "x0",
    "t0",
    "split",
    "sample_prob",
    "rain_fraction",
    "nan_fraction",
    "count",
    "sum",
    "sumsq",
    "min",
    "max",
)


class SamplePlanner:
    """The samples of the sequence windows, planned in time order as frames are summarised.

    Everything but a sample's index depends on its window alone: the window's times (gaps,
    split, guard), its frames' statistics (no-data, importance weight), its files (bad or
    not) and a hash of its time and position (the sampling draw). The index is the number of
    samples before it. So the windows whose frames are all summarised can be planned as soon
    as that prefix of the archive is, and the plan, made in any number of steps, is the one
    :func:`plan_samples` makes at once: window sums come from one running cumulative sum over
    frames, extended with the same additions in the same order.

    Parameters
    ----------
    cfg, source
        The build's config and source.
    tiles
        ``(n_tiles, 2)`` crop corners.
    """

    def __init__(self, cfg: PrepareConfig, source: Source, tiles: np.ndarray) -> None:
        self.cfg, self.source, self.tiles = cfg, source, tiles
        self.length, self.size = cfg.length, cfg.crop.size
        windows = sequence_windows(source.times, source.timestep, self.length, cfg.sequence.stride)
        #: Start frame of every gap-free window, in time order.
        self.starts = windows.starts
        first = source.times[self.starts]
        last = source.times[self.starts + self.length - 1]
        guard = pd.Timedelta(cfg.split.guard)
        if cfg.split.method == "blocks":
            self.codes = assign_splits_blocks(
                first,
                last,
                block=pd.Timedelta(cfg.split.block),
                fractions=cfg.split.fractions,
                guard=guard,
                seed=cfg.split.seed if cfg.split.seed is not None else cfg.seed,
            )
        else:
            self.codes = assign_splits_ranges(first, last, ranges=cfg.split.ranges, guard=guard)
        self.precip = _is_precipitation(source)
        self.method = _sampling_method(cfg, source)
        self.counts: dict[str, Any] = {
            "sequences_seen": windows.n_candidates,
            "rejected_gap": windows.n_gap,
            "rejected_bad_file": 0,
            "rejected_split_guard": 0,
            "sequences_complete": 0,
            "crops_candidate": 0,
            "rejected_nan": 0,
            "rejected_sampling": 0,
            "crops_written": 0,
        }
        #: Windows planned so far (``starts[:planned]``), samples planned so far.
        self.planned = 0
        self.n_samples = 0
        n_frames, n_tiles = len(source.times), len(tiles)
        self._csum = np.zeros((n_frames + 1, n_tiles, N_SUMS))
        self._summed = 0  # frames in the running sum

    @property
    def max_samples(self) -> int:
        """An upper bound of the number of samples (every tile of every window)."""
        return len(self.starts) * len(self.tiles)

    @property
    def done(self) -> bool:
        """Whether every window is planned."""
        return self.planned == len(self.starts)

    @property
    def next_start(self) -> int | None:
        """First frame of the first window not planned yet (``None`` when all are)."""
        return None if self.done else int(self.starts[self.planned])

    def advance(self, frame_stats: np.ndarray, bad: np.ndarray, known: int) -> pd.DataFrame:
        """Plan the windows whose frames all lie in the first ``known`` frames.

        Parameters
        ----------
        frame_stats
            ``(frame, tile, stat)`` statistics (:func:`data_pipelines.plan.tile_stats`), valid
            for the first ``known`` frames; unreadable frames hold zero sums and infinite
            extremes.
        bad
            ``(frame,)`` whether a frame is unreadable.
        known
            Number of leading frames whose statistics are final.

        Returns
        -------
        pandas.DataFrame
            The new samples (:data:`SAMPLE_COLUMNS`), indexed by sample number.
        """
        length, size = self.length, self.size
        stop = int(np.searchsorted(self.starts, known - length, side="right"))
        stop = max(stop, self.planned)
        if known > self._summed:
            # Extend the running sum with the additions np.cumsum makes over all frames.
            lo = self._summed
            rows = frame_stats[lo:known, :, :N_SUMS]
            if lo == 0:
                self._csum[1 : known + 1] = np.cumsum(rows, axis=0)
            else:
                seeded = np.concatenate([self._csum[lo : lo + 1], rows])
                self._csum[lo + 1 : known + 1] = np.cumsum(seeded, axis=0)[1:]
            self._summed = known
        window_index = np.arange(self.planned, stop)
        self.planned = stop
        starts = self.starts[window_index]
        counts = self.counts
        lo = int(starts[0]) if len(starts) else 0
        bad_csum = np.r_[0, np.cumsum(bad[lo : lo + int(np.max(starts - lo, initial=0)) + length])]
        has_bad = bad_csum[starts - lo + length] - bad_csum[starts - lo] > 0
        counts["rejected_bad_file"] += int(has_bad.sum())
        starts, codes = starts[~has_bad], self.codes[window_index[~has_bad]]
        counts["rejected_split_guard"] += int((codes < 0).sum())
        keep = codes >= 0
        starts, codes = starts[keep], codes[keep]
        counts["sequences_complete"] += len(starts)
        first = self.source.times[starts]

        sums = self._csum[starts + length] - self._csum[starts]
        windows = np.lib.stride_tricks.sliding_window_view(frame_stats, length, axis=0)[starts]
        sums = np.concatenate(
            [
                sums,
                windows[..., STAT_MIN, :].min(-1)[..., None],
                windows[..., STAT_MAX, :].max(-1)[..., None],
            ],
            axis=-1,
        )
        n_pixels = float(length * size * size)
        nan_fraction = sums[..., STAT_NAN] / n_pixels
        n_valid = np.maximum(n_pixels - sums[..., STAT_NAN], 1.0)
        if self.precip:
            rain_fraction = sums[..., STAT_WET] / n_valid
        else:
            rain_fraction = np.full(nan_fraction.shape, np.nan)
        counts["crops_candidate"] += int(nan_fraction.size)
        ok = nan_fraction <= self.cfg.reject.max_nan_fraction
        counts["rejected_nan"] += int((~ok).sum())
        sampling = self.cfg.sampling
        if self.method == "dgmr":
            prob = dgmr_acceptance(sums[..., STAT_SOFT] / n_valid, sampling.q_min, sampling.m)
        else:
            prob = np.full(nan_fraction.shape, sampling.probability)
        start_minutes = (first - pd.Timestamp("1970-01-01")) // pd.Timedelta(minutes=1)
        tiles = self.tiles
        u = hash_uniform(
            self.cfg.seed,
            np.asarray(start_minutes)[:, None],
            tiles[None, :, 0],
            tiles[None, :, 1],
        )
        accepted = ok & (u < prob)
        counts["rejected_sampling"] += int((ok & ~accepted).sum())
        w_idx, t_idx = np.nonzero(accepted)  # row-major: time order, then tile order
        counts["crops_written"] += len(w_idx)
        samples = pd.DataFrame(
            {
                "start": starts[w_idx],
                "tile": t_idx,
                "y0": tiles[t_idx, 0],
                "x0": tiles[t_idx, 1],
                "t0": self.source.times[starts[w_idx]],
                "split": codes[w_idx],
                "sample_prob": prob[w_idx, t_idx],
                "rain_fraction": rain_fraction[w_idx, t_idx],
                "nan_fraction": nan_fraction[w_idx, t_idx],
                # Sums and extremes of the crop's values (for the store's statistics).
                "count": n_pixels - sums[w_idx, t_idx, STAT_NAN],
                "sum": sums[w_idx, t_idx, STAT_SUM],
                "sumsq": sums[w_idx, t_idx, STAT_SQ],
                "min": sums[w_idx, t_idx, STAT_MIN],
                "max": sums[w_idx, t_idx, STAT_MAX],
            },
            index=pd.RangeIndex(self.n_samples, self.n_samples + len(w_idx)),
        )
        self.n_samples += len(w_idx)
        return samples

    def summary_counts(self) -> dict[str, Any]:
        """Rejection counts and the sampling method (complete once :attr:`done`)."""
        return {**self.counts, "sampling_method": self.method}


def neutralise_bad_frames(frame_stats: np.ndarray, bad: np.ndarray) -> None:
    """Unreadable frames: zero sums and infinite extremes, in place.

    Their windows are rejected through ``bad``; neutral values keep the other windows'
    numbers finite.
    """
    frame_stats[bad] = 0.0
    frame_stats[bad, :, STAT_MIN], frame_stats[bad, :, STAT_MAX] = np.inf, -np.inf


def plan_samples(
    cfg: PrepareConfig, source: Source, frame_stats: np.ndarray, bad: np.ndarray, tiles: np.ndarray
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every sample of the store, in order, and the rejection counts (pure; no I/O)."""
    planner = SamplePlanner(cfg, source, tiles)
    samples = planner.advance(frame_stats, bad, len(source.times))
    return samples, planner.summary_counts()


@dataclass
class Part:
    """Consecutive windows whose crops one load task writes (samples ``first_sample`` on)."""

    index: int
    first_sample: int
    starts: list[int] = field(default_factory=list)
    corners: list[tuple[int, int]] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)

    @property
    def n_samples(self) -> int:
        """Crops of the part."""
        return len(self.starts)


class PartBuilder:
    """Cut the stream of planned windows into parts (the units of parallel work and resume).

    A window's crops stay in one part (they share frames); a part closes once it holds
    ``max_samples`` crops or ``max_windows`` windows. The partition depends on the plan alone
    (never on the number of workers or the order tasks finish), so a resumed run finds the
    same parts.
    """

    def __init__(self, max_samples: int, max_windows: int) -> None:
        self.max_samples, self.max_windows = max_samples, max_windows
        self.open: Part | None = None
        self.n_parts = 0

    def add(self, samples: pd.DataFrame) -> list[Part]:
        """Add planned samples (whole windows, in order); return the parts that closed."""
        closed: list[Part] = []
        starts = samples["start"].to_numpy()
        if not len(starts):
            return closed
        corners = samples[["y0", "x0"]].to_numpy()
        first_index = int(samples.index[0])
        bounds = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1], True])
        for a, b in itertools.pairwise(bounds):
            if self.open is None:
                self.open = Part(self.n_parts, first_index + int(a))
                self.n_parts += 1
            part = self.open
            part.windows.append(int(starts[a]))
            part.starts.extend(int(s) for s in starts[a:b])
            part.corners.extend((int(y), int(x)) for y, x in corners[a:b])
            if part.n_samples >= self.max_samples or len(part.windows) >= self.max_windows:
                closed.append(part)
                self.open = None
        return closed

    def flush(self) -> list[Part]:
        """The last part, once every window is planned."""
        part, self.open = self.open, None
        return [part] if part is not None else []


def _parts(samples: pd.DataFrame, max_samples: int, max_windows: int) -> np.ndarray:
    """Part id of each sample (the partition :class:`PartBuilder` makes)."""
    builder = PartBuilder(max_samples, max_windows)
    out = np.empty(len(samples), dtype=np.int64)
    for part in [*builder.add(samples), *builder.flush()]:
        out[part.first_sample : part.first_sample + part.n_samples] = part.index
    return out
