"""geogen checkpoints, from file to the pieces a predictor is built from (no Lightning).

One path serves every checkpoint-backed method, forecasters and downscalers alike::

    from geogen.checkpoint import Checkpoint

    checkpoint = Checkpoint.load("dgmr_advect")                    # the shipped one
    checkpoint = Checkpoint.load("dgmr", "last.ckpt")              # one of geogen-train's
    generator = checkpoint.build("generator", "network.generator.")
    transform = checkpoint.transform()

:meth:`Checkpoint.load` resolves the file (``ckpt``, else the checkpoint shipped for that
model in ``checkpoints/index.json``), checks its SHA-256 (always for shipped files; for any
file with ``ckpt_sha256=``), reads it with ``torch.load(weights_only=True)``, restores int8
weights to float32 and checks that it holds the asked model, trained for the asked task.

The shipped index lists checkpoints by registered name::

    {"dgmr_advect": {"file": "dgmr_advect_tiny.ckpt", "sha256": "...", "model": "dgmr_advect"},
     "downscale_gan": {"file": "downscale_gan_tiny.ckpt", "sha256": "...",
                       "model": "downscale_gan", "task": "downscale"}}

(``task`` defaults to ``nowcast``). This module imports only the standard library at import
time, and torch and Hydra's ``instantiate`` when a checkpoint is read or built.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Entry of a checkpoint holding geogen's metadata (model, network config, training data).
CHECKPOINT_KEY = "geogen"
#: Checkpoint entry holding the per-channel scales of int8 weights (``export --int8``).
INT8_SCALES = "int8_scales"
#: Index file of the shipped checkpoints.
INDEX = "index.json"
#: Environment variable naming another folder of shipped checkpoints (with an ``index.json``).
CHECKPOINTS_ENV = "GEOGEN_CHECKPOINTS"
#: Tasks a checkpoint can be trained for, and the command that uses each.
COMMANDS = {"nowcast": "geogen-forecast", "downscale": "geogen-downscale"}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, corrupted or of another model or task."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (checkpoint provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(
    path: str | os.PathLike, expected: str, error: type[Exception] = CheckpointError
) -> str:
    """Return the SHA-256 of ``path``; raise ``error`` unless it is ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"no checkpoint file at {path}")
    actual = sha256_file(path)
    if actual.lower() != str(expected).strip().lower():
        raise error(
            f"{path}: SHA-256 mismatch, the file is {actual} but {expected} was expected; the "
            "checkpoint is corrupted or not the one asked for (re-fetch it, or pass the right "
            "ckpt_sha256)"
        )
    return actual


# -- the shipped checkpoints --------------------------------------------------------------------
def shipped_dir() -> Path:
    """The folder of the shipped checkpoints.

    ``$GEOGEN_CHECKPOINTS`` when set (a folder with its own ``index.json``), else the
    checkout's ``checkpoints/``, else the one packaged in the wheel.
    """
    from geogen.config import PACKAGE_DIR, REPO_ROOT

    if os.environ.get(CHECKPOINTS_ENV):
        return Path(os.environ[CHECKPOINTS_ENV])
    for candidate in (REPO_ROOT / "checkpoints", PACKAGE_DIR / "checkpoints"):
        if (candidate / INDEX).is_file():
            return candidate
    return REPO_ROOT / "checkpoints"


def shipped_index(
    folder: str | os.PathLike | None = None, error: type[Exception] = CheckpointError
) -> dict[str, dict[str, Any]]:
    """``{name: {"file", "sha256", ...}}`` of the checkpoints in ``folder`` (``{}`` when none).

    ``folder`` defaults to :func:`shipped_dir`.
    """
    path = Path(folder if folder is not None else shipped_dir()) / INDEX
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc


def shipped_names(task: str, folder: str | os.PathLike | None = None) -> list[str]:
    """Names with a shipped checkpoint for ``task``."""
    return sorted(
        name
        for name, entry in shipped_index(folder).items()
        if entry.get("task", "nowcast") == task
    )


