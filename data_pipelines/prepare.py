"""Build a crop store from a source, in resumable stages.

Stages (as in anemoi-datasets: init, load parts in parallel, finalise):

1. **statistics**: every frame is read once (in parallel, in chunks of ``parts.frames``) and
   summarised per tile: no-data pixels, rainy pixels, DGMR's saturating rain sum, rain sum.
2. **plan**: from those numbers alone, decide every sample: complete sequence windows (gaps
   and unreadable files rejected), crops with too much missing data rejected, the time-block
   split of each window (with a guard so no test time is near a training time), and the
   importance-sampling draw of each crop, seeded by the crop's own time and position. The
   plan fixes the number and order of samples, so the store's arrays are allocated now.
3. **load**: parts of ``parts.windows`` consecutive windows are read and their crops written
   straight into their pre-assigned chunks, in parallel.
4. **finalise**: per-split statistics, summary, provenance; the store is marked complete and
   renamed from ``OUT.partial`` to ``OUT``.

Each task of stages 1 and 3 records completion in ``OUT.partial/_progress`` after its data,
so a killed run restarted with the same arguments redoes only unfinished tasks and ends with
exactly the store a clean run gives. ``OUT`` itself only ever appears complete.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from data_pipelines import plan as P
from data_pipelines.config import PrepareConfig
from data_pipelines.runner import Runner, open_runner
from geogen.io.sources import BadFileError, Source, load_source
from geogen.io.store import (
    SPLITS,
    STORE_VERSION,
    StoreError,
    create_crop_arrays,
)

log = logging.getLogger(__name__)

RAIN_FRACTION_BINS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


@dataclass
class PrepareResult:
    """What a run did: where the store is and the summary it holds."""

    path: Path
    summary: dict[str, Any]
    skipped: bool = False
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Build (or resume, or confirm) the crop store described by ``cfg``."""
    out = Path(cfg.out).expanduser().resolve()
    partial = out.with_name(out.name + ".partial")
    config_fp = _fingerprint(_config_identity(cfg))

    if out.exists():
        existing = _read_attrs(out)
        if existing is None:
            raise StoreError(
                f"{out} exists and is not a geogen crop store; refusing to touch it "
                "(choose another out= or remove it yourself)"
            )
        if not cfg.overwrite:
            if existing.get("config_fingerprint") != config_fp:
                raise StoreError(
                    f"{out} was built with a different config; pass overwrite=true to rebuild it "
                    "(the old store is kept until the new one is complete)"
                )
            log.info("%s is complete and matches this config: nothing to do", out)
            return PrepareResult(out, existing.get("summary", {}), skipped=True)

    timings: dict[str, float] = {}
    tic = time.perf_counter()
    source = load_source(cfg.source, cfg.start, cfg.end, on_bad_file=cfg.on_bad_file)
    timings["list"] = time.perf_counter() - tic
    log.info("%r", source)
    input_fp = _fingerprint({"times": [str(t) for t in source.times], "where": _frame_ids(source)})

    if partial.exists():
        attrs = _read_attrs(partial) or {}
        same = (
            attrs.get("config_fingerprint") == config_fp
            and attrs.get("input_fingerprint") == input_fp
        )
        if same:
            log.info("resuming the partial build at %s", partial)
        elif cfg.overwrite:
            log.info("removing a partial build from another config at %s", partial)
            shutil.rmtree(partial)
        else:
            raise StoreError(
                f"{partial} holds a partial build of a different config or input; pass "
                "overwrite=true to discard it"
            )
    if not partial.exists():
        group = zarr.open_group(partial, mode="w", zarr_format=3)
        group.attrs.update(
            {
                "geogen_store_version": STORE_VERSION,
                "status": "building",
                "config_fingerprint": config_fp,
                "input_fingerprint": input_fp,
            }
        )

    with open_runner(cfg.dask, progress=cfg.progress) as runner:
        shared = runner.share(source)
        tic = time.perf_counter()
        frame_stats, bad, errors, tiles = _stage_statistics(cfg, source, shared, partial, runner)
        timings["statistics"] = time.perf_counter() - tic
        tic = time.perf_counter()
        samples, counts = _stage_plan(cfg, source, frame_stats, bad, tiles, partial)
        timings["plan"] = time.perf_counter() - tic
        tic = time.perf_counter()
        _stage_load(cfg, source, shared, samples, partial, runner)
        timings["load"] = time.perf_counter() - tic

    tic = time.perf_counter()
    summary = _summary(cfg, source, samples, counts, bad, errors, tiles)
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    _finalise(cfg, source, partial, out, summary, _statistics(samples), input_fp)
    timings["finalise"] = time.perf_counter() - tic
    summary["timings_s"]["finalise"] = round(timings["finalise"], 3)
    return PrepareResult(out, summary, timings=timings)


