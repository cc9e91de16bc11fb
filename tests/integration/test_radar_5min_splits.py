"""The splits of the radar_5min stores (scripts/prepare_stores.sh) on the real sample data.

Reads the stores at ``$GEOGEN_STORES`` when they are built there; otherwise builds them with
``bash scripts/prepare_stores.sh`` into a temporary folder (about half a minute).
"""

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import requires_shared_data

from geogen.io import open_crop_store, split_indices, store_info

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, requires_shared_data]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    given = os.environ.get("GEOGEN_STORES")
    if given and all((Path(given) / f"{s}.zarr").is_dir() for s in ("mch", "fmi", "rmi")):
        return Path(given)
    out = tmp_path_factory.mktemp("radar_5min")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "prepare_stores.sh"), str(out)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return out


def days(stores: Path, store: str, split: str) -> set[str]:
    group = open_crop_store(stores / f"{store}.zarr")
    t0 = pd.to_datetime(np.asarray(group["t0"][:])[split_indices(group, split)])
    return {f"{t:%Y-%m-%d}" for t in t0}


def test_validation_is_the_rmi_event_and_test_the_swiss_one(stores):
    counts = {s: store_info(str(stores / f"{s}.zarr")).split_counts for s in ("mch", "fmi", "rmi")}
    assert counts["rmi"] == {"train": 0, "val": 21, "test": 0}
    assert counts["mch"]["val"] == 0 and counts["fmi"]["val"] == 0 and counts["fmi"]["test"] == 0
    assert days(stores, "rmi", "val") == {"2021-07-04"}
    assert days(stores, "mch", "test") == {"2016-07-11"}
    assert days(stores, "mch", "train") == {"2015-05-15"}
    assert days(stores, "fmi", "train") == {"2016-09-28"}
    # the 1 km grids that spectral_bands turns into km
    for store in ("mch", "fmi", "rmi"):
        grid = store_info(str(stores / f"{store}.zarr")).attrs["grid"]
        assert grid["units"] == "m" and abs(float(grid["dx"])) == pytest.approx(1000.0, rel=1e-3)
