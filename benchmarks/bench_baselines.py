"""Baseline generative models side by side: training-step time, sampling time, peak memory.

VAEs, normalizing flows, DGMR and pysteps STEPS on the same input, in one run.

    python benchmarks/bench_baselines.py                         # every entry, CPU or GPU
    python benchmarks/bench_baselines.py --models vae_nowcast_tiny dgmr_tiny pysteps_steps
    python benchmarks/bench_baselines.py --device cuda

Prints one JSON document with, for each model of :data:`ENTRIES`:

- ``parameters``;
- ``train_step_s``: one optimizer step (forward, backward, update; for DGMR its full step: 2
  discriminator steps and the generator step with 6 samples) on a batch of ``--batch``
  examples, the median of ``--steps`` timed steps after one warm-up step;
- ``sample_s_per_member``: the time to draw one ensemble member (median of ``--repeat``
  after a warm-up; pysteps STEPS: one ``--steps-members``-member forecast divided by the
  members);
- ``ensemble_s``: the time of one ``--ensemble-members``-member forecast (default 20) of the
  256 x 256 case through the forecaster API, ``predict(context, members=20, leads=18)``
  (median of ``--repeat`` after a warm-up): DGMR and the nowcasting VAEs from a checkpoint of
  their untrained network (the default ``batch_members=4``), pysteps STEPS at its fastest
  settings, the defaults: ``n_workers`` (pysteps' ``num_workers``) is every core the process
  may use (``BENCH_THREADS`` sets torch's threads only); ``ensemble_s_over_pysteps_steps``
  where STEPS ran too (below 1: faster than STEPS);
- ``peak_memory_bytes`` of training, sampling and the ensemble (each in its own process: CUDA
  ``max_memory_allocated``, on CPU the process's peak resident set, VmHWM).

Every nowcasting model gets the same input: 4 context frames of 256 x 256 synthetic rain
(``geogen.data.synthetic.synthetic_rain``, mm/h, mapped to each model's space) and 18 leads;
downscaling models 8 frames of 8 x 8 block means to 8 x 128 x 128 (factor 16). Ratios to
DGMR (nowcasting) are given where both ran. The networks are untrained (timings do not
depend on the weights).

New models are new rows of :data:`ENTRIES`: a task and a builder returning a
:class:`Bench` (``sample`` draws one member; ``train_step`` is ``None`` for untrained
references).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from _measure import peak_memory_bytes, timed

SIZE, CONTEXT, LEADS = 256, 4, 18
DOWNSCALE_SIZE, DOWNSCALE_FRAMES, FACTOR = 128, 8, 16


@dataclass
class Bench:
    """What a worker measures: a module (for its parameters), one member, one training step."""

    module: object | None
    sample: Callable[[], object]
    train_step: Callable[[], object] | None = None
    ensemble: Callable[[], object] | None = None


@dataclass
class Entry:
    """A row of the benchmark: the task and how to build the measured model."""

    task: str
    build: Callable[[argparse.Namespace, object], Bench]
    note: str = ""


# -- inputs ------------------------------------------------------------------------------------
def nowcast_input(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``context (4, 256, 256)`` and ``target (18, 256, 256)`` synthetic rain, mm/h."""
    from geogen.data.synthetic import synthetic_rain

    frames = synthetic_rain(CONTEXT + LEADS, (SIZE, SIZE), seed=seed, velocity=(0.7, 1.3))
    return frames[:CONTEXT].astype(np.float32), frames[CONTEXT:].astype(np.float32)


