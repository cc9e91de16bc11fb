"""Skill of the learned nowcasters against pysteps on the test split of the radar stores.

    python benchmarks/bench_skill.py                           # train each model, score
    python benchmarks/bench_skill.py --train dgmr_advect_tiny=20 dgmr_tiny=45
    python benchmarks/bench_skill.py --train none               # only the shipped checkpoint
    python benchmarks/bench_skill.py --cases 16 --members 20 --out outputs/bench_skill

What it does, from a fresh clone on a 2-core CPU (about 85 minutes with the defaults):

1. builds the crop stores of every 5-minute radar source of the sample data
   (``scripts/prepare_stores.sh``: mch, fmi, rmi; the MeteoSwiss 2016-07-11 event is the test
   split, everything else trains) unless ``--stores`` points at existing ones;
2. trains each ``--train`` experiment (``NAME=MINUTES``) with ``geogen-train
   experiment=NAME data=radar_5min trainer.max_time=...`` (a fixed CPU budget);
3. scores, on ``--cases`` test crops of the mch store (a seeded subset, each weighted by
   ``1 / sample_prob``; 95 % bootstrap intervals over cases): every freshly trained model, the
   checkpoint geogen ships (``checkpoints/``), pysteps STEPS (``--members`` members), pysteps
   extrapolation and persistence, all with ``--members`` members for the stochastic models;
4. prints one JSON document and a markdown table: CRPS (mm/h) at +30, +60 and +90 min, CSI at
   1 and 4 mm/h (mean over the 18 leads), FSS at 1 mm/h over 16 px (mean over leads), the
   share of observations above every member (last bin of the rank histogram) at +90 min, and
   the spread/skill ratio (mean over leads); and checks the targets of the learned models:
   lower CRPS than STEPS at every lead, CSI at 4 mm/h above extrapolation's, a flatter rank
   histogram (smaller rank flatness at +90 min) than STEPS.

The ``geogen-score`` report of the same scores (plots, rank histograms, GIFs) is written to
``OUT/scores``.
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
DEFAULT_TRAIN = ("dgmr_advect_tiny=20", "dgmr_tiny=45", "vae_nowcast_tiny=4", "flow_nowcast_tiny=4")
LEADS_SHOWN = (30, 60, 90)


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
    """``geogen-train experiment=name`` for ``minutes``; the last checkpoint."""
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
    return run_dir / "checkpoints" / "last.ckpt"


def model_name(experiment: str) -> str:
    """The forecaster that reads the checkpoints of ``experiment``."""
    for prefix in ("dgmr_advect", "dgmr", "vae", "flow"):
        if experiment.startswith(prefix):
            return prefix
    raise SystemExit(f"no forecaster for experiment {experiment!r}")


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
    scores: pd.DataFrame, means: pd.DataFrame, diagrams: pd.DataFrame, models: list[str]
) -> dict:
    """The benchmark's figures per model from the tidy score tables of ``geogen-score``."""
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
        out[model] = entry
    return out


def targets(summary: dict, learned: list[str]) -> dict:
    steps, extrap = summary["pysteps_steps"], summary["pysteps_extrapolation"]
    checks = {}
    for model in learned:
        entry = summary[model]
        leads = steps["crps_by_lead"]
        checks[model] = {
            "crps_below_steps_every_lead": all(
                entry["crps_by_lead"][lead] < leads[lead] for lead in leads
            ),
            "crps_leads_below_steps": int(
                sum(entry["crps_by_lead"][lead] < leads[lead] for lead in leads)
            ),
            "csi_4_above_extrapolation": entry["csi_4"]["value"] > extrap["csi_4"]["value"],
            "rank_flatter_than_steps_90": entry["rank_flatness_90"]["value"]
            < steps["rank_flatness_90"]["value"],
        }
    return checks


def fmt(cell: dict, digits: int = 3) -> str:
    value, ci = cell["value"], cell.get("ci")
    if value != value:
        return "n/a"
    if ci and ci[0] == ci[0]:
        return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return f"{value:.{digits}f}"


def table(summary: dict, labels: dict[str, str]) -> str:
    head = (
        "| model | CRPS +30 | CRPS +60 | CRPS +90 | CSI 1 mm/h | CSI 4 mm/h | FSS 1 mm/h 16 px "
        "| rank last bin +90 | rank flatness +90 | spread/skill |"
    )
    lines = [head, "|" + "---|" * 10]
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
        ]
        lines.append(f"| {labels.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--train",
        nargs="*",
        default=list(DEFAULT_TRAIN),
        help="NAME=MINUTES experiments to train ('none': no training)",
    )
    parser.add_argument("--stores", type=Path, default=None, help="existing store folder")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_skill")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shipped", action="store_true", help="skip the shipped checkpoint")
    parser.add_argument(
        "--ckpt", nargs="*", default=[], help="LABEL=MODEL:PATH checkpoints to score as well"
    )
    args = parser.parse_args()

    from geogen.verification import scoring
    from geogen.verification.report import write_report

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
    experiments = [] if args.train in (["none"], []) else args.train
    for item in experiments:
        name, _, minutes = item.partition("=")
        minutes = float(minutes or 30)
        tic = time.perf_counter()
        ckpt = train(name, minutes, stores, out)
        timings[f"train_{name}_s"] = time.perf_counter() - tic
        budgets[name] = minutes
        specs.append(scoring.ModelSpec(model_name(name), {"ckpt": str(ckpt)}, label=name))
        labels[name] = f"`{name}` ({minutes:g} min CPU training)"
        learned.append(name)
    for item in args.ckpt:
        label, _, rest = item.partition("=")
        model, _, path = rest.partition(":")
        specs.append(scoring.ModelSpec(model, {"ckpt": path}, label=label))
        labels[label] = f"`{label}` ({path})"
        learned.append(label)
    if not args.no_shipped:
        from geogen.forecasting.shipped import shipped_index

        for model, entry in shipped_index().items():
            label = f"{model}_shipped"
            specs.append(scoring.ModelSpec(model, {}, label=label))
            labels[label] = f"`{model}` shipped (`checkpoints/{entry['file']}`)"
            learned.append(label)
    specs += [
        scoring.ModelSpec("pysteps_steps"),
        scoring.ModelSpec("pysteps_extrapolation"),
        scoring.ModelSpec("persistence"),
    ]
    tic = time.perf_counter()
    result = scoring.score_store(
        stores / "mch.zarr",
        specs,
        split="test",
        members=args.members,
        max_cases=args.cases,
        seed=args.seed,
        progress=True,
    )
    timings["score_s"] = time.perf_counter() - tic
    write_report(result, out / "scores")
    models = [spec.display for spec in specs]
    summary = summarise(result.scores, result.lead_means, result.diagrams, models)
    checks = targets(summary, learned)
    labels.update(
        {
            "pysteps_steps": f"`pysteps_steps` ({args.members} members)",
            "pysteps_extrapolation": "`pysteps_extrapolation`",
            "persistence": "`persistence`",
        }
    )
    markdown = table(summary, labels)
    timings["total_s"] = time.perf_counter() - started
    document = {
        "benchmark": "skill",
        "store": str(stores / "mch.zarr"),
        "split": "test",
        "cases": result.metadata.get("cases"),
        "n_cases": len(result.metadata.get("cases") or []),
        "n_cases_available": result.metadata.get("n_cases_available"),
        "members": args.members,
        "train_budget_minutes": budgets,
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
