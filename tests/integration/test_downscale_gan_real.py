"""The downscaling GAN on a real continuous field: ERA5 2 m temperature (../shared/data/era5).

A pair store of 32 x 32 crops and their 4x block means is built from one day of ERA5, the
``downscale_gan_era5_tiny`` experiment trains two batches on it (standardised temperature),
and the checkpoint downscales a coarsened ERA5 sequence back to 0.25 degree.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import prepare_config, requires_climate_data

import geogen
from geogen.config import load_source_config
from geogen.downscaling import coarsen, get_downscaler
from geogen.downscaling.learned import block_mean
from geogen.io import open_source
from geogen.training import compose_train_config, run_train

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def era5_pairs(tmp_path_factory) -> Path:
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    cfg = prepare_config(
        tmp_path_factory.mktemp("era5") / "pairs.zarr",
        start="2019-03-10T00:00",
        end="2019-03-10T23:00",
        task={"name": "downscale", "factor": 4},
        crop={"size": 32, "stride": 16},
        sequence={"context": None, "lead": None, "length": 4, "stride": 1},
        reject={"max_nan_fraction": 0.0},
        sampling={"method": "uniform", "probability": 1.0},
    )
    cfg["source"] = load_source_config("era5")
    return prepare(validate_prepare_config(cfg)).path


@requires_climate_data
def test_era5_temperature_trains_and_downscales(era5_pairs, tmp_path):
    cfg = compose_train_config(
        [
            "experiment=downscale_gan_era5_tiny",
            f"data.path={era5_pairs}",
            "method.critic_steps=2",
            "data.batch_size=2",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "callbacks.panels.every_n_batches=0",
        ],
        output_dir=tmp_path,
    )
    result = run_train(cfg)
    assert np.isfinite(result.metrics["train/d_loss"])
    assert np.isfinite(result.metrics["train/g_loss"])
    assert (tmp_path / "panels" / "final.png").is_file()

    source = open_source("era5", "2019-03-20T00:00", "2019-03-20T05:00")
    truth = source["t2m"].isel(y=slice(0, 32), x=slice(0, 48)).load()
    lowres = coarsen(truth, 4)
    model = get_downscaler("downscale_gan", ckpt=result.last_checkpoint, device="cpu")
    assert model.factor == 4 and model.variable == "t2m"
    hr = geogen.downscale(model, lowres, members=3, seed=0)
    assert hr.shape == (3, 6, 32, 48) and hr.attrs["units"] == "K"
    values = hr.values
    assert np.isfinite(values).all()
    # A barely trained model: values stay near the field's range (the transform's inverse).
    assert values.min() > float(truth.min()) - 30 and values.max() < float(truth.max()) + 30
    bias = float(np.abs(block_mean(values, 4) - lowres.values[None]).mean())
    log.info("ERA5 t2m, 2 training batches: mean |coarsened - input| = %.3f K", bias)
    # The additive correction makes block means exact for a continuous field.
    exact = get_downscaler(
        "downscale_gan", ckpt=result.last_checkpoint, device="cpu", preserve_mean=True
    )
    fixed = geogen.downscale(exact, lowres, members=2, seed=0).values
    np.testing.assert_allclose(
        block_mean(fixed, 4), np.broadcast_to(lowres.values, (2, 6, 8, 12)), atol=1e-3
    )
