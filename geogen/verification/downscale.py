"""Scoring downscaled ensembles against the high-resolution truth (``geogen-score task=downscale``).

Files written by ``geogen-downscale`` (``<variable> (member, time, y, x)`` on the fine grid,
``<variable>_lowres`` its input) are scored against the archive frames at the same grid cells
and times: the truth is known when the input was made by coarsening the archive
(``geogen-downscale source=... time=... coarsen=16``).

- Files are grouped into cases by region and times; every model of a case is scored on the
  same pixels (the rules of :mod:`geogen.verification.scoring`).
- The tidy rows have a ``frame`` column (the index of the frame in the sequence, 0 first)
  where nowcasts have ``lead_time``; ``scores_mean.csv`` averages over the frames.
- Besides the scores in mm/h (CRPS, RMSE/MAE of the ensemble mean, rank histogram, FSS, CSI
  at the thresholds, RAPSD), the metric ``paper`` gives RMSE, MS-SSIM, LSD and CRPS in the
  normalised log units of Leinonen et al. (2020) (:mod:`geogen.verification.paper`), put
  beside the paper's table in the report.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geogen.atomic import write_atomic
from geogen.verification.files import (
    check_crs,
    expand_paths,
    progress_bar,
    region_in_grid,
    source_dict,
)
from geogen.verification.interface import VerificationError
from geogen.verification.scorer import Scorer, ScoreResult, members_identical
from geogen.verification.settings import ScoringSettings, validate_settings

log = logging.getLogger(__name__)


@dataclass
class DownscaleExample:
    """One frame of the example case for the panel: low-res input, truth, members (mm/h)."""

    case: str
    time: pd.Timestamp
    lowres: np.ndarray
    truth: np.ndarray
    members: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _File:
    path: Path
    name: str
    ensemble: Any
    lowres: Any | None
    times: pd.DatetimeIndex
    region: tuple[int, int, int, int]


def downscale_settings(settings: Mapping[str, Any] | ScoringSettings | None) -> ScoringSettings:
    """Scoring settings for downscaling: the given ones, with the ``paper`` metric added."""
    plain = validate_settings(settings).model_dump()
    if "paper" not in plain["metrics"]:
        plain["metrics"] = [*plain["metrics"], "paper"]
    return validate_settings(plain)


def _open_file(path: Path, source_name: str) -> tuple[str, Any, Any]:
    from geogen.downscaling import DownscaleError, open_downscaled
    from geogen.io.writers import open_dataset

    try:
        ensemble = open_downscaled(path)
    except (DownscaleError, OSError, ValueError) as exc:
        raise VerificationError(f"cannot read the downscaled file {path}: {exc}") from None
    made_from = ensemble.attrs.get("source")
    if made_from is not None and str(made_from) != source_name:
        raise VerificationError(
            f"{path} was downscaled from the {made_from!r} archive; the truth is read from "
            f"{source_name!r} (give source={made_from})"
        )
    if "coarsened_from" not in ensemble.attrs:
        log.warning(
            "%s was not made by coarsening an archive (no 'coarsened_from' attribute): its "
            "truth is taken from the %s archive at the same cells and times",
            path,
            source_name,
        )
    lowres_name = f"{ensemble.name}_lowres"
    dataset = open_dataset(path)
    lowres = dataset[lowres_name] if lowres_name in dataset else None
    name = str(ensemble.attrs.get("model") or path.stem)
    return name, ensemble, lowres


def _times(ensemble: Any, label: str, step_minutes: float) -> pd.DatetimeIndex:
    if "time" not in ensemble.coords:
        raise VerificationError(f"{label} has no time coordinate: cannot find its truth")
    times = pd.DatetimeIndex(np.atleast_1d(ensemble["time"].values))
    step = pd.Timedelta(minutes=step_minutes)
    off = [t for t in times if (t - t.normalize()) % step != pd.Timedelta(0)]
    if off:
        raise VerificationError(
            f"{label}: time {off[0]} is not on the archive's {step_minutes:g}-minute steps: "
            "the downscaled frames and the truth must share times"
        )
    return times


def score_downscaled(
    paths: Iterable[str | os.PathLike],
    source: Mapping[str, Any] | str,
    *,
    settings: Mapping[str, Any] | ScoringSettings | None = None,
    progress: bool = False,
    plot_members: int = 3,
) -> tuple[ScoreResult, DownscaleExample | None]:
    """Score downscaled files against the archive's high-resolution frames.

    Parameters
    ----------
    paths
        Files (or glob patterns) written by ``geogen-downscale``: ``(member, time, y, x)``
        on cells of the source grid, in mm/h.
    source
        The archive the truth comes from (a source config or a shipped name).
    settings
        Scoring settings (see :func:`downscale_settings`).
    progress
        Show a progress bar.
    plot_members
        Members kept per model for the panel.

    Returns
    -------
    (ScoreResult, DownscaleExample or None)
        Tidy scores with a ``frame`` column (index in the sequence), and the last frame of the
        first case for the panel.

    Raises
    ------
    VerificationError
        A file off the source grid, at times the archive does not hold or not on its steps,
        from another source, or models of one case with different times.
    """
    from geogen.forecasting import ForecastError, read_frames
    from geogen.forecasting.api import grid_spacing_km
    from geogen.io import SourceError, load_source

    src_cfg = source_dict(source)
    step_minutes = float(src_cfg["timestep"])
    files = expand_paths(paths)
    if not files:
        raise VerificationError("nothing to score: give downscaled files (forecasts=[a.nc,...])")
    scorer = Scorer(downscale_settings(settings), plot_members=plot_members)
    opened: list[_File] = []
    grid = None
    for path in files:
        label = str(path)
        name, ensemble, lowres = _open_file(path, str(src_cfg["name"]))
        times = _times(ensemble, label, step_minutes)
        if grid is None:
            try:
                grid = load_source(src_cfg, times[0], times[0]).grid
            except (SourceError, FileNotFoundError) as exc:
                raise VerificationError(
                    f"cannot read the {src_cfg['name']} archive at {times[0]} (the first time "
                    f"of {label}): {exc}"
                ) from None
            scorer.pixel_size_km = grid_spacing_km(ensemble)
        check_crs(ensemble, grid, label, src_cfg["name"])
        region = tuple(region_in_grid(ensemble, grid, label, src_cfg["name"]))
        opened.append(_File(path, name, ensemble, lowres, times, region))  # type: ignore[arg-type]
    cases: dict[tuple[int, ...], list[_File]] = {}
    for item in opened:
        cases.setdefault(item.region, []).append(item)
    example: DownscaleExample | None = None
    case_times: dict[str, list[str]] = {}
    for region, items in progress_bar(sorted(cases.items()), progress, "cases"):
        groups: dict[tuple[pd.Timestamp, ...], list[_File]] = {}
        for item in items:
            groups.setdefault(tuple(item.times), []).append(item)
        for times, group in groups.items():
            if len(groups) > 1 and any(
                set(times) & set(other) for other in groups if other != times
            ):
                other = next(o for o in groups if o != times and set(times) & set(o))
                raise VerificationError(
                    f"{group[0].path} and {groups[other][0].path} cover region {list(region)} "
                    "at different but overlapping times: models of one case must share times"
                )
            case = f"{times[0]:%Y-%m-%dT%H:%M}..{times[-1]:%H:%M} region {list(region)}"
            case_times[case] = [f"{t:%Y-%m-%dT%H:%M}" for t in times]
            try:
                truth_da = read_frames(
                    src_cfg, times[0], times[-1], region=list(region), require_all=False
                )
            except (ForecastError, SourceError) as exc:
                raise VerificationError(f"truth for {case}: {exc}") from None
            available = pd.DatetimeIndex(truth_da["time"].values)
            missing = [t for t in times if t not in available]
            if missing:
                raise VerificationError(
                    f"{group[0].path}: the {src_cfg['name']} archive has no frame at "
                    f"{missing[0]:%Y-%m-%dT%H:%M} ({len(missing)} of {len(times)} times "
                    "missing): the truth of downscaled frames must be in the archive"
                )
            truth = np.asarray(truth_da.sel(time=list(times)).values, dtype=np.float32)
            forecasts = {}
            names = []
            for item in group:
                name = item.name if item.name not in names else f"{item.name}:{item.path.stem}"
                names.append(name)
                values = np.asarray(
                    item.ensemble.transpose("member", "time", "y", "x").values, dtype=np.float32
                )
                forecasts[name] = values
                _check_lowres(item, truth, case)
            scorer.add_case(case, forecasts, truth, list(range(len(times))))
            if example is None:
                lowres = group[0].lowres
                example = DownscaleExample(
                    case=case,
                    time=times[-1],
                    lowres=np.asarray(lowres.isel(time=-1).values, dtype=np.float32)
                    if lowres is not None
                    else np.full((1, 1), np.nan, dtype=np.float32),
                    truth=truth[-1],
                    members={
                        name: values[:1, -1] if members_identical(values) else values[:, -1]
                        for name, values in forecasts.items()
                    },
                )
    meta = {
        "mode": "downscale",
        "source": src_cfg.get("name"),
        "files": {item.name: str(item.path) for item in opened},
        "case_times": case_times,
        "factor": {
            item.name: item.ensemble.attrs.get("factor", item.ensemble.attrs.get("coarsened_from"))
            for item in opened
        },
        "weights": "equal (1 per case)",
    }
    return _as_frames(scorer.result(meta)), example


def score_downscale_store(
    store: str | os.PathLike,
    models: Mapping[str, Mapping[str, Any]],
    *,
    split: str | None = "test",
    settings: Mapping[str, Any] | ScoringSettings | None = None,
    members: int = 20,
    max_cases: int | None = None,
    seed: int = 0,
    weights: str = "sample_prob",
    progress: bool = False,
    plot_members: int = 3,
) -> tuple[ScoreResult, DownscaleExample | None]:
    """Run downscalers on the pairs of a downscale store split and score them.

    Each pair's ``<variable>_lowres`` ``(time, y/f, x/f)`` is the input and ``<variable>``
    ``(time, y, x)`` the truth; a case is weighted by ``1 / sample_prob`` unless
    ``weights="none"``.

    Parameters
    ----------
    store
        A store from ``geogen-prepare task=downscale``.
    models
        Downscaler name -> keyword arguments (``{"interp": {}, "rainfarm": {}}``, a learned
        model with ``ckpt``).
    members
        Ensemble size (deterministic models run with one member).
    max_cases
        Score a seeded random subset of this many pairs.
    seed
        Seed of the subset and of the ensembles (pair ``i`` uses ``seed + i``).
    """
    from geogen.downscaling import DownscaleError, get_downscaler
    from geogen.verification.store_cases import open_store_cases

    if not models:
        raise VerificationError("scoring a downscale store needs models=[interp, rainfarm, ...]")
    group, info, indices, available = open_store_cases(
        store,
        split,
        task="downscale",
        wrong_task="task=downscale needs a downscale store (geogen-prepare task=downscale)",
        noun="pairs",
        max_cases=max_cases,
        seed=seed,
    )
    truth_array = group[info.variable]
    lowres_array = group[f"{info.variable}_lowres"]
    factor = truth_array.shape[-1] // lowres_array.shape[-1]
    built = {}
    for name, kwargs in models.items():
        try:
            built[name] = get_downscaler(name, **dict(kwargs))
        except DownscaleError as exc:
            raise VerificationError(str(exc)) from None
    sample_prob = np.asarray(group["sample_prob"][:], dtype=np.float64)
    t0 = np.asarray(group["t0"][:])
    grid = info.attrs.get("grid", {})
    scorer = Scorer(downscale_settings(settings), plot_members=plot_members)
    if grid.get("dx") and grid.get("units", "m") in ("m", "km"):
        scorer.pixel_size_km = abs(float(grid["dx"])) * (1.0 if grid["units"] == "km" else 1e-3)
    example: DownscaleExample | None = None
    for i in progress_bar([int(i) for i in indices], progress, "pairs"):
        truth = np.asarray(truth_array[i], dtype=np.float32)
        lowres = np.asarray(lowres_array[i], dtype=np.float32)
        forecasts = {}
        for name, model in built.items():
            try:
                forecasts[name] = model.predict(
                    lowres,
                    factor=model.factor or factor,
                    members=members if model.stochastic else 1,
                    seed=seed + i,
                )
            except DownscaleError as exc:
                raise VerificationError(f"{name} on pair {i}: {exc}") from None
        p = sample_prob[i]
        if weights == "sample_prob" and not (np.isfinite(p) and p > 0):
            raise VerificationError(f"pair {i} has sample_prob {p}: cannot weight it")
        weight = 1.0 / p if weights == "sample_prob" else 1.0
        case = f"pair {i} ({pd.Timestamp(t0[i]):%Y-%m-%dT%H:%M})"
        scorer.add_case(case, forecasts, truth, list(range(truth.shape[0])), weight=weight)
        if example is None:
            example = DownscaleExample(
                case=case,
                time=pd.Timestamp(t0[i]),
                lowres=lowres[-1],
                truth=truth[-1],
                members={name: values[:, -1] for name, values in forecasts.items()},
            )
    meta = {
        "mode": "downscale-store",
        "store": os.fspath(store),
        "split": split,
        "source": info.source,
        "n_cases_available": available,
        "factor": factor,
        "weights": "1 / sample_prob" if weights == "sample_prob" else "equal",
    }
    return _as_frames(scorer.result(meta)), example


def _check_lowres(item: _File, truth: np.ndarray, case: str) -> None:
    """Warn when the file's low-res input is not the block mean of the truth."""
    if item.lowres is None:
        return
    lowres = np.asarray(item.lowres.values, dtype=np.float64)
    t, ny, nx = truth.shape
    if lowres.shape[0] != t or ny % lowres.shape[1] or nx % lowres.shape[2]:
        return
    fy, fx = ny // lowres.shape[1], nx // lowres.shape[2]
    means = truth.reshape(t, lowres.shape[1], fy, lowres.shape[2], fx).mean(axis=(2, 4))
    both = np.isfinite(means) & np.isfinite(lowres)
    if both.any():
        gap = float(np.abs(means[both] - lowres[both]).max())
        if gap > 1e-3 * (1.0 + float(np.abs(means[both]).max())):
            log.warning(
                "%s (%s): its low-resolution input differs from the block means of the truth "
                "by up to %.3g: it was not made by coarsening this archive",
                item.path,
                case,
                gap,
            )


