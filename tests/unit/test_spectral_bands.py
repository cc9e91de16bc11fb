"""The ``spectral_bands`` score: closed forms (power laws, scaled copies), pysteps' rapsd, tables.

Band convention: a ring of the RAPSD belongs to a band when ``low <= wavelength < high``
(wavelength = pixel size / frequency), the last band also takes ``high``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pysteps.utils.spectral import rapsd as pysteps_rapsd

from geogen.verification import VerificationError, get_metric
from geogen.verification.report import spectral_table, write_report
from geogen.verification.scoring import Scorer
from geogen.verification.spectra import (
    SPECTRAL_BANDS_KM,
    SPECTRAL_MAX_ABS,
    band_log_ratio,
    band_score_name,
)

N = 128


def ring_radius(n: int) -> np.ndarray:
    """Rounded radius of every full-plane FFT coefficient (pysteps' rings)."""
    k = np.round(np.fft.fftfreq(n) * n)
    return np.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round()


def power_law_field(rng: np.random.Generator, n: int = N, beta: float = 3.0) -> np.ndarray:
    """A real field whose ring power falls as radius**-beta (random phases), plus an offset."""
    radius = ring_radius(n)
    amplitude = np.where(radius > 0, np.maximum(radius, 1.0) ** (-beta / 2), 0.0)
    noise = np.fft.fft2(rng.standard_normal((n, n)))
    field = np.fft.ifft2(noise * amplitude).real
    return field - field.min() + 0.1


def filtered(field: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """``field`` with every Fourier coefficient of ring ``r`` multiplied by ``gain[r]``."""
    radius = ring_radius(field.shape[0]).astype(int)
    return np.fft.ifft2(np.fft.fft2(field) * gain[np.minimum(radius, gain.size - 1)]).real


def scores_of(forecast: np.ndarray, observation: np.ndarray, **settings) -> dict:
    """``(member, lead, y, x)``, ``(lead, y, x)`` -> score name -> (lead,)."""
    metric = get_metric("spectral_bands", **settings)
    state = metric.init()
    metric.accum(state, forecast, observation)
    return {key[0]: value for key, value in metric.compute(state).items()}


def expected_bands(ring_log_ratio: np.ndarray, wavelength_km: np.ndarray) -> np.ndarray:
    out = []
    for i, (low, high) in enumerate(SPECTRAL_BANDS_KM):
        upper = wavelength_km <= high if i == len(SPECTRAL_BANDS_KM) - 1 else wavelength_km < high
        rings = (wavelength_km >= low) & upper
        out.append(ring_log_ratio[rings].mean() if rings.any() else np.nan)
    return np.array(out)


def test_scaled_copy_gives_log10_of_the_scale_squared():
    """Members a*obs and b*obs: member-mean power (a^2+b^2)/2 times the observed, every band."""
    obs = power_law_field(np.random.default_rng(0))
    a, b = 3.0, 0.5
    forecast = np.stack([a * obs, b * obs])[:, None]
    values = scores_of(forecast, obs[None], pixel_km=1.0)
    expected = np.log10((a**2 + b**2) / 2)
    for band in SPECTRAL_BANDS_KM:  # 128 px at 1 km: rings from 2 km to 128 km
        # float32 fields (Pair): exact to about 1e-8
        np.testing.assert_allclose(values[band_score_name(band)], [expected], rtol=1e-6)
    np.testing.assert_allclose(values[SPECTRAL_MAX_ABS], [abs(expected)], rtol=1e-6)
    single = scores_of((2.0 * obs)[None, None], obs[None], pixel_km=1.0)
    np.testing.assert_allclose(single[band_score_name((2.0, 4.0))], [np.log10(4.0)], rtol=1e-6)


def test_power_law_filter_gives_the_closed_form_per_band():
    """A forecast whose ring power is obs * (r / 8)^-1 (steeper spectrum, blurred small scales):
    the band score is the mean of -log10(r / 8) over the band's rings."""
    obs = power_law_field(np.random.default_rng(1))
    radius = np.arange(N)
    gain = np.where(radius > 0, (np.maximum(radius, 1) / 8.0) ** -0.5, 1.0)
    forecast = filtered(obs, gain)
    values = scores_of(forecast[None, None], obs[None], pixel_km=1.0)
    rings = np.arange(N // 2)  # pysteps' rings for an even side: radii 0 .. n/2 - 1
    frequency = rings / N
    with np.errstate(divide="ignore"):
        wavelength = np.where(frequency > 0, 1.0 / frequency, np.inf)
    ring_ratio = np.where(rings > 0, -np.log10(np.maximum(rings, 1) / 8.0), 0.0)
    expected = expected_bands(ring_ratio, wavelength)
    got = np.array([values[band_score_name(band)][0] for band in SPECTRAL_BANDS_KM])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # too little power at short wavelengths, too much beyond 8 km: rising with the band
    assert np.all(np.diff(got) > 0) and got[0] < -0.7 and got[-1] > 0.8
    assert values[SPECTRAL_MAX_ABS][0] == pytest.approx(np.nanmax(np.abs(got)))


def test_against_pysteps_rapsd_on_rain_like_fields():
    """Bands computed here from pysteps' rapsd of each member and of the observation."""
    rng = np.random.default_rng(2)
    shape = (96, 80)  # not square: rings up to half the longest side
    obs = np.maximum(power_law_field(rng, 96)[:, :80] - 0.3, 0.0)
    members = [np.maximum(power_law_field(rng, 96, beta=2.0)[:, :80] - 0.2, 0.0) for _ in range(3)]
    forecast = np.stack(members)[:, None]
    pixel_km = 2.0
    values = scores_of(forecast, obs[None], pixel_km=pixel_km)
    psd = [pysteps_rapsd(m, fft_method=np.fft, return_freq=True) for m in members]
    member_mean = np.mean([p for p, _ in psd], axis=0)
    obs_psd, frequency = pysteps_rapsd(obs, fft_method=np.fft, return_freq=True)
    with np.errstate(divide="ignore"):
        wavelength = np.where(frequency > 0, pixel_km / frequency, np.inf)
    expected = expected_bands(np.log10(member_mean / obs_psd), wavelength)
    got = np.array([values[band_score_name(band)][0] for band in SPECTRAL_BANDS_KM])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.isnan(got[0])  # 2 km pixels: the shortest wavelength is 4 km
    assert shape == obs.shape


def test_cases_are_averaged_before_the_ratio_and_bootstrap_resamples_them():
    """Two cases with weights: power sums weighted, then the ratio (not a mean of ratios)."""
    rng = np.random.default_rng(3)
    obs = [power_law_field(rng, 64), 2.0 * power_law_field(rng, 64)]
    metric = get_metric("spectral_bands", pixel_km=1.0)
    state = metric.init()
    metric.accum(state, (2.0 * obs[0])[None, None], obs[0][None], weight=1.0)
    metric.accum(state, obs[1][None, None], obs[1][None], weight=3.0)
    values = {k[0]: v for k, v in metric.compute(state).items()}
    from geogen.verification.spectra import rapsd

    p0, frequency = rapsd(obs[0])
    p1, _ = rapsd(obs[1])
    ratio = np.log10((4.0 * p0 + 3.0 * p1) / (p0 + 3.0 * p1))
    wavelength = np.where(frequency > 0, 1.0 / np.where(frequency > 0, frequency, 1), np.inf)
    expected = expected_bands(ratio, wavelength)
    got = np.array([values[band_score_name(b)][0] for b in SPECTRAL_BANDS_KM])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    from geogen.verification.bootstrap import bootstrap_draws

    draws = bootstrap_draws(metric, state, n_boot=50, seed=0)
    key = next(k for k in draws if k[0] == band_score_name((2.0, 4.0)))
    column = draws[key][:, 0]
    # resamples of only case 0 give log10(4), of only case 1 give 0
    assert column.min() >= -1e-9 and column.max() <= np.log10(4.0) + 1e-9
    assert column.std() > 0.01


def test_settings_are_checked():
    with pytest.raises(VerificationError, match="bands"):
        get_metric("spectral_bands", bands=[(4.0, 2.0)])
    with pytest.raises(VerificationError, match="pixel_km"):
        get_metric("spectral_bands", pixel_km=0.0)
    with pytest.raises(ValueError, match="rings"):
        band_log_ratio(np.ones(3), np.ones(3), np.ones(4))


def test_scorer_rows_table_and_report(tmp_path):
    """geogen-score's path: rows in the scores table, km from the grid, a table and a PNG."""
    rng = np.random.default_rng(4)
    scorer = Scorer({"metrics": ["crps", "spectral_bands"], "bootstrap": {"n": 20}})
    scorer.pixel_size_km = 2.0
    for case in range(3):
        obs = np.stack([power_law_field(rng, 64) for _ in range(2)])
        sharp = np.stack([obs * s for s in (1.0, 1.2)])
        blurred = np.stack([filtered(o, np.exp(-np.arange(64) / 4.0)) for o in obs])[None]
        scorer.add_case(f"c{case}", {"sharp": sharp, "blurred": blurred}, obs, [30, 60])
    result = scorer.result()
    rows = result.scores[result.scores.metric == band_score_name((16.0, 32.0))]
    assert len(rows) == 4 and np.isfinite(rows.ci_low).all()
    table = spectral_table(result)
    assert list(table.columns) == [
        "model",
        "lead_time",
        "2-4",
        "4-8",
        "8-16",
        "16-32",
        "32-64",
        "64-128",
        "128-256",
        "max_abs",
    ]
    sharp_row = table[(table.model == "sharp") & (table.lead_time == 30)].iloc[0]
    assert sharp_row["4-8"] == pytest.approx(np.log10((1 + 1.44) / 2), rel=1e-6)
    assert np.isnan(sharp_row["2-4"])  # 2 km pixels
    blurred_row = table[(table.model == "blurred") & (table.lead_time == 30)].iloc[0]
    assert blurred_row["4-8"] < blurred_row["32-64"] < 0
    assert blurred_row["max_abs"] == pytest.approx(-blurred_row["4-8"])
    report = write_report(result, tmp_path, plot_settings={"leads": [30, 60], "dpi": 30})
    text = report.read_text()
    assert "## Spectral realism" in text and "plots/spectral_bands.png" in text
    assert "| `blurred` | +60 min |" in text
    assert (tmp_path / "plots" / "spectral_bands.png").stat().st_size > 1000
    csv = pd.read_csv(tmp_path / "scores.csv")
    assert (csv.metric == SPECTRAL_MAX_ABS).sum() == 4
