"""One interface for every downscaling method: learned models and references alike.

A :class:`Downscaler` turns a low-resolution sequence into an ensemble of high-resolution
sequences ``factor`` times finer. Methods register by name::

    from geogen.downscaling import get_downscaler
    from geogen import downscale

    rf = get_downscaler("rainfarm")
    hr = downscale(rf, lowres, members=20, factor=16)   # xarray, (member, time, y, x)
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from geogen.registry import Registry


class DownscaleError(ValueError):
    """Inputs a downscaler cannot use (factor, dims, variable, ...)."""


class Downscaler(abc.ABC):
    """A downscaling method: low-resolution frames in, high-resolution ensembles out.

    Attributes
    ----------
    name
        Registered name (``"interp"``, ``"rainfarm"``, ``"downscale_gan"``).
    stochastic
        Whether members differ.
    factor
        The factor a learned model was trained for, or ``None`` (any factor).
    variable
        The variable a learned model was trained on (``"precip"``, ``"t2m"``), or ``None``.
    precipitation_only
        Whether the method only makes sense for rain (RainFARM).
    """

    name: ClassVar[str] = ""
    #: Whether the method runs a trained checkpoint (and takes ``ckpt``, ``device``,
    #: ``batch_members``; shipped checkpoints need no ``ckpt``).
    learned: ClassVar[bool] = False
    stochastic: bool = False
    factor: int | None = None
    variable: str | None = None
    precipitation_only: bool = False

    @abc.abstractmethod
    def predict(
        self,
        lowres: np.ndarray,
        *,
        factor: int,
        members: int,
        seed: int,
        progress: bool = False,
    ) -> np.ndarray:
        """Downscale ``lowres``.

        Parameters
        ----------
        lowres
            ``(time, y, x)`` float32 in physical units (mm/h for rain, K for temperature);
            NaN where there is no data.
        factor
            Resolution factor: the output is ``(y * factor, x * factor)``.
        members
            Ensemble size.
        seed
            Seed of the method's randomness.
        progress
            Show a progress bar for long work.

        Returns
        -------
        numpy.ndarray
            ``(member, time, y * factor, x * factor)`` float32, same units.
        """

    def describe(self) -> dict[str, Any]:
        """Settings and provenance written into output files (JSON-friendly)."""
        return {"model": self.name}


RAIN_UNITS = ("mm/h", "mm h-1", "mm hr-1", "mm/hr", "kg m-2 s-1", "mm s-1", "m s-1", "mm")


def is_precipitation(name: str, attrs: dict[str, Any]) -> bool:
    """Whether a variable is rain, by its name, standard_name or units."""
    standard = str(attrs.get("standard_name", ""))
    return (
        name in ("precip", "precipitation", "rain", "tp", "pr")
        or "precipitation" in standard
        or "rainfall" in standard
        or str(attrs.get("units", "")).strip() in RAIN_UNITS
    )


DOWNSCALERS: Registry[Downscaler] = Registry(
    "downscaling model",
    error=DownscaleError,
    builtin_modules=(
        "geogen.baselines.interp",
        "geogen.baselines.rainfarm",
        "geogen.downscaling.learned",
        "geogen.downscaling.vae",
        "geogen.downscaling.flow",
    ),
)


def register_downscaler(
    name: str,
) -> Callable[[Callable[..., Downscaler]], Callable[..., Downscaler]]:
    """Register a downscaler class (or factory) under ``name``."""
    return DOWNSCALERS.register(name)


def available_downscalers() -> list[str]:
    """Names of the registered downscalers."""
    return DOWNSCALERS.names()


def is_learned(name: str) -> bool:
    """Whether the downscaler registered under ``name`` runs a checkpoint (``False`` if unknown)."""
    try:
        factory = DOWNSCALERS.factory(name)
    except DownscaleError:
        return False
    return bool(getattr(factory, "learned", False))


def get_downscaler(name: str, **kwargs: Any) -> Downscaler:
    """Build the downscaler registered under ``name`` (unknown names list the valid ones)."""
    return DOWNSCALERS.create(name, **kwargs)
