"""Reading the real sample archives through ``geogen.io.open_source``.

Every frame geogen returns must equal pysteps' own reading of the same file converted with
``pysteps.utils.to_rainrate``; the time axis must hold exactly the files of the interval, with
gaps reported and never shifted; unreadable files must be named; climate fields must read the
same from netCDF, zarr and GRIB.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr
from conftest import CLIMATE_DATA, SHARED_DATA, requires_climate_data, requires_shared_data

from geogen.config import load_source_config
from geogen.io import BadFileError, load_source, open_source

pytestmark = pytest.mark.integration

with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints where its config file is
    import pysteps.io
    import pysteps.utils


# --------------------------------------------------------------------------------------------
# helpers: an independent reading of the archives (glob + file-name times + pysteps itself)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RadarCase:
    """A shipped radar source, an interval of the sample data, and how to find its files."""

    name: str
    start: str
    end: str
    glob: str  # files of the source, relative to pysteps-data/radar
    time_format: str  # strptime format of the start of the file name
    has_no_data_area: bool

    @property
    def id(self) -> str:
        return f"{self.name}-{self.start[:10]}"


RADAR_CASES = [
    RadarCase("mch", "2015-05-15T16:00", "2015-05-15T16:30", "mch/*/AQC*.gif", "AQC%y%j%H%M", True),
    RadarCase("mch", "2016-07-11T23:00", "2016-07-11T23:55", "mch/*/AQC*.gif", "AQC%y%j%H%M", True),
    RadarCase(
        "fmi",
        "2016-09-28T15:00",
        "2016-09-28T15:30",
        "fmi/pgm/*/*.pgm.gz",
        "%Y%m%d%H%M",
        True,
    ),
    RadarCase(
        "bom",
        "2018-06-16T10:00",
        "2018-06-16T10:36",
        "bom/prcp-cscn/2/*/*/*/2_*.nc",
        "2_%Y%m%d_%H%M%S",
        False,
    ),
    RadarCase(
        "bom_c10",
        "2020-10-31T12:00",
        "2020-10-31T13:00",
        "bom/prcp-c10/66/*/*/*/66_*.nc",
        "66_%Y%m%d_%H%M%S",
        False,
    ),
    RadarCase(
        "opera",
        "2018-08-24T18:00",
        "2018-08-24T19:00",
        "OPERA/*/T_PAAH21_C_EUOC_*.hdf",
        "T_PAAH21_C_EUOC_%Y%m%d%H%M%S",
        True,
    ),
    RadarCase(
        "odim",
        "2018-08-24T20:00",
        "2018-08-24T21:00",
        "OPERA/*/T_PAAH21_C_EUOC_*.hdf",
        "T_PAAH21_C_EUOC_%Y%m%d%H%M%S",
        True,
    ),
]


def file_time(path: str, time_format: str) -> pd.Timestamp | None:
    """The valid time a file name encodes (parsed from its start), or None."""
    name = os.path.basename(path)
    width = len(datetime(2000, 1, 1).strftime(time_format))
    try:
        return pd.Timestamp(datetime.strptime(name[:width], time_format))
    except ValueError:
        return None


def files_between(case: RadarCase) -> dict[pd.Timestamp, str]:
    """Files of ``case`` whose name encodes a time in [start, end], keyed by that time."""
    start, end = pd.Timestamp(case.start), pd.Timestamp(case.end)
    found = {}
    for path in glob.glob(str(SHARED_DATA / "radar" / case.glob)):
        when = file_time(path, case.time_format)
        if when is not None and start <= when <= end:
            found[when] = path
    return dict(sorted(found.items()))


def pysteps_rain_rate(
    path: str, importer: str, importer_kwargs: dict
) -> tuple[np.ndarray, dict[str, object]]:
    """pysteps' own reading of ``path`` in mm/h (NaN for no data), and the importer metadata."""
    read = pysteps.io.get_method(importer, "importer")
    values, _quality, metadata = read(path, **importer_kwargs)
    rate, _ = pysteps.utils.to_rainrate(values, metadata)
    return np.ma.filled(np.ma.asarray(rate, dtype=np.float64), np.nan), metadata


