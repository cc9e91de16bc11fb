"""Writing scoring results: tidy tables (CSV, netCDF, JSON), plots, and ``report.md``.

Layout of an output folder::

    scores.csv / scores.nc / scores.json      one row per (model, lead_time, metric,
                                              threshold, scale, pooling): value, ci_low,
                                              ci_high, n_cases
    scores_dataset.nc                         one variable per metric over model, lead_time,
                                              threshold, scale (as geogen.score returns)
    scores_mean.csv                           the same averaged over lead times (ranking)
    diagrams.csv / diagrams.json              rank histograms, reliability curves, spectra
    plots/*.png, plots/*.gif                  skill vs lead time, diagrams, forecast panels
    report.md                                 ranked table and the plots, with the settings
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geogen.atomic import write_atomic
from geogen.verification import plots
from geogen.verification.scoring import ScoreResult

log = logging.getLogger(__name__)

#: Columns of the ranking table: (metric, threshold, scale, pooling), header, lower is better.
RANKING_COLUMNS: tuple[tuple[tuple[str, float, int, str], str, bool], ...] = (
    (("crps", np.nan, 1, "none"), "CRPS", True),
    (("crps", np.nan, 16, "max"), "CRPS max-pool 16", True),
    (("csi", 1.0, 1, "none"), "CSI >1", False),
    (("csi", 8.0, 1, "none"), "CSI >8", False),
    (("fss", 1.0, 16, "none"), "FSS ≥1 16px", False),
    (("brier", 1.0, 1, "none"), "Brier ≥1", True),
    (("spread_skill", np.nan, 1, "none"), "spread/skill", False),
    (("rmse", np.nan, 1, "none"), "RMSE", True),
)


def write_tables(result: ScoreResult, out: Path) -> dict[str, Path]:
    """``scores.{csv,nc,json}``, ``scores_dataset.nc``, ``scores_mean.csv``, ``diagrams.*``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    scores = result.scores
    paths["scores.csv"] = out / "scores.csv"
    write_atomic(paths["scores.csv"], lambda p: scores.to_csv(p, index=False))
    paths["scores.json"] = out / "scores.json"
    write_atomic(paths["scores.json"], lambda p: scores.to_json(p, orient="records", indent=1))
    paths["scores.nc"] = out / "scores.nc"
    ds = scores.rename_axis("row").to_xarray()
    ds.attrs.update(
        {
            "title": "geogen scores",
            "description": "one row per (model, lead_time, metric, threshold, scale, pooling)",
            "lead_time_units": "minutes",
            "scale_units": "pixels",
            "threshold_units": "mm/h",
            "metadata": json.dumps(_jsonable(result.metadata)),
        }
    )
    write_atomic(paths["scores.nc"], lambda p: ds.to_netcdf(p, engine="netcdf4"))
    # The same scores as geogen.score returns them: a variable per metric over model,
    # lead_time, threshold and scale (weatherbench2 style).
    paths["scores_dataset.nc"] = out / "scores_dataset.nc"
    by_metric = result.to_dataset()
    by_metric.attrs["metadata"] = ds.attrs["metadata"]
    write_atomic(paths["scores_dataset.nc"], lambda p: by_metric.to_netcdf(p, engine="netcdf4"))
    paths["scores_mean.csv"] = out / "scores_mean.csv"
    write_atomic(paths["scores_mean.csv"], lambda p: result.lead_means.to_csv(p, index=False))
    paths["diagrams.csv"] = out / "diagrams.csv"
    write_atomic(paths["diagrams.csv"], lambda p: result.diagrams.to_csv(p, index=False))
    paths["diagrams.json"] = out / "diagrams.json"
    write_atomic(
        paths["diagrams.json"], lambda p: result.diagrams.to_json(p, orient="records", indent=1)
    )
    return paths


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def ranking(result: ScoreResult) -> pd.DataFrame:
    """Models ranked by lead-averaged pixel CRPS (then RMSE), with other headline scores."""
    means = result.lead_means
    table = pd.DataFrame(index=list(result.metadata.get("models", [])))
    for (metric, thr, scale, pooling), header, _ in RANKING_COLUMNS:
        sel = means[
            (means["metric"] == metric)
            & (means["scale"] == scale)
            & (means["pooling"] == pooling)
            & ((means["threshold"] == thr) | (means["threshold"].isna() & np.isnan(thr)))
        ]
        if sel.empty:
            continue
        table[header] = sel.set_index("model")["value"]
        table[header + " CI"] = sel.set_index("model").apply(
            lambda r: (r["ci_low"], r["ci_high"]), axis=1
        )
    sort_by = [c for c in ("CRPS", "RMSE") if c in table]
    if sort_by:
        table = table.sort_values(sort_by, na_position="last")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    members = result.metadata.get("members", {})
    table.insert(1, "members", [members.get(m, np.nan) for m in table.index])
    return table


