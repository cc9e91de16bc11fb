"""``dgmr_steps``: a generator over pysteps STEPS members, behind the forecast interface.

::

    from geogen.forecasting import forecast, get_forecaster

    model = get_forecaster("dgmr_steps")                   # the checkpoint geogen ships
    model = get_forecaster("dgmr_steps", ckpt="best.ckpt")  # one of geogen-train's
    ensemble = forecast(model, context, members=20, leads=18, seed=0)

or ``geogen-forecast model=dgmr_steps time=... members=20 out=fc.nc``.

Before the network runs, pysteps makes, on the whole context domain, the advection forecast
(:func:`geogen.data.advection.advect`) and a ``members``-member STEPS ensemble
(:func:`geogen.data.steps.steps_members`, seeded with ``seed``, with the STEPS settings the
checkpoint was trained with and the context's pixel size when known); forecast member ``m``
is the network's correction of STEPS member ``m``. The forecast therefore costs one STEPS
ensemble plus one network pass per member. STEPS runs its members on ``n_workers`` threads
(default: the machine's cores; the result does not depend on it).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from geogen.checkpoint import Checkpoint
from geogen.forecasting.interface import ForecastError, register_forecaster
from geogen.forecasting.learned import CheckpointForecaster
from geogen.inference import NowcastModel

log = logging.getLogger(__name__)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class StepsNowcaster(NowcastModel):
    """A :class:`~geogen.models.dgmr_steps.StepsGenerator` as an inference module.

    :meth:`predict` runs pysteps once per forecast: the advection forecast (shared by the
    members) and a STEPS ensemble of all the members (seeded with ``seed``; STEPS draws member
    ``m``'s seed as the ``m``-th draw of that seed, so member ``m`` is the same whatever the
    ensemble size and batching); member ``m`` of the forecast is the network's correction of
    STEPS member ``m``.

    Parameters
    ----------
    generator
        The generator (conditioned on ``steps`` and ``advected``).
    transform, nan_fill
        See :class:`~geogen.inference.NowcastModel`.
    steps
        The STEPS conditioning of the training data (``{"members", "seed", "settings"}``).
    advection
        The advection settings of the training data.
    n_workers
        Threads of the STEPS ensemble (the result does not depend on it).
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        transform: Any,
        *,
        steps: dict[str, Any],
        advection: dict[str, Any] | None = None,
        nan_fill: float = 0.0,
        n_workers: int = 1,
    ) -> None:
        if "steps" not in getattr(generator, "conditions", ()):
            raise ForecastError("the generator is not conditioned on STEPS members")
        super().__init__(
            generator,
            transform,
            context_frames=int(generator.context_frames),
            nan_fill=nan_fill,
            size_multiple=int(getattr(generator, "size_multiple", 16)),
            min_domain=32,
        )
        self.steps_spec = dict(steps)
        self.advection = advection
        self.n_workers = int(n_workers)
        #: Pixel size of the coming contexts (km), when the forecaster knows it.
        self.kmperpixel: float | None = None
        self._members: np.ndarray | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> StepsNowcaster:
        """The generator of the checkpoint with its training STEPS and advection settings."""
        generator = checkpoint.build("generator", "network.generator.")
        data = checkpoint.data
        if "steps" not in getattr(generator, "conditions", ()):
            raise ForecastError(f"{checkpoint.path}: the generator is not conditioned on STEPS")
        if not data.get("steps"):
            raise ForecastError(f"{checkpoint.path}: the checkpoint records no STEPS settings")
        return cls(
            generator,
            checkpoint.transform(),
            steps=data["steps"],
            advection=data.get("advection"),
            nan_fill=data.get("nan_fill", 0),
        )

    @property
    def settings(self) -> dict[str, Any]:
        """The ``pysteps_steps`` settings of forecasts (the context's pixel size if known)."""
        settings = dict(self.steps_spec.get("settings") or {})
        if self.kmperpixel is not None:
            settings["kmperpixel"] = float(self.kmperpixel)
        return settings

    def conditions(
        self, context: np.ndarray, leads: int, timestep_minutes: float
    ) -> dict[str, np.ndarray]:
        """``advected``: pysteps' extrapolation of the context over the leads, mm/h."""
        from geogen.data.advection import advect

        advected = advect(
            context, leads, timestep_minutes=timestep_minutes, settings=self.advection
        )
        return {"advected": advected}

    def member_conditions(
        self,
        context: np.ndarray,
        leads: int,
        members: range,
        seed: int,
        timestep_minutes: float,
    ) -> dict[str, np.ndarray]:
        """``steps``: STEPS members ``members`` of the forecast's ensemble, mm/h."""
        if self._members is None or self._members.shape[1] != leads:
            raise ForecastError("the STEPS ensemble is made by predict; call predict")
        return {"steps": self._members[members.start : members.stop]}

    def predict(
        self, context: np.ndarray, *, leads: int, members: int, seed: int, **kwargs: Any
    ) -> np.ndarray:
        """As :meth:`NowcastModel.predict`, after one STEPS ensemble of ``members`` members."""
        from geogen.data.steps import steps_members

        self._members = steps_members(
            context,
            leads,
            members,
            seed=seed,
            timestep_minutes=kwargs["timestep_minutes"],
            settings=self.settings,
            n_workers=self.n_workers,
        )
        try:
            return super().predict(context, leads=leads, members=members, seed=seed, **kwargs)
        finally:
            self._members = None

    def forward(
        self, inputs: torch.Tensor, leads: int, members: range, seed: int, **conditions: Any
    ) -> torch.Tensor:
        """Model-space ``(len(members), leads, Y, X)``: each member from its STEPS member."""
        if inputs.dim() != 4 or inputs.shape[0] != 1:
            raise ValueError(f"inputs must be (1, time, y, x), got {tuple(inputs.shape)}")
        n = len(members)
        steps = conditions["steps"].to(inputs.dtype)
        advected = conditions["advected"].to(inputs.dtype).expand(n, -1, -1, -1)
        return self.network(inputs.expand(n, -1, -1, -1), leads, steps=steps, advected=advected)


@register_forecaster("dgmr_steps")
class DGMRStepsForecaster(CheckpointForecaster):
    """Ensemble nowcasts with a trained :class:`~geogen.models.dgmr_steps.StepsGenerator`.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=dgmr_steps`` (or ``_tiny``); ``None``
        takes the checkpoint shipped in ``checkpoints/``.
    ckpt_sha256, device, batch_members, precision
        See :class:`~geogen.forecasting.learned.CheckpointForecaster`.
    n_workers
        Threads of the STEPS ensemble (``None``: the machine's cores).
    """

    module_class = StepsNowcaster

    def __init__(self, *args: Any, n_workers: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.module.n_workers = int(n_workers) if n_workers else _cores()

    def set_grid_spacing(self, km: float | None) -> None:
        """The pixel size (km) STEPS uses for its motion perturbations and mask."""
        super().set_grid_spacing(km)
        self.module.kmperpixel = self.grid_spacing_km

    def describe(self) -> dict[str, Any]:
        """As other checkpoints, with the advection and STEPS settings."""
        return {
            **super().describe(),
            "advection": self.data.get("advection"),
            "steps": {**self.module.steps_spec, "settings": self.module.settings},
        }
