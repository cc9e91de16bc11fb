"""Skill of the learned nowcasters against pysteps on the test split of the radar stores.

    python benchmarks/bench_skill.py                           # train each model, score
    python benchmarks/bench_skill.py --train dgmr_advect_tiny=20 dgmr_tiny=45
    python benchmarks/bench_skill.py --train dgmr_steps_tiny=10 --models dgmr_advect
    python benchmarks/bench_skill.py --train none               # only the shipped checkpoints
    python benchmarks/bench_skill.py --train none --models dgmr_steps --cases 4 --members 8
    python benchmarks/bench_skill.py --cases 16 --members 20 --out outputs/bench_skill

What it does, from a fresh clone on a 2-core CPU (about two hours with the defaults, 25
minutes of them the STEPS members that ``dgmr_steps_tiny`` caches beside every store):

1. builds the crop stores of every 5-minute radar source of the sample data
   (``scripts/prepare_stores.sh``: mch and fmi train, the RMI 2021-07-04 event is the
   validation split, the MeteoSwiss 2016-07-11 event the test split) unless ``--stores``
   points at existing ones;
2. trains each ``--train`` experiment (``NAME=MINUTES``, any ``conf/experiment`` name) with
   ``geogen-train experiment=NAME data=radar_5min trainer.max_time=...`` (a fixed CPU budget)
   and keeps the checkpoint with the best validation score (``ModelCheckpoint(monitor=...)``
   on the RMI event; never a test-split choice); the forecaster that reads it is the one
   named in the checkpoint (``geogen.model``), so a new experiment needs no change here;
3. scores, on ``--cases`` test crops of the mch store (a seeded subset, each weighted by
   ``1 / sample_prob``): every freshly trained model, ``--ckpt`` checkpoints, the registered
   forecasters of ``--models`` with their shipped weights (default: every checkpoint geogen
   ships, ``checkpoints/``), pysteps STEPS, pysteps extrapolation and persistence, all with
   ``--members`` members for the stochastic models (``--split val`` scores the RMI
   validation crops instead: designs are compared there, at the forecast's ensemble size,
   never on test);
4. prints one JSON document and markdown tables: CRPS (mm/h) at +30, +60 and +90 min, CSI at
   1 and 4 mm/h (mean over the 18 leads), FSS at 1 mm/h over 16 px (mean over leads), the
   share of observations above every member (last bin of the rank histogram) at +90 min, the
   spread/skill ratio (mean over leads), the spectral max |log10 power ratio| at +30/+60/+90;
   the CRPS difference to STEPS per lead with **paired** 95 % bootstrap intervals that resample
   forecast start times (the overlapping crops of one start time together; same draws for
   every model); the spectral realism per wavelength band (``spectral_bands``); and the
   targets of issue 17 for every learned model: CRPS below STEPS at every lead with the paired
   interval below 0 at +30/+60/+90, spectral max |.| no larger than STEPS' at +30/+60/+90, the
   rank histogram's last bin at +90 min below STEPS', CSI at 4 mm/h at least extrapolation's.
   Single-model intervals of the main table resample crops (as ``geogen-score``).

The ``geogen-score`` report of the same scores (plots, rank histograms, spectra, GIFs) is
written to ``OUT/scores``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN = (
    "dgmr_steps_tiny=10",
    "dgmr_advect_tiny=20",
    "dgmr_tiny=45",
    "vae_nowcast_tiny=4",
    "flow_nowcast_tiny=4",
)
LEADS_SHOWN = (30, 60, 90)
#: The store of each split scored (``--split``).
SPLIT_STORES = {"test": "mch.zarr", "val": "rmi.zarr"}


def run(cmd: list[str], log: Path) -> None:
    """Run ``cmd``, its output into ``log``; raise with the log's tail when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")


