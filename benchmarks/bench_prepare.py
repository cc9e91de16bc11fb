"""Benchmark geogen-prepare against a naive sequential loop, and the DataLoader.

Prints JSON with, for the MeteoSwiss sample events (all files under radar/mch):

- ``naive``: a plain loop (pysteps importer + to_rainrate per file, numpy crops of every
  complete sequence, one zarr write per crop with the same codec and chunks as geogen);
- ``geogen_1_worker`` / ``geogen_2_workers``: the geogen pipeline on a local Dask cluster;
- for each: wall seconds, crops written, crops/s, input MB/s (bytes of the input files divided by
  wall time), and the ratios to the naive loop;
- ``dataloader``: CropDataset samples/s through a torch DataLoader (batch 16, log1p transform)
  with 0 and 2 worker processes.

Both pipelines write the same crops (uniform sampling with probability 1, the same NaN rule),
which the script checks. Run: ``.venv/bin/python benchmarks/bench_prepare.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data_pipelines import plan as P
from data_pipelines.config import validate_prepare_config
from data_pipelines.prepare import prepare
from geogen.config import find_radar_data, load_source_config
from geogen.io import load_source
from geogen.io.radar import import_pysteps
from geogen.io.store import compressor

CONTEXT, LEAD, SIZE, STRIDE, MAX_NAN = 4, 18, 256, 128, 0.05


def naive(source_cfg: dict, out: Path) -> tuple[int, float]:
    """The obvious sequential loop a user would write with pysteps, numpy and zarr."""
    import zarr

    pysteps = import_pysteps()
    importer = pysteps.io.get_method(source_cfg["importer"], "importer")
    listing = load_source(source_cfg).listing  # the same files geogen reads
    tic = time.perf_counter()
    frames = []
    for path in listing.paths:
        values, _, meta = importer(path, **source_cfg["importer_kwargs"])
        rate, _ = pysteps.utils.to_rainrate(values, meta)
        frames.append(rate.astype(np.float32))
    frames = np.stack(frames)
    times, length = listing.times, CONTEXT + LEAD
    step = listing.timestep
    group = zarr.open_group(out, mode="w")
    crops = []
    for start in range(len(times) - length + 1):
        if times[start + length - 1] - times[start] != (length - 1) * step:
            continue
        seq = frames[start : start + length]
        for y0, x0 in P.tile_origins(seq.shape[1:], SIZE, STRIDE):
            crop = seq[:, y0 : y0 + SIZE, x0 : x0 + SIZE]
            if np.isnan(crop).mean() <= MAX_NAN:
                crops.append((start, y0, x0))
    array = group.create_array(
        "precip",
        shape=(len(crops), length, SIZE, SIZE),
        chunks=(1, length, SIZE, SIZE),
        dtype="float32",
        fill_value=np.nan,
        compressors=compressor(),
    )
    for i, (start, y0, x0) in enumerate(crops):
        array[i] = frames[start : start + length, y0 : y0 + SIZE, x0 : x0 + SIZE]
    return len(crops), time.perf_counter() - tic


def geogen(source_cfg: dict, out: Path, workers: int) -> tuple[int, float, Path]:
    cfg = validate_prepare_config(
        {
            "source": source_cfg,
            "task": {"name": "nowcast"},
            "out": str(out),
            "crop": {"size": SIZE, "stride": STRIDE},
            "sequence": {"context": CONTEXT, "lead": LEAD, "stride": 1},
            "reject": {"max_nan_fraction": MAX_NAN},
            "sampling": {"method": "uniform", "probability": 1.0},
            "split": {"method": "blocks", "block": "1D", "guard": "0h"},
            "dask": {"n_workers": workers, "threads_per_worker": 1},
            "progress": False,
        }
    )
    tic = time.perf_counter()
    result = prepare(cfg)
    return result.summary["crops_written"], time.perf_counter() - tic, result.path


def dataloader_rate(store: Path, workers: int, batches: int) -> float:
    import torch

    from geogen.data import CropDataset

    dataset = CropDataset(store, split=None, transform="log1p")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=16,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=False,
    )
    seen, tic = 0, None
    for i, batch in enumerate(loader):
        if i == 1:  # the first batch pays the worker start-up
            tic, seen = time.perf_counter(), 0
        seen += batch["target"].shape[0]
        if i >= batches:
            break
    return seen / (time.perf_counter() - tic) if tic else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 2015-05-15 event")
    args = parser.parse_args()
    data = find_radar_data()
    if data is None:
        sys.exit("no radar data: set GEOGEN_DATA (see README)")
    source_cfg = load_source_config("mch", root=str(data / "radar" / "mch"))
    if args.quick:
        source_cfg["path_fmt"] = "20150515"  # a literal folder: one event
    files = load_source(source_cfg).listing.paths
    input_mb = sum(os.path.getsize(p) for p in files) / 1e6

    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        n_naive, t_naive = naive(source_cfg, tmp / "naive.zarr")
        results = {
            "naive": {"seconds": t_naive, "crops": n_naive},
        }
        store = None
        for workers in (1, 2):
            n, t, store = geogen(source_cfg, tmp / f"geogen{workers}.zarr", workers)
            if n != n_naive:
                raise AssertionError(f"geogen wrote {n} crops, the naive loop {n_naive}")
            key = f"geogen_{workers}_worker" + ("s" if workers > 1 else "")
            results[key] = {"seconds": t, "crops": n}
        for entry in results.values():
            entry["crops_per_s"] = entry["crops"] / entry["seconds"]
            entry["input_mb_per_s"] = input_mb / entry["seconds"]
        for key in ("geogen_1_worker", "geogen_2_workers"):
            results[key]["speedup_vs_naive"] = results["naive"]["seconds"] / results[key]["seconds"]
        results["dataloader_samples_per_s"] = {
            f"num_workers_{w}": dataloader_rate(store, w, batches=8) for w in (0, 2)
        }
        report = {
            "benchmark": "bench_prepare",
            "input": {
                "source": "mch",
                "files": len(files),
                "input_mb": input_mb,
                "crop": SIZE,
                "stride": STRIDE,
                "frames": CONTEXT + LEAD,
            },
            "cpu_count": os.cpu_count(),
            **results,
        }
        print(json.dumps(report, indent=2, default=float))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
