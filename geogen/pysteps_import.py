"""Import pysteps quietly, once: :func:`import_pysteps` (imports nothing of geogen)."""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from typing import Any

_IMPORT_LOCK = threading.Lock()


def import_pysteps() -> Any:
    """Import pysteps without its "configuration file found" banner on stdout.

    ``redirect_stdout`` swaps the process-wide ``sys.stdout``, so it is only used once, under a
    lock, for the first import (never around per-file reads, which run in threads).
    """
    if "pysteps.utils" not in sys.modules:
        with _IMPORT_LOCK, contextlib.redirect_stdout(io.StringIO()):
            import pysteps.io
            import pysteps.utils
    import pysteps

    return pysteps
