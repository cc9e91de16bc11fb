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

from geogen.forecasting.interface import ForecastError, register_forecaster
from geogen.forecasting.learned import CheckpointForecaster, build_submodule, check_context

log = logging.getLogger(__name__)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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

    checkpoint_model = "dgmr_steps"
    min_domain = 32

    def __init__(self, *args: Any, n_workers: int | None = None, **kwargs: Any) -> None:
        self.n_workers = int(n_workers) if n_workers else _cores()
        super().__init__(*args, **kwargs)

    def build(self, checkpoint: dict[str, Any]) -> int:
        """The generator of the checkpoint (it must read STEPS members)."""
        config = self.meta["network_config"].get("generator")
        generator = build_submodule(checkpoint, self.ckpt, config, "network.generator.")
        if "steps" not in getattr(generator, "conditions", ()):
            raise ForecastError(f"{self.ckpt}: the generator is not conditioned on STEPS members")
        if not self.data.get("steps"):
            raise ForecastError(f"{self.ckpt}: the checkpoint records no STEPS settings")
        self.generator = generator.to(self.device).eval()
        self.size_multiple = int(getattr(generator, "size_multiple", 16))
        self._conditions: dict[str, torch.Tensor] | None = None
        return int(generator.context_frames)

    def describe(self) -> dict[str, Any]:
        """As other checkpoints, with the advection and STEPS settings."""
        return {
            **super().describe(),
            "advection": self.data.get("advection"),
            "steps": self.data.get("steps"),
        }

    def _model_space(self, frames: np.ndarray) -> torch.Tensor:
        """Physical ``(..., y, x)`` -> model space, padded to :attr:`size_multiple`."""
        values = np.asarray(self.transform.forward(frames), dtype=np.float32)
        m = self.size_multiple
        ny, nx = frames.shape[-2:]
        zero = float(self.transform.forward(np.float32(0.0)))
        pad = [(0, 0)] * (values.ndim - 2) + [(0, (-ny) % m), (0, (-nx) % m)]
        return torch.from_numpy(np.pad(values, pad, constant_values=zero)).to(self.device)

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
        """``(member, lead, y, x)`` mm/h from ``context`` ``(time, y, x)`` mm/h."""
        from geogen.data.advection import advect
        from geogen.data.steps import steps_members

        frames = check_context(
            self.name, context, self.n_context, timestep_minutes, self.timestep_minutes
        )
        spec = dict(self.data["steps"])
        settings = dict(spec.get("settings") or {})
        if self.grid_spacing_km is not None:
            settings["kmperpixel"] = self.grid_spacing_km
        advected = advect(
            frames, leads, timestep_minutes=timestep_minutes, settings=self.data.get("advection")
        )
        members_steps = steps_members(
            frames,
            leads,
            members,
            seed=seed,
            timestep_minutes=timestep_minutes,
            settings=settings,
            n_workers=self.n_workers,
        )
        self._conditions = {
            "advected": self._model_space(advected)[None],
            "steps": self._model_space(members_steps),
        }
        try:
            return super().predict(
                context,
                leads=leads,
                members=members,
                seed=seed,
                timestep_minutes=timestep_minutes,
                progress=progress,
            )
        finally:
            self._conditions = None

    def forecast_batch(
        self, inputs: torch.Tensor, leads: int, members: range, seed: int
    ) -> torch.Tensor:
        """Member ``m`` is the network's correction of STEPS member ``m`` (seeded by ``seed``)."""
        if self._conditions is None or self._conditions["steps"].shape[1] != leads:
            raise ForecastError("forecast_batch needs the STEPS members: call predict")
        n = len(members)
        steps = self._conditions["steps"][members.start : members.stop].to(inputs.dtype)
        advected = self._conditions["advected"].expand(n, -1, -1, -1).to(inputs.dtype)
        return self.generator(inputs.expand(n, -1, -1, -1), leads, steps=steps, advected=advected)