def _as_frames(result: ScoreResult) -> ScoreResult:
    """Rename the Scorer's ``lead_time`` (here the frame index) to ``frame``."""
    rename = {"lead_time": "frame"}
    result.scores = result.scores.rename(columns=rename)
    result.lead_means = result.lead_means.rename(columns=rename)
    result.diagrams = result.diagrams.rename(columns=rename)
    return result


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
#: Ranking columns: (metric, threshold, scale or None for any, pooling), header, lower is better.
DOWNSCALE_RANKING: tuple[tuple[tuple[str, float, int | None, str], str, bool], ...] = (
    (("crps", np.nan, 1, "none"), "CRPS (mm/h)", True),
    (("rmse", np.nan, 1, "none"), "RMSE mean (mm/h)", True),
    (("mae", np.nan, 1, "none"), "MAE mean (mm/h)", True),
    (("csi", 1.0, 1, "none"), "CSI >1", False),
    (("csi", 8.0, 1, "none"), "CSI >8", False),
    (("fss", 1.0, 16, "none"), "FSS ≥1 16px", False),
    (("rank_flatness", np.nan, 1, "none"), "rank flatness", True),
)
#: The paper-units columns.
PAPER_COLUMNS = (
    ("paper_rmse", "RMSE"),
    ("paper_ms_ssim", "MS-SSIM"),
    ("paper_lsd", "LSD (dB)"),
    ("paper_crps", "CRPS"),
)


