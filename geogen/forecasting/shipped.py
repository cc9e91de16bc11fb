"""Checkpoints shipped with geogen (``checkpoints/``; ``geogen/checkpoints`` in a wheel).

``checkpoints/index.json`` lists them by model name::

    {"dgmr_advect": {"file": "dgmr_advect_tiny.ckpt", "sha256": "...", "card": "README.md"}}

``geogen-forecast model=dgmr_advect`` (no ``ckpt=``) forecasts with the shipped checkpoint of
that model; every load checks the file's SHA-256 against the index first, so a corrupted or
replaced file is refused with an error saying so. Any checkpoint can be checked the same way
with ``ckpt_sha256=...``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from geogen.forecasting.interface import ForecastError

#: Index file of the shipped checkpoints.
INDEX = "index.json"


def shipped_dir() -> Path:
    """The folder of the shipped checkpoints (the checkout's ``checkpoints/`` first)."""
    from geogen.config import PACKAGE_DIR, REPO_ROOT

    for candidate in (REPO_ROOT / "checkpoints", PACKAGE_DIR / "checkpoints"):
        if (candidate / INDEX).is_file():
            return candidate
    return REPO_ROOT / "checkpoints"


def shipped_index() -> dict[str, dict[str, Any]]:
    """``{model: {"file", "sha256", ...}}`` of the shipped checkpoints (``{}`` when none)."""
    path = shipped_dir() / INDEX
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ForecastError(f"{path} is not valid JSON: {exc}") from exc


def verify_sha256(path: str | os.PathLike, expected: str) -> str:
    """Return the SHA-256 of ``path``; raise :class:`ForecastError` unless it is ``expected``."""
    from geogen.forecasting.learned import sha256_file

    path = Path(path)
    if not path.is_file():
        raise ForecastError(f"no checkpoint file at {path}")
    actual = sha256_file(path)
    if actual.lower() != str(expected).strip().lower():
        raise ForecastError(
            f"{path}: SHA-256 mismatch, the file is {actual} but {expected} was expected; the "
            "checkpoint is corrupted or not the one asked for (re-fetch it, or pass the right "
            "ckpt_sha256)"
        )
    return actual


def resolve_checkpoint(
    model: str, ckpt: str | os.PathLike | None, ckpt_sha256: str | None = None
) -> Path:
    """The checkpoint to load for ``model``: ``ckpt``, else the shipped one; hash-checked.

    Raises
    ------
    ForecastError
        When no ``ckpt`` is given and none is shipped for ``model``, or a SHA-256 differs.
    """
    if ckpt is None:
        entry = shipped_index().get(model)
        if entry is None:
            shipped = ", ".join(sorted(shipped_index())) or "none"
            raise ForecastError(
                f"model={model} needs a checkpoint: ckpt=PATH (from geogen-train); geogen "
                f"ships checkpoints for: {shipped}"
            )
        path = shipped_dir() / entry["file"]
        verify_sha256(path, ckpt_sha256 or entry["sha256"])
        return path
    if ckpt_sha256:
        verify_sha256(ckpt, ckpt_sha256)
    return Path(ckpt)
