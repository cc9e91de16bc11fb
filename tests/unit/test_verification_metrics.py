"""Metrics against pysteps.verification (to 1e-5), closed forms and brute force."""

import numpy as np
import pytest
from pysteps.postprocessing.ensemblestats import excprob
from pysteps.utils.spectral import rapsd as pysteps_rapsd
from pysteps.verification import (
    detcatscores,
    detcontscores,
    ensscores,
    probscores,
    spatialscores,
)
from scipy.ndimage import uniform_filter

from geogen.verification import (
    Pair,
    VerificationError,
    available_metrics,
    box_sum,
    categorical_scores,
    contingency_table,
    crps,
    crps_per_pixel,
    ensemble_skill,
    ensemble_spread,
    fss,
    get_metric,
    pool,
    rank_counts,
    rapsd,
    reliability_curve,
    reliability_statistics,
)

RTOL = 1e-5


def rain(rng, shape, wet=0.5):
    """Rain-like values: zeros and gamma-distributed rates (mm/h)."""
    values = rng.gamma(0.7, 3.0, shape)
    values[rng.random(shape) > wet] = 0.0
    return values.astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(12)


@pytest.fixture
def case(rng):
    fct = rain(rng, (6, 3, 40, 48))
    obs = rain(rng, (3, 40, 48))
    obs[0, :3, :5] = np.nan  # outside the domain
    fct[:, 1, 10:12, 20:22] = np.nan  # forecast NaN where the observation is valid
    return fct, obs


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-10)


# -- pysteps equality ------------------------------------------------------------------------
def test_categorical_equals_pysteps_summed_over_members(case):
    fct, obs = case
    pair = Pair(fct, obs)
    thresholds = [0.5, 2.0, 8.0]
    table = contingency_table(pair.forecast, pair.observation, thresholds)
    for lead in range(3):
        valid = pair.valid[lead]
        for k, thr in enumerate(thresholds):
            tabs = detcatscores.det_cat_fct_init(thr)
            for member in range(fct.shape[0]):
                detcatscores.det_cat_fct_accum(tabs, fct[member, lead][valid], obs[lead][valid])
            expected = [tabs[k] for k in ("hits", "misses", "false_alarms", "correct_negatives")]
            np.testing.assert_array_equal(table[lead, k], expected)
            mine = categorical_scores(table[lead, k])
            ref = detcatscores.det_cat_fct_compute(
                tabs, ["csi", "pod", "far", "bias", "hss", "ets"]
            )
            for name in ("csi", "pod", "far", "bias", "hss", "ets"):
                close(mine[name], ref[name.upper()])


def test_box_sum_equals_uniform_filter(rng):
    field = (rng.random((2, 37, 41)) > 0.6).astype(np.int8)
    for size in (1, 2, 3, 4, 7, 16, 60):
        expected = np.stack([uniform_filter(f.astype(float), size, mode="constant") for f in field])
        close(box_sum(field, size) / size**2, expected)


@pytest.mark.parametrize("scale", [1, 4, 5, 16])
@pytest.mark.parametrize("threshold", [0.5, 4.0])
def test_fss_equals_pysteps(case, scale, threshold):
    fct, obs = case
    close(
        fss(fct[0, 0], obs[0], threshold, scale),
        spatialscores.fss(fct[0, 0], obs[0], threshold, scale),
    )


def test_fss_metric_equals_pysteps_per_member_accumulation(case):
    fct, obs = case
    pair = Pair(fct, obs)
    metric = get_metric("fss", thresholds=[1.0, 4.0], scales=[1, 3, 8])
    state = metric.init()
    metric.accum(state, pair)
    values = metric.compute(state)
    for lead in range(3):
        for thr in (1.0, 4.0):
            for scale in (1, 3, 8):
                ref = spatialscores.fss_init(thr, scale)
                for member in range(fct.shape[0]):
                    spatialscores.fss_accum(
                        ref, pair.forecast[member, lead], pair.observation[lead]
                    )
                close(values[("fss", thr, scale, "none")][lead], spatialscores.fss_compute(ref))


