"""Skill of downscalers on the pairs of a downscale store split (``bench_downscale.py --skill``).

Every pair of the split (8 frames of 128 x 128 pixels and their 16 x 16 block means) is
downscaled by each model (``--members`` members for the stochastic ones; interpolation has
one) and scored against the truth, each pair weighted by ``1 / sample_prob``:

- CRPS (mm/h) of the ensemble's empirical distribution, and in the paper's normalised log
  units (:func:`geogen.verification.paper.to_paper_units`) beside Leinonen et al.'s rows;
- CSI at 1 and 8 mm/h, the members' contingency tables pooled;
- rank flatness: reliability index of the rank histogram (pixels where the observation or a
  member reaches 0.1 mm/h, ties broken at random; 0 is flat);
- spectral realism: mean log10 of the member-mean to the observed RAPSD in each octave
  wavelength band (:data:`geogen.verification.spectra.SPECTRAL_BANDS_KM`), the spectra
  averaged over every frame first (0 is the observed power; negative: too smooth).

Intervals: 95 % bootstrap over the pairs' valid times (a draw resamples times, with every pair
of a drawn time), ``--boot`` draws; the same draws for every model, so the paired difference
``CRPS(model) - CRPS(rainfarm)`` has its own interval.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

THRESHOLDS = (1.0, 8.0)
RANK_X_MIN = 0.1


def case_statistics(forecast: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> dict:
    """Sums of one pair: ``forecast`` ``(member, time, y, x)``, ``truth`` ``(time, y, x)``, mm/h."""
    from geogen.verification.paper import to_paper_units
    from geogen.verification.probabilistic import crps_per_pixel, rank_counts
    from geogen.verification.spectra import rapsd

    stats: dict[str, Any] = {
        "crps": float(np.sum(crps_per_pixel(forecast, truth))),
        "crps_paper": float(
            np.sum(crps_per_pixel(to_paper_units(forecast), to_paper_units(truth)))
        ),
        "pixels": float(truth.size),
    }
    for threshold in THRESHOLDS:
        event, observed = forecast >= threshold, truth[None] >= threshold
        stats[f"hits_{threshold:g}"] = float(np.sum(event & observed))
        stats[f"misses_{threshold:g}"] = float(np.sum(~event & observed))
        stats[f"false_{threshold:g}"] = float(np.sum(event & ~observed))
    stats["ranks"] = rank_counts(forecast, truth, RANK_X_MIN, rng)
    power_forecast, _ = rapsd(forecast)  # (member, time, rings)
    power_truth, frequencies = rapsd(truth)
    stats["psd_forecast"] = power_forecast.mean(axis=(0, 1))
    stats["psd_truth"] = power_truth.mean(axis=0)
    stats["frequencies"] = frequencies
    return stats


def aggregate(cases: list[dict], weights: np.ndarray, pixel_km: float) -> dict[str, Any]:
    """Scores of weighted case sums (see the module docstring)."""
    from geogen.verification.probabilistic import rank_flatness
    from geogen.verification.spectra import SPECTRAL_BANDS_KM, band_label, band_log_ratio

    def total(key: str) -> Any:
        return sum(w * case[key] for w, case in zip(weights, cases, strict=True) if w)

    out = {
        "crps": total("crps") / total("pixels"),
        "crps_paper": total("crps_paper") / total("pixels"),
    }
    for threshold in THRESHOLDS:
        hits = total(f"hits_{threshold:g}")
        denominator = hits + total(f"misses_{threshold:g}") + total(f"false_{threshold:g}")
        out[f"csi_{threshold:g}"] = hits / denominator if denominator else float("nan")
    ranks = total("ranks")
    out["rank_flatness"] = float(rank_flatness(ranks / ranks.sum()))
    frequencies = cases[0]["frequencies"]
    with np.errstate(divide="ignore"):
        wavelength = pixel_km / frequencies
    ratios = band_log_ratio(total("psd_forecast"), total("psd_truth"), wavelength)
    for band, ratio in zip(SPECTRAL_BANDS_KM, ratios, strict=True):
        out[f"band_{band_label(band)}km"] = float(ratio)
    return out


def score_store(
    store: str,
    models: dict[str, tuple[str, dict]],
    *,
    split: str = "test",
    members: int = 20,
    boot: int = 1000,
    seed: int = 0,
    max_cases: int | None = None,
) -> dict[str, Any]:
    """Scores with intervals of every model on the pairs of ``store``'s ``split``."""
    import zarr

    from geogen.downscaling import get_downscaler
    from geogen.io.store import split_indices, store_info

    group = zarr.open_group(store, mode="r")
    info = store_info(store)
    indices = split_indices(group, split)
    if max_cases is not None and max_cases < indices.size:
        indices = np.sort(np.random.default_rng(seed).choice(indices, max_cases, replace=False))
    truth_array, lowres_array = group[info.variable], group[f"{info.variable}_lowres"]
    factor = truth_array.shape[-1] // lowres_array.shape[-1]
    sample_prob = np.asarray(group["sample_prob"][:], dtype=np.float64)[indices]
    t0 = np.asarray(group["t0"][:])[indices]
    grid = info.attrs.get("grid", {})
    pixel_km = abs(float(grid.get("dx", 1000.0))) * (1e-3 if grid.get("units", "m") == "m" else 1)
    built = {name: get_downscaler(kind, **kwargs) for name, (kind, kwargs) in models.items()}
    per_model: dict[str, list[dict]] = {name: [] for name in built}
    seconds = dict.fromkeys(built, 0.0)
    for number, index in enumerate(indices):
        truth = np.asarray(truth_array[int(index)], dtype=np.float32)
        lowres = np.asarray(lowres_array[int(index)], dtype=np.float32)
        for name, model in built.items():
            started = time.perf_counter()
            forecast = model.predict(
                lowres,
                factor=model.factor or factor,
                members=members if model.stochastic else 1,
                seed=seed + int(index),
            )
            seconds[name] += time.perf_counter() - started
            rng = np.random.default_rng([seed, number])
            per_model[name].append(case_statistics(forecast, truth, rng))
    weights = 1.0 / sample_prob
    times, groups = np.unique(t0, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = []  # per draw, the weight of each case: its time's count in the draw x 1/p
    for _ in range(boot):
        counts = np.bincount(rng.integers(0, times.size, times.size), minlength=times.size)
        draws.append(weights * counts[groups])
    result: dict[str, Any] = {
        "store": store,
        "split": split,
        "cases": int(indices.size),
        "times": int(times.size),
        "members": members,
        "factor": factor,
        "pixel_km": pixel_km,
        "boot": boot,
        "models": {},
    }
    boot_scores = {}
    for name, cases in per_model.items():
        point = aggregate(cases, weights, pixel_km)
        samples = [aggregate(cases, w, pixel_km) for w in draws]
        boot_scores[name] = samples
        result["models"][name] = {
            "describe": built[name].describe(),
            "seconds": round(seconds[name], 1),
            "scores": {
                key: {
                    "value": value,
                    "low": float(np.nanpercentile([s[key] for s in samples], 2.5)),
                    "high": float(np.nanpercentile([s[key] for s in samples], 97.5)),
                }
                for key, value in point.items()
            },
        }
    if "rainfarm" in boot_scores:
        reference = result["models"]["rainfarm"]["scores"]["crps"]["value"]
        for name in boot_scores:
            if name == "rainfarm":
                continue
            diff = [
                s["crps"] - r["crps"]
                for s, r in zip(boot_scores[name], boot_scores["rainfarm"], strict=True)
            ]
            result["models"][name]["crps_minus_rainfarm"] = {
                "value": result["models"][name]["scores"]["crps"]["value"] - reference,
                "low": float(np.percentile(diff, 2.5)),
                "high": float(np.percentile(diff, 97.5)),
            }
    return result


def markdown(result: dict[str, Any]) -> str:
    """The table of :func:`score_store` (value [low, high]) and the paper's rows."""
    from geogen.verification.paper import PAPER_TABLE
    from geogen.verification.spectra import SPECTRAL_BANDS_KM, band_label

    bands = [f"band_{band_label(band)}km" for band in SPECTRAL_BANDS_KM]
    first = next(iter(result["models"].values()))["scores"]
    bands = [band for band in bands if np.isfinite(first[band]["value"])]
    columns = ["crps", "crps_paper", "csi_1", "csi_8", "rank_flatness", *bands]
    heads = [
        "CRPS mm/h",
        "CRPS (paper units)",
        "CSI 1 mm/h",
        "CSI 8 mm/h",
        "rank flatness",
        *[f"log10 P ratio {band[5:]}" for band in bands],
    ]
    lines = [
        "| model | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    for name, entry in result["models"].items():
        cells = []
        for key in columns:
            s = entry["scores"][key]
            cells.append(f"{s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, row in PAPER_TABLE.items():
        cells = ["" for _ in columns]
        cells[1] = f"{row['paper_crps']:.3f}"
        lines.append(f"| {name}, MCH-RZC | " + " | ".join(cells) + " |")
    return "\n".join(lines)
