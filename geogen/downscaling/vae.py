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
from typing import Any

import numpy as np
import torch

from geogen.downscaling.interface import DownscaleError, Downscaler, register_downscaler
from geogen.forecasting.interface import ForecastError
from geogen.forecasting.learned import (
    build_submodule,
    load_geogen_checkpoint,
    member_generator,
    resolve_device,
    sha256_file,
)

log = logging.getLogger(__name__)


@register_downscaler("vae")
class VAEDownscaler(Downscaler):
    """Downscale with a trained :class:`~geogen.models.vae.DownscaleVAE`.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=vae_downscale`` (or ``_tiny``).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    batch_members
        Members decoded per forward pass (bounds memory).
    """

    stochastic = True

    def __init__(
        self, ckpt: str | os.PathLike | None = None, device: str = "auto", batch_members: int = 4
    ) -> None:
        if ckpt is None:
            raise DownscaleError("model=vae needs a checkpoint: ckpt=PATH (from geogen-train)")
        if int(batch_members) < 1:
            raise DownscaleError(f"batch_members must be >= 1, got {batch_members}")
        try:
            checkpoint = load_geogen_checkpoint(ckpt, "vae")
        except ForecastError as exc:
            raise DownscaleError(str(exc)) from None
        meta = checkpoint["geogen"]
        self.meta, self.data = meta, dict(meta["data"])
        if self.data.get("task") != "downscale":
            raise DownscaleError(
                f"{ckpt} is a VAE trained on a {self.data.get('task')!r} store; use "
                "geogen-forecast model=vae"
            )
        self.ckpt = str(ckpt)
        self.checkpoint_sha256 = sha256_file(ckpt)
        self.device = resolve_device(device)
        self.batch_members = int(batch_members)
        try:
            network = build_submodule(checkpoint, ckpt, meta["network_config"], "network.")
        except ForecastError as exc:
            raise DownscaleError(str(exc)) from None
        self.network = network.to(self.device).eval()
        self.factor = int(network.factor)
        self.variable = self.data.get("variable")
        spec = dict(self.data.get("transform") or {"name": "identity"})
        from geogen.data.transforms import get_transform

        self.transform = get_transform(spec.pop("name"), **spec)
        log.info("vae: %s (sha256 %s), factor %d", ckpt, self.checkpoint_sha256[:12], self.factor)

    def describe(self) -> dict[str, Any]:
        """Model name, checkpoint path and SHA-256, network config, training data, settings."""
        return {
            "model": self.name,
            "checkpoint": self.ckpt,
            "checkpoint_sha256": self.checkpoint_sha256,
            "network_config": self.meta.get("network_config"),
            "training_data": self.data,
            "versions": self.meta.get("versions"),
            "batch_members": self.batch_members,
        }

    def predict(
        self,
        lowres: np.ndarray,
        *,
        factor: int,
        members: int,
        seed: int,
        progress: bool = False,
    ) -> np.ndarray:
        """``(member, time, y * factor, x * factor)`` from ``lowres`` ``(time, y, x)``."""
        lowres = np.asarray(lowres, dtype=np.float32)
        if lowres.ndim != 3:
            raise DownscaleError(f"lowres must be (time, y, x), got shape {lowres.shape}")
        if factor != self.factor:
            raise DownscaleError(f"vae was trained for factor {self.factor}, not {factor}")
        no_data = ~np.isfinite(lowres)
        filled = np.where(no_data, np.float32(self.data.get("nan_fill", 0.0)), lowres)
        inputs = torch.from_numpy(np.asarray(self.transform.forward(filled), dtype=np.float32))
        inputs = inputs[None].to(self.device)
        frames, ny, nx = lowres.shape
        zero = float(self.transform.forward(np.float32(0.0)))
        out = np.empty((members, frames, ny * factor, nx * factor), dtype=np.float32)
        batches = range(0, members, self.batch_members)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="vae members", unit="batch")
        with torch.inference_mode():
            for start in batches:
                stop = min(start + self.batch_members, members)
                eps = torch.cat(
                    [
                        self.network.sample_latent(
                            1, ny * factor, nx * factor, generator=member_generator(seed, m)
                        )
                        for m in range(start, stop)
                    ]
                ).to(self.device)
                params = self.network.sample(inputs.expand(stop - start, -1, -1, -1), eps=eps)
                values = self.transform.inverse(self.network.point(params, zero).float())
                out[start:stop] = np.maximum(values.cpu().numpy(), 0.0)
        if no_data.any():
            mask = no_data.repeat(factor, axis=1).repeat(factor, axis=2)
            out[:, mask] = np.nan
        return out
