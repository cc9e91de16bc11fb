"""NOAA MRMS PrecipRate (GRIB2, 2 min) through ``conf/source/mrms.yaml`` (needs pygrib).

The source must give pysteps' own reading of each file on the 1 km grid (``window_size: 1``)
in mm/h, on the 0.01 degree lat/lon cell centres, every 2 minutes.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, requires_shared_data

from geogen.config import load_source_config
from geogen.io import open_source

pytestmark = [pytest.mark.integration, requires_shared_data]
import pygrib  # noqa: E402, F401  (a dependency of geogen: its absence must fail, not skip)

with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints where its config file is
    import pysteps.io


@pytest.fixture(scope="module")
def mrms():
    root = SHARED_DATA / "mrms"
    # the data folder itself is checked by requires_shared_data; with it, MRMS must be there
    assert root.is_dir(), f"no MRMS files under {root} (../shared/data/README.md lists them)"
    return open_source("mrms", "2019-06-10T00:00", "2019-06-10T00:04", root=str(root))


def test_mrms_config_reads_the_1km_grid():
    assert load_source_config("mrms")["importer_kwargs"] == {"window_size": 1}


def test_mrms_frames_equal_pysteps_on_the_1km_grid(mrms):
    ds = mrms
    assert ds.sizes == {"time": 3, "y": 3500, "x": 7000}
    times = pd.DatetimeIndex(ds.time.values)
    assert list(times) == list(pd.date_range("2019-06-10T00:00", periods=3, freq="2min"))
    assert float(ds.attrs["timestep"]) == 2.0
    assert ds.precip.attrs["units"] == "mm/h"
    # cell centres of the 0.01 degree grid, north to south, from 55 N and 130 W
    np.testing.assert_allclose(np.diff(ds.x.values), 0.01, atol=1e-6)
    np.testing.assert_allclose(np.diff(ds.y.values), -0.01, atol=1e-6)
    assert ds.y.values[0] == pytest.approx(54.995, abs=0.006)
    assert ds.x.values[0] == pytest.approx(-129.995, abs=0.006)
    frame = ds.precip.isel(time=1).values
    path = SHARED_DATA / "mrms/2019/06/10/PrecipRate_00.00_20190610-000200.grib2"
    importer = pysteps.io.get_method("mrms_grib", "importer")
    precip, _, meta = importer(str(path), window_size=1)
    expected, _ = pysteps.utils.to_rainrate(precip, meta)
    np.testing.assert_array_equal(frame, expected.astype(np.float32))
    rainy = frame[np.isfinite(frame)]
    assert 0.01 < (rainy > 0.1).mean() < 0.5 and 20 < rainy.max() < 500  # mm/h, not dBZ
    assert np.isnan(frame).mean() > 0.1  # outside the radar coverage