def test_fss_sums_equal_pysteps_over_member_blocks(rng):
    """Members are tabulated in blocks (``MEMBER_BLOCK``): an ensemble of 9 spans three, the
    odd scale and the scale wider than half the field use the padded tables."""
    fct = rain(rng, (9, 1, 33, 27))
    obs = rain(rng, (1, 33, 27))
    metric = get_metric("fss", thresholds=[0.5, 6.0], scales=[1, 2, 5, 20])
    state = metric.init()
    metric.accum(state, fct, obs)
    values = metric.compute(state)
    for thr in (0.5, 6.0):
        for scale in (1, 2, 5, 20):
            ref = spatialscores.fss_init(thr, scale)
            for member in range(9):
                spatialscores.fss_accum(ref, fct[member, 0], obs[0])
            close(values[("fss", thr, scale, "none")][0], spatialscores.fss_compute(ref))


def test_crps_equals_pysteps(rng):
    """On values without ties (pysteps' CRPS_accum drops a bin when the observation equals a
    member exactly; see test_crps_with_ties_is_exact)."""
    fct = rng.gamma(0.7, 3.0, (6, 3, 40, 48))
    obs = rng.gamma(0.7, 3.0, (3, 40, 48))
    obs[0, :3, :5] = np.nan
    for lead in range(3):
        close(crps(fct[:, lead], obs[lead]), probscores.CRPS(fct[:, lead], obs[lead]))


def test_crps_with_ties_equals_the_closed_form():
    """E|X - y| - E|X - X'| / 2 of the members' empirical distribution, ties included.

    Members [0, 0, 0, 1] and an observation of 0: 1/4 - (6/16) / 2 = 0.0625. pysteps 1.21's
    CRPS_accum gives 0.0 here (docs/pysteps_crps_ties.md), so pysteps is compared on tie-free
    values only (test_crps_equals_pysteps).
    """
    members = np.array([0.0, 0.0, 0.0, 1.0])
    assert crps(members[:, None], np.array([0.0])) == pytest.approx(0.0625, abs=1e-12)
    rng = np.random.default_rng(3)
    fct = rain(rng, (8, 30, 40), wet=0.4).astype(np.float64)  # many zeros: ties everywhere
    obs = rain(rng, (30, 40), wet=0.4).astype(np.float64)
    fct[:, :5] = np.round(fct[:, :5])  # ties at non-zero values too
    obs[:5] = np.round(obs[:5])
    skill = np.abs(fct - obs[None]).mean(axis=0)
    spread = np.abs(fct[:, None] - fct[None]).mean(axis=(0, 1))
    close(crps(fct, obs), (skill - spread / 2).mean())
    import properscoring  # the dev extra installs it: its absence must fail, not skip

    close(crps(fct, obs), properscoring.crps_ensemble(obs, np.moveaxis(fct, 0, -1)).mean())


def test_crps_with_ties_is_exact():
    """Zero rain in the observation and in some members: the integral of (F - H)^2 exactly."""
    members = np.array([0.0, 0.0, 0.0, 1.0, 2.0])
    grid = np.linspace(-1.0, 3.0, 400001)
    cdf = (members[None, :] <= grid[:, None]).mean(axis=1)
    integral = np.trapezoid((cdf - (grid >= 0.0)) ** 2, grid)
    np.testing.assert_allclose(crps(members[:, None], np.array([0.0])), integral, atol=1e-4)
    np.testing.assert_allclose(crps(members[:, None], np.array([0.0])), 0.2)


def crps_brute_force(members, observed):
    """E|X - y| - E|X - X'| / 2 over the ensemble, one pixel at a time."""
    m = len(members)
    return np.mean(np.abs(members - observed)) - np.abs(
        members[:, None] - members[None, :]
    ).sum() / (2 * m * m)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("stride", [None, 2])
def test_pooled_crps_against_direct_implementation(rng, mode, stride):
    fct = rain(rng, (5, 1, 17, 20))
    obs = rain(rng, (1, 17, 20))
    obs[0, 0, 0] = np.nan
    size = 4
    step = stride or size
    reduce = np.mean if mode == "avg" else np.max
    expected = []
    for y in range(0, 17 - size + 1, step):
        for x in range(0, 20 - size + 1, step):
            o = reduce(obs[0, y : y + size, x : x + size])
            if not np.isfinite(o):
                continue
            f = np.array([reduce(fct[m, 0, y : y + size, x : x + size]) for m in range(5)])
            expected.append(crps_brute_force(f, o))
    metric = get_metric("crps", windows=[size], pooling=[mode], stride=stride)
    state = metric.init()
    metric.accum(state, fct, obs)
    close(_crps_value(metric, state, size, mode), np.mean(expected))


