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
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from geogen.forecasting.interface import ForecastError, register_forecaster
from geogen.forecasting.learned import DGMRForecaster, check_context

log = logging.getLogger(__name__)


@register_forecaster("dgmr_advect")
class DGMRAdvectForecaster(DGMRForecaster):
    """Ensemble nowcasts with a trained :class:`~geogen.models.dgmr_advect.AdvectionGenerator`.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=dgmr_advect`` (or ``_tiny``); ``None``
        takes the checkpoint shipped in ``checkpoints/``.
    ckpt_sha256, device, batch_members, precision
        See :class:`~geogen.forecasting.learned.CheckpointForecaster`.
    """

    checkpoint_model = "dgmr_advect"

    def build(self, checkpoint: dict[str, Any]) -> int:
        """The generator of the checkpoint (it must be conditioned on advection)."""
        n_context = super().build(checkpoint)
        if "advected" not in getattr(self.generator, "conditions", ()):
            raise ForecastError(f"{self.ckpt}: the generator is not conditioned on advection")
        self._advected: torch.Tensor | None = None
        return n_context

    def describe(self) -> dict[str, Any]:
        """As ``dgmr``, with the advection settings."""
        return {**super().describe(), "advection": self.data.get("advection")}

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

        frames = check_context(
            self.name, context, self.n_context, timestep_minutes, self.timestep_minutes
        )
        advected = advect(
            frames, leads, timestep_minutes=timestep_minutes, settings=self.data.get("advection")
        )
        model_space = np.asarray(self.transform.forward(advected), dtype=np.float32)
        m = self.size_multiple
        ny, nx = advected.shape[1:]
        zero = float(self.transform.forward(np.float32(0.0)))
        padded = np.pad(model_space, ((0, 0), (0, (-ny) % m), (0, (-nx) % m)), constant_values=zero)
        self._advected = torch.from_numpy(padded)[None].to(self.device)
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
            self._advected = None

    def forecast_batch(
        self, inputs: torch.Tensor, leads: int, members: range, seed: int
    ) -> torch.Tensor:
        """Generator samples, member ``m`` from latent noise seeded with ``(seed, m)``."""
        if self._advected is None or self._advected.shape[1] != leads:
            raise ForecastError("forecast_batch needs the advected frames: call predict")
        from geogen.forecasting.learned import member_generator

        height, width = inputs.shape[-2:]
        latents, noises = [], []
        for m in members:  # each member's draws come from its own (seed, member) generator
            generator = member_generator(seed, m)
            latents.append(self.generator.sample_latent(1, height, width, generator=generator))
            noises.append(self.generator.sample_noise(1, leads, height, width, generator=generator))
        z = torch.cat(latents).to(self.device)
        noise = [torch.cat(scale).to(self.device) for scale in zip(*noises, strict=True)]
        n = len(members)
        return self.generator(
            inputs.expand(n, -1, -1, -1),
            leads,
            z=z,
            advected=self._advected.expand(n, -1, -1, -1).to(inputs.dtype),
            noise=noise or None,
        )