def _select(means: pd.DataFrame, metric: str, thr: float, scale: int | None, pooling: str) -> Any:
    sel = means[(means["metric"] == metric) & (means["pooling"] == pooling)]
    if scale is not None:
        sel = sel[sel["scale"] == scale]
    if np.isnan(thr):
        sel = sel[sel["threshold"].isna()]
    else:
        sel = sel[sel["threshold"] == thr]
    return sel.groupby("model")["value"].first()


def downscale_ranking(result: ScoreResult) -> pd.DataFrame:
    """Models ranked by frame-averaged CRPS (mm/h), then RMSE, with the other headline scores."""
    means = result.lead_means
    models = list(result.metadata.get("models", []))
    table = pd.DataFrame(index=models)
    for (metric, thr, scale, pooling), header, _ in DOWNSCALE_RANKING:
        values = _select(means, metric, thr, scale, pooling)
        if not values.empty:
            table[header] = values
    sort_by = [c for c in ("CRPS (mm/h)", "RMSE mean (mm/h)") if c in table]
    if sort_by:
        table = table.sort_values(sort_by, na_position="last")
    members = result.metadata.get("members", {})
    table.insert(0, "members", [members.get(m, np.nan) for m in table.index])
    return table


def paper_table(result: ScoreResult) -> pd.DataFrame:
    """Our models in the paper's normalised log units, with the paper's rows below."""
    from geogen.verification.paper import PAPER_TABLE

    means = result.lead_means
    table = pd.DataFrame(index=list(result.metadata.get("models", [])))
    for metric, header in PAPER_COLUMNS:
        values = _select(means, metric, np.nan, None, "none")
        table[header] = values if not values.empty else np.nan
    for label, row in PAPER_TABLE.items():
        table.loc[label] = [row.get(metric, np.nan) for metric, _ in PAPER_COLUMNS]
    return table


