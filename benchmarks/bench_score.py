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
- ``ratio``: ``pysteps_s / geogen_s``;
- ``steps_s_per_member``: pysteps STEPS (the ``baseline.pysteps_steps`` defaults) forecast time
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


def time_pysteps(forecast: np.ndarray, observation: np.ndarray, leads: int) -> float:
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
    start = time.perf_counter()
    rank = ensscores.rankhist_init(members, 0.1)
    for lead in range(leads):
        fct, obs = forecast[:, lead], observation[lead]
        for thr in THRESHOLDS:
            table = detcatscores.det_cat_fct_init(thr)
            for m in range(members):
                detcatscores.det_cat_fct_accum(table, fct[m], obs)
            detcatscores.det_cat_fct_compute(table, ["csi", "pod", "far", "bias", "hss", "ets"])
            for scale in SCALES:
                state = spatialscores.fss_init(thr, scale)
                for m in range(members):
                    spatialscores.fss_accum(state, fct[m], obs)
                spatialscores.fss_compute(state)
            rel = probscores.reldiag_init(thr)
            probscores.reldiag_accum(rel, excprob(fct, thr), obs)
            probscores.reldiag_compute(rel)
        probscores.CRPS(fct, obs)
        for window in WINDOWS:
            for mode in ("avg", "max"):
                probscores.CRPS(pool(fct, window, mode), pool(obs, window, mode))
        ensscores.rankhist_accum(rank, fct, obs)
        ensscores.ensemble_skill(fct, obs, "RMSE")
        ensscores.ensemble_spread(fct, "RMSE")
        detcontscores.det_cont_fct(fct.mean(axis=0), obs, ["ME", "MAE", "RMSE"])
        for m in range(members):
            rapsd(fct[m], fft_method=np.fft)
        rapsd(obs, fft_method=np.fft)
    ensscores.rankhist_compute(rank)
    return time.perf_counter() - start


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
    geogen_s = time_geogen(forecast, observation)
    looped = min(args.pysteps_leads or args.leads, args.leads)
    pysteps_measured = time_pysteps(forecast, observation, looped)
    pysteps_s = pysteps_measured * args.leads / looped
    steps = time_steps(context, args.steps_members, args.leads)
    print(
        json.dumps(
            {
                "case": {"members": args.members, "leads": args.leads, "size": args.size},
                "geogen_s": round(geogen_s, 2),
                "pysteps_s": round(pysteps_s, 2),
                "pysteps_leads_looped": looped,
                "pysteps_scaled_to_all_leads": looped != args.leads,
                "ratio": round(pysteps_s / geogen_s, 1),
                "steps_s_per_member": round(steps, 2),
                "steps_members": args.steps_members,
                "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