def resolve_checkpoint(
    name: str,
    ckpt: str | os.PathLike | None,
    ckpt_sha256: str | None = None,
    *,
    task: str = "nowcast",
    folder: str | os.PathLike | None = None,
    error: type[Exception] = CheckpointError,
) -> Path:
    """The checkpoint to load for ``name``: ``ckpt``, else the shipped one; hash-checked.

    Parameters
    ----------
    name
        Registered name of the method (the key of the shipped index).
    ckpt
        A checkpoint file, or ``None`` for the one shipped for ``name`` and ``task``.
    ckpt_sha256
        Expected SHA-256 of the file (shipped files are always checked against the index).
    task
        ``"nowcast"`` or ``"downscale"``.
    folder
        Folder of the shipped checkpoints and their ``index.json`` (default:
        :func:`shipped_dir`).
    error
        Exception class of the messages.

    Raises
    ------
    error
        When no ``ckpt`` is given and none is shipped, or a SHA-256 differs.
    """
    if ckpt is None:
        folder = Path(folder if folder is not None else shipped_dir())
        entry = shipped_index(folder, error).get(name)
        if entry is None or entry.get("task", "nowcast") != task:
            shipped = ", ".join(shipped_names(task, folder)) or "none"
            command = COMMANDS.get(task, "geogen")
            raise error(
                f"model={name} needs a checkpoint: ckpt=PATH (from geogen-train); geogen "
                f"ships {command} checkpoints for: {shipped}"
            )
        path = folder / entry["file"]
        verify_sha256(path, ckpt_sha256 or entry["sha256"], error)
        return path
    if ckpt_sha256:
        verify_sha256(ckpt, ckpt_sha256, error)
    return Path(ckpt)


# -- int8 weights ------------------------------------------------------------------------------
def quantize_int8(weight: Any) -> tuple[Any, Any]:
    """``(int8 weight, float32 scales)`` with ``weight ~ q * scale``.

    One symmetric scale per slice of the first dimension (a convolution's output channel).
    """
    import torch

    flat = weight.detach().float().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale


