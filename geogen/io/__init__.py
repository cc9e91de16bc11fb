"""Readers and writers: sources (radar archives, climate fields) and crop stores.

>>> from geogen.io import open_source
>>> ds = open_source("mch", start="2016-07-11T21:00", end="2016-07-11T22:00")  # doctest: +SKIP
"""

from geogen.io.cf import PRECIP_ATTRS, Grid, field_dataset
from geogen.io.sources import (
    BadFileError,
    Source,
    SourceError,
    available_source_kinds,
    load_source,
    open_source,
    register_source,
)
from geogen.io.store import StoreError, StoreInfo, open_crop_store, split_indices, store_info

__all__ = [
    "PRECIP_ATTRS",
    "BadFileError",
    "Grid",
    "Source",
    "SourceError",
    "StoreError",
    "StoreInfo",
    "available_source_kinds",
    "field_dataset",
    "load_source",
    "open_crop_store",
    "open_source",
    "register_source",
    "split_indices",
    "store_info",
]
