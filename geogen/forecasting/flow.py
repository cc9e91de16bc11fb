"""The conditional normalizing flow behind the :class:`Forecaster` interface (``model=flow``).

A checkpoint written by ``geogen-train experiment=flow_nowcast`` (or ``flow_nowcast_tiny``)::

    model = get_forecaster("flow", ckpt="last.ckpt", device="auto", batch_members=4)
    ensemble = forecast(model, context, members=20, leads=18, seed=0)

or ``geogen-forecast model=flow ckpt=last.ckpt source=mch time=... members=20 out=fc.nc``.

The flow forecasts frame by frame: lead ``l`` is drawn from ``p(frame | the k frames before
it)``, the earlier lead frames being the member's own samples (mapped to mm/h, dry below the
training ``dry_threshold``, and back to model space, as the observed context is). As for DGMR
(:mod:`geogen.forecasting.learned`; checkpoints are found and checked by
:class:`geogen.checkpoint.Checkpoint`, the context is pre-processed by
:func:`geogen.inference.to_model_space`): missing
context pixels are filled with the store's ``nan_fill``; the domain is padded (zero rain) to
multiples of ``2^levels`` and cropped back; member ``m`` draws all its noise from a generator
seeded with ``(seed, m)``, so members do not depend on batching; the output is NaN where the
issue-time frame has no data.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from geogen.checkpoint import Checkpoint
from geogen.forecasting.interface import Forecaster, ForecastError, register_forecaster
from geogen.forecasting.learned import check_context
from geogen.inference import member_batches, member_generator, resolve_device, to_model_space

log = logging.getLogger(__name__)


class FlowCheckpoint:
    """A flow network, its data description and its method settings, from a checkpoint.

    Parameters
    ----------
    checkpoint
        The checkpoint of ``geogen-train experiment=flow_*``, read and checked (model ``flow``,
        task) by :meth:`geogen.checkpoint.Checkpoint.load`.
    device
        Where the network runs.
    """

    def __init__(self, checkpoint: Checkpoint, device: torch.device) -> None:
        self.checkpoint = checkpoint
        self.meta = checkpoint.meta
        self.data = checkpoint.data
        self.ckpt = str(checkpoint.path)
        self.sha256 = checkpoint.sha256
        self.network = checkpoint.build(None, "network.").to(device).eval()
        hparams = checkpoint.hyper_parameters
        self.dry_threshold = float(hparams.get("dry_threshold", 0.1))
        self.temperature = float(hparams.get("temperature", 1.0))
        self.max_rain = float(hparams.get("max_rain", 300.0))
        self.capped = 0  # generated values capped at max_rain (counted for a warning)
        self.transform = checkpoint.transform()

    def requantize(self, values: torch.Tensor) -> torch.Tensor:
        """Model-space ``values``: 0 mm/h below the dry threshold, at most ``max_rain`` mm/h."""
        rain = self.transform.inverse(values)
        capped = rain > self.max_rain
        if bool(capped.any()):
            self.capped += int(capped.sum())
        rain = rain.clamp(max=self.max_rain)
        rain = torch.where(rain < self.dry_threshold, torch.zeros_like(rain), rain)
        return self.transform.forward(rain)

    def warn_capped(self) -> None:
        """Log (once per call) how many generated values were capped at ``max_rain``."""
        if self.capped:
            log.warning(
                "flow: %d generated values exceeded max_rain = %g mm/h and were capped",
                self.capped,
                self.max_rain,
            )
            self.capped = 0

    def to_model(self, rain: np.ndarray, multiple: int) -> torch.Tensor:
        """mm/h ``(T, y, x)`` (NaN: no data) -> padded model-space tensor ``(T, Y, X)``."""
        nan_fill = self.data.get("nan_fill", 0.0)
        return torch.from_numpy(to_model_space(rain, self.transform, nan_fill, multiple))

    def describe(self) -> dict[str, Any]:
        """Checkpoint path and SHA-256, network config, training data, sampling settings."""
        return {
            **self.checkpoint.describe(),
            "dry_threshold_mm_h": self.dry_threshold,
            "max_rain_mm_h": self.max_rain,
            "temperature": self.temperature,
            "dequantisation": "dry pixels (< dry_threshold) uniform on [0, dry_threshold)",
        }


def member_noise(
    seed: int, member: int, shapes: list[tuple[int, int, int]], repeats: int
) -> list[torch.Tensor]:
    """Member ``member``'s standard noise: ``repeats`` times one tensor per shape, in order."""
    generator = member_generator(seed, member)
    return [torch.randn(shape, generator=generator) for _ in range(repeats) for shape in shapes]


