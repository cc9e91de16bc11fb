"""Scoring downscaled ensembles: the paper's units, LSD, MS-SSIM, files against the archive."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_source

from geogen.downscaling import coarsen, downscale, read_sequence, write_downscaled
from geogen.verification import VerificationError, get_metric
from geogen.verification.app import run, validate_config
from geogen.verification.downscale import score_downscale_store, score_downscaled
from geogen.verification.paper import (
    PAPER_BELOW,
    gaussian_window,
    image_tiles,
    log_spectral_distance,
    ms_ssim,
    to_paper_units,
)

SOURCE = synthetic_source(n_times=12, shape=[128, 160], field={"wet_fraction": 0.6})
END = "2020-01-01T00:30"
FAST = {"bootstrap": {"n": 0}, "fss_scales": [1, 4], "crps": {"windows": [4]}}


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def test_paper_units_closed_form():
    rain = np.array([0.0, 0.05, 0.0999, 0.1, 1.0, 10.0, 100.0, 500.0, np.nan])
    expected = (np.log10([0.1, 1.0, 10.0, 100.0]) - PAPER_BELOW) / (2.0 - PAPER_BELOW)
    got = to_paper_units(rain)
    np.testing.assert_allclose(got[:3], 0.0)
    np.testing.assert_allclose(got[3:7], expected)
    assert got[3] == pytest.approx((-1 - np.log10(0.025)) / (2 - np.log10(0.025)))
    assert got[6] == 1.0 and got[7] == 1.0 and np.isnan(got[8])


def test_image_tiles_order_and_remainder():
    field = np.arange(2 * 5 * 7).reshape(2, 5, 7)
    tiles = image_tiles(field, 2)  # 2 x 3 whole tiles, the last row and column left out
    assert tiles.shape == (2, 6, 2, 2)
    np.testing.assert_array_equal(tiles[1, 4], field[1, 2:4, 2:4])
    assert image_tiles(field, 6).shape == (2, 0, 6, 6)


def _lsd_direct(first, second):
    """The paper's definition, one frequency at a time."""
    ny, nx = first.shape
    f1, f2 = np.fft.fft2(first), np.fft.fft2(second)
    terms = []
    for i in range(ny // 2):
        for j in range(nx // 2):
            p1, p2 = abs(f1[i, j]) ** 2, abs(f2[i, j]) ** 2
            if p1 > 0 and p2 > 0:
                terms.append((10 * np.log10(p1) - 10 * np.log10(p2)) ** 2)
    return np.sqrt(np.mean(terms))


def test_log_spectral_distance_against_a_direct_implementation(rng):
    a = rng.random((3, 16, 24))
    b = rng.random((3, 16, 24))
    got = log_spectral_distance(a, b)
    assert got.shape == (3,)
    for k in range(3):
        assert got[k] == pytest.approx(_lsd_direct(a[k], b[k]), rel=1e-12)
    assert log_spectral_distance(a, a) == pytest.approx([0, 0, 0])
    # a constant offset changes the mean (frequency 0) only: |20 log10((S + c n) / S)| / sqrt(N)
    c, n = 0.3, 16 * 24
    offset = log_spectral_distance(a[0] + c, a[0])
    total = a[0].sum()
    assert offset == pytest.approx(abs(20 * np.log10((total + c * n) / total)) / np.sqrt(8 * 12))
    assert np.isnan(log_spectral_distance(np.zeros((4, 4)), a[0, :4, :4]))  # no power at all


def test_ms_ssim_equals_torchmetrics(rng):
    import torch
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    truth = rng.random((3, 128, 128))
    noisy = np.clip(truth + rng.normal(0, 0.3, truth.shape), 0, 1)
    smooth = np.clip(0.5 * truth + 0.25, 0, 1)
    for other in (noisy, smooth):
        ours = ms_ssim(other, truth)
        ref = multiscale_structural_similarity_index_measure(
            torch.from_numpy(other[:, None]),
            torch.from_numpy(truth[:, None]),
            sigma=1.5,
            kernel_size=7,  # torchmetrics' size check (128 px, 5 scales); sigma sets the window
            data_range=1.0,
            reduction="none",
        ).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(ms_ssim(truth, truth), 1.0, atol=1e-12)
    assert len(gaussian_window(1.5)) == 11
    with pytest.raises(VerificationError, match="too small for 5 scales"):
        ms_ssim(truth[:, :64, :64], truth[:, :64, :64])


def _score(scores, name):
    """The score named ``name`` (keys hold NaN thresholds, which compare unequal)."""
    (value,) = [v for key, v in scores.items() if key[0] == name]
    return value


def test_paper_metric_perfect_and_biased(rng):
    truth = rng.uniform(0.5, 5.0, (2, 128, 256)).astype(np.float32)
    truth[:, :10, :10] = 0.0  # some dry pixels (0 in the paper's units on both sides)
    metric = get_metric("paper")
    state = metric.init()
    metric.accum(state, np.stack([truth, truth, truth]), truth)
    scores = metric.compute(state)
    np.testing.assert_allclose(_score(scores, "paper_rmse"), 0.0)
    np.testing.assert_allclose(_score(scores, "paper_ms_ssim"), 1.0)
    np.testing.assert_allclose(_score(scores, "paper_lsd"), 0.0)
    np.testing.assert_allclose(_score(scores, "paper_crps"), 0.0)
    # a constant bias of 0.1 in the paper's units on wet pixels: rain times 10**(0.1 * range)
    wet = truth > 0
    biased = np.where(wet, truth * 10 ** (0.1 * (2.0 - PAPER_BELOW)), 0.0)[None]
    state = metric.init()
    metric.accum(state, biased, truth)
    scores = metric.compute(state)
    share = wet.mean(axis=(1, 2))
    np.testing.assert_allclose(_score(scores, "paper_crps"), 0.1 * share, rtol=1e-5)
    tiles = image_tiles(wet, 128).mean(axis=(-2, -1))  # (frame, tile): wet share per image
    np.testing.assert_allclose(
        _score(scores, "paper_rmse"),
        (0.1 * np.sqrt(tiles)).mean(axis=1),
        rtol=1e-5,
    )
    assert np.all(_score(scores, "paper_ms_ssim") < 1)


def test_paper_metric_skips_tiles_with_unscored_pixels(rng):
    truth = rng.uniform(0.5, 5.0, (1, 128, 256)).astype(np.float32)
    forecast = truth[None] + rng.uniform(0, 1, (2, 1, 128, 256)).astype(np.float32)
    truth_gap = truth.copy()
    truth_gap[0, 5, 200] = np.nan  # the second tile is left out of the image scores
    metric = get_metric("paper")
    full, gap = metric.init(), metric.init()
    metric.accum(full, forecast[..., :128], truth[..., :128])
    metric.accum(gap, forecast, truth_gap)
    for name in ("paper_rmse", "paper_ms_ssim", "paper_lsd"):
        np.testing.assert_allclose(
            _score(metric.compute(gap), name), _score(metric.compute(full), name)
        )


# ---------------------------------------------------------------------------------------------
# files against the archive
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def truth():
    return read_sequence(SOURCE, END, 3)


def _write(path, truth, model="rainfarm", members=3, **attrs):
    low = coarsen(truth, 16)
    hr = downscale(model, low, members=members, factor=16, seed=1)
    attrs = {"source": "synthetic", "coarsened_from": 16, **attrs}
    return write_downscaled(hr, path, lowres=low, **attrs)


def test_score_downscaled_files(tmp_path, truth):
    _write(tmp_path / "rainfarm.nc", truth)
    _write(tmp_path / "interp.nc", truth, model="interp", members=2)
    perfect = downscale("interp", coarsen(truth, 16), members=2, factor=16).copy(
        data=np.broadcast_to(truth.values, (2, *truth.shape)).copy()
    )
    perfect.attrs["model"] = "perfect"
    write_downscaled(perfect, tmp_path / "perfect.nc", source="synthetic", coarsened_from=16)
    result, example = score_downscaled([tmp_path / "*.nc"], SOURCE, settings=FAST, plot_members=2)
    scores = result.scores
    assert {"model", "frame", "metric", "threshold", "scale", "pooling", "value"} <= set(scores)
    assert "lead_time" not in scores and sorted(set(scores["frame"])) == [0, 1, 2]
    means = result.lead_means.set_index(["model", "metric", "scale"])["value"]
    assert means[("perfect", "crps", 1)] == 0 and means[("perfect", "rmse", 1)] == 0
    assert means[("perfect", "paper_ms_ssim", 128)] == pytest.approx(1.0)
    assert means[("perfect", "paper_lsd", 128)] == 0
    assert means[("rainfarm", "crps", 1)] > 0 and means[("interp", "paper_lsd", 128)] > 0
    # interp is deterministic: scored as one member, its CRPS is its MAE
    assert result.metadata["members"] == {"interp": 1, "perfect": 1, "rainfarm": 3}
    assert means[("interp", "crps", 1)] == pytest.approx(means[("interp", "mae", 1)], rel=1e-5)
    assert example.truth.shape == (128, 160) and example.lowres.shape == (8, 10)
    assert example.members["rainfarm"].shape == (3, 128, 160)
    assert example.time == pd.Timestamp(END)


def test_score_downscaled_grid_time_and_source_mismatch(tmp_path, truth):
    shifted = truth.assign_coords(x=truth["x"] + 0.5 * float(truth["x"][1] - truth["x"][0]))
    _write(tmp_path / "off_grid.nc", shifted)
    with pytest.raises(VerificationError, match="x coordinates .* do not fall on the synthetic"):
        score_downscaled([tmp_path / "off_grid.nc"], SOURCE, settings=FAST)
    late = truth.assign_coords(time=truth["time"] + pd.Timedelta(minutes=2))
    _write(tmp_path / "off_step.nc", late)
    with pytest.raises(VerificationError, match="not on the archive's 5-minute steps"):
        score_downscaled([tmp_path / "off_step.nc"], SOURCE, settings=FAST)
    after = truth.assign_coords(time=truth["time"] + pd.Timedelta(hours=3))
    _write(tmp_path / "after.nc", after)
    with pytest.raises(
        VerificationError, match="cannot read the synthetic archive at 2020-01-01 03"
    ):
        score_downscaled([tmp_path / "after.nc"], SOURCE, settings=FAST)
    partly = truth.assign_coords(time=truth["time"] + pd.Timedelta(minutes=30))  # to 01:00
    _write(tmp_path / "partly.nc", partly)
    with pytest.raises(VerificationError, match="has no frame at 2020-01-01T01:00 .1 of 3"):
        score_downscaled([tmp_path / "partly.nc"], SOURCE, settings=FAST)
    _write(tmp_path / "other.nc", truth, source="mch")
    with pytest.raises(VerificationError, match="downscaled from the 'mch' archive"):
        score_downscaled([tmp_path / "other.nc"], SOURCE, settings=FAST)
    _write(tmp_path / "a.nc", truth)
    _write(tmp_path / "b.nc", read_sequence(SOURCE, "2020-01-01T00:35", 3))
    with pytest.raises(VerificationError, match="different but overlapping times"):
        score_downscaled([tmp_path / "a.nc", tmp_path / "b.nc"], SOURCE, settings=FAST)


def test_geogen_score_task_downscale_report(tmp_path, truth):
    _write(tmp_path / "fc" / "rainfarm.nc", truth)
    _write(tmp_path / "fc" / "interp.nc", truth, model="interp", members=1)
    config = validate_config(
        {
            "task": {"name": "downscale", "factor": 16},
            "forecasts": [str(tmp_path / "fc" / "*.nc")],
            "source": SOURCE,
            "out": str(tmp_path / "out"),
            "scoring": FAST,
            "plots": {"dpi": 40, "members": 2},
            "progress": False,
        }
    )
    report = run(config).read_text()
    assert "GAN (Leinonen et al. 2020) | 0.097 | 0.680 | 8.370 | 0.029" in report
    assert "`rainfarm`" in report and "![panel](plots/downscaled.png)" in report
    for name in ("downscaled.png", "rank_histograms.png", "rapsd.png"):
        assert (tmp_path / "out" / "plots" / name).stat().st_size > 0
    table = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert {"paper_crps", "crps", "csi", "fss", "rank_flatness"} <= set(table["metric"])
    with pytest.raises(VerificationError, match="scores files as they are; models= runs on a"):
        validate_config(
            {"task": {"name": "downscale"}, "forecasts": ["a.nc"], "models": ["x"], "out": "o"}
        )
    with pytest.raises(VerificationError, match="store=...: give models="):
        validate_config({"task": {"name": "downscale"}, "store": "p.zarr", "out": "o"})


def test_opening_output_files_does_not_import_cfgrib(tmp_path, truth):
    path = _write(tmp_path / "hr.nc", truth, members=1)
    code = (
        "import sys; from geogen.downscaling import open_downscaled; "
        f"open_downscaled({str(path)!r}).load(); "
        "print(sorted(m for m in ('cfgrib', 'eccodes', 'gribapi') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_score_downscale_store_weights_and_models(tmp_path, build_store):
    from conftest import downscale_overrides

    store = build_store(
        "pairs",
        source=synthetic_source(n_times=30, shape=[64, 64]),
        **downscale_overrides(factor=16, size=64, length=2),
        sampling={"method": "uniform", "probability": 0.5, "rain_threshold": 0.1},
    )
    models = {"interp": {}, "rainfarm": {}}
    settings = {**FAST, "paper": {"tile": 64}, "metrics": ["crps", "continuous"]}
    result, example = score_downscale_store(
        store, models, split="test", settings=settings, members=2, max_cases=3
    )
    assert result.metadata["weights"] == "1 / sample_prob" and len(result.metadata["cases"]) == 3
    assert result.metadata["members"] == {"interp": 1, "rainfarm": 2}
    assert example.truth.shape == (64, 64) and example.lowres.shape == (4, 4)
    means = result.lead_means.set_index(["model", "metric", "scale", "pooling"])["value"]
    assert 0 < means[("rainfarm", "paper_crps", 1, "none")] < 1
    assert means[("interp", "crps", 1, "none")] > 0
    # every test pair has sample_prob 0.5: the weights cancel, equal weights give the same scores
    same, _ = score_downscale_store(
        store, models, settings=settings, members=2, max_cases=3, weights="none"
    )
    np.testing.assert_allclose(
        same.scores["value"].to_numpy(), result.scores["value"].to_numpy(), rtol=1e-6
    )
    with pytest.raises(VerificationError, match="unknown downscaling model 'magic'"):
        score_downscale_store(store, {"magic": {}}, settings=settings)
    nowcast = build_store("crops")
    with pytest.raises(VerificationError, match="is a nowcast store; task=downscale needs"):
        score_downscale_store(nowcast, models, settings=settings)