# --------------------------------------------------------------------------------------------
# stage 1: per-frame, per-tile statistics
# --------------------------------------------------------------------------------------------
def _stage_statistics(
    cfg: PrepareConfig, source: Source, shared: Any, partial: Path, runner: Runner
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    tiles = P.tile_origins(source.grid.shape, cfg.crop.size, cfg.crop.stride)
    n_frames, n_tiles, chunk = len(source.times), len(tiles), cfg.parts.frames
    n_chunks = -(-n_frames // chunk)
    group = zarr.open_group(partial, mode="r+")
    if "_plan" not in group:
        plan = group.create_group("_plan")
        plan.create_array(
            "frame_stats",
            shape=(n_frames, n_tiles, P.N_STATS),
            chunks=(chunk, n_tiles, P.N_STATS),
            dtype="float64",
            fill_value=np.nan,
        )
        plan.create_array(
            "frame_error", shape=(n_frames,), chunks=(chunk,), dtype=str, fill_value=""
        )
        progress = group.require_group("_progress")
        progress.create_array(
            "statistics_done", shape=(n_chunks,), chunks=(1,), dtype=bool, fill_value=False
        )
    done = group["_progress/statistics_done"][:]
    todo = [int(c) for c in np.flatnonzero(~done)]
    if len(todo) < n_chunks:
        log.info("statistics: %d of %d chunks already done", n_chunks - len(todo), n_chunks)
    calls = [
        (
            shared,
            str(partial),
            c,
            chunk,
            tiles,
            cfg.crop.size,
            cfg.sampling.rain_threshold,
            cfg.on_bad_file,
        )
        for c in todo
    ]
    runner.run(_statistics_task, calls, description="statistics", unit="chunk")
    errors = np.asarray(group["_plan/frame_error"][:].tolist(), dtype=object)
    bad = errors != ""
    # Unreadable frames have NaN statistics; their windows are rejected through `bad`, and
    # neutral values (zero sums, infinite extremes) keep the other windows' numbers finite.
    frame_stats = group["_plan/frame_stats"][:]
    frame_stats[bad] = 0.0
    frame_stats[bad, :, P.STAT_MIN], frame_stats[bad, :, P.STAT_MAX] = np.inf, -np.inf
    return frame_stats, bad, [e for e in errors if e], tiles


def _statistics_task(
    source: Source,
    store: str,
    chunk_id: int,
    chunk: int,
    tiles: np.ndarray,
    size: int,
    rain_threshold: float,
    on_bad_file: str,
) -> int:
    lo, hi = chunk_id * chunk, min((chunk_id + 1) * chunk, len(source.times))
    stats = np.zeros((hi - lo, len(tiles), P.N_STATS))
    errors = np.full(hi - lo, "", dtype=object)
    for k, index in enumerate(range(lo, hi)):
        try:
            frame = source.read(index)
        except BadFileError as exc:
            if on_bad_file == "raise":
                raise
            log.warning("skipping unreadable file (on_bad_file=skip): %s", exc)
            errors[k] = str(exc)
            stats[k] = np.nan
            continue
        stats[k] = P.tile_stats(frame, tiles, size, rain_threshold)
    group = zarr.open_group(store, mode="r+")
    group["_plan/frame_stats"][lo:hi] = stats
    group["_plan/frame_error"][lo:hi] = errors.astype(str)
    group["_progress/statistics_done"][chunk_id] = True  # after the data: marks it complete
    return hi - lo


# --------------------------------------------------------------------------------------------
# stage 2: decide every sample
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


def plan_samples(
    cfg: PrepareConfig, source: Source, frame_stats: np.ndarray, bad: np.ndarray, tiles: np.ndarray
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every sample of the store, in order, and the rejection counts (pure; no I/O)."""
    length, size = cfg.length, cfg.crop.size
    windows = P.sequence_windows(source.times, source.timestep, length, cfg.sequence.stride)
    counts: dict[str, int] = {
        "sequences_seen": windows.n_candidates,
        "rejected_gap": windows.n_gap,
    }
    starts = windows.starts
    bad_csum = np.r_[0, np.cumsum(bad.astype(np.int64))]
    has_bad = bad_csum[starts + length] - bad_csum[starts] > 0
    counts["rejected_bad_file"] = int(has_bad.sum())
    starts = starts[~has_bad]

    first = source.times[starts]
    last = source.times[starts + length - 1]
    guard = pd.Timedelta(cfg.split.guard)
    if cfg.split.method == "blocks":
        codes = P.assign_splits_blocks(
            first,
            last,
            block=pd.Timedelta(cfg.split.block),
            fractions=cfg.split.fractions,
            guard=guard,
            seed=cfg.split.seed if cfg.split.seed is not None else cfg.seed,
        )
    else:
        codes = P.assign_splits_ranges(first, last, ranges=cfg.split.ranges, guard=guard)
    counts["rejected_split_guard"] = int((codes < 0).sum())
    keep = codes >= 0
    starts, codes = starts[keep], codes[keep]
    counts["sequences_complete"] = len(starts)

    sums = P.window_sums(frame_stats, starts, length)  # (windows, tiles, stats)
    n_pixels = float(length * size * size)
    nan_fraction = sums[..., P.STAT_NAN] / n_pixels
    n_valid = np.maximum(n_pixels - sums[..., P.STAT_NAN], 1.0)
    precip = _is_precipitation(source)
    rain_fraction = (
        sums[..., P.STAT_WET] / n_valid if precip else np.full(nan_fraction.shape, np.nan)
    )
    counts["crops_candidate"] = int(nan_fraction.size)
    ok = nan_fraction <= cfg.reject.max_nan_fraction
    counts["rejected_nan"] = int((~ok).sum())

    method = _sampling_method(cfg, source)
    if method == "dgmr":
        prob = P.dgmr_acceptance(
            sums[..., P.STAT_SOFT] / n_valid, cfg.sampling.q_min, cfg.sampling.m
        )
    else:
        prob = np.full(nan_fraction.shape, cfg.sampling.probability)
    start_minutes = (first[keep] - pd.Timestamp("1970-01-01")) // pd.Timedelta(minutes=1)
    u = P.hash_uniform(
        cfg.seed,
        np.asarray(start_minutes)[:, None],
        tiles[None, :, 0],
        tiles[None, :, 1],
    )
    accepted = ok & (u < prob)
    counts["rejected_sampling"] = int((ok & ~accepted).sum())
    w_idx, t_idx = np.nonzero(accepted)  # row-major: time order, then tile order
    counts["crops_written"] = len(w_idx)
    samples = pd.DataFrame(
        {
            "start": starts[w_idx],
            "tile": t_idx,
            "y0": tiles[t_idx, 0],
            "x0": tiles[t_idx, 1],
            "t0": source.times[starts[w_idx]],
            "split": codes[w_idx],
            "sample_prob": prob[w_idx, t_idx],
            "rain_fraction": rain_fraction[w_idx, t_idx],
            "nan_fraction": nan_fraction[w_idx, t_idx],
            # Sums and extremes of the crop's values (for the store's statistics).
            "count": n_pixels - sums[w_idx, t_idx, P.STAT_NAN],
            "sum": sums[w_idx, t_idx, P.STAT_SUM],
            "sumsq": sums[w_idx, t_idx, P.STAT_SQ],
            "min": sums[w_idx, t_idx, P.STAT_MIN],
            "max": sums[w_idx, t_idx, P.STAT_MAX],
        }
    )
    counts["sampling_method"] = method  # type: ignore[assignment]
    return samples, counts


def _time_offsets(cfg: PrepareConfig, source: Source) -> np.ndarray:
    step = source.timestep / pd.Timedelta(minutes=1)
    k = np.arange(cfg.length)
    if cfg.task.name == "nowcast":
        k = k - (int(cfg.sequence.context) - 1)  # type: ignore[arg-type]
    return np.round(k * step).astype(np.int32)


def _parts(samples: pd.DataFrame, max_samples: int, max_windows: int) -> np.ndarray:
    """Part id of each sample: consecutive windows, about ``max_samples`` crops per part.

    A window's crops stay in one part (they share frames); a part closes once it holds
    ``max_samples`` crops or ``max_windows`` windows. The partition depends on the plan alone
    (never on the number of workers), so a resumed run finds the same parts.
    """
    starts = samples["start"].to_numpy()
    unique, per_window = np.unique(starts, return_counts=True)
    window_part = np.empty(len(unique), dtype=np.int64)
    part = n_samples = n_windows = 0
    for w, count in enumerate(per_window):
        if n_windows and (n_samples >= max_samples or n_windows >= max_windows):
            part, n_samples, n_windows = part + 1, 0, 0
        window_part[w] = part
        n_samples += count
        n_windows += 1
    return window_part[np.searchsorted(unique, starts)]


def _stage_plan(
    cfg: PrepareConfig,
    source: Source,
    frame_stats: np.ndarray,
    bad: np.ndarray,
    tiles: np.ndarray,
    partial: Path,
) -> tuple[pd.DataFrame, dict[str, int]]:
    samples, counts = plan_samples(cfg, source, frame_stats, bad, tiles)
    samples["part"] = _parts(samples, cfg.parts.samples, cfg.parts.windows)
    group = zarr.open_group(partial, mode="r+")
    n = len(samples)
    if group.attrs.get("planned_samples") is not None:
        if group.attrs["planned_samples"] != n:  # pragma: no cover - guarded by fingerprints
            raise StoreError(
                f"{partial}: the plan changed on resume ({n} samples, was "
                f"{group.attrs['planned_samples']}); rerun with overwrite=true"
            )
        return samples, counts
    create_crop_arrays(
        group,
        n_samples=n,
        n_times=cfg.length,
        crop_size=cfg.crop.size,
        variable=source.variable,
        variable_attrs=source.variable_attrs,
        time_offsets_minutes=_time_offsets(cfg, source),
        factor=cfg.task.factor if cfg.task.name == "downscale" else None,
    )
    if n:
        group["t0"][:] = samples["t0"].to_numpy().astype("datetime64[s]")
        group["source"][:] = np.full(n, source.name)
        group["y0"][:] = samples["y0"].to_numpy(np.int32)
        group["x0"][:] = samples["x0"].to_numpy(np.int32)
        group["rain_fraction"][:] = samples["rain_fraction"].to_numpy(np.float32)
        group["nan_fraction"][:] = samples["nan_fraction"].to_numpy(np.float32)
        group["sample_prob"][:] = samples["sample_prob"].to_numpy(np.float32)
        group["split"][:] = np.asarray(SPLITS)[samples["split"].to_numpy()]
    n_parts = int(samples["part"].max()) + 1 if n else 0
    progress = group.require_group("_progress")
    progress.create_array(
        "load_done", shape=(max(n_parts, 1),), chunks=(1,), dtype=bool, fill_value=False
    )
    group.attrs["planned_samples"] = n
    return samples, counts


# --------------------------------------------------------------------------------------------
# stage 3: write the crops
# --------------------------------------------------------------------------------------------
def _stage_load(
    cfg: PrepareConfig,
    source: Source,
    shared: Any,
    samples: pd.DataFrame,
    partial: Path,
    runner: Runner,
) -> None:
    if samples.empty:
        return
    group = zarr.open_group(partial, mode="r+")
    done = group["_progress/load_done"][:]
    n_parts = int(samples["part"].max()) + 1
    todo = np.flatnonzero(~done[:n_parts])
    if len(todo) < n_parts:
        log.info("load: %d of %d parts already written", n_parts - len(todo), n_parts)
    by_part = dict(tuple(samples.groupby("part", sort=True)))
    factor = cfg.task.factor if cfg.task.name == "downscale" else None
    calls = [
        (
            shared,
            str(partial),
            int(p),
            source.variable,
            int(by_part[p].index[0]),
            by_part[p]["start"].to_numpy(),
            by_part[p][["y0", "x0"]].to_numpy(),
            cfg.length,
            cfg.crop.size,
            factor,
        )
        for p in todo
    ]
    runner.run(_load_task, calls, description="crops", unit="part")


def _load_task(
    source: Source,
    store: str,
    part: int,
    variable: str,
    first_sample: int,
    starts: np.ndarray,
    corners: np.ndarray,
    length: int,
    size: int,
    factor: int | None,
) -> int:
    # Only the frames the part's windows use: an unreadable frame between two kept windows
    # (on_bad_file=skip) is never read.
    needed = np.unique(starts[:, None] + np.arange(length))
    frames = source.read_many(needed)
    position = {int(f): k for k, f in enumerate(needed)}
    crops = np.empty((len(starts), length, size, size), dtype=np.float32)
    for k, (start, (y0, x0)) in enumerate(zip(starts, corners, strict=True)):
        first = position[int(start)]  # the window's frames are consecutive in `needed`
        crops[k] = frames[first : first + length, y0 : y0 + size, x0 : x0 + size]
    # A part's samples are consecutive in the store: one write, chunks encoded concurrently.
    group = zarr.open_group(store, mode="r+")
    block = slice(first_sample, first_sample + len(starts))
    group[variable][block] = crops
    if factor:
        group[f"{variable}_lowres"][block] = block_mean(crops, factor)
    group["_progress/load_done"][part] = True  # after the crops: marks the part complete
    return len(starts)


def block_mean(field: np.ndarray, factor: int) -> np.ndarray:
    """Coarsen the last two axes by ``factor`` with block means (NaN if a block holds NaN).

    Parameters
    ----------
    field
        ``(..., y, x)`` with ``y`` and ``x`` multiples of ``factor``.

    Returns
    -------
    numpy.ndarray
        ``(..., y / factor, x / factor)``, same dtype.
    """
    *lead, ny, nx = field.shape
    if ny % factor or nx % factor:
        raise ValueError(f"grid {ny} x {nx} is not divisible by the factor {factor}")
    blocks = field.reshape(*lead, ny // factor, factor, nx // factor, factor)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(field.dtype)


# --------------------------------------------------------------------------------------------
# stage 4: finalise
# --------------------------------------------------------------------------------------------
def _statistics(samples: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Count, mean, std, min and max of the stored values per split (from the plan's sums)."""
    out: dict[str, dict[str, float]] = {}
    for k, split in enumerate(SPLITS):
        rows = samples[samples["split"] == k]
        count = float(rows["count"].sum())
        if count == 0:
            continue
        mean = float(rows["sum"].sum()) / count
        var = max(float(rows["sumsq"].sum()) / count - mean * mean, 0.0)
        out[split] = {
            "count": count,
            "mean": mean,
            "std": float(np.sqrt(var)),
            "min": float(rows["min"].min()),
            "max": float(rows["max"].max()),
        }
    return out


def _summary(
    cfg: PrepareConfig,
    source: Source,
    samples: pd.DataFrame,
    counts: dict[str, Any],
    bad: np.ndarray,
    errors: list[str],
    tiles: np.ndarray,
) -> dict[str, Any]:
    rain = samples["rain_fraction"].to_numpy()
    rain = rain[np.isfinite(rain)]
    hist, _ = np.histogram(rain, bins=RAIN_FRACTION_BINS)
    split_counts = {s: int((samples["split"] == k).sum()) for k, s in enumerate(SPLITS)}
    return {
        "source": source.name,
        "task": cfg.task.name,
        "frames": len(source.times),
        "first_time": str(source.times[0]) if len(source.times) else None,
        "last_time": str(source.times[-1]) if len(source.times) else None,
        "missing_time_steps": len(source.missing),
        "gaps": len(source.gaps()),
        "bad_files": int(bad.sum()),
        "bad_file_errors": errors[:20],
        "tiles_per_frame": len(tiles),
        **{k: v for k, v in counts.items()},
        "split_counts": split_counts,
        "rain_fraction_histogram": {
            "bins": list(RAIN_FRACTION_BINS),
            "counts": [int(c) for c in hist],
        },
    }


def _finalise(
    cfg: PrepareConfig,
    source: Source,
    partial: Path,
    out: Path,
    summary: dict[str, Any],
    statistics: dict[str, dict[str, float]],
    input_fp: str,
) -> None:
    group = zarr.open_group(partial, mode="r+")
    task_attrs: dict[str, Any] = {"task": cfg.task.name}
    if cfg.task.name == "nowcast":
        task_attrs.update(context=cfg.sequence.context, lead=cfg.sequence.lead)
    else:
        task_attrs.update(factor=cfg.task.factor, length=cfg.sequence.length)
    group.attrs.update(
        {
            **task_attrs,
            "variable": source.variable,
            "variable_attrs": {
                k: v for k, v in source.variable_attrs.items() if k != "grid_mapping"
            },
            "source": source.name,
            "timestep_minutes": source.timestep / pd.Timedelta(minutes=1),
            "crop_size": cfg.crop.size,
            "grid": source.grid.to_attrs(),
            "split_counts": summary["split_counts"],
            "statistics": statistics,
            "summary": summary,
            "config": _jsonable(cfg.model_dump()),
            "versions": _versions(),
            "provenance": {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "host": platform.node(),
                "user": _user(),
                "command": " ".join(sys.argv),
                "source_root": str(cfg.source.get("root", "")),
                "input_fingerprint": input_fp,
            },
            "Conventions": "CF-1.8",
            "title": f"geogen {cfg.task.name} crops from {source.name}",
        }
    )
    for name in ("_progress", "_plan"):
        if name in group:
            del group[name]
    group.attrs.pop("planned_samples", None)
    group.attrs["status"] = "complete"
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not in the v3 spec yet; xarray uses it.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(partial))
    _swap_into_place(partial, out)


def _swap_into_place(partial: Path, out: Path) -> None:
    """Rename the finished ``partial`` to ``out``; an old ``out`` goes only once that worked."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _config_identity(cfg: PrepareConfig) -> dict[str, Any]:
    """The parts of the config that decide the store's content (not where or how fast)."""
    d = cfg.model_dump()
    for key in ("out", "overwrite", "progress", "dask", "paths"):
        d.pop(key, None)
    return _jsonable(d)


def _frame_ids(source: Source) -> list[str]:
    paths = getattr(source, "paths", None)
    if paths is not None:
        return [os.path.relpath(p, source.config.get("root", "/")) for p in paths]
    return [source.describe(i) for i in range(min(len(source.times), 1))]


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _read_attrs(path: Path) -> dict[str, Any] | None:
    try:
        attrs = zarr.open_group(path, mode="r").attrs.asdict()
    except Exception:
        return None
    return attrs if "geogen_store_version" in attrs else None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user database in some containers
        return ""


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("geogen", "pysteps", "numpy", "xarray", "zarr", "dask", "distributed", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
