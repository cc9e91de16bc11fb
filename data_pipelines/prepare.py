"""Build a crop store from a source, in resumable stages, reading each frame once.

Stages (as in anemoi-datasets: init, load parts in parallel, finalise):

1. **init**: from the file times alone, the candidate sequence windows and their splits; the
   bookkeeping arrays of ``OUT.partial`` (frame statistics, progress marks, and staging
   arrays for the crops, chunked and compressed as the store's).
2. **build**, one pass over the archive in time order:

   - **read**: chunks of ``parts.frames`` frames are decoded, in parallel, a few chunks ahead
     of the plan, and **summarised** per tile: no-data pixels, rainy pixels, DGMR's
     saturating rain sum, rain sum;
   - **plan**: from those numbers alone, every sample of the windows whose frames are all
     summarised: complete windows (gaps and unreadable files rejected), crops with too much
     missing data rejected, the time-block split (with a guard so no test time is near a
     training time), the importance-sampling draw of each crop, seeded by its own time and
     position, and its index (the samples before it). A window's fate depends on its own
     frames, so planning a prefix of the archive gives the plan of the whole archive
     (:class:`data_pipelines.plan.SamplePlanner`);
   - **load**: parts of ``parts.windows`` consecutive windows write their crops, from the
     decoded frames, at their final indices; decoded chunks are dropped once no window left
     needs them, so memory holds a few chunks, not the archive.
3. **finalise**: the store's arrays are created with the number of samples, the crops move in
   from the staging arrays (one rename), then per-split statistics, summary, provenance; the
   store is marked complete and renamed from ``OUT.partial`` to ``OUT``.

Each read-and-summarise task and each load part records completion in
``OUT.partial/_progress`` after its data, so a killed run restarted with the same arguments
redoes only unfinished tasks (frames summarised before are read again only where a part
still needs them) and ends with exactly the store a clean run gives, byte for byte, whatever
the number of workers. ``OUT`` itself only ever appears complete.
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from data_pipelines import plan as P
from data_pipelines.config import PrepareConfig
from data_pipelines.plan import (  # the planner (it was here before plan.py took it)
    SAMPLE_COLUMNS,  # noqa: F401  (re-exported)
    Part,
    PartBuilder,
    SamplePlanner,
    neutralise_bad_frames,
    plan_samples,  # noqa: F401  (re-exported)
)
from data_pipelines.runner import Runner, open_runner
from geogen.io.sources import BadFileError, Source, load_source
from geogen.io.store import (
    METADATA_ARRAYS,
    SPLITS,
    STORE_VERSION,
    StoreError,
    create_crop_arrays,
    sampling_warnings,
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

    tic = time.perf_counter()
    with open_runner(cfg.dask, progress=cfg.progress) as runner:
        timings["start"] = time.perf_counter() - tic
        shared = runner.share(source)
        tic = time.perf_counter()
        samples, counts, bad, errors, tiles = _stage_build(cfg, source, shared, partial, runner)
        timings["build"] = time.perf_counter() - tic

    tic = time.perf_counter()
    _stage_commit(cfg, source, samples, partial)
    summary = _summary(cfg, source, samples, counts, bad, errors, tiles)
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    _finalise(cfg, source, partial, out, summary, _statistics(samples), input_fp)
    timings["finalise"] = time.perf_counter() - tic
    summary["timings_s"]["finalise"] = round(timings["finalise"], 3)
    for warning in sampling_warnings(summary):
        log.warning("%s: %s", out, warning)
    return PrepareResult(out, summary, timings=timings)


def _time_offsets(cfg: PrepareConfig, source: Source) -> np.ndarray:
    step = source.timestep / pd.Timedelta(minutes=1)
    k = np.arange(cfg.length)
    if cfg.task.name == "nowcast":
        k = k - (int(cfg.sequence.context) - 1)  # type: ignore[arg-type]
    return np.round(k * step).astype(np.int32)


# --------------------------------------------------------------------------------------------
# the build: read and summarise frames, plan, write crops (one pass over the archive)
# --------------------------------------------------------------------------------------------
@dataclass
class FrameChunk:
    """Frames ``lo .. lo + len(frames)`` of a source, decoded once for the whole build.

    ``frames`` is ``(n, y, x)`` float32 (NaN for unreadable frames, whose ``errors`` entry
    says why).
    """

    lo: int
    frames: np.ndarray
    errors: list[str]


def _read_task(source: Source, lo: int, hi: int, on_bad_file: str) -> FrameChunk:
    frames = np.empty((hi - lo, *source.grid.shape), dtype=np.float32)
    errors = [""] * (hi - lo)
    for k, index in enumerate(range(lo, hi)):
        try:
            frames[k] = source.read(index)
        except BadFileError as exc:
            if on_bad_file == "raise":
                raise
            log.warning("skipping unreadable file (on_bad_file=skip): %s", exc)
            errors[k] = str(exc)
            frames[k] = np.nan
    return FrameChunk(lo, frames, errors)


def _statistics_task(
    store: str,
    chunk_id: int,
    chunk: FrameChunk,
    tiles: np.ndarray,
    size: int,
    rain_threshold: float,
) -> tuple[np.ndarray, list[str]]:
    lo, hi = chunk.lo, chunk.lo + len(chunk.frames)
    stats = np.zeros((hi - lo, len(tiles), P.N_STATS))
    for k, error in enumerate(chunk.errors):
        if error:
            stats[k] = np.nan
        else:
            stats[k] = P.tile_stats(chunk.frames[k], tiles, size, rain_threshold)
    group = zarr.open_group(store, mode="r+")
    group["_plan/frame_stats"][lo:hi] = stats
    group["_plan/frame_error"][lo:hi] = np.asarray(chunk.errors, dtype=object).astype(str)
    group["_progress/statistics_done"][chunk_id] = True  # after the data: marks it complete
    return stats, list(chunk.errors)


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
    *chunks: FrameChunk | None,
) -> int:
    # The frames come from the chunks the build decoded; those it did not (decoded by an
    # earlier, interrupted run) are read again, only those the part's windows use (an
    # unreadable frame between two kept windows, on_bad_file=skip, is never read).
    frame: dict[int, np.ndarray] = {}
    for chunk in chunks:
        if chunk is not None:
            frame.update(enumerate(chunk.frames, start=chunk.lo))
    needed = np.unique(starts[:, None] + np.arange(length))
    missing = [int(i) for i in needed if int(i) not in frame]
    if missing:
        frame.update(zip(missing, source.read_many(missing), strict=True))
    crops = np.empty((len(starts), length, size, size), dtype=np.float32)
    for k, (start, (y0, x0)) in enumerate(zip(starts, corners, strict=True)):
        for t in range(length):
            crops[k, t] = frame[int(start) + t][y0 : y0 + size, x0 : x0 + size]
    # A part's samples are consecutive in the store: one write, chunks encoded concurrently.
    # They go to the build's staging arrays (the store's final arrays are created once the
    # number of samples is known) at their final sample indices.
    group = zarr.open_group(store, mode="r+")
    block = slice(first_sample, first_sample + len(starts))
    group[f"{STAGING}/{variable}"][block] = crops
    if factor:
        group[f"{STAGING}/{variable}_lowres"][block] = block_mean(crops, factor)
    group["_progress/load_done"][part] = True  # after the crops: marks the part complete
    return len(starts)


#: Group of the partial store holding the crops until the number of samples is known.
STAGING = "_staging"


def _init_build(
    cfg: PrepareConfig, source: Source, planner: SamplePlanner, partial: Path, n_tiles: int
) -> None:
    """The build's bookkeeping arrays: frame statistics, progress marks, staging arrays."""
    group = zarr.open_group(partial, mode="r+")
    if "_progress" in group:  # created last: a resumed build has all of them
        return
    for name in ("_plan", STAGING):
        if name in group:
            del group[name]
    n_frames, chunk = len(source.times), cfg.parts.frames
    plan = group.create_group("_plan")
    plan.create_array(
        "frame_stats",
        shape=(n_frames, n_tiles, P.N_STATS),
        chunks=(chunk, n_tiles, P.N_STATS),
        dtype="float64",
        fill_value=np.nan,
    )
    plan.create_array("frame_error", shape=(n_frames,), chunks=(chunk,), dtype=str, fill_value="")
    create_crop_arrays(
        group.create_group(STAGING),
        n_samples=max(planner.max_samples, 1),
        n_times=cfg.length,
        crop_size=cfg.crop.size,
        variable=source.variable,
        variable_attrs=source.variable_attrs,
        time_offsets_minutes=_time_offsets(cfg, source),
        factor=cfg.task.factor if cfg.task.name == "downscale" else None,
    )
    progress = group.create_group("_progress")
    progress.create_array(
        "statistics_done",
        shape=(max(-(-n_frames // chunk), 1),),
        chunks=(1,),
        dtype=bool,
        fill_value=False,
    )
    progress.create_array(
        # at most one part per window
        "load_done",
        shape=(max(len(planner.starts), 1),),
        chunks=(1,),
        dtype=bool,
        fill_value=False,
    )


def _stage_build(
    cfg: PrepareConfig, source: Source, shared: Any, partial: Path, runner: Runner
) -> tuple[pd.DataFrame, dict[str, Any], np.ndarray, list[str], np.ndarray]:
    """Read every frame once; plan windows and write their crops as their frames are known.

    Chunks of ``parts.frames`` frames are read (decoded) and summarised per tile in parallel,
    a few chunks ahead of the plan; the plan advances over the windows whose frames are all
    summarised; each closed part of windows is written from the decoded chunks it needs,
    which are released once no later window needs them (memory holds the frames of the
    open part and the chunks ahead, not the archive).
    """
    tiles = P.tile_origins(source.grid.shape, cfg.crop.size, cfg.crop.stride)
    planner = SamplePlanner(cfg, source, tiles)
    _init_build(cfg, source, planner, partial, len(tiles))
    n_frames, chunk, length = len(source.times), cfg.parts.frames, cfg.length
    n_chunks = -(-n_frames // chunk)
    group = zarr.open_group(partial, mode="r+")
    stats_done = group["_progress/statistics_done"][:n_chunks]
    load_done = group["_progress/load_done"][:]
    frame_stats = np.full((n_frames, len(tiles), P.N_STATS), np.nan)
    errors = np.full(n_frames, "", dtype=object)
    if stats_done.any():
        log.info("statistics: %d of %d chunks already done", int(stats_done.sum()), n_chunks)
        stored = group["_plan/frame_stats"][:]
        stored_errors = np.asarray(group["_plan/frame_error"][:].tolist(), dtype=object)
        for c in np.flatnonzero(stats_done):
            rows = slice(c * chunk, min((c + 1) * chunk, n_frames))
            frame_stats[rows], errors[rows] = stored[rows], stored_errors[rows]
    if load_done.any():
        log.info("load: %d parts already written", int(load_done.sum()))
    bad = errors != ""
    neutralise_bad_frames(frame_stats, bad)
    known_chunks = stats_done.copy()
    factor = cfg.task.factor if cfg.task.name == "downscale" else None
    builder = PartBuilder(cfg.parts.samples, cfg.parts.windows)
    # Chunks read ahead of the plan: enough for a window, and work for every worker.
    ahead = -(-length // chunk) + 1 + 2 * runner.n_workers
    frames_of: dict[int, Any] = {}  # chunk -> future of its FrameChunk, while needed
    statistics: dict[Any, int] = {}  # pending statistics task -> chunk
    loads: dict[Any, Part] = {}  # pending load task -> part
    open_chunks: set[int] = set()  # chunks the open part's windows need
    pieces: list[pd.DataFrame] = []
    next_read = prefix = 0
    bars = _Bars(cfg.progress, n_frames)

    def chunks_of(starts: Iterable[int]) -> set[int]:
        return {c for s in starts for c in range(s // chunk, (s + length - 1) // chunk + 1)}

    def submit_load(part: Part) -> None:
        bars.planned(part.n_samples)
        if load_done[part.index]:
            bars.written(part.n_samples)
            return
        needed = sorted(chunks_of(part.windows))
        future = runner.submit(
            _load_task,
            shared,
            str(partial),
            part.index,
            source.variable,
            part.first_sample,
            np.asarray(part.starts),
            np.asarray(part.corners),
            length,
            cfg.crop.size,
            factor,
            *(frames_of.get(c) for c in needed),
        )
        loads[future] = part

    try:
        while True:
            # 1. read and summarise chunks ahead of the plan
            next_start = planner.next_start
            horizon = n_chunks if next_start is None else next_start // chunk + ahead
            while next_read < min(horizon, n_chunks):
                c = next_read
                next_read += 1
                if known_chunks[c]:
                    continue
                lo, hi = c * chunk, min((c + 1) * chunk, n_frames)
                frames_of[c] = runner.submit(_read_task, shared, lo, hi, cfg.on_bad_file)
                future = runner.submit(
                    _statistics_task,
                    str(partial),
                    c,
                    frames_of[c],
                    tiles,
                    cfg.crop.size,
                    cfg.sampling.rain_threshold,
                )
                statistics[future] = c
            # 2. plan the windows whose frames are summarised; write the parts that closed
            while prefix < n_chunks and known_chunks[prefix]:
                prefix += 1
            samples = planner.advance(frame_stats, bad, min(prefix * chunk, n_frames))
            if len(samples):
                pieces.append(samples)
            closed = builder.add(samples)
            if planner.done and prefix == n_chunks:
                closed += builder.flush()
            for part in closed:
                submit_load(part)
            open_chunks = chunks_of(builder.open.windows) if builder.open else set()
            # 3. release the chunks no window left to write needs
            next_start = planner.next_start
            first_needed = n_chunks if next_start is None else next_start // chunk
            for c in [c for c in frames_of if c < first_needed and c not in open_chunks]:
                del frames_of[c]  # tasks given the chunk keep it until they are done
            if not statistics and not loads:
                if planner.done and prefix == n_chunks and builder.open is None:
                    break
                continue  # the plan moved on: read the next chunks
            # 4. wait for a task
            for future in runner.wait([*statistics, *loads]):
                if future in statistics:
                    c = statistics.pop(future)
                    stats, chunk_errors = future.result()
                    rows = slice(c * chunk, c * chunk + len(chunk_errors))
                    frame_stats[rows], errors[rows] = stats, chunk_errors
                    bad[rows] = errors[rows] != ""
                    neutralise_bad_frames(frame_stats[rows], bad[rows])
                    known_chunks[c] = True
                    bars.read(len(chunk_errors))
                else:
                    part = loads.pop(future)
                    future.result()
                    bars.written(part.n_samples)
    except BaseException:
        runner.cancel([*statistics, *loads])
        raise
    finally:
        bars.close()
    samples = pd.concat(pieces) if pieces else planner.advance(frame_stats, bad, n_frames)
    return samples, planner.summary_counts(), bad, [e for e in errors if e], tiles


class _Bars:
    """Progress bars of the build: frames read and summarised, crops written (of planned)."""

    def __init__(self, enabled: bool, n_frames: int) -> None:
        from tqdm.auto import tqdm

        def bar(desc: str, unit: str, total: int | None) -> Any:
            return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)

        self.frames = bar("frames", "frame", n_frames)
        self.crops = bar("crops", "crop", 0)

    def read(self, n: int) -> None:
        self.frames.update(n)

    def planned(self, n: int) -> None:
        self.crops.total += n
        self.crops.refresh()

    def written(self, n: int) -> None:
        self.crops.update(n)

    def close(self) -> None:
        self.frames.close()
        self.crops.close()


def _stage_commit(cfg: PrepareConfig, source: Source, samples: pd.DataFrame, partial: Path) -> None:
    """The store's arrays, now that the number of samples is known; the crops moved in.

    The crops were written at their final sample indices into staging arrays with the same
    chunks and codecs: their chunk files are the final ones, and move in with one rename.
    """
    group = zarr.open_group(partial, mode="r+")
    n = len(samples)
    variable = source.variable
    factor = cfg.task.factor if cfg.task.name == "downscale" else None
    heavy = [variable] + ([f"{variable}_lowres"] if factor else [])
    if group.attrs.get("planned_samples") is None:
        # No crop has moved in yet: (re)create the arrays from scratch.
        for name in [*heavy, "time", *METADATA_ARRAYS]:
            if name in group:
                del group[name]
        create_crop_arrays(
            group,
            n_samples=n,
            n_times=cfg.length,
            crop_size=cfg.crop.size,
            variable=variable,
            variable_attrs=source.variable_attrs,
            time_offsets_minutes=_time_offsets(cfg, source),
            factor=factor,
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
        group.attrs["planned_samples"] = n
    for name in heavy:
        staged, final = group[f"{STAGING}/{name}"], group[name]
        key = final.metadata.encode_chunk_key((0,) * final.ndim)
        if key != staged.metadata.encode_chunk_key((0,) * staged.ndim) or "/" not in key:
            raise StoreError(f"{partial}: unexpected chunk key layout {key!r}")  # pragma: no cover
        prefix = key.split("/")[0]
        src, dst = partial / STAGING / name / prefix, partial / name / prefix
        if src.exists():
            # One rename: all crops or none. A chunk folder inside the resumable store, moved
            # from staging (geogen.atomic's temporary paths are per call and per process).
            os.replace(src, dst)


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
    for name in ("_progress", "_plan", STAGING):
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
    """Rename the finished ``partial`` to ``out``; an old ``out`` goes only once that worked.

    Not :func:`geogen.atomic.atomic_path`: that helper owns its temporary path for one call
    (named by the process id, removed on any error), while ``partial`` is the staged store that
    survives an interrupted run so the next run resumes it; only the final swap is a rename.
    """
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
