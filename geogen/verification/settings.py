"""Scoring settings (``conf/scoring/default.yaml``) and the columns of the tidy score tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geogen.verification.interface import Metric, VerificationError, available_metrics, get_metric

SCORE_COLUMNS = (
    "model",
    "lead_time",
    "metric",
    "threshold",
    "scale",
    "pooling",
    "value",
    "ci_low",
    "ci_high",
    "n_cases",
)
DIAGRAM_COLUMNS = ("model", "lead_time", "diagram", "threshold", "x", "y", "count")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CrpsSettings(_Strict):
    """Pooled CRPS: window widths (pixels), pooling modes, stride (default: the width)."""

    windows: list[int] = Field(default_factory=lambda: [4, 16])
    pooling: list[Literal["avg", "max"]] = Field(default_factory=lambda: ["avg", "max"])
    stride: int | None = Field(default=None, ge=1)


class RankHistogramSettings(_Strict):
    """Rank histogram: rain rate below which values tie (pysteps' ``X_min``)."""

    x_min: float | None = 0.1


class ReliabilitySettings(_Strict):
    """Reliability diagram bins."""

    n_bins: int = Field(default=10, ge=1)
    min_count: int = Field(default=10, ge=0)


class BootstrapSettings(_Strict):
    """Bootstrap over cases: resamples (0 disables), confidence level, seed."""

    n: int = Field(default=1000, ge=0)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    seed: int = 0


class PaperSettings(_Strict):
    """The ``paper`` metric (Leinonen et al. 2020 units): image tile and MS-SSIM window."""

    tile: int = Field(default=128, ge=2)
    sigma: float = Field(default=1.5, gt=0)


class ScoringSettings(_Strict):
    """What to score and how (``conf/scoring/default.yaml``)."""

    metrics: list[str] = Field(
        default_factory=lambda: [
            "categorical",
            "fss",
            "crps",
            "rank_histogram",
            "reliability",
            "spread_skill",
            "continuous",
            "rapsd",
            "spectral_bands",
        ]
    )
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 1, 2, 4, 8, 16])
    fss_scales: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    ensemble: Literal["members", "mean"] = "members"
    crps: CrpsSettings = Field(default_factory=CrpsSettings)
    rank_histogram: RankHistogramSettings = Field(default_factory=RankHistogramSettings)
    reliability: ReliabilitySettings = Field(default_factory=ReliabilitySettings)
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings)
    paper: PaperSettings = Field(default_factory=PaperSettings)
    forecast_nan: Literal["exclude", "raise"] = "exclude"
    seed: int = 0

    def build_metrics(self) -> dict[str, Metric]:
        """The configured metrics, by name."""
        valid = available_metrics()
        unknown = [m for m in self.metrics if m not in valid]
        if unknown:
            raise VerificationError(
                f"unknown metrics {unknown} in scoring.metrics; valid metrics: {', '.join(valid)}"
            )
        settings: dict[str, dict[str, Any]] = {
            "categorical": {"thresholds": self.thresholds, "ensemble": self.ensemble},
            "fss": {
                "thresholds": self.thresholds,
                "scales": self.fss_scales,
                "ensemble": self.ensemble,
            },
            "crps": self.crps.model_dump(),
            "rank_histogram": self.rank_histogram.model_dump(),
            "reliability": {"thresholds": self.thresholds, **self.reliability.model_dump()},
            "paper": self.paper.model_dump(),
        }
        return {name: get_metric(name, **settings.get(name, {})) for name in self.metrics}


def validate_settings(settings: Mapping[str, Any] | ScoringSettings | None) -> ScoringSettings:
    """Validate scoring settings (errors name the bad keys)."""
    if isinstance(settings, ScoringSettings):
        return settings
    try:
        return ScoringSettings(**dict(settings or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"scoring.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise VerificationError(f"invalid scoring settings: {problems}") from None
