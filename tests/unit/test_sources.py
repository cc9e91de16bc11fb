import dask.array as da
import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_source

from geogen.io import SourceError, available_source_kinds, load_source, open_source
from geogen.io.gridded import unit_conversion
from geogen.io.sources import to_timestamp


def test_registry_lists_kinds_and_rejects_unknown():
    assert {"pysteps", "xarray", "synthetic"} <= set(available_source_kinds())
    with pytest.raises(
        SourceError, match="unknown source kind 'ftp'; valid source kinds: .*pysteps"
    ):
        load_source({"name": "x", "kind": "ftp"})
    with pytest.raises(SourceError, match="has no 'kind'"):
        load_source({"name": "x"})


def test_unknown_shipped_source_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown source 'nope'; shipped sources: .*mch"):
        load_source("nope")


def test_config_typos_are_reported_with_field():
    cfg = synthetic_source(n_tims=3)
    with pytest.raises(SourceError, match="n_tims"):
        load_source(cfg)
    with pytest.raises(SourceError, match="importer"):
        load_source(
            {
                "name": "r",
                "kind": "pysteps",
                "root": "/x",
                "fn_pattern": "%Y",
                "fn_ext": "h5",
                "timestep": 5,
            }
        )


def test_lazy_dataset_one_task_per_frame():
    ds = open_source(synthetic_source(n_times=12))
    assert isinstance(ds["precip"].data, da.Array)
    assert ds["precip"].data.chunks[0] == (1,) * 12
    assert ds["precip"].dims == ("time", "y", "x") and ds["precip"].dtype == np.float32
    assert ds.attrs["source"] == "synthetic" and ds.attrs["timestep"] == 5.0
    assert ds["precip"].attrs["units"] == "mm/h" and ds["precip"].attrs["grid_mapping"] == "crs"
    assert "crs_wkt" in ds["crs"].attrs and "proj4" in ds["crs"].attrs
    source = load_source(synthetic_source(n_times=12))
    np.testing.assert_array_equal(ds["precip"].isel(time=7).values, source.read(7))


def test_bounds_and_gaps():
    cfg = synthetic_source(n_times=24, drop_times=["2020-01-01T00:30"])
    ds = open_source(cfg, start="2020-01-01T00:10", end="20200101T0100")
    times = pd.DatetimeIndex(ds["time"].values)
    assert times[0] == pd.Timestamp("2020-01-01 00:10") and times[-1] == pd.Timestamp(
        "2020-01-01 01:00"
    )
    assert pd.Timestamp("2020-01-01 00:30") not in times
    assert ds.attrs["gaps"] == ["2020-01-01T00:30:00/2020-01-01T00:30:00"]
    with pytest.raises(SourceError, match="end .* is before start"):
        open_source(cfg, start="2020-01-01T01:00", end="2020-01-01T00:00")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2016-07-11T22:00", "2016-07-11 22:00"),
        ("201607112200", "2016-07-11 22:00"),
        ("20160711", "2016-07-11 00:00"),
        ("2016-07-11T22:00+02:00", "2016-07-11 20:00"),
    ],
)
def test_time_parsing(text, expected):
    assert to_timestamp(text) == pd.Timestamp(expected)


def test_time_parsing_error():
    with pytest.raises(SourceError, match="cannot read 'tomorrow'"):
        to_timestamp("tomorrow")


def test_unit_conversion_affine():
    assert unit_conversion("K", "degC") == pytest.approx((1.0, -273.15))
    assert unit_conversion("kg m-2 s-1", "mm/h") == pytest.approx((3600.0, 0.0))
    with pytest.raises(SourceError, match="cannot convert units 'K' to 'mm/h'"):
        unit_conversion("K", "mm/h")
