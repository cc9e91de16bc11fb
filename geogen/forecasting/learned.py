"""Learned forecasters: trained checkpoints behind the :class:`Forecaster` interface.

A learned forecaster is two pieces:

- an inference module, a :class:`~geogen.inference.NowcastModel` (an ``nn.Module``: the
  network with its pre-processing, post-processing and member seeding; :class:`DGMRNowcaster`
  here, :class:`~geogen.forecasting.dgmr_advect.AdvectionNowcaster`,
  :class:`~geogen.forecasting.vae.VAENowcaster`), built from a checkpoint by its
  ``from_checkpoint``;
- a :class:`CheckpointForecaster` registered by name, which finds and checks the checkpoint
  (:class:`geogen.checkpoint.Checkpoint`: ``ckpt=`` or the shipped one, SHA-256, int8
  weights), builds its :attr:`~CheckpointForecaster.module_class` from it and checks the
  context.

``dgmr``: a checkpoint written by ``geogen-train experiment=dgmr`` (or ``dgmr_tiny``)::

    from geogen.forecasting import forecast, get_forecaster

    model = get_forecaster("dgmr", ckpt="last.ckpt", device="auto", batch_members=4)
    ensemble = forecast(model, context, members=20, leads=18, seed=0)

or ``geogen-forecast model=dgmr ckpt=last.ckpt source=mch time=... members=20 out=fc.nc``.

How the context is handled (``predict``):

- missing pixels (NaN) are filled with the training store's ``nan_fill`` (0 mm/h), values are
  mapped to model space with the training transform;
- the domain is zero-padded (no rain) at the bottom and right to multiples of 32, forecast,
  and cropped back: any domain of at least 32 x 32 pixels works (the paper forecasts
  1536 x 1280 with a model trained on 256 x 256 crops);
- members are generated ``batch_members`` at a time (memory-bounded); member ``m`` draws its
  latent noise from a generator seeded with ``(seed, m)``, so a member does not depend on the
  batch it was computed in and the same seed gives the same ensemble;
- the output is mapped back to mm/h and set to NaN where the issue-time frame has no data
  (outside the radar domain), as the context cannot say anything there.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import numpy as np
import torch

from geogen.checkpoint import Checkpoint
from geogen.forecasting.interface import Forecaster, ForecastError, register_forecaster
from geogen.inference import NowcastModel, member_generator, resolve_device

log = logging.getLogger(__name__)

#: Smallest domain side (pixels) a DGMR forecast accepts.
MIN_DOMAIN = 32


def check_context(
    name: str,
    context: np.ndarray,
    n_context: int,
    timestep_minutes: float,
    trained_minutes: float,
) -> np.ndarray:
    """The last ``n_context`` frames of ``context`` ``(time, y, x)`` as float32, after checks.

    Raises
    ------
    ForecastError
        When ``context`` is not 3-D, has too few frames or another time step than training.
    """
    context = np.asarray(context, dtype=np.float32)
    if context.ndim != 3:
        raise ForecastError(f"context must be (time, y, x), got shape {context.shape}")
    if context.shape[0] < n_context:
        raise ForecastError(f"{name} needs {n_context} context frames, got {context.shape[0]}")
    if not np.isclose(timestep_minutes, trained_minutes):
        raise ForecastError(
            f"{name} was trained on {trained_minutes:g}-minute steps; the context is "
            f"every {timestep_minutes:g} minutes"
        )
    return context[-n_context:]


class DGMRNowcaster(NowcastModel):
    """DGMR's generator as an inference module: member seeding and memory-bounded sampling.

    Member ``m`` draws its latent noise (and, for generators with explicit noise, its noise
    innovations) from :func:`~geogen.inference.member_generator` ``(seed, m)``. The context's
    conditioning stack runs once for a batch of members, and the sampler is unrolled over
    chunks of lead times (:meth:`geogen.models.dgmr.Sampler.forward`), with as many leads per
    chunk as keep about :attr:`sampler_memory` bytes of activations alive
    (:meth:`geogen.models.dgmr.Generator.lead_chunk`): a 20-member, 18-lead forecast of the
    MeteoSwiss domain peaks at a few GB instead of ~3 GB per member of the batch, and gives
    the forecast of the plain forward to float rounding. On CPU, tensors are channels-last
    (faster convolutions).

    Parameters
    ----------
    generator
        A :class:`~geogen.models.dgmr.Generator` (or subclass).
    transform, nan_fill
        See :class:`~geogen.inference.NowcastModel`.
    sampler_memory
        About the most bytes of sampler activations alive at once.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        transform: Any,
        *,
        nan_fill: float = 0.0,
        sampler_memory: float = 2 * 2**30,
    ) -> None:
        super().__init__(
            generator,
            transform,
            context_frames=int(generator.context_frames),
            nan_fill=nan_fill,
            size_multiple=32,
            min_domain=MIN_DOMAIN,
        )
        self.sampler_memory = sampler_memory

    @property
    def generator(self) -> torch.nn.Module:
        """The network (a DGMR generator)."""
        return self.network

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> DGMRNowcaster:
        """The generator of a ``geogen-train`` checkpoint (weights under ``network.generator.``)."""
        generator = checkpoint.build("generator", "network.generator.")
        return cls(generator, checkpoint.transform(), nan_fill=checkpoint.data.get("nan_fill", 0))

    def member_inputs(
        self, members: range, seed: int, leads: int, height: int, width: int
    ) -> dict[str, Any]:
        """Member ``m``'s random inputs, drawn from its own ``(seed, m)`` generator.

        ``z``, and ``noise`` when the generator has explicit noise; batched, on the device.
        """
        latents, noises = [], []
        sample_noise = getattr(self.generator, "sample_noise", None)
        for m in members:
            generator = member_generator(seed, m)
            latents.append(self.generator.sample_latent(1, height, width, generator=generator))
            if sample_noise is not None:
                noises.append(sample_noise(1, leads, height, width, generator=generator))
        inputs: dict[str, Any] = {"z": torch.cat(latents).to(self.device)}
        if noises and noises[0]:
            inputs["noise"] = [
                torch.cat(scale).to(self.device) for scale in zip(*noises, strict=True)
            ]
        return inputs

    def forward(
        self, inputs: torch.Tensor, leads: int, members: range, seed: int, **conditions: Any
    ) -> torch.Tensor:
        """Model-space ``(len(members), leads, Y, X)`` from ``inputs`` ``(1, T, Y, X)``."""
        generator = self.generator
        if inputs.dim() != 4 or inputs.shape[0] != 1:
            raise ValueError(f"inputs must be (1, time, y, x), got {tuple(inputs.shape)}")
        if inputs.device.type == "cpu":
            # oneDNN's CPU convolutions run about twice as fast on channels-last tensors
            # (measured: the dgmr_tiny ensemble of 256 x 256); values equal to float rounding.
            generator.to(memory_format=torch.channels_last)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        height, width = inputs.shape[-2:]
        n = len(members)
        random = self.member_inputs(members, seed, leads, height, width)
        chunk = generator.lead_chunk(self.sampler_memory, n, height, width)
        conditions = {key: value.to(inputs.dtype) for key, value in conditions.items()}
        return generator(inputs, leads, lead_chunk=chunk, **random, **conditions)


