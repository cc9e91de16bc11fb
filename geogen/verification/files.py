"""Forecast files against archive observations: alignment and :func:`score_files`.

A file's region is found from its ``x``/``y`` on the source grid, its CRS and valid times are
checked; models given by name are run on the same cases.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geogen.verification.interface import VerificationError
from geogen.verification.scorer import Scorer, ScoreResult
from geogen.verification.settings import ScoringSettings

log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    """A forecaster to run on each case: registered name, keyword arguments, and its label.

    ``label`` names the model's rows in the scores (default: ``name``), so one forecaster
    can be scored twice, e.g. two checkpoints of ``dgmr_advect``.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def display(self) -> str:
        """The name of the model's rows in the scores."""
        return self.label or self.name

    def build(self) -> Any:
        """The :class:`~geogen.forecasting.Forecaster`."""
        from geogen.forecasting import get_forecaster

        return get_forecaster(self.name, **self.kwargs)


def region_in_grid(forecast: Any, grid: Any, label: str, source: str) -> list[int]:
    """``[y0, x0, height, width]`` of a forecast's cells in a source grid.

    Raises
    ------
    VerificationError
        When the forecast has no ``x``/``y`` coordinates or they do not fall on the grid.
    """
    for name in ("x", "y"):
        if name not in forecast.coords:
            raise VerificationError(
                f"{label} has no {name} coordinate: cannot find its cells in the {source} grid"
            )
    offsets = []
    for name, axis in (("y", np.asarray(grid.y)), ("x", np.asarray(grid.x))):
        coords = np.asarray(forecast[name].values, dtype=np.float64)
        step = abs(float(axis[1] - axis[0])) if len(axis) > 1 else 1.0
        tol = 1e-3 * step
        start = int(np.argmin(np.abs(axis - coords[0])))
        stop = start + len(coords)
        if (
            abs(axis[start] - coords[0]) > tol
            or stop > len(axis)
            or not np.allclose(axis[start:stop], coords, rtol=0, atol=tol)
        ):
            raise VerificationError(
                f"{label}: its {name} coordinates ({coords[0]:g} .. {coords[-1]:g}, "
                f"{len(coords)} cells) do not fall on the {source} grid ({name} from "
                f"{axis[0]:g} every {axis[1] - axis[0]:g} {grid.units}, {len(axis)} cells): "
                "forecast and observations must share a grid"
            )
        offsets.append(start)
    return [offsets[0], offsets[1], forecast.sizes["y"], forecast.sizes["x"]]


def check_crs(forecast: Any, grid: Any, label: str, source: str) -> None:
    """Raise :class:`VerificationError` when a forecast's CRS differs from the grid's."""
    if "crs" not in forecast.coords:
        return
    import pyproj

    attrs = forecast["crs"].attrs
    text = attrs.get("crs_wkt") or attrs.get("proj4")
    if not text:
        return
    try:
        same = pyproj.CRS.from_user_input(text) == pyproj.CRS.from_user_input(grid.crs)
    except pyproj.exceptions.CRSError:
        return
    if not same:
        raise VerificationError(
            f"{label} is in another projection than the {source} archive "
            f"({attrs.get('proj4', '?')} vs {grid.crs}): forecast and observations must "
            "share a grid"
        )


def _valid_times(forecast: Any, label: str, step_minutes: float) -> tuple[pd.Timestamp, list]:
    if "issue_time" not in forecast.coords:
        raise VerificationError(f"{label} has no issue_time coordinate")
    issue = pd.Timestamp(forecast["issue_time"].values)
    lead = pd.to_timedelta(forecast["lead_time"].values)
    valid = [issue + d for d in lead]
    if "time" in forecast.coords:
        stored = pd.DatetimeIndex(np.atleast_1d(forecast["time"].values))
        if len(stored) == len(valid) and not (stored == pd.DatetimeIndex(valid)).all():
            raise VerificationError(
                f"{label}: its time coordinate does not equal issue_time + lead_time"
            )
    step = pd.Timedelta(minutes=step_minutes)
    off_grid = [t for t in valid if (t - issue) % step != pd.Timedelta(0)]
    if off_grid:
        raise VerificationError(
            f"{label}: valid time {off_grid[0]} is not a multiple of the archive's "
            f"{step_minutes:g}-minute step after the issue time {issue}: forecast and "
            "observation times must match"
        )
    return issue, valid