def _crps_value(metric, state, size, mode):
    values = metric.compute(state)
    (key,) = [k for k in values if k[2] == size and k[3] == mode]
    return values[key][0]


def test_crps_per_pixel_brute_force(rng):
    fct = rng.normal(size=(7, 30))
    obs = rng.normal(size=30)
    expected = [crps_brute_force(fct[:, i], obs[i]) for i in range(30)]
    close(crps_per_pixel(fct, obs), expected)
    # float32 ensembles are summed in float64 without a float64 copy: still to 1e-5
    values = crps_per_pixel(fct.astype(np.float32), obs.astype(np.float32))
    assert values.dtype == np.float64
    close(values, [crps_brute_force(fct[:, i].astype(np.float32), obs[i]) for i in range(30)])


def test_pool_shapes_and_nan():
    field = np.arange(2 * 8 * 9, dtype=float).reshape(2, 8, 9)
    field[0, 0, 0] = np.nan
    avg = pool(field, 4, "avg")
    assert avg.shape == (2, 2, 2) and np.isnan(avg[0, 0, 0]) and np.isfinite(avg[1]).all()
    np.testing.assert_allclose(avg[1, 1, 1], field[1, 4:8, 4:8].mean())
    assert pool(field, 4, "max", stride=2).shape == (2, 3, 3)
    peak = pool(field, 4, "max")  # strided maxima, NaN propagating like numpy's max
    expected = field[..., :8, :8].reshape(2, 2, 4, 2, 4).max(axis=(-3, -1))
    np.testing.assert_array_equal(peak, expected)
    with pytest.raises(VerificationError, match="unknown pooling 'min'"):
        pool(field, 2, "min")


def test_rank_histogram_equals_pysteps_without_ties(rng):
    fct = rng.normal(size=(9, 50, 40))
    obs = rng.normal(size=(50, 40))
    fct[2, 3, 4] = np.nan
    counts = rank_counts(fct, obs)
    np.testing.assert_array_equal(counts, ensscores.rankhist(fct, obs, normalize=False))


def test_rank_histogram_ties_like_pysteps(rng):
    """With x_min, values below it are tied; ranks are uniform over the tied positions.

    Both geogen and pysteps draw the rank of a tied observation at random (pysteps with
    NumPy's global generator), so the pixels without ties are compared to pysteps exactly,
    and the tied ones to the histogram they have in expectation (uniform over the tied
    positions), within the sampling noise of the draws.
    """
    fct = rain(rng, (4, 200, 200), wet=0.3)
    obs = rain(rng, (200, 200), wet=0.3)
    folded_f = np.where(fct < 0.1, -1.0, fct)
    folded_o = np.where(obs < 0.1, -1.0, obs)
    scored = (obs >= 0.1) | (fct >= 0.1).any(axis=0)
    ties = (folded_f == folded_o[None]).sum(axis=0)
    untied, tied = scored & (ties == 0), scored & (ties > 0)
    assert untied.sum() > 10_000 and tied.sum() > 5_000
    # Without ties: exactly pysteps' counts.
    mine = rank_counts(fct[:, untied], obs[untied], x_min=0.1)
    ref = ensscores.rankhist(fct[:, untied], obs[untied], X_min=0.1, normalize=False)
    np.testing.assert_array_equal(mine, ref)
    # With ties: the expected histogram, rank uniform over [below, below + ties].
    below = (folded_f < folded_o[None]).sum(axis=0)[tied]
    expected = np.zeros(5)
    for lo, n in zip(below, ties[tied], strict=True):
        expected[lo : lo + n + 1] += 1.0 / (n + 1)
    mine = rank_counts(fct[:, tied], obs[tied], x_min=0.1, rng=np.random.default_rng(0))
    np.random.seed(0)  # noqa: NPY002  (pysteps breaks ties with the global generator)
    ref = ensscores.rankhist(fct[:, tied], obs[tied], X_min=0.1, normalize=False)
    noise = 4 * np.sqrt(expected)  # 4 standard deviations of a count (at most Poisson)
    assert mine.sum() == ref.sum() == tied.sum()
    assert np.all(np.abs(mine - expected) <= noise), (mine, expected)
    assert np.all(np.abs(ref - expected) <= noise), (ref, expected)