class CheckpointForecaster(Forecaster):
    """Base of forecasters that run a :class:`~geogen.inference.NowcastModel` from a checkpoint.

    Subclasses set :attr:`module_class`; :attr:`checkpoint_model` (the ``model`` of the
    checkpoint's metadata) defaults to the registered name.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train``; ``None`` takes the checkpoint geogen ships for
        this model (``checkpoints/index.json``, see :mod:`geogen.checkpoint`), if any.
    ckpt_sha256
        Expected SHA-256 of the checkpoint file: loading refuses a file that differs (shipped
        checkpoints are always checked against ``checkpoints/index.json``).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    batch_members
        Ensemble members generated per forward pass (bounds memory).
    precision
        ``"32"`` or ``"bf16"`` (autocast on CUDA).
    """

    stochastic = True
    learned = True
    #: The inference module built from the checkpoint.
    module_class: ClassVar[type[NowcastModel]] = NowcastModel
    #: ``model`` of the checkpoint's metadata (default: the registered name).
    checkpoint_model: ClassVar[str] = ""

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str = "auto",
        batch_members: int = 4,
        precision: str = "32",
        ckpt_sha256: str | None = None,
    ) -> None:
        if int(batch_members) < 1:
            raise ForecastError(f"batch_members must be >= 1, got {batch_members}")
        if precision not in ("32", "bf16"):
            raise ForecastError(f"precision must be '32' or 'bf16', got {precision!r}")
        checkpoint = Checkpoint.load(
            self.name, ckpt, ckpt_sha256, model=self.checkpoint_model or None, error=ForecastError
        )
        self.checkpoint = checkpoint
        self.ckpt = str(checkpoint.path)
        self.checkpoint_sha256 = checkpoint.sha256
        self.meta = checkpoint.meta
        self.data = checkpoint.data
        self.device = resolve_device(device)
        self.batch_members = int(batch_members)
        self.precision = precision
        self.timestep_minutes = float(self.data["timestep_minutes"])
        self.module = self.module_class.from_checkpoint(checkpoint).to(self.device).eval()
        self.n_context = self.module.context_frames
        if self.data.get("context") not in (None, self.n_context):
            raise ForecastError(
                f"{self.ckpt}: trained on {self.data['context']} context frames but the network "
                f"takes {self.n_context}"
            )
        log.info(
            "%s: %s (sha256 %s), %d context frames every %g min, on %s",
            self.name,
            self.ckpt,
            self.checkpoint_sha256[:12],
            self.n_context,
            self.timestep_minutes,
            self.device,
        )

    @property
    def transform(self) -> Any:
        """The training transform (mm/h <-> model space)."""
        return self.module.transform

    def describe(self) -> dict[str, Any]:
        """Model name, checkpoint path and SHA-256, network config, training data, settings."""
        m = self.module.size_multiple
        return {
            "model": self.name,
            **self.checkpoint.describe(),
            "batch_members": self.batch_members,
            "precision": self.precision,
            "padding": f"zero (no rain) to multiples of {m}, cropped back" if m > 1 else "none",
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
        """``(member, lead, y, x)`` mm/h from ``context`` ``(time, y, x)`` mm/h (see module doc)."""
        name = self.name
        context = check_context(
            name, context, self.n_context, timestep_minutes, self.timestep_minutes
        )
        ny, nx = context.shape[1:]
        side = self.module.min_domain
        if ny < side or nx < side:
            raise ForecastError(
                f"domain of {ny} x {nx} pixels is too small for {name}: at least "
                f"{side} x {side} (region=[y0,x0,height,width])"
            )
        return self.module.predict(
            context,
            leads=leads,
            members=members,
            seed=seed,
            timestep_minutes=timestep_minutes,
            batch_members=self.batch_members,
            precision=self.precision,
            progress=progress,
            desc=f"{name} members",
        )


@register_forecaster("dgmr")
class DGMRForecaster(CheckpointForecaster):
    """Ensemble nowcasts with a trained DGMR generator (:class:`DGMRNowcaster`).

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=dgmr`` (or ``dgmr_tiny``).
    device, batch_members, precision, ckpt_sha256
        See :class:`CheckpointForecaster`.
    """

    module_class = DGMRNowcaster
