"""The crop store: a zarr v3 group of fixed-size crops, readable with zarr and xarray.

Layout (``S`` samples, ``T`` frames, ``H x W`` crop; all arrays carry ``dimension_names`` so
``xarray.open_zarr(path)`` gives a tidy dataset)::

    <variable>          (sample, time, y, x)   float32, one sample per chunk, NaN = no data
    <variable>_lowres   (sample, time, y_lowres, x_lowres)  float32, downscale task only
    time                (time,)        int32   minutes relative to the issue time (nowcast: the last
                                                context frame, so context frames are <= 0) or to the
                                                first frame (downscale)
    t0                  (sample,)      datetime64[s]  valid time of the sample's first frame
    source              (sample,)      str     source name (stores may be combined)
    y0, x0              (sample,)      int32   pixel offsets of the crop in the source grid
    rain_fraction       (sample,)      float32 fraction of valid pixels >= the rain threshold
                                                (NaN for fields that are not precipitation)
    nan_fraction        (sample,)      float32 fraction of pixels with no data
    sample_prob         (sample,)      float32 probability with which the crop was kept (importance
                                                sampling); weight scores by 1 / sample_prob
    split               (sample,)      str     "train", "val" or "test"

Group attributes: ``geogen_store_version``, ``status`` (``"complete"`` once finalised),
``task``, ``variable``, ``variable_attrs``, ``source``, ``timestep_minutes``, ``crop_size``,
``context``/``lead`` (nowcast) or ``factor`` (downscale), ``grid`` (source grid, see
:meth:`geogen.io.cf.Grid.to_attrs`), ``split_counts``, ``statistics`` (per split: mean, std,
min, max, count of finite values), ``summary``, ``config`` (the resolved prepare config),
``versions`` and ``provenance``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

STORE_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
TASKS: tuple[str, ...] = ("nowcast", "downscale")
METADATA_ARRAYS: tuple[str, ...] = (
    "t0",
    "source",
    "y0",
    "x0",
    "rain_fraction",
    "nan_fraction",
    "sample_prob",
    "split",
)


class StoreError(ValueError):
    """A crop store is missing, incomplete, or not what the caller expects."""


def compressor() -> zarr.codecs.BloscCodec:
    """The codec for crop arrays: Blosc zstd level 1 with byte shuffling.

    On MeteoSwiss crops it writes at ~350 MB/s per core with a ratio of ~3.6, against
    ~60 MB/s and ~2.6 for zstd level 5 with bit shuffling (benchmarks/bench_prepare.py).
    """
    return zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


@dataclass(frozen=True)
class StoreInfo:
    """What a crop store holds (read from its attributes)."""

    path: str
    task: str
    variable: str
    n_samples: int
    n_times: int
    crop_size: int
    timestep_minutes: float
    source: str
    split_counts: dict[str, int]
    statistics: dict[str, dict[str, float]]
    context: int | None = None
    lead: int | None = None
    factor: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def lowres_variable(self) -> str:
        """Name of the low-resolution array (downscale stores)."""
        return f"{self.variable}_lowres"


def open_crop_store(path: str | os.PathLike, *, allow_incomplete: bool = False) -> zarr.Group:
    """Open a finished crop store read-only.

    Raises
    ------
    StoreError
        When ``path`` is not a geogen crop store, was written by an incompatible version, or is
        still being built (an interrupted ``geogen-prepare``; rerun it to resume).
    """
    path = os.fspath(path)
    if not Path(path).exists():
        partial = Path(path + ".partial")
        hint = (
            f" A partial build exists at {partial}: rerun the same geogen-prepare command "
            "to finish it."
            if partial.exists()
            else ""
        )
        raise StoreError(f"no crop store at {path}.{hint}")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:
        raise StoreError(f"{path} is not a zarr store: {exc}") from exc
    attrs = group.attrs.asdict()
    if "geogen_store_version" not in attrs:
        raise StoreError(
            f"{path} is a zarr store but not a geogen crop store (no geogen_store_version)"
        )
    if attrs["geogen_store_version"] != STORE_VERSION:
        raise StoreError(
            f"{path} has store version {attrs['geogen_store_version']}, this geogen reads "
            f"version {STORE_VERSION}; rebuild it with geogen-prepare overwrite=true"
        )
    if attrs.get("status") != "complete" and not allow_incomplete:
        raise StoreError(
            f"{path} is incomplete (status {attrs.get('status')!r}); rerun geogen-prepare with "
            "the same arguments to finish it"
        )
    return group


def store_info(path_or_group: str | os.PathLike | zarr.Group) -> StoreInfo:
    """Read a store's :class:`StoreInfo`."""
    group = (
        path_or_group if isinstance(path_or_group, zarr.Group) else open_crop_store(path_or_group)
    )
    a = group.attrs.asdict()
    var = group[a["variable"]]
    if isinstance(path_or_group, zarr.Group):
        root = getattr(group.store, "root", None)  # LocalStore: the folder
        path = os.fspath(root) if root is not None else str(group.store_path)
    else:
        path = os.fspath(path_or_group)
    return StoreInfo(
        path=path,
        task=a["task"],
        variable=a["variable"],
        n_samples=int(var.shape[0]),
        n_times=int(var.shape[1]),
        crop_size=int(var.shape[2]),
        timestep_minutes=float(a["timestep_minutes"]),
        source=a.get("source", ""),
        split_counts={k: int(v) for k, v in a.get("split_counts", {}).items()},
        statistics=a.get("statistics", {}),
        context=a.get("context"),
        lead=a.get("lead"),
        factor=a.get("factor"),
        attrs=a,
    )