@register_forecaster("flow")
class FlowForecaster(Forecaster):
    """Ensemble nowcasts with a trained conditional flow, sampled autoregressively.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=flow_nowcast`` (or ``_tiny``).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    batch_members
        Members sampled per pass (bounds memory).
    temperature
        Scale of the latent noise (default: the method's, 1 = samples of the model).
    ckpt_sha256
        Expected SHA-256 of the checkpoint file (refused when it differs).
    """

    stochastic = True
    learned = True

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str = "auto",
        batch_members: int = 4,
        temperature: float | None = None,
        ckpt_sha256: str | None = None,
    ) -> None:
        if int(batch_members) < 1:
            raise ForecastError(f"batch_members must be >= 1, got {batch_members}")
        self.device = resolve_device(device)
        checkpoint = Checkpoint.load(self.name, ckpt, ckpt_sha256, error=ForecastError)
        self.model = FlowCheckpoint(checkpoint, self.device)
        self.network = self.model.network
        self.batch_members = int(batch_members)
        self.temperature = self.model.temperature if temperature is None else float(temperature)
        if self.temperature < 0:
            raise ForecastError(f"temperature must be >= 0, got {self.temperature}")
        self.n_context = int(self.network.context_frames)
        self.timestep_minutes = float(self.model.data["timestep_minutes"])
        log.info(
            "flow: %s (sha256 %s), %d context frames every %g min, on %s",
            self.model.ckpt,
            self.model.sha256[:12],
            self.n_context,
            self.timestep_minutes,
            self.device,
        )

    def describe(self) -> dict[str, Any]:
        """Model name, checkpoint provenance and sampling settings."""
        return {
            "model": self.name,
            **self.model.describe(),
            "temperature": self.temperature,
            "batch_members": self.batch_members,
            "sampling": "autoregressive, frame by frame, on the member's own earlier frames",
            "padding": f"zero rain to multiples of {self.network.multiple}, cropped back",
        }

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
        """``(member, lead, y, x)`` mm/h from ``context`` ``(time, y, x)`` mm/h (module doc)."""
        context = check_context(
            "flow", context, self.n_context, timestep_minutes, self.timestep_minutes
        )
        ny, nx = context.shape[1:]
        multiple = self.network.multiple
        if ny < multiple or nx < multiple:
            raise ForecastError(
                f"domain of {ny} x {nx} pixels is too small for the flow: at least {multiple}"
            )
        no_data = ~np.isfinite(context[-1])
        inputs = self.model.to_model(context, multiple)
        inputs = inputs[None].to(self.device)
        height, width = inputs.shape[-2:]
        out = np.empty((members, leads, ny, nx), dtype=np.float32)
        shapes = self.network.flow.latent_shapes(height, width)
        batches = member_batches(members, self.batch_members, progress, "flow members")
        with torch.inference_mode():
            for start, stop in batches:
                per_member = [member_noise(seed, m, shapes, leads) for m in range(start, stop)]
                noise = [
                    [
                        torch.stack([m[lead * len(shapes) + i] for m in per_member]).to(self.device)
                        for i in range(len(shapes))
                    ]
                    for lead in range(leads)
                ]
                frames = self.network.sample(
                    inputs.expand(stop - start, -1, -1, -1),
                    leads,
                    temperature=self.temperature,
                    noise=noise,
                    condition_map=self.model.requantize,
                )
                frames = self.model.requantize(frames[..., :ny, :nx].float())
                rain = self.model.transform.inverse(frames).cpu().numpy()
                out[start:stop] = np.maximum(rain, 0.0)
        out[:, :, no_data] = np.nan
        self.model.warn_capped()
        return out
