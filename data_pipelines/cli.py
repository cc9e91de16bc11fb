"""``geogen-prepare``: the Hydra entry point of the crop pipeline (thin)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from geogen.config import config_dir, to_plain

log = logging.getLogger("geogen.prepare")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="prepare")
def prepare(cfg: DictConfig) -> None:
    """Build a crop store: ``geogen-prepare source=mch out=crops.zarr`` (see conf/prepare.yaml)."""
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare as run
    from data_pipelines.report import render_summary
    from geogen.io.sources import SourceError
    from geogen.io.store import StoreError

    logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        config = validate_prepare_config(to_plain(cfg))
        result = run(config)
    except (ValueError, FileNotFoundError, ConnectionError, StoreError, SourceError) as exc:
        log.error("%s", exc)
        sys.exit(1)
    if result.skipped:
        print(
            f"{result.path} is already complete for this config; nothing to do "
            "(overwrite=true rebuilds it)"
        )
    render_summary(result.summary, str(result.path))
