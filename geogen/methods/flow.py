"""Maximum-likelihood training of the conditional flows of :mod:`geogen.models.flow`.

**Rain's point mass at zero.** A flow is a density on continuous values; radar rain is 0 mm/h
on most pixels. Before a target frame is scored, every pixel below ``dry_threshold`` (0.1 mm/h
by default, the usual radar detection limit; no-data pixels, filled with 0 mm/h by the data
module, count as dry) is *dequantised*: replaced by ``dry_threshold * u``, ``u ~ U(0, 1)``
drawn per pixel and per step (:func:`geogen.losses.flow.dequantize_dry`); then the data's
transform (``log1p`` by default) maps mm/h to *flow space*. Conditions (context frames,
low-res inputs) are the observations without noise. Samples are mapped back to mm/h and
every value below the threshold is set to 0 (dry), so the model rains only where it puts
mass above the detection limit.

**What the likelihood means.** The logged NLL is ``-log p(y | condition)`` of the
dequantised target ``y`` in flow space, in bits per dimension (per pixel and frame):
``{stage}/bpd``. ``{stage}/bpd_rain`` is the same density expressed in mm/h (the
transform's log-Jacobian added), comparable between runs with different transforms. Both are
upper bounds (in expectation over the noise) on the NLL of the mixed discrete/continuous rain
field where a dry pixel is one event of probability ``P(R < threshold)``: for dry pixels
``-log P(dry) <= E_u[-log p(threshold u)] - log(threshold)`` (Theis et al. 2016). Validation
and test draw their noise from a seeded generator, so the figures are reproducible.

For nowcasting the flow is autoregressive frame by frame: the NLL of the lead frames is the
sum over leads of ``-log p(frame_l | the k frames before it)`` with observed previous frames
(teacher forcing), i.e. the exact log-likelihood of the sequence under a k-th order Markov
model; bits/dim divide by ``leads x H x W``. Training scores ``train_leads`` random leads per
batch (all leads: an unbiased estimate either way). For downscaling the flow models all
frames of a sequence jointly given the low-res sequence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from geogen.losses.flow import bits_per_dim, dequantize_dry
from geogen.methods.base import GeogenMethod, NowcastMethod, OptimizerFactory, StagedEvaluation
from geogen.models.flow import FlowDownscaler, FlowNowcaster

log = logging.getLogger(__name__)


class _FlowMixin:
    """Dequantisation, re-quantisation and the Jacobian of the data transform."""

    hparams: Any
    transform: Any

    def _check_transform(self, data: Mapping[str, Any]) -> None:
        transform = self.transform
        if not transform.exactly_invertible:
            raise ValueError(
                f"{type(self).__name__} needs an exactly invertible data transform (identity, "
                f"log1p, scale, standardize) to dequantise dry pixels; {data.get('store')} is "
                f"read with {transform.name!r} (data.transform=log1p)"
            )

    def dequantize(
        self, values: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space ``values`` -> (dequantised values, log|d flow / d mm/h| per example)."""
        threshold = float(self.hparams.dry_threshold)
        rain = self.transform.inverse(values.float()).clamp_min(0.0)
        rain, _ = dequantize_dry(rain, threshold, generator)
        # d flow / d rain, elementwise, by autograd (also under Lightning's inference mode)
        with torch.inference_mode(False), torch.enable_grad():
            rain = rain.detach().clone().requires_grad_(True)
            flow_values = self.transform.forward(rain)
            (derivative,) = torch.autograd.grad(flow_values.sum(), rain)
        log_jacobian = torch.log(derivative.abs()).flatten(1).sum(1)
        return flow_values.detach().to(values.dtype), log_jacobian.detach()

    def requantize(self, values: torch.Tensor) -> torch.Tensor:
        """Generated flow-space ``values``: dry below the threshold, at most ``max_rain`` mm/h."""
        rain = self.transform.inverse(values.float()).clamp(max=float(self.hparams.max_rain))
        rain = torch.where(rain < self.hparams.dry_threshold, torch.zeros_like(rain), rain)
        return self.transform.forward(rain).to(values.dtype)