def test_reliability_equals_pysteps(case):
    fct, obs = case
    pair = Pair(fct, obs)
    for thr in (0.5, 4.0):
        prob = excprob(pair.forecast[:, 1], thr)
        prob[~pair.valid[1]] = np.nan
        sums = reliability_statistics(prob, pair.observation[1], thr, n_bins=10)
        mine = reliability_curve(sums, min_count=10)
        ref = probscores.reldiag(prob, pair.observation[1], thr, n_bins=10, min_count=10)
        close(mine[0], ref[0])
        close(mine[1], ref[1])


def test_reliability_metric_bins_equal_pysteps_reldiag_sums(case):
    """The metric counts pixels per number of members above the threshold; its bins must be
    those of pysteps' ``reldiag_accum`` on ``excprob``."""
    fct, obs = case
    pair = Pair(fct, obs)
    metric = get_metric("reliability", thresholds=[0.5, 4.0], n_bins=7)
    stats = metric.statistics(pair)
    for lead in range(3):
        for k, thr in enumerate((0.5, 4.0)):
            prob = excprob(pair.forecast[:, lead], thr)
            prob[~pair.valid[lead]] = np.nan
            ref = probscores.reldiag_init(thr, n_bins=7, min_count=0)  # min_count: per call
            probscores.reldiag_accum(ref, prob, pair.observation[lead])
            close(stats["bins"][lead, k, :, 0], ref["X_sum"])
            close(stats["bins"][lead, k, :, 1], ref["Y_sum"])
            close(stats["bins"][lead, k, :, 2], ref["num_idx"])


def test_brier_score_closed_form(case):
    fct, obs = case
    pair = Pair(fct, obs)
    metric = get_metric("reliability", thresholds=[1.0])
    state = metric.init()
    metric.accum(state, pair)
    values = metric.compute(state)
    for lead in range(3):
        valid = pair.valid[lead]
        prob = (pair.forecast[:, lead] >= 1.0).mean(axis=0)[valid]
        event = (pair.observation[lead] >= 1.0)[valid]
        bs = np.mean((prob - event) ** 2)
        close(values[("brier", 1.0, 1, "none")][lead], bs)
        base = event.mean()
        close(values[("brier_skill", 1.0, 1, "none")][lead], 1 - bs / (base * (1 - base)))


def test_ensemble_skill_and_spread_equal_pysteps(rng):
    fct = rain(rng, (6, 30, 35))
    obs = rain(rng, (30, 35))
    close(ensemble_skill(fct, obs), ensscores.ensemble_skill(fct, obs, "RMSE"))
    close(ensemble_spread(fct), ensscores.ensemble_spread(fct, "RMSE"))
    metric = get_metric("spread_skill")
    state = metric.init()
    metric.accum(state, fct[:, None], obs[None])
    values = metric.compute(state)
    close(_value(values, "ensemble_skill"), ensscores.ensemble_skill(fct, obs, "RMSE"))
    close(_value(values, "ensemble_spread"), ensscores.ensemble_spread(fct, "RMSE"))


def _value(values, name, lead=0):
    (key,) = [k for k in values if k[0] == name]
    return values[key][lead]


def test_continuous_equals_pysteps_on_the_ensemble_mean(case):
    fct, obs = case
    pair = Pair(fct, obs)
    metric = get_metric("continuous")
    state = metric.init()
    metric.accum(state, pair)
    values = metric.compute(state)
    for lead in range(3):
        ref = detcontscores.det_cont_fct(
            pair.ensemble_mean[lead], pair.observation[lead], ["ME", "MAE", "RMSE"]
        )
        for name in ("me", "mae", "rmse"):
            close(_value(values, name, lead), ref[name.upper()])


@pytest.mark.parametrize("shape", [(64, 64), (63, 63), (40, 57), (57, 40)])
def test_rapsd_equals_pysteps(rng, shape):
    field = rain(rng, shape).astype(np.float64)
    mine, freq = rapsd(field[None])
    ref, ref_freq = pysteps_rapsd(field, fft_method=np.fft, return_freq=True)
    close(mine[0], ref)
    close(freq, ref_freq)


# -- known answers ---------------------------------------------------------------------------
def all_scores(fct, obs, **settings):
    out = {}
    for name in available_metrics():
        metric = get_metric(name, **settings.get(name, {}))
        state = metric.init()
        metric.accum(state, fct, obs, rng=np.random.default_rng(0))
        out.update(metric.compute(state))
    return out


