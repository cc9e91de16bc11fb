"""A PyTorch dataset over one or more crop stores (see :mod:`geogen.io.store`).

Each item is one sample of the store, read from its own zarr chunk, with NaN (no data) replaced
by ``nan_fill`` and values mapped to model space by a :class:`~geogen.data.transforms.Transform`::

    dataset = CropDataset("crops.zarr", split="train", transform="log1p", augment=True)
    item = dataset[0]
    item["context"].shape  # (context, y, x) for a nowcast store
    rain = dataset.transform.inverse(item["target"])  # back to mm/h

The dataset holds only paths and small per-sample metadata; zarr arrays are opened lazily in
each process, so it is safe with ``DataLoader(num_workers > 0)`` under both fork and spawn.
"""

from __future__ import annotations

import logging
import math
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from geogen.data.augment import N_DIHEDRAL, dihedral
from geogen.data.transforms import Transform, get_transform
from geogen.io.store import (
    SPLITS,
    StoreError,
    StoreInfo,
    open_crop_store,
    sampling_warnings,
    split_indices,
    store_info,
)

logger = logging.getLogger(__name__)

#: What a store path may be given as.
StorePath = str | os.PathLike
#: A transform specification: a registered name, a Transform, or ``{"name": ..., **params}``.
TransformSpec = str | Transform | Mapping[str, Any] | None

#: Parameter value meaning "take it from the training statistics of the store".
FROM_STORE = "store"

#: Store properties that combined stores must share.
_SHARED_FIELDS: tuple[str, ...] = (
    "task",
    "variable",
    "n_times",
    "crop_size",
    "timestep_minutes",
    "context",
    "lead",
    "factor",
)

#: Properties that downscale stores may differ in: a downscaling pair is spatial, so each
#: sequence keeps the time step of its own source (recorded per sample as ``step_minutes``).
_FREE_IN_DOWNSCALE: frozenset[str] = frozenset({"timestep_minutes"})


class EmptySplitError(StoreError):
    """The requested split of the store(s) holds no sample."""


def as_store_paths(path: StorePath | Sequence[StorePath]) -> list[str]:
    """Normalise one store path or a sequence of them to a list of strings.

    Raises
    ------
    ValueError
        If ``path`` is an empty sequence.
    """
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    paths = [os.fspath(p) for p in path]
    if not paths:
        raise ValueError("no crop store given: path is an empty sequence")
    return paths


def train_statistics(infos: Sequence[StoreInfo]) -> dict[str, float]:
    """Pooled statistics of the training splits of ``infos``.

    Parameters
    ----------
    infos
        Stores whose ``statistics["train"]`` (count, mean, std of the finite values, in the
        units of the variable) are pooled, weighted by their counts.

    Returns
    -------
    dict
        ``count``, ``mean`` and ``std`` (population standard deviation) of all training values.

    Raises
    ------
    StoreError
        If no store has training statistics with a non-zero count.
    """
    counts, means, variances = [], [], []
    for info in infos:
        stats = info.statistics.get("train") or {}
        count = float(stats.get("count", 0.0) or 0.0)
        if count > 0:
            counts.append(count)
            means.append(float(stats["mean"]))
            variances.append(float(stats["std"]) ** 2)
    if not counts:
        raise StoreError(
            "the transform asks for the training statistics of the store, but "
            + ", ".join(info.path for info in infos)
            + " has no training values (empty train split)"
        )
    total = sum(counts)
    mean = sum(n * m for n, m in zip(counts, means, strict=True)) / total
    variance = (
        sum(n * (v + (m - mean) ** 2) for n, m, v in zip(counts, means, variances, strict=True))
        / total
    )
    return {"count": total, "mean": mean, "std": math.sqrt(variance)}


