"""Reference forecasts and scoring on the MeteoSwiss sample event (../shared/data)."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import requires_shared_data

import geogen
from geogen.forecasting import read_context, read_frames, write_forecast
from geogen.verification.scoring import ModelSpec, score_files

pytestmark = [pytest.mark.integration, requires_shared_data]

ISSUE = "2016-07-11T22:00"
REGION = [200, 360, 128, 128]
SETTINGS = {"metrics": ["crps", "continuous", "categorical"], "bootstrap": {"n": 0}}


@pytest.fixture(scope="module")
def persistence_file(tmp_path_factory):
    ctx = read_context("mch", ISSUE, 1, region=REGION)
    fc = geogen.forecast("persistence", ctx, members=1, leads=6)
    return write_forecast(fc, tmp_path_factory.mktemp("fc") / "persistence.nc"), fc


def test_persistence_scores_against_the_archive(persistence_file):
    path, fc = persistence_file
    result = score_files([path], "mch", settings=SETTINGS)
    obs = read_frames("mch", "2016-07-11T22:05", "2016-07-11T22:30", region=REGION).values
    expected = np.nanmean(np.abs(fc.values[0] - obs), axis=(1, 2))
    scores = result.scores
    mae = scores[(scores["metric"] == "mae")].sort_values("lead_time")["value"].to_numpy()
    np.testing.assert_allclose(mae, expected, rtol=1e-5)
    crps_pixel = scores[(scores["metric"] == "crps") & (scores["pooling"] == "none")]
    np.testing.assert_allclose(crps_pixel.sort_values("lead_time")["value"], expected, rtol=1e-5)


def test_extrapolation_beats_persistence_on_the_same_case(persistence_file):
    path, _ = persistence_file
    result = score_files(
        [path], "mch", settings=SETTINGS, models=[ModelSpec("pysteps_extrapolation")], margin=32
    )
    means = result.lead_means
    crps = means[(means["metric"] == "crps") & (means["pooling"] == "none")].set_index("model")
    assert crps.loc["pysteps_extrapolation", "value"] < crps.loc["persistence", "value"]


def test_geogen_score_cli(tmp_path, persistence_file):
    path, _ = persistence_file
    out = tmp_path / "scores"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from geogen.cli import score; score()",
            f"forecasts=[{path}]",
            f"out={out}",
            "scoring.metrics=[crps,categorical]",
            "scoring.bootstrap.n=0",
            "plots.enabled=false",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'logs'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    table = pd.read_csv(out / "scores.csv")
    assert {"model", "lead_time", "metric", "threshold", "scale", "pooling", "value"} <= set(table)
    assert (out / "report.md").is_file()
    bad = subprocess.run(
        [sys.executable, "-c", "from geogen.cli import score; score()", f"out={out}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "nothing to score" in bad.stderr + bad.stdout
