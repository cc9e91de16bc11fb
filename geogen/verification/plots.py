"""Plots of scores, diagrams and forecasts (matplotlib, pysteps' precipitation colours).

Every function takes tidy tables or arrays, writes one PNG (or GIF) and returns its path;
nothing here computes a score. Precipitation fields use
:func:`pysteps.visualization.precipfields.get_colormap` (``intensity``, ``mm/h``,
``pysteps`` colour scale) with pysteps' conventions: rain below 0.1 mm/h is blank and
no-data pixels are grey.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geogen.atomic import atomic_path

log = logging.getLogger(__name__)

#: Metrics drawn against lead time, with their axis label and whether higher is better.
SKILL_METRICS: dict[str, str] = {
    "csi": "CSI",
    "pod": "POD",
    "far": "FAR",
    "bias": "frequency bias",
    "fss": "FSS",
    "crps": "CRPS (mm/h)",
    "brier": "Brier score",
    "spread_skill": "spread-skill ratio",
    "rank_flatness": "rank histogram flatness (RI)",
    "mae": "MAE of the ensemble mean (mm/h)",
    "rmse": "RMSE of the ensemble mean (mm/h)",
}
RAIN_MIN = 0.1  # mm/h: below this pysteps draws no colour


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _colours(models: Sequence[str]) -> dict[str, Any]:
    plt = _pyplot()
    cycle = plt.get_cmap("tab10")
    return {m: cycle(i % 10) for i, m in enumerate(models)}


def _save(fig: Any, path: Path, dpi: int) -> Path:
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        _pyplot().close(fig)
    return path


def _panel_label(row: pd.Series) -> str:
    parts = []
    if np.isfinite(row["threshold"]):
        parts.append(
            f">{row['threshold']:g} mm/h"
            if row["metric"] in _CAT
            else f"≥{row['threshold']:g} mm/h"
        )
    if row["metric"] in ("fss",):
        parts.append(f"{int(row['scale'])} px")
    elif row["pooling"] != "none":
        parts.append(f"{row['pooling']} pool {int(row['scale'])} px")
    elif row["metric"] == "crps":
        parts.append("per pixel")
    return ", ".join(parts) or row["metric"]


_CAT = ("csi", "pod", "far", "bias", "hss", "ets")


def plot_skill(
    scores: pd.DataFrame,
    metric: str,
    path: Path,
    *,
    models: Sequence[str] | None = None,
    dpi: int = 90,
    scales: Sequence[int] | None = None,
) -> Path | None:
    """Score vs lead time, one panel per threshold/scale/pooling, one line per model.

    Shaded bands are the bootstrap confidence intervals (when there are several cases).
    """
    plt = _pyplot()
    data = scores[scores["metric"] == metric]
    if metric == "fss":
        available = sorted(set(data["scale"]))
        if scales is None and len(available) > 3:  # smallest, middle and largest
            scales = [available[0], available[len(available) // 2], available[-1]]
        if scales is not None:
            data = data[data["scale"].isin(scales)]
    if data.empty:
        return None
    models = list(models or dict.fromkeys(data["model"]))
    colours = _colours(models)
    panels = data.drop_duplicates(["threshold", "scale", "pooling"]).sort_values(
        ["pooling", "scale", "threshold"]
    )
    n = len(panels)
    n_thr = panels["threshold"].nunique()
    cols = n_thr if n_thr > 1 and n % n_thr == 0 else min(n, 3 if n > 4 else n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, (_, panel) in zip(axes.ravel(), panels.iterrows(), strict=False):
        sel = data[
            (data["scale"] == panel["scale"])
            & (data["pooling"] == panel["pooling"])
            & (
                (data["threshold"] == panel["threshold"])
                | (data["threshold"].isna() & np.isnan(panel["threshold"]))
            )
        ]
        for model in models:
            line = sel[sel["model"] == model].sort_values("lead_time")
            if line.empty:
                continue
            ax.plot(line["lead_time"], line["value"], marker=".", color=colours[model], label=model)
            if line["ci_low"].notna().any():
                ax.fill_between(
                    line["lead_time"],
                    line["ci_low"],
                    line["ci_high"],
                    color=colours[model],
                    alpha=0.2,
                )
        ax.set_title(_panel_label(panel), fontsize=9)
        ax.set_xlabel("lead time (min)")
        ax.set_ylabel(SKILL_METRICS.get(metric, metric))
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle(SKILL_METRICS.get(metric, metric))
    fig.tight_layout()
    return _save(fig, path, dpi)


def _nearest_leads(available: Sequence[int], wanted: Sequence[int]) -> list[int]:
    available = sorted(set(int(a) for a in available))
    if not available:
        return []
    picked = [min(available, key=lambda a: abs(a - w)) for w in wanted]
    return list(dict.fromkeys(picked))


def plot_rank_histograms(
    diagrams: pd.DataFrame,
    path: Path,
    *,
    leads: Sequence[int],
    dpi: int = 90,
    label: str = "+{} min",
) -> Path | None:
    """Rank histograms: one row per model, one column per lead time (``label`` names it)."""
    plt = _pyplot()
    data = diagrams[diagrams["diagram"] == "rank_histogram"]
    if data.empty:
        return None
    models = list(dict.fromkeys(data["model"]))
    chosen = _nearest_leads(data["lead_time"], leads)
    fig, axes = plt.subplots(
        len(models), len(chosen), figsize=(3.2 * len(chosen), 2.4 * len(models)), squeeze=False
    )
    for i, model in enumerate(models):
        for j, lead in enumerate(chosen):
            ax = axes[i, j]
            sel = data[(data["model"] == model) & (data["lead_time"] == lead)].sort_values("x")
            k = len(sel)
            ax.bar(sel["x"], sel["y"], width=0.9, color="steelblue")
            if k:
                ax.axhline(1.0 / k, color="k", lw=0.8, ls="--")
            ax.set_title(f"{model}, {label.format(lead)}", fontsize=9)
            ax.set_xlabel("rank of the observation")
            ax.set_ylabel("frequency")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_reliability(
    diagrams: pd.DataFrame,
    path: Path,
    *,
    leads: Sequence[int],
    thresholds: Sequence[float] | None = None,
    dpi: int = 90,
) -> Path | None:
    """Reliability diagrams: rows are lead times, columns thresholds, lines models."""
    plt = _pyplot()
    data = diagrams[diagrams["diagram"] == "reliability"]
    if data.empty:
        return None
    models = list(dict.fromkeys(data["model"]))
    colours = _colours(models)
    thr = sorted(set(data["threshold"])) if thresholds is None else list(thresholds)
    chosen = _nearest_leads(data["lead_time"], leads)
    fig, axes = plt.subplots(
        len(chosen), len(thr), figsize=(2.9 * len(thr), 2.9 * len(chosen)), squeeze=False
    )
    for i, lead in enumerate(chosen):
        for j, t in enumerate(thr):
            ax = axes[i, j]
            ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
            for model in models:
                sel = data[
                    (data["model"] == model)
                    & (data["lead_time"] == lead)
                    & (data["threshold"] == t)
                ]
                ok = sel["x"].notna() & sel["y"].notna()
                ax.plot(
                    sel["x"][ok], sel["y"][ok], marker="o", ms=3, color=colours[model], label=model
                )
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"≥{t:g} mm/h, +{lead} min", fontsize=9)
            ax.set_xlabel("forecast probability")
            ax.set_ylabel("observed frequency")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_rapsd(
    diagrams: pd.DataFrame,
    path: Path,
    *,
    leads: Sequence[int],
    pixel_size_km: float | None = None,
    dpi: int = 90,
    label: str = "+{} min",
) -> Path | None:
    """Radially averaged power spectra of forecasts (member mean) and observations."""
    plt = _pyplot()
    data = diagrams[diagrams["diagram"].isin(["rapsd_forecast", "rapsd_observation"])]
    data = data[np.isfinite(data["x"].astype(float))]
    if data.empty:
        return None
    models = list(dict.fromkeys(data["model"]))
    colours = _colours(models)
    chosen = _nearest_leads(data["lead_time"], leads)
    scale = pixel_size_km or 1.0
    unit = "km" if pixel_size_km else "pixels"
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.4), squeeze=False)
    for ax, lead in zip(axes[0], chosen, strict=False):
        obs = data[
            (data["diagram"] == "rapsd_observation")
            & (data["lead_time"] == lead)
            & (data["model"] == models[0])
        ]
        ax.loglog(obs["x"] * scale, obs["y"], color="k", lw=2, label="observation")
        for model in models:
            sel = data[
                (data["diagram"] == "rapsd_forecast")
                & (data["lead_time"] == lead)
                & (data["model"] == model)
            ]
            ax.loglog(sel["x"] * scale, sel["y"], color=colours[model], label=model)
        ax.invert_xaxis()
        ax.set_xlabel(f"wavelength ({unit})")
        ax.set_ylabel("power")
        ax.set_title(label.format(lead), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi)


def precip_colormap() -> tuple[Any, Any, list[float]]:
    """Pysteps' intensity colour map for mm/h: ``(cmap, norm, levels)``."""
    from pysteps.visualization.precipfields import get_colormap

    cmap, norm, levels, _ = get_colormap("intensity", "mm/h", "pysteps")
    cmap = cmap.with_extremes(bad=(0.0, 0.0, 0.0, 0.0))  # masked (dry): blank; no data: grey layer
    return cmap, norm, levels


