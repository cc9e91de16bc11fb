"""A Lightning data module over crop stores: train/val/test :class:`CropDataset` loaders.

::

    datamodule = CropDataModule("crops.zarr", batch_size=16, num_workers=4)
    trainer.fit(model, datamodule=datamodule)
    rain = datamodule.transform.inverse(prediction)  # model space -> mm/h

Validation and test samples come from the ``val`` and ``test`` splits of the training stores,
or from separate stores (``val_path``, ``test_path``). The value transform is resolved once,
from the training stores, and shared by every split, so ``standardize`` with ``"store"``
statistics never leaks validation or test statistics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import lightning
from torch.utils.data import DataLoader

from geogen.data.dataset import (
    CropDataset,
    EmptySplitError,
    StorePath,
    TransformSpec,
    as_store_paths,
    check_compatible,
    resolve_transform,
)
from geogen.data.transforms import Transform
from geogen.io.store import StoreInfo, store_info

logger = logging.getLogger(__name__)

_STAGES = ("fit", "validate", "test", "predict")


def _plain_paths(path: StorePath | Sequence[StorePath] | None) -> str | list[str] | None:
    """``path`` as a string, a list of strings, or None (e.g. from a Hydra ListConfig)."""
    if path is None or isinstance(path, str):
        return path
    if isinstance(path, os.PathLike):
        return os.fspath(path)
    return as_store_paths(path)


def _plain_transform(spec: TransformSpec) -> str | dict[str, Any] | None:
    """``spec`` as a name, a plain ``{"name": ..., **params}`` dict, or None."""
    if isinstance(spec, Transform):
        return {"name": spec.name, **spec.params}
    if isinstance(spec, Mapping):
        return {str(key): value for key, value in spec.items()}
    return spec


class CropDataModule(lightning.LightningDataModule):
    """Train, validation and test loaders over crop stores.

    Parameters
    ----------
    path
        Training crop store(s); their ``train`` split is used for training, and their ``val``
        and ``test`` splits unless ``val_path``/``test_path`` are given.
    batch_size
        Samples per batch.
    num_workers
        Loader worker processes (0 reads in the main process).
    transform
        Value transform (see :class:`~geogen.data.dataset.CropDataset`); ``"store"`` statistics
        always come from the training split of ``path``.
    augment
        Random flips and rotations of the training samples (never of val/test).
    nan_fill
        Value (physical units) replacing missing data before the transform.
    pin_memory
        Pin batches in page-locked memory (faster host-to-GPU copies).
    persistent_workers
        Keep workers alive between epochs (only used when ``num_workers > 0``).
    val_path, test_path
        Separate store(s) for validation / test; ``None`` uses ``path``.
    drop_last
        Drop the last incomplete training batch.
    shuffle
        Shuffle the training samples each epoch.
    val_split, test_split
        Split read from the validation / test stores; ``None`` reads all their samples (for
        a store built for evaluation only).
    advection
        Give every nowcast sample its pysteps advection forecast ``advected`` (see
        :class:`~geogen.data.dataset.CropDataset`): ``True``, or a mapping of settings; the
        frames are computed once per sample at ``setup`` and cached beside each store.
    steps
        Give every nowcast sample pysteps STEPS members ``steps`` ``(members, lead, H, W)``
        (see :class:`~geogen.data.dataset.CropDataset`): ``True`` or a mapping (``members``,
        ``seed``, ``pysteps_steps`` settings), cached beside each store like ``advection``.

    Raises
    ------
    ValueError
        If ``batch_size < 1`` or ``num_workers < 0``.

    Notes
    -----
    Batches are dicts of stacked tensors: each entry of a :class:`CropDataset` item gains a
    leading ``batch`` axis, e.g. ``target`` ``(batch, lead, y, x)``. An empty validation split
    is allowed (a warning is logged and :meth:`val_dataloader` returns ``[]``, so Lightning skips
    validation); an empty training split raises :class:`~geogen.io.store.StoreError`.
    """

    def __init__(
        self,
        path: StorePath | Sequence[StorePath],
        batch_size: int = 16,
        num_workers: int = 0,
        transform: TransformSpec = "log1p",
        augment: bool = True,
        nan_fill: float = 0.0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        val_path: StorePath | Sequence[StorePath] | None = None,
        test_path: StorePath | Sequence[StorePath] | None = None,
        drop_last: bool = True,
        shuffle: bool = True,
        val_split: str | None = "val",
        test_split: str | None = "test",
        advection: bool | Mapping[str, Any] | None = None,
        steps: bool | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        # plain str/list/dict hyperparameters: checkpoints then load with weights_only=True
        path = _plain_paths(path)
        val_path = _plain_paths(val_path)
        test_path = _plain_paths(test_path)
        transform = _plain_transform(transform)
        if isinstance(advection, Mapping):
            advection = {str(key): value for key, value in advection.items()}
        if isinstance(steps, Mapping):
            steps = {str(key): value for key, value in steps.items()}
        self.save_hyperparameters()
        self.train_dataset: CropDataset | None = None
        self.val_dataset: CropDataset | None = None
        self.test_dataset: CropDataset | None = None
        self._val_ready = False
        self._transform: Transform | None = None
        self._info: StoreInfo | None = None

    # -- what models need ---------------------------------------------------------------------
    @property
    def info(self) -> StoreInfo:
        """:class:`~geogen.io.store.StoreInfo` of the first training store."""
        if self._info is None:
            first = as_store_paths(self.hparams.path)[0]
            self._info = replace(store_info(first), path=first)
        return self._info

    @property
    def transform(self) -> Transform:
        """The value transform of every split (use ``inverse`` to map predictions back)."""
        if self._transform is None:
            paths = as_store_paths(self.hparams.path)
            infos = [store_info(p) for p in paths]
            self._transform = resolve_transform(self.hparams.transform, infos)
        return self._transform

    # -- datasets -----------------------------------------------------------------------------
    def _dataset(
        self, path: str | list[str], split: str | None, *, augment: bool = False
    ) -> CropDataset:
        """A dataset over ``path`` with the shared transform."""
        return CropDataset(
            path,
            split=split,
            transform=self.transform,
            augment=augment,
            nan_fill=self.hparams.nan_fill,
            advection=self.hparams.get("advection"),
            steps=self.hparams.get("steps"),
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (all of them when ``stage`` is None).

        Parameters
        ----------
        stage
            ``"fit"`` (train and val), ``"validate"`` (val), ``"test"`` or ``"predict"``
            (test).

        Raises
        ------
        StoreError
            If a store is missing or incomplete, the training or test split is empty, or the
            stores (training, validation and test) differ in task, variable, shape or timing.
        ValueError
            If ``stage`` is unknown, or ``drop_last`` would leave no training batch.
        """
        if stage is not None and stage not in _STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(_STAGES)}")
        hp = self.hparams
        if stage in (None, "fit") and self.train_dataset is None:
            train = self._dataset(hp.path, "train", augment=hp.augment)
            if hp.drop_last and len(train) < hp.batch_size:
                raise ValueError(
                    f"the train split has {len(train)} samples, fewer than batch_size="
                    f"{hp.batch_size}: with drop_last=True no batch would be left; lower "
                    "batch_size or set drop_last=False"
                )
            self.train_dataset = train
        if stage in (None, "fit", "validate") and not self._val_ready:
            path = hp.path if hp.val_path is None else hp.val_path
            try:
                self.val_dataset = self._dataset(path, hp.val_split)
            except EmptySplitError as exc:
                logger.warning("no validation samples, validation is skipped: %s", exc)
                self.val_dataset = None
            self._val_ready = True
        if stage in (None, "test", "predict") and self.test_dataset is None:
            path = hp.path if hp.test_path is None else hp.test_path
            self.test_dataset = self._dataset(path, hp.test_split)
        for dataset in (self.val_dataset, self.test_dataset):
            if dataset is not None:
                check_compatible([self.info, dataset.info])

    # -- loaders ------------------------------------------------------------------------------
    def _loader(self, dataset: CropDataset, *, train: bool) -> DataLoader:
        """A loader over ``dataset`` with the configured batching and workers."""
        hp = self.hparams
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            shuffle=bool(hp.shuffle) if train else False,
            drop_last=bool(hp.drop_last) if train else False,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=bool(hp.persistent_workers) and hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (``shuffle``), augmented (``augment``) training batches."""
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in store order; ``[]`` when the validation split is empty."""
        if not self._val_ready:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in store order."""
        if self.test_dataset is None:
            self.setup("test")
        return self._loader(self.test_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        """Test batches in store order, for ``trainer.predict``."""
        if self.test_dataset is None:
            self.setup("predict")
        return self._loader(self.test_dataset, train=False)
