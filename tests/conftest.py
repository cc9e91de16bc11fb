"""Shared fixtures: prepare configs and small crop stores built from synthetic sources."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from geogen.config import find_climate_data, find_radar_data

SHARED_DATA = find_radar_data()
CLIMATE_DATA = find_climate_data()


def deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``updates`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def synthetic_source(**overrides: Any) -> dict[str, Any]:
    """A small ``kind: synthetic`` source config."""
    base = {
        "name": "synthetic",
        "kind": "synthetic",
        "n_times": 30,
        "shape": [96, 96],
        "seed": 0,
        "start": "2020-01-01T00:00",
        "timestep": 5.0,
        "field": {"wet_fraction": 0.4},
    }
    return deep_update(base, overrides)


def prepare_config(out: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """A complete, small geogen-prepare config (nowcast, synthetic source, inline runner)."""
    base = {
        "source": synthetic_source(),
        "task": {"name": "nowcast", "factor": None},
        "out": os.fspath(out),
        "seed": 42,
        "crop": {"size": 32, "stride": 32},
        "sequence": {"context": 2, "lead": 3, "length": None, "stride": 1},
        "reject": {"max_nan_fraction": 0.05},
        "sampling": {"method": "uniform", "probability": 1.0, "rain_threshold": 0.1},
        # 30 frames from 00:00 to 02:25: train before 01:00, val 01:00-01:40, test 01:50-02:25.
        "split": {
            "method": "ranges",
            "guard": "0h",
            "ranges": {
                "val": [["2020-01-01T01:00", "2020-01-01T01:40"]],
                "test": [["2020-01-01T01:50", "2020-01-01T02:25"]],
            },
        },
        "parts": {"samples": 16, "windows": 4, "frames": 8},
        "dask": {"address": "inline"},
        "progress": False,
    }
    return deep_update(base, overrides)


def downscale_overrides(factor: int = 4, size: int = 32, length: int = 4) -> dict[str, Any]:
    """Overrides turning :func:`prepare_config` into a downscaling config."""
    return {
        "task": {"name": "downscale", "factor": factor},
        "crop": {"size": size, "stride": size},
        "sequence": {"context": None, "lead": None, "length": length, "stride": 1},
        "reject": {"max_nan_fraction": 0.0},
    }


@pytest.fixture
def build_store(tmp_path: Path) -> Callable[..., Path]:
    """Build a crop store from a synthetic source: ``build_store(name="s", **overrides)``."""
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    def build(name: str = "crops", **overrides: Any) -> Path:
        cfg = validate_prepare_config(prepare_config(tmp_path / f"{name}.zarr", **overrides))
        return prepare(cfg).path

    return build


REQUIRE_DATA_ENV = "GEOGEN_REQUIRE_DATA"
DATA_HINTS = {
    "radar": "needs ../shared/data/pysteps-data (or GEOGEN_DATA)",
    "climate": "needs ../shared/data/era5 (or GEOGEN_CLIMATE_DATA)",
}


def missing_data_outcome(
    kind: str, found: Path | None, env: Mapping[str, str] = os.environ
) -> tuple[str, str]:
    """What a test that reads ``kind`` data does: ``("run" | "skip" | "fail", reason)``.

    A missing data folder skips the test, unless ``GEOGEN_REQUIRE_DATA=1`` (set by CI in
    ``.ci/run``), where it fails it: CI cannot pass by silently skipping the real-data tests.
    """
    if found is not None:
        return "run", ""
    reason = DATA_HINTS[kind]
    if env.get(REQUIRE_DATA_ENV, "").strip() not in ("", "0"):
        return "fail", f"{reason}, and {REQUIRE_DATA_ENV}={env[REQUIRE_DATA_ENV]} requires it"
    return "skip", reason


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, with ``GEOGEN_REQUIRE_DATA=1``, fail) tests whose data folder is missing."""
    for marker in item.iter_markers(name="requires_data"):
        kind = marker.args[0]
        outcome, reason = missing_data_outcome(
            kind, SHARED_DATA if kind == "radar" else CLIMATE_DATA
        )
        if outcome == "fail":
            pytest.fail(reason, pytrace=False)
        if outcome == "skip":
            pytest.skip(reason)


requires_shared_data = pytest.mark.requires_data("radar")
requires_climate_data = pytest.mark.requires_data("climate")
