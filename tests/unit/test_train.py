"""The training skeleton: configs compose, every part instantiates, fast_dev_run, resume, errors.

The network and method here are a toy (tests/unit/toy_nowcast.py, configs in tests/configs);
the shipped experiments are composed and instantiated too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch
from conftest import prepare_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from geogen.checkpoint import CHECKPOINT_KEY
from geogen.training import (
    TrainingError,
    available_experiments,
    build_training,
    compose_train_config,
    run_train,
    validate_train_config,
)

TEST_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEARCHPATH = f"hydra.searchpath=[file://{TEST_CONFIGS}]"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    root = tmp_path_factory.mktemp("train_store")
    return prepare(validate_prepare_config(prepare_config(root / "crops.zarr"))).path


def toy_config(store, tmp_path, *overrides):
    return compose_train_config(
        [SEARCHPATH, "experiment=toy", f"data.path={store}", *overrides], output_dir=tmp_path
    )


def test_toy_config_composes_and_validates(store, tmp_path):
    cfg = toy_config(store, tmp_path)
    validate_train_config(cfg)
    assert cfg.name == "toy" and cfg.output_dir == str(tmp_path)
    assert cfg.callbacks.model_checkpoint.dirpath == f"{tmp_path}/checkpoints"
    assert cfg.optimizer._partial_ is True


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp"])
@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_trainer_and_logger_groups_compose(store, tmp_path, trainer, logger):
    cfg = toy_config(store, tmp_path, f"trainer={trainer}", f"logger={logger}")
    assert cfg.trainer._target_ == "lightning.Trainer"
    assert next(iter(cfg.logger.values()))["save_dir"] == str(tmp_path)
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp_find_unused_parameters_true"


def test_every_part_instantiates(store, tmp_path):
    cfg = toy_config(store, tmp_path)
    datamodule, method, trainer = build_training(cfg)
    assert type(method).__name__ == "ToyMethod"
    assert isinstance(method.optimizer_factories(method.parameters()), torch.optim.Adam)
    assert method.network_config["_target_"] == "toy_nowcast.ToyNet"
    names = {type(cb).__name__ for cb in trainer.callbacks}
    assert {"ModelCheckpoint", "LearningRateMonitor", "TQDMProgressBar", "NowcastPanels"} <= names
    assert type(trainer.logger).__name__ == "CSVLogger"
    assert datamodule.hparams.batch_size == 2


@pytest.mark.parametrize("debug", ["fast_dev_run", "limit", "overfit", "profiler"])
def test_debug_configs_compose(store, tmp_path, debug):
    cfg = toy_config(store, tmp_path, f"debug={debug}")
    validate_train_config(cfg)
    assert instantiate(cfg.trainer) is not None


def test_fast_dev_run(store, tmp_path):
    result = run_train(toy_config(store, tmp_path, "debug=fast_dev_run"))
    assert result.output_dir == tmp_path
    assert (tmp_path / "config.yaml").is_file()
    assert "train/loss" in result.metrics
    assert torch.isfinite(torch.tensor(result.metrics["train/loss"]))
    assert (tmp_path / "panels" / "step_000001.png").is_file()


def test_run_writes_checkpoints_with_provenance(store, tmp_path):
    overrides = ("trainer.limit_train_batches=3", "trainer.log_every_n_steps=1", "test=true")
    result = run_train(toy_config(store, tmp_path, *overrides))
    assert result.last_checkpoint and Path(result.last_checkpoint).name == "last.ckpt"
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    meta = ckpt[CHECKPOINT_KEY]
    assert meta["model"] == "toy"
    assert meta["network_config"] == {"_target_": "toy_nowcast.ToyNet", "context": 2, "lead": 3}
    data = meta["data"]
    assert (data["task"], data["context"], data["lead"], data["crop_size"]) == ("nowcast", 2, 3, 32)
    assert data["timestep_minutes"] == 5.0 and data["transform"] == {"name": "identity"}
    assert result.test_metrics and "val/loss" in result.test_metrics[0]
    metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics
    assert (tmp_path / "panels" / "final.png").is_file()


def test_resume_continues_exactly(store, tmp_path):
    """Two epochs in one go == one epoch, then a resume from its checkpoint for the second."""
    common = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    full = run_train(toy_config(store, tmp_path / "full", *common, "trainer.max_epochs=2"))
    first = run_train(toy_config(store, tmp_path / "first", *common, "trainer.max_epochs=1"))
    resumed = run_train(
        toy_config(
            store,
            tmp_path / "resumed",
            *common,
            "trainer.max_epochs=2",
            f"ckpt_path={first.last_checkpoint}",
        )
    )
    a = torch.load(full.last_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert full.metrics["train/loss"] == resumed.metrics["train/loss"]


def test_errors_name_what_is_missing(store, tmp_path):
    with pytest.raises(TrainingError, match="no network chosen: pick an experiment"):
        validate_train_config(compose_train_config([f"data.path={store}"], output_dir=tmp_path))
    with pytest.raises(TrainingError, match="data.path is required"):
        validate_train_config(
            compose_train_config([SEARCHPATH, "experiment=toy"], output_dir=tmp_path)
        )
    with pytest.raises(TrainingError, match="data.path: no crop store at"):
        validate_train_config(toy_config(tmp_path / "nope.zarr", tmp_path))
    with pytest.raises(TrainingError, match="ckpt_path: no checkpoint file"):
        validate_train_config(toy_config(store, tmp_path, f"ckpt_path={tmp_path}/x.ckpt"))


def test_method_refuses_a_store_of_another_task(build_store, tmp_path):
    from conftest import downscale_overrides

    pairs = build_store("pairs", **downscale_overrides())
    with pytest.raises(ValueError, match="trains on nowcast crop stores"):
        run_train(toy_config(pairs, tmp_path, "debug=fast_dev_run"))


@pytest.mark.parametrize("experiment", available_experiments())
def test_shipped_experiments_compose_and_instantiate(store, tmp_path, experiment):
    # GPU experiments are instantiated with a CPU trainer here (no GPU in CI)
    cfg = compose_train_config(
        [f"experiment={experiment}", f"data.path={store}", "trainer.accelerator=cpu"],
        output_dir=tmp_path,
    )
    validate_train_config(cfg)
    with torch.device("meta"):  # the paper-size network without memory or initialisation time
        _, method, trainer = build_training(cfg)
    assert isinstance(method, lightning.LightningModule) and trainer.max_epochs != 0
    assert OmegaConf.to_container(cfg.network)["_target_"] == method.network_config["_target_"]


def test_geogen_train_command_line(store, tmp_path):
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    cmd = [
        str(Path(sys.executable).with_name("geogen-train")),
        SEARCHPATH,
        "experiment=toy",
        f"data.path={store}",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "~callbacks.panels",
        f"paths.log_dir={tmp_path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "checkpoint: " in out.stdout
    ckpt = Path(out.stdout.split("checkpoint: ")[1].split()[0])
    assert ckpt.is_file() and ckpt.is_relative_to(tmp_path / "train" / "toy")
    bad = subprocess.run(
        [*cmd[:3], f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert bad.returncode == 1 and "data.path is required" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(store, tmp_path):
    """geogen-train trainer=ddp on 2 CPU processes (gloo): both ranks train, rank 0 saves."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    cmd = [
        str(Path(sys.executable).with_name("geogen-train")),
        SEARCHPATH,
        "experiment=toy",
        f"data.path={store}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "~callbacks.panels",
        f"paths.log_dir={tmp_path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "distributed_backend=gloo" in out.stdout + out.stderr
    assert (
        "All distributed processes registered. Starting with 2 processes" in out.stdout + out.stderr
    )
    ckpt = Path(out.stdout.split("checkpoint: ")[1].split()[0])
    assert ckpt.is_file()
