"""Checkpoints shipped with geogen (``checkpoints/``; ``geogen/checkpoints`` in a wheel).

``checkpoints/index.json`` lists them by model name::

    {"dgmr_advect": {"file": "dgmr_advect_tiny.ckpt", "sha256": "...", "card": "README.md"}}

``geogen-forecast model=dgmr_advect`` (no ``ckpt=``) forecasts with the shipped checkpoint of
that model; every load checks the file's SHA-256 against the index first, so a corrupted or
replaced file is refused with an error saying so. Any checkpoint can be checked the same way
with ``ckpt_sha256=...``. Finding, checking and reading checkpoints is
:mod:`geogen.checkpoint` (shared by forecasters and downscalers); this module writes them
(``python -m geogen.forecasting.shipped export``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from geogen.atomic import atomic_path
from geogen.checkpoint import (
    CHECKPOINT_KEY,
    INDEX,
    INT8_SCALES,
    dequantize_int8,
    quantize_int8,
    read_checkpoint,
    resolve_checkpoint,
    sha256_file,
    shipped_dir,
    shipped_index,
    verify_sha256,
)
from geogen.forecasting.interface import ForecastError

__all__ = [
    "INDEX",
    "INT8_SCALES",
    "dequantize_int8",
    "export_checkpoint",
    "quantize_int8",
    "resolve_checkpoint",
    "shipped_dir",
    "shipped_index",
    "verify_sha256",
]


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
    as with ``half``), half the size again; :func:`geogen.checkpoint.read_checkpoint` restores
    float32 weights. The file is written to a temporary path and renamed.

    Returns
    -------
    dict
        ``{"file", "sha256", "bytes", "parameters"}`` of the written checkpoint.
    """
    import torch

    checkpoint = read_checkpoint(src, error=ForecastError)
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
    with atomic_path(dst) as tmp:
        torch.save(slim, tmp)
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
        task = (meta.get("data") or {}).get("task", "nowcast")
        index[name] = {**index.get(name, {}), **entry, "model": meta["model"], "task": task}
        with atomic_path(index_path) as tmp:
            tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
