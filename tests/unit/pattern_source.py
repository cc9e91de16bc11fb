"""A source of integer-pattern rain fields, identical on every platform (not a test file).

Frame ``t`` is ``max((3 y + 5 x + 7 t) mod 23 - 8, 0) / 4`` mm/h (exact in float32), with a
no-data border and a no-data block that moves with time; ``drop`` leaves frames out (gaps).
The crop pipeline's store checksums from it are compared with those recorded from main
(tests/unit/test_prepare.py), so no floating-point library can change the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from geogen.io.cf import PRECIP_ATTRS, Grid
from geogen.io.sources import Source, TimeLike, register_source


@register_source("pattern")
class PatternSource(Source):
    """``kind: pattern`` with ``n_times``, ``shape``, ``start``, ``timestep`` (min), ``drop``."""

    def __init__(
        self,
        config: Mapping[str, Any],
        start: TimeLike = None,
        end: TimeLike = None,
        on_bad_file: str = "raise",
    ) -> None:
        super().__init__(config, start, end)
        ny, nx = self.config.get("shape", (64, 80))
        times = pd.date_range(
            self.config.get("start", "2020-01-01T00:00"),
            periods=int(self.config.get("n_times", 40)),
            freq=pd.Timedelta(minutes=float(self.config.get("timestep", 5))),
        )
        self.index = np.flatnonzero(~times.isin(pd.DatetimeIndex(self.config.get("drop", []))))
        self.times = times[self.index]
        self.timestep = pd.Timedelta(minutes=float(self.config.get("timestep", 5)))
        self.missing = times[~times.isin(self.times)]
        self.grid = Grid(
            x=1000.0 * np.arange(nx), y=-1000.0 * np.arange(ny), crs="EPSG:3035", units="m"
        )
        self.variable = "precip"
        self.variable_attrs = dict(PRECIP_ATTRS)

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` (mm/h), NaN on the 3-pixel border and in a moving block."""
        t = int(self.index[index])
        ny, nx = self.grid.shape
        y, x = np.mgrid[:ny, :nx]
        frame = (np.maximum((3 * y + 5 * x + 7 * t) % 23 - 8, 0) / 4).astype(np.float32)
        frame[:3], frame[-3:], frame[:, :3], frame[:, -3:] = np.nan, np.nan, np.nan, np.nan
        y0, x0 = (2 * t) % (ny - 12), (3 * t) % (nx - 12)
        frame[y0 : y0 + 12, x0 : x0 + 12] = np.nan
        return frame
