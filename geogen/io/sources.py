"""Sources: time series of 2-D fields, read one frame at a time, registered by kind.

A *source* is described by a config mapping (``conf/source/*.yaml``) whose ``kind`` names a
reader class registered here:

``pysteps``
    a radar archive in a pysteps layout, read with any :mod:`pysteps.io` importer
    (:mod:`geogen.io.radar`);
``xarray``
    gridded climate fields in netCDF, GRIB or zarr files (:mod:`geogen.io.gridded`);
``synthetic``
    seeded synthetic rain fields for tests and demos (:mod:`geogen.io.synthetic`).

Every reader is a :class:`Source`: it knows its frame times, its grid and how to read one
frame eagerly (:meth:`Source.read`, picklable, so Dask workers can call it), and turns itself
into a lazy CF-style :class:`xarray.Dataset` with one Dask task per frame
(:meth:`Source.to_dataset`). :func:`open_source` is the one-call entry point.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ValidationError

from geogen.io.archive import group_gaps
from geogen.io.cf import Grid, field_dataset
from geogen.registry import Registry

log = logging.getLogger(__name__)

TimeLike = str | datetime | pd.Timestamp | np.datetime64 | None


class SourceError(ValueError):
    """A source config or an input file is not what geogen expects."""


class BadFileError(SourceError):
    """An input file cannot be read (truncated, corrupt, wrong format or grid)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, self.reason))


#: The source classes by kind. The modules that define them are imported by name on first
#: lookup (importing one registers its classes).
SOURCES: Registry[Source] = Registry(
    "source kind",
    error=SourceError,
    builtin_modules=("geogen.io.gridded", "geogen.io.radar", "geogen.io.synthetic"),
    name_attr="kind",
)


def register_source(kind: str) -> Callable[[type[Source]], type[Source]]:
    """Class decorator registering a :class:`Source` subclass under ``kind`` (sets ``cls.kind``)."""
    return SOURCES.register(kind)  # type: ignore[return-value]


def available_source_kinds() -> list[str]:
    """Names of the registered source kinds."""
    return SOURCES.names()


def get_source_class(kind: str) -> type[Source]:
    """The :class:`Source` class registered under ``kind``."""
    return SOURCES.factory(kind)  # type: ignore[return-value]


