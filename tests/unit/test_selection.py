"""Weights are chosen on the validation split, and fitting never opens the test split.

A toy network trains for a few epochs on a synthetic store; ``ModelCheckpoint(monitor="auto")``
must keep the epoch with the lowest logged ``val/loss`` (the method's ``val_monitor``), and no
dataset of the ``test`` split may be built while fitting. The shipped radar experiments
(``data=radar_5min``) must select on ``val/crps`` of the RMI validation event.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import prepare_config
from hydra.utils import instantiate

import geogen.data.datamodule as datamodule_module
from geogen.training import compose_train_config, resolve_checkpoint_monitor, run_train

TEST_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEARCHPATH = f"hydra.searchpath=[file://{TEST_CONFIGS}]"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    root = tmp_path_factory.mktemp("selection_store")
    return prepare(validate_prepare_config(prepare_config(root / "crops.zarr"))).path


def test_best_validation_checkpoint_is_kept_and_test_is_not_read(store, tmp_path, monkeypatch):
    opened: list[str | None] = []
    original = datamodule_module.CropDataset

    class Spy(original):
        def __init__(self, *args, split=None, **kwargs):
            opened.append(split)
            super().__init__(*args, split=split, **kwargs)

    monkeypatch.setattr(datamodule_module, "CropDataset", Spy)
    cfg = compose_train_config(
        [
            SEARCHPATH,
            "experiment=toy",
            f"data.path={store}",
            "trainer.max_epochs=4",
            "trainer.limit_train_batches=2",
            "trainer.log_every_n_steps=1",
            "optimizer.lr=0.05",
            "~callbacks.panels",
        ],
        output_dir=tmp_path,
    )
    result = run_train(cfg)
    assert set(opened) == {"train", "val"}, f"fit opened the splits {opened}"

    saved = cfg.callbacks.model_checkpoint
    assert (saved.monitor, saved.mode) == ("val/loss", "min")
    metrics = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    val = metrics.dropna(subset=["val/loss"]).set_index("epoch")["val/loss"]
    assert len(val) == 4 and val.nunique() == 4
    best_epoch = int(val.idxmin())
    # seeded: the learning rate is high enough that the last epoch is not the best one, so
    # keeping the latest checkpoint (monitor=null) would fail here
    assert best_epoch < val.index.max()
    match = re.match(r"epoch_(\d+)-step_", Path(result.best_checkpoint).name)
    assert match and int(match.group(1)) == best_epoch, (val.to_dict(), result.best_checkpoint)
    assert result.checkpoint == result.best_checkpoint
    best = torch.load(result.best_checkpoint, weights_only=False)
    callback = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert float(callback["best_model_score"]) == pytest.approx(val.min(), rel=1e-6)
    # the selected weights are those of that epoch, not the last ones
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert Path(result.last_checkpoint).name == "last.ckpt"
    assert last["epoch"] == val.index.max()  # last.ckpt follows the run (for resuming)
    last = last["state_dict"]
    assert not torch.equal(best["state_dict"]["network.conv.weight"], last["network.conv.weight"])
    # benchmarks/bench_skill.py scores the same file, found from last.ckpt alone
    assert bench_skill().best_val_checkpoint(Path(result.last_checkpoint)) == Path(
        result.best_checkpoint
    )


def bench_skill():
    """``benchmarks/bench_skill.py`` as a module (the benchmarks folder is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_skill.py"
    spec = importlib.util.spec_from_file_location("bench_skill", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_last_ckpt_records_a_best_found_at_the_last_epoch(store, tmp_path):
    """last.ckpt is written after the selecting callback has seen the epoch's score, so the
    best it records is current even when the last epoch is the best (5 epochs: it is here)."""
    cfg = compose_train_config(
        [
            SEARCHPATH,
            "experiment=toy",
            f"data.path={store}",
            "trainer.max_epochs=5",
            "trainer.limit_train_batches=2",
            "optimizer.lr=0.05",
            "~callbacks.panels",
        ],
        output_dir=tmp_path,
    )
    result = run_train(cfg)
    val = pd.read_csv(tmp_path / "csv" / "metrics.csv").dropna(subset=["val/loss"])
    assert int(val.set_index("epoch")["val/loss"].idxmin()) == 4
    assert Path(result.best_checkpoint).name.startswith("epoch_004-")
    assert bench_skill().best_val_checkpoint(Path(result.last_checkpoint)) == Path(
        result.best_checkpoint
    )


def test_bench_refuses_a_run_without_validation_selection(store, tmp_path):
    cfg = compose_train_config(
        [
            SEARCHPATH,
            "experiment=toy",
            f"data.path={store}",
            "trainer.limit_train_batches=1",
            "callbacks.model_checkpoint.monitor=null",
            "~callbacks.panels",
        ],
        output_dir=tmp_path,
    )
    result = run_train(cfg)
    with pytest.raises(SystemExit, match="no checkpoint selected on a val/ score"):
        bench_skill().best_val_checkpoint(Path(result.last_checkpoint))
    assert bench_skill().checkpoint_model(result.last_checkpoint) == "toy"


def test_explicit_monitor_and_methods_without_one(store, tmp_path):
    explicit = compose_train_config(
        [
            SEARCHPATH,
            "experiment=toy",
            f"data.path={store}",
            "callbacks.model_checkpoint.monitor=val/other",
            "callbacks.model_checkpoint.mode=max",
        ],
        output_dir=tmp_path,
    )
    assert resolve_checkpoint_monitor(explicit) == "val/other"
    assert explicit.callbacks.model_checkpoint.mode == "max"
    bare = compose_train_config(
        [
            SEARCHPATH,
            "experiment=toy",
            f"data.path={store}",
            "method._target_=geogen.methods.NowcastMethod",
        ],
        output_dir=tmp_path,
    )
    assert resolve_checkpoint_monitor(bare) is None
    assert bare.callbacks.model_checkpoint.monitor is None
    # no selection: model_checkpoint writes last.ckpt itself, the extra callback is dropped
    assert bare.callbacks.model_checkpoint.save_last is True
    assert bare.callbacks.last_checkpoint is None


@pytest.mark.parametrize(
    ("experiment", "monitor"),
    [("dgmr_advect_tiny", "val/crps"), ("dgmr_tiny", "val/crps"), ("vae_nowcast_tiny", "val/nll")],
)
def test_radar_5min_experiments_select_on_the_validation_event(tmp_path, experiment, monitor):
    """data=radar_5min: the RMI event is the val split, and the checkpoint monitors it."""
    cfg = compose_train_config(
        [f"experiment={experiment}", "data=radar_5min", "paths.stores=/nonexistent"],
        output_dir=tmp_path,
    )
    assert [Path(p).name for p in cfg.data.path] == ["mch.zarr", "fmi.zarr", "rmi.zarr"]
    assert cfg.data.val_path is None and cfg.data.get("val_split", "val") == "val"
    assert resolve_checkpoint_monitor(cfg) == monitor
    checkpoint = instantiate(cfg.callbacks.model_checkpoint)
    assert (checkpoint.monitor, checkpoint.mode) == (monitor, "min")


def test_bench_defaults_name_real_experiments_and_split_stores():
    module = bench_skill()
    # every default training is a conf/experiment name (check_names exits on unknown ones)
    module.check_names([item.partition("=")[0] for item in module.DEFAULT_TRAIN], [])
    assert any(item.startswith("dgmr_steps_tiny=") for item in module.DEFAULT_TRAIN)
    with pytest.raises(SystemExit, match="unknown experiments"):
        module.check_names(["no_such_experiment"], [])
    # the stores scored per split are built by scripts/prepare_stores.sh, which gives the
    # test range to mch and the validation range to rmi
    script = (Path(__file__).resolve().parents[2] / "scripts" / "prepare_stores.sh").read_text()
    assert set(module.SPLIT_STORES) == {"test", "val"}
    assert "2016-07-11" in script and "2021-07-04" in script
    built = script.split("for source in", 1)[1].split(";")[0].split()
    assert {store.removesuffix(".zarr") for store in module.SPLIT_STORES.values()} <= set(built)
    assert module.SPLIT_STORES == {"test": "mch.zarr", "val": "rmi.zarr"}
