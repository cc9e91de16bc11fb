"""Tests of CropDataset and CropDataModule (geogen.data.dataset, geogen.data.datamodule)."""

from __future__ import annotations

import logging
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
import zarr
from conftest import downscale_overrides, prepare_config, synthetic_source
from torch.utils.data import DataLoader

from geogen.data import CropDataModule, CropDataset
from geogen.data.dataset import EmptySplitError
from geogen.data.transforms import get_transform
from geogen.io.store import SPLITS, StoreError, split_indices

#: Overrides of conftest.prepare_config for each store the tests use (built once per module).
STORES = {
    "nowcast": {},
    # another source, importance-sampled: sample_prob differs between samples
    "nowcast_b": {"source": synthetic_source(seed=1), "sampling": {"method": "dgmr", "q_min": 0.3}},
    "downscale": downscale_overrides(),
    # no data within 4 pixels of the domain border: crops at the edge hold NaN
    "nan": {"source": synthetic_source(nan_border=4), "reject": {"max_nan_fraction": 0.5}},
    # the validation range lies outside the data: empty val split
    "no_val": {"split": {"ranges": {"val": [["2021-01-01T00:00", "2021-01-01T01:00"]]}}},
    # validation and test cover all windows: empty train split
    "no_train": {"split": {"ranges": {"val": [["2020-01-01T00:00", "2020-01-01T01:40"]]}}},
    "context3": {"sequence": {"context": 3, "lead": 2}},
}
EPOCH_2020 = 1577836800  # 2020-01-01T00:00 UTC in seconds since 1970


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``store(name)``: the crop store of ``STORES[name]``, built by geogen-prepare once."""
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    root = tmp_path_factory.mktemp("stores")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            cfg = prepare_config(root / f"{name}.zarr", **STORES[name])
            built[name] = prepare(validate_prepare_config(cfg)).path
        return built[name]

    return get


def raw(path: Path, name: str = "precip") -> np.ndarray:
    """All of array ``name`` of a store, read with zarr (physical units)."""
    return np.asarray(zarr.open_group(path, mode="r")[name][:])


def np_dihedral(values: np.ndarray, op: int) -> np.ndarray:
    """Symmetry ``op`` (0..7) of the square on the last two axes, in NumPy."""
    if op >= 4:
        values = values[..., ::-1]
    return np.rot90(values, op % 4, axes=(-2, -1))


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    *lead, ny, nx = values.shape
    return values.reshape(*lead, ny // factor, factor, nx // factor, factor).mean(axis=(-3, -1))


def matching_ops(augmented: dict, plain: dict, keys: tuple[str, ...]) -> set[int]:
    """Symmetries that map every ``keys`` entry of ``plain`` onto ``augmented`` at once."""
    return {
        op
        for op in range(8)
        if all(
            np.array_equal(augmented[key].numpy(), np_dihedral(plain[key].numpy(), op))
            for key in keys
        )
    }


# -- values -----------------------------------------------------------------------------------


def test_nowcast_sample_equals_store_after_transform(store):
    path = store("nowcast")
    group = zarr.open_group(path, mode="r")
    data = raw(path)
    dataset = CropDataset(path, split="val", transform="log1p")
    log1p = get_transform("log1p")
    assert (dataset.task, dataset.context, dataset.lead, dataset.factor) == ("nowcast", 2, 3, None)
    assert dataset.variable == "precip"
    np.testing.assert_array_equal(dataset.time_offsets_minutes, [-5, 0, 5, 10, 15])
    val_indices = split_indices(group, "val")
    for position in (0, 7, len(dataset) - 1):
        item = dataset[position]
        index = int(item["index"])
        assert index == val_indices[position]
        assert item["index"].dtype == torch.int64 and int(item["store"]) == 0
        assert item["context"].dtype == item["target"].dtype == torch.float32
        np.testing.assert_allclose(item["context"].numpy(), log1p.forward(data[index, :2]), 1e-6)
        np.testing.assert_allclose(item["target"].numpy(), log1p.forward(data[index, 2:]), 1e-6)
        assert item["mask"].dtype == torch.bool and bool(item["mask"].all())
        assert float(item["sample_prob"]) == group["sample_prob"][index] == 1.0
        t0 = group["t0"][index].astype("datetime64[s]").astype(np.int64)
        assert item["t0"].dtype == torch.int64 and int(item["t0"]) == t0
    # whole windows lie in the val range, which starts at 01:00; t0 is their first frame
    assert int(dataset[0]["t0"]) == EPOCH_2020 + 60 * 60
    # negative positions count from the end; out of range is an IndexError
    assert int(dataset[-1]["index"]) == val_indices[-1]
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    assert "t0" not in CropDataset(path, split="val", return_metadata=False)[0]


def test_split_lengths_and_weights(store):
    path = store("nowcast_b")
    group = zarr.open_group(path, mode="r")
    counts = group.attrs["split_counts"]
    sample_prob = raw(path, "sample_prob")
    for split in SPLITS:
        dataset = CropDataset(path, split=split)
        assert len(dataset) == counts[split] > 0
        np.testing.assert_array_equal(dataset.store_indices[:, 1], split_indices(group, split))
        weights = dataset.sample_weights
        assert weights.dtype == np.float64
        np.testing.assert_allclose(weights, 1.0 / sample_prob[split_indices(group, split)])
        assert np.ptp(weights) > 0  # importance sampling: weights differ
    assert len(CropDataset(path, split=None)) == sum(counts.values()) == sample_prob.size


def test_downscale_sample_values_and_block_means(store):
    path = store("downscale")
    data, lowres = raw(path), raw(path, "precip_lowres")
    dataset = CropDataset(path, split="test", transform={"name": "log1p", "scale": 2.0})
    transform = dataset.transform
    assert transform == get_transform("log1p", scale=2.0)
    assert (dataset.task, dataset.factor) == ("downscale", 4)
    for position in (0, len(dataset) - 1):
        item = dataset[position]
        index = int(item["index"])
        assert item["lowres"].shape == (4, 8, 8) and item["target"].shape == (4, 32, 32)
        np.testing.assert_allclose(item["target"].numpy(), transform.forward(data[index]), 1e-6)
        np.testing.assert_allclose(item["lowres"].numpy(), transform.forward(lowres[index]), 1e-6)
        # the low-resolution input is the block mean of the target, in physical units
        np.testing.assert_allclose(
            transform.inverse(item["lowres"]).numpy(),
            block_mean(transform.inverse(item["target"]).numpy().astype(np.float64), 4),
            rtol=1e-4,
            atol=1e-5,
        )


@pytest.mark.parametrize(
    "transform",
    ["log1p", {"name": "standardize", "mean": "store", "std": "store"}, None],
    ids=["log1p", "standardize-store", "identity"],
)
def test_inverse_of_batch_recovers_store_values(store, transform):
    path = store("nan")
    data = raw(path)
    dataset = CropDataset(path, split="train", transform=transform)
    batch = next(iter(DataLoader(dataset, batch_size=12, shuffle=False)))
    stored = data[batch["index"].numpy()]
    recovered = dataset.transform.inverse(torch.cat([batch["context"], batch["target"]], dim=1))
    assert recovered.dtype == torch.float32
    mask = batch["mask"].numpy()
    np.testing.assert_array_equal(mask, np.isfinite(stored))
    assert (~mask).any() and mask.any()
    np.testing.assert_allclose(recovered.numpy()[mask], stored[mask], rtol=1e-5, atol=1e-5)


def test_nan_filled_before_transform_and_masked(store):
    path = store("nan")
    data = raw(path)
    nan_fraction = raw(path, "nan_fraction")
    dataset = CropDataset(path, split=None, nan_fill=0.5)
    log1p = dataset.transform
    with_nan = np.flatnonzero(nan_fraction > 0)
    without = np.flatnonzero(nan_fraction == 0)
    assert with_nan.size and without.size
    for index in (*with_nan[:3], without[0]):
        item = dataset[int(index)]  # split=None: position == store index
        assert int(item["index"]) == index
        values = torch.cat([item["context"], item["target"]]).numpy()
        mask = item["mask"].numpy()
        np.testing.assert_array_equal(mask, ~np.isnan(data[index]))
        assert mask.mean() == pytest.approx(1.0 - nan_fraction[index])
        assert np.isfinite(values).all()
        np.testing.assert_allclose(values[~mask], np.log1p(0.5), rtol=1e-6)
        np.testing.assert_allclose(values[mask], log1p.forward(data[index][mask]), rtol=1e-6)


def test_standardize_uses_pooled_train_statistics(store):
    paths = [store("nowcast"), store("nowcast_b")]
    train = [raw(p)[split_indices(zarr.open_group(p, mode="r"), "train")] for p in paths]
    values = np.concatenate([t.ravel() for t in train]).astype(np.float64)
    values = values[np.isfinite(values)]
    for spec in ("standardize", {"name": "standardize", "mean": "store", "std": "store"}):
        dataset = CropDataset(paths, split="test", transform=spec)
        transform = dataset.transform
        assert transform.name == "standardize"
        assert transform.mean == pytest.approx(values.mean(), rel=1e-6)
        assert transform.std == pytest.approx(values.std(), rel=1e-6)
    item = dataset[0]
    stored = raw(paths[0])[int(item["index"])]
    expected = (stored[2:] - transform.mean) / transform.std
    np.testing.assert_allclose(item["target"].numpy(), expected, rtol=1e-5, atol=1e-6)
    # a fixed mean with the std from the store
    half = CropDataset(paths[0], transform={"name": "standardize", "mean": 1.0, "std": "store"})
    assert half.transform.mean == 1.0
    assert half.transform.std == pytest.approx(train[0].std(dtype=np.float64), rel=1e-6)
    with pytest.raises(ValueError, match="only standardize"):
        CropDataset(paths[0], transform={"name": "log1p", "scale": "store"})


# -- augmentation -----------------------------------------------------------------------------


def test_augmentation_is_one_symmetry_for_all_frames_and_lowres(store):
    path = store("downscale")
    plain = CropDataset(path, split="train")
    augmented = CropDataset(path, split="train", augment=True)
    transform = plain.transform
    wet = np.flatnonzero(
        raw(path, "rain_fraction")[split_indices(zarr.open_group(path, mode="r"), "train")] > 0.2
    )
    torch.manual_seed(0)
    seen: set[int] = set()
    for position in wet[:24]:
        reference, item = plain[int(position)], augmented[int(position)]
        ops = matching_ops(item, reference, ("target", "lowres", "mask"))
        assert len(ops) == 1, f"sample {position}: symmetries {ops}"
        seen |= ops
        # the frames of the target each went through the same symmetry
        for frame in range(4):
            original, flipped = reference["target"][frame].numpy(), item["target"][frame].numpy()
            (op,) = ops
            assert np.array_equal(flipped, np_dihedral(original, op))
        # pairs stay aligned: block means of the augmented target are the augmented lowres
        np.testing.assert_allclose(
            transform.inverse(item["lowres"]).numpy(),
            block_mean(transform.inverse(item["target"]).numpy().astype(np.float64), 4),
            rtol=1e-4,
            atol=1e-5,
        )
        for key in ("sample_prob", "index", "t0"):
            assert torch.equal(item[key], reference[key])
    assert len(seen) >= 6  # all kinds of flips and rotations are drawn


def test_augmentation_keeps_context_target_and_mask_aligned(store):
    path = store("nan")
    plain = CropDataset(path, split=None)
    augmented = CropDataset(path, split=None, augment=True)
    with_nan = np.flatnonzero(raw(path, "nan_fraction") > 0)
    torch.manual_seed(1)
    for index in with_nan[:10]:
        reference, item = plain[int(index)], augmented[int(index)]
        assert matching_ops(item, reference, ("context", "target", "mask"))
        # the mask still marks the filled pixels
        filled = torch.cat([item["context"], item["target"]])[~item["mask"]]
        assert torch.all(filled == 0.0)


def same(a, b) -> bool:
    """Batch entries are equal: tensors exactly, lists of strings (``source``) as lists."""
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


@pytest.mark.parametrize("num_workers", [0, 2])
def test_seeded_augmentation_is_reproducible(store, num_workers):
    datamodule = CropDataModule(
        store("downscale"), batch_size=8, num_workers=num_workers, augment=True, shuffle=True
    )
    datamodule.setup("fit")

    def first_batches(seed: int) -> list[dict[str, torch.Tensor]]:
        lightning.seed_everything(seed, workers=True, verbose=False)
        loader = datamodule.train_dataloader()
        return [batch for batch, _ in zip(loader, range(3), strict=False)]

    one, again, other = first_batches(0), first_batches(0), first_batches(1)
    for a, b in zip(one, again, strict=True):
        assert a.keys() == b.keys()
        assert all(same(a[key], b[key]) for key in a)
    assert one[0]["source"] == ["synthetic"] * 8  # each sample records its source
    assert not torch.equal(one[0]["target"], other[0]["target"])


# -- loading in worker processes --------------------------------------------------------------


def test_workers_yield_the_same_batches(store):
    dataset = CropDataset(store("downscale"), split="val", augment=False)
    dataset[0]  # zarr arrays now open in this process: workers must open their own
    serial = list(DataLoader(dataset, batch_size=8, shuffle=False, num_workers=0))
    parallel = list(DataLoader(dataset, batch_size=8, shuffle=False, num_workers=2))
    assert len(serial) == len(parallel) == -(-len(dataset) // 8)
    for a, b in zip(serial, parallel, strict=True):
        assert all(same(a[key], b[key]) for key in a)
    # a pickled copy (spawned workers) reads the same values
    copy = pickle.loads(pickle.dumps(dataset))
    assert all(same(copy[3][key], dataset[3][key]) for key in dataset[3])


# -- combining stores -------------------------------------------------------------------------


def test_combined_stores_are_concatenated(store):
    first, second = store("nowcast"), store("nowcast_b")
    a, b = CropDataset(first, split="val"), CropDataset(second, split="val")
    both = CropDataset([first, second], split="val")
    assert len(both) == len(a) + len(b)
    assert both.paths == [str(first), str(second)] and both.info.path == str(first)
    np.testing.assert_array_equal(
        both.sample_weights, np.concatenate([a.sample_weights, b.sample_weights])
    )
    for position, (dataset, offset, number) in {
        0: (a, 0, 0),
        len(a) - 1: (a, len(a) - 1, 0),
        len(a): (b, 0, 1),
        len(both) - 1: (b, len(b) - 1, 1),
    }.items():
        item, expected = both[position], dataset[offset]
        assert int(item["store"]) == number
        assert all(same(item[key], expected[key]) for key in expected if key != "store")
    stored = raw(second)[int(both[len(a)]["index"])]
    np.testing.assert_allclose(both[len(a)]["target"].numpy(), np.log1p(stored[2:]), 1e-6)


# -- errors -----------------------------------------------------------------------------------


def test_error_for_missing_or_incomplete_store(store, tmp_path):
    with pytest.raises(StoreError, match="no crop store"):
        CropDataset(tmp_path / "missing.zarr")
    building = tmp_path / "building.zarr"
    shutil.copytree(store("nowcast"), building)
    zarr.open_group(building, mode="r+").attrs["status"] = "building"
    with pytest.raises(StoreError, match="incomplete"):
        CropDataset(building)
    with pytest.raises(StoreError, match="incomplete"):
        CropDataset([store("nowcast"), building])
    with pytest.raises(ValueError, match="empty"):
        CropDataset([])


def test_error_for_empty_or_unknown_split(store):
    with pytest.raises(EmptySplitError, match=r"split 'val'.*'val': 0"):
        CropDataset(store("no_val"), split="val")
    with pytest.raises(StoreError, match="unknown split"):
        CropDataset(store("nowcast"), split="validation")
    with pytest.raises(ValueError, match="unknown transform 'sqrt'; valid transforms"):
        CropDataset(store("nowcast"), transform="sqrt")


def test_error_for_mismatched_stores(store):
    with pytest.raises(StoreError, match="task is 'nowcast'.*'downscale'"):
        CropDataset([store("nowcast"), store("downscale")])
    with pytest.raises(StoreError, match="context is 2.*3"):
        CropDataset([store("nowcast"), store("context3")])


# -- the data module --------------------------------------------------------------------------


def test_datamodule_fit_batches(store):
    path = store("nowcast")
    counts = zarr.open_group(path, mode="r").attrs["split_counts"]
    datamodule = CropDataModule(path, batch_size=16, augment=False)
    datamodule.setup("fit")
    assert datamodule.transform == get_transform("log1p")
    assert datamodule.info.task == "nowcast" and datamodule.info.context == 2
    train = list(datamodule.train_dataloader())
    assert len(train) == counts["train"] // 16
    assert all(batch["context"].shape == (16, 2, 32, 32) for batch in train)
    assert all(batch["target"].shape == (16, 3, 32, 32) for batch in train)
    indices = torch.cat([batch["index"] for batch in train]).numpy()
    train_indices = split_indices(zarr.open_group(path, mode="r"), "train")
    assert len(set(indices)) == len(indices) and set(indices) <= set(train_indices)
    assert not np.array_equal(indices, np.sort(indices))  # shuffled
    val = list(datamodule.val_dataloader())
    assert [len(batch["index"]) for batch in val] == [16, 16, counts["val"] - 32]
    np.testing.assert_array_equal(
        torch.cat([batch["index"] for batch in val]).numpy(),
        split_indices(zarr.open_group(path, mode="r"), "val"),
    )
    assert datamodule.test_dataset is None  # fit builds train and val only
    assert len(datamodule.test_dataloader().dataset) == counts["test"]


def test_datamodule_empty_val_and_empty_train(store, caplog):
    datamodule = CropDataModule(store("no_val"), batch_size=8)
    with caplog.at_level(logging.WARNING, logger="geogen.data.datamodule"):
        datamodule.setup("fit")
    assert "no validation samples" in caplog.text
    assert datamodule.val_dataloader() == []
    assert len(datamodule.train_dataloader()) == 162 // 8
    with pytest.raises(EmptySplitError, match="split 'train'"):
        CropDataModule(store("no_train")).setup("fit")
    with pytest.raises(ValueError, match="drop_last"):
        CropDataModule(store("nowcast"), batch_size=100).setup("fit")


def test_datamodule_separate_test_store_shares_train_transform(store):
    train_path, test_path = store("nowcast"), store("nowcast_b")
    datamodule = CropDataModule(
        train_path, test_path=test_path, test_split=None, transform={"name": "standardize"}
    )
    datamodule.setup("test")
    expected = CropDataset(train_path, transform="standardize").transform
    assert datamodule.transform == expected
    assert datamodule.test_dataset.transform == expected  # not the statistics of test_path
    assert len(datamodule.test_dataset) == len(CropDataset(test_path, split=None))
    assert datamodule.train_dataset is None
    with pytest.raises(StoreError, match="task"):
        CropDataModule(train_path, val_path=store("downscale")).setup("validate")


class TinyNowcaster(lightning.LightningModule):
    """A one-layer convolution from the context frames to the lead frames."""

    def __init__(self, context: int = 2, lead: int = 3) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(context, lead, kernel_size=3, padding=1)
        self.batch_sizes: dict[str, list[int]] = {"train": [], "val": [], "test": []}

    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        self.batch_sizes[stage].append(len(batch["context"]))
        mask = batch["mask"][:, 2:]
        error = (self.net(batch["context"]) - batch["target"]) ** 2
        return error[mask].mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch, "val"))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch, "test"))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(**kwargs) -> lightning.Trainer:
    return lightning.Trainer(
        fast_dev_run=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero:UserWarning")
@pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated")
def test_trainer_fast_dev_run_and_checkpoint_round_trip(store, tmp_path):
    path = store("nan")
    transform = get_transform("log1p", scale=2.0)
    datamodule = CropDataModule(path, batch_size=4, augment=True, transform=transform)
    # plain hyperparameters, so that checkpoints load with weights_only=True
    assert datamodule.hparams.path == str(path)
    assert datamodule.hparams.transform == {"name": "log1p", "scale": 2.0}
    assert datamodule.transform == transform
    model = TinyNowcaster()
    trainer = _trainer()
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    assert model.batch_sizes == {"train": [4], "val": [4], "test": [4]}
    assert np.isfinite(trainer.callback_metrics["test_loss"].item())
    trainer.save_checkpoint(tmp_path / "tiny.ckpt")
    restored = CropDataModule.load_from_checkpoint(tmp_path / "tiny.ckpt", weights_only=True)
    assert dict(restored.hparams) == dict(datamodule.hparams)
    assert restored.transform == datamodule.transform

    # an empty validation split: Lightning trains and skips validation
    model = TinyNowcaster()
    _trainer().fit(model, datamodule=CropDataModule(store("no_val"), batch_size=4))
    assert model.batch_sizes == {"train": [4], "val": [], "test": []}


def test_lazy_exports_keep_torch_out_of_light_imports():
    code = (
        "import sys\n"
        "import geogen.data.synthetic, geogen.data.transforms\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules\n"
        "import geogen.data as data\n"
        "assert {'CropDataset', 'CropDataModule'} <= set(dir(data))\n"
        "assert data.CropDataset.__module__ == 'geogen.data.dataset'\n"
        "assert data.CropDataModule.__module__ == 'geogen.data.datamodule'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="NoSuchThing"):
        import geogen.data

        geogen.data.NoSuchThing  # noqa: B018
