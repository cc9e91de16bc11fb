"""Checkpoints shipped with geogen (``checkpoints/``; ``geogen/checkpoints`` in a wheel).

``checkpoints/index.json`` lists them by model name::

    {"dgmr_advect": {"file": "dgmr_advect_tiny.ckpt", "sha256": "...", "card": "README.md"}}

``geogen-forecast model=dgmr_advect`` (no ``ckpt=``) forecasts with the shipped checkpoint of
that model; every load checks the file's SHA-256 against the index first, so a corrupted or
replaced file is refused with an error saying so. Any checkpoint can be checked the same way
with ``ckpt_sha256=...``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from geogen.forecasting.interface import ForecastError

#: Index file of the shipped checkpoints.
INDEX = "index.json"
#: Checkpoint entry holding the per-channel scales of int8 weights (``export --int8``).
INT8_SCALES = "int8_scales"


def shipped_dir() -> Path:
    """The folder of the shipped checkpoints (the checkout's ``checkpoints/`` first)."""
    from geogen.config import PACKAGE_DIR, REPO_ROOT

    for candidate in (REPO_ROOT / "checkpoints", PACKAGE_DIR / "checkpoints"):
        if (candidate / INDEX).is_file():
            return candidate
    return REPO_ROOT / "checkpoints"


def shipped_index() -> dict[str, dict[str, Any]]:
    """``{model: {"file", "sha256", ...}}`` of the shipped checkpoints (``{}`` when none)."""
    path = shipped_dir() / INDEX
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ForecastError(f"{path} is not valid JSON: {exc}") from exc


def verify_sha256(path: str | os.PathLike, expected: str) -> str:
    """Return the SHA-256 of ``path``; raise :class:`ForecastError` unless it is ``expected``."""
    from geogen.forecasting.learned import sha256_file

    path = Path(path)
    if not path.is_file():
        raise ForecastError(f"no checkpoint file at {path}")
    actual = sha256_file(path)
    if actual.lower() != str(expected).strip().lower():
        raise ForecastError(
            f"{path}: SHA-256 mismatch, the file is {actual} but {expected} was expected; the "
            "checkpoint is corrupted or not the one asked for (re-fetch it, or pass the right "
            "ckpt_sha256)"
        )
    return actual


def resolve_checkpoint(
    model: str, ckpt: str | os.PathLike | None, ckpt_sha256: str | None = None
) -> Path:
    """The checkpoint to load for ``model``: ``ckpt``, else the shipped one; hash-checked.

    Raises
    ------
    ForecastError
        When no ``ckpt`` is given and none is shipped for ``model``, or a SHA-256 differs.
    """
    if ckpt is None:
        entry = shipped_index().get(model)
        if entry is None:
            shipped = ", ".join(sorted(shipped_index())) or "none"
            raise ForecastError(
                f"model={model} needs a checkpoint: ckpt=PATH (from geogen-train); geogen "
                f"ships checkpoints for: {shipped}"
            )
        path = shipped_dir() / entry["file"]
        verify_sha256(path, ckpt_sha256 or entry["sha256"])
        return path
    if ckpt_sha256:
        verify_sha256(ckpt, ckpt_sha256)
    return Path(ckpt)


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


def export_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    prefix: str = "network.generator.",
    half: bool = True,
    int8: bool = False,
) -> dict[str, Any]:
    """Write a forecasting-only copy of a training checkpoint (weights under ``prefix``).

    Keeps geogen's metadata (network config, training data, versions) and the weights the
    forecaster loads, drops the optimizer states, the discriminators and Lightning's loop
    state; ``half`` stores floating-point weights as float16 (they are loaded back into the
    float32 network); ``int8`` stores each weight of two or more dimensions as int8 with one
    float32 scale per output channel (symmetric, ``scale = max|w| / 127``; the other tensors
    as with ``half``), half the size again; :func:`geogen.forecasting.learned.
    load_geogen_checkpoint` restores float32 weights. The file is written to a temporary path
    and renamed.

    Returns
    -------
    dict
        ``{"file", "sha256", "bytes", "parameters"}`` of the written checkpoint.
    """
    import torch

    from geogen.forecasting.learned import load_geogen_checkpoint, sha256_file
    from geogen.methods.base import CHECKPOINT_KEY

    meta = torch.load(src, map_location="cpu", weights_only=True).get(CHECKPOINT_KEY) or {}
    checkpoint = load_geogen_checkpoint(src, str(meta.get("model")))
    state, scales = {}, {}
    for key, value in checkpoint["state_dict"].items():
        if not key.startswith(prefix):
            continue
        if int8 and value.is_floating_point() and value.ndim >= 2:
            state[key], scales[key] = quantize_int8(value)
        elif (half or int8) and value.is_floating_point():
            state[key] = value.half()
        else:
            state[key] = value
    if not state:
        raise ForecastError(f"{src} holds no weights under {prefix!r}")
    slim = {
        CHECKPOINT_KEY: {**checkpoint[CHECKPOINT_KEY], "exported_from": os.fspath(src)},
        "state_dict": state,
        "global_step": checkpoint.get("global_step"),
        "epoch": checkpoint.get("epoch"),
    }
    if scales:
        slim[INT8_SCALES] = scales
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    torch.save(slim, tmp)
    os.replace(tmp, dst)
    return {
        "file": dst.name,
        "sha256": sha256_file(dst),
        "bytes": dst.stat().st_size,
        "parameters": int(sum(v.numel() for v in state.values())),
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m geogen.forecasting.shipped export SRC DST [--model NAME] [--index]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m geogen.forecasting.shipped")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="slim a training checkpoint for forecasting")
    export.add_argument("src")
    export.add_argument("dst")
    export.add_argument("--float32", action="store_true", help="keep float32 weights")
    export.add_argument(
        "--int8", action="store_true", help="int8 weights, one scale per output channel"
    )
    export.add_argument("--index", action="store_true", help="record it in DST's index.json")
    export.add_argument("--model", default=None, help="index entry name (default: its model)")
    sub.add_parser("list", help="the shipped checkpoints")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(json.dumps(shipped_index(), indent=2))
        return
    entry = export_checkpoint(args.src, args.dst, half=not args.float32, int8=args.int8)
    if args.index:
        import torch

        meta = torch.load(args.dst, map_location="cpu", weights_only=True)["geogen"]
        name = args.model or meta["model"]
        index_path = Path(args.dst).parent / INDEX
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        index[name] = {**index.get(name, {}), **entry, "model": meta["model"]}
        tmp = index_path.with_name(f".{INDEX}.tmp")
        tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, index_path)
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
