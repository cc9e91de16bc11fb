"""Conditional VAE training (Kingma and Welling 2014, conditional form): maximise the ELBO.

Per training batch (condition ``c``: context frames or the low-resolution sequence; target
``y``; ``mask`` of valid target pixels):

1. the posterior ``q(z | c, y)`` and the prior ``p(z | c)`` (learned, or N(0, I)) are
   computed; ``z`` is one reparameterised sample of the posterior;
2. ``recon = -log p(y | z, c)`` summed over the valid pixels of each example, with the
   network's likelihood (:mod:`geogen.losses.vae`): ``zero_inflated`` (default: a point mass at
   "dry", pixels at or below ``dry_threshold`` mm/h, and a Gaussian for wet values in model
   space) or ``gaussian``;
3. ``kl = KL(q || p)`` in closed form, summed over the latent;
4. the loss is ``(recon + beta_t * kl) / pixels``, with ``beta_t`` ramped linearly from 0 to
   ``beta`` over ``kl_warmup_steps`` optimizer steps (KL warm-up).

Logged per valid pixel (nats): ``recon``, ``kl``, ``nll = recon + kl`` (the negative ELBO with
``beta = 1``, an upper bound on the negative log-likelihood), ``loss`` and ``beta``. Validation
and test use a seeded generator for the posterior sample, so they never touch the training's
random streams.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from geogen.losses.vae import gaussian_kl, gaussian_nll, kl_weight, masked_sum, zero_inflated_nll
from geogen.methods.base import GeogenMethod, NowcastMethod, OptimizerFactory, StagedEvaluation

log = logging.getLogger(__name__)


def reconstruction_nll(
    params: torch.Tensor, target: torch.Tensor, likelihood: str, dry_level: float
) -> torch.Tensor:
    """Per-pixel ``-log p(target | params)`` ``(B, L, H, W)``, ``params`` ``(B, L, P, H, W)``.

    ``dry_level`` is the model-space value at or below which a pixel counts as dry
    (zero-inflated likelihood only).
    """
    if likelihood == "gaussian":
        return gaussian_nll(target, params[:, :, 0], params[:, :, 1])
    if likelihood == "zero_inflated":
        dry = target <= dry_level
        return zero_inflated_nll(target, params[:, :, 0], params[:, :, 1], params[:, :, 2], dry)
    raise ValueError(f"unknown likelihood {likelihood!r}")


class _VAEMethod(StagedEvaluation, GeogenMethod):
    """The ELBO, KL warm-up and logging that both conditional VAEs share."""

    model_name = "vae"
    val_monitor = ("val/nll", "min")
    condition_key = ""

    def __init__(
        self,
        network: torch.nn.Module,
        optimizer: OptimizerFactory | None = None,
        network_config: Mapping[str, Any] | None = None,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        dry_threshold: float = 0.0,
        train_crop: int | None = None,
        val_seed: int = 0,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__(network, optimizer, network_config, compile, channels_last)
        for attribute in ("likelihood", "sample", "decode", "point"):
            if not hasattr(network, attribute):
                raise TypeError(
                    f"{type(self).__name__} trains a conditional VAE (geogen.models.vae); "
                    f"{type(network).__name__} has no .{attribute}"
                )
        if beta < 0 or kl_warmup_steps < 0 or dry_threshold < 0:
            raise ValueError(
                f"beta ({beta}), kl_warmup_steps ({kl_warmup_steps}) and dry_threshold "
                f"({dry_threshold}) must be >= 0"
            )
        self.save_hyperparameters(ignore=["network", "optimizer"])
        self._dry_level = 0.0

    # -- data ---------------------------------------------------------------------------------
    def check_data(self, data: Mapping[str, Any]) -> None:
        """Record the model-space dry level of the store's transform."""
        super().check_data(data)
        self._dry_level = self.dry_level()

    def dry_level(self) -> float:
        """Model-space value at or below which a pixel is dry (``dry_threshold`` mm/h)."""
        threshold = np.float32(self.hparams.dry_threshold)
        return float(self.transform.forward(threshold)) + 1e-6

    def zero_value(self) -> float:
        """Model-space value of no rain (0 in physical units)."""
        return float(self.transform.forward(np.float32(0.0)))

    def _crop(self, tensors: list[torch.Tensor], factor: int = 1) -> list[torch.Tensor]:
        """The same random ``train_crop`` window of every tensor (``factor``: low-res ones)."""
        size = self.hparams.train_crop
        height, width = tensors[-1].shape[-2:]
        if not size or size >= min(height, width):
            return tensors
        step = max(factor, getattr(self.network, "size_multiple", 1))
        y0 = int(torch.randint(0, (height - size) // step + 1, ()).item()) * step
        x0 = int(torch.randint(0, (width - size) // step + 1, ()).item()) * step
        out = []
        for tensor in tensors:
            scale = height // tensor.shape[-2]
            out.append(
                tensor[
                    ...,
                    y0 // scale : (y0 + size) // scale,
                    x0 // scale : (x0 + size) // scale,
                ]
            )
        return out

    # -- the ELBO -----------------------------------------------------------------------------
    def elbo_terms(
        self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-pixel ``recon``, ``kl``, ``nll`` (batch means) and the training ``loss``."""
        likelihood = self.network.likelihood
        nll = reconstruction_nll(
            outputs["params"].float(), target.float(), likelihood, self._dry_level
        )
        recon = masked_sum(nll, mask)
        kl = (
            gaussian_kl(
                outputs["posterior_mean"].float(),
                outputs["posterior_logvar"].float(),
                outputs["prior_mean"].float(),
                outputs["prior_logvar"].float(),
            )
            .flatten(1)
            .sum(1)
        )
        pixels = mask.flatten(1).sum(1).clamp_min(1).float()
        beta = kl_weight(self.global_step, self.hparams.beta, self.hparams.kl_warmup_steps)
        return {
            "loss": ((recon + beta * kl) / pixels).mean(),
            "recon": (recon / pixels).mean(),
            "kl": (kl / pixels).mean(),
            "nll": ((recon + kl) / pixels).mean(),
            "beta": torch.tensor(beta),
        }

    def _inputs(
        self, batch: Mapping[str, torch.Tensor], crop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _forward(
        self,
        condition: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        eps = None
        if generator is not None:
            shape = (target.shape[0], *self.network.latent_shape(*target.shape[-2:]))
            eps = torch.randn(shape, generator=generator, device=generator.device).to(target)
        if self.use_channels_last:
            condition = condition.contiguous(memory_format=torch.channels_last)
        return self.network(condition, target, eps=eps)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One optimizer for the encoders, the prior and the decoder."""
        return self.build_optimizer(None, self.network.parameters())

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The negative ELBO (with KL weight ``beta_t``) per valid pixel."""
        condition, target, mask = self._inputs(batch, crop=True)
        terms = self.elbo_terms(self._forward(condition, target), target, mask)
        batch_size = target.shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=batch_size)
        self.log("nll", terms["nll"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        return terms["loss"]

    def _evaluate(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        """ELBO terms of the batch (seeded posterior sample)."""
        condition, target, mask = self._inputs(batch)
        generator = self.eval_generator(batch_idx)
        with torch.no_grad():
            terms = self.elbo_terms(self._forward(condition, target, generator), target, mask)
        terms.pop("beta")
        self.log_stage(stage, terms, target.shape[0])


class VAENowcastMethod(_VAEMethod, NowcastMethod):
    """Train a :class:`~geogen.models.vae.NowcastVAE` by maximising the ELBO.

    Parameters
    ----------
    network
        The :class:`~geogen.models.vae.NowcastVAE`.
    optimizer
        An optimizer factory (Adam, ``_partial_: true``).
    network_config
        The network's config (stored in checkpoints).
    beta
        Final weight of the KL term (1: the ELBO).
    kl_warmup_steps
        Optimizer steps over which the KL weight rises linearly from 0 to ``beta``.
    dry_threshold
        Rain rate (mm/h) at or below which a target pixel is dry (zero-inflated likelihood).
    train_crop
        Train on a random ``train_crop`` square of each batch (``None``: the whole crop).
    val_seed
        Seed of the validation/test posterior samples.
    compile, channels_last
        See :class:`~geogen.methods.base.GeogenMethod`.
    """

    def check_data(self, data: Mapping[str, Any]) -> None:
        """A nowcast store whose context and lead fit the network and crops its size allows."""
        super().check_data(data)
        store = data.get("store")
        if data.get("context") != self.network.context_frames:
            raise ValueError(
                f"{store} has {data.get('context')} context frames; the network takes "
                f"{self.network.context_frames} (network.context_frames)"
            )
        if data.get("lead") != self.network.lead_frames:
            raise ValueError(
                f"{store} has {data.get('lead')} lead frames; the network's posterior encoder "
                f"reads {self.network.lead_frames} (network.lead_frames)"
            )
        size = int(self.hparams.train_crop or data["crop_size"])
        multiple = self.network.size_multiple
        if size > data["crop_size"] or size % multiple:
            raise ValueError(
                f"training frames of {size} pixels: need a multiple of {multiple} no larger "
                f"than the {data['crop_size']}-pixel crops (method.train_crop)"
            )

    def _inputs(
        self, batch: Mapping[str, torch.Tensor], crop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``context (B, C, H, W)``, ``target (B, L, H, W)``, lead ``mask (B, L, H, W)``."""
        context, target = batch["context"], batch["target"]
        mask = (
            batch["mask"][:, context.shape[1] :]
            if "mask" in batch
            else torch.ones_like(target, dtype=torch.bool)
        )
        if crop:
            context, target, mask = self._crop([context, target, mask])
        return context, target, mask

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        members: int = 1,
        leads: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(batch, members, lead, y, x)`` point forecasts in model space, ``z`` from the prior."""
        leads = leads or self.data_info.get("lead") or self.network.lead_frames
        zero = self.zero_value() if self.data_info else 0.0
        out = [
            self.network.point(self.network.sample(context, leads, generator=generator), zero)
            for _ in range(members)
        ]
        return torch.stack(out, dim=1)


class VAEDownscaleMethod(_VAEMethod):
    """Train a :class:`~geogen.models.vae.DownscaleVAE` by maximising the ELBO.

    Parameters are those of :class:`VAENowcastMethod`; the condition is the store's
    low-resolution sequence (``lowres``).
    """

    def check_data(self, data: Mapping[str, Any]) -> None:
        """A downscale store of the network's factor."""
        self.require_task(data, "downscale")
        super().check_data(data)
        if data.get("factor") != self.network.factor:
            raise ValueError(
                f"{data.get('store')} has factor {data.get('factor')}; the network downscales by "
                f"{self.network.factor} (network.factor)"
            )
        size = int(self.hparams.train_crop or data["crop_size"])
        if size > data["crop_size"] or size % self.network.factor:
            raise ValueError(
                f"training frames of {size} pixels: need a multiple of {self.network.factor} "
                f"no larger than the {data['crop_size']}-pixel crops (method.train_crop)"
            )

    def _inputs(
        self, batch: Mapping[str, torch.Tensor], crop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``lowres (B, T, h, w)``, ``target (B, T, H, W)``, ``mask (B, T, H, W)``."""
        lowres, target = batch["lowres"], batch["target"]
        mask = batch.get("mask")
        if mask is None:
            mask = torch.ones_like(target, dtype=torch.bool)
        if crop:
            lowres, target, mask = self._crop([lowres, target, mask], self.network.factor)
        return lowres, target, mask

    @torch.no_grad()
    def sample(
        self,
        lowres: torch.Tensor,
        members: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(batch, members, T, H, W)`` point downscalings in model space, ``z`` from the prior."""
        zero = self.zero_value() if self.data_info else 0.0
        out = [
            self.network.point(self.network.sample(lowres, generator=generator), zero)
            for _ in range(members)
        ]
        return torch.stack(out, dim=1)
