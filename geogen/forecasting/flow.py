"""The conditional normalizing flow behind the :class:`Forecaster` interface (``model=flow``).

A checkpoint written by ``geogen-train experiment=flow_nowcast`` (or ``flow_nowcast_tiny``)::

    model = get_forecaster("flow", ckpt="last.ckpt", device="auto", batch_members=4)
    ensemble = forecast(model, context, members=20, leads=18, seed=0)

or ``geogen-forecast model=flow ckpt=last.ckpt source=mch time=... members=20 out=fc.nc``.

The flow forecasts frame by frame: lead ``l`` is drawn from ``p(frame | the k frames before
it)``, the earlier lead frames being the member's own samples (mapped to mm/h, dry below the
training ``dry_threshold``, and back to model space, as the observed context is). As for DGMR
(:mod:`geogen.forecasting.learned`, whose checkpoint loader and helpers are reused): missing
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

from geogen.forecasting.interface import Forecaster, ForecastError, register_forecaster
from geogen.forecasting.learned import (
    build_submodule,
    check_context,
    load_geogen_checkpoint,
    member_batches,
    member_generator,
    resolve_device,
    sha256_file,
)

log = logging.getLogger(__name__)


class FlowCheckpoint:
    """A flow network, its data description and its method settings, from a checkpoint.

    Parameters
    ----------
    ckpt
        Checkpoint of ``geogen-train experiment=flow_*``.
    task
        ``"nowcast"`` or ``"downscale"``: the task the checkpoint must have been trained on.
    device
        Where the network runs.
    error
        Exception class of the messages.
    checkpoint, sha256
        The checkpoint already read (by :func:`load_geogen_checkpoint`) and its SHA-256, to
        avoid reading it again.
    """

    def __init__(
        self,
        ckpt: str | os.PathLike,
        task: str,
        device: torch.device,
        error: type[Exception] = ForecastError,
        checkpoint: dict[str, Any] | None = None,
        sha256: str | None = None,
    ) -> None:
        from geogen.data.transforms import get_transform

        if checkpoint is None:
            try:
                checkpoint = load_geogen_checkpoint(ckpt, "flow")
            except ForecastError as exc:
                raise error(str(exc)) from exc
        meta = checkpoint["geogen"]
        self.meta = meta
        self.data = dict(meta["data"])
        if self.data.get("task") != task:
            nowcast = self.data.get("task") == "nowcast"
            command = "geogen-forecast" if nowcast else "geogen-downscale"
            raise error(
                f"{ckpt} is a flow trained for {self.data.get('task')!r}, not {task!r} "
                f"(use {command} model=flow)"
            )
        self.ckpt = str(ckpt)
        self.sha256 = sha256 or sha256_file(ckpt)
        try:
            network = build_submodule(checkpoint, ckpt, meta["network_config"], "network.")
        except ForecastError as exc:
            raise error(str(exc)) from exc
        self.network = network.to(device).eval()
        hparams = checkpoint.get("hyper_parameters") or {}
        self.dry_threshold = float(hparams.get("dry_threshold", 0.1))
        self.temperature = float(hparams.get("temperature", 1.0))
        self.max_rain = float(hparams.get("max_rain", 300.0))
        self.capped = 0  # generated values capped at max_rain (counted for a warning)
        spec = dict(self.data.get("transform") or {"name": "identity"})
        self.transform = get_transform(spec.pop("name"), **spec)

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

    def to_model(self, rain: np.ndarray, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """mm/h ``(T, y, x)`` (NaN filled) -> padded model-space tensor and the padding."""
        filled = np.where(np.isfinite(rain), rain, np.float32(self.data.get("nan_fill", 0.0)))
        values = np.asarray(self.transform.forward(filled), dtype=np.float32)
        ny, nx = rain.shape[-2:]
        pad = ((-ny) % multiple, (-nx) % multiple)
        zero = float(self.transform.forward(np.float32(0.0)))
        padded = np.pad(values, ((0, 0), (0, pad[0]), (0, pad[1])), constant_values=zero)
        return torch.from_numpy(padded), pad

    def describe(self) -> dict[str, Any]:
        """Checkpoint path and SHA-256, network config, training data, sampling settings."""
        return {
            "checkpoint": self.ckpt,
            "checkpoint_sha256": self.sha256,
            "network_config": self.meta.get("network_config"),
            "training_data": self.data,
            "versions": self.meta.get("versions"),
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
    """

    stochastic = True

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str = "auto",
        batch_members: int = 4,
        temperature: float | None = None,
    ) -> None:
        if ckpt is None:
            raise ForecastError("model=flow needs a checkpoint: ckpt=PATH (from geogen-train)")
        if int(batch_members) < 1:
            raise ForecastError(f"batch_members must be >= 1, got {batch_members}")
        self.device = resolve_device(device)
        self.model = FlowCheckpoint(ckpt, "nowcast", self.device)
        self.network = self.model.network
        self.batch_members = int(batch_members)
        self.temperature = self.model.temperature if temperature is None else float(temperature)
        if self.temperature < 0:
            raise ForecastError(f"temperature must be >= 0, got {self.temperature}")
        self.n_context = int(self.network.context_frames)
        self.timestep_minutes = float(self.model.data["timestep_minutes"])
        log.info(
            "flow: %s (sha256 %s), %d context frames every %g min, on %s",
            ckpt,
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
        inputs, _ = self.model.to_model(context, multiple)
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
