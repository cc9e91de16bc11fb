"""pysteps STEPS members of crop contexts, the conditioning of ``dgmr_steps``.

:func:`steps_members` runs geogen's ``pysteps_steps`` reference (Lucas-Kanade motion, a
6-level cascade with AR(2) evolution, nonparametric noise, motion perturbations, incremental
mask, CDF probability matching; see :mod:`geogen.baselines.pysteps_methods`) and returns its
members in mm/h, 0 where STEPS cannot say anything (no data at the issue time). The same
function makes the members of training crops (:class:`StepsCache`) and of forecasts
(``geogen-forecast model=dgmr_steps``), so the network sees the same conditioning in training
and in use.

A STEPS ensemble costs seconds per crop, far more than a training step of a small network,
so :class:`StepsCache` computes ``members`` members of every sample once and keeps them in a
zarr store beside the crop store (``crops.zarr`` -> ``crops.steps.zarr``), one chunk per
sample, keyed by the crop store's fingerprints, the STEPS settings, the number of members
and the seed (see :class:`~geogen.data.advection.FrameCache`: resumable and idempotent; a
store rebuilt or other settings never read stale members). Sample ``i`` is seeded with
``seed * 1_000_003 + i``, so a cache is the same whatever order it is filled in.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from geogen.data.advection import FrameCache

log = logging.getLogger(__name__)

#: Settings that change how fast STEPS runs, not what it returns (left out of cache keys).
RUNTIME_SETTINGS = ("n_workers",)


def steps_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``settings`` (keys of ``pysteps_steps``) with the defaults of pysteps' STEPS made explicit.

    The result is validated by the ``pysteps_steps`` forecaster (an unknown key raises an
    error listing the valid ones) and is what checkpoints and cache keys record.
    """
    from geogen.forecasting import get_forecaster

    model = get_forecaster("pysteps_steps", **dict(settings or {}))
    resolved = model.settings.model_dump()
    for key in RUNTIME_SETTINGS:
        resolved.pop(key, None)
    return resolved


def steps_members(
    context: np.ndarray,
    leads: int,
    members: int,
    *,
    seed: int,
    timestep_minutes: float = 5.0,
    kmperpixel: float = 1.0,
    settings: Mapping[str, Any] | None = None,
    n_workers: int = 1,
) -> np.ndarray:
    """``members`` pysteps STEPS members of ``context`` over ``leads`` steps.

    Parameters
    ----------
    context
        ``(time, y, x)`` rain rate in mm/h (NaN: no data), at least ``ar_order + 1`` frames.
    leads, members
        Lead frames and ensemble members.
    seed
        STEPS' seed: the same seed gives the same members.
    timestep_minutes
        Time step of the frames.
    kmperpixel
        Pixel size (motion perturbations and the incremental mask use it), unless
        ``settings`` names one.
    settings
        ``pysteps_steps`` settings (:func:`steps_settings`).
    n_workers
        Threads for the members (pysteps' ``num_workers``; the result does not depend on it).

    Returns
    -------
    numpy.ndarray
        ``(members, leads, y, x)`` float32 mm/h, finite and >= 0 (0 where STEPS is
        undefined: no data at the issue time, or advected in from outside).
    """
    from geogen.forecasting import get_forecaster

    context = np.asarray(context, dtype=np.float32)
    if context.ndim != 3:
        raise ValueError(f"context must be (time, y, x), got shape {context.shape}")
    shape = (int(members), int(leads), *context.shape[1:])
    valid = np.isfinite(context[-1])
    if not valid.any() or not (np.nan_to_num(context[-1]) > 0).any():
        return np.zeros(shape, dtype=np.float32)  # nothing to evolve: STEPS forecasts no rain
    options = dict(settings or {})
    if options.get("kmperpixel") is None:
        options["kmperpixel"] = float(kmperpixel)
    options["n_workers"] = int(n_workers)
    model = get_forecaster("pysteps_steps", **options)
    out = model.predict(
        context,
        leads=int(leads),
        members=int(members),
        seed=int(seed),
        timestep_minutes=float(timestep_minutes),
    )
    return np.nan_to_num(np.maximum(out, 0.0), nan=0.0).astype(np.float32)


def store_pixel_km(attrs: Mapping[str, Any], default: float = 1.0) -> float:
    """Pixel size in km of a crop store, from its ``grid`` attribute (``dx`` in metres)."""
    grid = attrs.get("grid")
    if isinstance(grid, str):
        try:
            grid = ast.literal_eval(grid)
        except (ValueError, SyntaxError):
            grid = None
    if not isinstance(grid, Mapping) or "dx" not in grid:
        return float(default)
    dx = abs(float(grid["dx"]))
    units = str(grid.get("units", "m")).lower()
    if units in ("m", "metre", "meter", "metres", "meters"):
        return dx / 1000.0
    if units in ("km", "kilometre", "kilometer"):
        return dx
    return float(default)  # degrees: no single pixel size


class StepsCache(FrameCache):
    """``members`` pysteps STEPS members of every sample of one nowcast crop store.

    Parameters
    ----------
    store
        The crop store (``geogen-prepare task=nowcast``).
    settings
        ``pysteps_steps`` settings (see :func:`steps_settings`); ``n_workers`` is used to run
        them but is not part of the key.
    path
        The cache store (default ``<store>.steps.zarr`` beside the crop store).
    members
        Members per sample (``>= 2``: the ensemble CRPS of training needs two).
    seed
        Base seed: sample ``i`` is seeded with ``seed * 1_000_003 + i``.

    Notes
    -----
    The cache group ``<path>/<key>`` holds ``members`` ``(sample, member, lead, y, x)`` float32
    mm/h, one sample per chunk, and ``done`` ``(sample,)``; ``key`` hashes the crop store's
    fingerprints and creation time with the resolved settings, ``members`` and ``seed``.
    """

    kind = "steps"
    label = "STEPS (pysteps)"
    array_name = "members"

    def __init__(
        self,
        store: Any,
        settings: Mapping[str, Any] | None = None,
        path: Any = None,
        *,
        members: int = 4,
        seed: int = 0,
    ) -> None:
        if int(members) < 2:
            raise ValueError(f"a STEPS cache needs members >= 2, got {members}")
        self.members = int(members)
        self.seed = int(seed)
        self.n_workers = int(dict(settings or {}).get("n_workers", 1))
        super().__init__(store, settings, path)
        self.kmperpixel = float(self.settings.get("kmperpixel") or store_pixel_km(self.info.attrs))

    def resolve_settings(self, settings: Mapping[str, Any] | None) -> dict[str, Any]:
        """:func:`steps_settings` (pysteps' defaults made explicit, no runtime settings)."""
        return steps_settings(settings)

    def key_extra(self) -> dict[str, Any]:
        """Members and seed."""
        return {"members": self.members, "seed": self.seed}

    def frame_shape(self) -> tuple[int, ...]:
        """``(members, lead)``."""
        return (self.members, self.lead)

    def compute(self, context: np.ndarray, index: int) -> np.ndarray:
        """:func:`steps_members` of the sample's context, seeded by the sample index."""
        return steps_members(
            context,
            self.lead,
            self.members,
            seed=self.seed * 1_000_003 + int(index),
            timestep_minutes=self.info.timestep_minutes,
            kmperpixel=self.kmperpixel,
            settings=self.settings,
            n_workers=self.n_workers,
        )
