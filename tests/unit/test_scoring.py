"""Scoring over cases: files against the archive, crop stores, NaN policy, weights, report."""

import logging

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_source

import geogen
from geogen.forecasting import read_context, write_forecast
from geogen.verification import VerificationError, crps
from geogen.verification.app import validate_config
from geogen.verification.report import write_report
from geogen.verification.scoring import ModelSpec, Scorer, score_files, score_store

SOURCE = synthetic_source(n_times=24)
FAST = {
    "metrics": ["categorical", "crps", "rank_histogram", "continuous", "spread_skill"],
    "bootstrap": {"n": 200},
}


def value(scores, metric, lead, model, threshold=None, scale=1, pooling="none"):
    sel = scores[
        (scores["metric"] == metric)
        & (scores["lead_time"] == lead)
        & (scores["model"] == model)
        & (scores["scale"] == scale)
        & (scores["pooling"] == pooling)
    ]
    if threshold is not None:
        sel = sel[sel["threshold"] == threshold]
    assert len(sel) == 1, sel
    return sel.iloc[0]


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def test_scorer_values_keys_and_weights(rng):
    obs = rng.gamma(0.8, 2.0, (2, 2, 24, 24)).astype(np.float32)
    fct = rng.gamma(0.8, 2.0, (2, 4, 2, 24, 24)).astype(np.float32)
    scorer = Scorer(FAST)
    scorer.add_case("a", {"m": fct[0]}, obs[0], [5, 10], weight=2.0)
    scorer.add_case("b", {"m": fct[1]}, obs[1], [5, 10], weight=1.0)
    result = scorer.result()
    scores = result.scores
    key = ["model", "lead_time", "metric", "threshold", "scale", "pooling"]
    assert not scores.duplicated(key).any()
    assert list(scores.columns[:6]) == key and "value" in scores
    # weighted CRPS: case a counts twice
    both_f = np.concatenate([fct[0][:, 0], fct[0][:, 0], fct[1][:, 0]], axis=-1)
    both_o = np.concatenate([obs[0][0], obs[0][0], obs[1][0]], axis=-1)
    row = value(scores, "crps", 5, "m")
    np.testing.assert_allclose(row["value"], crps(both_f, both_o), rtol=1e-6)
    assert row["n_cases"] == 2 and row["ci_low"] <= row["value"] <= row["ci_high"]
    means = result.lead_means
    assert set(means["lead_time"]) == {"mean"}


def test_scorer_forecast_nan_policy(rng, caplog):
    obs = rng.gamma(0.8, 2.0, (1, 20, 20)).astype(np.float32)
    good = rng.gamma(0.8, 2.0, (3, 1, 20, 20)).astype(np.float32)
    holes = good.copy()
    holes[1, 0, :5, :] = np.nan  # one member is NaN on 100 observed pixels
    obs[0, -1, -1] = np.nan
    scorer = Scorer(FAST)
    with caplog.at_level(logging.WARNING):
        scorer.add_case("c", {"good": good, "holes": holes}, obs, [5])
    assert "holes forecast is NaN at 100 pixels" in caplog.text
    scores = scorer.result().scores
    for model in ("good", "holes"):
        assert value(scores, "scored_pixels", 5, model)["value"] == 400 - 100 - 1
        assert value(scores, "excluded_pixels", 5, model)["value"] == 100
    np.testing.assert_allclose(
        value(scores, "crps", 5, "good")["value"], value(scores, "crps", 5, "holes")["value"]
    )
    strict = Scorer({**FAST, "forecast_nan": "raise"})
    with pytest.raises(VerificationError, match="holes forecast is NaN at 100 pixels .*lead 5"):
        strict.add_case("c", {"holes": holes}, obs, [5])


def test_deterministic_members_are_scored_as_one(rng):
    obs = rng.gamma(0.8, 2.0, (1, 16, 16)).astype(np.float32)
    one = rng.gamma(0.8, 2.0, (1, 1, 16, 16)).astype(np.float32)
    scorer = Scorer(FAST)
    scorer.add_case("d", {"det": np.repeat(one, 5, axis=0)}, obs, [5])
    result = scorer.result()
    assert result.metadata["members"] == {"det": 1}
    np.testing.assert_allclose(
        value(result.scores, "crps", 5, "det")["value"],
        value(result.scores, "mae", 5, "det")["value"],
        rtol=1e-6,
    )


