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

Options beyond the paper (all off by default, so the defaults are the paper's recipe):

- ``crps_lambda`` adds ``crps_lambda`` x the fair ensemble CRPS of the ``num_samples``
  samples (:func:`geogen.losses.pooled_crps`, averaged over ``crps_pools`` window sizes, in
  mm/h with ``crps_space="physical"``) to the generator loss. Unlike the grid-cell
  regulariser, which only sees the samples' mean, the CRPS rewards members that differ where
  the forecast is uncertain, which is what keeps a briefly trained ensemble from collapsing
  (README, "Why DGMR's members collapsed");
- ``disc_steps=0`` trains the generator on its regularisers alone (no discriminator steps and
  no adversarial term): a generative model trained by scoring-rule minimisation;
- generators that take conditions besides the context (``generator.conditions``, e.g. the
  advected frames of :class:`~geogen.models.dgmr_advect.AdvectionGenerator`) get them from the
  batch (``data.advection=true``), cropped with the same training window.

Every training step logs, besides the losses, the samples' ensemble ``spread``, the ``rmse``
of their mean and ``spread_skill`` (the ``spread_skill`` metric of ``geogen-score``, in mm/h),
and their ``crps``, so a collapse shows in ``metrics.csv`` as it happens.

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

from geogen.losses import (
    ensemble_spread_skill,
    grid_cell_regulariser,
    hinge_discriminator_loss,
    hinge_generator_loss,
    log_spectral_distance,
    pooled_crps,
)
from geogen.methods.base import NowcastMethod, OptimizerFactory, StagedEvaluation, plain
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
        Discriminator steps per generator step (2); 0 trains without discriminators and
        without the adversarial term.
    grid_lambda
        Weight of the grid-cell regulariser (20).
    grid_clip
        Upper clip of the regulariser's weights, mm/h (24).
    crps_lambda
        Weight of the fair ensemble CRPS of the generator samples (0: the paper's loss).
    crps_pools
        Average-pooling window sides over which the CRPS is averaged (``[1]``: pixels).
    crps_space
        ``"physical"`` (mm/h, the units of the scores) or ``"model"`` (after the transform).
    crps_alpha
        ``None``: the fair CRPS; a number in ``[0, 1]``: the almost fair CRPS of AIFS-CRPS
        (``alpha`` x fair + ``(1 - alpha)`` x empirical; 0.95 in AIFS-CRPS), whose gradient
        does not vanish when members coincide.
    spectral_lambda
        Weight of the log spectral distance of the samples' member-mean power spectrum to the
        observed one (:func:`geogen.losses.log_spectral_distance`, mm/h; 0: off).
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
    val_monitor = ("val/crps", "min")

    def __init__(
        self,
        network: DGMR,
        optimizer: Mapping[str, OptimizerFactory] | None = None,
        network_config: Mapping[str, Any] | None = None,
        num_samples: int = 6,
        disc_steps: int = 2,
        grid_lambda: float = 20.0,
        grid_clip: float = 24.0,
        crps_lambda: float = 0.0,
        crps_pools: list[int] | tuple[int, ...] = (1,),
        crps_space: str = "physical",
        crps_alpha: float | None = None,
        spectral_lambda: float = 0.0,
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
        if num_samples < 1 or disc_steps < 0 or val_samples < 1:
            raise ValueError(
                f"num_samples ({num_samples}) and val_samples ({val_samples}) must be >= 1, "
                f"disc_steps ({disc_steps}) >= 0"
            )
        if crps_space not in ("physical", "model"):
            raise ValueError(f"crps_space must be 'physical' or 'model', not {crps_space!r}")
        if crps_lambda < 0 or grid_lambda < 0 or spectral_lambda < 0:
            raise ValueError(
                f"crps_lambda ({crps_lambda}), grid_lambda ({grid_lambda}) or spectral_lambda "
                f"({spectral_lambda}) < 0"
            )
        if crps_alpha is not None and not 0.0 <= float(crps_alpha) <= 1.0:
            raise ValueError(f"crps_alpha must be in [0, 1] or null, got {crps_alpha}")
        if crps_lambda > 0 and (num_samples < 2 or val_samples < 2):
            raise ValueError("the ensemble CRPS needs num_samples >= 2 and val_samples >= 2")
        if crps_lambda == 0 and grid_lambda == 0 and disc_steps == 0:
            raise ValueError("nothing to train: disc_steps, grid_lambda and crps_lambda are 0")
        crps_pools = [int(k) for k in crps_pools]
        self.automatic_optimization = False
        self.save_hyperparameters(ignore=["network", "optimizer"])
        self.val_csi = CriticalSuccessIndex(val_threshold)
        self._fill = 0.0
        self._identity = True
        self._batch_conditions: dict[str, torch.Tensor] = {}

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
        adversarial = self.hparams.disc_steps > 0
        if adversarial and (data.get("lead") or 0) < disc.spatial_frames:
            raise ValueError(
                f"{store} has {data.get('lead')} lead frames; the spatial discriminator draws "
                f"{disc.spatial_frames} of them (model.discriminator.spatial_frames)"
            )
        size = int(self.hparams.train_crop or data["crop_size"])
        if size > data["crop_size"]:
            raise ValueError(f"train_crop {size} exceeds the {data['crop_size']}-pixel crops")
        minimum = 64 * disc.spatial_pool if adversarial else 32
        if size % minimum or (adversarial and size < disc.temporal_crop):
            raise ValueError(
                f"training frames of {size} pixels: DGMR needs a multiple of {minimum} (the "
                f"generator; 128 with the spatial discriminator) of at least the temporal crop "
                f"{disc.temporal_crop} (with discriminators)"
            )
        transform = self.transform
        self._identity = transform.name == "identity"
        self._fill = float(transform.forward(np.float32(data.get("nan_fill", 0.0))))

    @property
    def conditions(self) -> tuple[str, ...]:
        """Inputs of the generator besides the context (``()`` for DGMR as published)."""
        return tuple(getattr(self.network.generator, "conditions", ()))

    def _inputs(
        self, batch: Mapping[str, torch.Tensor], crop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``context (B, T, H, W)``, ``target (B, L, H, W)``, lead ``mask (B, L, H, W)``.

        The generator's extra conditions (:attr:`conditions`) are kept, cropped with the same
        window, for :meth:`_generate` (``self._batch_conditions``).
        """
        context, target = batch["context"], batch["target"]
        n_context = context.shape[1]
        mask = (
            batch["mask"][:, n_context:]
            if "mask" in batch
            else torch.ones_like(target, dtype=torch.bool)
        )
        missing = [name for name in self.conditions if name not in batch]
        if missing:
            raise ValueError(
                f"the generator needs {', '.join(missing)} in every batch; build the data "
                "module with advection (data.advection=true)"
            )
        conditions = {name: batch[name] for name in self.conditions}
        size = self.hparams.train_crop
        if crop and size and size < context.shape[-1]:
            h, w = context.shape[-2:]
            y0 = int(torch.randint(0, h - size + 1, ()).item())
            x0 = int(torch.randint(0, w - size + 1, ()).item())
            window = (..., slice(y0, y0 + size), slice(x0, x0 + size))
            context, target, mask = context[window], target[window], mask[window]
            conditions = {name: value[window] for name, value in conditions.items()}
        self._batch_conditions = conditions
        return context, target, mask

    def _generate(
        self, context: torch.Tensor, leads: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One generator sample per example, with the batch's conditions."""
        conditions = getattr(self, "_batch_conditions", None) or {}
        return self.network.generator(context, leads, generator=generator, **conditions)

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
            fake = self._fill_missing(self._generate(context, target.shape[1]), mask)
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
        """Hinge generator loss over ``num_samples`` samples + the weighted regularisers.

        Returns the losses, the first sample and the ensemble diagnostics of the samples in
        physical units (``spread``, ``rmse``, ``spread_skill``, ``crps``).
        """
        hp = self.hparams
        disc = self.network.discriminator
        adversarial_on = hp.disc_steps > 0
        real_seq = torch.cat([context, target], dim=1)
        samples, fake_scores = [], []
        for _ in range(num_samples):
            sample = self._fill_missing(self._generate(context, target.shape[1], generator), mask)
            if adversarial_on:
                scores = disc(
                    torch.cat([real_seq, torch.cat([context, sample], dim=1)]),
                    generator=generator,
                )
                fake_scores.append(scores.chunk(2)[1])
            samples.append(sample)
        stacked = torch.stack(samples)
        grid = grid_cell_regulariser(
            stacked,
            target,
            weight_target=self._weight_target(target),
            mask=mask,
            clip=hp.grid_clip,
        )
        physical = stacked if self._identity else self.transform.inverse(stacked)
        physical_target = target if self._identity else self.transform.inverse(target)
        fair = num_samples > 1  # one sample: its MAE, the CRPS of a one-member ensemble
        alpha = hp.get("crps_alpha") if fair else None
        if hp.crps_space == "physical":
            crps = pooled_crps(
                physical, physical_target, hp.crps_pools, mask=mask, fair=fair, alpha=alpha
            )
        else:
            crps = pooled_crps(stacked, target, hp.crps_pools, mask=mask, fair=fair, alpha=alpha)
        adversarial = (
            hinge_generator_loss(torch.cat(fake_scores))
            if adversarial_on
            else torch.zeros((), device=target.device, dtype=target.dtype)
        )
        loss = adversarial + hp.grid_lambda * grid
        if hp.crps_lambda > 0:
            loss = loss + hp.crps_lambda * crps
        spectral = torch.zeros((), device=target.device, dtype=target.dtype)
        if hp.get("spectral_lambda", 0.0) > 0:
            spectral = log_spectral_distance(physical, physical_target)
            loss = loss + hp.spectral_lambda * spectral
        with torch.no_grad():
            diagnostics = ensemble_spread_skill(physical.detach(), physical_target)
        return {
            "g_loss": loss,
            "g_adversarial": adversarial,
            "grid_reg": grid,
            "crps": crps.detach(),
            "spectral": spectral.detach(),
            **diagnostics,
            "first_sample": samples[0].detach(),
        }

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """``disc_steps`` discriminator steps, then one generator step."""
        opt_g, opt_d = self.optimizers()
        context, target, mask = self._inputs(batch, crop=True)
        d: dict[str, torch.Tensor] = {}
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
        logged = {
            "train/g_loss": g["g_loss"].detach(),
            "train/g_adversarial": g["g_adversarial"].detach(),
            "train/grid_reg": g["grid_reg"].detach(),
            "train/crps": g["crps"],
            "train/spectral": g["spectral"],
            "train/spread": g["spread"],
            "train/rmse": g["rmse"],
            "train/spread_skill": g["spread_skill"],
        }
        if d:
            logged.update(
                {
                    "train/d_loss": d["d_loss"].detach(),
                    "train/score_real_spatial": d["score_real"][0],
                    "train/score_real_temporal": d["score_real"][1],
                    "train/score_fake_spatial": d["score_fake"][0],
                    "train/score_fake_temporal": d["score_fake"][1],
                }
            )
            self.log(
                "d_loss", d["d_loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size
            )
        self.log_dict(logged, prog_bar=False, batch_size=batch_size)
        self.log("g_loss", g["g_loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        self.log(
            "spread_skill", g["spread_skill"], prog_bar=True, logger=False, batch_size=batch_size
        )

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        """Losses and CSI of the batch (seeded samples)."""
        context, target, mask = self._inputs(batch)
        generator = self.eval_generator(batch_idx)
        metrics = {}
        with torch.no_grad():
            if self.hparams.disc_steps > 0:
                fake = self._fill_missing(self._generate(context, target.shape[1], generator), mask)
                real_seq = torch.cat([context, target], dim=1)
                scores = self.network.discriminator(
                    torch.cat([real_seq, torch.cat([context, fake], dim=1)]), generator=generator
                )
                metrics[f"{stage}/d_loss"] = hinge_discriminator_loss(*scores.chunk(2))
            g = self.generator_step_loss(
                context, target, mask, self.hparams.val_samples, generator=generator
            )
        forecast = self.transform.inverse(g["first_sample"].float())
        observed = self.transform.inverse(target.float())
        zero = torch.zeros((), device=forecast.device)
        self.val_csi.update(torch.where(mask, forecast, zero), torch.where(mask, observed, zero))
        batch_size = context.shape[0]
        for key in ("g_loss", "grid_reg", "crps", "spectral", "spread", "rmse", "spread_skill"):
            metrics[f"{stage}/{key}"] = g[key]
        self.log_dict(metrics, batch_size=batch_size, sync_dist=True)
        self.log(f"{stage}/csi", self.val_csi, batch_size=batch_size, on_epoch=True)

    # -- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        members: int = 1,
        leads: int | None = None,
        generator: torch.Generator | None = None,
        **conditions: torch.Tensor,
    ) -> torch.Tensor:
        """``(batch, members, lead, y, x)`` generator samples in model space.

        A generator with conditions (``advected``) gets them from ``conditions``; missing
        advected frames are computed from ``context`` with pysteps
        (:func:`geogen.data.advection.advect`).
        """
        leads = leads or self.data_info.get("lead") or self.network.generator.lead_frames
        if "advected" in self.conditions and "advected" not in conditions:
            conditions["advected"] = self.advect(context, leads)
        out = [
            self.network.generator(context, leads, generator=generator, **conditions)
            for _ in range(members)
        ]
        return torch.stack(out, dim=1)

    def advect(self, context: torch.Tensor, leads: int) -> torch.Tensor:
        """Pysteps' advection of model-space ``context`` ``(B, T, H, W)``: ``(B, L, H, W)``."""
        from geogen.data.advection import advect

        rain = self.transform.inverse(context.float()).cpu().numpy()
        step = float(self.data_info.get("timestep_minutes") or 5.0)
        frames = np.stack([advect(r, leads, timestep_minutes=step) for r in rain])
        advected = self.transform.forward(torch.from_numpy(frames))
        return advected.to(device=context.device, dtype=context.dtype)


class DGMRAdvectMethod(DGMRMethod):
    """:class:`DGMRMethod` for generators conditioned on advection (``dgmr_advect``).

    The same recipe and options; the network's generator is an
    :class:`~geogen.models.dgmr_advect.AdvectionGenerator`, the data module must give the
    advected frames (``data.advection``), and checkpoints are read by
    ``geogen-forecast model=dgmr_advect``.
    """

    model_name = "dgmr_advect"

    def check_data(self, data: Mapping[str, Any]) -> None:
        """As :class:`DGMRMethod`, and the batches must carry the advected frames."""
        super().check_data(data)
        if "advected" not in self.conditions:
            raise ValueError(
                "DGMRAdvectMethod trains a generator conditioned on advection "
                "(geogen.models.dgmr_advect.AdvectionGenerator)"
            )
        if not data.get("advection"):
            raise ValueError(
                f"{data.get('store')}: the generator is conditioned on the advected frames; "
                "set data.advection=true"
            )


class DGMRStepsMethod(DGMRAdvectMethod):
    """:class:`DGMRMethod` for generators conditioned on STEPS members (``dgmr_steps``).

    The network's generator is a :class:`~geogen.models.dgmr_steps.StepsGenerator`; the
    data module gives every sample ``K`` cached STEPS members (``data.steps``, ``(batch, K,
    lead, y, x)``) besides the advected frames. Sample ``i`` of a step (``num_samples`` of
    them, at most ``K``) reads STEPS member ``order[i]``: a random permutation of the ``K``
    members in training (so the ensemble's members differ, as the fair CRPS assumes), the
    members in order in validation and test (seeded, reproducible). Checkpoints are read by
    ``geogen-forecast model=dgmr_steps``, which runs STEPS with the settings recorded in the
    checkpoint and gives forecast member ``m`` STEPS member ``m``.
    """

    model_name = "dgmr_steps"

    def __init__(
        self,
        *args: Any,
        train_leads: int | None = None,
        val_leads: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        """As :class:`DGMRMethod`, with two options.

        ``train_leads``: lead frames drawn per training step. The generator forecasts every
        lead on its own (no recurrence), so a step on ``train_leads`` randomly drawn leads
        (``None``: all) is an unbiased estimate of the all-lead loss at a fraction of the
        cost. ``val_leads``: the lead numbers (1-based, e.g. ``[6, 12, 18]`` for +30/+60/+90
        min of 5-minute frames) validation and test score (``None``: all).
        """
        if train_leads is not None and int(train_leads) < 1:
            raise ValueError(f"train_leads must be >= 1 or null, got {train_leads}")
        if val_leads is not None and (not val_leads or min(int(v) for v in val_leads) < 1):
            raise ValueError(f"val_leads must be lead numbers >= 1 or null, got {val_leads}")
        # plain values: Lightning saves this frame's arguments too (checkpoints load with
        # weights_only=True, which refuses OmegaConf containers)
        kwargs = {key: plain(value) for key, value in kwargs.items()}
        val_leads = None if val_leads is None else [int(v) for v in val_leads]
        super().__init__(*args, **kwargs)
        self._lead_index: torch.Tensor | None = None

    def check_data(self, data: Mapping[str, Any]) -> None:
        """As :class:`DGMRAdvectMethod`, and the batches must carry enough STEPS members."""
        super().check_data(data)
        if "steps" not in self.conditions:
            raise ValueError(
                "DGMRStepsMethod trains a generator conditioned on STEPS members "
                "(geogen.models.dgmr_steps.StepsGenerator)"
            )
        spec = data.get("steps")
        if not spec:
            raise ValueError(
                f"{data.get('store')}: the generator reads STEPS members; set data.steps "
                "(e.g. data.steps.members=4)"
            )
        hp = self.hparams
        members = int(spec.get("members", 0))
        if max(hp.num_samples, hp.val_samples) > members:
            raise ValueError(
                f"num_samples ({hp.num_samples}) and val_samples ({hp.val_samples}) must not "
                f"exceed the {members} cached STEPS members (data.steps.members)"
            )

    def _inputs(
        self, batch: Mapping[str, torch.Tensor], crop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :class:`DGMRMethod`; draws the order in which samples read the STEPS members."""
        context, target, mask = super()._inputs(batch, crop=crop)
        self._lead_index = None
        n_leads = self.hparams.get("train_leads")
        val_leads = self.hparams.get("val_leads")
        index = None
        if crop and n_leads and int(n_leads) < target.shape[1]:
            index = torch.randperm(target.shape[1])[: int(n_leads)].sort().values
        elif not crop and val_leads:
            wanted = sorted({int(v) - 1 for v in val_leads})
            if wanted[-1] >= target.shape[1]:
                raise ValueError(f"val_leads {list(val_leads)} beyond the {target.shape[1]} leads")
            index = torch.tensor(wanted)
        if index is not None:
            target, mask = target[:, index], mask[:, index]
            conditions = self._batch_conditions
            conditions["advected"] = conditions["advected"][:, index]
            conditions["steps"] = conditions["steps"][:, :, index]
            self._lead_index = index.to(target.device)
        k = self._batch_conditions["steps"].shape[1]
        # training: a random order (torch's global stream, like the crop window); evaluation:
        # members in order, so validation never touches the training's random streams
        self._member_order = torch.randperm(k).tolist() if crop else list(range(k))
        self._member_cursor = 0
        return context, target, mask

    def _generate(
        self, context: torch.Tensor, leads: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One sample per example, from the next STEPS member of the batch's order."""
        conditions = dict(self._batch_conditions)
        steps = conditions.pop("steps")
        order = self._member_order
        member = order[self._member_cursor % len(order)]
        self._member_cursor += 1
        return self.network.generator(
            context,
            leads,
            generator=generator,
            steps=steps[:, member],
            lead_index=self._lead_index,
            **conditions,
        )

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        members: int = 1,
        leads: int | None = None,
        generator: torch.Generator | None = None,
        **conditions: torch.Tensor,
    ) -> torch.Tensor:
        """``(batch, members, lead, y, x)`` samples in model space.

        ``steps`` ``(batch, K >= members, lead, y, x)`` and ``advected`` come from
        ``conditions`` when given, else are computed from ``context`` with pysteps (STEPS
        with the data module's settings, seeded from ``generator``'s initial seed).
        """
        leads = leads or self.data_info.get("lead") or self.network.generator.lead_frames
        if "advected" not in conditions:
            conditions["advected"] = self.advect(context, leads)
        if "steps" not in conditions:
            seed = int(generator.initial_seed()) if generator is not None else 0
            conditions["steps"] = self.steps_members(context, leads, members, seed)
        steps = conditions.pop("steps")
        if steps.shape[1] < members:
            raise ValueError(f"{members} members asked for, {steps.shape[1]} STEPS members given")
        out = [
            self.network.generator(context, leads, steps=steps[:, m], **conditions)
            for m in range(members)
        ]
        return torch.stack(out, dim=1)

    def steps_members(
        self, context: torch.Tensor, leads: int, members: int, seed: int
    ) -> torch.Tensor:
        """STEPS members of model-space ``context`` ``(B, T, H, W)``: ``(B, K, L, H, W)``."""
        from geogen.data.steps import steps_members

        spec = self.data_info.get("steps") or {}
        settings = dict(spec.get("settings") or {})
        rain = self.transform.inverse(context.float()).cpu().numpy()
        step = float(self.data_info.get("timestep_minutes") or 5.0)
        frames = np.stack(
            [
                steps_members(
                    r, leads, members, seed=seed + i, timestep_minutes=step, settings=settings
                )
                for i, r in enumerate(rain)
            ]
        )
        values = self.transform.forward(torch.from_numpy(frames))
        return values.to(device=context.device, dtype=context.dtype)