class FlowNowcastMethod(_FlowMixin, StagedEvaluation, NowcastMethod):
    """Train a :class:`~geogen.models.flow.FlowNowcaster` by maximum likelihood.

    Parameters
    ----------
    network
        The flow.
    optimizer
        One optimizer factory (Adam).
    network_config
        The network's config (stored in checkpoints).
    dry_threshold
        Rain rate (mm/h) below which pixels are dry and dequantised.
    max_rain
        Samples are capped at this rain rate (mm/h): a safeguard against the rare
        overflowing sample of an undertrained flow (``exp`` of a large log-rain); it does
        not enter the likelihood.
    train_leads
        Lead frames scored per training batch (random, without replacement; ``None``: all).
    train_crop
        Train on a random square window of this size (``None``: whole crops).
    temperature
        Temperature of samples (panels).
    val_seed
        Seed of the dequantisation noise in validation and test.
    compile, channels_last
        See :class:`~geogen.methods.base.GeogenMethod`.
    """

    model_name = "flow"
    val_monitor = ("val/bpd", "min")

    def __init__(
        self,
        network: FlowNowcaster,
        optimizer: OptimizerFactory | None = None,
        network_config: Mapping[str, Any] | None = None,
        dry_threshold: float = 0.1,
        max_rain: float = 300.0,
        train_leads: int | None = 4,
        train_crop: int | None = None,
        temperature: float = 1.0,
        val_seed: int = 0,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__(network, optimizer, network_config, compile, channels_last)
        if not isinstance(network, FlowNowcaster):
            raise TypeError(f"FlowNowcastMethod trains a FlowNowcaster, got {type(network)}")
        if not dry_threshold > 0:
            raise ValueError(f"dry_threshold must be > 0 mm/h, got {dry_threshold}")
        self.save_hyperparameters(ignore=["network", "optimizer"])

    def check_data(self, data: Mapping[str, Any]) -> None:
        """A nowcast store with at least the flow's context frames, an invertible transform."""
        super().check_data(data)
        if (data.get("context") or 0) < self.network.context_frames:
            raise ValueError(
                f"{data.get('store')} has {data.get('context')} context frames; the flow is "
                f"conditioned on {self.network.context_frames} (network.context_frames)"
            )
        size = int(self.hparams.train_crop or data["crop_size"])
        if size % self.network.multiple:
            raise ValueError(
                f"training frames of {size} pixels: the flow needs multiples of "
                f"{self.network.multiple} (2^levels)"
            )
        self._check_transform(data)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One optimizer over the flow and its condition encoder."""
        return self.build_optimizer(None, self.network.parameters())

    def _crop(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = self.hparams.train_crop
        h, w = tensors[0].shape[-2:]
        if not size or size >= min(h, w):
            return tensors
        y0 = int(torch.randint(0, h - size + 1, ()).item())
        x0 = int(torch.randint(0, w - size + 1, ()).item())
        return tuple(t[..., y0 : y0 + size, x0 : x0 + size] for t in tensors)

    def nll(
        self,
        context: torch.Tensor,
        target: torch.Tensor,
        leads: list[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Bits/dim over ``leads`` (flow space and mm/h) and the NLL in nats per example."""
        leads = list(range(target.shape[1])) if leads is None else leads
        chosen = target[:, leads]
        dequantized, log_jacobian = self.dequantize(chosen, generator)
        full = torch.zeros_like(target)
        full[:, leads] = dequantized
        log_prob = self.network.log_prob(context, full, leads=leads, observed=target).sum(1)
        dims = len(leads) * target.shape[-1] * target.shape[-2]
        nll = -log_prob
        return {
            "bpd": bits_per_dim(nll, dims).mean(),
            "bpd_rain": bits_per_dim(nll - log_jacobian, dims).mean(),
            "nll": nll.mean(),
        }

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Bits/dim of ``train_leads`` random lead frames (one random window)."""
        context, target = self._crop(batch["context"], batch["target"])
        n_leads = target.shape[1]
        k = self.hparams.train_leads
        leads = None
        if k and k < n_leads:
            leads = sorted(torch.randperm(n_leads)[:k].tolist())
        out = self.nll(context, target, leads)
        batch_size = context.shape[0]
        self.log("train/bpd", out["bpd"].detach(), prog_bar=True, batch_size=batch_size)
        self.log("train/bpd_rain", out["bpd_rain"].detach(), batch_size=batch_size)
        return out["bpd"]

    def _evaluate(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        """Bits/dim of all lead frames (seeded dequantisation)."""
        context, target = batch["context"], batch["target"]
        generator = self.eval_generator(batch_idx, context.device)
        with torch.no_grad():
            parts = [
                self.nll(context, target, [lead], generator) for lead in range(target.shape[1])
            ]
        batch_size = context.shape[0]
        mean = {key: torch.stack([p[key] for p in parts]).mean() for key in parts[0]}
        mean["nll"] = mean["nll"] * len(parts)  # the sequence's NLL is the sum over leads
        self.log_stage(stage, mean, batch_size, prog_bar=stage == "val")

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        members: int = 1,
        leads: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(batch, members, lead, y, x)`` samples in model space (dry below the threshold).

        The context's height and width must be multiples of ``2^levels``.
        """
        leads = leads or self.data_info.get("lead") or self.network.lead_frames
        out = []
        for _ in range(members):
            frames = self.network.sample(
                context,
                leads,
                temperature=float(self.hparams.temperature),
                generator=generator,
                condition_map=self.requantize,
            )
            out.append(self.requantize(frames))
        return torch.stack(out, dim=1)


class FlowDownscaleMethod(_FlowMixin, StagedEvaluation, GeogenMethod):
    """Train a :class:`~geogen.models.flow.FlowDownscaler` by maximum likelihood.

    Parameters are those of :class:`FlowNowcastMethod` but ``train_leads``.
    """

    model_name = "flow"
    val_monitor = ("val/bpd", "min")

    def __init__(
        self,
        network: FlowDownscaler,
        optimizer: OptimizerFactory | None = None,
        network_config: Mapping[str, Any] | None = None,
        dry_threshold: float = 0.1,
        max_rain: float = 300.0,
        temperature: float = 1.0,
        val_seed: int = 0,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__(network, optimizer, network_config, compile, channels_last)
        if not isinstance(network, FlowDownscaler):
            raise TypeError(f"FlowDownscaleMethod trains a FlowDownscaler, got {type(network)}")
        if not dry_threshold > 0:
            raise ValueError(f"dry_threshold must be > 0 mm/h, got {dry_threshold}")
        self.save_hyperparameters(ignore=["network", "optimizer"])

    def check_data(self, data: Mapping[str, Any]) -> None:
        """A downscale store with the flow's factor, frames and a fitting crop size."""
        store = data.get("store")
        self.require_task(data, "downscale")
        if data.get("factor") != self.network.factor:
            raise ValueError(
                f"{store} has factor {data.get('factor')}; the flow is built for "
                f"{self.network.factor} (network.factor)"
            )
        if data["crop_size"] % self.network.multiple:
            raise ValueError(
                f"{store}: crops of {data['crop_size']} pixels; the flow needs multiples of "
                f"{self.network.multiple} (2^levels)"
            )
        self._check_transform(data)

    def setup(self, stage: str) -> None:
        """Also check the number of frames per sequence against the network."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "info"):
            frames = int(datamodule.info.n_times)
            if frames != self.network.frames:
                raise ValueError(
                    f"{datamodule.info.path} has sequences of {frames} frames; the flow models "
                    f"{self.network.frames} (network.frames)"
                )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One optimizer over the flow and its condition encoder."""
        return self.build_optimizer(None, self.network.parameters())

    def nll(
        self,
        lowres: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Bits/dim (flow space and mm/h) and the NLL in nats per example."""
        dequantized, log_jacobian = self.dequantize(target, generator)
        nll = -self.network.log_prob(lowres, dequantized)
        dims = math.prod(target.shape[1:])
        return {
            "bpd": bits_per_dim(nll, dims).mean(),
            "bpd_rain": bits_per_dim(nll - log_jacobian, dims).mean(),
            "nll": nll.mean(),
        }

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Bits/dim of the batch."""
        out = self.nll(batch["lowres"], batch["target"])
        batch_size = batch["target"].shape[0]
        self.log("train/bpd", out["bpd"].detach(), prog_bar=True, batch_size=batch_size)
        self.log("train/bpd_rain", out["bpd_rain"].detach(), batch_size=batch_size)
        return out["bpd"]

    def _evaluate(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        """Bits/dim (seeded dequantisation)."""
        generator = self.eval_generator(batch_idx, batch["target"].device)
        with torch.no_grad():
            out = self.nll(batch["lowres"], batch["target"], generator)
        self.log_stage(stage, out, batch["target"].shape[0], prog_bar=stage == "val")

    @torch.no_grad()
    def sample(
        self,
        lowres: torch.Tensor,
        members: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(batch, members, frames, Y, X)`` samples in model space (dry below the threshold)."""
        out = [
            self.requantize(
                self.network.sample(
                    lowres, temperature=float(self.hparams.temperature), generator=generator
                )
            )
            for _ in range(members)
        ]
        return torch.stack(out, dim=1)
