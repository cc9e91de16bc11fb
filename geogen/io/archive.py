"""Finding the files of a pysteps-style archive.

pysteps describes an archive with a *data-source entry*: ``root_path`` (here ``root``),
``path_fmt`` (``%Y%m%d``), ``fn_pattern`` (``AQC%y%j%H%M?_00005.801``) and ``fn_ext``. Two ways
to list the files of such an archive are provided:

- :func:`find_files_between` asks :func:`pysteps.io.archive.find_by_date` for every time step
  between two dates, so it behaves exactly like pysteps (wildcards, layouts);
- :func:`scan_archive` walks the root directory and keeps every file whose path matches the
  path format and file-name pattern, parsing its timestamp from the name. This is what a user
  pointing geogen at an archive without dates gets.

Both return an :class:`ArchiveListing`: the files found with their timestamps, and the time
steps that were expected but missing (the gaps), so nothing is silently shifted.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_QUIET_LOCK = threading.Lock()

# strftime directives pysteps layouts use, with the regular expression of what they print.
_DIRECTIVES: dict[str, str] = {
    "Y": r"\d{4}",
    "y": r"\d{2}",
    "m": r"\d{2}",
    "d": r"\d{2}",
    "H": r"\d{2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "j": r"\d{3}",
    "b": r"[A-Za-z]{3}",
    "B": r"[A-Za-z]+",
}


@dataclass
class ArchiveListing:
    """Files of an archive with their valid times, and the expected times with no file.

    Attributes
    ----------
    times
        Valid times of the files found, sorted, unique.
    paths
        File paths, aligned with ``times``.
    missing
        Times on the regular ``timestep`` grid between the first and last file with no file.
    timestep
        The archive's nominal time step.
    """

    times: pd.DatetimeIndex
    paths: list[str]
    timestep: pd.Timedelta
    missing: pd.DatetimeIndex = field(default_factory=lambda: pd.DatetimeIndex([]))

    def __len__(self) -> int:
        return len(self.paths)

    def gaps(self) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """Missing times grouped into contiguous ``(first, last)`` intervals."""
        return group_gaps(self.missing, self.timestep)


def group_gaps(
    missing: pd.DatetimeIndex, timestep: pd.Timedelta
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Group sorted missing times into runs of consecutive time steps."""
    if len(missing) == 0:
        return []
    values = missing.sort_values()
    breaks = np.flatnonzero(np.diff(values.values) != np.timedelta64(timestep))
    starts = np.r_[0, breaks + 1]
    ends = np.r_[breaks, len(values) - 1]
    return [(values[s], values[e]) for s, e in zip(starts, ends, strict=True)]


def _pattern_regex(pattern: str) -> tuple[str, list[str]]:
    """Translate a strftime pattern with ``?``/``*`` wildcards into a regex.

    Returns the regex source and the directives in the order of their capture groups.
    """
    parts: list[str] = []
    directives: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "%" and i + 1 < len(pattern):
            code = pattern[i + 1]
            if code == "%":
                parts.append("%")
            elif code in _DIRECTIVES:
                parts.append(f"({_DIRECTIVES[code]})")
                directives.append(code)
            else:
                raise ValueError(
                    f"unsupported strftime directive %{code} in pattern {pattern!r}; "
                    f"supported: {', '.join('%' + d for d in _DIRECTIVES)}"
                )
            i += 2
            continue
        if char == "?":
            parts.append(".")
        elif char == "*":
            parts.append(".*")
        else:
            parts.append(re.escape(char))
        i += 1
    return "".join(parts), directives


@dataclass(frozen=True)
class ParsedPath:
    """The valid time of an archive file, and whether its folders agree with it."""

    time: datetime
    misplaced: bool


