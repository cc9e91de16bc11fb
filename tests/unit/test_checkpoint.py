"""One checkpoint path (geogen.checkpoint) for forecasters and downscalers, without Lightning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import geogen
from geogen.checkpoint import (
    CHECKPOINTS_ENV,
    INDEX,
    Checkpoint,
    CheckpointError,
    sha256_file,
    shipped_index,
)
from geogen.downscaling import DownscaleError, get_downscaler, open_downscaled
from geogen.forecasting.shipped import main as shipped_main
from geogen.models.downscale_gan import Generator

GENERATOR = {
    "factor": 4,
    "width": 8,
    "noise_channels": 2,
    "preproc_blocks": 1,
    "upsample_channels": [8, 8, 4],
}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory):
    """A geogen checkpoint of a seeded, untrained downscaling GAN generator (factor 4)."""
    torch.manual_seed(0)
    generator = Generator(**GENERATOR)
    path = tmp_path_factory.mktemp("train") / "last.ckpt"
    config = {"_target_": "geogen.models.downscale_gan.Generator", **GENERATOR}
    torch.save(
        {
            "state_dict": {f"network.generator.{k}": v for k, v in generator.state_dict().items()},
            "geogen": {
                "model": "downscale_gan",
                "network_config": {
                    "_target_": "geogen.models.downscale_gan.DownscaleGAN",
                    "generator": config,
                },
                "data": {
                    "task": "downscale",
                    "factor": 4,
                    "variable": "precip",
                    "units": "mm/h",
                    "transform": {"name": "log1p"},
                },
            },
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def shipped(training_checkpoint, tmp_path_factory):
    """A folder of shipped checkpoints: the int8 export of the generator, in its index."""
    folder = tmp_path_factory.mktemp("shipped")
    dst = folder / "downscale_gan_tiny.ckpt"
    shipped_main(["export", str(training_checkpoint), str(dst), "--int8", "--index"])
    return folder


@pytest.fixture(scope="module")
def lowres() -> xr.DataArray:
    rng = np.random.default_rng(0)
    values = rng.gamma(0.6, 2.0, size=(2, 6, 5)).astype(np.float32)
    return xr.DataArray(
        values,
        dims=("time", "y", "x"),
        coords={"y": np.arange(6) * 4000.0, "x": np.arange(5) * 4000.0},
        name="precip",
        attrs={"units": "mm/h"},
    )


def test_export_indexes_the_downscaler_with_its_task_and_hash(shipped):
    index = shipped_index(shipped)
    entry = index["downscale_gan"]
    assert entry["task"] == "downscale" and entry["model"] == "downscale_gan"
    assert entry["sha256"] == sha256_file(shipped / entry["file"])


def test_shipped_downscaler_loads_hash_checked(shipped, training_checkpoint, lowres, monkeypatch):
    monkeypatch.setenv(CHECKPOINTS_ENV, str(shipped))
    model = get_downscaler("downscale_gan", device="cpu")
    entry = shipped_index()["downscale_gan"]
    assert model.ckpt == str(shipped / entry["file"])
    assert model.describe()["checkpoint_sha256"] == entry["sha256"]
    out = geogen.downscale(model, lowres, members=2, seed=3)
    # int8 weights restored to float32: the training checkpoint's forecast to ~1%
    full = geogen.downscale(
        "downscale_gan", lowres, members=2, seed=3, ckpt=training_checkpoint, device="cpu"
    )
    assert out.shape == full.shape == (2, 2, 24, 20)
    np.testing.assert_allclose(out.values, full.values, rtol=0.05, atol=0.05)
    assert np.abs(out.values - full.values).max() > 0  # it did load the int8 file


def test_a_corrupted_shipped_downscaler_is_refused(shipped, tmp_path, monkeypatch):
    folder = tmp_path / "bad"
    folder.mkdir()
    index = shipped_index(shipped)
    data = bytearray((shipped / index["downscale_gan"]["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (folder / index["downscale_gan"]["file"]).write_bytes(bytes(data))
    (folder / INDEX).write_text(json.dumps(index))
    monkeypatch.setenv(CHECKPOINTS_ENV, str(folder))
    with pytest.raises(DownscaleError, match="SHA-256 mismatch"):
        get_downscaler("downscale_gan", device="cpu")


def test_a_downscaler_has_no_shipped_forecaster_and_the_reverse(shipped, monkeypatch):
    monkeypatch.setenv(CHECKPOINTS_ENV, str(shipped))
    with pytest.raises(CheckpointError, match="ships geogen-forecast checkpoints for: none"):
        Checkpoint.load("downscale_gan")  # a nowcast is asked for
    assert Checkpoint.load("downscale_gan", task="downscale").data["factor"] == 4
    with pytest.raises(DownscaleError, match="needs a checkpoint"):
        get_downscaler("vae", device="cpu")


def test_checkpoint_of_another_task_or_model_is_refused(training_checkpoint):
    with pytest.raises(CheckpointError, match="trained for 'downscale', not 'nowcast'"):
        Checkpoint.load("downscale_gan", training_checkpoint)
    with pytest.raises(CheckpointError, match="model 'downscale_gan', not 'vae'"):
        Checkpoint.load("vae", training_checkpoint, task="downscale")
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        Checkpoint.load("downscale_gan", training_checkpoint, "0" * 64, task="downscale")


def test_geogen_downscale_uses_the_shipped_checkpoint(shipped, lowres, tmp_path):
    path = tmp_path / "lowres.nc"
    lowres.to_dataset().to_netcdf(path)
    out = tmp_path / "hr.nc"
    cmd = [
        str(Path(sys.executable).with_name("geogen-downscale")),
        "model=downscale_gan",
        f"input={path}",
        "members=2",
        "device=cpu",
        "progress=false",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, CHECKPOINTS_ENV: str(shipped)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    hr = open_downscaled(out)
    assert hr.shape == (2, 2, 24, 20)
    expected = shipped_index(shipped)["downscale_gan"]["sha256"]
    assert hr.attrs["settings"]["checkpoint_sha256"] == expected


NO_LIGHTNING = """
import sys
import numpy as np
from geogen.forecasting import get_forecaster
model = get_forecaster("dgmr_advect", device="cpu", batch_members=2)
context = np.random.default_rng(0).gamma(0.5, 2.0, (4, 40, 40)).astype(np.float32)
out = model.predict(context, leads=2, members=2, seed=0, timestep_minutes=5.0)
assert out.shape == (2, 2, 40, 40) and np.isfinite(out).all()
from geogen.downscaling import available_downscalers
assert "downscale_gan" in available_downscalers()  # every downscaler module imported
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
print("LIGHTNING", loaded)
"""


def test_forecasting_with_the_shipped_checkpoint_imports_no_lightning():
    """Building and running a forecaster, and importing every downscaler, load no Lightning."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(CHECKPOINTS_ENV, None)
    result = subprocess.run(
        [sys.executable, "-c", NO_LIGHTNING], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LIGHTNING []" in result.stdout, result.stdout[-2000:]
