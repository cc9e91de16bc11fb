"""pysteps reference forecasters: motion recovery, seeds, no-data handling, settings."""

import json

import numpy as np
import pandas as pd
import pysteps  # noqa: F401  (a dependency: its absence must fail)
import pytest
import xarray as xr

import geogen
from geogen.forecasting import ForecastError, available_forecasters, get_forecaster


def moving_blobs(n_frames=4, shape=(64, 64), shift=2, seed=0):
    """Smooth rain cells moving ``shift`` pixels per frame to the east (mm/h)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1] + 40]
    field = np.zeros(yy.shape)
    for _ in range(12):
        cy, cx = rng.uniform(8, shape[0] - 8), rng.uniform(0, xx.shape[1])
        field += rng.uniform(2, 15) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0**2))
    frames = [field[:, 40 - shift * t : 40 - shift * t + shape[1]] for t in range(n_frames + 6)]
    return np.stack(frames).astype(np.float32)


def as_context(frames):
    times = pd.date_range("2020-01-01T00:00", periods=len(frames), freq="5min")
    x = np.arange(frames.shape[2]) * 1000.0
    y = np.arange(frames.shape[1])[::-1] * 1000.0
    return xr.DataArray(
        frames,
        dims=("time", "y", "x"),
        coords={"time": times, "x": ("x", x, {"units": "m"}), "y": ("y", y, {"units": "m"})},
    )


def test_registered():
    assert {"pysteps_extrapolation", "pysteps_sprog", "pysteps_steps"} <= set(
        available_forecasters()
    )


def test_extrapolation_follows_the_motion():
    frames = moving_blobs()
    fc = geogen.forecast("pysteps_extrapolation", as_context(frames[:4]), members=2, leads=3)
    assert fc.shape == (2, 3, 64, 64) and fc.attrs["model"] == "pysteps_extrapolation"
    np.testing.assert_array_equal(fc.values[0], fc.values[1])  # deterministic: repeated
    truth = frames[4:7]
    inner = (slice(None), slice(8, -8), slice(12, -8))
    err_extrap = np.nanmean(np.abs(fc.values[0] - truth)[inner])
    err_persist = np.nanmean(np.abs(frames[3] - truth)[inner])
    assert err_extrap < 0.35 * err_persist
    # pixels advected in from outside the grid (west edge) are NaN (pysteps' outval)
    assert np.isnan(fc.values[0, 2, :, :2]).all()
    assert np.isfinite(fc.values[0, 2, 8:-8, 20:]).all()


def test_steps_is_seeded_and_keeps_the_domain():
    frames = moving_blobs()
    frames[:, :5, :5] = np.nan  # outside the radar domain
    ctx = as_context(frames[:4])
    a = geogen.forecast("pysteps_steps", ctx, members=3, leads=2, seed=3)
    b = geogen.forecast("pysteps_steps", ctx, members=3, leads=2, seed=3)
    c = geogen.forecast("pysteps_steps", ctx, members=3, leads=2, seed=4)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values, equal_nan=True)
    assert not np.array_equal(a.values[0], a.values[1], equal_nan=True)  # members differ
    assert np.isnan(a.values[..., :5, :5]).all()
    assert (
        np.nanmin(a.values) >= 0
        and json.loads(a.attrs["settings"])["noise_method"] == "nonparametric"
    )


def laplacian_energy(field):
    """Mean absolute 5-point Laplacian: large for pixel-scale noise, small for smooth fields."""
    f = np.nan_to_num(field)
    lap = 4 * f[1:-1, 1:-1] - f[2:, 1:-1] - f[:-2, 1:-1] - f[1:-1, 2:] - f[1:-1, :-2]
    return float(np.mean(np.abs(lap)))


def test_sprog_deterministic_and_smooth():
    frames = moving_blobs()
    fc = geogen.forecast("pysteps_sprog", as_context(frames[:4]), members=2, leads=2)
    np.testing.assert_array_equal(fc.values[0], fc.values[1])
    # S-PROG damps the small scales of the cascade: on a context with pixel-scale noise its
    # forecast is far smoother than plain extrapolation of the same frames (0.2 against 1.3-1.6).
    rng = np.random.default_rng(0)
    noisy = as_context(frames[:4] + np.abs(rng.normal(0, 1, frames[:4].shape)).astype("f4"))
    sprog = geogen.forecast("pysteps_sprog", noisy, members=1, leads=2).values[0]
    extrap = geogen.forecast("pysteps_extrapolation", noisy, members=1, leads=2).values[0]
    inner = (slice(8, -8), slice(12, -8))
    for lead in range(2):
        smooth, rough = laplacian_energy(sprog[lead][inner]), laplacian_energy(extrap[lead][inner])
        assert smooth < 0.25 * rough, (lead, smooth, rough)


def test_settings_and_context_requirements():
    assert get_forecaster("pysteps_extrapolation", motion="darts").n_context == 10
    assert get_forecaster("pysteps_steps", ar_order=3).n_context == 4
    with pytest.raises(ForecastError, match="invalid settings for pysteps_steps .*n_cascade"):
        get_forecaster("pysteps_steps", n_cascades=3)
    with pytest.raises(ForecastError, match="motion: Input should be"):
        get_forecaster("pysteps_extrapolation", motion="magic")
    steps = get_forecaster("pysteps_steps")
    with pytest.raises(ForecastError, match="pixel size in km"):
        steps.predict(moving_blobs()[:3], leads=1, members=2, seed=0, timestep_minutes=5)
    with pytest.raises(ForecastError, match="needs 3 context frames, got 2"):
        get_forecaster("pysteps_extrapolation").predict(
            moving_blobs()[:2], leads=1, members=1, seed=0, timestep_minutes=5
        )


def test_steps_runs_on_every_core_by_default_and_workers_do_not_change_it():
    from geogen.baselines.pysteps_methods import available_cores

    assert available_cores() >= 1
    assert get_forecaster("pysteps_steps").settings.n_workers == available_cores()
    assert get_forecaster("pysteps_steps", n_workers=1).settings.n_workers == 1
    ctx = as_context(moving_blobs()[:4])
    one = geogen.forecast("pysteps_steps", ctx, members=3, leads=2, seed=5, n_workers=1)
    two = geogen.forecast("pysteps_steps", ctx, members=3, leads=2, seed=5, n_workers=2)
    np.testing.assert_array_equal(one.values, two.values)