class PathTimeParser:
    """Parse the valid time of a file from its path relative to the archive root.

    The file name decides the time (folders only fill in what the name lacks); a file whose
    folders name another time (pysteps-data keeps MeteoSwiss' 00:00 file in the previous
    day's folder) is flagged ``misplaced``: pysteps' ``find_by_date`` would not find it.

    Parameters
    ----------
    path_fmt, fn_pattern, fn_ext
        The pysteps data-source entries.
    """

    def __init__(self, path_fmt: str, fn_pattern: str, fn_ext: str) -> None:
        path_fmt = path_fmt.strip("/")
        name = f"{fn_pattern}.{fn_ext}"
        self.pattern = f"{path_fmt}/{name}" if path_fmt else name
        dir_regex, dir_directives = _pattern_regex(path_fmt + "/") if path_fmt else ("", [])
        name_regex, name_directives = _pattern_regex(name)
        self._regex = re.compile(dir_regex + name_regex)
        self._n_dir = len(dir_directives)
        self._directives = dir_directives + name_directives
        if not self._directives:
            raise ValueError(
                f"the archive layout {self.pattern!r} has no date directives (%Y, %m, ...): "
                "geogen cannot tell the time of its files"
            )

    def parse(self, relative_path: str) -> ParsedPath | None:
        """The file's time and placement, or ``None`` if the path is not of this layout."""
        match = self._regex.fullmatch(relative_path.replace(os.sep, "/"))
        if match is None:
            return None
        pairs = list(zip(self._directives, match.groups(), strict=True))
        values = dict(pairs)  # later (file-name) directives win over folder ones
        fmt = "|".join("%" + code for code in values)
        try:
            when = datetime.strptime("|".join(values.values()), fmt)
        except ValueError:
            return None

        def agrees(part: list[tuple[str, str]]) -> bool:
            return all(when.strftime("%" + c).lower() == v.lower() for c, v in part)

        if not agrees(pairs[self._n_dir :]):
            return None  # the file name contradicts itself (e.g. %d and %j)
        return ParsedPath(when, misplaced=not agrees(pairs[: self._n_dir]))

    def __call__(self, relative_path: str) -> datetime | None:
        """The valid time encoded in ``relative_path``, or ``None`` if it does not match."""
        parsed = self.parse(relative_path)
        return parsed.time if parsed else None


