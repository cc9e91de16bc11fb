"""Data handling: crop datasets and data modules, invertible value transforms, synthetic fields."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geogen.data.datamodule import CropDataModule
    from geogen.data.dataset import CropDataset

__all__ = ["CropDataModule", "CropDataset"]

# Imported on first access, so that ``geogen.data.transforms`` and ``geogen.data.synthetic``
# stay free of torch and lightning.
_LAZY: dict[str, str] = {
    "CropDataModule": "geogen.data.datamodule",
    "CropDataset": "geogen.data.dataset",
}


def __getattr__(name: str) -> Any:
    """Import :class:`CropDataset` and :class:`CropDataModule` on first access."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
