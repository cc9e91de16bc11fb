"""The splits of the radar_5min stores (scripts/prepare_stores.sh) on the real sample data.

Reads stores already built by ``bash scripts/prepare_stores.sh DIR`` at ``$GEOGEN_STORES``
(default ``outputs/stores``); skipped when they are not there.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geogen.io import open_crop_store, split_indices, store_info

STORES = Path(os.environ.get("GEOGEN_STORES", "outputs/stores"))
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all((STORES / f"{s}.zarr").is_dir() for s in ("mch", "fmi", "rmi")),
        reason=f"no radar_5min stores in {STORES} (bash scripts/prepare_stores.sh {STORES})",
    ),
]


def days(store: str, split: str) -> set[str]:
    group = open_crop_store(STORES / f"{store}.zarr")
    t0 = pd.to_datetime(np.asarray(group["t0"][:])[split_indices(group, split)])
    return {f"{t:%Y-%m-%d}" for t in t0}


def test_validation_is_the_rmi_event_and_test_the_swiss_one():
    counts = {s: store_info(str(STORES / f"{s}.zarr")).split_counts for s in ("mch", "fmi", "rmi")}
    assert counts["rmi"] == {"train": 0, "val": 21, "test": 0}
    assert counts["mch"]["val"] == 0 and counts["fmi"]["val"] == 0 and counts["fmi"]["test"] == 0
    assert days("rmi", "val") == {"2021-07-04"}
    assert days("mch", "test") == {"2016-07-11"}
    assert days("mch", "train") == {"2015-05-15"} and days("fmi", "train") == {"2016-09-28"}
    # the 1 km grids that spectral_bands turns into km
    for store in ("mch", "fmi", "rmi"):
        grid = store_info(str(STORES / f"{store}.zarr")).attrs["grid"]
        assert grid["units"] == "m" and abs(float(grid["dx"])) == pytest.approx(1000.0, rel=1e-3)
