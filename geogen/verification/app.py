"""``geogen-score``: the validated config and the run (the Hydra wrapper is in geogen.cli).

Two modes, both ending in :func:`geogen.verification.report.write_report`:

- files: ``forecasts=[a.nc, b.nc]`` (and ``models`` run on the same cases, or on ``times``
  with ``region``) against the observations of ``source``;
- store: ``store=crops.zarr split=test models=[...]``, each case weighted by 1/sample_prob.

``task=downscale`` scores ``geogen-downscale`` files (``forecasts=[...]``) against the
archive's high-resolution frames instead (:mod:`geogen.verification.downscale`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from geogen.forecasting.interface import is_learned
from geogen.verification.interface import VerificationError
from geogen.verification.scoring import ModelSpec, ScoringSettings, score_files, score_store

log = logging.getLogger(__name__)


class PlotSettings(BaseModel):
    """Which plots to draw."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    leads: list[int] = Field(default_factory=lambda: [30, 60, 90])
    members: int = Field(default=3, ge=1)
    gif: bool = True
    dpi: int = Field(default=90, ge=20)


class ScoreConfig(BaseModel):
    """The composed ``geogen-score`` config (``conf/score.yaml``), validated before work."""

    model_config = ConfigDict(extra="ignore")

    task: dict[str, Any] = Field(default_factory=lambda: {"name": "nowcast"})
    forecasts: list[str] = Field(default_factory=list)
    models: list[str | dict[str, Any]] = Field(default_factory=list)
    times: list[str] = Field(default_factory=list)
    region: list[int] | None = None
    leads: int = Field(default=18, ge=1)
    margin: int = Field(default=0, ge=0)
    store: str | None = None
    split: Literal["train", "val", "test"] | None = "test"
    max_cases: int | None = Field(default=None, ge=1)
    weights: Literal["sample_prob", "none"] = "sample_prob"
    members: int = Field(default=20, ge=1)
    seed: int = 0
    device: str = "auto"
    batch_members: int = Field(default=4, ge=1)
    out: str
    source: dict[str, Any] = Field(default_factory=dict)
    baseline: dict[str, Any] = Field(default_factory=dict)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    plots: PlotSettings = Field(default_factory=PlotSettings)
    progress: bool = True

    @property
    def task_name(self) -> str:
        """``nowcast`` or ``downscale`` (``task=...``)."""
        return str(self.task.get("name", "nowcast"))

    @model_validator(mode="after")
    def _inputs(self) -> ScoreConfig:
        if self.task_name not in ("nowcast", "downscale"):
            raise ValueError(f"task must be nowcast or downscale, not {self.task_name!r}")
        if self.task_name == "downscale":
            if self.times:
                raise ValueError("times= is for nowcasts; task=downscale scores files or a store")
            if bool(self.forecasts) == (self.store is not None):
                raise ValueError(
                    "task=downscale: give forecasts=[a.nc,...] (from geogen-downscale source=... "
                    "time=... coarsen=...), or store=pairs.zarr with models=[interp,rainfarm]"
                )
            if self.forecasts and self.models:
                raise ValueError(
                    "task=downscale scores files as they are; models= runs on a store's pairs"
                )
            if self.store is not None and not self.models:
                raise ValueError("task=downscale store=...: give models=[interp,rainfarm,...]")
            return self
        if self.store is None and not self.forecasts and not (self.models and self.times):
            raise ValueError(
                "nothing to score: give forecasts=[a.nc,...], or store=crops.zarr with "
                "models=[...], or models=[...] with times=[...]"
            )
        if self.store is not None and self.forecasts:
            raise ValueError("give either store=... (models run on crops) or forecasts=[...]")
        if self.region is not None and len(self.region) != 4:
            raise ValueError(f"region must be [y0, x0, height, width], got {self.region}")
        return self

    def model_specs(self) -> list[ModelSpec]:
        """Forecasters to run: names get ``baseline.<name>`` settings; dicts give their own."""
        specs = []
        for entry in self.models:
            label = None
            if isinstance(entry, str):
                name, extra = entry, {}
            else:
                extra = dict(entry)
                if "name" not in extra:
                    raise VerificationError(f"model entry {entry} has no 'name'")
                name = str(extra.pop("name"))
                label = extra.pop("label", None)
            kwargs = dict(self.baseline.get(name) or {})
            kwargs.update(extra)
            if "ckpt" in kwargs or is_learned(name):
                kwargs.setdefault("device", self.device)
                kwargs.setdefault("batch_members", self.batch_members)
            specs.append(ModelSpec(name, kwargs, None if label is None else str(label)))
        labels = [spec.display for spec in specs]
        if len(set(labels)) < len(labels):
            raise VerificationError(
                f"two models share a name in models={labels}; give one a label "
                "({name: ..., ckpt: ..., label: my_run})"
            )
        return specs

    def downscaler_specs(self) -> dict[str, dict[str, Any]]:
        """Downscalers to run on a store (task=downscale): name -> keyword arguments."""
        specs: dict[str, dict[str, Any]] = {}
        for entry in self.models:
            extra = {} if isinstance(entry, str) else dict(entry)
            name = entry if isinstance(entry, str) else extra.pop("name", None)
            if name is None:
                raise VerificationError(f"model entry {entry} has no 'name'")
            kwargs = dict(self.baseline.get(str(name)) or {})
            kwargs.update(extra)
            if "ckpt" in kwargs:
                kwargs.setdefault("device", self.device)
                kwargs.setdefault("batch_members", self.batch_members)
            specs[str(name)] = kwargs
        return specs