def entry_point(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def build_stores(out: Path) -> Path:
    stores = out / "stores"
    run(["bash", str(REPO / "scripts" / "prepare_stores.sh"), str(stores)], out / "prepare.log")
    return stores


def train(name: str, minutes: float, stores: Path, out: Path) -> Path:
    """``geogen-train experiment=name`` for ``minutes``; its best validation checkpoint."""
    run_dir = out / "train" / name
    hms = time.strftime("%H:%M:%S", time.gmtime(int(minutes * 60)))
    cmd = [
        entry_point("geogen-train"),
        f"experiment={name}",
        "data=radar_5min",
        f"paths.stores={stores}",
        f"trainer.max_time=00:{hms}",
        "trainer.max_epochs=10000",
        "callbacks.progress_bar.refresh_rate=50",
        f"hydra.run.dir={run_dir}",
    ]
    run(cmd, out / f"train-{name}.log")
    return best_val_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def best_val_checkpoint(last: Path) -> Path:
    """The checkpoint a run's ``ModelCheckpoint`` chose on a ``val/`` score (from ``last``).

    Raises SystemExit when the run selected nothing on validation (no validation epoch ran,
    or the checkpoint callback had no ``val/`` monitor): weights are never chosen otherwise.
    """
    import torch

    state = torch.load(last, map_location="cpu", weights_only=False)
    for key, value in (state.get("callbacks") or {}).items():
        monitor = str(value.get("monitor") or "") if isinstance(value, dict) else ""
        if key.startswith("ModelCheckpoint") and monitor.startswith("val/"):
            best = value.get("best_model_path")
            if best and Path(best).is_file():
                score = value.get("best_model_score")
                print(
                    f"[bench_skill] {last.parent.parent.name}: best {monitor} = {float(score):.4f}"
                    f" -> {Path(best).name}",
                    file=sys.stderr,
                )
                return Path(best)
    raise SystemExit(
        f"{last}: no checkpoint selected on a val/ score (did a validation epoch run? is "
        "callbacks.model_checkpoint.monitor set?); bench_skill never scores unselected weights"
    )


def checkpoint_model(path: str | Path) -> str:
    """The forecaster that reads ``path``: the model named in its ``geogen`` metadata."""
    import torch

    meta = torch.load(path, map_location="cpu", weights_only=False).get("geogen") or {}
    if not meta.get("model"):
        raise SystemExit(f"{path} names no model (not a geogen checkpoint?)")
    return str(meta["model"])


def check_names(experiments: list[str], models: list[str]) -> None:
    """Fail before any work for an unknown experiment or forecaster (listing valid ones)."""
    from geogen.forecasting import available_forecasters
    from geogen.training import available_experiments

    unknown = [e for e in experiments if e not in available_experiments()]
    if unknown:
        raise SystemExit(
            f"unknown experiments {unknown}; valid: {', '.join(available_experiments())}"
        )
    unknown = [m for m in models if m not in available_forecasters()]
    if unknown:
        raise SystemExit(
            f"unknown forecasters {unknown}; valid: {', '.join(available_forecasters())}"
        )


def rank_last_bin(diagrams: pd.DataFrame, model: str, lead: int) -> float:
    rows = diagrams[
        (diagrams.model == model)
        & (diagrams.lead_time == lead)
        & (diagrams.diagram == "rank_histogram")
    ]
    if rows.empty:
        return float("nan")
    rows = rows.sort_values("x")
    return float(rows.y.iloc[-1] / rows.y.sum())


def pick(scores: pd.DataFrame, model: str, metric: str, lead: int | None = None, **key) -> dict:
    rows = scores[(scores.model == model) & (scores.metric == metric)]
    for name, value in key.items():
        if isinstance(value, str):
            rows = rows[rows[name] == value]
        else:
            rows = rows[np.isclose(rows[name].astype(float), value)]
    if lead is not None:
        rows = rows[rows.lead_time == lead]
    if rows.empty:
        return {"value": float("nan"), "ci": [float("nan"), float("nan")]}
    row = rows.iloc[0]
    return {"value": float(row.value), "ci": [float(row.ci_low), float(row.ci_high)]}


def summarise(
    scores: pd.DataFrame,
    means: pd.DataFrame,
    diagrams: pd.DataFrame,
    models: list[str],
    paired: pd.DataFrame,
) -> dict:
    """The benchmark's figures per model from the tidy score tables of ``geogen-score``."""
    from geogen.verification.spectra import SPECTRAL_BANDS_KM, SPECTRAL_MAX_ABS, band_score_name

    scores = scores[scores.lead_time.astype(str) != "mean"].copy()
    scores["lead_time"] = scores.lead_time.astype(int)
    diagrams = diagrams.copy()
    diagrams["lead_time"] = diagrams.lead_time.astype(int)
    out = {}
    for model in models:
        entry = {
            f"crps_{lead}": pick(scores, model, "crps", lead, pooling="none", scale=1)
            for lead in LEADS_SHOWN
        }
        for thr in (1.0, 4.0):
            entry[f"csi_{thr:g}"] = pick(means, model, "csi", threshold=thr, scale=1)
        entry["fss_1_16"] = pick(means, model, "fss", threshold=1.0, scale=16)
        entry["rank_last_bin_90"] = {"value": rank_last_bin(diagrams, model, 90)}
        entry["rank_flatness_90"] = pick(scores, model, "rank_flatness", 90)
        entry["spread_skill"] = pick(means, model, "spread_skill")
        entry["crps_by_lead"] = {
            int(lead): float(v)
            for lead, v in scores[
                (scores.model == model)
                & (scores.metric == "crps")
                & (scores.pooling == "none")
                & (scores.scale == 1)
            ][["lead_time", "value"]].itertuples(index=False)
        }
        rows = paired[paired.model == model].set_index("lead_time")
        entry["crps_minus_steps"] = {
            int(lead): {
                "value": float(rows.difference.get(lead, np.nan)),
                "ci": [float(rows.ci_low.get(lead, np.nan)), float(rows.ci_high.get(lead, np.nan))],
            }
            for lead in LEADS_SHOWN
        }
        entry["crps_by_start_time"] = {
            int(lead): {
                "value": float(rows.value.get(lead, np.nan)),
                "ci": [
                    float(rows.value_ci_low.get(lead, np.nan)),
                    float(rows.value_ci_high.get(lead, np.nan)),
                ],
            }
            for lead in LEADS_SHOWN
        }
        entry["spectral_max_abs"] = {
            int(lead): pick(scores, model, SPECTRAL_MAX_ABS, lead)["value"]
            for lead in sorted(scores.lead_time.unique())
        }
        entry["spectral_bands"] = {
            int(lead): {
                f"{low:g}-{high:g}": pick(scores, model, band_score_name((low, high)), lead)[
                    "value"
                ]
                for low, high in SPECTRAL_BANDS_KM
            }
            for lead in LEADS_SHOWN
        }
        out[model] = entry
    return out


def targets(summary: dict, learned: list[str]) -> dict:
    """Issue 17's targets for each learned model, against STEPS and extrapolation."""
    steps, extrap = summary["pysteps_steps"], summary["pysteps_extrapolation"]
    leads = steps["crps_by_lead"]
    checks = {}
    for model in learned:
        entry = summary[model]
        ci_high = {lead: entry["crps_minus_steps"][lead]["ci"][1] for lead in LEADS_SHOWN}
        spectral = {
            lead: (entry["spectral_max_abs"].get(lead, np.nan), steps["spectral_max_abs"].get(lead))
            for lead in LEADS_SHOWN
        }
        check = {
            "crps_below_steps_every_lead": all(
                entry["crps_by_lead"][lead] < leads[lead] for lead in leads
            ),
            "crps_leads_below_steps": int(
                sum(entry["crps_by_lead"][lead] < leads[lead] for lead in leads)
            ),
            "n_leads": len(leads),
            "paired_crps_interval_below_0_at_30_60_90": all(v < 0 for v in ci_high.values()),
            "spectral_max_abs_not_above_steps_at_30_60_90": all(
                mine <= ref for mine, ref in spectral.values()
            ),
            "rank_last_bin_90_below_steps": entry["rank_last_bin_90"]["value"]
            < steps["rank_last_bin_90"]["value"],
            "csi_4_at_least_extrapolation": entry["csi_4"]["value"] >= extrap["csi_4"]["value"],
        }
        targets_met = [
            "crps_below_steps_every_lead",
            "paired_crps_interval_below_0_at_30_60_90",
            "spectral_max_abs_not_above_steps_at_30_60_90",
            "rank_last_bin_90_below_steps",
            "csi_4_at_least_extrapolation",
        ]
        check["all_targets_met"] = all(check[name] for name in targets_met)
        check["rank_flatter_than_steps_90"] = (
            entry["rank_flatness_90"]["value"] < steps["rank_flatness_90"]["value"]
        )
        checks[model] = check
    return checks


def fmt(cell: dict, digits: int = 3) -> str:
    value, ci = cell["value"], cell.get("ci")
    if value != value:
        return "n/a"
    if ci and ci[0] == ci[0]:
        return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return f"{value:.{digits}f}"


def num(value: float, digits: int = 2, sign: bool = False) -> str:
    if value != value:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def table(summary: dict, labels: dict[str, str]) -> str:
    head = (
        "| model | CRPS +30 | CRPS +60 | CRPS +90 | CSI 1 mm/h | CSI 4 mm/h | FSS 1 mm/h 16 px "
        "| rank last bin +90 | rank flatness +90 | spread/skill "
        "| spectral max abs +30 / +60 / +90 |"
    )
    lines = [head, "|" + "---|" * 11]
    order = sorted(summary, key=lambda m: summary[m]["crps_60"]["value"])
    for model in order:
        e = summary[model]
        cells = [
            fmt(e["crps_30"]),
            fmt(e["crps_60"]),
            fmt(e["crps_90"]),
            fmt(e["csi_1"]),
            fmt(e["csi_4"]),
            fmt(e["fss_1_16"]),
            fmt(e["rank_last_bin_90"]),
            fmt(e["rank_flatness_90"]),
            fmt(e["spread_skill"], 2),
            " / ".join(num(e["spectral_max_abs"].get(lead, np.nan)) for lead in LEADS_SHOWN),
        ]
        lines.append(f"| {labels.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(summary: dict, labels: dict[str, str]) -> str:
    lines = [
        "| model | CRPS - STEPS +30 | CRPS - STEPS +60 | CRPS - STEPS +90 |",
        "|---|---|---|---|",
    ]
    for model, e in summary.items():
        if model == "pysteps_steps":
            continue
        cells = [fmt(e["crps_minus_steps"][lead]) for lead in LEADS_SHOWN]
        lines.append(f"| {labels.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spectral_table(summary: dict, labels: dict[str, str]) -> str:
    bands = list(next(iter(summary.values()))["spectral_bands"][LEADS_SHOWN[0]])
    lines = [
        "| model | lead | " + " | ".join(f"{b} km" for b in bands) + " | max abs |",
        "|" + "---|" * (len(bands) + 3),
    ]
    for model, e in summary.items():
        for lead in LEADS_SHOWN:
            cells = [num(e["spectral_bands"][lead][b], sign=True) for b in bands]
            cells.append(num(e["spectral_max_abs"].get(lead, np.nan)))
            lines.append(f"| {labels.get(model, model)} | +{lead} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(checks: dict, labels: dict[str, str]) -> str:
    names = [
        ("crps_below_steps_every_lead", "CRPS < STEPS every lead"),
        ("paired_crps_interval_below_0_at_30_60_90", "paired CI < 0 +30/60/90"),
        ("spectral_max_abs_not_above_steps_at_30_60_90", "spectral max abs <= STEPS"),
        ("rank_last_bin_90_below_steps", "rank last bin +90 < STEPS"),
        ("csi_4_at_least_extrapolation", "CSI 4 >= extrapolation"),
        ("all_targets_met", "all"),
    ]
    lines = ["| model | " + " | ".join(h for _, h in names) + " |", "|" + "---|" * (len(names) + 1)]
    for model, check in checks.items():
        cells = ["yes" if check[key] else "no" for key, _ in names]
        cells[0] += f" ({check['crps_leads_below_steps']}/{check['n_leads']})"
        lines.append(f"| {labels.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--train",
        nargs="*",
        default=list(DEFAULT_TRAIN),
        help="EXPERIMENT=MINUTES to train on data=radar_5min ('none': no training)",
    )
    parser.add_argument(
        "--models",
        nargs="*",
        default=None,
        help="registered forecasters scored with their shipped/default weights "
        "(default: every shipped checkpoint; 'none': none)",
    )
    parser.add_argument("--stores", type=Path, default=None, help="existing store folder")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_skill")
    parser.add_argument(
        "--split",
        choices=sorted(SPLIT_STORES),
        default="test",
        help="test (the MeteoSwiss 2016-07-11 event, scored once per shipped model) or val "
        "(the RMI 2021-07-04 event: compare designs at the forecast's ensemble size)",
    )
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=2000, help="paired bootstrap resamples")
    parser.add_argument("--no-shipped", action="store_true", help="same as --models none")
    parser.add_argument(
        "--ckpt",
        nargs="*",
        default=[],
        help="LABEL=PATH (or LABEL=MODEL:PATH) val-selected checkpoints to score as well",
    )
    args = parser.parse_args()

    from geogen.forecasting.shipped import shipped_index
    from geogen.verification import scoring
    from geogen.verification.paired import paired_differences
    from geogen.verification.report import write_report

    experiments = [] if args.train in (["none"], []) else args.train
    shipped = shipped_index()
    if args.no_shipped or args.models in (["none"], []):
        plain_models: list[str] = []
    elif args.models is None:
        plain_models = list(shipped)
    else:
        plain_models = list(args.models)
    check_names([item.partition("=")[0] for item in experiments], plain_models)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    stores = args.stores.resolve() if args.stores else build_stores(out)
    timings["prepare_s"] = time.perf_counter() - started

    specs: list = []
    labels: dict[str, str] = {}
    learned: list[str] = []
    budgets = {}
    checkpoints = {}
    for item in experiments:
        name, _, minutes = item.partition("=")
        minutes = float(minutes or 30)
        tic = time.perf_counter()
        ckpt = train(name, minutes, stores, out)
        timings[f"train_{name}_s"] = time.perf_counter() - tic
        budgets[name] = minutes
        checkpoints[name] = str(ckpt)
        specs.append(scoring.ModelSpec(checkpoint_model(ckpt), {"ckpt": str(ckpt)}, label=name))
        labels[name] = f"`{name}` ({minutes:g} min CPU training, best on val: `{ckpt.name}`)"
        learned.append(name)
    for item in args.ckpt:
        label, _, rest = item.partition("=")
        model, _, path = rest.rpartition(":") if ":" in rest else ("", "", rest)
        model = model or checkpoint_model(path)
        specs.append(scoring.ModelSpec(model, {"ckpt": path}, label=label))
        labels[label] = f"`{label}` ({path})"
        checkpoints[label] = path
        learned.append(label)
    for model in plain_models:
        entry = shipped.get(model)
        label = f"{model}_shipped" if entry else model
        specs.append(scoring.ModelSpec(model, {}, label=label))
        labels[label] = (
            f"`{model}` shipped (`checkpoints/{entry['file']}`)" if entry else f"`{model}`"
        )
        learned.append(label)
    specs += [
        scoring.ModelSpec("pysteps_steps"),
        scoring.ModelSpec("pysteps_extrapolation"),
        scoring.ModelSpec("persistence"),
    ]
    tic = time.perf_counter()
    store = stores / SPLIT_STORES[args.split]
    result = scoring.score_store(
        store,
        specs,
        split=args.split,
        members=args.members,
        max_cases=args.cases,
        seed=args.seed,
        progress=True,
    )
    timings["score_s"] = time.perf_counter() - tic
    write_report(result, out / "scores")
    paired = paired_differences(
        result, reference="pysteps_steps", n_boot=args.n_boot, seed=args.seed
    )
    paired.to_csv(out / "crps_minus_steps.csv", index=False)
    models = [spec.display for spec in specs]
    summary = summarise(result.scores, result.lead_means, result.diagrams, models, paired)
    checks = targets(summary, learned)
    labels.update(
        {
            "pysteps_steps": f"`pysteps_steps` ({args.members} members)",
            "pysteps_extrapolation": "`pysteps_extrapolation`",
            "persistence": "`persistence`",
        }
    )
    n_groups = int(paired.n_groups.iloc[0]) if len(paired) else 0
    markdown = "\n\n".join(
        [
            table(summary, labels),
            f"CRPS minus STEPS (mm/h; negative: better than STEPS), paired 95 % bootstrap "
            f"over {n_groups} forecast start times ({args.n_boot} resamples):",
            paired_table(summary, labels),
            "Spectral realism, mean log10(P_member / P_observed) per wavelength band:",
            spectral_table(summary, labels),
            f"Targets (issue 17), {args.split} split (trained runs: their best validation "
            "checkpoint):",
            targets_table(checks, labels),
        ]
    )
    timings["total_s"] = time.perf_counter() - started
    document = {
        "benchmark": "skill",
        "store": str(store),
        "split": args.split,
        "selection": "trained runs: the best val/ checkpoint (RMI 2021-07-04 event)",
        "cases": result.metadata.get("cases"),
        "n_cases": len(result.metadata.get("cases") or []),
        "n_start_times": n_groups,
        "n_cases_available": result.metadata.get("n_cases_available"),
        "members": args.members,
        "train_budget_minutes": budgets,
        "checkpoints": checkpoints,
        "scores": summary,
        "targets": checks,
        "timings": timings,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "table": markdown,
    }
    (out / "skill.json").write_text(json.dumps(document, indent=2, default=float))
    (out / "skill.md").write_text(markdown + "\n")
    print(json.dumps(document, indent=2, default=float))
    print()
    print(markdown)


if __name__ == "__main__":
    main()
