"""``vae``: ensemble nowcasts from a conditional VAE checkpoint (``experiment=vae_nowcast``).

::

    geogen-forecast model=vae ckpt=last.ckpt source=mch time=2016-07-11T22:00 \
        'region=[160,320,256,256]' members=20 out=vae.nc

Member ``m`` decodes ``z_m = mean + std * eps_m`` with ``(mean, std)`` the learned prior
``p(z | context)`` (or N(0, I)) and ``eps_m`` standard normal noise drawn from a generator
seeded with ``(seed, m)``: the same seed gives the same ensemble whatever ``batch_members``.
Each member is the decoder's point forecast (:meth:`geogen.models.vae.NowcastVAE.point`).
Context handling (no-data filling, model space, zero padding to multiples of the network's
``2**levels``, NaN outside the radar domain) is that of every learned forecaster
(:class:`~geogen.forecasting.learned.CheckpointForecaster`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from geogen.forecasting.interface import ForecastError, register_forecaster
from geogen.forecasting.learned import CheckpointForecaster, build_submodule, member_generator

log = logging.getLogger(__name__)


@register_forecaster("vae")
class VAEForecaster(CheckpointForecaster):
    """Ensemble nowcasts with a trained :class:`~geogen.models.vae.NowcastVAE`.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=vae_nowcast`` (or ``_tiny``).
    device, batch_members, precision
        See :class:`~geogen.forecasting.learned.CheckpointForecaster`.
    """

    checkpoint_model = "vae"

    def build(self, checkpoint: dict[str, Any]) -> int:
        """The nowcasting VAE of the checkpoint (a downscaling one is refused)."""
        if self.data.get("task") != "nowcast":
            raise ForecastError(
                f"{self.ckpt} is a VAE trained on a {self.data.get('task')!r} store; "
                "use geogen-downscale model=vae"
            )
        network = build_submodule(checkpoint, self.ckpt, self.meta["network_config"], "network.")
        self.network = network.to(self.device).eval()
        self.size_multiple = int(network.size_multiple)
        self.min_domain = int(network.size_multiple)
        return int(network.context_frames)

    def forecast_batch(
        self, inputs: torch.Tensor, leads: int, members: range, seed: int
    ) -> torch.Tensor:
        """Point forecasts of ``z`` drawn from the prior, member ``m`` seeded with ``(seed, m)``."""
        height, width = inputs.shape[-2:]
        eps = torch.cat(
            [
                self.network.sample_latent(1, height, width, generator=member_generator(seed, m))
                for m in members
            ]
        ).to(self.device)
        params = self.network.sample(inputs.expand(len(members), -1, -1, -1), leads, eps=eps)
        zero = float(self.transform.forward(np.float32(0.0)))
        return self.network.point(params, zero)
