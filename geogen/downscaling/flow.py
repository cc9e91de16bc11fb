"""The conditional normalizing flow behind the :class:`Downscaler` interface (``model=flow``).

A checkpoint written by ``geogen-train experiment=flow_downscale`` (or ``_tiny``)::

    from geogen import downscale
    from geogen.downscaling import get_downscaler

    flow = get_downscaler("flow", ckpt="last.ckpt", batch_members=4)
    hr = downscale(flow, lowres, members=20)            # (member, time, y, x), mm/h

or ``geogen-downscale model=flow ckpt=last.ckpt source=mch time=... coarsen=16 members=20
out=hr.nc``.

The flow models ``frames`` frames jointly (the training store's ``sequence.length``): a longer
sequence is downscaled in consecutive windows of that length, the last one shifted back to end
with the sequence (so it overlaps the previous window; the overlapping frames come from the
earlier window); a shorter one is an error. Missing low-res pixels are filled with the store's
``nan_fill`` and are NaN again (the whole coarse cell) in the output; the grid is padded (zero
rain) to multiples of ``2^levels / factor`` coarse cells and cropped back. Member ``m`` draws
its noise from a generator seeded with ``(seed, m)``, independent of batching.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from geogen.checkpoint import Checkpoint
from geogen.downscaling.checkpoint import CheckpointDownscaler
from geogen.downscaling.interface import DownscaleError, register_downscaler
from geogen.forecasting.flow import FlowCheckpoint
from geogen.inference import member_generator

log = logging.getLogger(__name__)


@register_downscaler("flow")
class FlowDownscalerModel(CheckpointDownscaler):
    """High-resolution ensembles from a trained conditional flow (SRFlow-like).

    Parameters
    ----------
    ckpt
        Checkpoint of ``geogen-train experiment=flow_downscale`` (or ``_tiny``).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    batch_members
        Members sampled per pass.
    temperature
        Scale of the latent noise (default: the method's).
    ckpt_sha256
        Expected SHA-256 of the checkpoint file.
    """

    checkpoint_model = "flow"

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str = "auto",
        batch_members: int = 4,
        temperature: float | None = None,
        ckpt_sha256: str | None = None,
    ) -> None:
        super().__init__(ckpt, device, batch_members, ckpt_sha256=ckpt_sha256)
        self.temperature = self.model.temperature if temperature is None else float(temperature)
        if self.temperature < 0:
            raise DownscaleError(f"temperature must be >= 0, got {self.temperature}")
        self.frames = int(self.network.frames)

    def build(self, checkpoint: Checkpoint) -> int:
        """The flow of the checkpoint with its sampling settings (:class:`FlowCheckpoint`)."""
        self.model = FlowCheckpoint(checkpoint, self.device)
        self.network = self.model.network
        return int(self.network.factor)

    def settings(self) -> dict[str, Any]:
        """Sampling settings of the flow."""
        described = self.model.describe()
        return {
            key: described[key] for key in ("dry_threshold_mm_h", "max_rain_mm_h", "dequantisation")
        } | {"temperature": self.temperature, "frames_per_window": self.frames}

    def check_grid(self, steps: int, h: int, w: int) -> None:
        """At least one window of ``frames`` frames; ``factor`` and ``2^levels`` nest."""
        if steps < self.frames:
            raise DownscaleError(
                f"flow downscales sequences of {self.frames} frames jointly; got {steps} "
                f"(length={self.frames})"
            )
        if self.network.multiple % self.factor and self.factor % self.network.multiple:
            raise DownscaleError(
                f"factor {self.factor} and the flow's 2^levels {self.network.multiple} do not nest"
            )

    def generate(self, filled: np.ndarray, members: int, seed: int, progress: bool) -> np.ndarray:
        """Members window by window (see module doc), in mm/h."""
        n_time, ny, nx = filled.shape
        factor = self.factor
        coarse_multiple = max(1, self.network.multiple // factor)
        inputs = self.model.to_model(filled, coarse_multiple)
        inputs = inputs.to(self.device)
        height, width = (s * factor for s in inputs.shape[-2:])
        starts = list(range(0, n_time - self.frames + 1, self.frames))
        if starts[-1] + self.frames < n_time:
            starts.append(n_time - self.frames)
        out = np.full((members, n_time, ny * factor, nx * factor), np.nan, dtype=np.float32)
        shapes = self.network.flow.latent_shapes(height, width)
        with torch.inference_mode():
            for start, stop in self.member_batches(members, progress):
                generators = [member_generator(seed, m) for m in range(start, stop)]
                done = np.zeros(n_time, dtype=bool)
                for t0 in starts:
                    noise = [
                        torch.stack([torch.randn(s, generator=g) for g in generators]).to(
                            self.device
                        )
                        for s in shapes
                    ]
                    window = inputs[t0 : t0 + self.frames][None].expand(stop - start, -1, -1, -1)
                    sample = self.network.sample(window, temperature=self.temperature, noise=noise)
                    sample = sample[..., : ny * factor, : nx * factor].float()
                    sample = self.model.requantize(sample)
                    rain = np.maximum(self.model.transform.inverse(sample).cpu().numpy(), 0.0)
                    times = [t for t in range(t0, t0 + self.frames) if not done[t]]
                    out[start:stop, times] = rain[:, [t - t0 for t in times]]
                    done[times] = True
        self.model.warn_capped()
        log.debug("flow downscaled %d frames in %d windows", n_time, len(starts))
        return out