def spectral_table(result: ScoreResult, leads: Sequence[int] | None = None) -> pd.DataFrame:
    """The ``spectral_bands`` scores as a wide table.

    One row per (model, lead_time) (``leads``: the nearest lead times scored; None: all), one
    column per wavelength band (``"2-4"``, ... km, from short to long) with the mean
    ``log10(P_forecast / P_observation)``, and ``max_abs``, the largest ``|.|`` over the bands.
    Empty when the metric was not scored.
    """
    scores = result.scores
    names = scores["metric"].astype(str)
    rows = scores[names.str.match(r"^spectral_[0-9.]+-[0-9.]+km$") | (names == "spectral_max_abs")]
    if rows.empty:
        return pd.DataFrame(columns=["model", "lead_time", "max_abs"])
    wide = rows.pivot_table(
        index=["model", "lead_time"], columns="metric", values="value", dropna=False, sort=False
    )
    bands = sorted(
        (c for c in wide.columns if c != "spectral_max_abs"),
        key=lambda c: float(c[len("spectral_") :].split("-")[0]),
    )
    wide = wide[[*bands, "spectral_max_abs"]]
    wide.columns = [c[len("spectral_") : -len("km")] for c in bands] + ["max_abs"]
    wide = wide.reset_index()
    if leads is not None:
        chosen = plots._nearest_leads(wide["lead_time"], leads)
        wide = wide[wide["lead_time"].isin(chosen)]
    order = {m: i for i, m in enumerate(result.metadata.get("models", []))}
    wide = wide.sort_values(
        ["model", "lead_time"], key=lambda c: c.map(order) if c.name == "model" else c
    )
    return wide.reset_index(drop=True)