def downscale_input(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``lowres (8, 8, 8)`` block means of ``target (8, 128, 128)`` synthetic rain, mm/h."""
    from geogen.data.synthetic import synthetic_rain

    target = synthetic_rain(DOWNSCALE_FRAMES, (DOWNSCALE_SIZE, DOWNSCALE_SIZE), seed=seed)
    n = DOWNSCALE_SIZE // FACTOR
    lowres = target.reshape(DOWNSCALE_FRAMES, n, FACTOR, n, FACTOR).mean(axis=(2, 4))
    return lowres.astype(np.float32), target.astype(np.float32)


def _batch(array: np.ndarray, batch: int, device) -> object:
    import torch

    return torch.from_numpy(array)[None].expand(batch, *array.shape).contiguous().to(device)


def _forecaster(
    name: str, network: object, network_config: dict, prefix: str, args: argparse.Namespace
) -> Callable[[], object]:
    """An ``--ensemble-members``-member forecast of the nowcasting input by forecaster ``name``.

    The forecaster runs from a checkpoint of ``network`` (untrained), written at the first
    call (the warm-up of :func:`timed`), with its default ``batch_members``.
    """
    members = args.ensemble_members
    context, _ = nowcast_input()
    model: list[object] = []

    def ensemble() -> object:
        if not model:
            import tempfile

            import torch

            from geogen.forecasting import get_forecaster

            ckpt = os.path.join(tempfile.mkdtemp(prefix="bench_baselines_"), f"{name}.ckpt")
            state = {f"{prefix}{k}": v for k, v in network.state_dict().items()}
            data = {
                "task": "nowcast",
                "timestep_minutes": 5.0,
                "context": CONTEXT,
                "transform": {"name": "identity"},
            }
            meta = {"model": name, "network_config": network_config, "data": data}
            torch.save({"state_dict": state, "geogen": meta}, ckpt)
            model.append(get_forecaster(name, ckpt=ckpt, device=args.device))
        return model[0].predict(context, leads=LEADS, members=members, seed=0, timestep_minutes=5.0)

    return ensemble


# -- builders ----------------------------------------------------------------------------------
def _vae(task: str, base_channels: int, latent_channels: int) -> Callable[..., Bench]:
    def build(args: argparse.Namespace, device) -> Bench:
        import torch

        from geogen.methods.vae import VAEDownscaleMethod, VAENowcastMethod
        from geogen.models.vae import DownscaleVAE, NowcastVAE

        if task == "nowcast":
            net = NowcastVAE(base_channels=base_channels, latent_channels=latent_channels)
            condition, target = nowcast_input()
            method = VAENowcastMethod(net)
        else:
            net = DownscaleVAE(base_channels=base_channels, latent_channels=latent_channels)
            condition, target = downscale_input()
            method = VAEDownscaleMethod(net)
        method.to(device)
        condition = _batch(np.log1p(condition), args.batch, device)
        target = _batch(np.log1p(target), args.batch, device)
        mask = torch.ones_like(target, dtype=torch.bool)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        autocast = device.type == "cuda"

        def train_step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = method.elbo_terms(net(condition, target), target, mask)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        one = condition[:1]

        def sample() -> object:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast),
            ):
                return net.point(net.sample(one))

        ensemble = None
        if task == "nowcast":
            config = {
                "_target_": "geogen.models.vae.NowcastVAE",
                "base_channels": base_channels,
                "latent_channels": latent_channels,
            }
            ensemble = _forecaster("vae", net, config, "network.", args)
        return Bench(net, sample, train_step, ensemble)

    return build


def _dgmr(base_channels: int, latent_channels: int, train: bool) -> Callable[..., Bench]:
    def build(args: argparse.Namespace, device) -> Bench:
        import torch

        from geogen.methods.dgmr import DGMRMethod
        from geogen.models.dgmr import DGMR, Discriminator, Generator

        net = DGMR(
            Generator(base_channels=base_channels, latent_channels=latent_channels),
            Discriminator(base_channels=base_channels, temporal_crop=128),
        )
        method = DGMRMethod(net).to(device)
        context, target = nowcast_input()
        context, target = _batch(context, args.batch, device), _batch(target, args.batch, device)
        mask = torch.ones_like(target, dtype=torch.bool)
        gen, disc = net.generator, net.discriminator
        opt_g = torch.optim.Adam(gen.parameters(), lr=5e-5, betas=(0.0, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.0, 0.999))
        autocast = device.type == "cuda"

        def train_step() -> None:
            for _ in range(2):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    d_loss = method.discriminator_step_loss(context, target, mask)["d_loss"]
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            disc.requires_grad_(False)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                g_loss = method.generator_step_loss(context, target, mask, 6)["g_loss"]
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            disc.requires_grad_(True)

        one = context[:1]

        def sample() -> object:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast),
            ):
                return gen(one, LEADS)

        generator_config = {
            "_target_": "geogen.models.dgmr.Generator",
            "base_channels": base_channels,
            "latent_channels": latent_channels,
        }
        config = {"_target_": "geogen.models.dgmr.DGMR", "generator": generator_config}
        ensemble = _forecaster("dgmr", gen, config, "network.generator.", args)
        return Bench(gen, sample, train_step if train or args.device == "cuda" else None, ensemble)

    return build


def _flow(task: str, widths: dict, train_leads: int | None) -> Callable[..., Bench]:
    def build(args: argparse.Namespace, device) -> Bench:
        import torch

        from geogen.methods.flow import FlowDownscaleMethod, FlowNowcastMethod
        from geogen.models.flow import FlowDownscaler, FlowNowcaster

        if task == "nowcast":
            net = FlowNowcaster(**widths)
            condition, target = nowcast_input()
            method = FlowNowcastMethod(net, train_leads=train_leads)
        else:
            net = FlowDownscaler(**widths)
            condition, target = downscale_input()
            method = FlowDownscaleMethod(net)
        method.data_info = {"transform": {"name": "log1p", "scale": 1.0}, "lead": LEADS}
        method.to(device)
        condition = _batch(np.log1p(condition), args.batch, device)
        target = _batch(np.log1p(target), args.batch, device)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        leads = list(range(train_leads)) if task == "nowcast" and train_leads else None

        def train_step() -> None:  # float32: the flows train without bf16
            if task == "nowcast":
                loss = method.nll(condition, target, leads)["bpd"]
            else:
                loss = method.nll(condition, target)["bpd"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        one = condition[:1]

        def sample() -> object:
            with torch.inference_mode():
                if task == "nowcast":
                    return method.sample(one, 1, LEADS)
                return method.sample(one, 1)

        return Bench(net, sample, train_step)

    return build


def _steps_workers() -> int:
    """STEPS' threads in this benchmark: the default, every core (its fastest setting)."""
    from geogen.baselines.pysteps_methods import available_cores

    return available_cores()


def _steps(args: argparse.Namespace, device) -> Bench:
    from geogen.forecasting import get_forecaster

    context, _ = nowcast_input()
    steps = get_forecaster("pysteps_steps")
    assert steps.settings.n_workers == _steps_workers()  # the fastest setting, not one thread
    steps.set_grid_spacing(1.0)
    members = args.steps_members

    def sample() -> object:
        return steps.predict(context, leads=LEADS, members=members, seed=0, timestep_minutes=5.0)

    def ensemble() -> object:
        return steps.predict(
            context, leads=LEADS, members=args.ensemble_members, seed=0, timestep_minutes=5.0
        )

    return Bench(None, sample, None, ensemble)


#: The rows: name -> task and builder. Widths: ``*_tiny`` as the ``_tiny`` experiments, the
#: others as the full experiments (``vae_nowcast``: base 32, latent 16; ``dgmr``: the paper's).
ENTRIES: dict[str, Entry] = {
    "vae_nowcast": Entry("nowcast", _vae("nowcast", 32, 16), "experiment=vae_nowcast width"),
    "vae_nowcast_tiny": Entry("nowcast", _vae("nowcast", 8, 4), "experiment=vae_nowcast_tiny"),
    "vae_downscale": Entry("downscale", _vae("downscale", 32, 16), "experiment=vae_downscale"),
    "vae_downscale_tiny": Entry(
        "downscale", _vae("downscale", 8, 4), "experiment=vae_downscale_tiny"
    ),
    "flow_nowcast": Entry(
        "nowcast",
        _flow("nowcast", {"levels": 4, "steps": 8, "hidden": 256, "condition_hidden": 64}, 4),
        "experiment=flow_nowcast widths; training step scores 4 leads (method.train_leads)",
    ),
    "flow_nowcast_tiny": Entry(
        "nowcast",
        _flow("nowcast", {"levels": 3, "steps": 4, "hidden": 32, "condition_hidden": 16}, 2),
        "experiment=flow_nowcast_tiny widths; training step scores 2 leads, whole 256 crop",
    ),
    "flow_downscale": Entry(
        "downscale",
        _flow("downscale", {"levels": 4, "steps": 8, "hidden": 256, "condition_hidden": 64}, None),
        "experiment=flow_downscale widths",
    ),
    "flow_downscale_tiny": Entry(
        "downscale",
        _flow("downscale", {"levels": 3, "steps": 4, "hidden": 32, "condition_hidden": 16}, None),
        "experiment=flow_downscale_tiny widths",
    ),
    "dgmr_tiny": Entry("nowcast", _dgmr(4, 4, train=True), "experiment=dgmr_tiny widths"),
    "dgmr": Entry("nowcast", _dgmr(24, 8, train=False), "paper widths; training step on GPU only"),
    "pysteps_steps": Entry(
        "nowcast", _steps, "baseline.pysteps_steps defaults; time of one forecast / members"
    ),
}


# -- measuring ---------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    bench = ENTRIES[args.worker].build(args, device)
    out: dict = {}
    if bench.module is not None:
        out["parameters"] = sum(p.numel() for p in bench.module.parameters())
    if args.phase == "train":
        if bench.train_step is None:
            return {}
        out["train_step_s"] = round(timed(bench.train_step, device, args.steps), 3)
        out["train_peak_memory_bytes"] = peak_memory_bytes(device)
    elif args.phase == "ensemble":
        if bench.ensemble is None:
            return {}
        out["ensemble_members"] = args.ensemble_members
        out["ensemble_s"] = round(timed(bench.ensemble, device, args.repeat), 3)
        out["ensemble_peak_memory_bytes"] = peak_memory_bytes(device)
    else:
        seconds = timed(bench.sample, device, args.repeat)
        if args.worker == "pysteps_steps":
            seconds /= args.steps_members
        out["sample_s_per_member"] = round(seconds, 3)
        out["sample_peak_memory_bytes"] = peak_memory_bytes(device)
    return out


def run_worker(name: str, phase: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--phase",
        phase,
        "--device",
        args.device,
        "--repeat",
        str(args.repeat),
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--steps-members",
        str(args.steps_members),
        "--ensemble-members",
        str(args.ensemble_members),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ENTRIES), choices=list(ENTRIES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=2, help="timed samples (+1 warm-up)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (+1 warm-up)")
    parser.add_argument("--batch", type=int, default=1, help="training batch size")
    parser.add_argument("--steps-members", type=int, default=4, help="STEPS members per run")
    parser.add_argument("--ensemble-members", type=int, default=20, help="members of ensemble_s")
    parser.add_argument("--no-train", dest="train", action="store_false")
    parser.add_argument("--no-ensemble", dest="ensemble", action="store_false")
    parser.add_argument("--worker", choices=list(ENTRIES), help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=["train", "sample", "ensemble"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        if args.device == "cpu":
            torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
        print(json.dumps(worker(args)))
        return
    report: dict = {
        "benchmark": "baselines",
        "device": torch.cuda.get_device_name(0)
        if args.device == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)),
        "pysteps_steps_n_workers": _steps_workers(),
        "torch": torch.__version__,
        "precision": "bf16 autocast" if args.device == "cuda" else "float32",
        "nowcast_input": f"{CONTEXT} x {SIZE} x {SIZE} context, {LEADS} leads",
        "downscale_input": (
            f"{DOWNSCALE_FRAMES} x {DOWNSCALE_SIZE // FACTOR} x {DOWNSCALE_SIZE // FACTOR} -> "
            f"{DOWNSCALE_FRAMES} x {DOWNSCALE_SIZE} x {DOWNSCALE_SIZE} (factor {FACTOR})"
        ),
        "training_batch": args.batch,
        "models": {},
    }
    for name in args.models:
        entry = ENTRIES[name]
        result: dict = {"task": entry.task, "note": entry.note}
        if args.train:
            result.update(run_worker(name, "train", args))
        result.update(run_worker(name, "sample", args))
        if args.ensemble:
            result.update(run_worker(name, "ensemble", args))
        report["models"][name] = result
        print(f"{name}: {result}", file=sys.stderr)
    models = report["models"]
    steps = models.get("pysteps_steps", {}).get("ensemble_s")
    for name, result in models.items():
        if steps and result.get("ensemble_s") and name != "pysteps_steps":
            result["ensemble_s_over_pysteps_steps"] = round(result["ensemble_s"] / steps, 3)
    for name, result in models.items():
        if result["task"] != "nowcast" or name.startswith("dgmr"):
            continue
        for peer in ("dgmr_tiny", "dgmr"):
            other = models.get(peer, {})
            for key in ("sample_s_per_member", "train_step_s"):
                if result.get(key) and other.get(key):
                    result[f"{key}_over_{peer}"] = round(result[key] / other[key], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
