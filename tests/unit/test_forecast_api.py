"""geogen.forecast on what geogen.open_source returns, with a margin, written as it is."""

import json

import numpy as np
import pytest
import xarray as xr
from conftest import synthetic_source

import geogen
from geogen.forecasting import ForecastError, open_forecast, write_forecast
from geogen.io import open_source

SOURCE = synthetic_source(n_times=12)


@pytest.fixture
def dataset() -> xr.Dataset:
    return open_source(SOURCE, "2020-01-01T00:00", "2020-01-01T00:15")


def test_forecast_takes_the_dataset_of_open_source(dataset):
    from_dataset = geogen.forecast("persistence", dataset, members=2, leads=3)
    from_array = geogen.forecast("persistence", dataset["precip"].load(), members=2, leads=3)
    xr.testing.assert_identical(from_dataset, from_array)
    np.testing.assert_array_equal(from_dataset.values[0, 0], dataset["precip"].values[-1])
    with pytest.raises(ForecastError, match="variables .*pass the rain-rate one"):
        geogen.forecast("persistence", dataset.rename(precip="a").assign(b=dataset["precip"]))


def test_margin_forecasts_the_whole_context_and_returns_the_region(dataset):
    context = dataset["precip"].load()
    full = geogen.forecast("pysteps_extrapolation", context, members=1, leads=3)
    inner = geogen.forecast("pysteps_extrapolation", context, members=1, leads=3, margin=8)
    assert inner.shape == (1, 3, context.sizes["y"] - 16, context.sizes["x"] - 16)
    xr.testing.assert_identical(
        inner.drop_attrs(), full.isel(y=slice(8, -8), x=slice(8, -8)).drop_attrs()
    )
    assert inner.attrs["margin"] == 8
    with pytest.raises(ForecastError, match="margin=48"):
        geogen.forecast("persistence", context, margin=48)


def test_forecast_writes_with_to_netcdf_as_it_is(dataset, tmp_path):
    fc = geogen.forecast("persistence", dataset, members=2, leads=2)
    assert json.loads(fc.attrs["settings"])["model"] == "persistence"
    path = tmp_path / "fc.nc"
    fc.to_netcdf(path)
    with xr.open_dataarray(path) as back:
        np.testing.assert_array_equal(back.values, fc.values)
        assert json.loads(back.attrs["settings"]) == json.loads(fc.attrs["settings"])
    written = write_forecast(fc, tmp_path / "cf.nc")  # geogen's CF writer decodes it back
    assert open_forecast(written).attrs["settings"]["model"] == "persistence"