def format_spectral_table(table: pd.DataFrame) -> str:
    """Markdown of :func:`spectral_table` (3 decimals, ``n/a`` for bands without rings)."""
    columns = [c for c in table.columns if c not in ("model", "lead_time")]
    headers = ["model", "lead"] + [f"{c} km" if c != "max_abs" else "max abs" for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        cells = [f"`{row['model']}`", f"+{int(row['lead_time'])} min"]
        cells += [
            "n/a"
            if not np.isfinite(row[c])
            else f"{row[c]:.3f}"
            if c == "max_abs"
            else f"{row[c]:+.3f}"
            for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format_table(table: pd.DataFrame) -> str:
    headers = ["rank", "model", "members"] + [
        c for c in table.columns if c not in ("rank", "members") and not c.endswith(" CI")
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for model, row in table.iterrows():
        cells = [str(int(row["rank"])), f"`{model}`", str(int(row["members"]))]
        for col in headers[3:]:
            value = row[col]
            ci = row.get(col + " CI")
            text = "n/a" if not np.isfinite(value) else f"{value:.3f}"
            if isinstance(ci, tuple) and np.all(np.isfinite(ci)):
                text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_plots(
    result: ScoreResult,
    out: Path,
    *,
    leads: Sequence[int] = (30, 60, 90),
    members: int = 3,
    gif: bool = True,
    dpi: int = 90,
) -> dict[str, Path]:
    """Every plot of the report under ``out/plots``; returns name -> path."""
    folder = out / "plots"
    made: dict[str, Path] = {}
    for metric in plots.SKILL_METRICS:
        path = plots.plot_skill(
            result.scores,
            metric,
            folder / f"skill_{metric}.png",
            models=result.metadata.get("models"),
            dpi=dpi,
        )
        if path:
            made[f"skill_{metric}"] = path
    for name, func, kwargs in (
        ("rank_histograms", plots.plot_rank_histograms, {"leads": leads}),
        ("reliability", plots.plot_reliability, {"leads": leads}),
        (
            "rapsd",
            plots.plot_rapsd,
            {"leads": leads, "pixel_size_km": result.metadata.get("pixel_size_km")},
        ),
    ):
        path = func(result.diagrams, folder / f"{name}.png", dpi=dpi, **kwargs)
        if path:
            made[name] = path
    path = plots.plot_spectral_bands(
        spectral_table(result), folder / "spectral_bands.png", leads=leads, dpi=dpi
    )
    if path:
        made["spectral_bands"] = path
    if result.example is not None:
        for model in result.metadata.get("models", []):
            slug = _slug(model)
            path = plots.plot_forecast_panel(
                result.example, model, folder / f"forecast_{slug}.png", leads=leads, dpi=dpi
            )
            if path:
                made[f"forecast_{model}"] = path
            if gif:
                path = plots.animate_members(result.example, model, folder / f"members_{slug}.gif")
                if path:
                    made[f"animation_{model}"] = path
    return made


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_report(
    result: ScoreResult,
    out: str | os.PathLike,
    *,
    plot_settings: Mapping[str, Any] | None = None,
    title: str = "geogen forecast verification",
) -> Path:
    """Tables, plots and ``report.md`` in ``out``; returns the report's path."""
    out = Path(out)
    settings = dict(plot_settings or {})
    enabled = settings.pop("enabled", True)
    tables = write_tables(result, out)
    made = write_plots(result, out, **settings) if enabled else {}
    meta = result.metadata
    lines = [f"# {title}", ""]
    if meta.get("mode") == "store":
        lines += [
            f"Models run on {len(meta.get('cases', []))} `{meta.get('split')}` cases of the "
            f"crop store `{meta.get('store')}` (of {meta.get('n_cases_available')}), cases "
            f"weighted by {meta.get('weights')}.",
        ]
    else:
        lines += [
            f"Forecasts scored against the `{meta.get('source')}` archive on "
            f"{len(meta.get('cases', []))} case(s): "
            + ", ".join(f"`{c}`" for c in meta.get("cases", [])[:10])
            + ".",
        ]
        files = meta.get("files") or {}
        if files:
            lines += ["", "Forecast files:", ""] + [f"- `{m}`: `{p}`" for m, p in files.items()]
        if meta.get("reference_models"):
            lines += [
                "",
                "Run on the same cases: " + ", ".join(f"`{m}`" for m in meta["reference_models"]),
            ]
    n_cases = len(meta.get("cases", []))
    ci_note = (
        f"Brackets: {100 * meta['settings']['bootstrap']['confidence']:.0f}% bootstrap "
        "intervals over cases (paired across models)."
        if n_cases >= 2 and meta["settings"]["bootstrap"]["n"] > 0
        else "One case: no confidence intervals (they need at least two cases)."
    )
    lines += [
        "",
        "## Ranking",
        "",
        "Scores averaged over lead times; models ranked by CRPS (lower is better). " + ci_note,
        "",
        _format_table(ranking(result)),
        "",
        _pixel_note(result),
        "",
        "## Skill against lead time",
        "",
    ]
    for name, path in made.items():
        if name.startswith("skill_"):
            lines += [f"![{name}](plots/{path.name})", ""]
    for name, header in (
        ("rank_histograms", "Rank histograms"),
        ("reliability", "Reliability diagrams"),
        ("rapsd", "Power spectra (RAPSD)"),
    ):
        if name in made:
            lines += [f"## {header}", "", f"![{name}](plots/{made[name].name})", ""]
    spectral = spectral_table(result, settings.get("leads", (30, 60, 90)))
    if not spectral.empty:
        lines += [
            "## Spectral realism",
            "",
            "Mean log10(P_forecast / P_observed) per wavelength band (member spectra averaged, "
            "cases weighted, RAPSD), and its largest absolute value over the bands: 0 is the "
            "observed power, +1 ten times too much (speckle), -1 ten times too little (blur).",
            "",
            format_spectral_table(spectral),
            "",
        ]
        if "spectral_bands" in made:
            lines += [f"![spectral_bands](plots/{made['spectral_bands'].name})", ""]
    panels = [(n, p) for n, p in made.items() if n.startswith(("forecast_", "animation_"))]
    if panels:
        example = result.example.case if result.example is not None else ""
        lines += ["## Forecasts", "", f"Case `{example}`.", ""]
        lines += [f"![{n}](plots/{p.name})" for n, p in panels] + [""]
    lines += [
        "## Files",
        "",
        *[f"- `{name}`" for name in tables],
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(_jsonable(meta.get("metric_settings", {})), indent=1),
        "```",
        "",
        _conventions(),
    ]
    path = out / "report.md"
    write_atomic(path, lambda p: Path(p).write_text("\n".join(lines) + "\n"))
    return path


def _pixel_note(result: ScoreResult) -> str:
    scores = result.scores
    scored = scores[scores["metric"] == "scored_pixels"].groupby("model")["value"].sum()
    excluded = scores[scores["metric"] == "excluded_pixels"].groupby("model")["value"].sum()
    if scored.empty:
        return ""
    model = scored.index[0]
    total = scored[model] + excluded.get(model, 0.0)
    share = 100.0 * excluded.get(model, 0.0) / total if total else 0.0
    return (
        f"Scored pixels (all cases and leads): {scored[model]:.0f}; {share:.1f}% of the "
        "observed pixels were left out because a forecast had no value there (e.g. rain "
        "advected in from outside the grid), for every model alike."
    )


def _conventions() -> str:
    return (
        "Conventions: CSI/POD/FAR/bias/HSS/ETS count events `value > threshold` (pysteps' "
        "`det_cat_fct`), with tables summed over members; FSS and exceedance probabilities use "
        "`value >= threshold`; CRPS is the exact CRPS of the ensemble's empirical distribution, "
        "pooled CRPS scores average- or max-pooled fields; rank-histogram flatness is the "
        "reliability index (0 = flat); spread/skill is sqrt((M+1)/M var) / RMSE of the mean "
        "(1 = reliable); deterministic forecasts are scored as one member. Scales are in pixels."
    )
