"""What every checkpoint-backed downscaler shares (``downscale_gan``, ``vae``, ``flow``).

:class:`CheckpointDownscaler` is the downscaling twin of
:class:`~geogen.forecasting.learned.CheckpointForecaster` and shares its pieces: the
checkpoint is found and checked by :class:`geogen.checkpoint.Checkpoint` (``ckpt=``, or the
checkpoint shipped for the model in ``checkpoints/index.json`` with ``"task": "downscale"``;
SHA-256 checked, int8 weights restored, model and task checked), and
:mod:`geogen.inference` gives the model space, member seeding and batching. The rest:
device and precision, no-data handling. Subclasses set
:attr:`checkpoint_model` and implement :meth:`build` and :meth:`generate_batch` (or
:meth:`generate` when members are not produced by one pass over the whole sequence).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from geogen.checkpoint import Checkpoint
from geogen.downscaling.interface import DownscaleError, Downscaler
from geogen.inference import autocast, member_batches, resolve_device, to_model_space

log = logging.getLogger(__name__)


def expand_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """``(..., h, w)`` -> ``(..., h * factor, w * factor)``: each cell repeated as a block."""
    return np.repeat(np.repeat(mask, factor, axis=-2), factor, axis=-1)


class CheckpointDownscaler(Downscaler):
    """Base of downscalers that run a network from a ``geogen-train`` checkpoint.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train`` on a downscaling store; ``None`` takes the
        checkpoint geogen ships for this model, if any (SHA-256 checked).
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    batch_members
        Members generated per forward pass (bounds memory).
    precision
        ``"32"`` or ``"bf16"`` (autocast on CUDA).
    ckpt_sha256
        Expected SHA-256 of the checkpoint file (refused when it differs).
    """

    stochastic = True
    learned = True
    #: ``model`` of the checkpoint's metadata (default: the registered name).
    checkpoint_model: str = ""

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str = "auto",
        batch_members: int = 4,
        precision: str = "32",
        ckpt_sha256: str | None = None,
    ) -> None:
        if int(batch_members) < 1:
            raise DownscaleError(f"batch_members must be >= 1, got {batch_members}")
        if precision not in ("32", "bf16"):
            raise DownscaleError(f"precision must be '32' or 'bf16', got {precision!r}")
        checkpoint = Checkpoint.load(
            self.name,
            ckpt,
            ckpt_sha256,
            model=self.checkpoint_model or None,
            task="downscale",
            error=DownscaleError,
        )
        self.checkpoint = checkpoint
        self.ckpt = str(checkpoint.path)
        self.checkpoint_sha256 = checkpoint.sha256
        self.meta = checkpoint.meta
        self.data = checkpoint.data
        self.device = resolve_device(device)
        self.batch_members = int(batch_members)
        self.precision = precision
        self.variable = self.data.get("variable")
        self.transform = checkpoint.transform()
        self.factor = self.build(checkpoint)
        log.info(
            "%s: %s (sha256 %s), factor %d, variable %s, on %s",
            self.name,
            self.ckpt,
            self.checkpoint_sha256[:12],
            self.factor,
            self.variable,
            self.device,
        )

    # -- hooks --------------------------------------------------------------------------------

    def build(self, checkpoint: Checkpoint) -> int:
        """Build the network(s) from ``checkpoint`` onto :attr:`device`; return the factor."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Subclass settings appended to :meth:`describe`."""
        return {}

    def check_grid(self, steps: int, h: int, w: int) -> None:
        """Raise :class:`DownscaleError` for a low-res ``(steps, h, w)`` the model cannot take."""

    def generate_batch(self, inputs: torch.Tensor, members: range, seed: int) -> torch.Tensor:
        """``(len(members), T, H, W)`` model-space fields from ``inputs`` ``(1, T, h, w)``."""
        raise NotImplementedError

    def postprocess(self, out: np.ndarray, filled: np.ndarray) -> np.ndarray:
        """Physical-unit ``out`` ``(member, T, H, W)`` -> final values (default: rain >= 0)."""
        return np.maximum(out, 0.0, out=out)

    # -- shared machinery ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Model name, checkpoint path and SHA-256, network config, training data, settings."""
        return {
            "model": self.name,
            **self.checkpoint.describe(),
            "batch_members": self.batch_members,
            **self.settings(),
        }

    def member_batches(self, members: int, progress: bool) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of the member batches (``batch_members`` each, tqdm if asked)."""
        return member_batches(members, self.batch_members, progress, f"{self.name} members")

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when ``precision="bf16"``, else a no-op context."""
        return autocast(self.device, self.precision)

    def to_model(self, filled: np.ndarray) -> torch.Tensor:
        """Physical ``(T, h, w)`` without NaN -> model-space ``(1, T, h, w)`` on the device."""
        model_space = to_model_space(filled, self.transform, self.data.get("nan_fill", 0.0))
        return torch.from_numpy(model_space)[None].to(self.device)

    def generate(self, filled: np.ndarray, members: int, seed: int, progress: bool) -> np.ndarray:
        """``(member, T, h f, w f)`` physical-unit fields from ``filled`` ``(T, h, w)``."""
        inputs = self.to_model(filled)
        steps, h, w = filled.shape
        f = self.factor
        out = np.empty((members, steps, h * f, w * f), dtype=np.float32)
        with torch.inference_mode():
            for start, stop in self.member_batches(members, progress):
                with self.autocast():
                    frames = self.generate_batch(inputs, range(start, stop), seed)
                out[start:stop] = self.transform.inverse(frames.float()).cpu().numpy()
        return out

    def predict(
        self,
        lowres: np.ndarray,
        *,
        factor: int,
        members: int,
        seed: int,
        progress: bool = False,
    ) -> np.ndarray:
        """``(member, time, y * factor, x * factor)`` from ``lowres`` ``(time, y, x)``."""
        lowres = np.asarray(lowres, dtype=np.float32)
        if lowres.ndim != 3:
            raise DownscaleError(f"lowres must be (time, y, x), got shape {lowres.shape}")
        if factor != self.factor:
            raise DownscaleError(f"{self.name} was trained for factor {self.factor}, not {factor}")
        self.check_grid(*lowres.shape)
        missing = ~np.isfinite(lowres)
        filled = np.where(missing, np.float32(self.data.get("nan_fill", 0.0)), lowres)
        out = self.generate(filled, members, seed, progress)
        out = self.postprocess(out, filled)
        if missing.any():
            out[:, expand_mask(missing, factor)] = np.nan
        return out.astype(np.float32, copy=False)
