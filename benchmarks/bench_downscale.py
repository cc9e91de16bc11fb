"""Downscaling: skill against RainFARM and interpolation (``--skill``), GAN speed and size.

    python benchmarks/bench_downscale.py --skill             # test split, shipped checkpoint
    python benchmarks/bench_downscale.py --skill --ckpt mine=PATH/last.ckpt --split val \
        --store outputs/stores/downscale/rmi.zarr
    python benchmarks/bench_downscale.py                     # paper-size and tiny, CPU or GPU
    python benchmarks/bench_downscale.py --configs tiny --repeat 2
    python benchmarks/bench_downscale.py --device cuda --batch 16

``--skill`` scores, on every pair of a downscale store split (default: the test split of
the MeteoSwiss pair store of ``scripts/prepare_downscale_stores.sh``, 2016-07-11), the shipped
``checkpoints/downscale_gan*.ckpt`` (and any ``--ckpt NAME=PATH``), pysteps' RainFARM and
bilinear interpolation, ``--members`` members (16x, 20 by default), with 95 % bootstrap
intervals by valid time; it prints one JSON document and a markdown table beside the paper's
rows (see ``benchmarks/_downscale_skill.py`` for the scores).

Without ``--skill``:

Prints one JSON document. For each config (``paper``: the published widths, the
``downscale_gan`` network; ``tiny``: the ``downscale_gan_tiny`` widths) it reports the
parameter counts, the generator's forward time for one sample of 8 frames of 8 x 8 -> 128 x 128
(factor 16), the time of one training step of the recipe (5 critic steps with the gradient
penalty + one generator step, batch ``--batch``, through the method's own loss functions and
Adam), the peak memory of each, and ensemble members per second when downscaling one input
(8 frames of 16 x 16 cells -> 256 x 256, ``--members`` members in batches of 4) compared
with pysteps' RainFARM (``model=rainfarm``) on the same input in the same run
(``members_per_s_ratio_gan_over_rainfarm``).

The input is the MeteoSwiss sequence ending 2016-07-11 22:00 (region [160, 320, 256, 256],
coarsened 16x) when ``../shared/data`` is found, else a seeded synthetic rain sequence. The
networks are randomly initialised: speed does not depend on training.

Each measurement runs in its own process, so peak memory (CUDA: ``max_memory_allocated``;
CPU: the process's peak resident set, VmHWM) belongs to it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from _measure import peak_memory_bytes, timed

HERE = Path(__file__).resolve().parent
FACTOR, FRAMES, LOW = 16, 8, 8


def config_widths(name: str) -> dict:
    """The network config of an experiment (composed with Hydra, as geogen-train would)."""
    from omegaconf import OmegaConf

    from geogen.training import compose_train_config

    experiment = {"paper": "downscale_gan", "tiny": "downscale_gan_tiny"}[name]
    cfg = compose_train_config([f"experiment={experiment}", "data.path=x"], output_dir="/tmp")
    return OmegaConf.to_container(cfg.network, resolve=True)


def lowres_input() -> tuple[object, str]:
    """``(time, y, x)`` mm/h: 8 frames of 16 x 16 cells, and where they come from."""
    import numpy as np

    from geogen.config import find_radar_data

    root = find_radar_data()
    if root is not None:
        from geogen.config import load_source_config
        from geogen.downscaling import coarsen, read_sequence

        source = load_source_config("mch", root=str(Path(root) / "radar" / "mch"))
        truth = read_sequence(source, "2016-07-11T22:00", FRAMES, region=[160, 320, 256, 256])
        values = coarsen(truth, FACTOR).values
        return np.nan_to_num(values.astype(np.float32)), "mch 2016-07-11T22:00"
    from geogen.data.synthetic import synthetic_rain

    field = synthetic_rain(FRAMES, (16, 16), seed=0)
    return np.asarray(field, dtype=np.float32), "synthetic"


def worker(task: str, config: str, device_name: str, batch: int, repeat: int, members: int):
    import torch
    from hydra.utils import instantiate

    from geogen.data.transforms import get_transform

    torch.manual_seed(0)
    device = torch.device(device_name)
    out: dict = {}
    if task == "rainfarm":
        from geogen.downscaling import get_downscaler

        lowres, origin = lowres_input()
        model = get_downscaler("rainfarm")
        seconds = timed(
            lambda: model.predict(lowres, factor=FACTOR, members=members, seed=0), device, repeat
        )
        return {"seconds": seconds, "members_per_s": members / seconds, "input": origin}
    network = instantiate(config_widths(config)).to(device)
    gen, disc = network.generator, network.discriminator
    out["generator_parameters"] = sum(p.numel() for p in gen.parameters())
    out["discriminator_parameters"] = sum(p.numel() for p in disc.parameters())
    autocast = device.type == "cuda"

    def ctx():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)

    if task == "generator":
        lowres = torch.randn(1, FRAMES, LOW, LOW, device=device)
        gen.eval()

        def run():
            with torch.inference_mode(), ctx():
                gen(lowres)

        out["seconds"] = timed(run, device, repeat)
    elif task == "train_step":
        from functools import partial

        from geogen.methods.downscale_gan import DownscaleGANMethod

        adam = partial(torch.optim.Adam, lr=1e-4, betas=(0.5, 0.9))
        method = DownscaleGANMethod(network, {"generator": adam, "discriminator": adam})
        method.to(device)
        opt_g, opt_d = adam(gen.parameters()), adam(disc.parameters())
        lowres = torch.randn(batch, FRAMES, LOW, LOW, device=device)
        target = torch.randn(batch, FRAMES, LOW * FACTOR, LOW * FACTOR, device=device)
        mask = torch.ones_like(target, dtype=torch.bool)

        def step():
            for _ in range(5):
                with ctx():
                    d = method.critic_step_loss(lowres, target, mask)
                opt_d.zero_grad(set_to_none=True)
                d["d_loss"].backward()
                opt_d.step()
            for p in disc.parameters():
                p.requires_grad_(False)
            with ctx():
                g = method.generator_step_loss(lowres, mask)
            opt_g.zero_grad(set_to_none=True)
            g.backward()
            opt_g.step()
            for p in disc.parameters():
                p.requires_grad_(True)

        out["seconds"] = timed(step, device, repeat)
        out["batch"] = batch
    elif task == "ensemble":
        import numpy as np

        lowres, origin = lowres_input()
        transform = get_transform("log10")
        inputs = torch.from_numpy(np.asarray(transform.forward(lowres), np.float32))[None]
        inputs = inputs.to(device)
        gen.eval()

        def run():
            with torch.inference_mode():
                for start in range(0, members, 4):
                    n = min(4, members - start)
                    with ctx():
                        frames = gen(inputs.expand(n, -1, -1, -1))
                    transform.inverse(frames.float()).cpu().numpy()

        seconds = timed(run, device, repeat)
        out.update(seconds=seconds, members_per_s=members / seconds, input=origin)
    out["peak_memory_mb"] = round(peak_memory_bytes(device) / 2**20, 1)
    return out


def run_worker(args, task: str, config: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        task,
        "--config",
        config,
        "--device",
        args.device,
        "--batch",
        str(args.batch),
        "--repeat",
        str(args.repeat),
        "--members",
        str(args.members),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="paper,tiny")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument(
        "--batch", type=int, default=None, help="training batch (16 on GPU, 2 on CPU)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--skill", action="store_true", help="score skill (see docstring)")
    parser.add_argument("--store", default="outputs/stores/downscale/mch.zarr")
    parser.add_argument("--split", default="test")
    parser.add_argument("--ckpt", nargs="*", default=None, help="NAME=PATH checkpoints")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="tiny", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.skill:
        skill(args)
        return
    if args.batch is None:
        args.batch = 16 if args.device.startswith("cuda") else 2
    if args.worker:
        out = worker(args.worker, args.config, args.device, args.batch, args.repeat, args.members)
        print(json.dumps(out))
        return
    import torch

    report: dict = {
        "benchmark": "downscale_gan",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "settings": {
            "factor": FACTOR,
            "frames": FRAMES,
            "generator_input": [1, FRAMES, LOW, LOW],
            "train_batch": args.batch,
            "critic_steps": 5,
            "ensemble_input": [FRAMES, 16, 16],
            "members": args.members,
            "repeat": args.repeat,
        },
        "configs": {},
    }
    rainfarm = run_worker(args, "rainfarm", "tiny")
    report["rainfarm"] = rainfarm
    for config in args.configs.split(","):
        entry = {}
        for task in ("generator", "train_step", "ensemble"):
            entry[task] = run_worker(args, task, config)
        ens = entry["ensemble"]
        if "members_per_s" in ens and "members_per_s" in rainfarm:
            entry["members_per_s_ratio_gan_over_rainfarm"] = round(
                ens["members_per_s"] / rainfarm["members_per_s"], 3
            )
        report["configs"][config] = entry
    print(json.dumps(report, indent=2))


def skill(args: argparse.Namespace) -> None:
    """``--skill``: JSON, then the markdown table (see the module docstring)."""
    from _downscale_skill import markdown, score_store

    models: dict[str, tuple[str, dict]] = {}
    if args.ckpt is None:
        for path in sorted((HERE.parent / "checkpoints").glob("downscale_gan*.ckpt")):
            models[path.stem] = ("downscale_gan", {"ckpt": str(path), "device": "cpu"})
    else:
        for item in args.ckpt:
            name, _, path = item.partition("=")
            models[name] = ("downscale_gan", {"ckpt": path, "device": "cpu"})
    models["rainfarm"] = ("rainfarm", {})
    models["interp"] = ("interp", {})
    result = score_store(
        args.store,
        models,
        split=args.split,
        members=args.members,
        boot=args.boot,
        max_cases=args.max_cases,
    )
    print(json.dumps(result, indent=2))
    print()
    print(markdown(result))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
