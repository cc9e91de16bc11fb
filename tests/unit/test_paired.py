"""Paired bootstrap of score differences, resampling groups of cases (forecast start times)."""

from __future__ import annotations

import numpy as np
import pytest

from geogen.verification import VerificationError
from geogen.verification.paired import group_resample_counts, paired_differences
from geogen.verification.scoring import Scorer

SETTINGS = {"metrics": ["crps"], "bootstrap": {"n": 0}}


def test_group_counts_move_whole_groups():
    groups = ["a", "a", "b", "c", "c", "c"]
    counts = group_resample_counts(groups, 500, seed=1)
    assert counts.shape == (500, 6)
    assert (counts[:, 0] == counts[:, 1]).all() and (counts[:, 3] == counts[:, 5]).all()
    # as many groups drawn as there are groups
    per_group = counts[:, [0, 2, 3]]
    assert (per_group.sum(axis=1) == 3).all()
    assert np.array_equal(counts, group_resample_counts(groups, 500, seed=1))


def scored(shift: float, n_cases: int = 8, duplicate: bool = False):
    """Two deterministic models: a = obs + noise >= 0 away, b = a + shift (same side)."""
    scorer = Scorer(SETTINGS)
    for case in range(n_cases):
        source = case // 2 if duplicate else case
        local = np.random.default_rng([source, 7])
        obs = local.gamma(0.7, 3.0, (2, 16, 16)).astype(np.float32)
        error = local.gamma(1.0, 0.5 + source, (2, 16, 16)).astype(np.float32)
        a = (obs + error)[None]
        b = (obs + error + shift)[None]
        scorer.add_case(f"case{case}", {"a": a, "b": b}, obs, [30, 60])
    return scorer.result({"case_t0": {f"case{c}": f"t{c // 2}" for c in range(n_cases)}})


def test_constant_difference_has_a_zero_width_paired_interval():
    """|b - obs| = |a - obs| + 0.25 at every pixel: CRPS(b) - CRPS(a) = 0.25 in every resample,
    while each model's own interval over cases is wide."""
    result = scored(0.25)
    table = paired_differences(result, reference="a", n_boot=300)
    row = table[(table.model == "b") & (table.lead_time == 60)].iloc[0]
    assert row.difference == pytest.approx(0.25, abs=1e-5)
    assert row.ci_low == pytest.approx(0.25, abs=1e-5) and row.ci_high == pytest.approx(
        0.25, abs=1e-5
    )
    assert row.value_ci_high - row.value_ci_low > 0.5
    assert row.n_groups == 4 and row.n_cases == 8
    own = table[(table.model == "a")]
    assert (own.difference == 0).all()


def test_groups_widen_the_interval_of_duplicated_cases():
    """Cases in pairs of identical copies: resampling copies as independent cases understates
    the uncertainty; resampling the start times does not."""
    result = scored(0.0, n_cases=16, duplicate=True)
    by_time = paired_differences(result, reference="b", n_boot=4000, seed=3)
    by_case = paired_differences(
        result, reference="b", n_boot=4000, seed=3, groups=result.metadata["cases"]
    )
    width = lambda t: float(  # noqa: E731
        (t.value_ci_high - t.value_ci_low)[(t.model == "a") & (t.lead_time == 30)].iloc[0]
    )
    assert width(by_time) > 1.2 * width(by_case)


def test_errors():
    result = scored(0.1, n_cases=4)
    with pytest.raises(VerificationError, match="reference"):
        paired_differences(result, reference="steps")
    with pytest.raises(VerificationError, match="not scored"):
        paired_differences(result, reference="a", key=("fss", 1.0, 16, "none"))
    with pytest.raises(VerificationError, match="group labels"):
        paired_differences(result, reference="a", groups=["x"])