def _open(path: str | os.PathLike) -> Any:
    from geogen.forecasting import ForecastError, open_forecast

    try:
        return open_forecast(path)
    except ForecastError as exc:
        raise VerificationError(str(exc)) from None


def expand_paths(patterns: Iterable[str | os.PathLike]) -> list[Path]:
    """Forecast files from paths and glob patterns (sorted, without duplicates)."""
    import glob

    out: list[Path] = []
    for pattern in patterns:
        text = os.fspath(pattern)
        matches = sorted(glob.glob(text)) if any(c in text for c in "*?[") else [text]
        if not matches:
            raise VerificationError(f"no forecast file matches {text!r}")
        out.extend(Path(m) for m in matches)
    return list(dict.fromkeys(out))


def _model_name(forecast: Any, path: Path) -> str:
    return str(forecast.attrs.get("model") or path.stem)


def score_files(
    paths: Iterable[str | os.PathLike],
    source: Mapping[str, Any] | str,
    *,
    settings: Mapping[str, Any] | ScoringSettings | None = None,
    models: Sequence[ModelSpec] = (),
    members: int = 20,
    seed: int = 0,
    cases: Sequence[tuple[Any, Sequence[int] | None, int]] = (),
    margin: int = 0,
    progress: bool = False,
    plot_members: int = 3,
) -> ScoreResult:
    """Score forecast files (and models run on the same cases) against archive observations.

    Parameters
    ----------
    paths
        Forecast files (``.nc``/``.zarr`` from ``geogen-forecast`` or any file with the same
        layout: ``precip (member, lead_time, y, x)`` in mm/h, ``issue_time``, ``x``/``y`` in
        the source projection).
    source
        The archive the observations come from (a source config or a shipped name).
    settings
        Scoring settings.
    models
        Forecasters run on every case (the issue time and region of each file, and
        ``cases``), with ``members`` members and seed ``seed``.
    cases
        Extra cases ``(issue_time, region or None, leads)`` for ``models``.
    margin
        Models forecast a region from a context this many pixels wider on each side.
    progress
        Show a progress bar.

    Returns
    -------
    ScoreResult
    """
    from geogen.forecasting import (
        ForecastError,
        expand_region,
        forecast,
        read_context,
        read_frames,
    )
    from geogen.io import SourceError, load_source

    scorer = Scorer(settings, plot_members=plot_members)
    files = expand_paths(paths)
    if not files and not (models and cases):
        raise VerificationError("nothing to score: give forecast files, or models and cases")
    opened = []
    for path in files:
        fc = _open(path)
        opened.append((path, fc))
    grouped: dict[tuple[pd.Timestamp, tuple[int, ...] | None], dict[str, Any]] = {}
    src_cfg = source_dict(source)
    step_minutes = float(src_cfg["timestep"])
    grid_cache: dict[pd.Timestamp, Any] = {}

    def grid_for(issue: pd.Timestamp) -> Any:
        if issue not in grid_cache:
            try:
                grid_cache[issue] = load_source(src_cfg, issue, issue).grid
            except (SourceError, FileNotFoundError) as exc:
                raise VerificationError(
                    f"cannot read the {src_cfg['name']} archive at {issue}: {exc}"
                ) from None
        return grid_cache[issue]

    names: dict[str, Path] = {}
    for path, fc in opened:
        label = str(path)
        issue, _ = _valid_times(fc, label, step_minutes)
        grid = grid_for(issue)
        check_crs(fc, grid, label, src_cfg["name"])
        region = tuple(region_in_grid(fc, grid, label, src_cfg["name"]))
        name = _model_name(fc, path)
        if name in grouped.get((issue, region), {}):
            name = f"{name}:{path.stem}"
        names[name] = path
        grouped.setdefault((issue, region), {})[name] = fc
    for issue_time, region, leads in cases:
        key = (pd.Timestamp(issue_time), tuple(int(v) for v in region) if region else None)
        grouped.setdefault(key, {}).setdefault("__leads__", int(leads))
    if scorer.pixel_size_km is None and opened:
        from geogen.forecasting.api import grid_spacing_km

        scorer.pixel_size_km = grid_spacing_km(opened[0][1])
    clash = sorted({spec.display for spec in models} & set(names))
    if clash:
        raise VerificationError(
            f"{clash} name both a forecast file and a model run on its cases; give the model "
            "a label (ModelSpec(..., label=...)) so neither replaces the other"
        )
    built = [(spec, spec.build()) for spec in models]
    items = sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] or ()))
    iterator = progress_bar(items, progress, "cases")
    for (issue, region), entries in iterator:
        region_list = list(region) if region else None
        n_leads = max(
            [fc.sizes["lead_time"] for k, fc in entries.items() if k != "__leads__"]
            + [entries.get("__leads__", 0)]
        )
        if n_leads == 0:
            continue
        in_memory: dict[str, Any] = {k: v for k, v in entries.items() if k != "__leads__"}
        for spec, model in built:
            try:
                wide, crop = expand_region(region_list, margin, grid_for(issue).shape)
                context = read_context(src_cfg, issue, model.n_context, region=wide)
                run = forecast(model, context, members=members, leads=n_leads, seed=seed)
                run = run.isel(y=crop[0], x=crop[1])
            except (ForecastError, SourceError) as exc:
                raise VerificationError(f"{spec.name} at {issue}: {exc}") from None
            in_memory[spec.display] = run
            if scorer.pixel_size_km is None:
                from geogen.forecasting.api import grid_spacing_km

                scorer.pixel_size_km = grid_spacing_km(context)
        lead_list = sorted({m for fc in in_memory.values() for m in _lead_minutes(fc)})
        first, last = (issue + pd.Timedelta(minutes=m) for m in (lead_list[0], lead_list[-1]))
        try:
            obs_da = read_frames(src_cfg, first, last, region=region_list, require_all=False)
        except (ForecastError, SourceError) as exc:
            raise VerificationError(f"observations for {issue}: {exc}") from None
        case = f"{issue:%Y-%m-%dT%H:%M}" + (f" region {list(region)}" if region else "")
        obs_times = pd.DatetimeIndex(obs_da["time"].values)
        for lead in lead_list:
            valid_time = issue + pd.Timedelta(minutes=lead)
            if valid_time in obs_times:
                obs = np.asarray(obs_da.sel(time=valid_time).values, dtype=np.float32)
            else:
                log.warning("%s: no observation at %s (lead %d min)", case, valid_time, lead)
                continue
            slices = {}
            for name, fc in in_memory.items():
                leads_fc = _lead_minutes(fc)
                if lead not in leads_fc:
                    continue
                values = np.asarray(
                    fc.isel(lead_time=leads_fc.index(lead)).values, dtype=np.float32
                )
                if values.shape[-2:] != obs.shape:
                    raise VerificationError(
                        f"{name}: forecast grid {values.shape[-2:]} differs from the "
                        f"observation {obs.shape} for {case}"
                    )
                slices[name] = values[:, None]
            if slices:
                scorer.add_case(case, slices, obs[None], [lead])
    if not scorer.states:
        raise VerificationError(
            "nothing was scored: no observation of the archive at the forecasts' valid times "
            f"(source {src_cfg.get('name')}, root {src_cfg.get('root')})"
        )
    meta = {
        "mode": "files",
        "source": src_cfg.get("name"),
        "files": {name: str(path) for name, path in names.items()},
        "reference_models": [spec.display for spec in models],
        "weights": "equal (1 per case)",
    }
    return scorer.result(meta)


def _lead_minutes(fc: Any) -> list[int]:
    from geogen.forecasting import lead_minutes

    return [int(v) for v in lead_minutes(fc)]


def source_dict(source: Mapping[str, Any] | str) -> dict[str, Any]:
    """A source config as a plain dict (a shipped name is loaded from ``conf/source``)."""
    from geogen.config import load_source_config, to_plain

    if isinstance(source, str):
        return load_source_config(source)
    return to_plain(source)


def progress_bar(items: Sequence[Any], show: bool, unit: str) -> Iterable[Any]:
    """``items``, wrapped in a tqdm progress bar when ``show``."""
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, unit=unit, desc="scoring")