def resolve_transform(spec: TransformSpec, infos: Sequence[StoreInfo] = ()) -> Transform:
    """Build the transform described by ``spec``.

    Parameters
    ----------
    spec
        A registered name (``"log1p"``), a :class:`Transform` (returned as is), a mapping
        ``{"name": ..., **params}``, or ``None`` for the identity. For ``standardize``, a
        ``mean`` or ``std`` given as ``"store"`` (or left out) is taken from the pooled training
        statistics of ``infos`` (see :func:`train_statistics`).
    infos
        The stores whose statistics ``"store"`` refers to.

    Returns
    -------
    Transform
        The configured transform.

    Raises
    ------
    ValueError
        If the name is unknown (the message lists the valid ones), the parameters do not fit,
        or ``"store"`` is used for a parameter other than ``standardize``'s mean and std.
    StoreError
        If ``"store"`` is asked for and the stores have no training statistics.
    """
    if spec is None:
        return get_transform("identity")
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        params = dict(spec)
        if "name" not in params:
            raise ValueError(f"a transform mapping needs a 'name' key, got {spec!r}")
        name = params.pop("name")
    else:
        raise TypeError(
            f"transform must be a name, a Transform, a mapping or None, got {type(spec).__name__}"
        )
    if isinstance(name, str) and name.lower() == "standardize":
        wanted = [key for key in ("mean", "std") if params.get(key, FROM_STORE) == FROM_STORE]
        if wanted:
            stats = train_statistics(infos)
            params.update({key: stats[key] for key in wanted})
            logger.info(
                "standardize with training statistics of the store: mean=%.6g std=%.6g",
                params["mean"],
                params["std"],
            )
    from_store = [key for key, value in params.items() if value == FROM_STORE]
    if from_store:
        raise ValueError(
            f"transform {name!r}: only standardize's mean and std can be {FROM_STORE!r}, "
            f"got it for {', '.join(from_store)}"
        )
    return get_transform(name, **params)


def check_compatible(infos: Sequence[StoreInfo]) -> None:
    """Check that stores can be concatenated: same task, variable, shape and timing.

    Nowcast stores must also share their time step (a nowcaster learns one step). Downscale
    stores may mix steps: a pair is 8 frames of its own source's step, and each sample
    records that step (``step_minutes``) beside its ``source``.

    Raises
    ------
    StoreError
        Naming the first property on which the stores disagree, with each store's value.
    """
    first = infos[0]
    free = _FREE_IN_DOWNSCALE if first.task == "downscale" else frozenset()
    for other in infos[1:]:
        for name in _SHARED_FIELDS:
            if name in free and other.task == first.task:
                continue
            if getattr(other, name) != getattr(first, name):
                raise StoreError(
                    f"crop stores cannot be combined: {name} is {getattr(first, name)!r} in "
                    f"{first.path} but {getattr(other, name)!r} in {other.path}"
                )
        units = [info.attrs.get("variable_attrs", {}).get("units") for info in (first, other)]
        if units[0] != units[1]:
            raise StoreError(
                f"crop stores cannot be combined: units are {units[0]!r} in {first.path} "
                f"but {units[1]!r} in {other.path}"
            )


