"""Forecast verification: metrics (pysteps-equal, vectorised), scoring over cases, plots, report.

- :func:`get_metric` / :func:`available_metrics`: metrics by name, each with pysteps'
  streaming API (``init``/``accum``/``merge``/``compute``); see
  :mod:`geogen.verification.interface`.
- Pure functions: :func:`contingency_table`, :func:`categorical_scores`, :func:`fss`,
  :func:`crps`, :func:`crps_per_pixel`, :func:`pool`, :func:`rank_counts`,
  :func:`reliability_statistics`, :func:`ensemble_skill`, :func:`ensemble_spread`,
  :func:`rapsd`, and in the normalised log units of Leinonen et al. (2020)
  :func:`to_paper_units`, :func:`log_spectral_distance`, :func:`ms_ssim`.
- :func:`score` (also ``geogen.score``): an ensemble ``DataArray`` against its observation,
  to an ``xarray.Dataset`` of scores over ``lead_time``, ``threshold`` and ``scale``.
- :mod:`geogen.verification.scoring`: forecast files against archive observations, or
  models over the cases of a crop store, to a tidy table of scores.
- :mod:`geogen.verification.downscale`: downscaled files against the high-resolution truth
  (``geogen-score task=downscale``), or downscalers over a downscale store.
"""

from geogen.verification.api import score, scores_to_dataset
from geogen.verification.categorical import (
    CATEGORICAL_SCORES,
    categorical_scores,
    contingency_table,
)
from geogen.verification.continuous import error_sums
from geogen.verification.interface import (
    Diagram,
    Metric,
    MetricState,
    Pair,
    VerificationError,
    available_metrics,
    get_metric,
    register_metric,
)
from geogen.verification.paper import log_spectral_distance, ms_ssim, to_paper_units
from geogen.verification.probabilistic import (
    crps,
    crps_per_pixel,
    ensemble_skill,
    ensemble_spread,
    exceedance_probability,
    pool,
    rank_counts,
    rank_flatness,
    reliability_curve,
    reliability_statistics,
)
from geogen.verification.spatial import box_sum, fss, fss_statistics
from geogen.verification.spectra import rapsd

__all__ = [
    "CATEGORICAL_SCORES",
    "Diagram",
    "Metric",
    "MetricState",
    "Pair",
    "VerificationError",
    "available_metrics",
    "box_sum",
    "categorical_scores",
    "contingency_table",
    "crps",
    "crps_per_pixel",
    "ensemble_skill",
    "ensemble_spread",
    "error_sums",
    "exceedance_probability",
    "fss",
    "fss_statistics",
    "get_metric",
    "log_spectral_distance",
    "ms_ssim",
    "pool",
    "rank_counts",
    "rank_flatness",
    "rapsd",
    "register_metric",
    "reliability_curve",
    "reliability_statistics",
    "score",
    "scores_to_dataset",
    "to_paper_units",
]
