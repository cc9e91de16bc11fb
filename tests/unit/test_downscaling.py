import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import synthetic_source
from hydra import compose, initialize_config_dir

import geogen
from geogen.cli import run_downscale
from geogen.config import config_dir
from geogen.downscaling import (
    DownscaleError,
    available_downscalers,
    coarsen,
    downscale,
    get_downscaler,
    open_downscaled,
    read_lowres_file,
    read_sequence,
    refine_coordinate,
    write_downscaled,
)
from geogen.io import open_source

SOURCE = synthetic_source(n_times=12, shape=[64, 96])


@pytest.fixture
def truth():
    return open_source(SOURCE)["precip"].isel(time=slice(0, 4)).load()


def test_refine_coordinate_closed_form():
    np.testing.assert_allclose(
        refine_coordinate([10.0, 14.0], 4), [8.5, 9.5, 10.5, 11.5, 12.5, 13.5, 14.5, 15.5]
    )
    np.testing.assert_allclose(refine_coordinate([58.0, 57.0], 2), [58.25, 57.75, 57.25, 56.75])
    with pytest.raises(DownscaleError, match="not regular"):
        refine_coordinate([0.0, 1.0, 3.0], 2)


def test_coarsen_block_means_and_coordinates(truth):
    low = coarsen(truth, 16)
    assert low.shape == (4, 4, 6)
    np.testing.assert_allclose(
        low.values, truth.values.reshape(4, 4, 16, 6, 16).mean(axis=(2, 4)), rtol=1e-6
    )
    np.testing.assert_allclose(refine_coordinate(low["x"].values, 16), truth["x"].values)
    np.testing.assert_allclose(refine_coordinate(low["y"].values, 16), truth["y"].values)
    with_nan = truth.copy()
    with_nan[0, 0, 0] = np.nan
    assert np.isnan(coarsen(with_nan, 16)[0, 0, 0]) and np.isfinite(coarsen(with_nan, 16)[0, 0, 1])
    with pytest.raises(DownscaleError, match="not divisible by the factor 5"):
        coarsen(truth, 5)


def test_registry():
    assert {"interp", "rainfarm"} <= set(available_downscalers())
    with pytest.raises(DownscaleError, match="unknown downscaling model 'magic'; valid .*rainfarm"):
        get_downscaler("magic")
    with pytest.raises(DownscaleError, match="bilinear or bicubic"):
        get_downscaler("interp", method="lanczos")


def test_bilinear_reproduces_a_ramp_inside_the_grid():
    x = np.arange(8, dtype=np.float32)
    ramp = np.broadcast_to(x, (1, 4, 8)).copy()
    out = get_downscaler("interp").predict(ramp, factor=4, members=2, seed=0)
    assert out.shape == (2, 1, 16, 32)
    fine_x = (np.arange(32) + 0.5) / 4 - 0.5  # fine centres in coarse index units
    inside = (fine_x >= 0) & (fine_x <= 7)
    np.testing.assert_allclose(
        out[0, 0, :, inside].T, np.broadcast_to(fine_x[inside], (16, inside.sum())), atol=1e-5
    )
    np.testing.assert_array_equal(out[0], out[1])


def test_bicubic_stays_in_range_and_nan_blocks_stay_nan(truth):
    low = coarsen(truth, 8).values
    low[0, 1, 1] = np.nan
    out = get_downscaler("interp", method="bicubic").predict(low, factor=8, members=1, seed=0)
    assert np.isnan(out[0, 0, 8:16, 8:16]).all()
    assert np.isfinite(out[0, 0, :8]).all() and np.nanmin(out) >= np.nanmin(low)
    assert np.nanmax(out) <= np.nanmax(low)


