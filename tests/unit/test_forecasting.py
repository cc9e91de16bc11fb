import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import synthetic_source

import geogen
from geogen.forecasting import (
    Forecaster,
    ForecastError,
    available_forecasters,
    forecast,
    get_forecaster,
    lead_minutes,
    open_forecast,
    read_context,
    read_observations,
    write_forecast,
)
from geogen.io import open_source

SOURCE = synthetic_source(n_times=24, drop_times=["2020-01-01T01:00"])


@pytest.fixture
def context():
    return open_source(SOURCE, "2020-01-01T00:00", "2020-01-01T00:15")["precip"].load()


def test_persistence_repeats_the_last_frame(context):
    fc = geogen.forecast("persistence", context, members=3, leads=4)
    assert fc.dims == ("member", "lead_time", "y", "x") and fc.shape == (3, 4, 96, 96)
    np.testing.assert_array_equal(fc.values, np.broadcast_to(context.values[-1], fc.shape))
    assert lead_minutes(fc).tolist() == [5, 10, 15, 20]
    assert pd.Timestamp(fc["issue_time"].values) == pd.Timestamp("2020-01-01T00:15")
    assert pd.DatetimeIndex(fc["time"].values)[0] == pd.Timestamp("2020-01-01T00:20")
    np.testing.assert_array_equal(fc["x"].values, context["x"].values)
    assert fc.attrs["units"] == "mm/h" and fc.attrs["model"] == "persistence"
    assert "crs" in fc.coords


def test_registry_errors_list_valid_names():
    assert "persistence" in available_forecasters()
    with pytest.raises(
        ForecastError, match="unknown forecast model 'magic'; valid forecast models: .*persistence"
    ):
        get_forecaster("magic")


class Noisy(Forecaster):
    name = "noisy"
    n_context = 2
    stochastic = True
    timestep_minutes = 5.0

    def predict(self, context, *, leads, members, seed, timestep_minutes, progress=False):
        rng = np.random.default_rng(seed)
        noise = rng.random((members, leads, *context.shape[1:]), dtype=np.float32)
        return context[-1] + noise


def test_custom_forecaster_seeded(context):
    a = forecast(Noisy(), context, members=2, leads=2, seed=1)
    b = forecast(Noisy(), context, members=2, leads=2, seed=1)
    c = forecast(Noisy(), context, members=2, leads=2, seed=2)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)


def test_context_errors(context):
    with pytest.raises(ForecastError, match="needs 2 context frames, got 1"):
        forecast(Noisy(), context.isel(time=[-1]), leads=2)
    with pytest.raises(ForecastError, match="not evenly spaced"):
        forecast(Noisy(), context.isel(time=[0, 2, 3]), leads=2)
    with pytest.raises(ForecastError, match="trained on 5-minute steps; the context is every 10"):
        forecast(Noisy(), context.isel(time=[1, 3]), leads=2)
    with pytest.raises(ForecastError, match="dims"):
        forecast("persistence", context.rename(x="lon"), leads=2)
    with pytest.raises(ForecastError, match="must be >= 1"):
        forecast("persistence", context, members=0)
    with pytest.raises(TypeError, match="model_kwargs"):
        forecast(Noisy(), context, foo=1)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_forecast_file_round_trip(tmp_path, context, suffix):
    fc = forecast(Noisy(), context, members=2, leads=3, seed=3)
    path = write_forecast(fc, tmp_path / f"fc{suffix}", provenance={"ckpt_sha256": "abc"})
    assert not list(tmp_path.glob(".*tmp*"))
    back = open_forecast(path)
    np.testing.assert_array_equal(back.values, fc.values)
    assert back.dims == fc.dims
    np.testing.assert_array_equal(
        back["lead_time"].values.astype("timedelta64[m]"),
        fc["lead_time"].values.astype("timedelta64[m]"),
    )
    assert pd.Timestamp(back["issue_time"].values) == pd.Timestamp(fc["issue_time"].values)
    assert back.attrs["provenance"] == {"ckpt_sha256": "abc"}
    assert back.attrs["settings"] == {"model": "noisy"}
    assert isinstance(back, xr.DataArray) and back.name == "precip"
    assert back.attrs["units"] == "mm/h"
    assert "crs_wkt" in back["crs"].attrs
    # CF: an xarray user sees the CF standard names.
    ds = xr.open_zarr(path) if suffix == ".zarr" else xr.open_dataset(path)
    assert ds["lead_time"].attrs["standard_name"] == "forecast_period"
    assert ds["issue_time"].attrs["standard_name"] == "forecast_reference_time"


def test_failed_write_leaves_nothing(tmp_path, context, monkeypatch):
    fc = forecast("persistence", context, leads=2)
    path = tmp_path / "fc.nc"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(OSError, match="disk full"):
        write_forecast(fc, path)
    assert not path.exists()
    with pytest.raises(ForecastError, match="use .nc or .zarr"):
        write_forecast(fc, tmp_path / "fc.txt")


def test_read_context_and_observations_from_archive():
    ctx = read_context(SOURCE, "2020-01-01T00:30", 4, region=[10, 20, 32, 48])
    assert ctx.shape == (4, 32, 48) and ctx.attrs["region"] == [10, 20, 32, 48]
    full = open_source(SOURCE)["precip"]
    np.testing.assert_array_equal(
        ctx.values,
        full.sel(time=slice("2020-01-01T00:15", "2020-01-01T00:30")).values[:, 10:42, 20:68],
    )
    with pytest.raises(ForecastError, match="1 frame\\(s\\) missing .* 2020-01-01 01:00"):
        read_context(SOURCE, "2020-01-01T01:05", 4)
    obs = read_observations(SOURCE, "2020-01-01T00:50", 3)
    assert [str(t)[11:16] for t in obs["time"].values] == ["00:55", "01:05"]
    with pytest.raises(ForecastError, match="does not fit the source grid of 96 x 96"):
        read_context(SOURCE, "2020-01-01T00:30", 4, region=[90, 0, 32, 32])