def validate_config(cfg: Mapping[str, Any]) -> ScoreConfig:
    """Validate a plain ``geogen-score`` config; errors name the bad keys."""
    try:
        return ScoreConfig(**dict(cfg))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(config)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise VerificationError(f"invalid geogen-score config: {problems}") from None


def run(config: ScoreConfig, provenance: Mapping[str, Any] | None = None) -> Path:
    """Score as configured and write the outputs; returns the path of ``report.md``."""
    from geogen.verification.report import write_report

    if config.task_name == "downscale":
        from geogen.verification.downscale import (
            score_downscale_store,
            score_downscaled,
            write_downscale_report,
        )

        if config.store is not None:
            result, example = score_downscale_store(
                config.store,
                config.downscaler_specs(),
                split=config.split,
                settings=config.scoring,
                members=config.members,
                max_cases=config.max_cases,
                seed=config.seed,
                weights=config.weights,
                progress=config.progress,
                plot_members=config.plots.members,
            )
        else:
            result, example = score_downscaled(
                config.forecasts,
                config.source,
                settings=config.scoring,
                progress=config.progress,
                plot_members=config.plots.members,
            )
        result.metadata["provenance"] = dict(provenance or {})
        return write_downscale_report(
            result, config.out, example=example, plot_settings=config.plots.model_dump()
        )
    specs = config.model_specs()
    for spec in specs:  # fail on unknown models or settings before any work
        spec.build()
    if config.store is not None:
        result = score_store(
            config.store,
            specs,
            split=config.split,
            settings=config.scoring,
            members=config.members,
            max_cases=config.max_cases,
            seed=config.seed,
            weights=config.weights,
            progress=config.progress,
            plot_members=config.plots.members,
        )
    else:
        cases = [(t, config.region, config.leads) for t in config.times]
        result = score_files(
            config.forecasts,
            config.source,
            settings=config.scoring,
            models=specs,
            members=config.members,
            seed=config.seed,
            cases=cases,
            margin=config.margin,
            progress=config.progress,
            plot_members=config.plots.members,
        )
    result.metadata["provenance"] = dict(provenance or {})
    plot_settings = config.plots.model_dump()
    plot_settings.pop("members")
    return write_report(result, config.out, plot_settings=plot_settings)
