"""Peak memory of a full-domain DGMR ensemble: memory-bounded forecaster against the plain one.

    python benchmarks/bench_forecast_memory.py                   # 20 members, 18 leads, 640 x 710
    python benchmarks/bench_forecast_memory.py --members 4 --width tiny

Prints one JSON document. Both measurements run ``geogen.forecasting``'s ``dgmr`` forecaster
(:class:`~geogen.forecasting.learned.DGMRForecaster`) on CPU, float32, from a checkpoint of
an untrained generator (``--width paper``: base width 24, latent 8, 53 M parameters;
``tiny``: the ``dgmr_tiny`` widths), over the MeteoSwiss domain (4 context frames of 640 x
710 seeded synthetic rain, zero-padded to 640 x 736 by the forecaster), ``--batch-members``
members per batch:

- ``bounded``: the forecaster as shipped: the conditioning stack runs once per batch and the
  sampler is unrolled over chunks of lead times within ``sampler_memory`` bytes
  (:class:`~geogen.forecasting.learned.DGMRNowcaster`, ``Sampler.forward(lead_chunk=...)``);
  the whole ``--members`` ensemble is generated (``--no-full``: skipped);
- ``bounded_batch`` and ``peer``: one batch (``--batch-members`` members; the peak is reached
  in the first batch, later ones reuse the memory) with the forecaster as shipped and with
  the generator's plain forward (the context repeated for every member, all leads at once:
  what the forecaster did before it was memory-bounded);
- for each: wall seconds, seconds per member, the process's peak resident set (VmHWM, each
  measurement in its own process) and the members forecast; ``peer_over_bounded`` (peer /
  ``bounded_batch``: the same work); ``fits_24_gib`` (of ``bounded``, or of
  ``bounded_batch``).

The two give the same members for the same seed (tests/unit/test_forecast_memory.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import peak_memory_bytes

WIDTHS = {"paper": (24, 8), "tiny": (4, 4)}
SHAPE, CONTEXT = (640, 710), 4


def write_checkpoint(path: Path, width: str) -> None:
    """A geogen ``dgmr`` checkpoint of a seeded, untrained generator."""
    import torch

    from geogen.models.dgmr import Generator

    base, latent = WIDTHS[width]
    torch.manual_seed(0)
    generator = Generator(base_channels=base, latent_channels=latent)
    config = {"_target_": "geogen.models.dgmr.Generator", "base_channels": base}
    config["latent_channels"] = latent
    torch.save(
        {
            "state_dict": {f"network.generator.{k}": v for k, v in generator.state_dict().items()},
            "geogen": {
                "model": "dgmr",
                "network_config": {"_target_": "geogen.models.dgmr.DGMR", "generator": config},
                "data": {
                    "timestep_minutes": 5.0,
                    "context": CONTEXT,
                    "transform": {"name": "identity"},
                },
            },
        },
        path,
    )


def worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from geogen.data.synthetic import synthetic_rain
    from geogen.forecasting import get_forecaster

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    model = get_forecaster("dgmr", ckpt=args.ckpt, device="cpu", batch_members=args.batch_members)
    if args.worker == "peer":
        module = model.module  # the inference module (DGMRNowcaster)

        def plain_forward(inputs, leads, members, seed, **conditions):
            height, width = inputs.shape[-2:]
            z = module.member_inputs(members, seed, leads, height, width)["z"]
            return module.generator(inputs.expand(len(members), -1, -1, -1), leads, z=z)

        module.forward = plain_forward
    members = args.members if args.worker == "bounded" else args.batch_members
    context = synthetic_rain(CONTEXT, SHAPE, seed=0, velocity=(0.7, 1.3)).astype(np.float32)
    tic = time.perf_counter()
    out = model.predict(context, leads=args.leads, members=members, seed=0, timestep_minutes=5.0)
    seconds = time.perf_counter() - tic
    return {
        "members": members,
        "seconds": round(seconds, 1),
        "seconds_per_member": round(seconds / members, 2),
        "peak_rss_bytes": peak_memory_bytes(torch.device("cpu")),
        "output_shape": list(out.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--leads", type=int, default=18)
    parser.add_argument("--batch-members", type=int, default=4)
    parser.add_argument("--width", choices=list(WIDTHS), default="paper")
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    parser.add_argument("--no-full", dest="full", action="store_false", help="one batch only")
    parser.add_argument(
        "--worker", choices=["bounded", "bounded_batch", "peer"], help=argparse.SUPPRESS
    )
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    report: dict = {
        "benchmark": "forecast_memory",
        "model": f"dgmr, {args.width} width (untrained)",
        "domain": f"{SHAPE[0]} x {SHAPE[1]} (padded to multiples of 32)",
        "members": args.members,
        "leads": args.leads,
        "batch_members": args.batch_members,
        "device": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "dgmr.ckpt"
        write_checkpoint(ckpt, args.width)
        names = (["bounded"] if args.full else []) + ["bounded_batch"]
        for name in names + (["peer"] if args.peer else []):
            cmd = [sys.executable, __file__, "--worker", name, "--ckpt", str(ckpt)]
            cmd += ["--members", str(args.members), "--leads", str(args.leads)]
            cmd += ["--batch-members", str(args.batch_members)]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                report[name] = {"error": run.stderr[-2000:]}
                continue
            report[name] = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{name}: {report[name]}", file=sys.stderr)
    batch, peer = report.get("bounded_batch", {}), report.get("peer", {})
    bounded = report.get("bounded", batch)
    if "peak_rss_bytes" in bounded:
        report["fits_24_gib"] = bounded["peak_rss_bytes"] < 24 * 2**30
    if "peak_rss_bytes" in batch and "peak_rss_bytes" in peer:
        report["peer_over_bounded"] = {
            "peak_rss": round(peer["peak_rss_bytes"] / batch["peak_rss_bytes"], 2),
            "seconds_per_member": round(
                peer["seconds_per_member"] / batch["seconds_per_member"], 2
            ),
        }
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
