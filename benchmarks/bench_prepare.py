"""Benchmark geogen-prepare against a naive sequential loop, and the DataLoader.

Prints JSON for two archives in the MeteoSwiss format (AQC GIFs of 710 x 640, 5 minutes):

- ``mch``: the sample events (all files under radar/mch);
- ``large``: ``--large-frames`` frames (default 2,000, about 7 days) of seeded synthetic rain
  (:func:`geogen.data.synthetic.synthetic_rain`, in independent 50-frame segments) written
  as AQC GIFs with the radar domain (no-data mask) of the first sample file, read with the
  same pysteps importer; windows start every ``--large-stride`` steps (default 6: 30 min).
  It is generated into a temporary folder first (not timed) or reused from ``--archive``.

For each archive:

- ``naive``: a plain loop (pysteps importer + to_rainrate per file, numpy crops of every
  complete sequence, one zarr write per crop with the same codec and chunks as geogen);
- ``geogen_1_worker``: geogen-prepare with ``dask.n_workers=1`` (one thread, no cluster);
- ``geogen_2_workers``: ``dask.n_workers=2``, the default (2 threads in this process, no
  cluster);
- ``geogen_2_processes``: ``dask.n_workers=2 dask.processes=true`` (a local Dask cluster of 2
  worker processes, started and stopped within the timing);
- ``geogen_2_workers_importer_per_file``: 2 threads with ``source.palette_lut=false`` (the
  pysteps importer on every file, as the naive loop does, instead of the 256-index table):
  how much of the gain is the table and how much the pipeline;
- for each: wall seconds, CPU seconds (user + system, all threads and worker processes: the
  work done, which a loaded machine does not change much), crops written, crops/s, input
  MB/s (bytes of the input files divided by wall time), ``speedup_vs_naive`` (naive seconds /
  seconds), ``cpu_over_naive`` and ``same_crops_as_naive`` (the crop array's chunk files are
  byte-identical to the naive loop's);
- ``targets``: the issue's targets (>= 1.7x with 2 workers on the large archive, >= 1.0x on
  the mch sample) and whether this run reached them;
- ``load_average`` before and after (the machine may be shared: compare figures of one run);
- ``dataloader_samples_per_s`` (mch store): CropDataset through a torch DataLoader (batch 16,
  log1p transform) with 0 and 2 worker processes.

Both pipelines write the same crops (uniform sampling with probability 1, the same NaN rule).
Run: ``.venv/bin/python benchmarks/bench_prepare.py [--quick] [--large-frames 2000]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
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
RUNS = {  # dask settings, source overrides
    "geogen_1_worker": ({"n_workers": 1}, {}),
    "geogen_2_workers": ({"n_workers": 2}, {}),
    "geogen_2_processes": ({"n_workers": 2, "processes": True}, {}),
    "geogen_2_workers_importer_per_file": ({"n_workers": 2}, {"palette_lut": False}),
}
TARGETS = {"large": 1.7, "mch": 1.0}


def naive(source_cfg: dict, out: Path, stride: int = 1) -> tuple[int, float]:
    """The obvious sequential loop a user would write with pysteps, numpy and zarr."""
    import zarr

    pysteps = import_pysteps()
    importer = pysteps.io.get_method(source_cfg["importer"], "importer")
    listing = load_source(source_cfg).listing  # the same files geogen reads
    tic = time.perf_counter()
    frames = None
    for k, path in enumerate(listing.paths):
        values, _, meta = importer(path, **source_cfg["importer_kwargs"])
        rate, _ = pysteps.utils.to_rainrate(values, meta)
        if frames is None:
            frames = np.empty((len(listing.paths), *rate.shape), dtype=np.float32)
        frames[k] = rate
    times, length = listing.times, CONTEXT + LEAD
    step = listing.timestep
    group = zarr.open_group(out, mode="w")
    crops = []
    for start in range(0, len(times) - length + 1):
        if (times[start] - times[0]) // step % stride:
            continue
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


def geogen(
    source_cfg: dict, out: Path, dask: dict, stride: int = 1
) -> tuple[int, float, Path, dict]:
    cfg = validate_prepare_config(
        {
            "source": source_cfg,
            "task": {"name": "nowcast"},
            "out": str(out),
            "crop": {"size": SIZE, "stride": STRIDE},
            "sequence": {"context": CONTEXT, "lead": LEAD, "stride": stride},
            "reject": {"max_nan_fraction": MAX_NAN},
            "sampling": {"method": "uniform", "probability": 1.0},
            # one split (the naive loop has none): no window dropped by a split boundary
            "split": {"method": "ranges", "guard": "0h", "ranges": {}},
            "dask": {"threads_per_worker": 1, **dask},
            "progress": False,
        }
    )
    tic = time.perf_counter()
    result = prepare(cfg)
    seconds = time.perf_counter() - tic
    return result.summary["crops_written"], seconds, result.path, result.summary["timings_s"]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def crop_checksum(store: Path) -> str:
    """sha256 of the crop array's chunk files (names and bytes)."""
    digest = hashlib.sha256()
    chunks = store / "precip" / "c"
    for path in sorted(p for p in chunks.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(chunks)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def make_large_archive(root: Path, n_frames: int, mask_from: str, seed: int = 0) -> None:
    """``n_frames`` synthetic AQC GIFs (MeteoSwiss format) under ``root/%Y%m%d``."""
    import pandas as pd
    from PIL import Image

    from geogen.data.synthetic import synthetic_rain

    pysteps = import_pysteps()
    reference, _, _ = pysteps.io.import_mch_gif(mask_from, "AQC", "mm", 5)
    outside = ~np.isfinite(reference)
    times = pd.date_range("2021-06-01T00:00", periods=n_frames, freq="5min")
    segment = 50
    for first in range(0, n_frames, segment):
        n = min(segment, n_frames - first)
        rain = synthetic_rain(n, outside.shape, seed=seed + first, velocity=(0.7, 1.3))
        # mm/h -> mm per 5 min -> the AQC digital number (the inverse of pysteps' table)
        with np.errstate(divide="ignore"):
            dn = np.round(71.5 + 20.0 * np.log10(316.0 * (rain / 12.0) ** 1.5))
        dn = np.where(rain > 0, np.clip(dn, 2, 250), 0).astype(np.uint8)
        dn[:, outside] = 255
        for k in range(n):
            t = times[first + k]
            folder = root / f"{t:%Y%m%d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(dn[k], mode="P").save(folder / f"AQC{t:%y%j%H%M}F_00005.801.gif")


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


def measure(source_cfg: dict, tmp: Path, stride: int, keep_store: bool = False) -> dict:
    files = load_source(source_cfg).listing.paths
    input_mb = sum(os.path.getsize(p) for p in files) / 1e6
    out: dict = {"files": len(files), "input_mb": round(input_mb, 2), "sequence_stride": stride}
    cpu = cpu_seconds()
    n_naive, t_naive = naive(source_cfg, tmp / "naive.zarr", stride)
    cpu_naive = cpu_seconds() - cpu
    reference = crop_checksum(tmp / "naive.zarr")
    shutil.rmtree(tmp / "naive.zarr")
    out["naive"] = {"seconds": t_naive, "cpu_s": round(cpu_naive, 2), "crops": n_naive}
    for key, (dask, source_overrides) in RUNS.items():
        cpu = cpu_seconds()
        run_source = {**source_cfg, **source_overrides}
        n, t, store, timings = geogen(run_source, tmp / f"{key}.zarr", dask, stride)
        cpu = cpu_seconds() - cpu
        if n != n_naive:
            raise AssertionError(f"{key} wrote {n} crops, the naive loop {n_naive}")
        same = crop_checksum(store) == reference
        out[key] = {
            "seconds": t,
            "cpu_s": round(cpu, 2),
            "cpu_over_naive": round(cpu / cpu_naive, 2),
            "crops": n,
            "same_crops_as_naive": same,
            "timings_s": timings,
        }
        if not (keep_store and key == "geogen_1_worker"):
            shutil.rmtree(store)
    for entry in (out["naive"], *(out[k] for k in RUNS)):
        entry["crops_per_s"] = entry["crops"] / entry["seconds"]
        entry["input_mb_per_s"] = input_mb / entry["seconds"]
    for key in RUNS:
        out[key]["speedup_vs_naive"] = round(t_naive / out[key]["seconds"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mch: only the 2015-05-15 event")
    parser.add_argument("--large-frames", type=int, default=2000, help="0: no large archive")
    parser.add_argument("--large-stride", type=int, default=6, help="time steps between windows")
    parser.add_argument("--archive", type=Path, help="reuse (or create) the large archive here")
    args = parser.parse_args()
    data = find_radar_data()
    if data is None:
        sys.exit("no radar data: set GEOGEN_DATA (see README)")
    mch_cfg = load_source_config("mch", root=str(data / "radar" / "mch"))
    if args.quick:
        mch_cfg["path_fmt"] = "20150515"  # a literal folder: one event
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    report: dict = {
        "benchmark": "bench_prepare",
        "crop": SIZE,
        "stride": STRIDE,
        "frames": CONTEXT + LEAD,
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
    }
    try:
        report["mch"] = measure(mch_cfg, tmp, 1, keep_store=True)
        store = tmp / "geogen_1_worker.zarr"
        report["dataloader_samples_per_s"] = {
            f"num_workers_{w}": dataloader_rate(store, w, batches=8) for w in (0, 2)
        }
        shutil.rmtree(store)
        if args.large_frames:
            archive = args.archive or tmp / "large_archive"
            if not archive.exists() or not any(archive.rglob("*.gif")):
                tic = time.perf_counter()
                make_large_archive(archive, args.large_frames, load_source(mch_cfg).paths[0])
                report["large_archive_generation_s"] = round(time.perf_counter() - tic, 1)
            large_cfg = {**load_source_config("mch", root=str(archive)), "name": "mch_synthetic"}
            report["large"] = measure(large_cfg, tmp, args.large_stride)
        report["targets"] = {
            name: {
                "geogen_2_workers_speedup_at_least": goal,
                "geogen_2_workers": report[name]["geogen_2_workers"]["speedup_vs_naive"],
                "geogen_2_processes": report[name]["geogen_2_processes"]["speedup_vs_naive"],
                "reached": report[name]["geogen_2_workers"]["speedup_vs_naive"] >= goal,
            }
            for name, goal in TARGETS.items()
            if name in report
        }
        report["load_average_after"] = os.getloadavg()
        print(json.dumps(report, indent=2, default=float))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