def test_rainfarm_preserves_block_means_seeded_and_polite(truth):
    low = coarsen(truth, 16).values
    rf = get_downscaler("rainfarm")
    # The caller's global random state (which pysteps' RainFARM uses) is left untouched.
    np.random.seed(123)  # noqa: NPY002
    before = np.random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    a = rf.predict(low, factor=16, members=3, seed=5)
    assert np.random.random() == before  # noqa: NPY002
    b = rf.predict(low, factor=16, members=3, seed=5)
    c = rf.predict(low, factor=16, members=3, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])
    back = a.reshape(3, 4, 4, 16, 6, 16).mean(axis=(3, 5))
    np.testing.assert_allclose(back, np.broadcast_to(low, back.shape), rtol=1e-4, atol=1e-6)
    assert (a >= 0).all()
    with pytest.raises(DownscaleError, match="negative values"):
        rf.predict(low - 10.0, factor=16, members=1, seed=0)


def test_downscale_api(truth):
    low = coarsen(truth, 16)
    hr = geogen.downscale("rainfarm", low, members=2, factor=16, seed=1)
    assert hr.dims == ("member", "time", "y", "x") and hr.shape == (2, 4, 64, 96)
    np.testing.assert_allclose(hr["x"].values, truth["x"].values)
    np.testing.assert_array_equal(hr["time"].values, truth["time"].values)
    assert (
        hr.attrs["units"] == "mm/h" and hr.attrs["factor"] == 16 and hr.attrs["model"] == "rainfarm"
    )
    assert "crs" in hr.coords
    with pytest.raises(DownscaleError, match="needs a factor"):
        downscale("interp", low)
    with pytest.raises(DownscaleError, match="dims"):
        downscale("interp", low.rename(x="lon"), factor=2)
    temperature = (low * 0 + 280.0).rename("t2m")
    temperature.attrs = {"units": "K", "standard_name": "air_temperature"}
    with pytest.raises(DownscaleError, match="rainfarm downscales precipitation; 't2m'"):
        downscale("rainfarm", temperature, factor=16)
    np.testing.assert_allclose(downscale("interp", temperature, factor=16).values, 280.0)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_output_round_trip(tmp_path, truth, suffix):
    low = coarsen(truth, 16)
    hr = downscale("rainfarm", low, members=2, factor=16)
    path = write_downscaled(hr, tmp_path / f"hr{suffix}", lowres=low, source="synthetic")
    back = open_downscaled(path)
    np.testing.assert_array_equal(back.values, hr.values)
    assert back.attrs["settings"]["model"] == "rainfarm" and back.attrs["source"] == "synthetic"
    again = read_lowres_file(path, "precip_lowres")
    np.testing.assert_allclose(again.values, low.values)
    np.testing.assert_allclose(again["x"].values, low["x"].values)
    with pytest.raises(DownscaleError, match="say which variable"):
        read_lowres_file(path)


def test_read_sequence_requires_every_frame():
    seq = read_sequence(SOURCE, "2020-01-01T00:35", 8, region=[0, 0, 32, 32])
    assert seq.shape == (8, 32, 32)
    assert pd.Timestamp(seq["time"].values[-1]) == pd.Timestamp("2020-01-01T00:35")
    gappy = synthetic_source(n_times=12, shape=[64, 96], drop_times=["2020-01-01T00:20"])
    with pytest.raises(ValueError, match="missing"):
        read_sequence(gappy, "2020-01-01T00:35", 8)


def compose_downscale(*overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="downscale", overrides=list(overrides))


def test_cli_from_archive_and_from_file(tmp_path):
    out = tmp_path / "hr.nc"
    cfg = compose_downscale(
        "source=synthetic",
        "source.n_times=12",
        "source.shape=[64,96]",
        "model=rainfarm",
        "time=2020-01-01T00:35",
        "length=4",
        "coarsen=16",
        f"out={out}",
        "members=2",
        "progress=false",
    )
    run_downscale(cfg)
    hr = open_downscaled(out)
    assert hr.shape == (2, 4, 64, 96) and hr.attrs["coarsened_from"] == 16
    ds = xr.open_dataset(out)
    assert ds["precip_lowres"].shape == (4, 4, 6)
    out2 = tmp_path / "hr2.zarr"
    cfg2 = compose_downscale(
        "model=interp",
        f"input={out}",
        "variable=precip_lowres",
        "factor=16",
        f"out={out2}",
        "members=1",
        "baseline.interp.method=bicubic",
    )
    run_downscale(cfg2)
    assert open_downscaled(out2).attrs["settings"] == {"model": "interp", "method": "bicubic"}