def test_scorer_shape_errors(rng):
    scorer = Scorer(FAST)
    with pytest.raises(VerificationError, match="forecast of m has shape"):
        scorer.add_case("x", {"m": np.zeros((2, 1, 8, 9))}, np.zeros((1, 8, 8)), [5])
    with pytest.raises(VerificationError, match="unknown metrics \\['skill'\\]"):
        Scorer({"metrics": ["skill"]})
    with pytest.raises(VerificationError, match="scoring.bootstrap.confidence"):
        Scorer({"bootstrap": {"confidence": 2}})


@pytest.fixture
def forecast_files(tmp_path):
    """Persistence and a noisy 3-member forecast over a window of the synthetic archive."""
    ctx = read_context(SOURCE, "2020-01-01T00:30", 1, region=[10, 20, 32, 48])
    pers = geogen.forecast("persistence", ctx, members=1, leads=4)
    noisy = pers.copy(
        data=np.abs(pers.values + np.random.default_rng(0).normal(0, 0.3, (1, 4, 32, 48)))
    )
    noisy = noisy.isel(member=[0, 0, 0]).assign_coords(member=[0, 1, 2])
    noisy.values[1:] *= 1.2
    noisy.attrs["model"] = "noisy"
    return (
        write_forecast(pers, tmp_path / "persistence.nc"),
        write_forecast(noisy, tmp_path / "noisy.nc"),
        pers,
    )


def test_score_files_against_the_archive(forecast_files):
    p_path, n_path, pers = forecast_files
    result = score_files([p_path, n_path], SOURCE, settings=FAST)
    assert result.metadata["models"] == ["persistence", "noisy"]
    assert result.metadata["cases"] == ["2020-01-01T00:30 region [10, 20, 32, 48]"]
    full = geogen.open_source(SOURCE)["precip"]
    obs = full.sel(time="2020-01-01T00:45").values[10:42, 20:68]
    expected = np.abs(pers.values[0, 2] - obs).mean()
    np.testing.assert_allclose(
        value(result.scores, "mae", 15, "persistence")["value"], expected, rtol=1e-5
    )
    assert sorted(set(result.scores["lead_time"])) == [5, 10, 15, 20]


def test_score_files_runs_models_on_the_same_case(forecast_files):
    p_path, _, _ = forecast_files
    run = ModelSpec("persistence", label="persistence_run")
    result = score_files([p_path], SOURCE, settings=FAST, models=[run])
    assert result.metadata["models"] == ["persistence", "persistence_run"]
    assert result.metadata["reference_models"] == ["persistence_run"]
    # The model run on the file's case from the same context is the file's forecast again.
    scores = result.scores.sort_values(["lead_time", "metric", "threshold", "scale", "pooling"])
    from_file = scores[scores["model"] == "persistence"]["value"].to_numpy()
    from_run = scores[scores["model"] == "persistence_run"]["value"].to_numpy()
    assert len(from_file) == len(from_run) > 0
    np.testing.assert_allclose(from_run, from_file, rtol=1e-6)
    # A model labelled like a file would silently replace the file's forecast: an error.
    with pytest.raises(VerificationError, match="name both a forecast file and a model"):
        score_files([p_path], SOURCE, settings=FAST, models=[ModelSpec("persistence")])


def test_score_files_grid_and_time_mismatch(tmp_path, forecast_files):
    _, _, pers = forecast_files
    shifted = pers.assign_coords(x=pers["x"] + 0.5 * float(pers["x"][1] - pers["x"][0]))
    path = write_forecast(shifted, tmp_path / "shifted.nc")
    with pytest.raises(
        VerificationError, match="x coordinates .* do not fall on the synthetic grid"
    ):
        score_files([path], SOURCE, settings=FAST)
    odd = pers.assign_coords(
        lead_time=pers["lead_time"] + np.timedelta64(2, "m"),
        time=pers["time"] + np.timedelta64(2, "m"),
    )
    path = write_forecast(odd, tmp_path / "odd.nc")
    with pytest.raises(VerificationError, match="not a multiple of the archive's 5-minute step"):
        score_files([path], SOURCE, settings=FAST)
    no_xy = pers.drop_vars(["x", "y"])
    path = write_forecast(no_xy, tmp_path / "noxy.nc")
    with pytest.raises(VerificationError, match="has no x coordinate"):
        score_files([path], SOURCE, settings=FAST)
    with pytest.raises(VerificationError, match="no forecast file matches"):
        score_files([str(tmp_path / "none*.nc")], SOURCE, settings=FAST)


