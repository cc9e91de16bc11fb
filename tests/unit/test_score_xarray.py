"""geogen.score: DataArrays in, a weatherbench2-style Dataset out, on the scorer's numbers."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import geogen
from geogen.verification import VerificationError, crps, fss, scores_to_dataset
from geogen.verification.scorer import Scorer

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture
def pair():
    """A 5-member, 3-lead forecast issued at 00:10 and 6 observed frames from 00:00 (mm/h)."""
    rng = np.random.default_rng(4)
    values = rng.gamma(0.7, 2.0, (5, 3, 24, 32)).astype(np.float32)
    values[values < 0.5] = 0.0
    lead = pd.to_timedelta([5, 10, 15], unit="min")
    issue = pd.Timestamp("2020-01-01T00:10")
    y, x = np.arange(24)[::-1] * 1000.0, np.arange(32) * 1000.0
    forecast = xr.DataArray(
        values,
        dims=("member", "lead_time", "y", "x"),
        coords={"member": np.arange(5), "lead_time": lead, "y": y, "x": x, "issue_time": issue},
        name="precip",
        attrs={"model": "noisy"},
    )
    times = pd.date_range("2020-01-01T00:00", periods=6, freq="5min")
    observed = rng.gamma(0.7, 2.0, (6, 24, 32)).astype(np.float32)
    observed[observed < 0.5] = 0.0
    observation = xr.DataArray(
        observed, dims=("time", "y", "x"), coords={"time": times, "y": y, "x": x}
    )
    return forecast, observation


def test_scores_equal_the_metric_functions(pair):
    forecast, observation = pair
    ds = geogen.score(
        forecast,
        observation,
        metrics=["crps", "fss", "categorical"],
        thresholds=[1.0, 4.0],
        scales=[1, 4],
    )
    obs = observation.sel(time=slice("2020-01-01T00:15", "2020-01-01T00:25")).values
    assert ds.attrs["model"] == "noisy"
    assert ds["crps"].dims == ("lead_time",)
    assert ds["fss"].dims == ("lead_time", "threshold", "scale")
    assert ds["csi"].dims == ("lead_time", "threshold")
    assert ds["crps_max_pool"].dims == ("lead_time", "scale")
    np.testing.assert_array_equal(ds["lead_time"].values, forecast["lead_time"].values)
    np.testing.assert_array_equal(ds["threshold"].values, [1.0, 4.0])
    for k in range(3):
        f = forecast.values[:, k]
        np.testing.assert_allclose(ds["crps"].values[k], crps(f, obs[k]), rtol=1e-6)
        for threshold in (1.0, 4.0):
            hits = ((f > threshold) & (obs[k] > threshold)).sum()
            misses = ((f <= threshold) & (obs[k] > threshold)).sum()
            false = ((f > threshold) & (obs[k] <= threshold)).sum()
            csi = ds["csi"].sel(threshold=threshold).values[k]
            np.testing.assert_allclose(csi, hits / (hits + misses + false), rtol=1e-6)
            # FSS of the member mean of the exceedance fractions (one member: pysteps' fss)
            one = geogen.score(
                forecast.isel(member=[0]),
                observation,
                metrics=["fss"],
                thresholds=[threshold],
                scales=[4],
            )
            np.testing.assert_allclose(
                one["fss"].values[k, 0, 0], fss(f[0], obs[k], threshold, 4), rtol=1e-6
            )


def test_the_dataset_is_the_scorer_table(pair):
    forecast, observation = pair
    ds = geogen.score(
        forecast, observation, metrics=["crps", "fss"], thresholds=[2.0], scales=[1, 8]
    )
    obs = observation.values[3:6]
    scorer = Scorer(
        {
            "metrics": ["crps", "fss"],
            "thresholds": [2.0],
            "fss_scales": [1, 8],
            "crps": {"windows": [8]},
            "bootstrap": {"n": 0},
        }
    )
    scorer.add_case("c", {"noisy": forecast.values}, obs, [5, 10, 15])
    table = scorer.result().scores
    for _, row in table.iterrows():
        name = (
            row["metric"] if row["pooling"] == "none" else f"{row['metric']}_{row['pooling']}_pool"
        )
        var = ds[name]
        index = {"lead_time": pd.Timedelta(minutes=int(row["lead_time"]))}
        if "threshold" in var.dims:
            index["threshold"] = row["threshold"]
        if "scale" in var.dims:
            index["scale"] = row["scale"]
        np.testing.assert_allclose(float(var.sel(index)), row["value"], rtol=1e-12)
    # the result's table in the same layout, with a model dimension and intervals
    by_model = scores_to_dataset(table)
    assert by_model["crps"].dims == ("model", "lead_time") and "crps_ci_low" in by_model
    np.testing.assert_allclose(by_model["crps"].sel(model="noisy").values, ds["crps"].values)


def test_observation_by_lead_time_or_by_time(pair):
    forecast, observation = pair
    by_time = geogen.score(forecast, observation, metrics=["crps"])
    frames = observation.isel(time=[3, 4, 5]).rename(time="lead_time")
    by_lead = geogen.score(
        forecast, frames.assign_coords(lead_time=forecast["lead_time"].values), metrics=["crps"]
    )
    xr.testing.assert_identical(by_time, by_lead)
    deterministic = geogen.score(forecast.isel(member=0), observation, metrics=["crps"])
    mae = np.abs(forecast.values[0] - observation.values[3:6]).mean(axis=(1, 2))
    np.testing.assert_allclose(deterministic["crps"].values, mae, rtol=1e-6)


def test_errors_name_the_problem(pair):
    forecast, observation = pair
    with pytest.raises(VerificationError, match="no frame at the valid times"):
        geogen.score(forecast, observation.isel(time=slice(0, 4)))
    with pytest.raises(VerificationError, match="forecast must have dims"):
        geogen.score(forecast.isel(x=0), observation)
    with pytest.raises(VerificationError, match="x coordinates differ"):
        geogen.score(forecast, observation.assign_coords(x=observation["x"] + 500.0))
    with pytest.raises(VerificationError, match="lead times \\[5, 10\\]"):
        geogen.score(
            forecast,
            observation.isel(time=[3, 4])
            .rename(time="lead_time")
            .assign_coords(lead_time=forecast["lead_time"].values[:2]),
        )
    with pytest.raises(VerificationError, match="unknown metrics"):
        geogen.score(forecast, observation, metrics=["skill"])


@pytest.mark.slow
def test_the_readme_example_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (example,) = [b for b in blocks if "geogen.score(" in b]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    scores = namespace["scores"]
    assert isinstance(scores, xr.Dataset) and scores.sizes["lead_time"] == 6
    assert np.isfinite(scores["crps"].values).all() and (scores["crps"].values > 0).all()
    fss_values = scores["fss"].sel(threshold=1, scale=8).values
    assert ((fss_values > 0) & (fss_values <= 1)).all()
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
