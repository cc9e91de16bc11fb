"""Radar composites in pysteps archive layouts, read with :mod:`pysteps.io` importers.

A radar source config is a pysteps data-source entry (``conf/source/mch.yaml``)::

    name: mch
    kind: pysteps
    root: /data/pysteps-data/radar/mch     # pysteps' root_path
    path_fmt: "%Y%m%d"
    fn_pattern: "AQC%y%j%H%M?_00005.801"
    fn_ext: gif
    importer: mch_gif
    timestep: 5                             # minutes
    importer_kwargs: {product: AQC, unit: mm, accutime: 5}
    zr: null                                # optional {a: 200, b: 1.6} for dBZ sources

Files are listed with :func:`pysteps.io.archive.find_by_date` (with ``start``/``end``) or by
scanning the root for the layout; every frame is read by
``pysteps.io.get_method(importer, "importer")`` and converted to rain rate in mm/h with
:func:`pysteps.utils.to_rainrate`, using the metadata the importer returns. So every importer
pysteps has (and every one it will gain) works without code here.

Most importers read netCDF4/HDF5, whose C libraries are not thread-safe, so reads share
xarray's ``HDF5_LOCK``. The importers in :data:`LOCK_FREE_IMPORTERS` decode with PIL and
numpy only (MeteoSwiss GIF, FMI PGM) and run without it, so threads decode them in parallel.

MeteoSwiss AQC/CPC GIFs hold palette indices whose rain rate depends on the index alone, so
with ``palette_lut: true`` (the default) the pysteps importer and ``to_rainrate`` convert the
256 indices once, into a table, and each file's indices are mapped through it: the same
float32 values as calling the importer per file (checked on the first file of every source),
at about a quarter of the CPU time (6.3 against 1.5 CPU-ms a frame).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from xarray.backends.locks import HDF5_LOCK

from geogen.io.archive import ArchiveListing, find_files_between, scan_archive
from geogen.io.cf import PRECIP_ATTRS, Grid
from geogen.io.sources import (
    BadFileError,
    Source,
    SourceError,
    TimeLike,
    register_source,
    validate_config,
)
from geogen.pysteps_import import import_pysteps  # re-exported: geogen.io.radar.import_pysteps

log = logging.getLogger(__name__)


#: pysteps importers that use no netCDF4/HDF5/GDAL/GRIB library (PIL and numpy only, which
#: release the GIL while decoding): they are read without ``HDF5_LOCK``.
LOCK_FREE_IMPORTERS = frozenset({"mch_gif", "fmi_pgm"})


class ZR(BaseModel):
    """Z-R relation Z = a R**b used for reflectivity sources (overrides the importer's)."""

    model_config = ConfigDict(extra="forbid")
    a: float = Field(gt=0)
    b: float = Field(gt=0)


class RadarSourceConfig(BaseModel):
    """Schema of a ``kind: pysteps`` source config (a pysteps data-source entry)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["pysteps"] = "pysteps"
    root: str
    path_fmt: str = ""
    fn_pattern: str
    fn_ext: str
    importer: str
    timestep: float = Field(gt=0, description="minutes between files")
    importer_kwargs: dict[str, Any] = Field(default_factory=dict)
    zr: ZR | None = None
    palette_lut: bool = Field(
        default=True,
        description="mch_gif AQC/CPC: convert the 256 palette indices once with the pysteps "
        "importer and map each file through that table (identical values, ~4x less CPU); "
        "false calls the importer on every file",
    )
    grid_registration: Literal["corner", "centre"] = Field(
        default="corner",
        description="what the importer's x1/x2/y1/y2 are: outer corners (pysteps' convention) "
        "or centres of the outer cells (bom_rf3 reports the files' CF coordinate variables)",
    )
    description: str = ""
    provider: str = ""


@register_source("pysteps")
class RadarSource(Source):
    """A radar archive read with a pysteps importer; frames in mm/h.

    Parameters
    ----------
    config
        A ``kind: pysteps`` source config (see module docstring).
    start, end
        Optional inclusive bounds. With both, files are found with pysteps' ``find_by_date``
        at every time step; otherwise the archive root is scanned for the layout.
    on_bad_file
        ``"raise"`` (default): a file that cannot be read raises :class:`BadFileError` naming
        it. ``"skip"``: in the lazy dataset such a frame becomes NaN with a logged warning
        (the crop pipeline counts it and rejects the sequences that need it).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        start: TimeLike = None,
        end: TimeLike = None,
        on_bad_file: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(config, start, end)
        self.spec: RadarSourceConfig = validate_config(self.config, RadarSourceConfig)
        if on_bad_file not in ("raise", "skip"):
            raise SourceError(f"on_bad_file must be 'raise' or 'skip', not {on_bad_file!r}")
        self.on_bad_file = on_bad_file
        pysteps = import_pysteps()
        try:
            pysteps.io.get_method(self.spec.importer, "importer")
        except ValueError as exc:
            raise SourceError(f"source {self.name!r}: {exc}") from None

        self._palette: tuple[np.ndarray, dict[str, Any]] | None = self._palette_table()
        listing = self._list_files()
        self.listing = listing
        self.paths: list[str] = listing.paths
        self.times = listing.times
        self.missing = listing.missing
        self.timestep = pd.Timedelta(minutes=self.spec.timestep)
        self.variable = "precip"
        self.variable_attrs = dict(PRECIP_ATTRS)
        self.grid, self._reference, meta = self._first_readable_grid()
        self.attrs = {
            "institution": str(meta.get("institution", "")),
            "importer": self.spec.importer,
            "accutime": float(meta.get("accutime", self.spec.timestep) or self.spec.timestep),
            "threshold": float(meta.get("threshold", 0.0)),
            "root": self.spec.root,
        }
        self._report_gaps()

    # ------------------------------------------------------------------------------------
    def _list_files(self) -> ArchiveListing:
        s = self.spec
        if self.start is not None and self.end is not None:
            listing = find_files_between(
                s.root, s.path_fmt, s.fn_pattern, s.fn_ext, s.timestep, self.start, self.end
            )
        else:
            listing = scan_archive(
                s.root, s.path_fmt, s.fn_pattern, s.fn_ext, s.timestep, self.start, self.end
            )
        log.info("%s: %d files under %s", self.name, len(listing), s.root)
        return listing

    def _palette_table(self) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Rain rate (float32) of each GIF palette index, by the pysteps importer; or None.

        Only for ``mch_gif`` products whose value is a function of the index (AQC, CPC; RZC
        and AZC go through each file's own RGB palette, so they are read per file).
        """
        product = str(self.spec.importer_kwargs.get("product", "")).lower()
        if not (
            self.spec.palette_lut
            and self.spec.importer == "mch_gif"
            and product in ("aqc", "cpc", "acquire ", "combiprecip")  # pysteps' spelling
        ):
            return None
        from PIL import Image

        indices = Image.new("P", (256, 1))
        indices.putdata(list(range(256)))
        indices.putpalette(list(range(256)) * 3)
        buffer = io.BytesIO()
        indices.save(buffer, format="GIF", optimize=False)
        buffer.seek(0)
        rate, meta = self._convert(buffer, f"{self.name}: palette table")
        return rate.reshape(256), meta

    def _import(self, path: str, per_file: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        """Import one file and convert it to rain rate (mm/h); errors name the file.

        With a palette table (and not ``per_file``), the file's indices are mapped through it;
        the metadata is then the table's (the grid is fixed for the MeteoSwiss importer, but
        ``threshold``/``zerovalue`` are not the file's).
        """
        if self._palette is not None and not per_file:
            indices = self._palette_indices(path)
            if indices is not None:
                table, meta = self._palette
                return table[indices], meta
        return self._convert(path, path)

    def _palette_indices(self, path: str) -> np.ndarray | None:
        """The GIF's palette indices, or None where it is not a palette image."""
        from PIL import Image

        with self._read_errors(path), Image.open(path) as img:
            if img.mode not in ("P", "L"):
                return None
            return np.asarray(img)

    @contextlib.contextmanager
    def _read_errors(self, name: str) -> Iterator[None]:
        """Turn what a reader raises on a missing or corrupt file into a BadFileError."""
        try:
            yield
        except FileNotFoundError as exc:
            raise BadFileError(name, f"file vanished: {exc}") from exc
        except Exception as exc:  # importers (and PIL) raise anything on corrupt input
            raise BadFileError(
                name,
                f"cannot be read by the pysteps importer {self.spec.importer!r} "
                f"({type(exc).__name__}: {exc}); the file may be truncated or corrupt",
            ) from exc

    def _convert(self, path: Any, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        """The pysteps importer and ``to_rainrate`` on ``path`` (``name`` in errors)."""
        pysteps = import_pysteps()
        importer = pysteps.io.get_method(self.spec.importer, "importer")
        # netCDF4/HDF5 (and so most importers) are not thread-safe: share xarray's lock,
        # which also guards xarray's own netCDF reads in this process.
        lock = contextlib.nullcontext() if self.spec.importer in LOCK_FREE_IMPORTERS else HDF5_LOCK
        with self._read_errors(name), lock:
            precip, _quality, meta = importer(path, **self.spec.importer_kwargs)
        precip = np.asarray(precip)
        if precip.ndim != 2:
            raise BadFileError(
                name, f"expected one 2-D field, the importer gave shape {precip.shape}"
            )
        zr = self.spec.zr
        try:
            rate, meta = pysteps.utils.to_rainrate(
                precip, meta, zr_a=zr.a if zr else None, zr_b=zr.b if zr else None
            )
        except (ValueError, KeyError) as exc:
            raise BadFileError(name, f"cannot convert to rain rate: {exc}") from exc
        return rate.astype(np.float32, copy=False), meta

    def _first_readable_grid(self) -> tuple[Grid, dict[str, Any], dict[str, Any]]:
        errors: list[str] = []
        for path in self.paths:
            try:
                rate, meta = self._import(path, per_file=True)
            except BadFileError as exc:
                if self.on_bad_file == "raise":
                    raise
                errors.append(str(exc))
                continue
            self._check_palette(path, rate)
            grid = grid_from_metadata(meta, rate.shape, path, self.spec.grid_registration)
            reference = {
                "shape": rate.shape,
                "x1": meta["x1"],
                "y1": meta["y1"],
                "xpixelsize": meta["xpixelsize"],
                "path": path,
            }
            return grid, reference, meta
        raise SourceError(
            f"{self.name}: none of the {len(self.paths)} files is readable: {errors[:3]}"
        )

    def _check_palette(self, path: str, expected: np.ndarray) -> None:
        """Drop the palette table unless it gives the importer's bytes on ``path``."""
        if self._palette is None:
            return
        indices = self._palette_indices(path)
        if indices is None or self._palette[0][indices].tobytes() != expected.tobytes():
            log.warning(
                "%s: the palette table does not reproduce the pysteps importer on %s; "
                "reading every file with the importer",
                self.name,
                path,
            )
            self._palette = None

    def read(self, index: int) -> np.ndarray:
        """Read frame ``index`` as rain rate (mm/h), ``(y, x)`` float32, NaN outside the domain."""
        path = self.paths[index]
        rate, meta = self._import(path)
        ref = self._reference
        if rate.shape != ref["shape"] or not (
            math.isclose(
                float(meta["x1"]), float(ref["x1"]), abs_tol=1e-3 * float(ref["xpixelsize"])
            )
            and math.isclose(
                float(meta["y1"]), float(ref["y1"]), abs_tol=1e-3 * float(ref["xpixelsize"])
            )
        ):
            raise BadFileError(
                path,
                f"grid {rate.shape} at x1={meta['x1']}, y1={meta['y1']} differs from the grid "
                f"{ref['shape']} at x1={ref['x1']}, y1={ref['y1']} of {ref['path']}",
            )
        return rate

    def describe(self, index: int) -> str:
        """The file frame ``index`` comes from."""
        return self.paths[index]


def grid_from_metadata(
    meta: Mapping[str, Any],
    shape: tuple[int, ...],
    path: str = "",
    registration: str = "corner",
) -> Grid:
    """Cell-centre coordinates (metres) and projection from pysteps importer metadata.

    pysteps gives ``x1, x2, y1, y2``, pixel sizes and ``yorigin`` (row 0 is the northern edge
    when ``"upper"``). With ``registration="corner"`` (pysteps' convention) they are the outer
    corners of the grid; with ``"centre"`` they are the centres of the outer cells. Grids in
    kilometres (KNMI: ``+a=6378.137`` in km, which pyproj cannot relate to the Earth) are
    converted to metres, projection included.
    """
    try:
        x1, y1, y2 = float(meta["x1"]), float(meta["y1"]), float(meta["y2"])
        dx, dy = float(meta["xpixelsize"]), float(meta["ypixelsize"])
        projection = str(meta["projection"])
    except KeyError as exc:
        raise BadFileError(path, f"the importer's metadata lacks {exc}") from None
    ny, nx = shape
    offset = 0.5 if registration == "corner" else 0.0
    x = x1 + (np.arange(nx) + offset) * dx
    if meta.get("yorigin", "upper") == "upper":
        y = y2 - (np.arange(ny) + offset) * dy
    else:
        y = y1 + (np.arange(ny) + offset) * dy
    unit = str(meta.get("cartesian_unit", "m"))
    if unit == "km":
        x, y = x * 1000.0, y * 1000.0
        projection = _proj4_km_to_m(projection)
        unit = "m"
    return Grid(x=x, y=y, crs=projection, units="degrees" if unit.startswith("deg") else unit)


_LENGTH_PARAMS = ("a", "b", "R", "x_0", "y_0")


def _proj4_km_to_m(projection: str) -> str:
    """Rewrite a proj4 string whose lengths are in km (ellipsoid, false easting) in metres."""
    parts = []
    for token in projection.split():
        key, _, value = token.lstrip("+").partition("=")
        if key in _LENGTH_PARAMS and value:
            token = f"+{key}={float(value) * 1000.0:.12g}"
        elif key == "units":
            continue
        parts.append(token)
    return " ".join([*parts, "+units=m"])