def _nodata(field: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(field), 1.0, np.nan)


def _rain(field: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_where(~(field >= RAIN_MIN), field)  # dry and no-data: no colour


def _show_field(ax: Any, field: np.ndarray, cmap: Any, norm: Any) -> tuple[Any, Any]:
    """Draw a rain field: grey where no data, blank below 0.1 mm/h, pysteps colours above."""
    nodata = ax.imshow(_nodata(field), cmap="Greys", vmin=0, vmax=4, interpolation="nearest")
    image = ax.imshow(_rain(field), cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return nodata, image


def plot_forecast_panel(
    example: Any, model: str, path: Path, *, leads: Sequence[int], dpi: int = 90
) -> Path | None:
    """Observation, a few members and the ensemble mean of one model at some lead times."""
    plt = _pyplot()
    if example is None or model not in example.members:
        return None
    chosen = _nearest_leads(example.lead_minutes, leads)
    order = [example.lead_minutes.index(lead) for lead in chosen]
    members = example.members[model]
    n_members = members[0].shape[0]
    rows = [("observation", [example.observation[i] for i in order])]
    for m in range(n_members):
        rows.append((f"member {m}", [members[i][m] for i in order]))
    if n_members > 1:
        rows.append(("ensemble mean", [example.mean[model][i] for i in order]))
    cmap, norm, levels = precip_colormap()
    fig, axes = plt.subplots(
        len(rows), len(chosen), figsize=(2.6 * len(chosen) + 1, 2.5 * len(rows)), squeeze=False
    )
    image = None
    for r, (label, fields) in enumerate(rows):
        for c, field in enumerate(fields):
            _, image = _show_field(axes[r, c], field, cmap, norm)
            if r == 0:
                axes[r, c].set_title(f"+{chosen[c]} min", fontsize=9)
        axes[r, 0].set_ylabel(label)
    fig.suptitle(f"{model}: {example.case}")
    if image is not None:
        bar = fig.colorbar(image, ax=axes, ticks=levels, shrink=0.8)
        bar.set_label("rain rate (mm/h)")
    return _save(fig, path, dpi)


def animate_members(
    example: Any, model: str, path: Path, *, dpi: int = 70, fps: float = 3.0
) -> Path | None:
    """A GIF: the observation beside the members of ``model``, one frame per lead time."""
    plt = _pyplot()
    from matplotlib.animation import FuncAnimation, PillowWriter

    if example is None or model not in example.members:
        return None
    members = example.members[model]
    n_members = members[0].shape[0]
    cmap, norm, _ = precip_colormap()
    fig, axes = plt.subplots(1, n_members + 1, figsize=(2.6 * (n_members + 1), 2.9), squeeze=False)
    axes = axes[0]
    titles = ["observation"] + [f"{model} member {m}" for m in range(n_members)]

    def fields(frame: int) -> list[np.ndarray]:
        return [example.observation[frame]] + [members[frame][m] for m in range(n_members)]

    images = []
    for ax, field, title in zip(axes, fields(0), titles, strict=True):
        images.append(_show_field(ax, field, cmap, norm))
        ax.set_title(title, fontsize=8)
    heading = fig.suptitle("", fontsize=9)

    def draw(frame: int) -> list[Any]:
        for (nodata, image), field in zip(images, fields(frame), strict=True):
            nodata.set_data(_nodata(field))
            image.set_data(_rain(field))
        heading.set_text(f"+{example.lead_minutes[frame]} min")
        return [im for pair in images for im in pair]

    anim = FuncAnimation(fig, draw, frames=len(example.lead_minutes), blit=False)
    fig.tight_layout()
    with atomic_path(path, suffix=path.suffix) as tmp:
        anim.save(tmp, writer=PillowWriter(fps=fps), dpi=dpi)
        plt.close(fig)
    return path


def plot_downscale_panel(
    lowres: np.ndarray,
    truth: np.ndarray,
    members: dict[str, np.ndarray],
    path: Path,
    *,
    shown: int = 3,
    title: str = "",
    dpi: int = 90,
) -> Path | None:
    """Low-resolution input and truth, then a row of members per model, one frame.

    Parameters
    ----------
    lowres
        ``(y_lowres, x_lowres)`` mm/h (drawn on the fine grid, block by block).
    truth
        ``(y, x)`` mm/h.
    members
        Model -> ``(member, y, x)`` mm/h: the first ``shown`` members are drawn, then the mean
        of all of them.
    """
    plt = _pyplot()
    if not members:
        return None
    width = max(2, max(min(m.shape[0], shown) + (m.shape[0] > 1) for m in members.values()))
    cmap, norm, levels = precip_colormap()
    rows = 1 + len(members)
    fig, axes = plt.subplots(rows, width, figsize=(2.4 * width + 1, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    factor = truth.shape[-1] // max(lowres.shape[-1], 1)
    coarse = np.repeat(np.repeat(lowres, factor, axis=0), factor, axis=1)
    image = None
    for c, (label, field) in enumerate((("low-res input", coarse), ("truth", truth))):
        ax = axes[0, c]
        ax.set_axis_on()
        _, image = _show_field(ax, field, cmap, norm)
        ax.set_title(label, fontsize=9)
    for r, (model, values) in enumerate(members.items(), start=1):
        fields = [(f"member {m}", values[m]) for m in range(min(values.shape[0], shown))]
        if values.shape[0] > 1:
            fields.append(("ensemble mean", values.mean(axis=0)))
        for c, (label, field) in enumerate(fields):
            ax = axes[r, c]
            ax.set_axis_on()
            _show_field(ax, field, cmap, norm)
            ax.set_title(label, fontsize=8)
        axes[r, 0].set_ylabel(model)
    fig.suptitle(title, fontsize=10)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, ticks=levels, shrink=0.8)
        bar.set_label("rain rate (mm/h)")
    return _save(fig, path, dpi)


def plot_spectral_bands(
    table: pd.DataFrame,
    path: Path,
    *,
    leads: Sequence[int],
    dpi: int = 90,
) -> Path | None:
    """Spectral realism: mean log10 power ratio against wavelength band, one panel per model.

    ``table`` is the wide table of :func:`geogen.verification.report.spectral_table`: one
    row per (model, lead_time), one column per band (``"2-4"``, ... km) and ``max_abs``.
    Each panel has one line per lead time; 0 is the observed power, +1 ten times too much.
    """
    plt = _pyplot()
    if table.empty:
        return None
    bands = [c for c in table.columns if c not in ("model", "lead_time", "max_abs")]
    models = list(dict.fromkeys(table["model"]))
    chosen = _nearest_leads(table["lead_time"], leads)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(
        1, len(models), figsize=(3.6 * len(models), 3.2), squeeze=False, sharey=True
    )
    x = np.arange(len(bands))
    for ax, model in zip(axes[0], models, strict=False):
        for i, lead in enumerate(chosen):
            row = table[(table["model"] == model) & (table["lead_time"] == lead)]
            if row.empty:
                continue
            colour = cmap(i / max(len(chosen) - 1, 1))
            ax.plot(x, row[bands].to_numpy(float)[0], "o-", color=colour, label=f"+{lead} min")
        ax.axhline(0.0, color="k", lw=1)
        ax.set_xticks(x, bands, rotation=45, fontsize=7)
        ax.set_xlabel("wavelength band (km)")
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("log10(P forecast / P observed)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi)
