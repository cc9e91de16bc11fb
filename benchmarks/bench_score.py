"""Benchmark geogen's scoring against looping pysteps.verification, and pysteps STEPS.

Prints JSON for one case of a 20-member, 18-lead, 512 x 512 forecast (seeded synthetic rain
from ``geogen.data.synthetic_rain``; the observation is the field the forecast starts from,
advanced 18 more steps):

- ``geogen_s``: :class:`geogen.verification.scoring.Scorer` with every metric of the default
  configuration (categorical scores and FSS at 6 thresholds x 6 scales, CRPS per pixel and
  pooled 4/16 avg/max, rank histogram, reliability and Brier at 6 thresholds, spread-skill
  and pysteps' ensemble skill/spread, ME/MAE/RMSE of the mean, RAPSD);
- ``pysteps_s``: the same quantities with pysteps.verification, looping over leads, members,
  thresholds and scales as its API requires (``det_cat_fct_accum`` per member and threshold,
  ``fss_accum`` per member, threshold and scale, ``CRPS`` per lead and pooling,
  ``rankhist_accum``, ``reldiag_accum`` on ``excprob``, ``ensemble_skill``/``ensemble_spread``,
  ``det_cont_fct`` on the ensemble mean, ``rapsd`` per member); with ``--pysteps-leads N``
  only N leads are looped and the time is scaled to 18 (reported as such);
- ``ratio``: ``pysteps_s / geogen_s`` (the issue's target: at least 10, ``target_reached``);
- ``where_time_goes``: seconds per metric for geogen (each metric's statistics over all leads,
  timed apart from the Scorer run) and per pysteps function group (looped leads, scaled), so
  the profile of both is in the output;
- ``steps_s_per_member``: pysteps STEPS (the ``baseline.pysteps_steps`` defaults, ``n_workers``
  every core) forecast time
  per member for the same 512 x 512, 18-lead case (``--steps-members`` members, default 4).

Run: ``.venv/bin/python benchmarks/bench_score.py [--pysteps-leads 3] [--size 512]``.
Timings depend on the machine's load; compare figures of the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from geogen.data.synthetic import synthetic_rain
from geogen.verification.probabilistic import pool
from geogen.verification.scoring import Scorer

THRESHOLDS = [0.5, 1, 2, 4, 8, 16]
SCALES = [1, 2, 4, 8, 16, 32]
WINDOWS = [4, 16]


def make_case(members: int, leads: int, size: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    frames = synthetic_rain(leads + 3, (size, size), seed=seed, velocity=(0.7, 1.3))
    rng = np.random.default_rng(seed + 1)
    truth = frames[3:]
    # members: the truth warped by random gain and noise, so scores are non-trivial
    gain = rng.lognormal(0.0, 0.3, (members, 1, 1, 1)).astype(np.float32)
    noise = rng.gamma(0.3, 1.0, (members, leads, size, size)).astype(np.float32)
    forecast = np.where(truth[None] > 0, truth[None] * gain, 0.0) + noise * (noise > 1.0)
    return frames[:3], forecast.astype(np.float32), truth.astype(np.float32)


def time_geogen(forecast: np.ndarray, observation: np.ndarray) -> float:
    start = time.perf_counter()
    scorer = Scorer({"bootstrap": {"n": 0}, "thresholds": THRESHOLDS, "fss_scales": SCALES})
    scorer.add_case(
        "bench", {"model": forecast}, observation, list(range(5, 5 * (len(observation) + 1), 5))
    )
    scorer.result()
    return time.perf_counter() - start


def time_pysteps(
    forecast: np.ndarray, observation: np.ndarray, leads: int
) -> tuple[float, dict[str, float]]:
    """Seconds of the looped pysteps.verification calls, and seconds per function group."""
    from pysteps.postprocessing.ensemblestats import excprob
    from pysteps.utils.spectral import rapsd
    from pysteps.verification import (
        detcatscores,
        detcontscores,
        ensscores,
        probscores,
        spatialscores,
    )

    members = forecast.shape[0]
    parts: dict[str, float] = {}

    def clock(name: str, tic: float) -> float:
        now = time.perf_counter()
        parts[name] = parts.get(name, 0.0) + now - tic
        return now

    start = time.perf_counter()
    rank = ensscores.rankhist_init(members, 0.1)
    for lead in range(leads):
        fct, obs = forecast[:, lead], observation[lead]
        for thr in THRESHOLDS:
            tic = time.perf_counter()
            table = detcatscores.det_cat_fct_init(thr)
            for m in range(members):
                detcatscores.det_cat_fct_accum(table, fct[m], obs)
            detcatscores.det_cat_fct_compute(table, ["csi", "pod", "far", "bias", "hss", "ets"])
            tic = clock("categorical", tic)
            for scale in SCALES:
                state = spatialscores.fss_init(thr, scale)
                for m in range(members):
                    spatialscores.fss_accum(state, fct[m], obs)
                spatialscores.fss_compute(state)
            tic = clock("fss", tic)
            rel = probscores.reldiag_init(thr)
            probscores.reldiag_accum(rel, excprob(fct, thr), obs)
            probscores.reldiag_compute(rel)
            clock("reliability", tic)
        tic = time.perf_counter()
        probscores.CRPS(fct, obs)
        for window in WINDOWS:
            for mode in ("avg", "max"):
                probscores.CRPS(pool(fct, window, mode), pool(obs, window, mode))
        tic = clock("crps", tic)
        ensscores.rankhist_accum(rank, fct, obs)
        tic = clock("rank_histogram", tic)
        ensscores.ensemble_skill(fct, obs, "RMSE")
        ensscores.ensemble_spread(fct, "RMSE")
        tic = clock("spread_skill", tic)
        detcontscores.det_cont_fct(fct.mean(axis=0), obs, ["ME", "MAE", "RMSE"])
        tic = clock("continuous", tic)
        for m in range(members):
            rapsd(fct[m], fft_method=np.fft)
        rapsd(obs, fft_method=np.fft)
        clock("rapsd", tic)
    ensscores.rankhist_compute(rank)
    return time.perf_counter() - start, parts


def time_geogen_metrics(forecast: np.ndarray, observation: np.ndarray) -> dict[str, float]:
    """Seconds of each default metric's statistics over all leads (one Pair per lead)."""
    from geogen.verification.interface import Pair
    from geogen.verification.scoring import ScoringSettings

    metrics = ScoringSettings(thresholds=THRESHOLDS, fss_scales=SCALES).build_metrics()
    parts = dict.fromkeys(metrics, 0.0)
    for lead in range(forecast.shape[1]):
        pair = Pair(forecast[:, lead : lead + 1], observation[lead : lead + 1])
        for name, metric in metrics.items():
            tic = time.perf_counter()
            metric.statistics(pair, np.random.default_rng(lead))
            parts[name] += time.perf_counter() - tic
    return parts


