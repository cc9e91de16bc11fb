"""``vae``: high-resolution ensembles from a conditional VAE checkpoint (vae_downscale).

::

    geogen-downscale model=vae ckpt=last.ckpt source=mch time=2016-07-11T22:00 coarsen=16 \
        'region=[160,320,256,256]' members=20 out=vae_ds.nc

The low-resolution sequence (physical units; NaN filled with the training store's
``nan_fill``) is mapped to model space with the training transform; member ``m`` decodes
``z_m`` drawn from the learned prior ``p(z | lowres)`` (or N(0, I)) with noise seeded by
``(seed, m)``, so the same seed gives the same ensemble whatever ``batch_members``. The output
is the decoder's point forecast, mapped back to physical units (rain >= 0) and NaN inside the
coarse cells whose input was NaN. The sequence may have any length and any number of coarse
cells (the network is recurrent in time and convolutional in space).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from geogen.checkpoint import Checkpoint
from geogen.downscaling.checkpoint import CheckpointDownscaler
from geogen.downscaling.interface import register_downscaler
from geogen.inference import member_generator

log = logging.getLogger(__name__)


@register_downscaler("vae")
class VAEDownscaler(CheckpointDownscaler):
    """Downscale with a trained :class:`~geogen.models.vae.DownscaleVAE`.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=vae_downscale`` (or ``_tiny``).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    batch_members
        Members decoded per forward pass (bounds memory).
    ckpt_sha256
        Expected SHA-256 of the checkpoint file.
    """

    checkpoint_model = "vae"

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str = "auto",
        batch_members: int = 4,
        ckpt_sha256: str | None = None,
    ) -> None:
        super().__init__(ckpt, device, batch_members, ckpt_sha256=ckpt_sha256)

    def build(self, checkpoint: Checkpoint) -> int:
        """The downscaling VAE of the checkpoint."""
        network = checkpoint.build(None, "network.")
        self.network = network.to(self.device).eval()
        return int(network.factor)

    def generate_batch(self, inputs: torch.Tensor, members: range, seed: int) -> torch.Tensor:
        """Point forecasts of ``z`` drawn from the prior, member ``m`` seeded with ``(seed, m)``."""
        height, width = (s * self.factor for s in inputs.shape[-2:])
        eps = torch.cat(
            [
                self.network.sample_latent(1, height, width, generator=member_generator(seed, m))
                for m in members
            ]
        ).to(self.device)
        params = self.network.sample(inputs.expand(len(members), -1, -1, -1), eps=eps)
        zero = float(self.transform.forward(np.float32(0.0)))
        return self.network.point(params, zero)