def dequantize_int8(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with its int8 weights (``INT8_SCALES``) restored to float32, in place."""
    scales = checkpoint.pop(INT8_SCALES, None) or {}
    state = checkpoint["state_dict"]
    for key, scale in scales.items():
        q = state[key]
        state[key] = q.float() * scale.float().reshape(-1, *([1] * (q.ndim - 1)))
    return checkpoint


# -- reading -----------------------------------------------------------------------------------
def read_checkpoint(
    path: str | os.PathLike,
    expected_model: str | None = None,
    error: type[Exception] = CheckpointError,
) -> dict[str, Any]:
    """Read a geogen checkpoint (int8 weights restored) and check that it holds ``expected_model``.

    Raises
    ------
    error
        When the file is missing or unreadable, is not a geogen checkpoint, or holds another
        model.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"no checkpoint file at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"cannot read the checkpoint {path}: {exc}") from exc
    meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not meta:
        raise error(
            f"{path} is not a geogen checkpoint (no {CHECKPOINT_KEY!r} entry; write one with "
            "geogen-train)"
        )
    if expected_model is not None and meta.get("model") != expected_model:
        raise error(
            f"{path} is a checkpoint of model {meta.get('model')!r}, not {expected_model!r}; "
            f"use model={meta.get('model')}"
        )
    for key in ("network_config", "data"):
        if not meta.get(key):
            raise error(f"{path}: the checkpoint's {CHECKPOINT_KEY}.{key} is empty")
    return dequantize_int8(checkpoint)


@dataclass
class Checkpoint:
    """A read geogen checkpoint: where it came from, its metadata and its weights.

    Attributes
    ----------
    path
        The file.
    sha256
        Its SHA-256.
    contents
        What ``torch.load`` read (int8 weights restored to float32).
    error
        Exception class of the messages about this checkpoint.
    """

    path: Path
    sha256: str
    contents: dict[str, Any]
    error: type[Exception] = CheckpointError

    @classmethod
    def load(
        cls,
        name: str,
        ckpt: str | os.PathLike | None = None,
        ckpt_sha256: str | None = None,
        *,
        model: str | None = None,
        task: str = "nowcast",
        folder: str | os.PathLike | None = None,
        error: type[Exception] = CheckpointError,
    ) -> Checkpoint:
        """Resolve (shipped or ``ckpt``), hash-check, read and check a checkpoint.

        Parameters
        ----------
        name
            Registered name of the method (the key of the shipped index).
        ckpt, ckpt_sha256, folder
            As :func:`resolve_checkpoint`.
        model
            ``model`` of the checkpoint's metadata (default: ``name``).
        task
            The task it must have been trained for (``data.task``; checkpoints without one
            are nowcasting checkpoints).
        error
            Exception class of the messages (:class:`~geogen.forecasting.ForecastError`, ...).
        """
        path = resolve_checkpoint(name, ckpt, ckpt_sha256, task=task, folder=folder, error=error)
        model = model or name
        contents = read_checkpoint(path, model, error)
        found = contents[CHECKPOINT_KEY]["data"].get("task", "nowcast")
        if found != task:
            raise error(
                f"{path} is a {model} checkpoint trained for {found!r}, not {task!r} "
                f"(use {COMMANDS.get(found, 'geogen')} model={name})"
            )
        return cls(path, sha256_file(path), contents, error)

    @property
    def meta(self) -> dict[str, Any]:
        """Geogen's metadata: ``model``, ``network_config``, ``data``, ``versions``, ..."""
        return self.contents[CHECKPOINT_KEY]

    @property
    def data(self) -> dict[str, Any]:
        """The training data description (store, transform, time step, context, task, ...)."""
        return dict(self.meta["data"])

    @property
    def hyper_parameters(self) -> dict[str, Any]:
        """The training method's hyper-parameters (``{}`` when not stored)."""
        return dict(self.contents.get("hyper_parameters") or {})

    def network_config(self, part: str | None = None) -> Any:
        """The network config, or its sub-config ``part`` (``"generator"``)."""
        config = self.meta["network_config"]
        return config if part is None else (config or {}).get(part)

    def build(self, part: str | None, prefix: str) -> Any:
        """Instantiate the network config (or its ``part``) and load the weights under ``prefix``.

        Raises
        ------
        error
            When the config cannot be built or the weights do not fit it.
        """
        from hydra.utils import instantiate

        config = self.network_config(part)
        if not isinstance(config, Mapping) or "_target_" not in config:
            raise self.error(f"{self.path}: the network config has nothing to build at {prefix!r}")
        try:
            module = instantiate(config)
        except Exception as exc:
            raise self.error(f"{self.path}: cannot build the network: {exc}") from exc
        state = {
            key[len(prefix) :]: value
            for key, value in self.contents["state_dict"].items()
            if key.startswith(prefix)
        }
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise self.error(
                f"{self.path}: the weights do not fit the network config stored with them: {exc}"
            ) from exc
        return module.eval()

    def transform(self) -> Any:
        """The training transform (model space) of the checkpoint's data."""
        from geogen.data.transforms import get_transform

        spec = dict(self.data.get("transform") or {"name": "identity"})
        return get_transform(spec.pop("name"), **spec)

    def describe(self) -> dict[str, Any]:
        """Provenance: checkpoint path and SHA-256, network config, training data, versions."""
        return {
            "checkpoint": str(self.path),
            "checkpoint_sha256": self.sha256,
            "network_config": self.meta.get("network_config"),
            "training_data": self.data,
            "versions": self.meta.get("versions"),
        }
