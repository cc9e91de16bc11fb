"""The cost of dgmr_steps against pysteps STEPS: one 20-member, 18-lead ensemble each, same input.

    python benchmarks/bench_dgmr_steps.py                      # the shipped checkpoint
    python benchmarks/bench_dgmr_steps.py --ckpt PATH.ckpt     # a geogen-train checkpoint

``dgmr_steps`` runs a STEPS ensemble and then its network once per member, so its time is
STEPS' plus the network's; this prints both, in the same process, on the same context: the
4 frames before the MeteoSwiss test case (2016-07-11 22:00, the 256 x 256 window
``[160, 320]``) when the sample data are there, else 256 x 256 synthetic rain. Both use
STEPS at its fastest settings (``n_workers`` = every core the process may use), the same
seed (so dgmr_steps' members are corrections of exactly the STEPS members timed beside
them), and the median of ``--repeat`` runs after a warm-up. JSON on stdout:
``pysteps_steps_s``, ``dgmr_steps_s``, ``dgmr_steps_over_pysteps_steps``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def _context() -> tuple[np.ndarray, str, float]:
    """``(4, 256, 256)`` mm/h, where it comes from, and its pixel size in km."""
    try:
        from geogen.forecasting import read_context

        context = read_context("mch", "2016-07-11T22:00", 4, region=[160, 320, 256, 256])
        return np.asarray(context.values, dtype=np.float32), "mch 2016-07-11T22:00", 1.0
    except Exception as exc:  # no sample data: synthetic rain of the same size
        from geogen.data.synthetic import synthetic_rain

        print(json.dumps({"note": f"sample data not found ({exc}); synthetic context"}))
        frames = synthetic_rain(4, (256, 256), seed=0)
        return np.asarray(frames, dtype=np.float32), "synthetic", 1.0


def _median_time(run, repeat: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="dgmr_steps checkpoint (default: shipped)")
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--leads", type=int, default=18)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from geogen.forecasting import get_forecaster

    context, origin, km = _context()
    steps = get_forecaster("pysteps_steps")
    steps.set_grid_spacing(km)
    model = get_forecaster("dgmr_steps", ckpt=args.ckpt, batch_members=4)
    model.set_grid_spacing(km)
    common = {"leads": args.leads, "members": args.members, "seed": 0, "timestep_minutes": 5.0}
    t_steps = _median_time(lambda: steps.predict(context, **common), args.repeat)
    t_model = _median_time(lambda: model.predict(context, **common), args.repeat)
    print(
        json.dumps(
            {
                "benchmark": "bench_dgmr_steps",
                "context": origin,
                "shape": list(context.shape),
                "members": args.members,
                "leads": args.leads,
                "checkpoint": model.ckpt,
                "n_workers": steps.settings.n_workers,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "pysteps_steps_s": round(t_steps, 3),
                "dgmr_steps_s": round(t_model, 3),
                "dgmr_steps_over_pysteps_steps": round(t_model / t_steps, 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
