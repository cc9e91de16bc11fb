"""Temp-then-rename writes: a file is either absent, the old one, or complete.

Every writer of geogen that produces a file people open (tables, plots, netCDF, checkpoints,
indexes) writes to a hidden temporary path beside the target and renames it into place with
:func:`os.replace`, which is atomic on POSIX file systems. On any error the temporary file is
removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_atomic"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    Parameters
    ----------
    path
        The final file (or directory) path. Its parent directory is created.
    suffix
        Appended to the temporary name, for writers that pick a format by extension
        (``".png"``, ``".nc"``).

    Examples
    --------
    >>> with atomic_path("scores.csv") as tmp:  # doctest: +SKIP
    ...     table.to_csv(tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}{suffix}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise FileNotFoundError(f"the writer of {final} produced no file at {tmp}")
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_atomic(
    path: str | os.PathLike[str], write: Callable[[Path], Any], *, suffix: str = ""
) -> Path:
    """Call ``write(tmp)`` on a temporary path and rename it onto ``path``; return ``path``."""
    with atomic_path(path, suffix=suffix) as tmp:
        write(tmp)
    return Path(path)
