"""Tests of the seeded synthetic rain fields (geogen.data.synthetic)."""

import math

import numpy as np
import pandas as pd
import pytest

from geogen.data.synthetic import (
    SYNTHETIC_CRS,
    latent_gaussian_field,
    synthetic_dataset,
    synthetic_rain,
)

SHAPE = (64, 96)


def _displacement(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """Shift (dy, dx) maximising the periodic cross-correlation of two frames."""
    before = before - before.mean()
    after = after - after.mean()
    correlation = np.fft.irfft2(np.conj(np.fft.rfft2(before)) * np.fft.rfft2(after), s=before.shape)
    peak = np.unravel_index(np.argmax(correlation), correlation.shape)
    # indices past half the domain are negative shifts
    return tuple(
        int(index - size) if index > size // 2 else int(index)
        for index, size in zip(peak, correlation.shape, strict=True)
    )


def _correlation(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.corrcoef(first.ravel(), second.ravel())[0, 1])


def _radial_spectrum(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of square (time, n, n) fields, by integer wavenumber."""
    n = fields.shape[-1]
    power = (np.abs(np.fft.fft2(fields)) ** 2).mean(axis=0)
    k = np.fft.fftfreq(n) * n  # cycles per domain
    radius = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
    wavenumbers = np.arange(1, n // 2)
    spectrum = np.array([power[radius == wavenumber].mean() for wavenumber in wavenumbers])
    return wavenumbers, spectrum


def test_same_seed_gives_bit_identical_fields_and_other_seeds_differ():
    first = synthetic_rain(6, SHAPE, seed=11)
    again = synthetic_rain(6, SHAPE, seed=11)
    other = synthetic_rain(6, SHAPE, seed=12)
    np.testing.assert_array_equal(first, again)
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)
    assert _correlation(first, other) < 0.5


@pytest.mark.parametrize("wet_fraction", [0.1, 0.35, 0.7])
def test_wet_fraction_and_exact_zeros(wet_fraction):
    rain = synthetic_rain(10, SHAPE, seed=3, wet_fraction=wet_fraction)
    assert rain.dtype == np.float32
    assert np.isfinite(rain).all()
    assert (rain >= 0).all()
    frame_wet_fraction = (rain > 0).mean(axis=(1, 2))
    np.testing.assert_allclose(frame_wet_fraction, wet_fraction, atol=0.05)
    # the wet pixels are the exceedances of the latent field: dry is exactly zero
    latent = latent_gaussian_field(10, SHAPE, seed=3)
    threshold = np.quantile(latent.reshape(10, -1), 1 - wet_fraction, axis=1)
    dry = latent <= threshold[:, None, None]
    assert (rain[dry] == 0).all()
    assert (rain[~dry] > 0).all()


def test_wet_rain_is_monotone_in_the_latent_field():
    rain = synthetic_rain(1, SHAPE, seed=5)[0]
    latent = latent_gaussian_field(1, SHAPE, seed=5)[0]
    wet = rain > 0
    order = np.argsort(latent[wet])
    assert (np.diff(rain[wet][order]) >= 0).all()


@pytest.mark.parametrize("mean_wet_rain", [0.5, 2.0, 8.0])
def test_mean_wet_rain(mean_wet_rain):
    rain = synthetic_rain(8, SHAPE, seed=4, mean_wet_rain=mean_wet_rain)
    wet = rain[rain > 0].astype(np.float64)
    assert wet.mean() == pytest.approx(mean_wet_rain, rel=1e-4)
    # a heavy-tailed intensity distribution, not a constant
    assert np.percentile(wet, 99) > 4 * np.median(wet)
    frame_means = [frame[frame > 0].mean() for frame in rain]
    np.testing.assert_allclose(frame_means, mean_wet_rain, rtol=0.5)


@pytest.mark.parametrize("spectral_slope", [2.0, 3.0])
def test_latent_field_power_spectrum_follows_the_slope(spectral_slope):
    latent = latent_gaussian_field(16, (128, 128), seed=0, spectral_slope=spectral_slope)
    np.testing.assert_allclose(latent.mean(axis=(1, 2)), 0.0, atol=1e-12)
    np.testing.assert_allclose(latent.std(axis=(1, 2)), 1.0, rtol=1e-12)
    wavenumbers, spectrum = _radial_spectrum(latent)
    fitted = (wavenumbers >= 4) & (wavenumbers <= 48)
    slope = np.polyfit(np.log(wavenumbers[fitted]), np.log(spectrum[fitted]), 1)[0]
    assert slope == pytest.approx(-spectral_slope, abs=0.2)


def test_rain_is_spatially_correlated_unlike_white_noise():
    rain = synthetic_rain(4, SHAPE, seed=2)
    white = synthetic_rain(4, SHAPE, seed=2, spectral_slope=0.0)
    lag1 = np.mean([_correlation(frame[:, :-1], frame[:, 1:]) for frame in rain])
    lag1_white = np.mean([_correlation(frame[:, :-1], frame[:, 1:]) for frame in white])
    assert lag1 > 0.8
    assert abs(lag1_white) < 0.1


def test_frozen_field_with_integer_velocity_is_an_exact_shift():
    rain = synthetic_rain(4, SHAPE, seed=7, velocity=(1.0, 2.0), lifetime=math.inf)
    for step in range(1, 4):
        shifted = np.roll(rain[0], (step, 2 * step), axis=(0, 1))
        np.testing.assert_allclose(rain[step], shifted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("velocity", "lag", "expected"),
    [
        ((1.0, 2.0), 3, (3, 6)),
        ((0.25, -0.75), 4, (1, -3)),  # sub-pixel steps add up to whole pixels
        ((0.5, 1.5), 4, (2, 6)),
    ],
)
def test_cross_correlation_peak_follows_the_velocity(velocity, lag, expected):
    rain = synthetic_rain(lag + 4, SHAPE, seed=9, velocity=velocity, lifetime=200.0)
    for start in range(4):
        assert _displacement(rain[start], rain[start + lag]) == expected


def test_latent_autocorrelation_matches_the_ar1_lifetime():
    """With a scale-independent lifetime every mode is AR(1): corr(lag) = exp(-lag / lifetime)."""
    lifetime, lag = 8.0, 4
    correlations = []
    for seed in range(3):
        latent = latent_gaussian_field(
            30,
            (64, 64),
            seed=seed,
            velocity=(0.0, 0.0),
            spectral_slope=1.0,  # many modes share the variance: a precise estimate
            lifetime=lifetime,
            lifetime_exponent=0.0,
        )
        correlations += [_correlation(latent[t], latent[t + lag]) for t in range(30 - lag)]
    assert np.mean(correlations) == pytest.approx(math.exp(-lag / lifetime), abs=0.02)


def test_longer_lifetime_decorrelates_slower_and_small_scales_decorrelate_faster():
    def lagged_correlation(**kwargs):
        return np.mean(
            [
                _correlation(rain[0], rain[10])
                for rain in (
                    synthetic_rain(11, SHAPE, seed=seed, velocity=(0.0, 0.0), **kwargs)
                    for seed in range(4)
                )
            ]
        )

    assert lagged_correlation(lifetime=math.inf) == pytest.approx(1.0)
    assert lagged_correlation(lifetime=100.0) > lagged_correlation(lifetime=3.0) + 0.4
    # scale-dependent lifetimes: the field decorrelates faster than its largest scale
    assert lagged_correlation(lifetime=20.0, lifetime_exponent=1.0) < (
        lagged_correlation(lifetime=20.0, lifetime_exponent=0.0) - 0.1
    )


def test_dataset_layout_and_attributes():
    ds = synthetic_dataset(
        5, (32, 48), seed=3, start="2021-06-01T12:00", timestep_minutes=10.0, pixel_size=2000.0
    )
    precip = ds["precip"]
    assert precip.dims == ("time", "y", "x")
    assert precip.dtype == np.float32
    assert precip.attrs["units"] == "mm/h"
    assert precip.attrs["standard_name"] == "lwe_precipitation_rate"
    assert precip.attrs["grid_mapping"] == "crs"
    assert ds["crs"].attrs["proj4"] == SYNTHETIC_CRS
    assert "crs" in ds.coords
    assert ds.attrs["source"] == "synthetic"
    assert ds.attrs["timestep"] == 10.0
    assert ds.attrs["synthetic_seed"] == 3
    assert ds.attrs["synthetic_velocity"] == [0.5, 1.5]
    assert ds.attrs["synthetic_wet_fraction"] == 0.35
    expected_times = pd.date_range("2021-06-01T12:00", periods=5, freq="10min")
    np.testing.assert_array_equal(ds["time"].values, expected_times.values)
    np.testing.assert_allclose(np.diff(ds["x"].values), 2000.0)
    np.testing.assert_allclose(np.diff(ds["y"].values), -2000.0)  # row 0 is the north
    assert ds["x"].attrs["units"] == "m"
    np.testing.assert_array_equal(precip.values, synthetic_rain(5, (32, 48), seed=3))


def test_dataset_passes_field_arguments_and_records_them():
    ds = synthetic_dataset(3, (16, 16), seed=1, wet_fraction=0.5, velocity=(1.0, 0.0))
    np.testing.assert_array_equal(
        ds["precip"].values, synthetic_rain(3, (16, 16), seed=1, wet_fraction=0.5, velocity=(1, 0))
    )
    assert ds.attrs["synthetic_wet_fraction"] == 0.5
    assert ds.attrs["synthetic_velocity"] == [1.0, 0.0]


def test_nan_border():
    border = 3
    ds = synthetic_dataset(2, (20, 24), seed=0, nan_border=border)
    values = ds["precip"].values
    interior = np.zeros((20, 24), dtype=bool)
    interior[border:-border, border:-border] = True
    assert np.isnan(values[:, ~interior]).all()
    assert np.isfinite(values[:, interior]).all()
    assert ds.attrs["synthetic_nan_border"] == border


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_times": 0}, "n_times"),
        ({"n_times": 2.5}, "n_times"),
        ({"seed": -1}, "seed"),
        ({"seed": None}, "seed"),
        ({"shape": (2, 64)}, "shape"),
        ({"shape": (64,)}, "shape"),
        ({"wet_fraction": 0.0}, "wet_fraction"),
        ({"wet_fraction": 1.0}, "wet_fraction"),
        ({"mean_wet_rain": -1.0}, "mean_wet_rain"),
        ({"lifetime": 0.0}, "lifetime"),
        ({"spectral_slope": -1.0}, "spectral_slope"),
        ({"velocity": (1.0, math.nan)}, "velocity"),
        ({"lifetime_exponent": -0.5}, "lifetime_exponent"),
    ],
)
def test_rain_argument_validation(kwargs, match):
    arguments = {"n_times": 2, "shape": (16, 16), **kwargs}
    with pytest.raises(ValueError, match=match):
        synthetic_rain(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nan_border": 8}, "nan_border"),
        ({"nan_border": -1}, "nan_border"),
        ({"pixel_size": 0.0}, "pixel_size"),
        ({"timestep_minutes": -5.0}, "timestep_minutes"),
    ],
)
def test_dataset_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_dataset(2, (16, 16), **kwargs)
