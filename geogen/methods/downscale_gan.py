"""Training recipes of the downscaling GAN (Leinonen et al. 2020) and its deterministic twin.

:class:`DownscaleGANMethod` (manual optimisation), per training batch (low-res ``x``, high-res
``y``):

1. ``critic_steps`` (5) critic steps: a generator sample drawn without gradients, the
   Wasserstein critic loss ``mean(D(fake)) - mean(D(real))`` plus ``gp_weight`` (10) times the
   gradient penalty at random interpolates of real and generated sequences; Adam step of the
   critic. Each step draws new noise (the batch is the same: Lightning hands one batch per
   training step, where the published code reads a new batch per critic step);
2. one generator step: ``-mean(D(G(x, z)))``; Adam step of the generator only.

Both Adam optimisers use lr 1e-4 and betas (0.5, 0.9) in the paper. Lightning counts every
optimizer step: ``critic_steps + 1`` per batch.

:class:`DownscaleDeterministicMethod` trains the same generator with zero noise on the mean
squared error in model space: the deterministic baseline of the paper's comparisons.

Missing observations (``mask`` False) are filled with the store's ``nan_fill`` by the data
module; generated frames are set to the same fill value there before the critic sees them,
and the MSE ignores them. Validation logs the MSE of one seeded sample (and the critic's
Wasserstein estimate for the GAN); validation noise comes from its own seeded generator, so it
never changes the training's random streams.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from geogen.losses import (
    gradient_penalty,
    interpolate_samples,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)
from geogen.methods.base import GeogenMethod, OptimizerFactory, StagedEvaluation
from geogen.models.downscale_gan import DownscaleGAN

log = logging.getLogger(__name__)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the pixels where ``mask`` is True (0 when none is)."""
    weights = mask.to(prediction.dtype)
    return ((prediction - target) ** 2 * weights).sum() / weights.sum().clamp_min(1.0)


