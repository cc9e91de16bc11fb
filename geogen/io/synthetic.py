"""Seeded synthetic rain fields as a source (``kind: synthetic``), for tests and demos.

A config such as::

    name: synthetic
    kind: synthetic
    n_times: 48
    shape: [320, 320]
    seed: 0
    start: "2020-01-01T00:00"
    timestep: 5
    nan_border: 0
    field: {velocity: [0.5, 1.5], wet_fraction: 0.35}
    drop_times: []          # times to leave out, to make gaps

gives fields from :func:`geogen.data.synthetic.synthetic_rain`, deterministic by seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from geogen.io.archive import missing_times
from geogen.io.cf import PRECIP_ATTRS, Grid
from geogen.io.sources import Source, SourceError, TimeLike, register_source, validate_config


class SyntheticSourceConfig(BaseModel):
    """Schema of a ``kind: synthetic`` source config."""

    model_config = ConfigDict(extra="forbid")

    name: str = "synthetic"
    kind: Literal["synthetic"] = "synthetic"
    n_times: int = Field(gt=0)
    shape: tuple[int, int] = (256, 256)
    seed: int = 0
    start: str = "2020-01-01T00:00"
    timestep: float = Field(default=5.0, gt=0)
    pixel_size: float = Field(default=1000.0, gt=0)
    nan_border: int = Field(default=0, ge=0)
    field: dict[str, Any] = Field(default_factory=dict)
    drop_times: list[str] = Field(default_factory=list)
    description: str = ""


@register_source("synthetic")
class SyntheticSource(Source):
    """Synthetic advected, intermittent rain fields (mm/h) on a regular grid."""

    def __init__(
        self,
        config: Mapping[str, Any],
        start: TimeLike = None,
        end: TimeLike = None,
        on_bad_file: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(config, start, end)
        self.spec: SyntheticSourceConfig = validate_config(self.config, SyntheticSourceConfig)
        self.on_bad_file = on_bad_file
        from geogen.data.synthetic import synthetic_dataset

        ds = synthetic_dataset(
            self.spec.n_times,
            tuple(self.spec.shape),
            seed=self.spec.seed,
            start=self.spec.start,
            timestep_minutes=self.spec.timestep,
            pixel_size=self.spec.pixel_size,
            nan_border=self.spec.nan_border,
            **self.spec.field,
        )
        times = pd.DatetimeIndex(ds["time"].values)
        keep = ~times.isin(pd.DatetimeIndex(self.spec.drop_times))
        if self.start is not None:
            keep &= times >= self.start
        if self.end is not None:
            keep &= times <= self.end
        if not keep.any():
            raise SourceError(
                f"{self.name}: no synthetic frame between {self.start} and {self.end}"
            )
        self._values = np.ascontiguousarray(ds["precip"].values[keep])
        self.times = times[keep]
        self.timestep = pd.Timedelta(minutes=self.spec.timestep)
        self.missing = missing_times(self.times, self.timestep, self.start, self.end)
        self.grid = Grid(x=ds["x"].values, y=ds["y"].values, crs=ds["crs"].attrs["proj4"])
        self.variable = "precip"
        self.variable_attrs = dict(PRECIP_ATTRS)
        self.attrs = {k: v for k, v in ds.attrs.items() if k.startswith("synthetic_")}
        self._report_gaps()

    def read(self, index: int) -> np.ndarray:
        """Frame ``index``: ``(y, x)`` float32 rain rate in mm/h."""
        return self._values[index].copy()
