"""Advection forecasts of crop contexts (pysteps), the conditioning of ``dgmr_advect``.

:func:`advect` runs geogen's ``pysteps_extrapolation`` reference (Lucas-Kanade optical flow
on the last 3 context frames, semi-Lagrangian extrapolation of the last frame; see
:mod:`geogen.baselines.pysteps_methods`) with no rain flowing in from outside the domain
(``outval: min``), and returns the advected frames in mm/h, 0 where the extrapolation cannot
say anything (no data at the issue time). The same function makes the advected frames of
training crops (:class:`AdvectionCache`), of test crops and of forecasts, so a model sees the
same conditioning in training and in use.

Computing the optical flow for every crop at every epoch would dominate a CPU training step,
so :class:`AdvectionCache` computes each sample's advected frames once and keeps them in a
zarr store beside the crop store (``crops.zarr`` -> ``crops.advection.zarr``), one chunk per
sample, keyed by the crop store's fingerprints and the advection settings. Filling it is
resumable and idempotent: a sample is computed only when its ``done`` flag is not set, and its
frames are written before the flag.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

log = logging.getLogger(__name__)

#: Default advection settings (those of ``pysteps_extrapolation`` with no inflow).
DEFAULT_SETTINGS: dict[str, Any] = {
    "motion": "lucaskanade",
    "motion_frames": None,
    "interp_order": 1,
    "outval": "min",
}
CACHE_FORMAT = 1


def advection_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``settings`` over :data:`DEFAULT_SETTINGS` (keys of ``pysteps_extrapolation``)."""
    merged = dict(DEFAULT_SETTINGS)
    merged.update(dict(settings or {}))
    return merged


