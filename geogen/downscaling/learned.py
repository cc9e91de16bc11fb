"""Learned downscalers: checkpoints of the downscaling GAN behind the Downscaler interface.

``downscale_gan``: a checkpoint of ``geogen-train experiment=downscale_gan`` (or
``downscale_gan_tiny``); ``downscale_det``: one of its deterministic twin
(``experiment=downscale_det_tiny``, zero noise, so every member is the same)::

    from geogen import downscale
    from geogen.downscaling import get_downscaler

    model = get_downscaler("downscale_gan", ckpt="last.ckpt", device="auto", batch_members=4)
    hr = downscale(model, lowres, members=20, seed=0)   # (member, time, y, x)

or ``geogen-downscale model=downscale_gan ckpt=last.ckpt input=lowres.nc members=20 out=hr.nc``.

How the input is handled (``predict``):

- missing cells (NaN) are filled with the training store's ``nan_fill`` and values mapped to
  model space with the training transform (``log10`` for rain, ``standardize`` for
  temperature); the output is mapped back and set to NaN under missing low-res cells;
- the generator is fully convolutional: any grid of at least 2 x 2 low-res cells and any
  number of frames work; the factor is the one it was trained for;
- members are generated ``batch_members`` at a time; member ``m`` draws its noise from a
  generator seeded with ``(seed, m)``, so a member does not depend on the batch it was
  computed in and the same seed gives the same ensemble;
- ``preserve_mean`` (off by default: the published model has no such constraint) rescales
  each ``factor x factor`` block of every member so that its mean equals the input cell
  (multiplicatively for rain, additively otherwise).
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
from geogen.inference import member_generator

log = logging.getLogger(__name__)


def block_mean(field: np.ndarray, factor: int) -> np.ndarray:
    """``(..., H, W) -> (..., H / factor, W / factor)`` block means."""
    *lead, h, w = field.shape
    blocks = field.reshape(*lead, h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(-3, -1))


def preserve_block_means(
    fine: np.ndarray, coarse: np.ndarray, factor: int, *, multiplicative: bool
) -> np.ndarray:
    """Correct ``fine`` ``(..., H, W)`` so that its block means equal ``coarse`` ``(..., h, w)``.

    Multiplicative (rain): blocks are scaled by ``coarse / mean`` (a block generated dry where
    the input has rain gets the input's value everywhere); additive: ``coarse - mean`` is added.
    """
    means = block_mean(fine, factor)
    expand = lambda a: np.repeat(np.repeat(a, factor, axis=-2), factor, axis=-1)  # noqa: E731
    if not multiplicative:
        return fine + expand(coarse - means)
    safe = np.where(means > 0, means, 1.0)
    scaled = fine * expand(np.where(means > 0, coarse / safe, 1.0))
    return np.where(expand(means > 0), scaled, expand(coarse) * np.ones_like(fine))


class _LearnedDownscaler(CheckpointDownscaler):
    """Base of the downscaling-GAN downscalers (see module docstring).

    Parameters
    ----------
    ckpt, device, batch_members, precision, ckpt_sha256
        See :class:`~geogen.downscaling.checkpoint.CheckpointDownscaler`.
    preserve_mean
        Rescale every member so that its block means equal the input.
    """

    zero_noise = False

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str = "auto",
        batch_members: int = 4,
        precision: str = "32",
        preserve_mean: bool = False,
        ckpt_sha256: str | None = None,
    ) -> None:
        self.preserve_mean = bool(preserve_mean)
        super().__init__(ckpt, device, batch_members, precision, ckpt_sha256)
        self.rain = self.transform.name in ("log10", "dB", "log1p") or self.data.get("units") in (
            "mm/h",
            "mm h-1",
        )

    def build(self, checkpoint: Checkpoint) -> int:
        """The generator of the checkpoint."""
        generator = checkpoint.build("generator", "network.generator.")
        self.generator = generator.to(self.device).eval()
        return int(generator.factor)

    def settings(self) -> dict[str, Any]:
        """Precision and the block-mean correction."""
        return {"precision": self.precision, "preserve_mean": self.preserve_mean}

    def check_grid(self, steps: int, h: int, w: int) -> None:
        """At least one frame of 2 x 2 low-res cells."""
        if h < 2 or w < 2 or steps < 1:
            raise DownscaleError(
                f"{self.name} needs at least one frame of 2 x 2 low-res cells, got {(steps, h, w)}"
            )

    def _noise(self, seed: int, member: int, steps: int, h: int, w: int) -> torch.Tensor:
        """Member ``member``'s noise ``(steps + 1, C, h, w)``, independent of batching."""
        if self.zero_noise:
            return torch.zeros(steps + 1, self.generator.noise_channels, h, w)
        generator = member_generator(seed, member)
        return self.generator.sample_noise(1, steps, h, w, generator=generator)[0]

    def generate_batch(self, inputs: torch.Tensor, members: range, seed: int) -> torch.Tensor:
        """Generator samples, member ``m`` from noise seeded with ``(seed, m)``."""
        steps, h, w = inputs.shape[1:]
        noise = torch.stack([self._noise(seed, m, steps, h, w) for m in members])
        frames = inputs.expand(len(members), -1, -1, -1)
        return self.generator(frames, noise=noise.to(self.device))

    def postprocess(self, out: np.ndarray, filled: np.ndarray) -> np.ndarray:
        """Rain >= 0; block means of the input if ``preserve_mean``."""
        if self.rain:
            np.maximum(out, 0.0, out=out)
        if self.preserve_mean:
            out = preserve_block_means(out, filled, self.factor, multiplicative=self.rain)
        return out


@register_downscaler("downscale_gan")
class GANDownscaler(_LearnedDownscaler):
    """Stochastic downscaling with a trained Leinonen et al. (2020) generator."""


@register_downscaler("downscale_det")
class DeterministicDownscaler(_LearnedDownscaler):
    """The deterministic twin (zero noise, MSE-trained): every member is the same."""

    zero_noise = True
    stochastic = False
