"""Paired, grouped bootstrap of score differences between models scored on the same cases.

Crops cut from one radar sequence at one forecast start time overlap and share their
weather: they are not independent cases. The resampling unit here is a *group* of cases (by
default the cases of one start time, ``metadata["case_t0"]`` of
:func:`~geogen.verification.scoring.score_store`): each resample draws groups uniformly
with replacement, every case of a drawn group counts as often as its group was drawn (times
its importance weight), and each model's score is recomputed from the resampled sums of its
per-case statistics. The same draws serve every model, so the interval of ``model -
reference`` is *paired*: the case-to-case variation both models share cancels.

::

    result = score_store("mch.zarr", specs, split="test")
    table = paired_differences(result, reference="pysteps_steps")
    table[(table.model == "dgmr_advect") & (table.lead_time == 60)]
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

from geogen.verification.bootstrap import confidence_interval
from geogen.verification.interface import ScoreKey, VerificationError

#: Columns of :func:`paired_differences`.
PAIRED_COLUMNS = (
    "model",
    "reference",
    "lead_time",
    "metric",
    "value",
    "reference_value",
    "difference",
    "ci_low",
    "ci_high",
    "value_ci_low",
    "value_ci_high",
    "n_cases",
    "n_groups",
)


def group_resample_counts(groups: Sequence[Hashable], n_boot: int, seed: int = 0) -> np.ndarray:
    """How often each case is drawn, resampling whole groups: ``(n_boot, n_cases)`` int.

    Groups are drawn uniformly with replacement, as many as there are groups; a case counts
    as often as its group was drawn.
    """
    if len(groups) < 1 or n_boot < 1:
        raise VerificationError(f"bootstrap needs cases and resamples, got {len(groups)}, {n_boot}")
    labels, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(labels.size, np.full(labels.size, 1.0 / labels.size), size=n_boot)
    return drawn[:, inverse]


def paired_differences(
    result: object,
    reference: str,
    *,
    key: ScoreKey = ("crps", float("nan"), 1, "none"),
    metric: str | None = None,
    groups: Sequence[Hashable] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Each model's score minus ``reference``'s per lead time, with paired grouped intervals.

    Parameters
    ----------
    result
        A :class:`~geogen.verification.scoring.ScoreResult` (with its ``states``).
    reference
        The model subtracted (e.g. ``"pysteps_steps"``).
    key
        The score: ``(name, threshold, scale, pooling)``; default the pixel CRPS.
    metric
        The registered metric that produces ``key`` (default: ``key``'s name).
    groups
        A group label per case, in the order of ``result.metadata["cases"]``; default: the
        forecast start time of each case (``metadata["case_t0"]``), else every case alone.
    n_boot, seed, confidence
        Resamples, their seed, and the interval's coverage.

    Returns
    -------
    One row per (model, lead): ``value`` (the model's score), ``difference`` (``value -
    reference_value``, negative: the model's score is lower), its interval ``ci_low`` /
    ``ci_high``, the model's own grouped interval ``value_ci_low`` / ``value_ci_high``, the
    number of cases and of groups (see :data:`PAIRED_COLUMNS`).

    Raises
    ------
    VerificationError
        When ``reference`` or the metric was not scored, or models were scored on different
        cases of a lead time.
    """
    name = metric or key[0]
    states, metrics = getattr(result, "states", {}), getattr(result, "metrics", {})
    if name not in metrics:
        raise VerificationError(f"metric {name!r} was not scored (scored: {sorted(metrics)})")
    cases = list(result.metadata.get("cases") or [])
    if groups is None:
        t0 = result.metadata.get("case_t0") or {}
        groups = [t0.get(case, case) for case in cases]
    groups = list(groups)
    if len(groups) != len(cases):
        raise VerificationError(f"{len(groups)} group labels for {len(cases)} cases")
    leads = sorted({lead for (_, lead, m) in states if m == name})
    models = list(dict.fromkeys(model for (model, _, m) in states if m == name))
    if reference not in models:
        raise VerificationError(f"reference {reference!r} not scored; models: {models}")
    counts = group_resample_counts(groups, n_boot, seed) if len(cases) >= 2 else None
    scorer = metrics[name]
    wanted = (key[0], key[1], int(key[2]), key[3])
    rows = []
    for lead in leads:
        values, draws = {}, {}
        for model in models:
            state = states.get((model, lead, name))
            if state is None:
                continue
            if state.n_cases != len(cases):
                raise VerificationError(
                    f"{model} at +{lead} min has {state.n_cases} cases of {len(cases)}: "
                    "paired differences need every model scored on every case"
                )
            values[model] = _pick(scorer.compute(state), wanted)[0]
            if counts is not None:
                weights = counts * np.asarray(state.weights)[None, :]
                stats = {
                    k: np.tensordot(weights, v, axes=(1, 0)) for k, v in state.case_arrays().items()
                }
                with np.errstate(divide="ignore", invalid="ignore"):
                    draws[model] = _pick(scorer.scores(stats), wanted)[:, 0]
        for model, value in values.items():
            low = high = value_low = value_high = np.nan
            if counts is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    diff = draws[model] - draws[reference]
                    low, high = (float(v) for v in confidence_interval(diff, confidence))
                    value_low, value_high = (
                        float(v) for v in confidence_interval(draws[model], confidence)
                    )
            rows.append(
                {
                    "model": model,
                    "reference": reference,
                    "lead_time": int(lead),
                    "metric": key[0],
                    "value": float(value),
                    "reference_value": float(values[reference]),
                    "difference": float(value - values[reference]),
                    "ci_low": low,
                    "ci_high": high,
                    "value_ci_low": value_low,
                    "value_ci_high": value_high,
                    "n_cases": len(cases),
                    "n_groups": len(set(map(str, groups))),
                }
            )
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


def _pick(scores: dict, key: tuple) -> np.ndarray:
    for (name, threshold, scale, pooling), value in scores.items():
        same_threshold = (np.isnan(threshold) and np.isnan(key[1])) or threshold == key[1]
        if (name, int(scale), pooling) == (key[0], key[2], key[3]) and same_threshold:
            return np.asarray(value, dtype=np.float64)
    raise VerificationError(f"score {key} not among {sorted(k[0] for k in scores)}")
