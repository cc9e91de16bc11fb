"""Learned forecasters: trained checkpoints behind the :class:`Forecaster` interface.

:class:`CheckpointForecaster` is what every learned forecaster shares (checkpoint loading and
provenance, context checks, model space, padding, member batching and seeding, no-data
handling); subclasses say how to build the network and forecast a batch of members
(``dgmr`` here, ``vae`` in :mod:`geogen.forecasting.vae`).

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

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geogen.forecasting.interface import Forecaster, ForecastError, register_forecaster

log = logging.getLogger(__name__)

#: Smallest domain side (pixels) a DGMR forecast accepts.
MIN_DOMAIN = 32


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (checkpoint provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other values as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_geogen_checkpoint(path: str | os.PathLike, expected_model: str) -> dict[str, Any]:
    """Read a geogen training checkpoint and check that it holds ``expected_model``.

    Raises
    ------
    ForecastError
        When the file is missing or unreadable, is not a geogen checkpoint, or holds another
        model.
    """
    from geogen.methods.base import CHECKPOINT_KEY

    path = Path(path)
    if not path.is_file():
        raise ForecastError(f"no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ForecastError(f"cannot read the checkpoint {path}: {exc}") from exc
    meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not meta:
        raise ForecastError(
            f"{path} is not a geogen checkpoint (no {CHECKPOINT_KEY!r} entry; write one with "
            "geogen-train)"
        )
    if meta.get("model") != expected_model:
        raise ForecastError(
            f"{path} is a checkpoint of model {meta.get('model')!r}, not {expected_model!r}; "
            f"use geogen-forecast model={meta.get('model')}"
        )
    for key in ("network_config", "data"):
        if not meta.get(key):
            raise ForecastError(f"{path}: the checkpoint's {CHECKPOINT_KEY}.{key} is empty")
    from geogen.forecasting.shipped import dequantize_int8

    return dequantize_int8(checkpoint)


def member_generator(seed: int, member: int) -> torch.Generator:
    """A CPU generator for ensemble member ``member`` of ``seed``.

    Seeded from ``(seed, member)`` through :class:`numpy.random.SeedSequence`, so a member's
    random draws depend neither on the batch it is computed in nor on the device.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(member)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def checkpoint_description(model: Any) -> dict[str, Any]:
    """The provenance that starts ``describe()`` of a checkpoint-backed ``model``.

    Name, checkpoint path and SHA-256, network config, training data, versions, batch size.
    """
    return {
        "model": model.name,
        "checkpoint": model.ckpt,
        "checkpoint_sha256": model.checkpoint_sha256,
        "network_config": model.meta.get("network_config"),
        "training_data": model.data,
        "versions": model.meta.get("versions"),
        "batch_members": model.batch_members,
    }


