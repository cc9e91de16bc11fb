"""What every geogen training recipe shares.

The network handed in, the data it was trained on, provenance in checkpoints, exact resume,
and GPU niceties (channels-last, ``torch.compile``).

A *method* is a :class:`lightning.LightningModule` that trains a *network* (a pure
:class:`torch.nn.Module` from :mod:`geogen.models`, built from its own config and passed in) on
batches of a :class:`~geogen.data.CropDataModule`. The network never sees Lightning, Hydra or
files; the method orchestrates.

Checkpoints of a method carry, besides Lightning's state, a ``"geogen"`` entry::

    {"format": 1, "model": "dgmr", "method": "geogen.methods.dgmr.DGMRMethod",
     "network_config": {"_target_": ..., ...},        # rebuilds the network
     "data": {"task": "nowcast", "timestep_minutes": 5.0, "context": 4, "lead": 18,
              "crop_size": 256, "variable": "precip", "units": "mm/h",
              "transform": {"name": "identity"}, "nan_fill": 0.0, "store": "crops.zarr"},
     "versions": {"geogen": ..., "torch": ..., "lightning": ...}}

so that a forecaster can rebuild the network, map rain rates to model space and back, and
refuse a context of another time step. Everything in a checkpoint is plain data or tensors,
so ``torch.load(path, weights_only=True)`` reads it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import lightning
import numpy as np
import torch
from torch import nn

from geogen.checkpoint import CHECKPOINT_KEY  # geogen's own entry in a Lightning checkpoint
from geogen.data.dataset import as_store_paths
from geogen.data.transforms import Transform, get_transform

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
#: Key of the random number generator states saved for exact resume.
RNG_KEY = "geogen_rng_states"

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def plain(value: Any) -> Any:
    """``value`` (OmegaConf containers included) as plain dicts, lists and scalars."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def rng_states() -> dict[str, Any]:
    """The states of python's, numpy's and torch's (CPU and CUDA) generators, as tensors/ints."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the legacy global state
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = states["numpy"]
    np.random.set_state(  # noqa: NPY002 - the legacy global state
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _advection_spec(advection: Any) -> dict[str, Any] | None:
    """The advection settings of a data module as plain data (``None``: no advection)."""
    if advection is None or advection is False:
        return None
    settings = {} if advection is True else dict(plain(advection))
    settings.pop("cache_dir", None)
    settings.pop("progress", None)
    from geogen.data.advection import advection_settings

    return advection_settings(settings)


def _steps_spec(steps: Any, info: Any) -> dict[str, Any] | None:
    """The STEPS conditioning of a data module as plain data (``None``: none).

    ``{"members", "seed", "settings"}`` with the ``pysteps_steps`` settings resolved (and the
    store's pixel size as ``kmperpixel`` when not set), so a forecaster runs the same STEPS.
    """
    if steps is None or steps is False:
        return None
    spec = {} if steps is True else dict(plain(steps))
    for key in ("cache_dir", "progress", "n_workers"):
        spec.pop(key, None)
    members = int(spec.pop("members", 4))
    seed = int(spec.pop("seed", 0))
    from geogen.data.steps import steps_settings, store_pixel_km

    settings = steps_settings(spec)
    if settings.get("kmperpixel") is None:
        settings["kmperpixel"] = store_pixel_km(getattr(info, "attrs", {}) or {})
    return {"members": members, "seed": seed, "settings": settings}


class GeogenMethod(lightning.LightningModule):
    """Base of geogen's training recipes (LightningModules).

    Parameters
    ----------
    network
        The network to train (a pure ``nn.Module``; for a GAN it holds the generator and the
        discriminator).
    optimizer
        An optimizer factory (``functools.partial`` of a ``torch.optim`` class, as Hydra's
        ``_partial_: true`` builds) or a mapping of them by role (``{"generator": ...,
        "discriminator": ...}``); subclasses say which roles they need.
    network_config
        The config the network was built from (with ``_target_``); stored in checkpoints so
        that forecasters can rebuild the network.
    compile
        Compile the network's submodules with :func:`torch.compile` (in place, so checkpoint
        keys do not change).
    channels_last
        Use the channels-last memory layout: ``"auto"`` on CUDA only, or ``True``/``False``.

    Notes
    -----
    Subclasses set :attr:`model_name` (the name of the forecaster that reads their checkpoints)
    and :attr:`val_monitor` (the validation score that chooses the weights), and may override
    :meth:`check_data` to refuse stores they cannot train on.
    """

    model_name: ClassVar[str] = ""
    #: ``(logged name, "min" | "max")``: the validation score that ``ModelCheckpoint(monitor=
    #: "auto")`` (conf/callbacks/default.yaml) selects the weights on; None: no selection.
    val_monitor: ClassVar[tuple[str, str] | None] = None

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerFactory | Mapping[str, OptimizerFactory] | None = None,
        network_config: Mapping[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool | str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be true, false or 'auto', got {channels_last!r}")
        self.network = network
        self.optimizer_factories = optimizer
        self.network_config = plain(network_config) if network_config is not None else None
        self.compile_network = bool(compile)
        self.channels_last_setting = channels_last
        self.data_info: dict[str, Any] = {}
        self._pending_rng: Mapping[str, Any] | None = None
        self._compiled = False

    # -- the data the method trains on ---------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Record what the datamodule provides (store, transform) and check it fits."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "info"):
            self.data_info = self.describe_data(datamodule)
        if self.data_info:
            self.check_data(self.data_info)

    @staticmethod
    def describe_data(datamodule: Any) -> dict[str, Any]:
        """The description of the training data stored in checkpoints (see module docstring)."""
        info = datamodule.info
        transform = datamodule.transform
        hparams = getattr(datamodule, "hparams", {})
        return {
            "task": info.task,
            "variable": info.variable,
            "units": info.attrs.get("variable_attrs", {}).get("units"),
            "timestep_minutes": float(info.timestep_minutes),
            "context": info.context,
            "lead": info.lead,
            "factor": info.factor,
            "crop_size": int(info.crop_size),
            "source": info.source,
            "transform": {"name": transform.name, **transform.params},
            "nan_fill": float(hparams.get("nan_fill", 0.0)),
            "store": str(info.path),
            "stores": [str(p) for p in as_store_paths(hparams.get("path") or info.path)],
            "advection": _advection_spec(hparams.get("advection")),
            "steps": _steps_spec(hparams.get("steps"), info),
        }

    def check_data(self, data: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` if the method cannot train on ``data`` (:meth:`describe_data`)."""

    @property
    def transform(self) -> Transform:
        """The value transform of the training data (``inverse`` maps model space to units)."""
        spec = dict(self.data_info.get("transform") or {"name": "identity"})
        return get_transform(spec.pop("name"), **spec)

    # -- optimizers ---------------------------------------------------------------------------
    def build_optimizer(self, role: str | None, parameters: Any) -> torch.optim.Optimizer:
        """The optimizer for ``role`` (or the single factory when ``role`` is None)."""
        factories = self.optimizer_factories
        if factories is None:
            raise ValueError(f"{type(self).__name__} needs an optimizer config (optimizer=...)")
        if isinstance(factories, Mapping):
            if role not in factories:
                raise ValueError(
                    f"{type(self).__name__} needs an optimizer for {role!r}; the optimizer "
                    f"config has {', '.join(map(str, factories)) or 'none'}"
                )
            factory = factories[role]
        else:
            factory = factories
        return factory(parameters)

    # -- shared step helpers -----------------------------------------------------------------
    def require_task(self, data: Mapping[str, Any], task: str) -> None:
        """Raise unless ``data`` describes a store prepared for ``task``."""
        if data.get("task") != task:
            raise ValueError(
                f"{type(self).__name__} trains on {task} crop stores; {data.get('store')} is a "
                f"{data.get('task')!r} store (geogen-prepare task={task})"
            )

    def eval_generator(self, batch_idx: int, device: torch.device | None = None) -> torch.Generator:
        """The generator of evaluation batch ``batch_idx``, seeded from ``hparams.val_seed``."""
        generator = torch.Generator(device=self.device if device is None else device)
        generator.manual_seed(int(self.hparams.val_seed) * 1_000_003 + batch_idx)
        return generator

    def log_stage(
        self,
        stage: str,
        metrics: Mapping[str, torch.Tensor],
        batch_size: int,
        prog_bar: bool = False,
    ) -> None:
        """Log ``metrics`` as ``{stage}/{name}`` (synchronised across devices)."""
        self.log_dict(
            {f"{stage}/{key}": value for key, value in metrics.items()},
            batch_size=batch_size,
            sync_dist=True,
            prog_bar=prog_bar,
        )

    # -- GPU niceties -------------------------------------------------------------------------
    @property
    def use_channels_last(self) -> bool:
        """Whether tensors use the channels-last layout on this device."""
        if self.channels_last_setting == "auto":
            return self.device.type == "cuda"
        return bool(self.channels_last_setting)

    def on_fit_start(self) -> None:
        """Switch to channels-last and compile, once the network is on its device."""
        if self.use_channels_last:
            self.network.to(memory_format=torch.channels_last)
        if self.compile_network and not self._compiled:
            for module in self.network.children():
                module.compile()
            self._compiled = True

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, Any]:
        """The ``"geogen"`` entry of checkpoints (see module docstring)."""
        import lightning as L

        from geogen import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model_name,
            "method": f"{type(self).__module__}.{type(self).__qualname__}",
            "network_config": self.network_config,
            "data": dict(self.data_info),
            "versions": {
                "geogen": __version__,
                "torch": str(torch.__version__),
                "lightning": str(L.__version__),
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add geogen's metadata and the random number generator states."""
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_metadata()
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the data description and, when resuming a fit, the RNG states.

        The random streams continue where the checkpoint left them, so the next batch, its
        random draws and the data order are those of an uninterrupted run (for checkpoints
        written at the end of an epoch; a mid-epoch checkpoint restarts the epoch's data order).
        """
        meta = checkpoint.get(CHECKPOINT_KEY) or {}
        if meta.get("data"):
            self.data_info = dict(meta["data"])
        states = checkpoint.get(RNG_KEY)
        if states is not None and self._trainer is not None:
            set_rng_states(states)

    def on_validation_start(self) -> None:
        """Keep the sanity check from consuming the training's random streams."""
        if self._trainer is not None and self.trainer.sanity_checking:
            self._pending_rng = rng_states()

    def on_validation_end(self) -> None:
        """Restore the random streams saved before the sanity check."""
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None


class StagedEvaluation:
    """Mixin: ``validation_step`` and ``test_step`` are :meth:`_evaluate` on their stage."""

    def _evaluate(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        """Compute and log the metrics of ``batch`` under ``stage`` (``"val"`` or ``"test"``)."""
        raise NotImplementedError

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Metrics of a validation batch (seeded, see :meth:`_evaluate`)."""
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """As :meth:`validation_step`, on the test split."""
        self._evaluate(batch, batch_idx, "test")


class NowcastMethod(GeogenMethod):
    """A method whose network forecasts lead frames from context frames.

    Subclasses implement :meth:`sample`; callbacks (PNG panels) and validation use it.
    """

    def check_data(self, data: Mapping[str, Any]) -> None:
        """Nowcasting needs a nowcast store."""
        self.require_task(data, "nowcast")

    def sample(
        self,
        context: torch.Tensor,
        members: int = 1,
        leads: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Forecast ``members`` samples for each example.

        Parameters
        ----------
        context
            ``(batch, context, y, x)`` in model space.
        members
            Samples per example.
        leads
            Lead frames (default: the lead of the training data).
        generator
            Random generator for the samples (default: torch's global one).

        Returns
        -------
        torch.Tensor
            ``(batch, members, lead, y, x)`` in model space.
        """
        raise NotImplementedError
