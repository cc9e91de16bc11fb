"""The metric interface: pairs, streaming metric states, and the registry of metrics by name.

Every metric follows pysteps' streaming pattern, vectorised over members and lead times::

    from geogen.verification import get_metric

    crps = get_metric("crps", windows=[4, 16])
    state = crps.init()
    for forecast, observation, weight in cases:       # (member, lead, y, x), (lead, y, x)
        crps.accum(state, forecast, observation, weight=weight)
    values = crps.compute(state)           # {(name, threshold, scale, pooling): (lead,)}

A metric turns one case into *sufficient statistics* per lead time (sums, counts,
histograms), :meth:`Metric.statistics`; statistics of several cases add up (weighted by each
case's importance weight, ``1 / sample_prob`` for DGMR-sampled crops), and
:meth:`Metric.scores` turns summed statistics into scores. Because the per-case statistics
are kept (:class:`MetricState`), weighted bootstrap confidence intervals come from the same
sums (:mod:`geogen.verification.bootstrap`). Statistics that only feed diagrams (reliability
bins, power spectra) are summed as they come.

NaN convention: a pixel is scored where the observation and every member are finite;
:class:`Pair` applies that mask to both.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from geogen.registry import Registry

log = logging.getLogger(__name__)

#: ``(metric, threshold, scale, pooling)``: the key of one score curve (``threshold`` NaN
#: where it does not apply, ``scale`` in pixels, ``pooling`` ``none``/``avg``/``max``).
ScoreKey = tuple[str, float, int, str]


class VerificationError(ValueError):
    """Inputs that cannot be scored (shape, grid or time mismatch, NaN policy, bad setting)."""


@dataclass
class Pair:
    """One forecast-observation case, aligned and masked.

    Parameters
    ----------
    forecast
        ``(member, lead, y, x)`` float32 in mm/h.
    observation
        ``(lead, y, x)`` float32 in mm/h.

    Pixels where the observation or any member is not finite are not scored: both arrays
    hold NaN there, and :attr:`valid` is False.
    """

    forecast: np.ndarray
    observation: np.ndarray
    valid: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        forecast = np.asarray(self.forecast, dtype=np.float32)
        observation = np.asarray(self.observation, dtype=np.float32)
        if forecast.ndim != 4:
            raise VerificationError(
                f"forecast must be (member, lead, y, x), got shape {forecast.shape}"
            )
        if observation.shape != forecast.shape[1:]:
            raise VerificationError(
                f"observation shape {observation.shape} does not match the forecast's "
                f"(lead, y, x) = {forecast.shape[1:]}"
            )
        valid = np.isfinite(observation) & np.isfinite(forecast).all(axis=0)
        if not valid.all():
            forecast = np.where(valid, forecast, np.float32(np.nan))
            observation = np.where(valid, observation, np.float32(np.nan))
        self.forecast, self.observation, self.valid = forecast, observation, valid

    @property
    def members(self) -> int:
        """Ensemble size."""
        return int(self.forecast.shape[0])

    @property
    def leads(self) -> int:
        """Number of lead times."""
        return int(self.forecast.shape[1])

    @cached_property
    def ensemble_mean(self) -> np.ndarray:
        """``(lead, y, x)`` float32 mean of the members (NaN where not scored)."""
        return self.forecast.mean(axis=0, dtype=np.float64).astype(np.float32)

    @cached_property
    def n_valid(self) -> np.ndarray:
        """``(lead,)`` number of scored pixels."""
        return self.valid.sum(axis=(-2, -1))

    def lead(self, index: int) -> Pair:
        """The pair restricted to one lead time (keeps the lead axis, length 1)."""
        sub = object.__new__(Pair)
        sub.forecast = self.forecast[:, index : index + 1]
        sub.observation = self.observation[index : index + 1]
        sub.valid = self.valid[index : index + 1]
        return sub


@dataclass
class Diagram:
    """A diagnostic curve per lead time (rank histogram, reliability, power spectrum).

    ``x``, ``y`` and ``count`` have shape ``(lead, n)``.
    """

    diagram: str
    threshold: float
    x: np.ndarray
    y: np.ndarray
    count: np.ndarray | None = None


@dataclass
class MetricState:
    """Statistics of the cases seen so far (see :meth:`Metric.init`).

    ``cases`` maps a statistic name to a list of per-case arrays ``(lead, ...)``,
    ``weights`` holds each case's weight, ``totals`` the weighted sums of the statistics
    that are only summed.
    """

    metric: str
    cases: dict[str, list[np.ndarray]] = field(default_factory=dict)
    weights: list[float] = field(default_factory=list)
    totals: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_cases(self) -> int:
        """Number of cases accumulated."""
        return len(self.weights)

    def case_arrays(self) -> dict[str, np.ndarray]:
        """Per-case statistics stacked: ``(case, lead, ...)``."""
        return {key: np.stack(values) for key, values in self.cases.items()}

    def summed(self, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Weighted sums of every statistic (``weights`` override the stored ones)."""
        w = np.asarray(self.weights if weights is None else weights, dtype=np.float64)
        out = {
            key: np.tensordot(w, np.stack(values).astype(np.float64), axes=(0, 0))
            for key, values in self.cases.items()
        }
        out.update(self.totals)
        return out


