"""The Hydra entry points of geogen (thin wrappers; the work lives in the library).

``geogen-prepare`` lives in :mod:`data_pipelines.cli` (the pipeline imports the library,
never the reverse).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from geogen.config import config_dir, to_plain

log = logging.getLogger("geogen")


def _fail(exc: BaseException) -> None:
    log.error("%s", exc)
    sys.exit(1)


def _provenance(cfg: DictConfig) -> dict[str, Any]:
    from geogen import __version__

    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "geogen_version": __version__,
        "command": " ".join(sys.argv),
        "config": json.loads(json.dumps(to_plain(cfg), default=str)),
    }


def run_forecast(cfg: DictConfig) -> str:
    """Read the context from the archive, forecast, write the file; return its path."""
    from geogen.forecasting import forecast, get_forecaster, read_context, write_forecast
    from geogen.forecasting.interface import is_learned

    kwargs: dict[str, Any] = dict(to_plain(cfg.baseline).get(cfg.model) or {})
    if cfg.ckpt or is_learned(cfg.model):
        # learned models: ckpt=null takes the checkpoint geogen ships for the model, if any
        kwargs.update(ckpt=cfg.ckpt, device=cfg.device, batch_members=cfg.batch_members)
    if cfg.get("ckpt_sha256"):
        kwargs.update(ckpt_sha256=cfg.ckpt_sha256)
    model = get_forecaster(cfg.model, **kwargs)
    source = to_plain(cfg.source)
    region = OmegaConf.to_object(cfg.region) if cfg.region else None
    margin = int(cfg.get("margin") or 0)
    crop = (slice(None), slice(None))
    if region is not None and margin > 0:
        from geogen.forecasting import expand_region
        from geogen.io import load_source

        shape = load_source(source, cfg.time, cfg.time).grid.shape
        region, crop = expand_region(region, margin, shape)
    context = read_context(source, cfg.time, model.n_context, region=region)
    log.info(
        "%s: %d context frames ending %s, grid %s",
        cfg.model,
        context.sizes["time"],
        cfg.time,
        tuple(context.shape[1:]),
    )
    result = forecast(
        model, context, members=cfg.members, leads=cfg.leads, seed=cfg.seed, progress=cfg.progress
    ).isel(y=crop[0], x=crop[1])
    result.attrs["margin"] = margin
    path = write_forecast(
        result, cfg.out, provenance=_provenance(cfg), source_config=source, source=source["name"]
    )
    return str(path)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="forecast")
def forecast(cfg: DictConfig) -> None:
    """``geogen-forecast model=NAME source=SRC time=T out=FILE`` (see conf/forecast.yaml)."""
    from geogen.forecasting import ForecastError
    from geogen.io import SourceError

    try:
        path = run_forecast(cfg)
    except (ForecastError, SourceError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    print(f"wrote {cfg.members}-member {cfg.model} forecast to {path}")


def run_downscale(cfg: DictConfig) -> str:
    """Read (or coarsen) the low-resolution input, downscale, write the file; return its path."""
    from geogen.downscaling import (
        coarsen,
        downscale,
        get_downscaler,
        read_lowres_file,
        read_sequence,
        write_downscaled,
    )
    from geogen.downscaling.interface import is_learned

    kwargs: dict[str, Any] = dict(to_plain(cfg.baseline).get(cfg.model) or {})
    if cfg.ckpt or is_learned(cfg.model):
        # learned models: ckpt=null takes the checkpoint geogen ships for the model, if any
        kwargs.update(ckpt=cfg.ckpt, device=cfg.device, batch_members=cfg.batch_members)
    if cfg.get("ckpt_sha256"):
        kwargs.update(ckpt_sha256=cfg.ckpt_sha256)
    model = get_downscaler(cfg.model, **kwargs)
    attrs: dict[str, Any] = {"provenance": _provenance(cfg)}
    if cfg.input:
        lowres = read_lowres_file(cfg.input, cfg.variable)
        factor = cfg.factor
        attrs["input_file"] = str(cfg.input)
    else:
        if cfg.time is None:
            raise ValueError("give input=FILE, or source=... time=T to downscale archive frames")
        source = to_plain(cfg.source)
        region = OmegaConf.to_object(cfg.region) if cfg.region else None
        truth = read_sequence(source, cfg.time, cfg.length, region=region)
        lowres = coarsen(truth, cfg.coarsen)
        factor = cfg.coarsen
        attrs.update(source=source["name"], source_config=source, coarsened_from=cfg.coarsen)
    log.info(
        "%s: %d low-res frames of %s, factor %s",
        cfg.model,
        lowres.sizes["time"],
        tuple(lowres.shape[1:]),
        factor,
    )
    result = downscale(
        model, lowres, members=cfg.members, factor=factor, seed=cfg.seed, progress=cfg.progress
    )
    return str(write_downscaled(result, cfg.out, lowres=lowres, **attrs))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="downscale")
def downscale(cfg: DictConfig) -> None:
    """``geogen-downscale model=NAME (input=F | source=S time=T) out=F`` (conf/downscale.yaml)."""
    from geogen.downscaling import DownscaleError
    from geogen.forecasting import ForecastError
    from geogen.io import SourceError

    try:
        path = run_downscale(cfg)
    except (DownscaleError, ForecastError, SourceError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    print(f"wrote {cfg.members}-member {cfg.model} downscaling to {path}")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def train(cfg: DictConfig) -> None:
    """``geogen-train experiment=NAME data.path=crops.zarr`` (see conf/train.yaml)."""
    from geogen.io.store import StoreError
    from geogen.training import TrainingError, run_train

    try:
        result = run_train(cfg)
    except (TrainingError, StoreError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    if result.global_rank != 0:  # DDP: rank 0 reports
        return
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    if result.last_checkpoint and result.last_checkpoint != result.checkpoint:
        print(f"last checkpoint: {result.last_checkpoint}")
    print(f"outputs: {result.output_dir}")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="score")
def score(cfg: DictConfig) -> None:
    """``geogen-score forecasts=[a.nc] out=DIR`` or ``store=S models=[..]`` (conf/score.yaml)."""
    from geogen.forecasting import ForecastError
    from geogen.io import SourceError, StoreError
    from geogen.verification import VerificationError
    from geogen.verification.app import run, validate_config

    try:
        config = validate_config(to_plain(cfg))
        report = run(config, provenance=_provenance(cfg))
    except (VerificationError, ForecastError, SourceError, StoreError, FileNotFoundError) as exc:
        _fail(exc)
    print(f"wrote scores and report to {report}")
