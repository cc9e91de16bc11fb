"""One interface for every forecast method: learned models and pysteps references alike.

A :class:`Forecaster` turns ``context`` frames (rain rate, mm/h) into an ensemble of lead
frames. Methods register themselves by name, as pysteps' methods do::

    from geogen.forecasting import get_forecaster, forecast

    steps = get_forecaster("pysteps_steps", n_cascade_levels=6)
    fc = forecast(steps, context, members=20, leads=18)      # xarray, (member, lead_time, y, x)

    dgmr = get_forecaster("dgmr", ckpt="dgmr.ckpt")          # a trained checkpoint
    fc = forecast(dgmr, context, members=20, leads=18)

Learned methods and references share the signature of :meth:`Forecaster.predict`, so
``geogen-forecast model=NAME`` writes the same file for all of them.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from geogen.registry import Registry

log = logging.getLogger(__name__)


class ForecastError(ValueError):
    """Inputs a forecaster cannot use (missing frames, wrong step, domain too small, ...)."""


class Forecaster(abc.ABC):
    """A nowcasting method: context frames in, an ensemble of lead frames out.

    Attributes
    ----------
    name
        Registered name (``"persistence"``, ``"pysteps_steps"``, ``"dgmr"``).
    n_context
        Number of context frames the method needs (the last one is the issue time).
    stochastic
        Whether members differ (deterministic methods return identical members).
    timestep_minutes
        The time step the method was built for, or ``None`` when any step works.
    grid_spacing_km
        Pixel size of the coming contexts in km, when known (set through
        :meth:`set_grid_spacing` by :func:`geogen.forecast` and the scorers); methods that
        need it (STEPS' motion perturbations and incremental mask) read it here.
    """

    name: ClassVar[str] = ""
    #: Whether the method runs a trained checkpoint (and takes ``ckpt``, ``device``,
    #: ``batch_members``; shipped checkpoints need no ``ckpt``).
    learned: ClassVar[bool] = False
    n_context: int = 1
    stochastic: bool = False
    timestep_minutes: float | None = None
    grid_spacing_km: float | None = None

    def set_grid_spacing(self, km: float | None) -> None:
        """Tell the method the pixel size (km) of the contexts it will get (``None``: unknown)."""
        self.grid_spacing_km = None if km is None else float(km)

    @abc.abstractmethod
    def predict(
        self,
        context: np.ndarray,
        *,
        leads: int,
        members: int,
        seed: int,
        timestep_minutes: float,
        progress: bool = False,
    ) -> np.ndarray:
        """Forecast from ``context``.

        Parameters
        ----------
        context
            ``(time, y, x)`` float32 rain rate in mm/h; the last frame is the issue time.
            NaN marks pixels with no data.
        leads
            Number of lead frames, one time step apart.
        members
            Ensemble size.
        seed
            Seed of the method's randomness; the same seed gives the same ensemble.
        timestep_minutes
            Time step of the context frames.
        progress
            Show a progress bar for long work.

        Returns
        -------
        numpy.ndarray
            ``(member, lead, y, x)`` float32 rain rate in mm/h (>= 0; NaN where the method
            cannot say anything, e.g. outside the radar domain).
        """

    def describe(self) -> dict[str, Any]:
        """Settings and provenance written into forecast files (JSON-friendly)."""
        return {"model": self.name}


FORECASTERS: Registry[Forecaster] = Registry(
    "forecast model",
    error=ForecastError,
    builtin_modules=(
        "geogen.baselines.persistence",
        "geogen.baselines.pysteps_methods",
        "geogen.forecasting.learned",
        "geogen.forecasting.dgmr_advect",
        "geogen.forecasting.dgmr_steps",
        "geogen.forecasting.vae",
        "geogen.forecasting.flow",
    ),
)


def register_forecaster(
    name: str,
) -> Callable[[Callable[..., Forecaster]], Callable[..., Forecaster]]:
    """Register a forecaster class (or factory) under ``name``."""
    return FORECASTERS.register(name)


def available_forecasters() -> list[str]:
    """Names of the registered forecasters."""
    return FORECASTERS.names()


def is_learned(name: str) -> bool:
    """Whether the forecaster registered under ``name`` runs a checkpoint (``False`` if unknown)."""
    try:
        factory = FORECASTERS.factory(name)
    except ForecastError:
        return False
    return bool(getattr(factory, "learned", False))


def get_forecaster(name: str, **kwargs: Any) -> Forecaster:
    """Build the forecaster registered under ``name`` with its settings.

    Raises
    ------
    ForecastError
        For an unknown name; the message lists the valid ones.
    """
    return FORECASTERS.create(name, **kwargs)
