import numpy as np
import pandas as pd
import pytest

from data_pipelines import plan as P


def test_hash_uniform_deterministic_uniform_and_key_sensitive():
    keys = np.arange(200_000)
    u = P.hash_uniform(7, keys)
    assert np.array_equal(u, P.hash_uniform(7, keys))
    assert (u >= 0).all() and (u < 1).all()
    # Uniform: deciles within 1% of 0.1 each; mean and variance of U(0, 1).
    counts = np.histogram(u, bins=10, range=(0, 1))[0] / len(u)
    assert np.abs(counts - 0.1).max() < 0.01
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert not np.array_equal(u, P.hash_uniform(8, keys))
    # Order of keys matters, and broadcasting gives the same numbers as scalars.
    assert P.hash_uniform(1, 2, 3) != P.hash_uniform(1, 3, 2)
    grid = P.hash_uniform(1, np.arange(3)[:, None], np.arange(4)[None, :])
    assert grid[2, 3] == P.hash_uniform(1, 2, 3)


def test_tile_origins_centred_and_in_bounds():
    tiles = P.tile_origins((640, 710), 256, 256)
    assert tiles.tolist() == [[64, 99], [64, 355], [320, 99], [320, 355]]
    tiles = P.tile_origins((100, 100), 32, 16)
    assert len(tiles) == 25 and tiles.min() == 2 and tiles.max() + 32 == 98
    with pytest.raises(ValueError, match="larger than the grid"):
        P.tile_origins((100, 200), 128, 128)
    with pytest.raises(ValueError, match="must be positive"):
        P.tile_origins((100, 200), 32, 0)


def test_tile_stats_equal_brute_force():
    rng = np.random.default_rng(0)
    frame = rng.gamma(0.5, 2.0, size=(40, 50)).astype(np.float32)
    frame[rng.random(frame.shape) < 0.1] = np.nan
    tiles = P.tile_origins(frame.shape, 16, 8)
    stats = P.tile_stats(frame, tiles, 16, rain_threshold=0.5)
    for (y0, x0), row in zip(tiles, stats, strict=True):
        crop = frame[y0 : y0 + 16, x0 : x0 + 16].astype(np.float64)
        valid = np.isfinite(crop)
        expected = [
            (~valid).sum(),
            (crop[valid] >= 0.5).sum(),
            (1 - np.exp(-crop[valid])).sum(),
            crop[valid].sum(),
            (crop[valid] ** 2).sum(),
            crop[valid].min(),
            crop[valid].max(),
        ]
        np.testing.assert_allclose(row, expected, rtol=1e-9, atol=1e-9)
    all_nan = P.tile_stats(np.full((16, 16), np.nan), np.array([[0, 0]]), 16, 0.1)[0]
    assert all_nan[P.STAT_NAN] == 256 and all_nan[P.STAT_MIN] == np.inf
    assert all_nan[P.STAT_MAX] == -np.inf


def test_sequence_windows_rejects_gaps_never_shifts():
    step = pd.Timedelta("5min")
    times = pd.date_range("2020-01-01", periods=12, freq=step).delete([5])
    w = P.sequence_windows(times, step, length=3, stride=1)
    # Frames before the gap start windows 0..2; windows starting at 3, 4 need the missing frame.
    assert w.starts.tolist() == [0, 1, 2, 5, 6, 7, 8]
    assert w.n_gap == 2 and w.gap_starts.tolist() == [3, 4]
    assert w.n_candidates == 9
    # Every complete window spans exactly (length - 1) steps.
    span = times[w.starts + 2] - times[w.starts]
    assert (span == 2 * step).all()


def test_sequence_windows_stride_on_time_grid():
    step = pd.Timedelta("5min")
    times = pd.date_range("2020-01-01", periods=10, freq=step)
    w = P.sequence_windows(times, step, length=4, stride=3)
    assert w.starts.tolist() == [0, 3, 6]
    # Off-grid files (a 7-minute offset) never start a window.
    odd = times.append(pd.DatetimeIndex([times[-1] + pd.Timedelta("7min")]))
    assert P.sequence_windows(odd, step, 1, 1).starts.tolist() == list(range(10))