def to_timestamp(value: TimeLike) -> pd.Timestamp | None:
    """Parse ``2016-07-11T22:00``, ``201607112200``, datetimes or ``None``."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # 201607112200 from a command line, not nanoseconds since 1970
    if isinstance(value, str) and value.isdigit() and len(value) in (8, 10, 12, 14):
        fmt = {8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}[len(value)]
        return pd.Timestamp(datetime.strptime(value, fmt))
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"cannot read {value!r} as a date/time (use 2016-07-11T22:00)") from exc
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp


class Source(abc.ABC):
    """A time series of 2-D fields on one grid.

    Subclasses set, in ``__init__``: :attr:`times`, :attr:`grid`, :attr:`timestep`,
    :attr:`variable`, :attr:`variable_attrs`, :attr:`missing`, and implement :meth:`read`.

    Parameters
    ----------
    config
        The source config (a mapping; see ``conf/source/``).
    start, end
        Optional inclusive bounds on valid time.
    """

    kind: ClassVar[str] = ""

    name: str
    times: pd.DatetimeIndex
    timestep: pd.Timedelta
    grid: Grid
    variable: str
    variable_attrs: dict[str, Any]
    missing: pd.DatetimeIndex
    attrs: dict[str, Any]

    def __init__(self, config: Mapping[str, Any], start: TimeLike = None, end: TimeLike = None):
        self.config = dict(config)
        self.name = str(self.config.get("name") or self.kind)
        self.start = to_timestamp(start)
        self.end = to_timestamp(end)
        if self.start is not None and self.end is not None and self.end < self.start:
            raise SourceError(f"{self.name}: end {self.end} is before start {self.start}")
        self.attrs = {}
        self.missing = pd.DatetimeIndex([])

    # -- reading ------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, index: int) -> np.ndarray:
        """Read frame ``index`` eagerly.

        Returns
        -------
        numpy.ndarray
            ``(y, x)`` float32 in the units of :attr:`variable_attrs`; NaN outside the domain.

        Raises
        ------
        BadFileError
            When the frame's file cannot be read; the message names the file.
        """

    def describe(self, index: int) -> str:
        """What frame ``index`` is read from (a file path), for messages."""
        return f"{self.name} frame {index} ({self.times[index]})"

    def read_many(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """Read several frames into a ``(time, y, x)`` array."""
        out = np.empty((len(indices), *self.grid.shape), dtype=np.float32)
        for k, i in enumerate(indices):
            out[k] = self.read(int(i))
        return out

    # -- lazy dataset -------------------------------------------------------------------
    def to_dataset(self) -> xr.Dataset:
        """A lazy dataset: one Dask task per frame, nothing read until computed.

        Returns
        -------
        xarray.Dataset
            Variable :attr:`variable` with dims ``(time, y, x)``, float32, CF attributes,
            ``x``/``y`` in the source projection, ``crs`` grid mapping, and attrs ``source``,
            ``timestep`` (minutes), ``gaps`` (missing intervals as ISO strings).
        """
        shape = self.grid.shape
        read = dask.delayed(_read_frame, pure=True)
        frames = [
            da.from_delayed(
                read(self, i, dask_key_name=f"read-{self.name}-{self._token()}-{i}"),
                shape=shape,
                dtype=np.float32,
            )
            for i in range(len(self.times))
        ]
        data = da.stack(frames) if frames else da.zeros((0, *shape), dtype=np.float32)
        attrs = dict(self.attrs)
        attrs["gaps"] = [f"{a.isoformat()}/{b.isoformat()}" for a, b in self.gaps()]
        attrs["n_missing"] = len(self.missing)
        return field_dataset(
            data,
            self.times,
            self.grid,
            variable=self.variable,
            variable_attrs=self.variable_attrs,
            source=self.name,
            timestep_minutes=self.timestep / pd.Timedelta(minutes=1),
            attrs=attrs,
        )

    def gaps(self) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """Missing times grouped into ``(first, last)`` intervals."""
        return group_gaps(self.missing, self.timestep)

    def _token(self) -> str:
        return dask.base.tokenize(self.kind, self.config, list(self.times.asi8))

    def _report_gaps(self) -> None:
        gaps = self.gaps()
        if gaps:
            shown = ", ".join(f"{a:%Y-%m-%d %H:%M}..{b:%Y-%m-%d %H:%M}" for a, b in gaps[:5])
            more = f" and {len(gaps) - 5} more" if len(gaps) > 5 else ""
            log.warning(
                "%s: %d expected time steps have no file, in %d gaps: %s%s",
                self.name,
                len(self.missing),
                len(gaps),
                shown,
                more,
            )

    def __len__(self) -> int:
        return len(self.times)

    def __repr__(self) -> str:
        span = f"{self.times[0]} .. {self.times[-1]}" if len(self.times) else "empty"
        return (
            f"<{type(self).__name__} {self.name!r}: {len(self.times)} frames {span}, "
            f"every {self.timestep}, grid {self.grid.shape}, {len(self.missing)} missing>"
        )


def _read_frame(source: Source, index: int) -> np.ndarray:
    try:
        return source.read(index)
    except BadFileError as exc:
        if getattr(source, "on_bad_file", "raise") != "skip":
            raise
        log.warning("skipping unreadable frame (on_bad_file=skip): %s", exc)
        return np.full(source.grid.shape, np.nan, dtype=np.float32)


def validate_config(config: Mapping[str, Any], model: type[BaseModel]) -> Any:
    """Validate a source config with a pydantic model; errors name the source and field."""
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SourceError(
            f"source config {config.get('name', '?')!r} is invalid: {problems}"
        ) from None


def load_source(
    config: Mapping[str, Any] | str,
    start: TimeLike = None,
    end: TimeLike = None,
    *,
    on_bad_file: str = "raise",
    **overrides: Any,
) -> Source:
    """Build the :class:`Source` for a config (or the name of a shipped config).

    Parameters
    ----------
    config
        A source config mapping, or the name of a file in ``conf/source`` (``"mch"``).
    start, end
        Optional inclusive bounds on valid time.
    on_bad_file
        ``"raise"`` or ``"skip"`` (see :class:`geogen.io.radar.RadarSource`).
    **overrides
        Config keys to replace, for example ``root="/data/radar/mch"``.
    """
    if isinstance(config, str):
        from geogen.config import load_source_config

        config = load_source_config(config, **overrides)
    else:
        config = {**_plain(config), **overrides}
    kind = config.get("kind")
    if not kind:
        raise SourceError(
            f"source config {config.get('name', '?')!r} has no 'kind'; "
            f"valid kinds: {', '.join(available_source_kinds())}"
        )
    return get_source_class(kind)(config, start=start, end=end, on_bad_file=on_bad_file)


def open_source(
    config: Mapping[str, Any] | str,
    start: TimeLike = None,
    end: TimeLike = None,
    *,
    on_bad_file: str = "raise",
    **overrides: Any,
) -> xr.Dataset:
    """Open a source as a lazy CF-style dataset.

    Parameters
    ----------
    config
        A source config (``conf/source/*.yaml``, a mapping) or the name of a shipped one.
    start, end
        Optional inclusive bounds on valid time (``"2016-07-11T22:00"``). Without them every
        file of the archive that matches the layout is taken.
    on_bad_file
        ``"raise"`` (an unreadable file raises an error naming it when computed) or ``"skip"``
        (its frame becomes NaN, with a logged warning).
    **overrides
        Config keys to replace, for example ``root="/data/radar/mch"``.

    Returns
    -------
    xarray.Dataset
        Dims ``(time, y, x)``; for radar sources the variable ``precip`` is rain rate in mm/h
        (float32) converted with pysteps' metadata; ``x``/``y`` are in the source projection
        and ``crs`` holds the projection; ``attrs`` hold ``source``, ``timestep`` (minutes)
        and ``gaps`` (time steps with no file). Dask-backed with one task per frame.

    Examples
    --------
    >>> ds = open_source("mch", start="2015-05-15T16:00", end="2015-05-15T17:00")  # doctest: +SKIP
    >>> ds.precip.mean("time").plot()  # doctest: +SKIP
    """
    return load_source(config, start, end, on_bad_file=on_bad_file, **overrides).to_dataset()


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A plain, resolved dict from a mapping or an OmegaConf config."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(config)