def test_perfect_forecast(rng):
    obs = rain(rng, (2, 48, 48))
    fct = np.repeat(obs[None], 4, axis=0)
    values = all_scores(fct, obs)
    for (name, thr, scale, pooling), v in values.items():
        expected = {
            "csi": 1,
            "pod": 1,
            "far": 0,
            "bias": 1,
            "hss": 1,
            "fss": 1,
            "crps": 0,
            "me": 0,
            "mae": 0,
            "rmse": 0,
            "brier": 0,
            "brier_skill": 1,
            "spread": 0,
            "spread_skill": None,  # 0 / 0: undefined
            "ensemble_skill": 0,
            "ensemble_spread": 0,
        }.get(name)
        if expected is not None and not (
            name in ("csi", "far", "hss", "bias", "pod") and thr >= 16
        ):
            np.testing.assert_allclose(
                v, expected, atol=1e-6, err_msg=f"{name} {thr} {scale} {pooling}"
            )


def test_constant_bias(rng):
    obs = rain(rng, (1, 32, 32)) + 1.0
    fct = np.repeat((obs + 0.5)[None], 3, axis=0)
    values = all_scores(fct, obs)
    close(_value(values, "me"), 0.5)
    close(_value(values, "mae"), 0.5)
    close(_value(values, "rmse"), 0.5)
    crps_pixel = next(v for k, v in values.items() if k[0] == "crps" and k[3] == "none")
    close(crps_pixel, 0.5)  # a deterministic forecast's CRPS is its MAE


def test_shuffled_ensemble_is_reliable(rng):
    """Observation drawn like the members: flat rank histogram, spread-skill ~ 1."""
    members = 9
    draws = rng.gamma(2.0, 1.0, (members + 1, 1, 120, 120)).astype(np.float32)
    fct, obs = draws[:-1], draws[-1]
    values = all_scores(fct, obs, rank_histogram={"x_min": None})
    assert _value(values, "rank_flatness") < 0.05
    assert abs(_value(values, "spread_skill") - 1) < 0.03
    under = all_scores(fct * 0.2 + 0.8 * fct.mean(axis=0), obs, rank_histogram={"x_min": None})
    assert _value(under, "rank_flatness") > 0.5  # under-dispersive: U-shaped
    assert _value(under, "spread_skill") < 0.5


# -- streaming API ---------------------------------------------------------------------------
def test_accumulation_merge_and_weights(case):
    fct, obs = case
    metric = get_metric("categorical", thresholds=[1.0])
    a, b, both, twice = metric.init(), metric.init(), metric.init(), metric.init()
    metric.accum(a, fct[:, :, :20], obs[:, :20])
    metric.accum(b, fct[:, :, 20:], obs[:, 20:])
    metric.accum(both, fct, obs)
    merged = metric.merge(a, b)
    for key, value in metric.compute(merged).items():
        close(value, metric.compute(both)[key])
    metric.accum(twice, fct[:, :, :20], obs[:, :20], weight=2.0)
    metric.accum(twice, fct[:, :, 20:], obs[:, 20:])
    weighted = metric.init()
    for _ in range(2):
        metric.accum(weighted, fct[:, :, :20], obs[:, :20])
    metric.accum(weighted, fct[:, :, 20:], obs[:, 20:])
    for key, value in metric.compute(twice).items():
        close(value, metric.compute(weighted)[key])
    with pytest.raises(VerificationError, match="weights must be finite"):
        metric.accum(a, fct, obs, weight=-1)


def test_pair_masks_and_errors(case):
    fct, obs = case
    pair = Pair(fct, obs)
    assert not pair.valid[0, 0, 0] and not pair.valid[1, 10, 20] and pair.valid[2].all()
    assert np.isnan(pair.forecast[:, 0, 0, 0]).all() and np.isnan(pair.observation[1, 10, 20])
    with pytest.raises(VerificationError, match="does not match"):
        Pair(fct, obs[:, :10])
    with pytest.raises(VerificationError, match="member, lead, y, x"):
        Pair(fct[0], obs)


def test_registry_lists_valid_names():
    assert {"categorical", "fss", "crps", "rank_histogram", "reliability"} <= set(
        available_metrics()
    )
    with pytest.raises(VerificationError, match="unknown metric 'skill'; valid metrics: .*crps"):
        get_metric("skill")
    with pytest.raises(VerificationError, match="invalid settings for metric 'crps'"):
        get_metric("crps", kernel=3)