def test_window_sums_equal_loop():
    rng = np.random.default_rng(1)
    stats = rng.random((20, 3, 4))
    starts = np.array([0, 4, 16])
    sums = P.window_sums(stats, starts, 4)
    for s, got in zip(starts, sums, strict=True):
        np.testing.assert_allclose(got, stats[s : s + 4].sum(0))


def test_window_extremes():
    rng = np.random.default_rng(2)
    stats = rng.random((12, 2, P.N_STATS))
    starts = np.array([0, 3, 8])
    out = P.window_sums(stats, starts, 4)
    for s, got in zip(starts, out, strict=True):
        np.testing.assert_allclose(got[:, : P.N_SUMS], stats[s : s + 4, :, : P.N_SUMS].sum(0))
        np.testing.assert_array_equal(got[:, P.STAT_MIN], stats[s : s + 4, :, P.STAT_MIN].min(0))
        np.testing.assert_array_equal(got[:, P.STAT_MAX], stats[s : s + 4, :, P.STAT_MAX].max(0))


def test_dgmr_acceptance_formula():
    soft = np.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(P.dgmr_acceptance(soft), [2e-4, 2e-4 + 0.05, 2e-4 + 0.1])
    np.testing.assert_allclose(P.dgmr_acceptance(soft, q_min=0.2, m=1.0), [0.2, 0.7, 1.0])


def test_block_splits_follow_fractions():
    codes = P.block_splits(np.arange(20_000), {"train": 0.7, "val": 0.2, "test": 0.1}, seed=3)
    freq = np.bincount(codes, minlength=3) / len(codes)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.01)
    none_val = P.block_splits(np.arange(1000), {"train": 0.5, "test": 0.5}, seed=3)
    assert set(np.unique(none_val)) == {0, 2}


def test_block_split_guard_keeps_splits_apart():
    step = pd.Timedelta("10min")
    times = pd.date_range("2020-01-01", "2020-01-20", freq=step)
    first, last = times[:-5], times[5:]
    guard = pd.Timedelta("3h")
    codes = P.assign_splits_blocks(
        first,
        last,
        block=pd.Timedelta("1D"),
        fractions={"train": 0.5, "val": 0.25, "test": 0.25},
        guard=guard,
        seed=0,
    )
    assert set(np.unique(codes)) == {-1, 0, 1, 2}
    # Any two kept windows of different splits are more than `guard` apart.
    kept = codes >= 0
    f, e, c = first[kept].values, last[kept].values, codes[kept]
    for split in (1, 2):
        other = c != split
        gap_after = f[other][None, :] - e[c == split][:, None]
        gap_before = f[c == split][:, None] - e[other][None, :]
        distance = np.maximum(gap_after, gap_before)
        assert (distance > np.timedelta64(guard)).all()
    # Windows within one block and away from edges keep the block's split.
    inner = (first.normalize() == last.normalize()) & (first.hour >= 4) & (last.hour <= 19)
    assert (codes[inner] >= 0).all()


def test_range_splits_with_guard():
    first = pd.date_range("2020-01-01 00:00", periods=48, freq="30min")
    last = first + pd.Timedelta("1h")
    ranges = {"test": [["2020-01-01 10:00", "2020-01-01 16:00"]], "val": []}
    codes = P.assign_splits_ranges(first, last, ranges=ranges, guard=pd.Timedelta("1h"))
    for f, e, c in zip(first, last, codes, strict=True):
        near_test = (e + pd.Timedelta("1h") >= pd.Timestamp("2020-01-01 10:00")) and (
            f - pd.Timedelta("1h") <= pd.Timestamp("2020-01-01 16:00")
        )
        inside = f - pd.Timedelta("1h") >= pd.Timestamp("2020-01-01 10:00") and (
            e + pd.Timedelta("1h") <= pd.Timestamp("2020-01-01 16:00")
        )
        expected = 2 if inside else (-1 if near_test else 0)
        assert c == expected, (f, e)
    assert (codes == 2).sum() == 7 and (codes == 0).sum() > 20
    with pytest.raises(ValueError, match="ends before it starts"):
        P.assign_splits_ranges(
            first, last, ranges={"test": [["2020-01-02", "2020-01-01"]]}, guard=pd.Timedelta(0)
        )
