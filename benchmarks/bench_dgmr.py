"""DGMR speed and size: geogen's implementation against openclimatefix's ``dgmr`` from PyPI.

    python benchmarks/bench_dgmr.py                       # paper-size and tiny, CPU or GPU
    python benchmarks/bench_dgmr.py --configs tiny --steps 3
    python benchmarks/bench_dgmr.py --device cuda --compile

Prints one JSON document: for each config (``paper``: base width 24; ``tiny``: the
``dgmr_tiny`` experiment's widths) and each implementation, the parameter counts, the
generator's forward time for one 256 x 256 sample over 18 leads, the time of one full
training step (2 discriminator steps + the generator step with 6 samples for the
regulariser, through Lightning, batch ``--batch``), peak memory, samples per second, and the
ratios peer / geogen.

The peer (``dgmr==1.4.4``, openclimatefix/skillful_nowcasting) is installed with its light
dependencies into ``benchmarks/.peer`` (``pip install --target``, ignored by git) and always
runs in a separate process with that folder on ``PYTHONPATH`` (same interpreter and torch);
geogen is never imported there. The package imports ``torchvision`` for
``torchvision.utils.make_grid`` in its image logging only (off here) and no CPU build of
torchvision exists: the peer's worker process gets a minimal ``torchvision`` stand-in module
whose ``make_grid`` raises (see :func:`install_torchvision_shim`), which the measured code
never calls.
The peer's constructor switches on autograd anomaly detection for the whole process, and
its training step recomputes the generator with activation checkpointing and runs one more
generator pass at its end; it is measured as shipped and, separately, with anomaly
detection switched off again after construction (``peer_no_anomaly``). Its discriminators
have fixed paper widths whatever the generator's width, and its generator cannot be built
below ``context_channels=128, latent_channels=256`` (geogen's width 8): at the tiny width
the peer runs at those, larger than geogen's (see the parameter counts in the output).

Each measurement runs in its own process, so peak memory (CUDA: ``max_memory_allocated``;
CPU: the process's peak resident set, VmHWM) belongs to it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _measure import peak_memory_bytes, timed

HERE = Path(__file__).resolve().parent
PEER_DIR = HERE / ".peer"
#: Installed without dependencies (torch and friends come from the running environment).
PEER_REQUIREMENTS = [
    "dgmr==1.4.4",
    "einops",
    "huggingface_hub==0.26.5",  # later releases need httpx2; 0.26 needs requests (below)
    "safetensors",
    "pytorch_msssim",
]
#: Installed with their (pure Python) dependencies.
PEER_REQUIREMENTS_WITH_DEPS = ["requests"]
#: Widths of the two configs: geogen's base_channels / latent channels, and the peer's
#: equivalent (context_channels = 16 c, latent_channels = 32 c, at least 256 for the peer).
CONFIGS = {
    "paper": {"base_channels": 24, "latent_channels": 8},
    "tiny": {"base_channels": 4, "latent_channels": 4},
}
SIZE, CONTEXT, LEADS, SAMPLES = 256, 4, 18, 6


def install_torchvision_shim() -> None:
    """A stand-in ``torchvision`` module, in the peer's worker process only.

    dgmr (PyPI) imports torchvision for ``torchvision.utils.make_grid`` in its image logging,
    which the benchmark never enables, and no CPU torchvision build exists. The stand-in is put
    into ``sys.modules`` after Lightning and torchmetrics are imported (they then see no
    torchvision) and before dgmr is imported; its ``make_grid`` raises. Nothing is written to
    disk and geogen's process never sees it.
    """
    import types

    torchvision = types.ModuleType("torchvision")
    utils = types.ModuleType("torchvision.utils")

    def make_grid(*args, **kwargs):
        raise NotImplementedError("benchmark stand-in for torchvision: make_grid is unavailable")

    utils.make_grid = make_grid
    torchvision.utils = utils
    sys.modules["torchvision"] = torchvision
    sys.modules["torchvision.utils"] = utils


# -- environment ------------------------------------------------------------------------------
def ensure_peer() -> None:
    """Install the peer into benchmarks/.peer (once)."""
    if not (PEER_DIR / "dgmr").is_dir():
        import lightning

        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(PEER_DIR),
            *PEER_REQUIREMENTS,
            f"pytorch_lightning=={lightning.__version__}",
        ]
        subprocess.run(cmd, check=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--target",
                str(PEER_DIR),
                *PEER_REQUIREMENTS_WITH_DEPS,
            ],
            check=True,
        )


class _StepTimer:
    """Lightning callback: wall time of each training batch."""

    def __init__(self, device):
        self.device, self.times, self._start = device, [], 0.0

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, *args, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def _callback_class(base):
    return type("StepTimer", (_StepTimer, base), {})


# -- workers ----------------------------------------------------------------------------------
def worker_ours(args) -> dict:
    import lightning
    import torch
    from torch.utils.data import DataLoader

    from geogen.methods.dgmr import DGMRMethod
    from geogen.models.dgmr import DGMR, Discriminator, Generator, parameter_counts

    torch.manual_seed(0)
    device = torch.device(args.device)
    widths = CONFIGS[args.config]
    generator = Generator(CONTEXT, LEADS, widths["base_channels"], widths["latent_channels"])
    network = DGMR(generator, Discriminator(CONTEXT, widths["base_channels"]))
    counts = parameter_counts(network)
    result = {"parameters": counts}
    if args.compile:
        generator.compile()
    gen = generator.to(device).eval()
    context = torch.rand(1, CONTEXT, SIZE, SIZE, device=device)
    autocast = device.type == "cuda"
    if args.channels_last:
        gen.to(memory_format=torch.channels_last)

    def forward():
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            gen(context, LEADS)

    result["generator_forward_s"] = timed(forward, device, args.repeat)
    if args.train:
        batch = {
            "context": torch.rand(args.batch, CONTEXT, SIZE, SIZE),
            "target": torch.rand(args.batch, LEADS, SIZE, SIZE),
            "mask": torch.ones(args.batch, CONTEXT + LEADS, SIZE, SIZE, dtype=torch.bool),
        }
        loader = DataLoader(
            [{k: v[i] for k, v in batch.items()} for i in range(args.batch)] * (args.steps + 1),
            batch_size=args.batch,
        )
        from functools import partial

        optimizer = {
            "generator": partial(torch.optim.Adam, lr=5e-5, betas=(0.0, 0.999)),
            "discriminator": partial(torch.optim.Adam, lr=2e-4, betas=(0.0, 0.999)),
        }
        gen.train().to(memory_format=torch.contiguous_format)
        method = DGMRMethod(
            network, optimizer, num_samples=SAMPLES, compile=args.compile, channels_last="auto"
        )
        timer = _callback_class(lightning.Callback)(device)
        trainer = lightning.Trainer(
            accelerator=device.type,
            devices=1,
            precision="bf16-mixed" if autocast else "32-true",
            max_epochs=1,
            limit_train_batches=args.steps + 1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[timer],
        )
        trainer.fit(method, train_dataloaders=loader)
        result["train_step_s"] = statistics.median(timer.times[1:])
        result["train_step_all_s"] = timer.times
    result["peak_memory_bytes"] = peak_memory_bytes(device)
    return result


def worker_peer(args) -> dict:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    install_torchvision_shim()
    from dgmr import DGMR

    torch.manual_seed(0)
    device = torch.device(args.device)
    widths = CONFIGS[args.config]
    c = widths["base_channels"]
    # The peer's smallest working widths: its latent stack has 8 input channels and a first
    # L-block of latent_channels / 32 channels, which must not narrow (latent_channels >= 256;
    # ours at width 4: 128), and its first conditioning D-block breaks (an unpooled shortcut)
    # when it keeps 4 channels (context_channels >= 128; ours at width 4: 64).
    model = DGMR(
        forecast_steps=LEADS,
        output_shape=SIZE,
        context_channels=max(16 * c, 128),
        latent_channels=max(32 * c, 256),
        num_samples=SAMPLES,
        generation_steps=SAMPLES,
    )
    result = {
        "parameters": {
            "generator": sum(p.numel() for p in model.generator.parameters()),
            "generator.conditioning_stack": sum(
                p.numel() for p in model.conditioning_stack.parameters()
            ),
            "generator.latent_stack": sum(p.numel() for p in model.latent_stack.parameters()),
            "generator.sampler": sum(p.numel() for p in model.sampler.parameters()),
            "discriminator": sum(p.numel() for p in model.discriminator.parameters()),
            "total": sum(p.numel() for p in model.parameters()),
        },
        "anomaly_detection": bool(torch.is_anomaly_enabled()),
    }
    if args.no_anomaly:
        torch.autograd.set_detect_anomaly(False)
        result["anomaly_detection"] = False
    gen = model.generator.to(device).eval()
    context = torch.rand(1, CONTEXT, 1, SIZE, SIZE, device=device)
    autocast = device.type == "cuda"

    def forward():
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            gen(context)

    result["generator_forward_s"] = timed(forward, device, args.repeat)
    if args.train:
        images = torch.rand(args.batch, CONTEXT, 1, SIZE, SIZE)
        future = torch.rand(args.batch, LEADS, 1, SIZE, SIZE)
        loader = DataLoader(
            [(images[i], future[i]) for i in range(args.batch)] * (args.steps + 1),
            batch_size=args.batch,
        )
        model.train()
        timer = _callback_class(pl.Callback)(device)
        trainer = pl.Trainer(
            accelerator=device.type,
            devices=1,
            precision="bf16-mixed" if autocast else "32-true",
            max_epochs=1,
            limit_train_batches=args.steps + 1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[timer],
        )
        trainer.fit(model, train_dataloaders=loader)
        result["train_step_s"] = statistics.median(timer.times[1:])
        result["train_step_all_s"] = timer.times
    result["peak_memory_bytes"] = peak_memory_bytes(device)
    return result


# -- driver -----------------------------------------------------------------------------------
def run_worker(kind: str, config: str, args, extra: tuple[str, ...] = ()) -> dict:
    env = dict(os.environ)
    if kind == "peer":
        env["PYTHONPATH"] = str(PEER_DIR)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--config",
        config,
        "--device",
        args.device,
        "--repeat",
        str(args.repeat),
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        *(["--compile"] if args.compile and kind == "ours" else []),
        *(["--no-train"] if not args.train else []),
        *extra,
    ]
    # the peer must not see geogen: run it from the benchmarks folder, not the repository
    cwd = HERE if kind == "peer" else HERE.parent
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(a, b):
    return None if not a or not b else round(a / b, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"], choices=list(CONFIGS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3, help="generator forward repetitions")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (+1 warm-up)")
    parser.add_argument("--batch", type=int, default=1, help="training batch size")
    parser.add_argument("--compile", action="store_true", help="torch.compile geogen's networks")
    parser.add_argument("--no-train", dest="train", action="store_false")
    parser.add_argument("--no-peer", dest="peer", action="store_false")
    parser.add_argument("--no-anomaly", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        import torch

        if args.device == "cpu":
            torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
        fn = worker_ours if args.worker == "ours" else worker_peer
        print(json.dumps(fn(args)))
        return
    if args.peer:
        ensure_peer()
    import torch

    report = {
        "benchmark": "dgmr",
        "device": torch.cuda.get_device_name(0)
        if args.device == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "input": f"{CONTEXT} x {SIZE} x {SIZE} context, {LEADS} leads, training batch {args.batch}",
        "precision": "bf16 autocast" if args.device == "cuda" else "float32",
        "compile": args.compile,
        "configs": {},
    }
    for config in args.configs:
        entry = {"ours": run_worker("ours", config, args)}
        if args.peer:
            entry["peer"] = run_worker("peer", config, args)
            entry["peer_no_anomaly"] = run_worker("peer", config, args, ("--no-anomaly",))
        ours = entry["ours"]
        for name in ("peer", "peer_no_anomaly"):
            peer = entry.get(name)
            if not peer or "error" in peer or "error" in ours:
                continue
            entry[f"ratio_{name}_over_ours"] = {
                "generator_forward": ratio(
                    peer["generator_forward_s"], ours["generator_forward_s"]
                ),
                "train_step": ratio(peer.get("train_step_s"), ours.get("train_step_s")),
                "peak_memory": ratio(peer["peak_memory_bytes"], ours["peak_memory_bytes"]),
            }
        for name in ("ours", "peer", "peer_no_anomaly"):
            result = entry.get(name) or {}
            if "generator_forward_s" in result:
                result["forward_samples_per_s"] = round(1.0 / result["generator_forward_s"], 3)
            if result.get("train_step_s"):
                result["train_samples_per_s"] = round(args.batch / result["train_step_s"], 4)
        report["configs"][config] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
