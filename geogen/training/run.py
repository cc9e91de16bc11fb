"""The training run behind ``geogen-train`` (see ``conf/train.yaml``).

The run is four config choices wired together, as in anemoi and the lightning-hydra template:

- ``data``: a :class:`~geogen.data.CropDataModule` (``_target_``);
- ``network``: the network, a pure ``nn.Module`` (``_target_``, nested targets allowed);
- ``method``: the training recipe, a LightningModule that receives the built network, the
  optimizer factories (``optimizer``, ``_partial_: true``) and the network's config;
- ``trainer``, ``callbacks``, ``logger``: Lightning.

The composed config is validated (:func:`validate_train_config`) before anything is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from geogen.config import config_dir

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """A training config that cannot work (missing choice, missing store, bad checkpoint)."""


@dataclass
class TrainResult:
    """What a training run produced."""

    output_dir: Path
    best_checkpoint: str | None
    last_checkpoint: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: list[dict[str, float]] = field(default_factory=list)
    global_rank: int = 0

    @property
    def checkpoint(self) -> str | None:
        """The best checkpoint, else the last one."""
        return self.best_checkpoint or self.last_checkpoint


def available_experiments() -> list[str]:
    """Names of the shipped experiments (``conf/experiment/*.yaml``)."""
    return sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def compose_train_config(
    overrides: Sequence[str] = (), *, output_dir: str | os.PathLike | None = None
) -> DictConfig:
    """Compose ``conf/train.yaml`` with command-line style ``overrides`` (outside ``@hydra.main``).

    Parameters
    ----------
    overrides
        For example ``["experiment=dgmr_tiny", "data.path=crops.zarr"]``.
    output_dir
        Where the run writes (replaces ``${hydra:runtime.output_dir}``); default: a fresh
        ``logs/train/<name>/<timestamp>`` folder as ``geogen-train`` would make.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    if output_dir is None:
        output_dir = cfg.hydra.run.dir
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def _missing(cfg: DictConfig, key: str) -> bool:
    return OmegaConf.is_missing(cfg, key) if key in cfg else True


def validate_train_config(cfg: DictConfig) -> None:
    """Check a composed training config before anything is built.

    Raises
    ------
    TrainingError
        Naming the field and what was expected: no network/method chosen, no
        ``data.path``, a store that does not exist or is incomplete, a ``ckpt_path`` that does
        not exist, a config group entry without ``_target_``.
    """
    experiments = ", ".join(available_experiments()) or "none shipped"
    for group in ("network", "method"):
        node = cfg.get(group)
        if node is None:
            raise TrainingError(
                f"no {group} chosen: pick an experiment (experiment=NAME; shipped: "
                f"{experiments}) or set {group}=... on the command line"
            )
        if "_target_" not in node:
            raise TrainingError(f"{group} config has no _target_: {OmegaConf.to_yaml(node)}")
    for group in ("data", "trainer"):
        if cfg.get(group) is None or "_target_" not in cfg[group]:
            raise TrainingError(f"the {group} config needs a _target_ (see conf/{group}/)")
    if _missing(cfg.data, "path") or cfg.data.path in (None, "", []):
        raise TrainingError(
            "data.path is required: the crop store(s) to train on, e.g. "
            "geogen-train experiment=dgmr_tiny data.path=crops.zarr (geogen-prepare makes them)"
        )
    from geogen.io.store import StoreError, store_info

    paths = cfg.data.path if OmegaConf.is_list(cfg.data.path) else [cfg.data.path]
    for path in paths:
        try:
            store_info(str(path))
        except StoreError as exc:
            raise TrainingError(f"data.path: {exc}") from exc
    if cfg.get("ckpt_path") and not Path(str(cfg.ckpt_path)).is_file():
        raise TrainingError(f"ckpt_path: no checkpoint file at {cfg.ckpt_path}")
    optimizer = cfg.get("optimizer")
    if optimizer is not None:
        nodes = [optimizer] if "_target_" in optimizer else list(optimizer.values())
        for node in nodes:
            if not isinstance(node, DictConfig) or "_target_" not in node:
                raise TrainingError(
                    "optimizer: expected a `_target_` with `_partial_: true`, or a mapping of "
                    f"them by role; got {OmegaConf.to_yaml(optimizer)}"
                )
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if node is not None and "_target_" not in node:
                raise TrainingError(f"{group}.{name} has no _target_")
    if not (cfg.get("train", True) or cfg.get("test", False)):
        raise TrainingError("nothing to do: train=false and test=false")


def resolve_checkpoint_monitor(cfg: DictConfig) -> str | None:
    """Replace ``callbacks.model_checkpoint.monitor: auto`` by the method's validation score.

    The method class (``cfg.method._target_``) names it in :attr:`~geogen.methods.base.
    GeogenMethod.val_monitor` (e.g. ``("val/crps", "min")``); a method without one gets
    ``monitor: null``. Explicit names are left alone. Without a monitor, ``model_checkpoint``
    keeps the latest checkpoints and writes ``last.ckpt`` itself, and the separate
    ``last_checkpoint`` callback is dropped (two unmonitored checkpoint callbacks clash).

    Returns
    -------
    The monitored name (None when no checkpoint selection happens).
    """
    callbacks = cfg.get("callbacks") or {}
    node = callbacks.get("model_checkpoint")
    if node is None:
        return None
    with open_dict(cfg):
        if node.get("monitor") == "auto":
            from hydra.utils import get_class

            target = cfg.method._target_ if cfg.get("method") is not None else None
            choice = getattr(get_class(target), "val_monitor", None) if target else None
            node.monitor, node.mode = choice if choice else (None, node.get("mode", "min"))
        if node.get("monitor") is None and callbacks.get("last_checkpoint") is not None:
            node.save_last = True
            callbacks.last_checkpoint = None
    log.info("checkpoints selected on %s (%s)", node.monitor, node.get("mode"))
    return node.monitor


def _instantiate_all(node: Mapping[str, Any] | None) -> list[Any]:
    from hydra.utils import instantiate

    return [instantiate(sub) for sub in (node or {}).values() if sub is not None]


def build_training(cfg: DictConfig) -> tuple[Any, Any, Any]:
    """Build the datamodule, the method (with its network) and the trainer from ``cfg``.

    Returns
    -------
    tuple
        ``(datamodule, method, trainer)``.
    """
    from hydra.utils import instantiate

    resolve_checkpoint_monitor(cfg)
    datamodule = instantiate(cfg.data)
    network = instantiate(cfg.network)
    optimizer = None
    if cfg.get("optimizer") is not None:
        if "_target_" in cfg.optimizer:
            optimizer = instantiate(cfg.optimizer)
        else:
            optimizer = {role: instantiate(node) for role, node in cfg.optimizer.items()}
    network_config = OmegaConf.to_container(cfg.network, resolve=True)
    # A partial first, so that Hydra does not instantiate the network config's _target_.
    method_factory = instantiate(cfg.method, _partial_=True)
    method = method_factory(network=network, optimizer=optimizer, network_config=network_config)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, method, trainer


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _checkpoint_paths(trainer: Any) -> tuple[str | None, str | None]:
    """``(best, last)``: the best of the checkpoint callback with a monitor, and the latest.

    The latest is a callback's ``last.ckpt`` (``save_last``), else the newest file that a
    callback without a monitor keeps (``conf/callbacks/default.yaml``: ``last_checkpoint``).
    """
    callbacks = list(getattr(trainer, "checkpoint_callbacks", []) or [])
    best = next((cb.best_model_path for cb in callbacks if cb.monitor and cb.best_model_path), None)
    last = next((cb.last_model_path for cb in callbacks if cb.last_model_path), None)
    if last is None:
        latest = [cb.best_model_path for cb in callbacks if not cb.monitor and cb.best_model_path]
        last = max(latest, key=os.path.getmtime, default=None)
    return best, last


def run_train(cfg: DictConfig) -> TrainResult:
    """Validate, build, fit (and test); return the checkpoints and the last metrics.

    Parameters
    ----------
    cfg
        A composed ``train`` config (``geogen-train`` or :func:`compose_train_config`).
    """
    import lightning

    validate_train_config(cfg)
    resolve_checkpoint_monitor(cfg)
    output_dir = Path(str(cfg.output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    lightning.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("flush_denormal", True):
        # Subnormal floats (|x| < 1.2e-38) appear in the activations and optimizer states of
        # briefly trained networks and make CPU arithmetic several times slower: a dgmr_advect_tiny
        # step varied between 2 and 8 s without this, and stayed at 1.9 s with it.
        import torch

        torch.set_flush_denormal(True)
    if cfg.get("torch_threads"):
        # On a machine shared with other work, one thread per training avoids oneDNN's
        # threads waiting for each other (measured: a dgmr_steps_tiny step took 12 s with 2
        # threads and 4 s with 1 on a 2-core machine running two other jobs).
        import torch

        torch.set_num_threads(int(cfg.torch_threads))
    datamodule, method, trainer = build_training(cfg)
    log.info(
        "training %s (%s) on %s; outputs in %s",
        type(method).__name__,
        cfg.network._target_,
        OmegaConf.to_container(cfg.data, resolve=True).get("path"),
        output_dir,
    )
    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(method, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = _scalars(trainer.callback_metrics)
    best, last = _checkpoint_paths(trainer)
    test_metrics: list[dict[str, float]] = []
    if cfg.get("test", False):
        ckpt = best or last or cfg.get("ckpt_path")
        test_metrics = [
            _scalars(m) for m in trainer.test(method, datamodule=datamodule, ckpt_path=ckpt)
        ]
    return TrainResult(
        output_dir=output_dir,
        best_checkpoint=best,
        last_checkpoint=last,
        metrics=metrics,
        test_metrics=test_metrics,
        global_rank=int(trainer.global_rank),
    )
