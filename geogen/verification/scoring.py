"""Scoring forecasts over cases, into tidy tables.

Forecast files are scored against archive observations; models are scored over the test
cases of a crop store (or on the cases of the files).

- :class:`Scorer` accumulates cases (``add_case``) per model and lead time and produces the
  tidy tables (:meth:`Scorer.result`); it holds no I/O.
- :func:`score_files`: forecast files (any region, deterministic or ensemble) against the
  observations read from the same archive at the same grid cells; models given by name are
  run on the same cases.
- :func:`score_store`: models run on the context frames of each crop of a store split and
  scored against its lead frames, each case weighted by ``1 / sample_prob``.

Conventions (see the README):

- A pixel is scored where the observation is finite and every forecast of the case is
  finite: models scored together are compared on the same pixels. NaN in the observation
  (outside the radar domain, missing frames) is not scored and is counted. NaN in a forecast
  where the observation is valid (pixels advected in from outside the grid by extrapolation)
  is excluded for every model of the case with a warning (``forecast_nan: exclude``, the
  default), or an error (``forecast_nan: raise``).
- A forecast whose members are all identical (a deterministic method) is scored as one member.

The code lives in :mod:`~geogen.verification.settings` (settings, table columns),
:mod:`~geogen.verification.scorer` (the accumulator), :mod:`~geogen.verification.files`
(forecast files against the archive) and :mod:`~geogen.verification.store_cases` (models over
a crop store); this module gathers their public names.
"""

from __future__ import annotations

from geogen.verification.files import (
    ModelSpec,
    check_crs,
    expand_paths,
    progress_bar,
    region_in_grid,
    score_files,
    source_dict,
)
from geogen.verification.scorer import Example, Scorer, ScoreResult, members_identical
from geogen.verification.settings import (
    DIAGRAM_COLUMNS,
    SCORE_COLUMNS,
    BootstrapSettings,
    CrpsSettings,
    PaperSettings,
    RankHistogramSettings,
    ReliabilitySettings,
    ScoringSettings,
    validate_settings,
)
from geogen.verification.store_cases import open_store_cases, score_store

__all__ = [
    "DIAGRAM_COLUMNS",
    "SCORE_COLUMNS",
    "BootstrapSettings",
    "CrpsSettings",
    "Example",
    "ModelSpec",
    "PaperSettings",
    "RankHistogramSettings",
    "ReliabilitySettings",
    "ScoreResult",
    "Scorer",
    "ScoringSettings",
    "check_crs",
    "expand_paths",
    "members_identical",
    "open_store_cases",
    "progress_bar",
    "region_in_grid",
    "score_files",
    "score_store",
    "source_dict",
    "validate_settings",
]