def _markdown(table: pd.DataFrame, first: str = "model") -> str:
    headers = [first, *table.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for index, row in table.iterrows():
        cells = [f"`{index}`" if "(" not in str(index) else str(index)]
        for col in table.columns:
            value = row[col]
            if col == "members":
                cells.append("n/a" if not np.isfinite(value) else str(int(value)))
            else:
                cells.append("n/a" if not np.isfinite(value) else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_downscale_report(
    result: ScoreResult,
    out: str | os.PathLike,
    *,
    example: DownscaleExample | None = None,
    plot_settings: Mapping[str, Any] | None = None,
    title: str = "geogen downscaling verification",
) -> Path:
    """``scores.csv``/``.json``, ``scores_mean.csv``, ``diagrams.csv``, plots, ``report.md``."""
    from geogen.verification import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(plot_settings or {})
    dpi = int(settings.get("dpi", 90))
    shown = int(settings.get("members", 3))
    files = {
        "scores.csv": lambda p: result.scores.to_csv(p, index=False),
        "scores.json": lambda p: result.scores.to_json(p, orient="records", indent=1),
        "scores_mean.csv": lambda p: result.lead_means.to_csv(p, index=False),
        "diagrams.csv": lambda p: result.diagrams.to_csv(p, index=False),
        "metadata.json": lambda p: Path(p).write_text(
            json.dumps(result.metadata, indent=1, default=str)
        ),
    }
    for name, write in files.items():
        write_atomic(out / name, write)
    made: dict[str, Path] = {}
    if settings.get("enabled", True):
        folder = out / "plots"
        diagrams = result.diagrams.rename(columns={"frame": "lead_time"})
        frames = sorted({int(f) for f in diagrams.get("lead_time", [])})
        chosen = frames[-1:] if frames else []
        for name, func, kwargs in (
            ("rank_histograms", plots.plot_rank_histograms, {}),
            ("rapsd", plots.plot_rapsd, {"pixel_size_km": result.metadata.get("pixel_size_km")}),
        ):
            path = func(
                diagrams, folder / f"{name}.png", leads=chosen, dpi=dpi, label="frame {}", **kwargs
            )
            if path:
                made[name] = path
        if example is not None:
            path = plots.plot_downscale_panel(
                example.lowres,
                example.truth,
                example.members,
                folder / "downscaled.png",
                shown=shown,
                title=f"{example.case}, frame at {example.time:%Y-%m-%d %H:%M}",
                dpi=dpi,
            )
            if path:
                made["panel"] = path
    meta = result.metadata
    if meta.get("mode") == "downscale-store":
        intro = [
            f"Models run on {len(meta.get('cases', []))} `{meta.get('split')}` pairs of the "
            f"downscale store `{meta.get('store')}` (of {meta.get('n_cases_available')}, "
            f"factor {meta.get('factor')}), pairs weighted by {meta.get('weights')}.",
            "",
        ]
    else:
        intro = [
            f"Downscaled files scored against the `{meta.get('source')}` archive at the same "
            f"grid cells and times, on {len(meta.get('cases', []))} case(s): "
            + ", ".join(f"`{c}`" for c in meta.get("cases", [])[:10])
            + ".",
            "",
            "Files:",
            "",
            *[f"- `{m}`: `{p}`" for m, p in (meta.get("files") or {}).items()],
            "",
        ]
    lines = [
        f"# {title}",
        "",
        *intro,
        "## Ranking",
        "",
        "Scores in physical units averaged over the frames (and cases); models ranked by CRPS "
        "(lower is better). CRPS per pixel of the ensemble; RMSE/MAE of the ensemble mean; CSI "
        "and FSS at thresholds in mm/h (FSS over 16 x 16 pixels); rank flatness 0 = flat.",
        "",
        _markdown(downscale_ranking(result)),
        "",
        "## In the units of Leinonen et al. (2020)",
        "",
        "Rain rates transformed as in the paper: log10(R) for R >= 0.1 mm/h, log10(0.025) "
        "below, clipped at 100 mm/h, normalised to [0, 1]. RMSE, MS-SSIM and the log-spectral "
        "distance (dB) per ensemble member and 128 x 128 image, averaged; CRPS of the ensemble "
        "per pixel. The paper's rows are its MCH-RZC test-set table (GAN trained for days on "
        "years of data, 100-member ensembles, 128 x 128 images, smoothed truth): compare the "
        "order of magnitude and the ranking, not the digits.",
        "",
        _markdown(paper_table(result)),
        "",
    ]
    if "panel" in made:
        lines += ["## Downscaled fields", "", f"![panel](plots/{made['panel'].name})", ""]
    for name, header in (("rank_histograms", "Rank histograms"), ("rapsd", "Power spectra")):
        if name in made:
            lines += [f"## {header}", "", f"![{name}](plots/{made[name].name})", ""]
    lines += [
        "## Files",
        "",
        *[f"- `{name}`" for name in files],
        "",
        "`scores.csv`: one row per `model`, `frame` (index in the sequence), `metric`, "
        "`threshold` (mm/h), `scale` (pixels), `pooling`; `scores_mean.csv` averages over "
        "the frames. `paper_*` rows are in the paper's normalised log units.",
    ]
    path = out / "report.md"
    write_atomic(path, lambda p: Path(p).write_text("\n".join(lines) + "\n"))
    return path
