"""DGMR's training recipe (Ravuri et al. 2021, Methods; DeepMind's pseudocode), manual optimisation.

Per training batch (context ``X``, observed lead frames ``Y``):

1. ``disc_steps`` (2) discriminator steps: one generator sample per example, computed without
   gradients (the discriminator step never backpropagates through the generator), scored with
   the real sequence in one discriminator call (``[real; generated]``, as the pseudocode, so
   batch centring sees both), hinge loss, Adam step of the discriminators;
2. one generator step: ``num_samples`` (6) generator samples per example; the grid-cell
   regulariser of their mean against ``Y`` (weights clipped to [0, 24] mm/h) times ``lambda``
   (20), plus the hinge generator loss on the discriminators' scores of every sample (each
   scored in a ``[real; sample]`` call); Adam step of the generator only (the discriminators'
   parameters are frozen during it).

Missing observations (NaN in the store, ``mask`` False): the data module fills them with
``nan_fill``; generated frames are set to the same fill value at those pixels before the
discriminators see them (so no-data areas carry no signal), and the regulariser gives them
weight 0. Validation logs the same losses and a critical success index of one sample at
``val_threshold`` mm/h; its samples use their own seeded generator, so validation never
changes the training's random streams.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torchmetrics.regression import CriticalSuccessIndex

from geogen.losses import grid_cell_regulariser, hinge_discriminator_loss, hinge_generator_loss
from geogen.methods.base import NowcastMethod, OptimizerFactory, StagedEvaluation
from geogen.models.dgmr import DGMR

log = logging.getLogger(__name__)


class DGMRMethod(StagedEvaluation, NowcastMethod):
    """Train a :class:`~geogen.models.dgmr.DGMR` (generator + discriminators) adversarially.

    Parameters
    ----------
    network
        The :class:`~geogen.models.dgmr.DGMR` to train.
    optimizer
        ``{"generator": factory, "discriminator": factory}`` (Adam, lr 5e-5 and 2e-4,
        betas (0, 0.999) in the paper).
    network_config
        The network's config (stored in checkpoints).
    num_samples
        Generator samples per input in the generator step (6).
    disc_steps
        Discriminator steps per generator step (2).
    grid_lambda
        Weight of the grid-cell regulariser (20).
    grid_clip
        Upper clip of the regulariser's weights, mm/h (24).
    train_crop
        Train on a random ``train_crop`` square of each batch (``None``: the whole crop). The
        generator is fully convolutional, so smaller windows train faster on a CPU.
    val_samples
        Generator samples per input for the validation losses.
    val_threshold
        Rain rate (mm/h) of the validation CSI.
    val_seed
        Seed of the validation samples.
    compile, channels_last
        See :class:`~geogen.methods.base.GeogenMethod`.
    """

    model_name = "dgmr"

    def __init__(
        self,
        network: DGMR,
        optimizer: Mapping[str, OptimizerFactory] | None = None,
        network_config: Mapping[str, Any] | None = None,
        num_samples: int = 6,
        disc_steps: int = 2,
        grid_lambda: float = 20.0,
        grid_clip: float = 24.0,
        train_crop: int | None = None,
        val_samples: int = 6,
        val_threshold: float = 1.0,
        val_seed: int = 0,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__(network, optimizer, network_config, compile, channels_last)
        if not (hasattr(network, "generator") and hasattr(network, "discriminator")):
            raise TypeError("DGMRMethod trains a network with .generator and .discriminator")
        if num_samples < 1 or disc_steps < 1 or val_samples < 1:
            raise ValueError(
                f"num_samples ({num_samples}), disc_steps ({disc_steps}) and val_samples "
                f"({val_samples}) must be >= 1"
            )
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["network", "optimizer"])
        self.val_csi = CriticalSuccessIndex(val_threshold)
        self._fill = 0.0
        self._identity = True

    # -- data ---------------------------------------------------------------------------------
    def check_data(self, data: Mapping[str, Any]) -> None:
        """The store must match the network: context frames, enough lead frames, crop size."""
        super().check_data(data)
        gen, disc = self.network.generator, self.network.discriminator
        store = data.get("store")
        if data.get("context") != gen.context_frames:
            raise ValueError(
                f"{store} has {data.get('context')} context frames; the generator takes "
                f"{gen.context_frames} (model.generator.context_frames)"
            )
        if (data.get("lead") or 0) < disc.spatial_frames:
            raise ValueError(
                f"{store} has {data.get('lead')} lead frames; the spatial discriminator draws "
                f"{disc.spatial_frames} of them (model.discriminator.spatial_frames)"
            )
        size = int(self.hparams.train_crop or data["crop_size"])
        if size > data["crop_size"]:
            raise ValueError(f"train_crop {size} exceeds the {data['crop_size']}-pixel crops")
        minimum = 64 * disc.spatial_pool
        if size % minimum or size < disc.temporal_crop:
            raise ValueError(
                f"training frames of {size} pixels: DGMR needs a multiple of {minimum} (spatial "
                f"discriminator) of at least the temporal crop {disc.temporal_crop}"
            )
        transform = self.transform
        self._identity = transform.name == "identity"
        self._fill = float(transform.forward(np.float32(data.get("nan_fill", 0.0))))

    def _inputs(
        self, batch: Mapping[str, torch.Tensor], crop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``context (B, T, H, W)``, ``target (B, L, H, W)``, lead ``mask (B, L, H, W)``."""
        context, target = batch["context"], batch["target"]
        n_context = context.shape[1]
        mask = (
            batch["mask"][:, n_context:]
            if "mask" in batch
            else torch.ones_like(target, dtype=torch.bool)
        )
        size = self.hparams.train_crop
        if crop and size and size < context.shape[-1]:
            h, w = context.shape[-2:]
            y0 = int(torch.randint(0, h - size + 1, ()).item())
            x0 = int(torch.randint(0, w - size + 1, ()).item())
            window = (..., slice(y0, y0 + size), slice(x0, x0 + size))
            context, target, mask = context[window], target[window], mask[window]
        return context, target, mask

    def _fill_missing(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Generated ``frames`` with the store's fill value where the observation is missing."""
        return torch.where(mask, frames, torch.full_like(frames, self._fill))

    def _weight_target(self, target: torch.Tensor) -> torch.Tensor | None:
        return None if self._identity else self.transform.inverse(target)

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """``[generator optimizer, discriminator optimizer]``."""
        return [
            self.build_optimizer("generator", self.network.generator.parameters()),
            self.build_optimizer("discriminator", self.network.discriminator.parameters()),
        ]

    def discriminator_step_loss(
        self, context: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The discriminators' hinge loss on one detached generator sample per example."""
        with torch.no_grad():
            fake = self._fill_missing(self.network.generator(context, target.shape[1]), mask)
        real_seq = torch.cat([context, target], dim=1)
        fake_seq = torch.cat([context, fake], dim=1)
        scores = self.network.discriminator(torch.cat([real_seq, fake_seq]))
        score_real, score_fake = scores.chunk(2)
        return {
            "d_loss": hinge_discriminator_loss(score_real, score_fake),
            "score_real": score_real.detach().mean(0),
            "score_fake": score_fake.detach().mean(0),
        }

    def generator_step_loss(
        self,
        context: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Hinge generator loss over ``num_samples`` samples + lambda x grid-cell regulariser."""
        gen, disc = self.network.generator, self.network.discriminator
        real_seq = torch.cat([context, target], dim=1)
        samples, fake_scores = [], []
        for _ in range(num_samples):
            sample = self._fill_missing(gen(context, target.shape[1], generator=generator), mask)
            scores = disc(
                torch.cat([real_seq, torch.cat([context, sample], dim=1)]), generator=generator
            )
            fake_scores.append(scores.chunk(2)[1])
            samples.append(sample)
        grid = grid_cell_regulariser(
            torch.stack(samples),
            target,
            weight_target=self._weight_target(target),
            mask=mask,
            clip=self.hparams.grid_clip,
        )
        adversarial = hinge_generator_loss(torch.cat(fake_scores))
        return {
            "g_loss": adversarial + self.hparams.grid_lambda * grid,
            "g_adversarial": adversarial,
            "grid_reg": grid,
            "first_sample": samples[0].detach(),
        }

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """``disc_steps`` discriminator steps, then one generator step."""
        opt_g, opt_d = self.optimizers()
        context, target, mask = self._inputs(batch, crop=True)
        for _ in range(self.hparams.disc_steps):
            d = self.discriminator_step_loss(context, target, mask)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d["d_loss"])
            opt_d.step()
        self.toggle_optimizer(opt_g)  # freezes the discriminators' parameters
        g = self.generator_step_loss(context, target, mask, self.hparams.num_samples)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g["g_loss"])
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        batch_size = context.shape[0]
        self.log_dict(
            {
                "train/d_loss": d["d_loss"].detach(),
                "train/g_loss": g["g_loss"].detach(),
                "train/g_adversarial": g["g_adversarial"].detach(),
                "train/grid_reg": g["grid_reg"].detach(),
                "train/score_real_spatial": d["score_real"][0],
                "train/score_real_temporal": d["score_real"][1],
                "train/score_fake_spatial": d["score_fake"][0],
                "train/score_fake_temporal": d["score_fake"][1],
            },
            prog_bar=False,
            batch_size=batch_size,
        )
        self.log("d_loss", d["d_loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        self.log("g_loss", g["g_loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size)

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        """Losses and CSI of the batch (seeded samples)."""
        context, target, mask = self._inputs(batch)
        generator = self.eval_generator(batch_idx)
        d = {}
        with torch.no_grad():
            fake = self._fill_missing(
                self.network.generator(context, target.shape[1], generator=generator), mask
            )
            real_seq = torch.cat([context, target], dim=1)
            scores = self.network.discriminator(
                torch.cat([real_seq, torch.cat([context, fake], dim=1)]), generator=generator
            )
            d["d_loss"] = hinge_discriminator_loss(*scores.chunk(2))
            g = self.generator_step_loss(
                context, target, mask, self.hparams.val_samples, generator=generator
            )
        forecast = self.transform.inverse(g["first_sample"].float())
        observed = self.transform.inverse(target.float())
        zero = torch.zeros((), device=forecast.device)
        self.val_csi.update(torch.where(mask, forecast, zero), torch.where(mask, observed, zero))
        batch_size = context.shape[0]
        self.log_dict(
            {
                f"{stage}/d_loss": d["d_loss"],
                f"{stage}/g_loss": g["g_loss"],
                f"{stage}/grid_reg": g["grid_reg"],
            },
            batch_size=batch_size,
            sync_dist=True,
        )
        self.log(f"{stage}/csi", self.val_csi, batch_size=batch_size, on_epoch=True)

    # -- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        members: int = 1,
        leads: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(batch, members, lead, y, x)`` generator samples in model space."""
        leads = leads or self.data_info.get("lead") or self.network.generator.lead_frames
        out = [self.network.generator(context, leads, generator=generator) for _ in range(members)]
        return torch.stack(out, dim=1)
