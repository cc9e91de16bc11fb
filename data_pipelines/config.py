"""Schema of the ``geogen-prepare`` config, validated before anything is read or written."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    """What a sample is: a nowcasting sequence, or a downscaling pair."""

    name: Literal["nowcast", "downscale"]
    factor: int | None = Field(default=None, gt=1, description="downscale: coarsening factor")


class CropConfig(_Strict):
    """Square crops tiled over the grid."""

    size: int = Field(gt=0)
    stride: int = Field(gt=0)


class SequenceConfig(_Strict):
    """Frames per sample (nowcast: context + lead; downscale: length) and window stride."""

    context: int | None = Field(default=None, ge=1)
    lead: int | None = Field(default=None, ge=1)
    length: int | None = Field(default=None, ge=1)
    stride: int = Field(default=1, ge=1, description="time steps between window starts")


class RejectConfig(_Strict):
    """Quality control of crops."""

    max_nan_fraction: float = Field(ge=0.0, le=1.0)


class SamplingConfig(_Strict):
    """Importance sampling of crops (DGMR) or uniform thinning."""

    method: Literal["auto", "dgmr", "uniform"] = "auto"
    q_min: float = Field(default=2e-4, ge=0.0, le=1.0)
    m: float = Field(default=0.1, ge=0.0)
    probability: float = Field(default=1.0, gt=0.0, le=1.0)
    rain_threshold: float = Field(default=0.1, ge=0.0)


class SplitConfig(_Strict):
    """Time-blocked train/val/test split."""

    method: Literal["blocks", "ranges"] = "blocks"
    block: str = "1D"
    fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )
    guard: str = "2h"
    ranges: dict[str, list[list[str]]] = Field(default_factory=dict)
    seed: int | None = None

    @field_validator("block", "guard")
    @classmethod
    def _duration(cls, value: str) -> str:
        try:
            delta = pd.Timedelta(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a duration such as 1D, 6h, 30min") from exc
        if delta < pd.Timedelta(0):
            raise ValueError(f"{value!r} must not be negative")
        return value

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}; valid: train, val, test")
        if any(v < 0 for v in value.values()) or sum(value.values()) <= 0:
            raise ValueError("fractions must be >= 0 and not all zero")
        return value

    @field_validator("ranges")
    @classmethod
    def _ranges(cls, value: dict[str, list[list[str]]]) -> dict[str, list[list[str]]]:
        unknown = set(value) - {"val", "test"}
        if unknown:
            raise ValueError(
                f"ranges are given for val and test only (the rest is train), not {sorted(unknown)}"
            )
        for name, spans in value.items():
            for span in spans:
                if len(span) != 2:
                    raise ValueError(f"{name} range {span!r} must be [start, end]")
                start, end = pd.Timestamp(span[0]), pd.Timestamp(span[1])
                if end < start:
                    raise ValueError(f"{name} range {span!r} ends before it starts")
        return value


class DaskConfig(_Strict):
    """Where the work runs: a local cluster (default), threads here, or an existing scheduler."""

    address: str | None = None
    connect_timeout: str = "30s"
    n_workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str = "auto"
    processes: bool = False


class PartsConfig(_Strict):
    """Granularity of the parallel, resumable work units."""

    samples: int = Field(default=32, ge=1, description="crops per load task (about)")
    windows: int = Field(default=32, ge=1, description="at most this many windows per load task")
    frames: int = Field(default=8, ge=1, description="frames per statistics task")


class PrepareConfig(_Strict):
    """The whole ``geogen-prepare`` config."""

    source: dict[str, Any]
    task: TaskConfig
    out: str
    start: str | int | None = None
    end: str | int | None = None
    seed: int = 42
    overwrite: bool = False
    on_bad_file: Literal["raise", "skip"] = "raise"
    crop: CropConfig
    sequence: SequenceConfig
    reject: RejectConfig
    sampling: SamplingConfig
    split: SplitConfig
    parts: PartsConfig = Field(default_factory=PartsConfig)
    dask: DaskConfig = Field(default_factory=DaskConfig)
    progress: bool = True
    paths: dict[str, Any] = Field(default_factory=dict)

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: str | int | None) -> str | None:
        # Hydra reads start=201607112200 as an int; keep it as the digits it was.
        return None if value is None else str(value)

    @model_validator(mode="after")
    def _consistent(self) -> PrepareConfig:
        seq, task = self.sequence, self.task
        if task.name == "nowcast":
            if seq.context is None or seq.lead is None:
                raise ValueError("task=nowcast needs sequence.context and sequence.lead")
        else:
            if seq.length is None:
                raise ValueError("task=downscale needs sequence.length")
            if task.factor is None:
                raise ValueError("task=downscale needs task.factor")
            if self.crop.size % task.factor:
                raise ValueError(
                    f"crop.size={self.crop.size} is not a multiple of task.factor={task.factor}"
                )
        if not self.out:
            raise ValueError("out must name the zarr store to write, e.g. out=crops.zarr")
        return self

    @property
    def length(self) -> int:
        """Frames per sample."""
        if self.task.name == "nowcast":
            return int(self.sequence.context) + int(self.sequence.lead)  # type: ignore[arg-type]
        return int(self.sequence.length)  # type: ignore[arg-type]


def validate_prepare_config(cfg: dict[str, Any]) -> PrepareConfig:
    """Validate a resolved prepare config; errors list each bad key and what was expected."""
    try:
        return PrepareConfig.model_validate(cfg)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '(config)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ValueError("invalid geogen-prepare config:\n" + "\n".join(lines)) from None