def test_score_store_weights_and_models(build_store):
    store = build_store(sequence={"context": 3, "lead": 3, "length": None, "stride": 1})
    specs = [ModelSpec("persistence"), ModelSpec("pysteps_extrapolation")]
    result = score_store(store, specs, settings=FAST, split="test", max_cases=4)
    assert result.metadata["weights"] == "1 / sample_prob"
    assert len(result.metadata["cases"]) == 4
    scores = result.scores
    assert set(scores["model"]) == {"persistence", "pysteps_extrapolation"}
    assert set(scores["lead_time"]) == {5, 10, 15}
    assert value(scores, "crps", 5, "persistence")["n_cases"] == 4
    with pytest.raises(VerificationError, match="needs 10 context frames; the store has 3"):
        score_store(store, [ModelSpec("pysteps_extrapolation", {"motion": "darts"})], settings=FAST)
    with pytest.raises(VerificationError, match="no crop store"):
        score_store(store.parent / "missing.zarr", specs, settings=FAST)


def test_report_with_all_plots(tmp_path, forecast_files):
    p_path, n_path, _ = forecast_files
    result = score_files([p_path, n_path], SOURCE, settings={"bootstrap": {"n": 0}})
    report = write_report(result, tmp_path / "out", plot_settings={"leads": [10, 20], "dpi": 40})
    text = report.read_text()
    out = tmp_path / "out"
    for name in ("scores.csv", "scores.nc", "scores.json", "diagrams.csv", "scores_mean.csv"):
        assert (out / name).is_file()
    for plot in (
        "skill_csi",
        "skill_fss",
        "skill_crps",
        "rank_histograms",
        "reliability",
        "rapsd",
        "forecast_noisy",
        "forecast_persistence",
    ):
        assert (out / "plots" / f"{plot}.png").is_file(), plot
        assert f"plots/{plot}.png" in text
    assert (out / "plots" / "members_noisy.gif").is_file()
    assert "| 1 | `" in text and "## Ranking" in text
    table = pd.read_csv(out / "scores.csv")
    assert len(table) == len(result.scores)
    import xarray as xr

    with xr.open_dataset(out / "scores.nc") as ds:
        assert ds.sizes["row"] == len(table)
    # geogen.score's layout, with a model dimension: the same numbers as the table.
    with xr.open_dataset(out / "scores_dataset.nc") as ds:
        assert ds["crps"].dims == ("model", "lead_time")
        assert sorted(ds["model"].values) == ["noisy", "persistence"]
        crps_rows = table[(table["metric"] == "crps") & (table["pooling"] == "none")]
        for _, row in crps_rows.iterrows():
            at = {"model": row["model"], "lead_time": pd.Timedelta(minutes=int(row["lead_time"]))}
            np.testing.assert_allclose(float(ds["crps"].sel(at)), row["value"], rtol=1e-6)


def test_config_validation():
    with pytest.raises(VerificationError, match="nothing to score"):
        validate_config({"out": "x"})
    with pytest.raises(VerificationError, match="either store"):
        validate_config({"out": "x", "store": "s.zarr", "forecasts": ["a.nc"]})
    cfg = validate_config(
        {
            "out": "x",
            "store": "s.zarr",
            "models": ["pysteps_steps", {"name": "dgmr", "ckpt": "d.ckpt"}],
            "baseline": {"pysteps_steps": {"n_cascade_levels": 8}},
        }
    )
    specs = cfg.model_specs()
    assert specs[0].kwargs == {"n_cascade_levels": 8}
    assert specs[1].kwargs["ckpt"] == "d.ckpt" and specs[1].kwargs["device"] == "auto"