def scan_archive(
    root: str | os.PathLike,
    path_fmt: str,
    fn_pattern: str,
    fn_ext: str,
    timestep_minutes: float,
    start: datetime | pd.Timestamp | None = None,
    end: datetime | pd.Timestamp | None = None,
) -> ArchiveListing:
    """List every file under ``root`` that matches the layout, with its valid time.

    Parameters
    ----------
    root
        The archive root (pysteps' ``root_path``).
    path_fmt, fn_pattern, fn_ext
        pysteps layout entries (``?`` matches one character, as in pysteps).
    timestep_minutes
        Nominal time step; times missing on this grid between the first and last file are
        reported in :attr:`ArchiveListing.missing`.
    start, end
        Optional bounds (inclusive) on the valid time.

    Returns
    -------
    ArchiveListing
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"archive root {root!r} does not exist or is not a directory")
    parser = PathTimeParser(path_fmt, fn_pattern, fn_ext)
    depth = path_fmt.strip("/").count("/") + 1 if path_fmt.strip("/") else 0
    found: dict[datetime, str] = {}
    misplaced: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        level = 0 if rel_dir == "." else rel_dir.count(os.sep) + 1
        if level >= depth:
            dirnames[:] = []  # files live exactly `depth` levels down
        if level != depth:
            continue
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            parsed = parser.parse(rel)
            if parsed is None:
                continue
            when = parsed.time
            if parsed.misplaced:
                misplaced.append(rel)
            if (start is not None and when < start) or (end is not None and when > end):
                continue
            path = os.path.join(dirpath, name)
            if when in found:
                log.warning(
                    "two files for %s: %s and %s; keeping the first", when, found[when], path
                )
                continue
            found[when] = path
    if not found:
        raise FileNotFoundError(
            f"no file under {root!r} matches the layout {parser.pattern!r}"
            + (f" between {start} and {end}" if start or end else "")
        )
    if misplaced:
        log.warning(
            "%d file(s) under %s lie in a folder that names another time than their file name "
            "(e.g. %s); using the file name's time (pysteps' find_by_date would miss them)",
            len(misplaced),
            root,
            misplaced[0],
        )
    times = pd.DatetimeIndex(sorted(found))
    step = pd.Timedelta(minutes=timestep_minutes)
    return ArchiveListing(
        times=times,
        paths=[found[t.to_pydatetime()] for t in times],
        timestep=step,
        missing=missing_times(times, step, start, end),
    )


def find_files_between(
    root: str | os.PathLike,
    path_fmt: str,
    fn_pattern: str,
    fn_ext: str,
    timestep_minutes: float,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
) -> ArchiveListing:
    """Files for every time step from ``start`` to ``end`` via pysteps' ``find_by_date``.

    Times with no file are reported as missing. Raises :class:`FileNotFoundError` when no file
    at all exists in the interval.
    """
    from pysteps.io.archive import find_by_date

    start, end = pd.Timestamp(start), pd.Timestamp(end)
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    step = pd.Timedelta(minutes=timestep_minutes)
    n_steps = int((end - start) / step)
    with _QUIET_LOCK, contextlib.redirect_stdout(io.StringIO()):
        # find_by_date prints every missing file on some releases even with silent=True; the
        # lock keeps concurrent callers from restoring each other's sys.stdout wrongly.
        try:
            paths, stamps = find_by_date(
                end.to_pydatetime(),
                os.fspath(root),
                path_fmt,
                fn_pattern,
                fn_ext,
                timestep_minutes,
                num_prev_files=n_steps,
                silent=True,
            )
        except OSError as exc:
            raise FileNotFoundError(
                f"no file of the layout {path_fmt}/{fn_pattern}.{fn_ext} under {root!r} "
                f"between {start} and {end}"
            ) from exc
    found = {pd.Timestamp(t): p for t, p in zip(stamps, paths, strict=True) if p is not None}
    wanted = [pd.Timestamp(t) for t in stamps]
    absent = [t for t in wanted if t not in found]
    found.update(_misplaced_files(root, path_fmt, fn_pattern, fn_ext, absent))
    times = sorted(found)
    return ArchiveListing(
        times=pd.DatetimeIndex(times),
        paths=[found[t] for t in times],
        timestep=step,
        missing=pd.DatetimeIndex([t for t in wanted if t not in found]),
    )


def _misplaced_files(
    root: str | os.PathLike,
    path_fmt: str,
    fn_pattern: str,
    fn_ext: str,
    missing: list[pd.Timestamp],
) -> dict[pd.Timestamp, str]:
    """Files for ``missing`` times kept in the folder of the day before or after.

    pysteps-data keeps MeteoSwiss' 00:00 file in the previous day's folder, where
    ``find_by_date`` does not look; the file name decides the time (as in
    :func:`scan_archive`).
    """
    if not missing or not path_fmt.strip("/"):
        return {}
    parser = PathTimeParser(path_fmt, fn_pattern, fn_ext)
    wanted = set(missing)
    listed: dict[str, list[str]] = {}
    found: dict[pd.Timestamp, str] = {}
    for when in missing:
        for shift in (pd.Timedelta(days=-1), pd.Timedelta(days=1)):
            folder = (when + shift).strftime(path_fmt.strip("/"))
            if folder not in listed:
                try:
                    listed[folder] = os.listdir(os.path.join(root, folder))
                except OSError:
                    listed[folder] = []
            for name in listed[folder]:
                parsed = parser.parse(f"{folder}/{name}")
                if parsed is not None and pd.Timestamp(parsed.time) in wanted:
                    found.setdefault(pd.Timestamp(parsed.time), os.path.join(root, folder, name))
    if found:
        log.warning(
            "%d file(s) lie in the folder of another day than their file name says (e.g. %s); "
            "using them for the time in their name",
            len(found),
            next(iter(found.values())),
        )
    return found


def missing_times(
    times: pd.DatetimeIndex,
    step: pd.Timedelta,
    start: datetime | pd.Timestamp | None,
    end: datetime | pd.Timestamp | None,
) -> pd.DatetimeIndex:
    """Expected times within the bounds with no file.

    After each file the next one is expected one ``step`` later; every expected time before the
    next file is missing. Between files far apart (separate events of an archive) only the
    missing times themselves are materialised.
    """
    lo = pd.Timestamp(start) if start is not None else times[0]
    hi = pd.Timestamp(end) if end is not None else times[-1]
    # Virtual files one step before the first bound and one step after the last.
    anchors = [lo - step, *times[(times >= lo) & (times <= hi)], hi + step]
    missing = [
        pd.date_range(a + step, b, freq=step, inclusive="left")
        for a, b in itertools.pairwise(anchors)
        if b - a > step
    ]
    if not missing:
        return pd.DatetimeIndex([])
    return pd.DatetimeIndex(np.concatenate([m.values for m in missing]))