class CropDataset(Dataset):
    """Samples of one or more crop stores as dictionaries of torch tensors.

    Parameters
    ----------
    path
        A crop store, or several stores of the same task, variable, shape and time step, which
        are concatenated in the order given.
    split
        ``"train"``, ``"val"`` or ``"test"``; ``None`` for all samples.
    transform
        Value transform to model space: a registered name, a :class:`Transform`, a mapping
        ``{"name": ..., **params}`` or ``None`` (identity). ``{"name": "standardize", "mean":
        "store", "std": "store"}`` uses the pooled training statistics of the stores (see
        :func:`resolve_transform`).
    augment
        Apply one of the 8 symmetries of the square (:func:`geogen.data.augment.dihedral`,
        drawn with :func:`torch.randint`) to each sample; all frames, the mask, the
        low-resolution input and the advection forecast get the same one.
    nan_fill
        Value in the physical units of the variable (before the transform) that replaces NaN
        (no data). The ``mask`` entry tells which pixels had data.
    return_metadata
        Also return ``t0`` and ``source``.
    advection
        Nowcast stores only: also return ``advected``, pysteps' extrapolation of each sample's
        last context frame over its lead frames (model space), computed once per sample and
        cached beside each store (:class:`~geogen.data.advection.AdvectionCache`). ``True``
        for the default settings, or a mapping of ``pysteps_extrapolation`` settings
        (``motion``, ``motion_frames``, ``interp_order``, ``outval``), optionally with
        ``cache_dir`` (a folder for the caches instead of beside the stores) and
        ``progress`` (a progress bar while filling, default True).
    steps
        Nowcast stores only: also return ``steps``, ``members`` pysteps STEPS members of each
        sample (model space), computed once per sample and cached beside each store
        (:class:`~geogen.data.steps.StepsCache`). ``True`` for 4 members with pysteps'
        defaults, or a mapping with ``members``, ``seed``, ``pysteps_steps`` settings,
        ``cache_dir`` and ``progress`` (as for ``advection``).

    Raises
    ------
    StoreError
        If a path is not a complete crop store, the split is unknown or empty, or the stores
        disagree on task, variable, shape, time step or units.

    Notes
    -----
    ``dataset[i]`` is a dict of tensors (``T`` frames of ``H x W`` pixels, ``f`` the
    downscaling factor; values in model space unless said):

    - nowcast stores: ``context`` ``(context, H, W)`` and ``target`` ``(lead, H, W)``;
    - downscale stores: ``lowres`` ``(T, H / f, W / f)`` (block means of the target) and
      ``target`` ``(T, H, W)``;
    - ``mask`` ``(T, H, W)`` bool, True where the store has data (all ``T`` frames; for a
      nowcast ``mask[:context]`` belongs to ``context``);
    - ``sample_prob`` float32 scalar, the probability with which the crop was kept;
    - ``step_minutes`` float32 scalar, the time step of the sample's frames (its store's;
      downscale stores of different steps can be combined);
    - ``index`` int64 scalar, position of the sample in its store, and ``store`` int64
      scalar, position of that store in ``path``;
    - ``t0`` int64 scalar, valid time of the first frame in seconds since 1970-01-01 UTC,
      and ``source`` str, the source the sample was cut from (``mch``, ``fmi``, ...; batches
      hold a list of them), with ``return_metadata``;
    - ``advected`` ``(lead, H, W)`` with ``advection``: the extrapolation of the context;
    - ``steps`` ``(members, lead, H, W)`` with ``steps``: STEPS members of the context.

    With ``augment`` the conditioning frames (``advected``, ``steps``) get the same symmetry
    as the sample: they are forecasts of the same field, and pysteps' extrapolation and STEPS
    are (statistically) equivariant under rotations and reflections of the grid.
    """

    def __init__(
        self,
        path: StorePath | Sequence[StorePath],
        split: str | None = "train",
        transform: TransformSpec = "log1p",
        augment: bool = False,
        nan_fill: float = 0.0,
        return_metadata: bool = True,
        advection: bool | Mapping[str, Any] | None = None,
        steps: bool | Mapping[str, Any] | None = None,
    ) -> None:
        self.paths = as_store_paths(path)
        self.split = split
        self.augment = bool(augment)
        self.nan_fill = float(nan_fill)
        self.return_metadata = bool(return_metadata)

        groups = [open_crop_store(p) for p in self.paths]
        infos = [store_info(group) for group in groups]
        check_compatible(infos)
        self.infos = infos
        first = infos[0]
        if first.task == "nowcast" and (first.context or 0) + (first.lead or 0) != first.n_times:
            raise StoreError(
                f"{first.path}: context {first.context} + lead {first.lead} does not match the "
                f"{first.n_times} frames of {first.variable!r}"
            )
        if first.task == "downscale" and not first.factor:
            raise StoreError(f"{first.path}: downscale store without a factor")

        store_ids, indices, sample_prob, t0, sources, step_minutes = [], [], [], [], [], []
        for number, group in enumerate(groups):
            selected = split_indices(group, split).astype(np.int64)
            store_ids.append(np.full(selected.size, number, dtype=np.int64))
            indices.append(selected)
            sample_prob.append(np.asarray(group["sample_prob"][:], dtype=np.float32)[selected])
            times = np.asarray(group["t0"][:]).astype("datetime64[s]").astype(np.int64)
            t0.append(times[selected])
            sources.append(np.asarray(group["source"][:].tolist(), dtype=object)[selected])
            step_minutes.append(np.full(selected.size, infos[number].timestep_minutes, np.float32))
        self._store_ids = np.concatenate(store_ids)
        self._indices = np.concatenate(indices)
        self._sample_prob = np.concatenate(sample_prob)
        self._t0 = np.concatenate(t0)
        self._sources = np.concatenate(sources)
        self._step_minutes = np.concatenate(step_minutes)
        offsets = {tuple(np.asarray(group["time"][:], dtype=np.int64)) for group in groups}
        self._time_offsets = (
            np.asarray(next(iter(offsets)), dtype=np.int64) if len(offsets) == 1 else None
        )
        if self._indices.size == 0:
            counts = "; ".join(f"{info.path}: {info.split_counts}" for info in infos)
            causes = [
                f"{info.path}: {warning}"
                for info in infos
                for warning in sampling_warnings(info.attrs.get("summary") or {})
            ]
            raise EmptySplitError(
                f"split {split!r} holds no sample (split_counts {counts}); choose another "
                f"split (one of {', '.join(SPLITS)}) or rebuild the store with other split "
                "settings" + "".join(f". {cause}" for cause in causes)
            )
        self._transform = resolve_transform(transform, infos)
        self.advection = self._advection_caches(advection)
        self.steps = self._steps_caches(steps)
        # zarr arrays, opened lazily per process: {store number: (data, lowres or None)}
        self._arrays: dict[int, tuple[zarr.Array, zarr.Array | None]] = {}
        self._pid: int | None = None
        logger.debug(
            "CropDataset over %s, split %r: %d samples", self.paths, split, len(self._indices)
        )

    def _advection_caches(self, advection: bool | Mapping[str, Any] | None) -> list | None:
        """One filled :class:`AdvectionCache` per store, or None without ``advection``."""
        if advection is None or advection is False:
            return None
        if self.task != "nowcast":
            raise StoreError(f"advection needs nowcast stores; {self.paths[0]} is {self.task}")
        from geogen.data.advection import AdvectionCache, default_cache_path

        settings = {} if advection is True else dict(advection)
        cache_dir = settings.pop("cache_dir", None)
        progress = bool(settings.pop("progress", True))
        caches = []
        for number, store in enumerate(self.paths):
            path = None
            if cache_dir is not None:
                path = Path(cache_dir) / default_cache_path(store).name
            cache = AdvectionCache(store, settings, path=path)
            cache.fill(self._indices[self._store_ids == number], progress=progress)
            caches.append(cache)
        return caches

    def _steps_caches(self, steps: bool | Mapping[str, Any] | None) -> list | None:
        """One filled :class:`~geogen.data.steps.StepsCache` per store, or None."""
        if steps is None or steps is False:
            return None
        if self.task != "nowcast":
            raise StoreError(f"STEPS members need nowcast stores; {self.paths[0]} is {self.task}")
        from geogen.data.advection import default_cache_path
        from geogen.data.steps import StepsCache

        settings = {} if steps is True else dict(steps)
        cache_dir = settings.pop("cache_dir", None)
        progress = bool(settings.pop("progress", True))
        members = int(settings.pop("members", 4))
        seed = int(settings.pop("seed", 0))
        caches = []
        for number, store in enumerate(self.paths):
            path = None
            if cache_dir is not None:
                path = Path(cache_dir) / default_cache_path(store, "steps").name
            cache = StepsCache(store, settings, path=path, members=members, seed=seed)
            cache.fill(self._indices[self._store_ids == number], progress=progress)
            caches.append(cache)
        return caches

    @property
    def sources(self) -> np.ndarray:
        """``(len(self),)`` str: the source of each sample (``mch``, ``fmi``, ...)."""
        return self._sources.copy()

    # -- pickling: never carry open zarr handles into worker processes -------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- properties ---------------------------------------------------------------------------
    @property
    def info(self) -> StoreInfo:
        """:class:`~geogen.io.store.StoreInfo` of the first store."""
        return self.infos[0]

    @property
    def task(self) -> str:
        """``"nowcast"`` or ``"downscale"``."""
        return self.info.task

    @property
    def variable(self) -> str:
        """Name of the field variable (e.g. ``"precip"``)."""
        return self.info.variable

    @property
    def transform(self) -> Transform:
        """The value transform applied to the fields (its ``inverse`` maps predictions back)."""
        return self._transform

    @property
    def context(self) -> int | None:
        """Number of context frames (nowcast stores), else None."""
        return self.info.context

    @property
    def lead(self) -> int | None:
        """Number of target frames (nowcast stores), else None."""
        return self.info.lead

    @property
    def factor(self) -> int | None:
        """Downscaling factor (downscale stores), else None."""
        return self.info.factor

    @property
    def time_offsets_minutes(self) -> np.ndarray:
        """``(time,)`` int64, minutes of each frame relative to the issue time (see the store).

        Raises
        ------
        StoreError
            If the stores mix time steps (downscale stores may): see :attr:`step_minutes`.
        """
        if self._time_offsets is None:
            listed = ", ".join(f"{info.path}: {info.timestep_minutes:g}" for info in self.infos)
            raise StoreError(
                f"the stores mix time steps ({listed} min): each sample has its own "
                "(step_minutes); there is no common time axis"
            )
        return self._time_offsets.copy()

    @property
    def step_minutes(self) -> np.ndarray:
        """``(len(self),)`` float32: the time step of each sample's frames (its store's)."""
        return self._step_minutes.copy()

    @property
    def sample_prob(self) -> np.ndarray:
        """``(len(self),)`` float32, probability with which each sample was kept."""
        return self._sample_prob.copy()

    @property
    def sample_weights(self) -> np.ndarray:
        """``(len(self),)`` float64 importance weights ``1 / sample_prob`` for evaluation."""
        return 1.0 / self._sample_prob.astype(np.float64)

    @property
    def store_indices(self) -> np.ndarray:
        """``(len(self), 2)`` int64: (store number, position in that store) of each sample."""
        return np.stack([self._store_ids, self._indices], axis=1)

    def __len__(self) -> int:
        return int(self._indices.size)

    def __repr__(self) -> str:
        return (
            f"CropDataset(paths={self.paths!r}, split={self.split!r}, task={self.task!r}, "
            f"samples={len(self)}, transform={self._transform!r}, augment={self.augment})"
        )

    # -- reading ------------------------------------------------------------------------------
    def _store_arrays(self, number: int) -> tuple[zarr.Array, zarr.Array | None]:
        """The zarr arrays of store ``number``, opened once per process."""
        pid = os.getpid()
        if self._pid != pid:
            self._arrays = {}
            self._pid = pid
        arrays = self._arrays.get(number)
        if arrays is None:
            group = open_crop_store(self.paths[number])
            lowres = group[self.info.lowres_variable] if self.task == "downscale" else None
            arrays = (group[self.variable], lowres)
            self._arrays[number] = arrays
        return arrays

    def _to_model(self, raw: np.ndarray) -> torch.Tensor:
        """Fill NaN in ``raw`` (physical units) and apply the transform; float32 tensor."""
        filled = np.where(np.isnan(raw), np.float32(self.nan_fill), raw)
        values = np.asarray(self._transform.forward(filled), dtype=np.float32)
        return torch.from_numpy(values)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        """Sample ``item`` of the dataset (see the class notes for the keys and shapes)."""
        position = operator.index(item)
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"index {item} out of range for {len(self)} samples")
        number = int(self._store_ids[position])
        index = int(self._indices[position])
        data, lowres = self._store_arrays(number)
        raw = np.asarray(data[index], dtype=np.float32)  # (time, y, x), one chunk
        fields = {"sequence": self._to_model(raw), "mask": torch.from_numpy(~np.isnan(raw))}
        if lowres is not None:
            fields["lowres"] = self._to_model(np.asarray(lowres[index], dtype=np.float32))
        if self.advection is not None:
            fields["advected"] = self._to_model(self.advection[number].read(index))
        if self.steps is not None:
            fields["steps"] = self._to_model(self.steps[number].read(index))
        if self.augment:
            op = int(torch.randint(0, N_DIHEDRAL, ()).item())
            fields = {key: dihedral(value, op).contiguous() for key, value in fields.items()}

        sequence = fields.pop("sequence")
        out: dict[str, torch.Tensor] = {}
        if self.task == "nowcast":
            out["context"] = sequence[: self.context]
            out["target"] = sequence[self.context :]
        else:
            out["lowres"] = fields.pop("lowres")
            out["target"] = sequence
        out["mask"] = fields.pop("mask")
        for name in ("advected", "steps"):
            if name in fields:
                out[name] = fields.pop(name)
        out["sample_prob"] = torch.tensor(self._sample_prob[position], dtype=torch.float32)
        out["step_minutes"] = torch.tensor(self._step_minutes[position], dtype=torch.float32)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        out["store"] = torch.tensor(number, dtype=torch.int64)
        if self.return_metadata:
            out["t0"] = torch.tensor(self._t0[position], dtype=torch.int64)
            out["source"] = str(self._sources[position])
        return out