def member_batches(
    members: int, batch_members: int, progress: bool = False, desc: str = "members"
) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches of at most ``batch_members`` members.

    With ``progress``, a tqdm bar labelled ``desc`` counts the batches.
    """
    starts: Any = range(0, members, batch_members)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        yield start, min(start + batch_members, members)


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


def build_submodule(
    checkpoint: dict[str, Any], ckpt: str | os.PathLike, config: Any, prefix: str
) -> torch.nn.Module:
    """Instantiate ``config`` and load the checkpoint's weights under ``prefix`` into it.

    Raises
    ------
    ForecastError
        When the config cannot be built or the weights do not fit it.
    """
    from hydra.utils import instantiate

    if not isinstance(config, dict) or "_target_" not in config:
        raise ForecastError(f"{ckpt}: the network config has nothing to build at {prefix!r}")
    try:
        module = instantiate(config)
    except Exception as exc:
        raise ForecastError(f"{ckpt}: cannot build the network: {exc}") from exc
    state = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ForecastError(
            f"{ckpt}: the weights do not fit the network config stored with them: {exc}"
        ) from exc
    return module


class CheckpointForecaster(Forecaster):
    """Base of forecasters that run a network from a ``geogen-train`` checkpoint.

    Subclasses set :attr:`checkpoint_model` (the ``model`` of the checkpoint's metadata),
    :attr:`size_multiple`, :attr:`min_domain` and implement :meth:`build` and
    :meth:`forecast_batch`.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train``; ``None`` takes the checkpoint geogen ships for
        this model (``checkpoints/``, see :mod:`geogen.forecasting.shipped`), if any.
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
    checkpoint_model: str = ""
    #: The domain is zero-padded (no rain) to multiples of this, then cropped back.
    size_multiple: int = 1
    #: Smallest domain side in pixels.
    min_domain: int = 1

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str = "auto",
        batch_members: int = 4,
        precision: str = "32",
        ckpt_sha256: str | None = None,
    ) -> None:
        from geogen.forecasting.shipped import resolve_checkpoint

        label = self.checkpoint_model
        ckpt = resolve_checkpoint(label, ckpt, ckpt_sha256)
        if int(batch_members) < 1:
            raise ForecastError(f"batch_members must be >= 1, got {batch_members}")
        if precision not in ("32", "bf16"):
            raise ForecastError(f"precision must be '32' or 'bf16', got {precision!r}")
        checkpoint = load_geogen_checkpoint(ckpt, label)
        meta = checkpoint["geogen"]
        self.ckpt = str(ckpt)
        self.checkpoint_sha256 = sha256_file(ckpt)
        self.meta = meta
        self.data = dict(meta["data"])
        self.device = resolve_device(device)
        self.batch_members = int(batch_members)
        self.precision = precision
        self.timestep_minutes = float(self.data["timestep_minutes"])
        self.n_context = self.build(checkpoint)
        if self.data.get("context") not in (None, self.n_context):
            raise ForecastError(
                f"{ckpt}: trained on {self.data['context']} context frames but the network "
                f"takes {self.n_context}"
            )
        spec = dict(self.data.get("transform") or {"name": "identity"})
        from geogen.data.transforms import get_transform

        self.transform = get_transform(spec.pop("name"), **spec)
        log.info(
            "%s: %s (sha256 %s), %d context frames every %g min, on %s",
            self.name,
            ckpt,
            self.checkpoint_sha256[:12],
            self.n_context,
            self.timestep_minutes,
            self.device,
        )

    def build(self, checkpoint: dict[str, Any]) -> int:
        """Build the network(s) from ``checkpoint`` onto :attr:`device`; return the context size."""
        raise NotImplementedError

    def forecast_batch(
        self, inputs: torch.Tensor, leads: int, members: range, seed: int
    ) -> torch.Tensor:
        """``(len(members), leads, H, W)`` model-space forecasts of ``inputs`` ``(1, C, H, W)``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Model name, checkpoint path and SHA-256, network config, training data, settings."""
        m = self.size_multiple
        return {
            **checkpoint_description(self),
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
        if ny < self.min_domain or nx < self.min_domain:
            raise ForecastError(
                f"domain of {ny} x {nx} pixels is too small for {name}: at least "
                f"{self.min_domain} x {self.min_domain} (region=[y0,x0,height,width])"
            )
        no_data = ~np.isfinite(context[-1])
        filled = np.where(np.isfinite(context), context, np.float32(self.data.get("nan_fill", 0)))
        model_space = np.asarray(self.transform.forward(filled), dtype=np.float32)
        m = self.size_multiple
        pad_y, pad_x = (-ny) % m, (-nx) % m
        zero = float(self.transform.forward(np.float32(0.0)))
        padded = np.pad(model_space, ((0, 0), (0, pad_y), (0, pad_x)), constant_values=zero)
        inputs = torch.from_numpy(padded)[None].to(self.device)
        out = np.empty((members, leads, ny, nx), dtype=np.float32)
        batches = member_batches(members, self.batch_members, progress, f"{name} members")
        autocast = self.precision == "bf16" and self.device.type == "cuda"
        with torch.inference_mode():
            for start, stop in batches:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                    frames = self.forecast_batch(inputs, leads, range(start, stop), seed)
                values = self.transform.inverse(frames[..., :ny, :nx].float()).cpu().numpy()
                out[start:stop] = np.maximum(values, 0.0)
        out[:, :, no_data] = np.nan
        return out


@register_forecaster("dgmr")
class DGMRForecaster(CheckpointForecaster):
    """Ensemble nowcasts with a trained DGMR generator.

    Parameters
    ----------
    ckpt
        Checkpoint written by ``geogen-train experiment=dgmr`` (or ``dgmr_tiny``).
    device, batch_members, precision
        See :class:`CheckpointForecaster`.
    """

    checkpoint_model = "dgmr"
    size_multiple = 32
    min_domain = MIN_DOMAIN
    #: About the most bytes of sampler activations alive at once (see :meth:`forecast_batch`).
    sampler_memory = 2 * 2**30

    def build(self, checkpoint: dict[str, Any]) -> int:
        """The generator of the checkpoint."""
        generator_config = self.meta["network_config"].get("generator")
        generator = build_submodule(checkpoint, self.ckpt, generator_config, "network.generator.")
        self.generator = generator.to(self.device).eval()
        return int(generator.context_frames)

    def _latent(self, seed: int, member: int, height: int, width: int) -> torch.Tensor:
        """Member ``member``'s latent noise, independent of batching and device."""
        generator = member_generator(seed, member)
        return self.generator.sample_latent(1, height, width, generator=generator)[0]

    def forecast_batch(
        self, inputs: torch.Tensor, leads: int, members: range, seed: int
    ) -> torch.Tensor:
        """Generator samples, member ``m`` from latent noise seeded with ``(seed, m)``.

        Memory-bounded, with the generator's result: every member has the same context, so
        the conditioning stack runs once for the batch; the sampler is unrolled over chunks
        of lead times, all four levels for one chunk before the next (each level's ConvGRU
        state carries over), with as many leads per chunk as keep about
        :attr:`sampler_memory` bytes of activations alive (about ``56 * base_channels``
        bytes per pixel of the half-resolution grid per member and lead: 160 MB at the
        paper's width on the 640 x 736 padded MeteoSwiss domain, measured). A 20-member,
        18-lead forecast of that domain then peaks at a few GB instead of ~3 GB per member
        of the batch. On CPU, tensors are channels-last (faster convolutions).
        """
        from torch.nn import functional as F
        from torch.nn.utils import parametrize

        from geogen.nn.layers import depth_to_space

        generator, sampler = self.generator, self.generator.sampler
        if inputs.device.type == "cpu":
            # oneDNN's CPU convolutions run about twice as fast on channels-last tensors
            # (measured: the dgmr_tiny ensemble of 256 x 256); values equal to float rounding.
            generator.to(memory_format=torch.channels_last)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        height, width = inputs.shape[-2:]
        n = len(members)
        z = torch.stack([self._latent(seed, m, height, width) for m in members]).to(self.device)
        per_lead = 56 * generator.base_channels * (height // 2) * (width // 2) * n
        chunk = int(min(leads, max(1, self.sampler_memory // per_lead)))
        out: torch.Tensor | None = None
        # Spectrally normalised weights are computed once, not at every lead step.
        with parametrize.cached():
            states = [s.expand(n, -1, -1, -1) for s in generator.conditioning_stack(inputs)]
            states = states[::-1]  # coarse to fine, as the sampler's levels
            latent = generator.latent_stack(z.to(inputs.dtype))
            for first in range(0, leads, chunk):
                steps = min(chunk, leads - first)
                below: torch.Tensor | None = None  # (n, steps, C, h, w) from the coarser level
                for level, gru in enumerate(sampler.grus):
                    outputs = []
                    for step in range(steps):
                        x = latent if below is None else below[:, step]
                        states[level] = gru(x, states[level])
                        outputs.append(states[level])
                    h = torch.stack(outputs, dim=1).flatten(0, 1)  # batch-major
                    h = sampler.convs[level](h)
                    h = sampler.gblocks[level](h, steps=steps, first_step=first)
                    h = sampler.up_gblocks[level](h, steps=steps, first_step=first)
                    below = h.unflatten(0, (n, steps))
                h = below.flatten(0, 1)
                h = sampler.output_conv(F.relu(sampler.output_bn(h, steps=steps, first_step=first)))
                frames = depth_to_space(h).reshape(n, steps, height, width)
                if generator.output_activation == "relu":
                    frames = F.relu(frames)
                if out is None:
                    out = frames.new_empty((n, leads, height, width))
                out[:, first : first + steps] = frames
        return out