class DownscaleMethod(StagedEvaluation, GeogenMethod):
    """What the downscaling recipes share: data checks, inputs, sampling, validation.

    Parameters
    ----------
    network
        A :class:`~geogen.models.downscale_gan.DownscaleGAN`.
    optimizer, network_config, compile, channels_last
        See :class:`~geogen.methods.base.GeogenMethod`.
    train_crop
        Train on a random window of ``train_crop`` high-res pixels (a multiple of the factor;
        ``None``: whole crops).
    train_frames
        Train on a random window of this many consecutive frames (``None`` or more than the
        store has: every frame); the networks are recurrent and take any number of frames.
    val_seed
        Seed of the validation noise.
    """

    val_monitor = ("val/mse", "min")
    deterministic = False

    def __init__(
        self,
        network: DownscaleGAN,
        optimizer: OptimizerFactory | Mapping[str, OptimizerFactory] | None = None,
        network_config: Mapping[str, Any] | None = None,
        train_crop: int | None = None,
        train_frames: int | None = None,
        val_seed: int = 0,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__(network, optimizer, network_config, compile, channels_last)
        if train_frames is not None and train_frames < 1:
            raise ValueError(f"train_frames must be >= 1 or null, got {train_frames}")
        if not hasattr(network, "generator"):
            raise TypeError(f"{type(self).__name__} trains a network with a .generator")
        self._fill = 0.0

    @property
    def factor(self) -> int:
        """The generator's resolution factor."""
        return int(self.network.generator.factor)

    def check_data(self, data: Mapping[str, Any]) -> None:
        """A downscale store of the generator's factor, crops a multiple of it."""
        store = data.get("store")
        self.require_task(data, "downscale")
        if int(data.get("factor") or 0) != self.factor:
            raise ValueError(
                f"{store} pairs are for factor {data.get('factor')}; the generator's is "
                f"{self.factor} (network.generator.factor)"
            )
        size = int(self.hparams.train_crop or data["crop_size"])
        if size > data["crop_size"] or size % self.factor or size < 2 * self.factor:
            raise ValueError(
                f"train_crop {size}: must be a multiple of the factor {self.factor}, at least "
                f"2 x factor and at most the {data['crop_size']}-pixel crops"
            )
        self._fill = float(self.transform.forward(np.float32(data.get("nan_fill", 0.0))))

    def _inputs(
        self, batch: Mapping[str, torch.Tensor], crop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``lowres (B, T, h, w)``, ``target (B, T, H, W)``, ``mask (B, T, H, W)``."""
        lowres, target = batch["lowres"], batch["target"]
        mask = batch["mask"] if "mask" in batch else torch.ones_like(target, dtype=torch.bool)
        size = self.hparams.train_crop
        f = self.factor
        if crop and size and size < target.shape[-1]:
            h, w = lowres.shape[-2:]
            n = size // f
            y0 = int(torch.randint(0, h - n + 1, ()).item())
            x0 = int(torch.randint(0, w - n + 1, ()).item())
            lowres = lowres[..., y0 : y0 + n, x0 : x0 + n]
            window = (..., slice(y0 * f, (y0 + n) * f), slice(x0 * f, (x0 + n) * f))
            target, mask = target[window], mask[window]
        frames = self.hparams.get("train_frames")
        if crop and frames and frames < target.shape[1]:
            t0 = int(torch.randint(0, target.shape[1] - frames + 1, ()).item())
            steps = slice(t0, t0 + frames)
            lowres, target, mask = lowres[:, steps], target[:, steps], mask[:, steps]
        return lowres, target, mask

    def _fill_missing(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, frames, torch.full_like(frames, self._fill))

    def generate(
        self, lowres: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One generator sample (zero noise for the deterministic twin)."""
        gen = self.network.generator
        if self.deterministic:
            b, t, h, w = lowres.shape
            noise = torch.zeros(
                b, t + 1, gen.noise_channels, h, w, device=lowres.device, dtype=lowres.dtype
            )
            return gen(lowres, noise=noise)
        return gen(lowres, generator=generator)

    @torch.no_grad()
    def sample(
        self,
        lowres: torch.Tensor,
        members: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(batch, members, time, H, W)`` samples in model space from ``(batch, time, h, w)``."""
        out = [self.generate(lowres, generator=generator) for _ in range(members)]
        return torch.stack(out, dim=1)

    def _evaluate(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        """MSE of a seeded sample (and the critic's Wasserstein estimate)."""
        lowres, target, mask = self._inputs(batch)
        generator = self.eval_generator(batch_idx)
        with torch.no_grad():
            fake = self._fill_missing(self.generate(lowres, generator=generator), mask)
            metrics = {f"{stage}/mse": masked_mse(fake.float(), target.float(), mask)}
            disc = getattr(self.network, "discriminator", None)
            if disc is not None and not self.deterministic:
                scores = disc(torch.cat([target, fake]), torch.cat([lowres, lowres]))
                real, fake_scores = scores.chunk(2)
                metrics[f"{stage}/wasserstein"] = (real.mean() - fake_scores.mean()).float()
        self.log_dict(metrics, batch_size=lowres.shape[0], sync_dist=True, prog_bar=True)


class DownscaleGANMethod(DownscaleMethod):
    """Wasserstein GAN with gradient penalty (Leinonen et al. 2020), manual optimisation.

    Parameters
    ----------
    network
        A :class:`~geogen.models.downscale_gan.DownscaleGAN` with a discriminator.
    optimizer
        ``{"generator": factory, "discriminator": factory}`` (Adam, lr 1e-4, betas (0.5, 0.9)).
    critic_steps
        Critic steps per generator step (5).
    gp_weight
        Weight of the gradient penalty (10).
    train_crop, train_frames, val_seed, network_config, compile, channels_last
        See :class:`DownscaleMethod`.
    """

    model_name = "downscale_gan"

    def __init__(
        self,
        network: DownscaleGAN,
        optimizer: Mapping[str, OptimizerFactory] | None = None,
        network_config: Mapping[str, Any] | None = None,
        critic_steps: int = 5,
        gp_weight: float = 10.0,
        train_crop: int | None = None,
        train_frames: int | None = None,
        val_seed: int = 0,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__(
            network,
            optimizer,
            network_config,
            train_crop,
            train_frames,
            val_seed,
            compile,
            channels_last,
        )
        if getattr(network, "discriminator", None) is None:
            raise TypeError("DownscaleGANMethod needs a network with a discriminator")
        if critic_steps < 1 or gp_weight < 0:
            raise ValueError(
                f"critic_steps ({critic_steps}) must be >= 1 and gp_weight ({gp_weight}) >= 0"
            )
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["network", "optimizer"])

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """``[generator optimizer, critic optimizer]``."""
        return [
            self.build_optimizer("generator", self.network.generator.parameters()),
            self.build_optimizer("discriminator", self.network.discriminator.parameters()),
        ]

    def critic_step_loss(
        self, lowres: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Wasserstein critic loss + ``gp_weight`` x gradient penalty on one detached sample."""
        disc = self.network.discriminator
        with torch.no_grad():
            fake = self._fill_missing(self.generate(lowres), mask)
        scores = disc(torch.cat([target, fake]), torch.cat([lowres, lowres]))
        score_real, score_fake = scores.chunk(2)
        mixed = interpolate_samples(target, fake)
        # Double backward through the critic: keep the penalty out of autocast.
        with torch.autocast(self.device.type, enabled=False):
            penalty = gradient_penalty(disc(mixed.float(), lowres.float()), mixed)
        wasserstein = wasserstein_critic_loss(score_real, score_fake)
        return {
            "d_loss": wasserstein + self.hparams.gp_weight * penalty,
            "gradient_penalty": penalty.detach(),
            "wasserstein": -wasserstein.detach(),
        }

    def generator_step_loss(self, lowres: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``-mean(D(G(x, z)))``."""
        fake = self._fill_missing(self.generate(lowres), mask)
        return wasserstein_generator_loss(self.network.discriminator(fake, lowres))

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """``critic_steps`` critic steps, then one generator step."""
        opt_g, opt_d = self.optimizers()
        lowres, target, mask = self._inputs(batch, crop=True)
        for _ in range(self.hparams.critic_steps):
            d = self.critic_step_loss(lowres, target, mask)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d["d_loss"])
            opt_d.step()
        self.toggle_optimizer(opt_g)  # freezes the critic's parameters
        g_loss = self.generator_step_loss(lowres, mask)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        batch_size = lowres.shape[0]
        self.log_dict(
            {
                "train/d_loss": d["d_loss"].detach(),
                "train/g_loss": g_loss.detach(),
                "train/gradient_penalty": d["gradient_penalty"],
                "train/wasserstein": d["wasserstein"],
            },
            batch_size=batch_size,
        )
        self.log("d_loss", d["d_loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        self.log("g_loss", g_loss.detach(), prog_bar=True, logger=False, batch_size=batch_size)


class DownscaleDeterministicMethod(DownscaleMethod):
    """The deterministic twin: the same generator with zero noise, trained on the MSE.

    Parameters
    ----------
    network
        A :class:`~geogen.models.downscale_gan.DownscaleGAN` (its discriminator, if any, is
        not trained).
    optimizer
        One factory, or ``{"generator": factory, ...}`` (Adam, lr 1e-4, betas (0.5, 0.9)).
    train_crop, train_frames, val_seed, network_config, compile, channels_last
        See :class:`DownscaleMethod`.
    """

    model_name = "downscale_det"
    deterministic = True

    def __init__(
        self,
        network: DownscaleGAN,
        optimizer: OptimizerFactory | Mapping[str, OptimizerFactory] | None = None,
        network_config: Mapping[str, Any] | None = None,
        train_crop: int | None = None,
        train_frames: int | None = None,
        val_seed: int = 0,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__(
            network,
            optimizer,
            network_config,
            train_crop,
            train_frames,
            val_seed,
            compile,
            channels_last,
        )
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["network", "optimizer"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The generator's optimizer."""
        factories = self.optimizer_factories
        role = "generator" if isinstance(factories, Mapping) else None
        return self.build_optimizer(role, self.network.generator.parameters())

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """One MSE step of the generator."""
        opt = self.optimizers()
        lowres, target, mask = self._inputs(batch, crop=True)
        loss = masked_mse(self.generate(lowres), target, mask)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        self.log("train/mse", loss.detach(), prog_bar=True, batch_size=lowres.shape[0])


class DownscaleCRPSMethod(DownscaleMethod):
    """Train a stochastic downscaler on a proper score of its samples, without a critic.

    Per batch, ``members`` samples of the generator are scored against the truth (mm/h, the
    data's ``transform`` must be ``identity``; values capped at ``cap`` so that clutter of a
    few pixels does not drive the gradients) with the almost fair CRPS (``alpha``) of the
    pixels and of ``k x k`` window means for ``k`` in ``pools``, plus ``spectral_weight``
    times the squared log10 ratio of the member-mean power spectrum to the observed one
    (:func:`geogen.losses.log_spectral_loss`). Validation logs the CRPS (``val/crps``, plain
    ensemble CRPS of ``val_members`` seeded samples, mm/h) that chooses the weights.

    Parameters
    ----------
    network
        A :class:`~geogen.models.downscale_gan.DownscaleGAN` whose generator works in mm/h
        (:class:`~geogen.models.downscale_residual.ResidualGenerator`); a discriminator, if
        any, is not trained.
    optimizer
        One factory, or ``{"generator": factory, ...}``.
    members, val_members
        Samples per training / validation input (>= 2).
    alpha
        Weight of the fair CRPS in the almost fair CRPS.
    pools
        Window sides of the CRPS (1: pixels).
    spectral_weight
        Weight of the spectral term.
    cap
        mm/h above which samples and truth count as ``cap`` in the losses.
    train_crop, train_frames, val_seed, network_config, compile, channels_last
        See :class:`DownscaleMethod`.
    """

    model_name = "downscale_gan"

    def __init__(
        self,
        network: DownscaleGAN,
        optimizer: OptimizerFactory | Mapping[str, OptimizerFactory] | None = None,
        network_config: Mapping[str, Any] | None = None,
        members: int = 4,
        val_members: int = 8,
        alpha: float = 0.95,
        pools: tuple[int, ...] = (1, 2, 4, 8),
        spectral_weight: float = 0.1,
        cap: float = 100.0,
        train_crop: int | None = None,
        train_frames: int | None = None,
        val_seed: int = 0,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__(
            network,
            optimizer,
            network_config,
            train_crop,
            train_frames,
            val_seed,
            compile,
            channels_last,
        )
        if members < 2 or val_members < 2:
            raise ValueError(f"members ({members}) and val_members ({val_members}) must be >= 2")
        pools = tuple(int(k) for k in pools)  # plain ints: checkpoints load weights_only
        if spectral_weight < 0 or cap <= 0 or not pools or min(pools) < 1:
            raise ValueError("need spectral_weight >= 0, cap > 0 and pool sizes >= 1")
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["network", "optimizer"])

    def check_data(self, data: Mapping[str, Any]) -> None:
        """A downscale store (see :class:`DownscaleMethod`) read in mm/h (identity transform)."""
        super().check_data(data)
        name = (data.get("transform") or {}).get("name", "identity")
        if name != "identity":
            raise ValueError(
                f"{type(self).__name__} scores rain in mm/h: set data.transform=identity "
                f"(got {name!r})"
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The generator's optimizer."""
        factories = self.optimizer_factories
        role = "generator" if isinstance(factories, Mapping) else None
        return self.build_optimizer(role, self.network.generator.parameters())

    def losses(
        self, samples: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``crps``, ``spectral`` and ``loss`` of ``samples`` ``(S, B, T, H, W)``, mm/h."""
        from geogen.losses import almost_fair_crps, log_spectral_loss

        cap = float(self.hparams.cap)
        samples = torch.minimum(samples, torch.full_like(samples, cap))
        target = torch.where(mask, target.clamp(max=cap), torch.zeros_like(target))
        samples = torch.where(mask.unsqueeze(0), samples, torch.zeros_like(samples))
        terms = []
        for k in self.hparams.pools:
            k = int(k)
            if k == 1:
                terms.append(almost_fair_crps(samples, target, alpha=self.hparams.alpha))
                continue
            pooled = torch.nn.functional.avg_pool2d(samples.flatten(0, 2), k)
            pooled = pooled.unflatten(0, samples.shape[:3])
            truth = torch.nn.functional.avg_pool2d(target.flatten(0, 1), k)
            terms.append(
                almost_fair_crps(
                    pooled, truth.unflatten(0, target.shape[:2]), alpha=self.hparams.alpha
                )
            )
        crps = torch.stack(terms).mean()
        spectral = log_spectral_loss(samples.flatten(1, 2), target.flatten(0, 1))
        return {
            "crps": crps,
            "spectral": spectral,
            "loss": crps + self.hparams.spectral_weight * spectral,
        }

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One step on the almost fair CRPS (+ spectral term) of ``members`` samples."""
        opt = self.optimizers()
        lowres, target, mask = self._inputs(batch, crop=True)
        samples = torch.stack([self.generate(lowres) for _ in range(self.hparams.members)])
        terms = self.losses(samples.float(), target.float(), mask)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(terms["loss"])
        opt.step()
        self.log_dict(
            {f"train/{key}": value.detach() for key, value in terms.items()},
            batch_size=lowres.shape[0],
            prog_bar=True,
        )
        return terms["loss"].detach()

    def _evaluate(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        """CRPS (mm/h) of ``val_members`` seeded samples, and the MSE of their mean."""
        from geogen.losses import ensemble_crps

        lowres, target, mask = self._inputs(batch)
        generator = self.eval_generator(batch_idx)
        with torch.no_grad():
            samples = torch.stack(
                [
                    self.generate(lowres, generator=generator)
                    for _ in range(self.hparams.val_members)
                ]
            ).float()
            terms = self.losses(samples, target.float(), mask)
            metrics = {
                f"{stage}/crps": ensemble_crps(samples, target.float(), fair=False, mask=mask),
                f"{stage}/loss": terms["loss"],
                f"{stage}/spectral": terms["spectral"],
                f"{stage}/mse": masked_mse(samples.mean(0), target.float(), mask),
            }
        self.log_dict(metrics, batch_size=lowres.shape[0], sync_dist=True, prog_bar=True)