def advect(
    context: np.ndarray,
    leads: int,
    *,
    timestep_minutes: float = 5.0,
    settings: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Extrapolate the last frame of ``context`` over ``leads`` steps with pysteps.

    Parameters
    ----------
    context
        ``(time, y, x)`` rain rate in mm/h (NaN: no data), at least 3 frames for
        Lucas-Kanade.
    leads
        Number of lead frames.
    timestep_minutes
        Time step of the frames (recorded only; the extrapolation steps one frame per lead).
    settings
        ``pysteps_extrapolation`` settings over :data:`DEFAULT_SETTINGS`.

    Returns
    -------
    numpy.ndarray
        ``(leads, y, x)`` float32 mm/h, finite and >= 0 (0 where the extrapolation is
        undefined: no data at the issue time, or advected in from outside).
    """
    from geogen.forecasting import get_forecaster

    context = np.asarray(context, dtype=np.float32)
    if context.ndim != 3:
        raise ValueError(f"context must be (time, y, x), got shape {context.shape}")
    model = get_forecaster("pysteps_extrapolation", **advection_settings(settings))
    if not np.isfinite(context[-1]).any():
        return np.zeros((leads, *context.shape[1:]), dtype=np.float32)
    out = model.predict(context, leads=leads, members=1, seed=0, timestep_minutes=timestep_minutes)[
        0
    ]
    return np.nan_to_num(np.maximum(out, 0.0), nan=0.0).astype(np.float32)


def _cache_key(
    attrs: Mapping[str, Any], settings: Mapping[str, Any], lead: int, **extra: Any
) -> str:
    identity = {
        "format": CACHE_FORMAT,
        "config": attrs.get("config_fingerprint"),
        "input": attrs.get("input_fingerprint"),
        "created": (attrs.get("provenance") or {}).get("created"),
        "settings": dict(settings),
        "lead": int(lead),
        **extra,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_path(store: str | os.PathLike, kind: str = "advection") -> Path:
    """``crops.zarr`` -> ``crops.advection.zarr`` (``kind``) beside it."""
    store = Path(store)
    stem = store.name[: -len(".zarr")] if store.name.endswith(".zarr") else store.name
    return store.with_name(f"{stem}.{kind}.zarr")


class FrameCache:
    """Frames computed once per sample of a nowcast crop store (base of the caches).

    Subclasses set :attr:`kind` (the cache's name and default path suffix), :attr:`label`
    (progress bar), and implement :meth:`compute` (``(context, y, x)`` mm/h ->
    ``(*frame_shape, y, x)``); :meth:`key_extra` adds to the cache key what else the frames
    depend on.
    """

    kind = "frames"
    label = "frames"

    def __init__(
        self,
        store: str | os.PathLike,
        settings: Mapping[str, Any] | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        from geogen.io.store import open_crop_store, store_info

        self.store = os.fspath(store)
        group = open_crop_store(self.store)
        info = store_info(group)
        if info.task != "nowcast":
            raise ValueError(f"{self.store}: {self.kind} needs a nowcast store, not {info.task!r}")
        self.info = info
        self.settings = self.resolve_settings(settings)
        self.n_samples = int(info.n_samples)
        self.lead = int(info.lead)
        self.context = int(info.context)
        self.size = int(info.crop_size)
        self.path = Path(path) if path is not None else default_cache_path(self.store, self.kind)
        self.key = _cache_key(dict(group.attrs), self.settings, self.lead, **self.key_extra())
        self._arrays: tuple[zarr.Array, zarr.Array] | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"], state["_pid"] = None, None
        return state

    def _open(self) -> tuple[zarr.Array, zarr.Array]:
        if self._arrays is not None and self._pid == os.getpid():
            return self._arrays
        root = zarr.open_group(str(self.path), mode="a")
        if self.key not in root:
            group = root.create_group(self.key)
            group.attrs.update(
                {
                    "store": self.store,
                    "settings": self.settings,
                    "format": CACHE_FORMAT,
                    "units": "mm/h",
                }
            )
            frames = self.frame_shape()
            shape = (self.n_samples, *frames, self.size, self.size)
            from geogen.io.store import compressor

            group.create_array(
                self.array_name,
                shape=shape,
                chunks=(1, *frames, self.size, self.size),
                dtype="float32",
                compressors=[compressor()],
                fill_value=0.0,
            )
            group.create_array(
                "done", shape=(self.n_samples,), chunks=(1,), dtype="bool", fill_value=False
            )
        group = root[self.key]
        self._arrays = (group[self.array_name], group["done"])
        self._pid = os.getpid()
        return self._arrays

    def missing(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The sample indices among ``indices`` whose frames are not computed yet."""
        _, done = self._open()
        flags = np.asarray(done[:], dtype=bool)
        indices = np.asarray(indices, dtype=np.int64)
        return indices[~flags[indices]]

    def fill(self, indices: Sequence[int] | np.ndarray, progress: bool = True) -> int:
        """Compute the frames of every sample of ``indices`` not done yet; returns how many."""
        from geogen.io.store import open_crop_store

        todo = self.missing(indices)
        if todo.size == 0:
            return 0
        out, done = self._open()
        data = open_crop_store(self.store)[self.info.variable]
        log.info("%s: %d samples of %s (cache %s)", self.kind, todo.size, self.store, self.path)
        iterator: Any = todo
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(todo, desc=f"{self.label} {Path(self.store).name}", unit="sample")
        for index in iterator:
            frames = np.asarray(data[int(index)], dtype=np.float32)
            out[int(index)] = self.compute(frames[: self.context], int(index))
            done[int(index)] = True  # one chunk per flag, written after the frames: resumable
        return int(todo.size)

    def read(self, index: int) -> np.ndarray:
        """``(*frame_shape, y, x)`` float32 mm/h of sample ``index`` (computed if missing)."""
        out, done = self._open()
        if not bool(done[int(index)]):
            self.fill([int(index)], progress=False)
        return np.asarray(out[int(index)], dtype=np.float32)

    # -- what a subclass defines ------------------------------------------------------------
    array_name = "frames"

    def resolve_settings(self, settings: Mapping[str, Any] | None) -> dict[str, Any]:
        """The full settings (defaults filled in): part of the cache key."""
        return dict(settings or {})

    def key_extra(self) -> dict[str, Any]:
        """What else the frames depend on (added to the cache key)."""
        return {}

    def frame_shape(self) -> tuple[int, ...]:
        """Leading axes of one sample's frames (before ``y, x``)."""
        return (self.lead,)

    def compute(self, context: np.ndarray, index: int) -> np.ndarray:
        """The frames of sample ``index`` from its ``(context, y, x)`` mm/h frames."""
        raise NotImplementedError


class AdvectionCache(FrameCache):
    """Advected frames of the samples of one nowcast crop store, computed once.

    Parameters
    ----------
    store
        The crop store (``geogen-prepare task=nowcast``).
    settings
        Advection settings (see :func:`advect`).
    path
        The cache store (default :func:`default_cache_path`).

    Notes
    -----
    The cache group ``<path>/<key>`` holds ``advected`` ``(sample, lead, y, x)`` float32 mm/h,
    one sample per chunk, and ``done`` ``(sample,)`` bool (one chunk per flag, so worker
    processes filling different samples never write the same chunk); ``key`` hashes the crop store's
    fingerprints and creation time with the settings, so a rebuilt store or other settings
    never read stale frames.
    """

    kind = "advection"
    label = "advection (pysteps)"
    array_name = "advected"

    def resolve_settings(self, settings: Mapping[str, Any] | None) -> dict[str, Any]:
        """:func:`advection_settings`."""
        return advection_settings(settings)

    def compute(self, context: np.ndarray, index: int) -> np.ndarray:
        """:func:`advect` of the sample's context over the store's lead."""
        return advect(
            context,
            self.lead,
            timestep_minutes=self.info.timestep_minutes,
            settings=self.settings,
        )
