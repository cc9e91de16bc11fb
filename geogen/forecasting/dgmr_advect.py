"""``dgmr_advect``: DGMR conditioned on pysteps' advection forecast, behind the forecast interface.

::

    from geogen.forecasting import forecast, get_forecaster

    model = get_forecaster("dgmr_advect")                   # the checkpoint geogen ships
    model = get_forecaster("dgmr_advect", ckpt="last.ckpt")  # one of geogen-train's
    ensemble = forecast(model, context, members=20, leads=18, seed=0)

or ``geogen-forecast model=dgmr_advect time=... members=20 out=fc.nc``.

The context is handled as for ``dgmr`` (:mod:`geogen.forecasting.learned`); before the
network runs, the last context frames are extrapolated over the lead times by pysteps
(:func:`geogen.data.advection.advect`, with the advection settings the checkpoint was trained
with), on the whole context domain: with ``margin=N`` (``geogen-forecast``, ``geogen-score``)
rain advected into the region comes from the radar data around it.

:class:`AdvectionNowcaster` is :class:`~geogen.forecasting.learned.DGMRNowcaster` with one
hook overridden, :meth:`~AdvectionNowcaster.conditions`: the advected frames, computed once per
forecast and handed to the generator as ``advected=`` (mapped to model space and padded like
the context). The memory-bounded sampler is the one of ``dgmr``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from geogen.checkpoint import Checkpoint
from geogen.forecasting.interface import ForecastError, register_forecaster
from geogen.forecasting.learned import CheckpointForecaster, DGMRNowcaster

log = logging.getLogger(__name__)


class AdvectionNowcaster(DGMRNowcaster):
    """An :class:`~geogen.models.dgmr_advect.AdvectionGenerator` as an inference module.

    Parameters
    ----------
    generator
        The generator (conditioned on ``advected``).
    transform, nan_fill, sampler_memory
        See :class:`~geogen.forecasting.learned.DGMRNowcaster`.
    advection
        The advection settings the generator was trained with
        (:func:`geogen.data.advection.advect`).
    """

    def __init__(
        self,
        generator: Any,
        transform: Any,
        *,
        advection: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(generator, transform, **kwargs)
        if "advected" not in getattr(generator, "conditions", ()):
            raise ForecastError("the generator is not conditioned on advection")
        self.advection = advection

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> AdvectionNowcaster:
        """The generator of the checkpoint with its training advection settings."""
        generator = checkpoint.build("generator", "network.generator.")
        if "advected" not in getattr(generator, "conditions", ()):
            raise ForecastError(f"{checkpoint.path}: the generator is not conditioned on advection")
        data = checkpoint.data
        return cls(
            generator,
            checkpoint.transform(),
            advection=data.get("advection"),
            nan_fill=data.get("nan_fill", 0),
        )

    def conditions(
        self, context: np.ndarray, leads: int, timestep_minutes: float
    ) -> dict[str, np.ndarray]:
        """``advected``: pysteps' extrapolation of the context over the leads, mm/h."""
        from geogen.data.advection import advect

        advected = advect(
            context, leads, timestep_minutes=timestep_minutes, settings=self.advection
        )
        return {"advected": advected}


@register_forecaster("dgmr_advect")
class DGMRAdvectForecaster(CheckpointForecaster):
    """Ensemble nowcasts with a trained :class:`~geogen.models.dgmr_advect.AdvectionGenerator`.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=dgmr_advect`` (or ``_tiny``); ``None``
        takes the checkpoint shipped in ``checkpoints/``.
    ckpt_sha256, device, batch_members, precision
        See :class:`~geogen.forecasting.learned.CheckpointForecaster`.
    """

    module_class = AdvectionNowcaster

    def describe(self) -> dict[str, Any]:
        """As ``dgmr``, with the advection settings."""
        return {**super().describe(), "advection": self.data.get("advection")}