def split_indices(group: zarr.Group, split: str | None) -> np.ndarray:
    """Sample indices of ``split`` (all samples when ``None``), sorted."""
    if split is None:
        return np.arange(group[group.attrs["variable"]].shape[0])
    if split not in SPLITS:
        raise StoreError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    labels = np.asarray(group["split"][:].tolist(), dtype=object)
    return np.flatnonzero(labels == split)


def create_crop_arrays(
    group: zarr.Group,
    *,
    n_samples: int,
    n_times: int,
    crop_size: int,
    variable: str,
    variable_attrs: Mapping[str, Any],
    time_offsets_minutes: np.ndarray,
    factor: int | None = None,
) -> None:
    """Create the (empty) arrays of a store in ``group`` (writer side of the schema)."""
    coords = "time t0 source split y0 x0 sample_prob rain_fraction nan_fraction"
    shape = (n_samples, n_times, crop_size, crop_size)
    attrs = {**dict(variable_attrs), "coordinates": coords}
    attrs.pop("grid_mapping", None)
    group.create_array(
        variable,
        shape=shape,
        chunks=(1, n_times, crop_size, crop_size),
        dtype="float32",
        fill_value=np.nan,
        compressors=compressor(),
        dimension_names=["sample", "time", "y", "x"],
        attributes=attrs,
    )
    if factor is not None:
        if crop_size % factor:
            raise StoreError(f"crop size {crop_size} is not a multiple of the factor {factor}")
        low = crop_size // factor
        group.create_array(
            f"{variable}_lowres",
            shape=(n_samples, n_times, low, low),
            chunks=(1, n_times, low, low),  # one sample per chunk: parallel writers never share one
            dtype="float32",
            fill_value=np.nan,
            compressors=compressor(),
            dimension_names=["sample", "time", "y_lowres", "x_lowres"],
            attributes={
                **attrs,
                "long_name": f"{variable_attrs.get('long_name', variable)}, block mean over "
                f"{factor}x{factor} pixels",
                "coarsening_factor": int(factor),
            },
        )
    time = group.create_array(
        "time",
        shape=(n_times,),
        dtype="int32",
        dimension_names=["time"],
        attributes={"long_name": "minutes relative to the issue time", "units_note": "minutes"},
    )
    time[:] = np.asarray(time_offsets_minutes, dtype=np.int32)
    chunk = max(1, min(n_samples, 65536))
    specs = {
        "t0": ("datetime64[s]", None, {"long_name": "valid time of the first frame"}),
        "source": (str, "", {"long_name": "source of the crop"}),
        "y0": ("int32", -1, {"long_name": "row offset of the crop in the source grid"}),
        "x0": ("int32", -1, {"long_name": "column offset of the crop in the source grid"}),
        "rain_fraction": ("float32", np.nan, {"long_name": "fraction of rainy pixels"}),
        "nan_fraction": ("float32", np.nan, {"long_name": "fraction of pixels with no data"}),
        "sample_prob": ("float32", np.nan, {"long_name": "probability the crop was kept"}),
        "split": (str, "", {"long_name": "train, val or test"}),
    }
    for name, (dtype, fill, arr_attrs) in specs.items():
        kwargs: dict[str, Any] = {"fill_value": fill} if fill is not None else {}
        group.create_array(
            name,
            shape=(n_samples,),
            chunks=(chunk,),
            dtype=dtype,
            dimension_names=["sample"],
            attributes=arr_attrs,
            **kwargs,
        )


def sampling_warnings(summary: Mapping[str, Any]) -> list[str]:
    """Warnings about a store's size from its ``geogen-prepare`` summary (empty when fine).

    A store with no crops, or no train crops, cannot be trained on. The usual cause is
    the paper's importance sampling (``sampling=dgmr``), made for years of radar data: it keeps
    a dry crop with probability 2e-4, so it draws almost none of a small archive (the pysteps
    example events); ``sampling=small_archive`` keeps most rainy crops there.
    """
    written = int(summary.get("crops_written") or 0)
    not_drawn = int(summary.get("rejected_sampling") or 0)
    method = summary.get("sampling_method")
    if written and (summary.get("split_counts") or {}).get("train", 1):
        return []
    what = "no crops" if not written else "no train crops"
    if not_drawn and method == "dgmr":
        return [
            f"the store holds {what}: sampling=dgmr (the paper's importance sampling, made for "
            f"years of radar data) drew {written} of {written + not_drawn} crops, almost none "
            "of a small archive; rebuild it with sampling=small_archive (or sampling=uniform)"
        ]
    if not_drawn:
        return [
            f"the store holds {what}: {method} sampling drew {written} of "
            f"{written + not_drawn} crops; raise sampling.probability (sampling=uniform keeps "
            "every crop)"
        ]
    if not written and int(summary.get("crops_candidate") or 0) == 0:
        return [
            "the store holds no crops: no sequence of the archive was complete (see the gap, "
            "unreadable-file and split-guard counts); check the source's time range and "
            "sequence settings"
        ]
    if not written:
        return [
            "the store holds no crops: every crop had more missing data than "
            "reject.max_nan_fraction allows"
        ]
    return [f"the store holds {what}: check the split settings (split.ranges / split.fractions)"]