class Metric(abc.ABC):
    """A verification metric, streaming over cases (pysteps' init/accum/merge/compute).

    Subclasses implement :meth:`statistics` (pure numpy, vectorised over members and leads)
    and :meth:`scores` (summed statistics -> scores; works on arrays with extra leading
    dimensions, used by the bootstrap), and list in :attr:`summed_only` the statistics that
    feed only :meth:`diagrams`.
    """

    name: ClassVar[str] = ""
    #: Statistics that are summed as they come rather than kept per case.
    summed_only: ClassVar[tuple[str, ...]] = ()
    #: Whether statistics need a random generator (rank histogram ties).
    random: ClassVar[bool] = False

    @abc.abstractmethod
    def statistics(self, pair: Pair, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Sufficient statistics of one case: name -> array ``(lead, ...)`` (float64)."""

    @abc.abstractmethod
    def scores(self, stats: Mapping[str, np.ndarray]) -> dict[ScoreKey, np.ndarray]:
        """Scores from summed statistics: key -> array ``(..., lead)``."""

    def diagrams(self, stats: Mapping[str, np.ndarray]) -> list[Diagram]:
        """Diagnostic curves from summed statistics (none by default)."""
        return []

    def settings(self) -> dict[str, Any]:
        """The metric's settings (for reports)."""
        return {}

    # -- streaming API ----------------------------------------------------------------------
    def init(self) -> MetricState:
        """An empty state."""
        return MetricState(self.name)

    def accum(
        self,
        state: MetricState,
        forecast: np.ndarray | Pair,
        observation: np.ndarray | None = None,
        *,
        weight: float = 1.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        """Add one case with importance ``weight``.

        ``forecast`` is ``(member, lead, y, x)`` and ``observation`` ``(lead, y, x)``, in mm/h
        (or ``forecast`` is a ready :class:`Pair`).
        """
        pair = forecast if isinstance(forecast, Pair) else Pair(forecast, observation)
        self.accum_statistics(state, self.statistics(pair, rng), weight=weight)

    def accum_statistics(
        self, state: MetricState, stats: Mapping[str, np.ndarray], *, weight: float = 1.0
    ) -> None:
        """Add one case's precomputed statistics (from :meth:`statistics`)."""
        if not np.isfinite(weight) or weight < 0:
            raise VerificationError(f"case weights must be finite and >= 0, got {weight}")
        for key, value in stats.items():
            value = np.asarray(value, dtype=np.float64)
            if key in self.summed_only:
                if key in state.totals and state.totals[key].shape != value.shape:
                    raise VerificationError(
                        f"{self.name}: statistic {key!r} has shape {value.shape} in this case "
                        f"and {state.totals[key].shape} before (fields of different sizes?)"
                    )
                state.totals[key] = state.totals.get(key, 0.0) + weight * value
            else:
                state.cases.setdefault(key, []).append(value)
        state.weights.append(float(weight))

    def merge(self, first: MetricState, second: MetricState) -> MetricState:
        """A state holding the cases of both."""
        if first.metric != second.metric:
            raise VerificationError(f"cannot merge {first.metric} with {second.metric}")
        out = MetricState(first.metric)
        for state in (first, second):
            for key, values in state.cases.items():
                out.cases.setdefault(key, []).extend(values)
            for key, value in state.totals.items():
                out.totals[key] = out.totals.get(key, 0.0) + value
            out.weights.extend(state.weights)
        return out

    def compute(self, state: MetricState) -> dict[ScoreKey, np.ndarray]:
        """Scores of the accumulated cases (weighted): key -> ``(lead,)``."""
        if state.n_cases == 0:
            raise VerificationError(f"{self.name}: no case accumulated")
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.scores(state.summed())

    def compute_diagrams(self, state: MetricState) -> list[Diagram]:
        """Diagnostic curves of the accumulated cases."""
        if state.n_cases == 0:
            return []
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.diagrams(state.summed())


#: The metrics by name. The modules that define metrics are imported by name on first lookup
#: (importing one registers its metrics), so this module imports none of them.
METRICS: Registry[Metric] = Registry(
    "metric",
    error=VerificationError,
    builtin_modules=(
        "geogen.verification.categorical",
        "geogen.verification.continuous",
        "geogen.verification.paper",
        "geogen.verification.probabilistic",
        "geogen.verification.spatial",
        "geogen.verification.spectra",
    ),
)


def register_metric(name: str) -> Callable[[type[Metric]], type[Metric]]:
    """Register a :class:`Metric` class under ``name``."""
    return METRICS.register(name)  # type: ignore[return-value]


def available_metrics() -> list[str]:
    """Names of the registered metrics."""
    return METRICS.names()


def get_metric(name: str, **settings: Any) -> Metric:
    """Build the metric registered under ``name`` with its settings.

    Raises
    ------
    VerificationError
        For an unknown name (the message lists the valid ones) or invalid settings.
    """
    cls = METRICS.factory(name)
    try:
        return cls(**settings)
    except TypeError as exc:
        raise VerificationError(f"invalid settings for metric {name!r}: {exc}") from None


def as_thresholds(values: Sequence[float] | float) -> np.ndarray:
    """Thresholds as a sorted float64 array (errors for empty or non-finite ones)."""
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise VerificationError(f"thresholds must be finite numbers, got {values}")
    return arr


def as_scales(values: Sequence[int] | int, what: str = "scales") -> list[int]:
    """Spatial scales in pixels as positive ints."""
    out = [int(v) for v in np.atleast_1d(values)]
    if not out or any(v < 1 for v in out):
        raise VerificationError(f"{what} must be positive pixel counts, got {values}")
    return out
