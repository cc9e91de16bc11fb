"""Models over the cases of a crop store: :func:`score_store` and :func:`open_store_cases`.

Each case is weighted by ``1 / sample_prob``; the downscaling scorer shares
:func:`open_store_cases`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from geogen.verification.files import ModelSpec, progress_bar
from geogen.verification.interface import VerificationError
from geogen.verification.scorer import Scorer, ScoreResult
from geogen.verification.settings import ScoringSettings


def open_store_cases(
    store: str,
    split: str,
    *,
    task: str,
    wrong_task: str,
    noun: str,
    max_cases: int | None,
    seed: int,
) -> tuple[Any, Any, np.ndarray, int]:
    """Open a crop store and the sample indices of ``split`` to score.

    Returns the zarr group, its :class:`~geogen.io.store.StoreInfo`, the indices (a seeded,
    sorted subset of ``max_cases`` when given) and the number of samples in the split.

    Raises
    ------
    VerificationError
        When the store cannot be read, is not a ``task`` store (``wrong_task`` says what is
        needed) or has no sample in ``split``.
    """
    from geogen.io import StoreError, open_crop_store, split_indices, store_info

    try:
        group = open_crop_store(store)
        info = store_info(group)
        indices = split_indices(group, split)
    except StoreError as exc:
        raise VerificationError(str(exc)) from None
    if info.task != task:
        raise VerificationError(f"{store} is a {info.task} store; {wrong_task}")
    if len(indices) == 0:
        raise VerificationError(f"{store} has no {split} {noun} ({info.split_counts})")
    available = len(indices)
    if max_cases is not None and max_cases < len(indices):
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(indices, size=max_cases, replace=False))
    return group, info, indices, available


def score_store(
    store: str | os.PathLike,
    models: Sequence[ModelSpec],
    *,
    split: str | None = "test",
    settings: Mapping[str, Any] | ScoringSettings | None = None,
    members: int = 20,
    max_cases: int | None = None,
    seed: int = 0,
    weights: Literal["sample_prob", "none"] = "sample_prob",
    progress: bool = False,
    plot_members: int = 3,
) -> ScoreResult:
    """Run ``models`` on every case of a crop-store split and score them.

    Each crop's context frames (time <= 0, mm/h) are the input, its lead frames the
    observation; the case weight is ``1 / sample_prob`` (DGMR importance sampling) unless
    ``weights="none"``.

    Parameters
    ----------
    store
        A nowcast crop store (``geogen-prepare``).
    models
        Forecasters to run (``persistence``, ``pysteps_steps``, a learned model with ``ckpt``).
    split
        ``train``, ``val``, ``test`` or ``None`` (all).
    members
        Ensemble size of stochastic models (deterministic ones are run with one member).
    max_cases
        Score a seeded random subset of this many cases (all when ``None``).
    seed
        Seed of the subset and of the forecasts (case ``i`` uses ``seed + i``).
    """
    from geogen.forecasting import ForecastError

    if not models:
        raise VerificationError("score_store needs models to run (models=[persistence, ...])")
    group, info, indices, available = open_store_cases(
        store,
        split,
        task="nowcast",
        wrong_task="scoring needs a nowcast store",
        noun="cases",
        max_cases=max_cases,
        seed=seed,
    )
    offsets = np.asarray(group["time"][:], dtype=np.int64)
    context_index = np.flatnonzero(offsets <= 0)
    lead_index = np.flatnonzero(offsets > 0)
    lead_minutes = offsets[lead_index].tolist()
    sample_prob = np.asarray(group["sample_prob"][:], dtype=np.float64)
    rain = np.asarray(group["rain_fraction"][:], dtype=np.float64)
    t0 = np.asarray(group["t0"][:])
    grid = info.attrs.get("grid", {})
    pixel_km = None
    if grid.get("units", "m") in ("m", "metre", "meter", "km") and grid.get("dx"):
        pixel_km = abs(float(grid["dx"])) * (1.0 if grid.get("units") == "km" else 1e-3)
    built = []
    for spec in models:
        try:
            model = spec.build()
        except ForecastError as exc:
            raise VerificationError(str(exc)) from None
        if model.n_context > len(context_index):
            raise VerificationError(
                f"{spec.name} needs {model.n_context} context frames; the store has "
                f"{len(context_index)} (rebuild it with sequence.context={model.n_context})"
            )
        if model.timestep_minutes is not None and not np.isclose(
            model.timestep_minutes, info.timestep_minutes
        ):
            raise VerificationError(
                f"{spec.name} works on {model.timestep_minutes:g}-minute steps; the store has "
                f"{info.timestep_minutes:g}-minute steps"
            )
        model.set_grid_spacing(pixel_km)
        built.append((spec, model))
    example = int(indices[np.nanargmax(np.nan_to_num(rain[indices], nan=-1.0))])
    scorer = Scorer(settings, example_case=_case_id(example, t0), plot_members=plot_members)
    scorer.pixel_size_km = pixel_km
    data = group[info.variable]
    case_t0: dict[str, str] = {}
    for i in progress_bar(list(indices), progress, "crops"):
        i = int(i)
        case_t0[_case_id(i, t0)] = f"{pd.Timestamp(t0[i]):%Y-%m-%dT%H:%M}"
        frames = np.asarray(data[i], dtype=np.float32)
        context = frames[context_index]
        observation = frames[lead_index]
        forecasts = {}
        for spec, model in built:
            n = members if model.stochastic else 1
            try:
                forecasts[spec.display] = model.predict(
                    context[-model.n_context :],
                    leads=len(lead_index),
                    members=n,
                    seed=seed + i,
                    timestep_minutes=info.timestep_minutes,
                )
            except ForecastError as exc:
                raise VerificationError(f"{spec.display} on crop {i}: {exc}") from None
        p = sample_prob[i]
        weight = 1.0 / p if weights == "sample_prob" else 1.0
        if weights == "sample_prob" and not (np.isfinite(p) and p > 0):
            raise VerificationError(f"crop {i} has sample_prob {p}: cannot weight it")
        scorer.add_case(_case_id(i, t0), forecasts, observation, lead_minutes, weight=weight)
    meta = {
        "mode": "store",
        "store": os.fspath(store),
        "split": split,
        "n_cases_available": available,
        "models": [spec.display for spec in models],
        "weights": "1 / sample_prob" if weights == "sample_prob" else "equal",
        "case_t0": case_t0,  # forecast start time of each case (crops of one time overlap)
    }
    return scorer.result(meta)


def _case_id(index: int, t0: np.ndarray) -> str:
    return f"crop {index} ({pd.Timestamp(t0[index]):%Y-%m-%dT%H:%M})"
