"""``geogen-prepare`` on the real sample archives, from Python and from the command line.

Every store is checked value by value against the source it was built from: each crop equals
the source frames at ``(t0 + offsets, y0, x0)``, block means, sampling probabilities, rain and
no-data fractions and the per-split statistics are recomputed from the crops themselves.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr
from conftest import SHARED_DATA, deep_update, prepare_config, requires_shared_data
from omegaconf import OmegaConf

from data_pipelines.config import validate_prepare_config
from data_pipelines.prepare import PrepareResult, prepare
from geogen.config import config_dir, find_climate_data, load_source_config
from geogen.io import BadFileError, open_source

pytestmark = pytest.mark.integration

GEOGEN_PREPARE = str(Path(sys.executable).with_name("geogen-prepare"))
#: The load-task granularity geogen-prepare ships with (conf/prepare.yaml).
SHIPPED_PARTS = OmegaConf.to_container(OmegaConf.load(config_dir() / "prepare.yaml").parts)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def real_config(
    out: Path, source: str | dict[str, Any], start: str | None, end: str | None, **overrides: Any
) -> dict[str, Any]:
    """A prepare config for a real source (a shipped name or a config mapping)."""
    cfg = prepare_config(out, start=start, end=end, **overrides)
    cfg["source"] = load_source_config(source) if isinstance(source, str) else dict(source)
    return cfg


def build(cfg: dict[str, Any]) -> PrepareResult:
    """Validate and run a prepare config."""
    return prepare(validate_prepare_config(cfg))


def frame_times(store: xr.Dataset, sample: int) -> pd.DatetimeIndex:
    """Valid times of the frames of ``sample``: ``t0`` plus the time offsets."""
    offsets = store["time"].values.astype(np.int64)
    t0 = pd.Timestamp(store["t0"].values[sample])
    return pd.DatetimeIndex([t0 + pd.Timedelta(minutes=int(m - offsets[0])) for m in offsets])


def block_mean(crops: np.ndarray, factor: int) -> np.ndarray:
    """Block means over ``factor`` x ``factor`` pixels of ``(..., y, x)``."""
    *lead, ny, nx = crops.shape
    blocks = crops.astype(np.float64).reshape(*lead, ny // factor, factor, nx // factor, factor)
    return blocks.mean(axis=(-3, -1))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``geogen-prepare`` console script (Hydra logs go under ``cwd``)."""
    return subprocess.run(
        [GEOGEN_PREPARE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


def store_files(path: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of a store with its modification time and content."""
    out = {}
    for file in sorted(path.rglob("*")):
        if file.is_file():
            out[str(file.relative_to(path))] = (file.stat().st_mtime_ns, file.read_bytes())
    return out


@dataclass(frozen=True)
class StoreCase:
    """A store to build from a real source, and how it was sampled."""

    id: str
    source: str
    start: str
    end: str
    overrides: dict[str, Any] = field(default_factory=dict)
    climate: bool = False


def nowcast(size: int, sampling: str) -> dict[str, Any]:
    """Overrides for a small nowcasting store (2 context + 4 lead frames)."""
    methods = {
        "uniform": {"method": "uniform", "probability": 1.0},
        "dgmr": {"method": "dgmr", "q_min": 0.5, "m": 2.0},
    }
    return {
        "task": {"name": "nowcast", "factor": None},
        "crop": {"size": size, "stride": size},
        "sequence": {"context": 2, "lead": 4, "length": None, "stride": 1},
        "sampling": methods[sampling],
    }


def downscale(size: int, stride: int, factor: int, length: int) -> dict[str, Any]:
    """Overrides for a small downscaling store."""
    return {
        "task": {"name": "downscale", "factor": factor},
        "crop": {"size": size, "stride": stride},
        "sequence": {"context": None, "lead": None, "length": length, "stride": 1},
        "reject": {"max_nan_fraction": 0.0},
        "sampling": {"method": "uniform", "probability": 1.0},
    }


STORE_CASES = [
    StoreCase("mch-nowcast", "mch", "2015-05-15T16:00", "2015-05-15T16:40", nowcast(256, "dgmr")),
    StoreCase(
        "fmi-nowcast", "fmi", "2016-09-28T15:00", "2016-09-28T15:40", nowcast(256, "uniform")
    ),
    StoreCase("bom-nowcast", "bom", "2018-06-16T10:00", "2018-06-16T10:48", nowcast(256, "dgmr")),
    StoreCase(
        "bom_c10-nowcast",
        "bom_c10",
        "2020-10-31T12:00",
        "2020-10-31T13:00",
        nowcast(256, "uniform"),
    ),
    StoreCase(
        "opera-nowcast", "opera", "2018-08-24T18:00", "2018-08-24T19:30", nowcast(256, "uniform")
    ),
    StoreCase(
        "mch-downscale",
        "mch",
        "2015-05-15T16:00",
        "2015-05-15T16:45",
        downscale(128, 128, 16, 8),
    ),
    StoreCase(
        "era5-downscale",
        "era5",
        "2019-03-10T00:00",
        "2019-03-10T11:00",
        downscale(32, 16, 4, 8),
        climate=True,
    ),
]


# --------------------------------------------------------------------------------------------
# 4. stores from every real source, checked against the source
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", STORE_CASES, ids=lambda c: c.id)
def test_store_from_real_source_equals_source_crops(case: StoreCase, tmp_path: Path):
    if case.climate:
        assert find_climate_data() is not None, "needs ../shared/data/era5 (or GEOGEN_CLIMATE_DATA)"
    else:
        assert SHARED_DATA is not None, "needs ../shared/data/pysteps-data (or GEOGEN_DATA)"
    cfg = real_config(tmp_path / "crops.zarr", case.source, case.start, case.end, **case.overrides)
    result = build(cfg)
    summary = result.summary
    source = open_source(case.source, case.start, case.end)
    variable = source.attrs["variable"]
    frames = source[variable].load()
    size, length = cfg["crop"]["size"], validate_prepare_config(cfg).length
    step = float(source.attrs["timestep"])

    store = xr.open_zarr(result.path)
    n = store.sizes["sample"]
    assert n == summary["crops_written"] > 0
    assert store[variable].shape == (n, length, size, size)
    assert store[variable].dtype == np.float32

    # Attributes: what, from where, how.
    attrs = store.attrs
    assert attrs["source"] == case.source and attrs["variable"] == variable
    assert attrs["task"] == cfg["task"]["name"] and attrs["timestep_minutes"] == step
    assert attrs["crop_size"] == size
    assert attrs["grid"]["shape"] == [source.sizes["y"], source.sizes["x"]]
    assert attrs["config"]["source"]["name"] == case.source
    assert attrs["config"]["crop"]["size"] == size
    assert {"geogen", "pysteps", "xarray", "zarr", "dask"} <= set(attrs["versions"])
    assert attrs["provenance"]["created"] and attrs["provenance"]["input_fingerprint"]
    assert attrs["provenance"]["source_root"] == cfg["source"]["root"]
    assert attrs["summary"]["crops_written"] == n

    # Time offsets: nowcast relative to the last context frame, downscale to the first frame.
    first = -(cfg["sequence"]["context"] - 1) if case.overrides["task"]["name"] == "nowcast" else 0
    np.testing.assert_array_equal(store["time"].values, (first + np.arange(length)) * step)

    # Every crop equals the source frames at its times and offsets.
    crops = store[variable].values
    y0s, x0s = store["y0"].values, store["x0"].values
    for sample in range(n):
        times = frame_times(store, sample)
        assert times[0] >= pd.Timestamp(case.start) and times[-1] <= pd.Timestamp(case.end)
        y0, x0 = int(y0s[sample]), int(x0s[sample])
        expected = frames.sel(time=times).values[:, y0 : y0 + size, x0 : x0 + size]
        np.testing.assert_array_equal(crops[sample], expected, err_msg=f"sample {sample}")

    # Per-sample metadata recomputed from the crops.
    valid = np.isfinite(crops)
    n_valid = valid.sum(axis=(1, 2, 3))
    nan_fraction = 1.0 - n_valid / valid[0].size
    np.testing.assert_allclose(store["nan_fraction"].values, nan_fraction, rtol=1e-6, atol=1e-7)
    assert (nan_fraction <= cfg["reject"]["max_nan_fraction"]).all()
    prob = store["sample_prob"].values
    assert ((prob > 0) & (prob <= 1)).all()
    sampling = cfg["sampling"]
    if sampling["method"] == "dgmr":
        soft = np.where(valid, -np.expm1(-np.where(valid, crops, 0.0).astype(np.float64)), 0.0)
        expected_prob = np.minimum(
            1.0, sampling["q_min"] + sampling["m"] * soft.sum(axis=(1, 2, 3)) / n_valid
        )
        np.testing.assert_allclose(prob, expected_prob, rtol=1e-5)
        assert prob.min() < 1.0  # the draw was not a formality
    else:
        np.testing.assert_array_equal(prob, 1.0)
    if variable == "precip":
        wet = (valid & (np.nan_to_num(crops) >= sampling.get("rain_threshold", 0.1))).sum(
            axis=(1, 2, 3)
        )
        np.testing.assert_allclose(store["rain_fraction"].values, wet / n_valid, rtol=1e-6)
    else:
        assert np.isnan(store["rain_fraction"].values).all()

    # Downscaling pairs: the low-resolution field is the block mean of the high-resolution one.
    if cfg["task"]["name"] == "downscale":
        factor = cfg["task"]["factor"]
        lowres = store[f"{variable}_lowres"].values
        assert lowres.shape == (n, length, size // factor, size // factor)
        np.testing.assert_allclose(lowres, block_mean(crops, factor), rtol=1e-6)
        assert attrs["factor"] == factor

    # Splits and per-split statistics recomputed from the crops.
    splits = np.asarray(store["split"].values.tolist())
    assert attrs["split_counts"] == {s: int((splits == s).sum()) for s in ("train", "val", "test")}
    for name, stats in attrs["statistics"].items():
        values = crops[splits == name]
        values = values[np.isfinite(values)].astype(np.float64)
        assert stats["count"] == values.size
        np.testing.assert_allclose(stats["mean"], values.mean(), rtol=1e-6)
        np.testing.assert_allclose(stats["std"], values.std(), rtol=1e-4)
        assert stats["min"] == values.min() and stats["max"] == values.max()
    assert "train" in attrs["statistics"]


# --------------------------------------------------------------------------------------------
# 2. gaps: windows needing a missing frame are rejected, never bridged
# --------------------------------------------------------------------------------------------
KEPT_STARTS = ("16:30", "16:35", "17:10", "17:15", "17:20")


@requires_shared_data
def test_prepare_rejects_windows_across_a_gap(tmp_path: Path):
    missing = pd.DatetimeIndex(["2015-05-15T17:00", "2015-05-15T17:05"])
    archive = tmp_path / "archive"
    for path in sorted(glob.glob(str(SHARED_DATA / "radar/mch/20150515/*.gif"))):
        stamp = datetime.strptime(os.path.basename(path)[:12], "AQC%y%j%H%M")
        if stamp not in missing:
            (archive / "20150515").mkdir(parents=True, exist_ok=True)
            (archive / "20150515" / os.path.basename(path)).symlink_to(path)
    source = load_source_config("mch", root=str(archive))
    start, end = "2015-05-15T16:30", "2015-05-15T17:40"
    cfg = real_config(
        tmp_path / "gap.zarr",
        source,
        start,
        end,
        crop={"size": 128, "stride": 128},
        sequence={"context": 2, "lead": 3},
        sampling={"method": "uniform", "probability": 1.0},
    )
    summary = build(cfg).summary

    # 13 frames from 16:30 to 17:40 without 17:00 and 17:05; windows of 5 frames may start
    # at the 9 frames up to 17:20, of which 16:40, 16:45, 16:50 and 16:55 need a missing one.
    assert summary["frames"] == 13
    assert summary["missing_time_steps"] == 2 and summary["gaps"] == 1
    assert summary["sequences_seen"] == 9
    assert summary["rejected_gap"] == 4
    assert summary["sequences_complete"] == 5

    store = xr.open_zarr(tmp_path / "gap.zarr")
    assert store.sizes["sample"] == summary["crops_written"] > 0
    starts = set(pd.DatetimeIndex(store["t0"].values))
    assert starts == {pd.Timestamp(f"2015-05-15T{hm}") for hm in KEPT_STARTS}
    frames = open_source(source, start, end)["precip"].load()
    for sample in range(store.sizes["sample"]):
        times = frame_times(store, sample)
        assert not times.isin(missing).any(), f"sample {sample} spans the gap: {times}"
        assert (np.diff(times) == np.timedelta64(5, "m")).all()
        y0, x0 = int(store["y0"].values[sample]), int(store["x0"].values[sample])
        np.testing.assert_array_equal(
            store["precip"].values[sample],
            frames.sel(time=times).values[:, y0 : y0 + 128, x0 : x0 + 128],
        )


# --------------------------------------------------------------------------------------------
# 3. a truncated file: named and fatal by default; counted and avoided with on_bad_file=skip
# --------------------------------------------------------------------------------------------
CORRUPT_CASES = {
    # source: (files of the sample data, crop size)
    "mch": ("mch/20150515/*.gif", 128),
    "bom": ("bom/prcp-cscn/2/2018/06/16/*.nc", 128),
    "opera": ("OPERA/20180824/*.hdf", 256),
}
N_FILES, BAD_INDEX = 8, 3  # windows of 3 frames start at 0..5; those at 1, 2, 3 need file 3


def corrupt_copy(name: str, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """Copy ``N_FILES`` consecutive files of ``name`` to ``tmp_path``; truncate one.

    Returns the source config reading the copies, and the truncated file.
    """
    pattern, _ = CORRUPT_CASES[name]
    config = load_source_config(name)
    copies = []
    for path in sorted(glob.glob(str(SHARED_DATA / "radar" / pattern)))[:N_FILES]:
        target = tmp_path / "archive" / os.path.relpath(path, config["root"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copies.append(target)
    bad = copies[BAD_INDEX]
    with open(bad, "r+b") as handle:
        handle.truncate(100)
    return {**config, "root": str(tmp_path / "archive")}, bad


def corrupt_config(name: str, source: dict[str, Any], out: Path, on_bad_file: str) -> dict:
    """Three-frame nowcast crops with geogen-prepare's shipped load-task sizes."""
    size = CORRUPT_CASES[name][1]
    return real_config(
        out,
        source,
        None,
        None,
        crop={"size": size, "stride": size},
        sequence={"context": 2, "lead": 1},
        sampling={"method": "uniform", "probability": 1.0},
        parts=SHIPPED_PARTS,
        on_bad_file=on_bad_file,
    )


@requires_shared_data
@pytest.mark.parametrize("name", list(CORRUPT_CASES))
def test_prepare_stops_on_a_truncated_file_naming_it(name: str, tmp_path: Path):
    source, bad = corrupt_copy(name, tmp_path)
    out = tmp_path / "crops.zarr"
    with pytest.raises(BadFileError) as failure:
        build(corrupt_config(name, source, out, "raise"))
    assert str(bad) in str(failure.value)
    assert not out.exists()
    assert out.with_name("crops.zarr.partial").is_dir()


@requires_shared_data
@pytest.mark.parametrize("name", list(CORRUPT_CASES))
def test_prepare_skips_a_truncated_file_and_the_windows_needing_it(name: str, tmp_path: Path):
    source, bad = corrupt_copy(name, tmp_path)
    out = tmp_path / "crops.zarr"
    summary = build(corrupt_config(name, source, out, "skip")).summary
    assert summary["bad_files"] == 1
    assert any(str(bad) in error for error in summary["bad_file_errors"])
    assert summary["sequences_seen"] == N_FILES - 2
    assert summary["rejected_bad_file"] == 3
    assert summary["sequences_complete"] == 3

    store = xr.open_zarr(out)
    frames = open_source(source, on_bad_file="skip")["precip"].load()
    bad_time = frames["time"].values[BAD_INDEX]
    assert np.isnan(frames.values[BAD_INDEX]).all()
    size = CORRUPT_CASES[name][1]
    n = store.sizes["sample"]
    assert n == summary["crops_written"] > 0
    assert len(set(store["t0"].values)) == 3  # windows at 0, 4 and 5: both sides of the file
    for sample in range(n):
        times = frame_times(store, sample)
        assert bad_time not in times.values
        y0, x0 = int(store["y0"].values[sample]), int(store["x0"].values[sample])
        np.testing.assert_array_equal(
            store["precip"].values[sample],
            frames.sel(time=times).values[:, y0 : y0 + size, x0 : x0 + size],
        )


# --------------------------------------------------------------------------------------------
# 8. threads and a local Dask cluster write exactly what the inline runner writes
# --------------------------------------------------------------------------------------------
@requires_shared_data
@pytest.mark.slow
def test_threads_and_local_dask_cluster_equal_inline(tmp_path: Path):
    overrides = deep_update(
        nowcast(128, "dgmr"), {"parts": {"samples": 8, "windows": 2, "frames": 3}}
    )
    stores = {}
    runners = (
        ("inline", {"address": "inline"}),
        ("threads", {"address": None}),  # the default: threads in this process
        ("cluster", {"address": None, "processes": True}),
    )
    for runner, dask in runners:
        dask = {**dask, "n_workers": 2, "threads_per_worker": 1}
        cfg = real_config(
            tmp_path / f"{runner}.zarr",
            "mch",
            "2016-07-11T21:00",
            "2016-07-11T21:45",
            dask=dask,
            **overrides,
        )
        stores[runner] = build(cfg).path
    inline = xr.open_zarr(stores["inline"])
    chunks = sorted(
        p.relative_to(stores["inline"]) for p in (stores["inline"] / "precip").rglob("*")
    )
    for other in ("threads", "cluster"):
        cluster = xr.open_zarr(stores[other])
        assert inline.sizes["sample"] == cluster.sizes["sample"] > 8  # parts in parallel
        for name in ("t0", "y0", "x0", "split", "sample_prob", "rain_fraction", "nan_fraction"):
            np.testing.assert_array_equal(inline[name].values, cluster[name].values, err_msg=name)
        assert inline["precip"].values.tobytes() == cluster["precip"].values.tobytes()
        assert inline.attrs["statistics"] == cluster.attrs["statistics"]
        for chunk in chunks:
            if (stores["inline"] / chunk).is_file():
                assert (stores["inline"] / chunk).read_bytes() == (
                    stores[other] / chunk
                ).read_bytes()


# --------------------------------------------------------------------------------------------
# 7. the command line
# --------------------------------------------------------------------------------------------
CLI_ARGS = (
    "source=mch",
    "start=2015-05-15T16:00",
    "end=2015-05-15T16:30",
    "crop.size=256",
    "crop.stride=256",
    "sequence.context=2",
    "sequence.lead=3",
    "sampling=uniform",
    "dask.address=inline",
    "progress=false",
)


@requires_shared_data
@pytest.mark.slow
def test_cli_builds_then_does_nothing_then_rebuilds_on_overwrite(tmp_path: Path):
    out = tmp_path / "mch.zarr"
    first = run_cli(*CLI_ARGS, f"out={out}", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "crops written" in first.stdout
    store = xr.open_zarr(out)
    n = store.sizes["sample"]
    summary = store.attrs["summary"]
    assert n == summary["crops_written"] > 0
    assert summary["sequences_complete"] == 3  # 7 frames, windows of 5
    assert f"crops written {n}" in " ".join(first.stdout.replace("│", " ").split())
    before = store_files(out)

    again = run_cli(*CLI_ARGS, f"out={out}", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" in again.stdout
    assert store_files(out) == before  # not one file touched

    rebuilt = run_cli(*CLI_ARGS, f"out={out}", "overwrite=true", cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "nothing to do" not in rebuilt.stdout
    after = store_files(out)
    assert after["zarr.json"][0] != before["zarr.json"][0]  # written anew
    assert not list(tmp_path.glob("mch.zarr.*"))  # no partial or old copy left behind
    np.testing.assert_array_equal(xr.open_zarr(out)["precip"].values, store["precip"].values)


@requires_shared_data
@pytest.mark.parametrize(
    ("override", "named"),
    [("crop.size=0", "crop.size"), ("task=bogus", "bogus"), ("on_bad_file=ignore", "on_bad_file")],
)
def test_cli_rejects_a_bad_override_naming_the_key(override: str, named: str, tmp_path: Path):
    result = run_cli(*CLI_ARGS, f"out={tmp_path / 'x.zarr'}", override, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in output
    assert "Traceback" not in output
    assert not (tmp_path / "x.zarr").exists()


@requires_shared_data
def test_cli_accepts_compact_times(tmp_path: Path):
    """``start=201505151600`` reaches the config as an int (Hydra); it names a time all the same."""
    args = [a for a in CLI_ARGS if not a.startswith(("start=", "end="))]
    out = tmp_path / "mch.zarr"
    result = run_cli(*args, "start=201505151600", "end=201505151630", f"out={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    t0 = pd.DatetimeIndex(xr.open_zarr(out)["t0"].values)
    assert t0.min() == pd.Timestamp("2015-05-15T16:00")
    assert t0.max() == pd.Timestamp("2015-05-15T16:10")


# --------------------------------------------------------------------------------------------
# 6. KNMI, a source the other tests never saw, in pysteps' knmi_hdf5 layout
# --------------------------------------------------------------------------------------------
KNMI_SHAPE = (765, 700)  # rows, columns of the KNMI 1 km composite
KNMI_TIMES = pd.date_range("2010-08-26T12:00", periods=8, freq="5min")
KNMI_NO_DATA = 65535
KNMI_PROJ = "+proj=stere +lat_0=90 +lon_0=0.0 +lat_ts=60.0 +a=6378.137 +b=6356.752 +x_0=0 +y_0=0"


def write_knmi_archive(root: Path) -> np.ndarray:
    """Synthetic KNMI RAD_NL25_RAP_5min files, laid out as pysteps' default knmi entry expects.

    The layout is the one ``pysteps.io.import_knmi_hdf5`` reads: ``image1/image_data`` holds
    5-minute accumulations in hundredths of mm (uint16, 65535 = no data), ``geographic`` the
    grid (offsets and pixel sizes in km, negative y pixel size for a north-up image) and
    ``geographic/map_projection`` the proj4 string of the real files.

    Returns
    -------
    numpy.ndarray
        The stored pixel values, ``(time, y, x)`` uint16.
    """
    import h5py

    from geogen.data.synthetic import synthetic_rain

    rain = synthetic_rain(len(KNMI_TIMES), KNMI_SHAPE, seed=11, wet_fraction=0.4)  # mm/h
    raw = np.round(rain.astype(np.float64) * 5.0 / 60.0 * 100.0).astype(np.uint16)
    raw[:, 200:210, 150:160] = KNMI_NO_DATA  # a patch with no data inside a crop
    raw[:, :30, :] = KNMI_NO_DATA  # and a strip outside every crop
    for when, pixels in zip(KNMI_TIMES, raw, strict=True):
        folder = root / "radar" / "KNMI" / f"{when:%Y}" / f"{when:%m}"
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(folder / f"RAD_NL25_RAP_5min_{when:%Y%m%d%H%M}.h5", "w") as f:
            image = f.create_group("image1")
            image.create_dataset("image_data", data=pixels, compression="gzip")
            image.attrs["image_product_name"] = np.bytes_("RAD_NL25_RAP_5min")
            calibration = image.create_group("calibration")
            calibration.attrs["calibration_formulas"] = np.bytes_("GEO=0.010000*PV+0.000000")
            calibration.attrs["calibration_out_of_image"] = np.array([KNMI_NO_DATA], np.int32)
            calibration.attrs["calibration_missing_data"] = np.array([0], np.int32)
            geographic = f.create_group("geographic")
            geographic.attrs["geo_column_offset"] = np.array([0.0], np.float32)
            geographic.attrs["geo_row_offset"] = np.array([3650.0], np.float32)
            geographic.attrs["geo_pixel_size_x"] = np.array([1.0], np.float32)
            geographic.attrs["geo_pixel_size_y"] = np.array([-1.0], np.float32)
            geographic.attrs["geo_number_columns"] = np.array([KNMI_SHAPE[1]], np.int32)
            geographic.attrs["geo_number_rows"] = np.array([KNMI_SHAPE[0]], np.int32)
            geographic.attrs["geo_dim_pixel"] = np.bytes_("KM,KM")
            projection = geographic.create_group("map_projection")
            projection.attrs["projection_proj4_params"] = np.bytes_(KNMI_PROJ)
            f.create_group("overview").attrs["product_datetime_start"] = np.bytes_(
                when.strftime("%d-%b-%Y;%H:%M:%S.000").upper()
            )
    return raw


@pytest.fixture(scope="module")
def knmi_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A synthetic KNMI archive root (a pysteps-data-like folder) and its pixel values."""
    root = tmp_path_factory.mktemp("knmi")
    return root, write_knmi_archive(root)


def test_knmi_cli_store_equals_synthetic_accumulations(
    knmi_archive: tuple[Path, np.ndarray], tmp_path: Path
):
    root, raw = knmi_archive
    out = tmp_path / "knmi.zarr"
    result = run_cli(
        "source=knmi",
        f"paths.radar_root={root}",
        f"out={out}",
        "crop.size=256",
        "sequence.context=2",
        "sequence.lead=3",
        "sampling=uniform",
        "dask.address=inline",
        "progress=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "crops written" in result.stdout

    store = xr.open_zarr(out)
    # 8 frames -> 4 windows of 5; a 765 x 700 grid holds 2 x 2 tiles of 256 (centred).
    assert store.sizes["sample"] == 4 * 4
    assert store.attrs["source"] == "knmi" and store.attrs["timestep_minutes"] == 5.0
    assert store.attrs["grid"]["shape"] == list(KNMI_SHAPE)
    # mm in 5 min (hundredths of mm in the file) -> mm/h.
    rate = np.where(raw == KNMI_NO_DATA, np.nan, raw / 100.0 * 12.0)
    tiles = {(int(y), int(x)) for y, x in zip(store["y0"].values, store["x0"].values, strict=True)}
    assert tiles == {(126, 94), (126, 350), (382, 94), (382, 350)}
    crops = store["precip"].values
    for sample in range(store.sizes["sample"]):
        times = frame_times(store, sample)
        index = KNMI_TIMES.get_indexer(times)
        assert (index >= 0).all()
        y0, x0 = int(store["y0"].values[sample]), int(store["x0"].values[sample])
        np.testing.assert_allclose(
            crops[sample], rate[index, y0 : y0 + 256, x0 : x0 + 256], rtol=1e-6, atol=0
        )
    assert np.isnan(crops).any() and np.nanmax(crops) > 1.0


def test_knmi_grid_is_placed_over_the_netherlands(knmi_archive: tuple[Path, np.ndarray]):
    """The dataset's x/y and crs locate the KNMI composite: its centre is near 5.0 E, 52.5 N.

    The real files carry ``+a=6378.137 +b=6356.752`` (an ellipsoid in km, so that the grid is
    in km); a grid mapping that only a 6 km-wide planet fits cannot be transformed to
    longitude/latitude.
    """
    root, raw = knmi_archive
    ds = open_source("knmi", root=str(root / "radar" / "KNMI"))
    assert ds.sizes["time"] == len(KNMI_TIMES)
    np.testing.assert_array_equal(
        np.isnan(ds["precip"].isel(time=0).values), raw[0] == KNMI_NO_DATA
    )
    crs = pyproj.CRS.from_wkt(ds["crs"].attrs["crs_wkt"])
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    centre = to_lonlat.transform(float(ds["x"].values.mean()), float(ds["y"].values.mean()))
    np.testing.assert_allclose(centre, (4.96, 52.5), atol=0.1)
