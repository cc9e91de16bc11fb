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

from geogen.checkpoint import Checkpoint
from geogen.forecasting.interface import register_forecaster
from geogen.forecasting.learned import CheckpointForecaster
from geogen.inference import NowcastModel, member_generator

log = logging.getLogger(__name__)


class VAENowcaster(NowcastModel):
    """A :class:`~geogen.models.vae.NowcastVAE` as an inference module (module docstring)."""

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> VAENowcaster:
        """The nowcasting VAE of the checkpoint (weights under ``network.``)."""
        network = checkpoint.build(None, "network.")
        multiple = int(network.size_multiple)
        return cls(
            network,
            checkpoint.transform(),
            context_frames=int(network.context_frames),
            nan_fill=checkpoint.data.get("nan_fill", 0),
            size_multiple=multiple,
            min_domain=multiple,
        )

    def forward(
        self, inputs: torch.Tensor, leads: int, members: range, seed: int, **conditions: Any
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


@register_forecaster("vae")
class VAEForecaster(CheckpointForecaster):
    """Ensemble nowcasts with a trained :class:`~geogen.models.vae.NowcastVAE`.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=vae_nowcast`` (or ``_tiny``).
    device, batch_members, precision, ckpt_sha256
        See :class:`~geogen.forecasting.learned.CheckpointForecaster`.
    """

    module_class = VAENowcaster