def time_steps(context: np.ndarray, members: int, leads: int) -> float:
    from geogen.forecasting import get_forecaster

    steps = get_forecaster("pysteps_steps")
    steps.set_grid_spacing(1.0)
    start = time.perf_counter()
    steps.predict(context, leads=leads, members=members, seed=0, timestep_minutes=5.0)
    return (time.perf_counter() - start) / members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--leads", type=int, default=18)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pysteps-leads", type=int, default=None, help="leads looped in pysteps")
    parser.add_argument("--steps-members", type=int, default=4)
    args = parser.parse_args()
    context, forecast, observation = make_case(args.members, args.leads, args.size)
    load_before = os.getloadavg()
    geogen_s = time_geogen(forecast, observation)
    looped = min(args.pysteps_leads or args.leads, args.leads)
    pysteps_measured, pysteps_parts = time_pysteps(forecast, observation, looped)
    scale = args.leads / looped
    pysteps_s = pysteps_measured * scale
    geogen_parts = time_geogen_metrics(forecast, observation)
    steps = time_steps(context, args.steps_members, args.leads)
    ratio = pysteps_s / geogen_s
    print(
        json.dumps(
            {
                "case": {"members": args.members, "leads": args.leads, "size": args.size},
                "geogen_s": round(geogen_s, 2),
                "pysteps_s": round(pysteps_s, 2),
                "pysteps_leads_looped": looped,
                "pysteps_scaled_to_all_leads": looped != args.leads,
                "ratio": round(ratio, 1),
                "target_ratio": 10,
                "target_reached": ratio >= 10,
                "where_time_goes": {
                    name: {
                        "geogen_s": round(geogen_parts.get(name, 0.0), 2),
                        "pysteps_s": round(pysteps_parts.get(name, 0.0) * scale, 2),
                    }
                    for name in geogen_parts
                },
                "steps_s_per_member": round(steps, 2),
                "steps_members": args.steps_members,
                "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