def lonlat(crs: str, x: float, y: float) -> tuple[float, float]:
    """Longitude and latitude of the point ``(x, y)`` of the projection ``crs``."""
    to_lonlat = pyproj.Transformer.from_crs(
        pyproj.CRS.from_user_input(crs), "EPSG:4326", always_xy=True
    )
    return to_lonlat.transform(x, y)


def mirror(paths: list[str], root: str | Path, new_root: Path, *, copy: bool = False) -> list[Path]:
    """Symlink (or copy) ``paths`` under ``new_root`` with their layout relative to ``root``."""
    out = []
    for path in paths:
        target = new_root / os.path.relpath(path, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copyfile(path, target)
        else:
            target.symlink_to(path)
        out.append(target)
    return out


# --------------------------------------------------------------------------------------------
# 1. every radar source of the sample data
# --------------------------------------------------------------------------------------------
@requires_shared_data
@pytest.mark.parametrize("case", RADAR_CASES, ids=lambda c: c.id)
def test_radar_source_equals_pysteps_reading(case: RadarCase):
    config = load_source_config(case.name)
    ds = open_source(case.name, case.start, case.end)
    expected_files = files_between(case)
    assert expected_files, "the interval must hold sample files"

    # Layout, dtype, CF attributes.
    precip = ds["precip"]
    assert precip.dims == ("time", "y", "x")
    assert precip.dtype == np.float32
    assert precip.attrs["units"] == "mm/h"
    assert precip.attrs["standard_name"] == "lwe_precipitation_rate"
    assert precip.attrs["long_name"]
    assert precip.attrs["grid_mapping"] == "crs"
    assert ds.attrs["source"] == config["name"] == case.name
    assert ds.attrs["timestep"] == float(config["timestep"])
    assert ds.attrs["gaps"] == []

    # Exactly the files of the interval, in time order.
    np.testing.assert_array_equal(ds["time"].values, pd.DatetimeIndex(list(expected_files)).values)

    # Lazy: one Dask chunk per frame, nothing computed yet.
    assert isinstance(precip.data, da.Array)
    assert precip.data.numblocks == (len(expected_files), 1, 1)
    assert set(precip.data.chunks[0]) == {1}

    # One frame (the last, not the one read to find the grid) equals pysteps' reading.
    when, path = list(expected_files.items())[-1]
    expected, meta = pysteps_rain_rate(path, config["importer"], config["importer_kwargs"])
    frame = precip.sel(time=when).values
    np.testing.assert_array_equal(frame, expected.astype(np.float32))

    # Grid: cell centres spaced by the importer's pixel size, in the importer's projection.
    assert frame.shape == (ds.sizes["y"], ds.sizes["x"])
    dx, dy = float(meta["xpixelsize"]), float(meta["ypixelsize"])
    np.testing.assert_allclose(np.diff(ds["x"].values), dx, rtol=1e-9)
    sign = -1.0 if meta["yorigin"] == "upper" else 1.0
    np.testing.assert_allclose(np.diff(ds["y"].values), sign * dy, rtol=1e-9)
    # pysteps' x1 is the outer corner, except where the config says the importer reports the
    # centres of the outer cells (bom_rf3: the files' CF coordinate variables).
    half = dx / 2 if config.get("grid_registration", "corner") == "corner" else 0.0
    np.testing.assert_allclose(ds["x"].values[0], float(meta["x1"]) + half, atol=1e-6 * dx)
    crs_attrs = ds["crs"].attrs
    assert crs_attrs["crs_wkt"] and crs_attrs["proj4"]
    centre = float(ds["x"].values.mean()), float(ds["y"].values.mean())
    np.testing.assert_allclose(
        lonlat(crs_attrs["crs_wkt"], *centre), lonlat(str(meta["projection"]), *centre), atol=1e-7
    )

    # No-data areas are NaN, rain rates are never negative.
    nan_fraction = np.isnan(frame).mean()
    if case.has_no_data_area:
        assert 0.05 < nan_fraction < 0.95
    assert np.nanmin(frame) >= 0.0
    assert np.nanmax(frame) > 0.0


@requires_shared_data
@pytest.mark.parametrize(
    "case", [RADAR_CASES[0], RADAR_CASES[3], RADAR_CASES[5]], ids=lambda c: c.name
)
def test_radar_source_is_lazy(case: RadarCase, tmp_path: Path):
    """Opening reads one file (for the grid); the others are read only when computed."""
    config = load_source_config(case.name)
    paths = list(files_between(case).values())
    links = mirror(paths, config["root"], tmp_path)
    ds = open_source(case.name, case.start, case.end, root=str(tmp_path))
    assert ds.sizes["time"] == len(paths)
    for link in links[1:]:
        link.unlink()  # gone after opening: a lazy dataset does not notice
    with pytest.raises(BadFileError) as failure:
        ds["precip"].isel(time=-1).compute()
    assert str(links[-1]) in str(failure.value)
    first = ds["precip"].isel(time=0).values  # still readable
    expected, _ = pysteps_rain_rate(paths[0], config["importer"], config["importer_kwargs"])
    np.testing.assert_array_equal(first, expected.astype(np.float32))


class RecordingLock:
    """Stands in for HDF5_LOCK and counts how often it is taken."""

    def __init__(self) -> None:
        self.taken = 0

    def __enter__(self) -> None:
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        return None


@requires_shared_data
@pytest.mark.parametrize(
    ("name", "window", "locked"),
    [
        ("mch", ("2015-05-15T16:00", "2015-05-15T16:30"), False),
        ("opera", ("2018-08-24T22:00", "2018-08-24T22:30"), True),
    ],
)
def test_gif_frames_decode_in_parallel_without_the_hdf5_lock(name, window, locked, monkeypatch):
    """PIL-only importers skip HDF5_LOCK, HDF5 ones take it; threads read the same frames."""
    import concurrent.futures

    from geogen.io import radar

    recorder = RecordingLock()
    monkeypatch.setattr(radar, "HDF5_LOCK", recorder)
    source = load_source(load_source_config(name), *window)
    recorder.taken = 0
    sequential = [source.read(i) for i in range(len(source.paths))]
    assert recorder.taken == (len(source.paths) if locked else 0)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(source.read, range(len(source.paths))))
    for a, b in zip(sequential, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


@requires_shared_data
def test_mch_palette_table_gives_the_importers_bytes_on_every_sample_file(monkeypatch):
    """palette_lut reads every MeteoSwiss sample file to the bytes of the per-file importer,
    calling the importer only for the table and the first file."""
    from geogen.io import radar

    pysteps = radar.import_pysteps()
    importer = pysteps.io.get_method("mch_gif", "importer")
    calls = []

    def counting(path, **kwargs):
        calls.append(path)
        return importer(path, **kwargs)

    monkeypatch.setattr(pysteps.io, "get_method", lambda name, kind: counting)
    fast = load_source("mch")
    assert fast._palette is not None
    assert len(calls) == 2  # the 256-index table and the first file (grid, metadata, check)
    frames = [fast.read(i) for i in range(len(fast.paths))]
    assert len(calls) == 2 and len(frames) == len(fast.paths) >= 80
    monkeypatch.undo()

    slow = load_source("mch", palette_lut=False)
    assert slow._palette is None
    for i, frame in enumerate(frames):
        expected = slow.read(i)
        assert frame.dtype == expected.dtype == np.float32
        assert frame.tobytes() == expected.tobytes(), slow.paths[i]
    assert fast.attrs == slow.attrs  # threshold etc. from the first file, as before


@requires_shared_data
def test_mch_palette_table_that_disagrees_with_the_importer_is_dropped(monkeypatch, caplog):
    from geogen.io import radar

    real = radar.RadarSource._palette_table

    def wrong(self):
        table, meta = real(self)
        return table * np.float32(2.0), meta

    monkeypatch.setattr(radar.RadarSource, "_palette_table", wrong)
    with caplog.at_level("WARNING", logger="geogen.io.radar"):
        source = load_source("mch", "2015-05-15T16:00", "2015-05-15T16:30")
    assert source._palette is None
    assert "does not reproduce the pysteps importer" in caplog.text
    config = load_source_config("mch")
    expected, _ = pysteps_rain_rate(source.paths[-1], config["importer"], config["importer_kwargs"])
    np.testing.assert_array_equal(source.read(len(source.paths) - 1), expected.astype(np.float32))


@requires_shared_data
def test_opera_and_generic_odim_importers_agree():
    """The generic ODIM importer reads the OPERA composite like the OPERA entry."""
    window = ("2018-08-24T22:00", "2018-08-24T22:30")
    opera, odim = open_source("opera", *window), open_source("odim", *window)
    np.testing.assert_array_equal(opera["time"].values, odim["time"].values)
    np.testing.assert_array_equal(opera["x"].values, odim["x"].values)
    np.testing.assert_array_equal(opera["precip"].values, odim["precip"].values)
    assert (opera.attrs["source"], odim.attrs["source"]) == ("opera", "odim")
    assert odim.attrs["timestep"] == 15.0


@requires_shared_data
def test_bom_c10_coordinates_are_the_files_cell_centres():
    """x/y are cell centres (CF); the radar 66 files give them, with bounds, in km.

    pysteps' bom_rf3 importer puts the *centres* of the outer cells into x1/x2 for these
    files (x2 - x1 == (n - 1) * dx), so treating x1 as the outer corner shifts the grid by
    half a pixel.
    """
    import netCDF4

    ds = open_source("bom_c10", "2020-10-31T12:00", "2020-10-31T12:00")
    path = glob.glob(str(SHARED_DATA / "radar/bom/prcp-c10/66/2020/10/31/66_20201031_120000*"))[0]
    with netCDF4.Dataset(path) as nc:
        assert nc["x"].units == "km" and nc["x"].bounds == "x_bounds"
        x_centres = np.asarray(nc["x"][:], dtype=float) * 1000.0
        y_centres = np.asarray(nc["y"][:], dtype=float) * 1000.0
        x_bounds = np.asarray(nc["x_bounds"][:], dtype=float) * 1000.0
    np.testing.assert_allclose(x_bounds.mean(axis=1), x_centres)
    np.testing.assert_allclose(ds["x"].values, x_centres)
    np.testing.assert_allclose(ds["y"].values, y_centres)


@requires_shared_data
def test_bom_radar2_coordinates_are_the_files_coordinate_variables():
    """Radar 2 files have CF coordinate variables without bounds: by CF, cell centres."""
    import netCDF4

    ds = open_source("bom", "2018-06-16T12:00", "2018-06-16T12:00")
    path = glob.glob(str(SHARED_DATA / "radar/bom/prcp-cscn/2/2018/06/16/2_20180616_120000*"))[0]
    with netCDF4.Dataset(path) as nc:
        assert nc["x"].units == "km" and "bounds" not in nc["x"].ncattrs()
        np.testing.assert_allclose(ds["x"].values, np.asarray(nc["x"][:], dtype=float) * 1000.0)
        np.testing.assert_allclose(ds["y"].values, np.asarray(nc["y"][:], dtype=float) * 1000.0)


@requires_shared_data
def test_mch_midnight_file_in_previous_day_folder_is_found():
    """pysteps-data keeps 2016-07-12 00:00 (AQC161940000V) in the 20160711 folder.

    The event's 40 files span 20:45 to 00:00; a user asking for the event gets them all, not
    39 frames and a fake gap at midnight, whether the archive is scanned or, as here with
    both ``start`` and ``end``, searched by date (pysteps' ``find_by_date`` looks for that file
    in a 20160712 folder only).
    """
    case = RadarCase(
        "mch", "2016-07-11T20:45", "2016-07-12T00:00", "mch/*/AQC*.gif", "AQC%y%j%H%M", True
    )
    expected = files_between(case)
    assert len(expected) == 40
    # By date (pysteps' find_by_date) and by scanning the archive (no end given).
    for ds in (open_source("mch", case.start, case.end), open_source("mch", case.start)):
        np.testing.assert_array_equal(ds["time"].values, pd.DatetimeIndex(list(expected)).values)
        assert ds.attrs["gaps"] == []


# --------------------------------------------------------------------------------------------
# 2. gaps in an archive: reported, never bridged or shifted
# --------------------------------------------------------------------------------------------
@requires_shared_data
def test_gaps_are_reported_and_frames_never_shifted(tmp_path: Path):
    event = sorted(glob.glob(str(SHARED_DATA / "radar/mch/20150515/*.gif")))
    missing = pd.DatetimeIndex(["2015-05-15T17:00", "2015-05-15T17:05"])
    kept = [p for p in event if file_time(p, "AQC%y%j%H%M") not in missing]
    assert len(kept) == len(event) - 2
    mirror(kept, SHARED_DATA / "radar/mch", tmp_path)

    by_date = open_source("mch", "2015-05-15T15:45", "2015-05-15T19:00", root=str(tmp_path))
    scanned = open_source("mch", root=str(tmp_path))  # no dates: the archive is scanned
    for ds in (by_date, scanned):
        assert ds.attrs["gaps"] == ["2015-05-15T17:00:00/2015-05-15T17:05:00"]
        assert ds.attrs["n_missing"] == 2
        assert ds.sizes["time"] == 38
        times = pd.DatetimeIndex(ds["time"].values)
        assert not times.isin(missing).any()
        assert times[0] == pd.Timestamp("2015-05-15T15:45")
        assert times[-1] == pd.Timestamp("2015-05-15T19:00")
        # The frame after the gap is the 17:10 file, not shifted into the 17:00 slot.
        after = [p for p in kept if file_time(p, "AQC%y%j%H%M") == pd.Timestamp("2015-05-15T17:10")]
        expected, _ = pysteps_rain_rate(
            after[0], "mch_gif", load_source_config("mch")["importer_kwargs"]
        )
        position = times.get_loc(pd.Timestamp("2015-05-15T17:10"))
        assert position == 15  # 15:45 .. 16:55 are 15 frames before it
        np.testing.assert_array_equal(
            ds["precip"].isel(time=position).values, expected.astype(np.float32)
        )


# --------------------------------------------------------------------------------------------
# 3. corrupt files are named
# --------------------------------------------------------------------------------------------
CORRUPT_CASES = {
    "mch": ("mch/20150515/*.gif", 6),
    "bom": ("bom/prcp-cscn/2/2018/06/16/*.nc", 6),
    "opera": ("OPERA/20180824/*.hdf", 4),
}


def corrupt_archive(name: str, tmp_path: Path) -> tuple[Path, list[Path], Path]:
    """Copy a few consecutive files of ``name`` to ``tmp_path`` and truncate the third.

    Returns the new source root, the copies and the truncated file.
    """
    pattern, count = CORRUPT_CASES[name]
    config = load_source_config(name)
    paths = sorted(glob.glob(str(SHARED_DATA / "radar" / pattern)))[:count]
    root = tmp_path / name
    copies = mirror(paths, config["root"], root, copy=True)
    bad = copies[2]
    with open(bad, "r+b") as handle:
        handle.truncate(100)
    return root, copies, bad


@requires_shared_data
@pytest.mark.parametrize("name", list(CORRUPT_CASES))
def test_truncated_file_raises_bad_file_error_naming_it(name: str, tmp_path: Path):
    root, copies, bad = corrupt_archive(name, tmp_path)
    config = load_source_config(name)
    ds = open_source(name, root=str(root))  # lazy: opening does not touch the bad file
    assert ds.sizes["time"] == len(copies)
    with pytest.raises(BadFileError) as failure:
        ds["precip"].isel(time=2).compute()
    assert str(bad) in str(failure.value)
    assert failure.value.path == str(bad)
    with pytest.raises(BadFileError, match="truncated or corrupt"):
        load_source(name, root=str(root)).read(2)

    skipped = open_source(name, root=str(root), on_bad_file="skip")
    frames = skipped["precip"].values
    assert np.isnan(frames[2]).all()
    expected, _ = pysteps_rain_rate(str(copies[3]), config["importer"], config["importer_kwargs"])
    np.testing.assert_array_equal(frames[3], expected.astype(np.float32))


# --------------------------------------------------------------------------------------------
# 5. climate fields: netCDF, zarr and GRIB read alike
# --------------------------------------------------------------------------------------------
ERA5_FILE = "era5_t2m_2019-03_uk.nc"
ERA5_WINDOW = ("2019-03-02T00:00", "2019-03-02T23:00")


@pytest.fixture(scope="module")
def era5_netcdf() -> xr.Dataset:
    """The first days of the ERA5 sample, read by xarray itself."""
    assert CLIMATE_DATA is not None, "needs ../shared/data/era5 (or GEOGEN_CLIMATE_DATA)"
    with xr.open_dataset(CLIMATE_DATA / ERA5_FILE) as ds:
        return ds.sel(time=slice("2019-03-01", "2019-03-03")).load()


@requires_climate_data
def test_era5_source_equals_netcdf(era5_netcdf: xr.Dataset):
    config = load_source_config("era5")
    ds = open_source("era5", *ERA5_WINDOW)
    t2m = ds["t2m"]
    assert t2m.dims == ("time", "y", "x")
    assert t2m.dtype == np.float32
    assert t2m.attrs["units"] == "K"
    assert t2m.attrs["standard_name"] == "air_temperature"
    assert t2m.attrs["long_name"] == "2 metre temperature"
    assert ds.attrs["source"] == "era5" and ds.attrs["timestep"] == float(config["timestep"])
    assert ds.attrs["gaps"] == []
    assert ds.sizes["time"] == 24
    assert isinstance(t2m.data, da.Array) and set(t2m.data.chunks[0]) == {1}
    np.testing.assert_allclose(np.diff(ds["x"].values), 0.25)
    np.testing.assert_allclose(np.diff(ds["y"].values), -0.25)
    assert ds["x"].attrs["units"] == "degrees_east" and ds["y"].attrs["units"] == "degrees_north"
    assert pyproj.CRS.from_wkt(ds["crs"].attrs["crs_wkt"]).to_epsg() == 4326
    assert ds["crs"].attrs["proj4"]
    expected = era5_netcdf["t2m"].sel(time=slice(*ERA5_WINDOW))
    np.testing.assert_array_equal(ds["x"].values, expected["longitude"].values)
    np.testing.assert_array_equal(ds["y"].values, expected["latitude"].values)
    np.testing.assert_array_equal(t2m.values, expected.values)


@requires_climate_data
def test_era5_convert_units_to_celsius(era5_netcdf: xr.Dataset):
    ds = open_source("era5", *ERA5_WINDOW, convert_units="degC")
    assert ds["t2m"].attrs["units"] == "degC"
    expected = era5_netcdf["t2m"].sel(time=slice(*ERA5_WINDOW)).values.astype(np.float64) - 273.15
    np.testing.assert_allclose(ds["t2m"].values, expected, atol=1e-4)


def write_grib(ds: xr.Dataset, path: Path) -> None:
    """Write ``ds`` to GRIB with cfgrib (its GRIB_* attributes describe the messages)."""
    from cfgrib import xarray_to_grib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "GRIB write support is experimental"
        try:
            xarray_to_grib.to_grib(ds, str(path), grib_keys={"centre": "ecmf"})
            return
        except AttributeError as exc:
            # cfgrib's to_grib validates names with a private xarray helper that recent xarray
            # releases removed; the per-variable writer it wraps still works.
            if "_validate" not in str(exc):
                raise
            path.unlink(missing_ok=True)
        with open(path, "wb") as handle:
            for variable in ds.data_vars.values():
                xarray_to_grib.canonical_dataarray_to_grib(
                    variable, handle, grib_keys={"centre": "ecmf"}
                )


@requires_climate_data
@pytest.mark.parametrize("fmt", ["zarr", "grib"])
def test_era5_from_zarr_and_grib_equals_netcdf(fmt: str, era5_netcdf: xr.Dataset, tmp_path: Path):
    path = tmp_path / f"era5_t2m.{fmt}"
    if fmt == "zarr":
        copy = era5_netcdf.copy()
        for variable in copy.variables.values():
            variable.encoding = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata")  # zarr v3 note
            copy.to_zarr(path)
    else:
        write_grib(era5_netcdf, path)  # eccodes is a dependency: failing to write is a failure
    config = {**load_source_config("era5"), "name": f"era5_{fmt}", "root": str(tmp_path)}
    config["files"] = path.name
    ds = open_source(config, *ERA5_WINDOW)
    netcdf = open_source("era5", *ERA5_WINDOW)
    assert ds.attrs["source"] == f"era5_{fmt}"
    assert ds["t2m"].dims == ("time", "y", "x") and ds["t2m"].dtype == np.float32
    assert ds["t2m"].attrs["units"] == "K"
    np.testing.assert_array_equal(ds["time"].values, netcdf["time"].values)
    np.testing.assert_allclose(ds["x"].values, netcdf["x"].values)
    np.testing.assert_allclose(ds["y"].values, netcdf["y"].values)
    np.testing.assert_array_equal(ds["t2m"].values, netcdf["t2m"].values)
