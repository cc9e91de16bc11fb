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

from geogen.downscaling.interface import DownscaleError, Downscaler, register_downscaler

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


class _LearnedDownscaler(Downscaler):
    """Base of the checkpoint-backed downscalers (see module docstring).

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train``.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    batch_members
        Members generated per forward pass (bounds memory).
    precision
        ``"32"`` or ``"bf16"`` (autocast on CUDA).
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
    ) -> None:
        from hydra.utils import instantiate

        from geogen.data.transforms import get_transform
        from geogen.forecasting.interface import ForecastError
        from geogen.forecasting.learned import (
            load_geogen_checkpoint,
            resolve_device,
            sha256_file,
        )

        if ckpt is None:
            raise DownscaleError(f"model={self.name} needs a checkpoint: ckpt=PATH (geogen-train)")
        if int(batch_members) < 1:
            raise DownscaleError(f"batch_members must be >= 1, got {batch_members}")
        if precision not in ("32", "bf16"):
            raise DownscaleError(f"precision must be '32' or 'bf16', got {precision!r}")
        try:
            checkpoint = load_geogen_checkpoint(ckpt, self.name)
        except ForecastError as exc:
            raise DownscaleError(str(exc).replace("geogen-forecast", "geogen-downscale")) from None
        meta = checkpoint["geogen"]
        self.ckpt = str(ckpt)
        self.checkpoint_sha256 = sha256_file(ckpt)
        self.meta = meta
        self.data = dict(meta["data"])
        if self.data.get("task") != "downscale":
            raise DownscaleError(f"{ckpt} was not trained on downscale pairs")
        generator_config = meta["network_config"].get("generator")
        if not isinstance(generator_config, dict) or "_target_" not in generator_config:
            raise DownscaleError(f"{ckpt}: the network config has no generator to build")
        try:
            generator = instantiate(generator_config)
        except Exception as exc:
            raise DownscaleError(f"{ckpt}: cannot build the generator: {exc}") from exc
        prefix = "network.generator."
        state = {
            key[len(prefix) :]: value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith(prefix)
        }
        try:
            generator.load_state_dict(state)
        except RuntimeError as exc:
            raise DownscaleError(
                f"{ckpt}: the weights do not fit the network config stored with them: {exc}"
            ) from exc
        self.device = resolve_device(device)
        self.generator = generator.to(self.device).eval()
        self.batch_members = int(batch_members)
        self.precision = precision
        self.preserve_mean = bool(preserve_mean)
        self.factor = int(generator.factor)
        self.variable = self.data.get("variable")
        self.stochastic = not self.zero_noise
        spec = dict(self.data.get("transform") or {"name": "identity"})
        self.transform = get_transform(spec.pop("name"), **spec)
        self.rain = self.transform.name in ("log10", "dB", "log1p") or self.data.get("units") in (
            "mm/h",
            "mm h-1",
        )
        log.info(
            "%s: %s (sha256 %s), factor %d, variable %s, on %s",
            self.name,
            ckpt,
            self.checkpoint_sha256[:12],
            self.factor,
            self.variable,
            self.device,
        )

    def describe(self) -> dict[str, Any]:
        """Model name, checkpoint path and SHA-256, network config, training data, settings."""
        return {
            "model": self.name,
            "checkpoint": self.ckpt,
            "checkpoint_sha256": self.checkpoint_sha256,
            "network_config": self.meta.get("network_config"),
            "training_data": self.data,
            "versions": self.meta.get("versions"),
            "batch_members": self.batch_members,
            "precision": self.precision,
            "preserve_mean": self.preserve_mean,
        }

    def _noise(self, seed: int, member: int, steps: int, h: int, w: int) -> torch.Tensor:
        """Member ``member``'s noise ``(steps + 1, C, h, w)``, independent of batching."""
        if self.zero_noise:
            return torch.zeros(steps + 1, self.generator.noise_channels, h, w)
        state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(member)]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return self.generator.sample_noise(1, steps, h, w, generator=generator)[0]

    def predict(
        self,
        lowres: np.ndarray,
        *,
        factor: int,
        members: int,
        seed: int,
        progress: bool = False,
    ) -> np.ndarray:
        """``(member, time, y*f, x*f)`` in physical units from ``lowres`` ``(time, y, x)``."""
        lowres = np.asarray(lowres, dtype=np.float32)
        if lowres.ndim != 3:
            raise DownscaleError(f"lowres must be (time, y, x), got shape {lowres.shape}")
        if factor != self.factor:
            raise DownscaleError(f"{self.name} was trained for factor {self.factor}, not {factor}")
        steps, h, w = lowres.shape
        if h < 2 or w < 2 or steps < 1:
            raise DownscaleError(
                f"{self.name} needs at least one frame of 2 x 2 low-res cells, got {lowres.shape}"
            )
        missing = ~np.isfinite(lowres)
        filled = np.where(missing, np.float32(self.data.get("nan_fill", 0.0)), lowres)
        model_space = np.asarray(self.transform.forward(filled), dtype=np.float32)
        inputs = torch.from_numpy(model_space)[None].to(self.device)
        out = np.empty((members, steps, h * factor, w * factor), dtype=np.float32)
        batches = range(0, members, self.batch_members)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"{self.name} members", unit="batch")
        autocast = self.precision == "bf16" and self.device.type == "cuda"
        with torch.inference_mode():
            for start in batches:
                stop = min(start + self.batch_members, members)
                noise = torch.stack(
                    [self._noise(seed, m, steps, h, w) for m in range(start, stop)]
                ).to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                    frames = self.generator(inputs.expand(stop - start, -1, -1, -1), noise=noise)
                out[start:stop] = self.transform.inverse(frames.float()).cpu().numpy()
        if self.rain:
            np.maximum(out, 0.0, out=out)
        if self.preserve_mean:
            out = preserve_block_means(out, filled, factor, multiplicative=self.rain)
        if missing.any():
            fine_missing = np.repeat(np.repeat(missing, factor, axis=-2), factor, axis=-1)
            out[:, fine_missing] = np.nan
        return out.astype(np.float32, copy=False)


@register_downscaler("downscale_gan")
class GANDownscaler(_LearnedDownscaler):
    """Stochastic downscaling with a trained Leinonen et al. (2020) generator."""


@register_downscaler("downscale_det")
class DeterministicDownscaler(_LearnedDownscaler):
    """The deterministic twin (zero noise, MSE-trained): every member is the same."""

    zero_noise = True
