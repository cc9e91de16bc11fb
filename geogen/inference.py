"""The inference side shared by forecasting and downscaling (no Lightning, no file I/O).

- :func:`to_model_space` / :func:`to_physical`: fill no-data, map to model space and pad (and
  back), written once for every learned method;
- :func:`member_generator`: the random generator of one ensemble member, so a member does not
  depend on the batch it is computed in;
- :func:`member_batches`, :func:`resolve_device`;
- :class:`NowcastModel`: one ``nn.Module`` that wraps a nowcasting network with its
  pre-processing (fill NaN, transform, pad), post-processing (crop, back to mm/h, no data) and
  member seeding, in the style of anemoi-models' model interface. Forecasters
  (:class:`~geogen.forecasting.learned.CheckpointForecaster`) build one from a checkpoint and
  call :meth:`NowcastModel.predict`.

Adding a conditioning input (frames a method computes from the context, per forecast or per
member) is a subclass overriding :meth:`NowcastModel.conditions` or
:meth:`NowcastModel.member_conditions`: what they return (mm/h, ``(1 or members, lead, y,
x)``) is mapped to model space and padded like the context and handed to :meth:`forward` by
keyword.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; other values as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def member_generator(seed: int, member: int) -> torch.Generator:
    """A CPU generator for ensemble member ``member`` of ``seed``.

    Seeded from ``(seed, member)`` through :class:`numpy.random.SeedSequence`, so a member's
    random draws depend neither on the batch it is computed in nor on the device.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(member)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``precision="bf16"``, else a no-op context."""
    enabled = precision == "bf16" and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def to_model_space(
    frames: np.ndarray, transform: Any, nan_fill: float = 0.0, multiple: int = 1
) -> np.ndarray:
    """Physical ``(..., y, x)`` -> model space, no data filled, padded to ``multiple``.

    NaN becomes ``nan_fill`` (physical units), values are mapped with ``transform`` and the
    grid is padded at the bottom and right to multiples of ``multiple`` with the model-space
    value of 0 (no rain).
    """
    frames = np.asarray(frames, dtype=np.float32)
    filled = np.where(np.isfinite(frames), frames, np.float32(nan_fill))
    values = np.asarray(transform.forward(filled), dtype=np.float32)
    pad_y, pad_x = (-frames.shape[-2]) % multiple, (-frames.shape[-1]) % multiple
    if not (pad_y or pad_x):
        return values
    zero = float(transform.forward(np.float32(0.0)))
    widths = [(0, 0)] * (values.ndim - 2) + [(0, pad_y), (0, pad_x)]
    return np.pad(values, widths, constant_values=zero)


def to_physical(values: torch.Tensor, transform: Any, ny: int, nx: int) -> np.ndarray:
    """Model-space ``(..., Y, X)`` -> physical ``(..., ny, nx)`` float32 (cropped back)."""
    return transform.inverse(values[..., :ny, :nx].float()).cpu().numpy()


class NowcastModel(nn.Module):
    """A nowcasting network with its pre-processing, post-processing and member seeding.

    Subclasses implement :meth:`forward` (member seeding and the network, in model space) and
    may add conditioning inputs through :meth:`conditions` / :meth:`member_conditions`.

    Parameters
    ----------
    network
        The trained network (an ``nn.Module``).
    transform
        The training transform: mm/h <-> model space.
    context_frames
        Context frames the network takes.
    nan_fill
        Value (mm/h) of missing context pixels (the training store's ``nan_fill``).
    size_multiple
        The domain is padded (no rain) to multiples of this, then cropped back.
    min_domain
        Smallest domain side in pixels.
    """

    def __init__(
        self,
        network: nn.Module,
        transform: Any,
        *,
        context_frames: int,
        nan_fill: float = 0.0,
        size_multiple: int = 1,
        min_domain: int = 1,
    ) -> None:
        super().__init__()
        self.network = network
        self.transform = transform
        self.context_frames = int(context_frames)
        self.nan_fill = float(nan_fill)
        self.size_multiple = int(size_multiple)
        self.min_domain = int(min_domain)

    @property
    def device(self) -> torch.device:
        """Where the network's parameters are."""
        return next(self.network.parameters()).device

    # -- pre- and post-processing -----------------------------------------------------------
    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """mm/h ``(T, y, x)`` (NaN: no data) -> model space ``(1, T, Y, X)`` on the device."""
        values = to_model_space(frames, self.transform, self.nan_fill, self.size_multiple)
        return torch.from_numpy(values)[None].to(self.device)

    def postprocess(self, values: torch.Tensor, ny: int, nx: int) -> np.ndarray:
        """Model space ``(n, L, Y, X)`` -> mm/h ``(n, L, ny, nx)``, at least 0."""
        return np.maximum(to_physical(values, self.transform, ny, nx), 0.0)

    # -- hooks -------------------------------------------------------------------------------
    def conditions(
        self, context: np.ndarray, leads: int, timestep_minutes: float
    ) -> dict[str, np.ndarray]:
        """Extra per-lead inputs shared by all members: ``{keyword: (L, y, x) mm/h}``.

        Computed once per forecast from the checked ``context`` ``(T, y, x)`` mm/h; each is
        mapped to model space, padded and passed to :meth:`forward` as ``(1, L, Y, X)``.
        """
        return {}

    def member_conditions(
        self,
        context: np.ndarray,
        leads: int,
        members: range,
        seed: int,
        timestep_minutes: float,
    ) -> dict[str, np.ndarray]:
        """Extra per-lead inputs of each member: ``{keyword: (len(members), L, y, x) mm/h}``.

        Computed per member batch (member ``m``'s randomness should come from
        :func:`member_generator` ``(seed, m)`` or another source seeded from ``(seed, m)``, so
        members do not depend on the batching); mapped to model space, padded and passed to
        :meth:`forward` as ``(len(members), L, Y, X)``.
        """
        return {}

    def forward(
        self, inputs: torch.Tensor, leads: int, members: range, seed: int, **conditions: Any
    ) -> torch.Tensor:
        """Model-space ``(len(members), leads, Y, X)`` from ``inputs`` ``(1, T, Y, X)``.

        Member ``m`` draws its randomness from :func:`member_generator` ``(seed, m)``.
        """
        raise NotImplementedError

    # -- the whole forecast -------------------------------------------------------------------
    def predict(
        self,
        context: np.ndarray,
        *,
        leads: int,
        members: int,
        seed: int,
        timestep_minutes: float,
        batch_members: int = 4,
        precision: str = "32",
        progress: bool = False,
        desc: str = "members",
    ) -> np.ndarray:
        """``(member, lead, y, x)`` mm/h from ``context`` ``(context_frames, y, x)`` mm/h.

        Pre-processes the context (and the conditions) once, runs :meth:`forward` on batches
        of ``batch_members`` members, post-processes, and sets NaN where the issue-time frame
        has no data (the context cannot say anything there).
        """
        ny, nx = context.shape[1:]
        no_data = ~np.isfinite(context[-1])
        inputs = self.preprocess(context)
        shared = self._to_model(self.conditions(context, leads, timestep_minutes))
        out = np.empty((members, leads, ny, nx), dtype=np.float32)
        with torch.inference_mode():
            for start, stop in member_batches(members, batch_members, progress, desc):
                batch = range(start, stop)
                own = self.member_conditions(context, leads, batch, seed, timestep_minutes)
                with autocast(self.device, precision):
                    frames = self(inputs, leads, batch, seed, **shared, **self._to_model(own))
                out[start:stop] = self.postprocess(frames, ny, nx)
        out[:, :, no_data] = np.nan
        return out

    def _to_model(self, conditions: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for key, frames in conditions.items():
            values = to_model_space(frames, self.transform, self.nan_fill, self.size_multiple)
            tensor = torch.from_numpy(values).to(self.device)
            out[key] = tensor[None] if tensor.dim() == 3 else tensor
        return out
