"""Ensemble scores: CRPS, rank histogram, reliability, Brier score, spread-skill.

- CRPS of the ensemble's empirical distribution, as :func:`pysteps.verification.probscores.CRPS`
  (Hersbach 2000), here with the equivalent sorted-member form
  ``mean|x_i - y| - sum_i (2i - M - 1) x_(i) / M**2``. Pooled CRPS (Ravuri et al. 2021)
  scores forecasts and observations average- or max-pooled over ``k x k`` windows; a window
  with an unscored pixel is not scored.
- Rank histogram as :func:`pysteps.verification.ensscores.rankhist` (ties broken at random,
  optional ``x_min`` below which values are tied), and its flatness: the reliability index
  ``sum_k |f_k - 1/(M+1)|`` (Delle Monache et al. 2006; 0 for a flat histogram).
- Reliability diagram as :func:`pysteps.verification.probscores.reldiag` for the exceedance
  probability ``P(X >= threshold)`` (:func:`pysteps.postprocessing.ensemblestats.excprob`),
  Brier score and Brier skill score against the sample climatology.
- Spread-skill ratio ``sqrt((M + 1) / M * mean variance) / RMSE(ensemble mean)`` (Fortin et al.
  2014; 1 for a reliable ensemble), and pysteps' ``ensemble_skill`` / ``ensemble_spread``
  (mean member RMSE, mean pairwise RMSE).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geogen.verification.interface import (
    Diagram,
    Metric,
    Pair,
    ScoreKey,
    VerificationError,
    as_scales,
    as_thresholds,
    register_metric,
)

POOLING_MODES: tuple[str, ...] = ("avg", "max")


# ---------------------------------------------------------------------------------------------
# CRPS
# ---------------------------------------------------------------------------------------------
def crps_per_pixel(forecast: np.ndarray, observation: np.ndarray) -> np.ndarray:
    """CRPS of the ensemble's empirical distribution at every pixel.

    Parameters
    ----------
    forecast
        ``(member, ...)`` ensemble values.
    observation
        ``(...)`` observed values.

    Returns
    -------
    numpy.ndarray
        ``(...)`` float64 CRPS, in the units of the inputs (NaN where any input is NaN).
    """
    forecast = np.asarray(forecast)
    observation = np.asarray(observation)
    if forecast.shape[1:] != observation.shape:
        raise VerificationError(
            f"forecast {forecast.shape} must be (member, *observation.shape) with observation "
            f"{observation.shape}"
        )
    members = forecast.shape[0]
    # Sorted once per pixel; each member's terms are formed in the input precision and
    # summed in float64 (no float64 copy of the ensemble).
    dtype = np.result_type(forecast, observation, np.float32)
    ordered = np.sort(forecast.astype(dtype, copy=False), axis=0)
    observed = observation.astype(dtype, copy=False)
    weights = (2.0 * np.arange(1, members + 1) - members - 1) / members
    out = np.zeros(observation.shape, dtype=np.float64)
    for i in range(members):
        out += np.abs(ordered[i] - observed)
        out -= weights[i] * ordered[i]
    out /= members
    return out


def crps(forecast: np.ndarray, observation: np.ndarray) -> float:
    """Mean CRPS over the finite pixels (the same as ``pysteps.verification.probscores.CRPS``).

    Parameters
    ----------
    forecast
        ``(member, ...)``.
    observation
        ``(...)``.
    """
    values = crps_per_pixel(forecast, observation)
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def pool(field: np.ndarray, size: int, mode: str, stride: int | None = None) -> np.ndarray:
    """Average or max pooling over ``size x size`` windows of the last two axes.

    Parameters
    ----------
    field
        ``(..., y, x)``; NaN propagates (a window with a NaN pixel is NaN).
    size
        Window width in pixels.
    mode
        ``"avg"`` or ``"max"``.
    stride
        Step between windows (default ``size``: non-overlapping). Windows lie fully inside
        the field (no padding).

    Returns
    -------
    numpy.ndarray
        ``(..., (y - size) // stride + 1, (x - size) // stride + 1)``.
    """
    if mode not in POOLING_MODES:
        raise VerificationError(f"unknown pooling {mode!r}; valid: {', '.join(POOLING_MODES)}")
    stride = size if stride is None else int(stride)
    ny, nx = field.shape[-2:]
    if size > min(ny, nx):
        raise VerificationError(f"pooling window {size} is larger than the field {ny} x {nx}")
    reduce = np.mean if mode == "avg" else np.max
    if stride == size:
        cy, cx = (ny // size) * size, (nx // size) * size
        if mode == "max":  # strided maxima: exact, and much faster than a 2-axis reduction
            columns = field[..., :cy, 0:cx:size].copy()
            for k in range(1, size):
                np.maximum(columns, field[..., :cy, k:cx:size], out=columns)
            blocks = columns[..., 0:cy:size, :].copy()
            for k in range(1, size):
                np.maximum(blocks, columns[..., k:cy:size, :], out=blocks)
            return blocks
        blocks = field[..., :cy, :cx].reshape(*field.shape[:-2], cy // size, size, cx // size, size)
        return reduce(blocks, axis=(-3, -1))
    windows = np.lib.stride_tricks.sliding_window_view(field, (size, size), axis=(-2, -1))
    return reduce(windows[..., ::stride, ::stride, :, :], axis=(-2, -1))


@register_metric("crps")
class ContinuousRankedProbabilityScore(Metric):
    """CRPS per pixel and pooled (mm/h), per lead time.

    Parameters
    ----------
    windows
        Pooling window widths in pixels (DGMR: 4 and 16); empty for per-pixel CRPS only.
    pooling
        Pooling modes, ``avg`` and/or ``max``.
    stride
        Step between pooling windows (default: the window width, non-overlapping windows).
    """

    def __init__(
        self,
        windows: Sequence[int] = (4, 16),
        pooling: Sequence[str] = POOLING_MODES,
        stride: int | None = None,
    ) -> None:
        self.windows = as_scales(windows, "CRPS pooling windows") if len(windows) else []
        unknown = set(pooling) - set(POOLING_MODES)
        if unknown:
            raise VerificationError(
                f"unknown pooling {sorted(unknown)}; valid: {', '.join(POOLING_MODES)}"
            )
        self.pooling = tuple(pooling)
        self.stride = None if stride is None else int(stride)

    def settings(self) -> dict[str, Any]:
        """Pooling windows, modes and stride."""
        return {"windows": self.windows, "pooling": list(self.pooling), "stride": self.stride}

    def _configs(self) -> list[tuple[int, str]]:
        return [(1, "none")] + [(w, p) for w in self.windows for p in self.pooling]

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """``sums``: ``(lead, config, 2)`` sum of CRPS and number of scored (pooled) pixels."""
        configs = self._configs()
        out = np.zeros((pair.leads, len(configs), 2))
        for lead in range(pair.leads):
            fct = pair.forecast[:, lead]
            obs = pair.observation[lead]
            for j, (size, mode) in enumerate(configs):
                if mode == "none":
                    f, o = fct, obs
                else:
                    f = pool(fct, size, mode, self.stride)
                    o = pool(obs, size, mode, self.stride)
                values = crps_per_pixel(f, o)
                finite = np.isfinite(values)
                out[lead, j] = values[finite].sum(), finite.sum()
        return {"sums": out}

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """Mean CRPS per configuration: ``(..., lead)``."""
        sums = stats["sums"]
        values = sums[..., 0] / sums[..., 1]
        return {
            ("crps", float("nan"), size, mode): values[..., j]
            for j, (size, mode) in enumerate(self._configs())
        }


# ---------------------------------------------------------------------------------------------
# rank histogram
# ---------------------------------------------------------------------------------------------
def rank_counts(
    forecast: np.ndarray,
    observation: np.ndarray,
    x_min: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Rank-histogram counts of the observation among the members.

    Parameters
    ----------
    forecast
        ``(member, ...)``.
    observation
        ``(...)``; pixels where anything is NaN are left out.
    x_min
        Values below ``x_min`` are tied (pysteps' ``X_min``); pixels where the observation
        and all members are below it are left out.
    rng
        Random generator breaking ties (the rank is uniform among tied positions).

    Returns
    -------
    numpy.ndarray
        ``(member + 1,)`` counts.
    """
    forecast = np.asarray(forecast)
    observation = np.asarray(observation)
    members = forecast.shape[0]
    f = forecast.reshape(members, -1)
    o = observation.reshape(-1)
    keep = np.isfinite(o) & np.isfinite(f).all(axis=0)
    if x_min is not None:
        keep &= (o >= x_min) | (f >= x_min).any(axis=0)
    f, o = f[:, keep], o[keep]
    if x_min is not None:
        f = np.where(f < x_min, x_min - 1, f)
        o = np.where(o < x_min, x_min - 1, o)
    below = np.count_nonzero(f < o, axis=0)
    ties = np.count_nonzero(f == o, axis=0)
    rank = below
    tied = ties > 0
    if tied.any():
        rng = rng if rng is not None else np.random.default_rng()
        rank = below.copy()
        rank[tied] += (rng.random(int(tied.sum())) * (ties[tied] + 1)).astype(np.int64)
    return np.bincount(rank, minlength=members + 1).astype(np.float64)


def rank_flatness(frequencies: np.ndarray) -> np.ndarray:
    """Reliability index ``sum_k |f_k - 1/K|`` of normalised histograms ``(..., K)``."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    return np.abs(frequencies - 1.0 / frequencies.shape[-1]).sum(axis=-1)


@register_metric("rank_histogram")
class RankHistogram(Metric):
    """Rank histogram per lead time and its flatness (reliability index).

    Parameters
    ----------
    x_min
        Rain rate (mm/h) below which values are tied and all-dry pixels skipped (pysteps'
        ``X_min``); ``None`` to rank every pixel.
    """

    random = True

    def __init__(self, x_min: float | None = 0.1) -> None:
        self.x_min = None if x_min is None else float(x_min)

    def settings(self) -> dict[str, Any]:
        """``x_min``."""
        return {"x_min": self.x_min}

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """``counts``: ``(lead, member + 1)``."""
        counts = np.stack(
            [
                rank_counts(pair.forecast[:, lead], pair.observation[lead], self.x_min, rng)
                for lead in range(pair.leads)
            ]
        )
        return {"counts": counts}

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """``rank_flatness``: ``(..., lead)``."""
        counts = stats["counts"]
        freq = counts / counts.sum(axis=-1, keepdims=True)
        return {("rank_flatness", float("nan"), 1, "none"): rank_flatness(freq)}

    def diagrams(self, stats: Mapping[str, np.ndarray]) -> list[Diagram]:
        """Normalised rank histogram per lead."""
        counts = stats["counts"]
        freq = counts / counts.sum(axis=-1, keepdims=True)
        ranks = np.broadcast_to(np.arange(counts.shape[-1], dtype=np.float64), counts.shape)
        return [Diagram("rank_histogram", float("nan"), ranks.copy(), freq, counts)]


# ---------------------------------------------------------------------------------------------
# reliability and Brier score
# ---------------------------------------------------------------------------------------------
def exceedance_probability(forecast: np.ndarray, threshold: float) -> np.ndarray:
    """Fraction of members ``>= threshold``: ``(member, ...) -> (...)`` (NaN kept)."""
    forecast = np.asarray(forecast)
    prob = np.count_nonzero(forecast >= threshold, axis=0) / forecast.shape[0]
    return np.where(np.isfinite(forecast).all(axis=0), prob, np.nan)


def reliability_statistics(
    probability: np.ndarray, observation: np.ndarray, threshold: float, n_bins: int = 10
) -> np.ndarray:
    """Reliability-diagram sums per probability bin (pysteps' ``reldiag_accum`` bins).

    Returns
    -------
    numpy.ndarray
        ``(n_bins, 3)``: sum of forecast probabilities, number of observed events
        (``observation >= threshold``), number of pixels.
    """
    p = np.asarray(probability, dtype=np.float64).ravel()
    o = np.asarray(observation).ravel()
    keep = np.isfinite(p) & np.isfinite(o)
    p, event = p[keep], (o[keep] >= threshold).astype(np.float64)
    edges = np.linspace(-1e-6, 1 + 1e-6, int(n_bins) + 1)
    idx = np.digitize(p, edges, right=True) - 1
    inside = (idx >= 0) & (idx < n_bins)
    idx, p, event = idx[inside], p[inside], event[inside]
    return np.stack(
        [
            np.bincount(idx, weights=p, minlength=n_bins),
            np.bincount(idx, weights=event, minlength=n_bins),
            np.bincount(idx, minlength=n_bins).astype(np.float64),
        ],
        axis=-1,
    )


def reliability_curve(sums: np.ndarray, min_count: float = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean forecast probability and observed frequency per bin from ``(..., n_bins, 3)`` sums.

    Bins with fewer than ``min_count`` pixels are NaN (pysteps applies ``min_count`` to each
    accumulated batch; here it applies to the totals).
    """
    count = sums[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        prob = np.where(count >= min_count, sums[..., 0] / count, np.nan)
        freq = np.where(count >= min_count, sums[..., 1] / count, np.nan)
    return prob, freq


@register_metric("reliability")
class Reliability(Metric):
    """Reliability diagrams, Brier score and Brier skill score of exceedance probabilities.

    Parameters
    ----------
    thresholds
        Rain-rate thresholds (mm/h); the event is ``value >= threshold``.
    n_bins
        Probability bins of the diagram.
    min_count
        Bins with fewer pixels are not drawn.
    """

    summed_only = ("bins",)

    def __init__(
        self,
        thresholds: Sequence[float] = (0.5, 1, 2, 4, 8, 16),
        n_bins: int = 10,
        min_count: int = 10,
    ) -> None:
        self.thresholds = as_thresholds(thresholds)
        if n_bins < 1:
            raise VerificationError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = int(n_bins)
        self.min_count = int(min_count)

    def settings(self) -> dict[str, Any]:
        """Thresholds and bins."""
        return {
            "thresholds": self.thresholds.tolist(),
            "n_bins": self.n_bins,
            "min_count": self.min_count,
        }

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Brier sums and reliability bins.

        ``brier``: ``(lead, threshold, 3)`` (sum of squared errors, events, pixels);
        ``bins``: ``(lead, threshold, n_bins, 3)``.
        """
        n_thr = self.thresholds.size
        brier = np.zeros((pair.leads, n_thr, 3))
        bins = np.zeros((pair.leads, n_thr, self.n_bins, 3))
        members = pair.members
        # The probability is k / M for k members at or above the threshold: count pixels per
        # (k, event) once, then bin the M + 1 probabilities (the bins of pysteps' reldiag).
        k = np.arange(members + 1)
        prob = k / members
        edges = np.linspace(-1e-6, 1 + 1e-6, self.n_bins + 1)
        bin_of_k = np.digitize(prob, edges, right=True) - 1
        for lead in range(pair.leads):
            valid = pair.valid[lead]
            fct = pair.forecast[:, lead].reshape(members, -1)
            obs = pair.observation[lead].reshape(-1)
            if not valid.all():
                fct, obs = fct[:, valid.ravel()], obs[valid.ravel()]
            for j, t in enumerate(self.thresholds):
                count = np.count_nonzero(fct >= t, axis=0)
                event = obs >= t
                table = np.bincount(count + (members + 1) * event, minlength=2 * (members + 1))
                pixels = table.reshape(2, members + 1).astype(np.float64)  # (no event, event)
                n_k, e_k = pixels.sum(axis=0), pixels[1]
                brier[lead, j] = (
                    np.sum(n_k * prob**2 - 2.0 * prob * e_k + e_k),
                    e_k.sum(),
                    n_k.sum(),
                )
                for column, values in enumerate((n_k * prob, e_k, n_k)):
                    bins[lead, j, :, column] = np.bincount(
                        bin_of_k, weights=values, minlength=self.n_bins
                    )[: self.n_bins]
        return {"brier": brier, "bins": bins}

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """``brier`` and ``brier_skill`` (vs sample climatology) per threshold: ``(..., lead)``."""
        b = stats["brier"]
        bs = b[..., 0] / b[..., 2]
        base_rate = b[..., 1] / b[..., 2]
        bss = 1.0 - bs / (base_rate * (1.0 - base_rate))
        out: dict[ScoreKey, np.ndarray] = {}
        for k, t in enumerate(self.thresholds):
            out[("brier", float(t), 1, "none")] = bs[..., k]
            out[("brier_skill", float(t), 1, "none")] = bss[..., k]
        return out

    def diagrams(self, stats: Mapping[str, np.ndarray]) -> list[Diagram]:
        """Reliability curve per threshold (``count``: pixels per bin, the sharpness)."""
        prob, freq = reliability_curve(stats["bins"], self.min_count)
        return [
            Diagram("reliability", float(t), prob[:, k], freq[:, k], stats["bins"][:, k, :, 2])
            for k, t in enumerate(self.thresholds)
        ]


# ---------------------------------------------------------------------------------------------
# spread and skill
# ---------------------------------------------------------------------------------------------
def member_rmse(forecast: np.ndarray, observation: np.ndarray) -> np.ndarray:
    """RMSE of each member against the observation over finite pixels: ``(member,)``."""
    forecast = np.asarray(forecast, dtype=np.float64)
    members = forecast.shape[0]
    f = forecast.reshape(members, -1)
    o = np.asarray(observation, dtype=np.float64).reshape(-1)
    keep = np.isfinite(o) & np.isfinite(f).all(axis=0)
    err = f[:, keep] - o[keep]
    return np.sqrt(np.einsum("ij,ij->i", err, err) / keep.sum())


def pairwise_rmse(forecast: np.ndarray) -> np.ndarray:
    """RMSE between every pair of members over pixels finite in all: ``(member, member)``."""
    forecast = np.asarray(forecast, dtype=np.float64)
    members = forecast.shape[0]
    f = forecast.reshape(members, -1)
    finite = np.isfinite(f).all(axis=0)
    if not finite.all():
        f = f[:, finite]
    # einsum, not a BLAS matmul: for (member, pixel) operands, a threaded BLAS on a loaded
    # machine ran this Gram matrix ~1000x slower than einsum's single-threaded loop.
    gram = np.einsum("ik,jk->ij", f, f)
    sq = np.diag(gram)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    return np.sqrt(dist2 / f.shape[1])


def ensemble_skill(forecast: np.ndarray, observation: np.ndarray) -> float:
    """Mean member RMSE (``pysteps.verification.ensscores.ensemble_skill(..., "RMSE")``)."""
    return float(member_rmse(forecast, observation).mean())


def ensemble_spread(forecast: np.ndarray) -> float:
    """Mean pairwise member RMSE (pysteps' ``ensemble_spread(forecast, "RMSE")``)."""
    members = np.shape(forecast)[0]
    if members < 2:
        raise VerificationError("ensemble spread needs at least 2 members")
    upper = np.triu_indices(members, k=1)
    return float(pairwise_rmse(forecast)[upper].mean())


@register_metric("spread_skill")
class SpreadSkill(Metric):
    """Spread-skill ratio, ensemble spread, and pysteps' ensemble skill/spread (RMSE), per lead.

    Outputs: ``spread_skill`` (Fortin et al. 2014), ``spread`` (square root of the mean
    ensemble variance, mm/h), ``ensemble_skill`` (mean member RMSE) and ``ensemble_spread``
    (mean pairwise member RMSE), the last two averaged over cases.
    """

    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Ensemble moments and pysteps' per-case skill and spread.

        ``moments``: ``(lead, 4)`` sums of variance, corrected variance, squared error of the
        mean, pixels; ``pysteps``: ``(lead, 3)`` ensemble skill, spread, 1 (per case).
        """
        members = pair.members
        moments = np.zeros((pair.leads, 4))
        per_case = np.zeros((pair.leads, 3))
        factor = (members + 1) / members
        for lead in range(pair.leads):
            valid = pair.valid[lead]
            n = valid.sum()
            if n == 0:
                continue
            f = pair.forecast[:, lead].reshape(members, -1)
            o = pair.observation[lead].reshape(-1)
            if n < valid.size:
                f, o = f[:, valid.ravel()], o[valid.ravel()]
            f = f.astype(np.float64)
            o = o.astype(np.float64)
            mean = f.mean(axis=0)
            if members > 1:
                deviation = f - mean
                var = np.einsum("ij,ij->", deviation, deviation) / (members - 1)
            else:
                var = np.nan
            moments[lead] = var, factor * var, np.sum((mean - o) ** 2), n
            error = f - o
            skill = float(np.sqrt(np.einsum("ij,ij->i", error, error) / n).mean())
            spread = ensemble_spread(f) if members > 1 else np.nan
            per_case[lead] = skill, spread, 1.0
        return {"moments": moments, "pysteps": per_case}

    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """The four outputs: ``(..., lead)``."""
        m = stats["moments"]
        p = stats["pysteps"]
        nan = float("nan")
        return {
            ("spread_skill", nan, 1, "none"): np.sqrt(m[..., 1] / m[..., 3])
            / np.sqrt(m[..., 2] / m[..., 3]),
            ("spread", nan, 1, "none"): np.sqrt(m[..., 0] / m[..., 3]),
            ("ensemble_skill", nan, 1, "none"): p[..., 0] / p[..., 2],
            ("ensemble_spread", nan, 1, "none"): p[..., 1] / p[..., 2],
        }
