"""pysteps reference nowcasts behind geogen's forecast interface.

Three forecasters register themselves here, each configured as in pysteps' own examples
(``plot_extrapolation_nowcast.py``, ``plot_steps_nowcast.py``) and tunable through
``baseline.<name>`` in ``conf/baseline/default.yaml``:

``pysteps_extrapolation``
    Optical flow (:func:`pysteps.motion.get_method`: ``lucaskanade`` (default), ``darts``,
    ``vet``, ``proesmans``) and semi-Lagrangian extrapolation of the last frame
    (deterministic; members are identical).
``pysteps_sprog``
    S-PROG (Seed 2003): the AR(2) cascade of STEPS without noise, deterministic and smooth.
``pysteps_steps``
    STEPS (Bowler, Pierce and Seed 2006; Seed et al. 2013): an ensemble with cascade noise
    (``noise_method``), motion perturbations (``vel_pert_method``), an incremental rain mask
    and probability matching. ``seed`` makes it reproducible.

Processing follows the pysteps examples: rain rates are transformed to dBR with a 0.1 mm/h
threshold and a -15 dBR zero value, no-data pixels are filled with the zero value for motion
estimation and the nowcast, and the result is transformed back (values below the threshold
become 0 mm/h). Pixels with no data at the issue time are NaN in every lead (the radar
domain is kept), and so are pixels advected in from outside the grid (pysteps' default;
``pysteps_extrapolation`` has ``outval: min`` to assume no rain flows in instead).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from geogen.forecasting.interface import Forecaster, ForecastError, register_forecaster

log = logging.getLogger(__name__)

#: Frames each motion method needs by default (pysteps' examples: 3 for Lucas-Kanade and
#: VET, all 10 for DARTS, which requires more than ``N_t + 1 = 5``; 2 for Proesmans).
MOTION_FRAMES: dict[str, int] = {"lucaskanade": 3, "vet": 3, "darts": 10, "proesmans": 2}


class _Settings(BaseModel):
    """Settings shared by the pysteps methods (validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    motion: Literal["lucaskanade", "darts", "vet", "proesmans"] = "lucaskanade"
    motion_frames: int | None = Field(default=None, ge=2)
    motion_kwargs: dict[str, Any] = Field(default_factory=dict)
    rain_threshold: float = Field(default=0.1, gt=0)
    zerovalue_db: float = -15.0
    extrap_method: str = "semilagrangian"
    interp_order: int = Field(default=1, ge=0, le=3)
    kmperpixel: float | None = Field(default=None, gt=0)

    def frames_for_motion(self) -> int:
        return self.motion_frames or MOTION_FRAMES[self.motion]


class _ExtrapolationSettings(_Settings):
    outval: Literal["nan", "min"] = "nan"


class _CascadeSettings(_Settings):
    n_cascade_levels: int = Field(default=6, ge=1)
    ar_order: int = Field(default=2, ge=1)
    decomp_method: str = "fft"
    bandpass_filter_method: Literal["gaussian", "uniform"] = "gaussian"
    probmatching_method: Literal["cdf", "mean"] | None = "cdf"
    conditional: bool = False
    n_workers: int = Field(default=1, ge=1)
    fft_method: str = "numpy"
    domain: Literal["spatial", "spectral"] = "spatial"
    norain_threshold: float = Field(default=0.0, ge=0)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _StepsSettings(_CascadeSettings):
    #: pysteps' ``num_workers``: members run on this many threads; ``None``: every core this
    #: process may use (results do not depend on it; one worker is about 2x slower on 2 cores).
    n_workers: int | None = Field(default=None, ge=1, validate_default=True)

    @field_validator("n_workers")
    @classmethod
    def _default_workers(cls, value: int | None) -> int:
        return available_cores() if value is None else value

    noise_method: Literal["parametric", "nonparametric", "ssft", "nested"] | None = "nonparametric"
    noise_stddev_adj: Literal["auto", "fixed"] | None = None
    vel_pert_method: Literal["bps"] | None = "bps"
    vel_pert_kwargs: dict[str, Any] | None = None
    mask_method: Literal["obs", "sprog", "incremental"] | None = "incremental"
    mask_kwargs: dict[str, Any] | None = None
    noise_kwargs: dict[str, Any] | None = None


def _validate(model: type[BaseModel], name: str, settings: Mapping[str, Any]) -> Any:
    try:
        return model(**dict(settings))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        valid = ", ".join(sorted(model.model_fields))
        raise ForecastError(
            f"invalid settings for {name} (baseline.{name}): {problems}. Valid settings: {valid}"
        ) from None


@contextlib.contextmanager
def _quiet_pysteps() -> Iterator[None]:
    """Send pysteps' progress ``print``s to the debug log instead of stdout."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    text = buffer.getvalue().strip()
    if text:
        log.debug("pysteps: %s", text)


class _PystepsForecaster(Forecaster):
    """Common preprocessing: dBR transform, no-data filling, motion, back-transform."""

    settings: _Settings

    def __init__(self, **settings: Any) -> None:
        self.settings = _validate(self._settings_model(), self.name, settings)
        self.n_context = self._needed_frames()

    @classmethod
    def _settings_model(cls) -> type[_Settings]:
        return _Settings

    def _needed_frames(self) -> int:
        return self.settings.frames_for_motion()

    @property
    def _threshold_db(self) -> float:
        return 10.0 * math.log10(self.settings.rain_threshold)

    def describe(self) -> dict[str, Any]:
        """Model name and its pysteps settings."""
        import pysteps

        return {
            "model": self.name,
            "pysteps_version": getattr(pysteps, "__version__", _pysteps_version()),
            **self.settings.model_dump(),
        }

    # -- the shared steps -----------------------------------------------------------------
    def _to_db(self, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fields in dBR with no-data filled, and the no-data mask of the issue-time frame."""
        if context.ndim != 3:
            raise ForecastError(f"{self.name}: context must be (time, y, x), got {context.shape}")
        if context.shape[0] < self.n_context:
            raise ForecastError(
                f"{self.name} needs {self.n_context} context frames, got {context.shape[0]}"
            )
        frames = np.asarray(context[-self.n_context :], dtype=np.float64)
        no_data = ~np.isfinite(frames[-1])
        if no_data.all():
            raise ForecastError(f"{self.name}: the issue-time frame has no valid pixel")
        s = self.settings
        with np.errstate(divide="ignore", invalid="ignore"):
            db = np.where(frames >= s.rain_threshold, 10.0 * np.log10(frames), s.zerovalue_db)
        db[~np.isfinite(frames)] = s.zerovalue_db
        return db, no_data

    def _motion(self, db: np.ndarray) -> np.ndarray:
        from pysteps import motion

        s = self.settings
        frames = db[-s.frames_for_motion() :]
        with _quiet_pysteps():
            velocity = motion.get_method(s.motion)(frames, **s.motion_kwargs)
        velocity = np.asarray(velocity, dtype=np.float64)
        if not np.all(np.isfinite(velocity)):
            velocity = np.nan_to_num(velocity)
        return velocity

    def _extrap_kwargs(self) -> dict[str, Any]:
        # S-PROG and STEPS pass outval themselves when aligning the past frames; their
        # forecasts keep pysteps' default (NaN for pixels advected in from outside).
        return {"interp_order": self.settings.interp_order}

    def _from_db(
        self, forecast_db: np.ndarray, no_data: np.ndarray, members: int, leads: int
    ) -> np.ndarray:
        out = np.where(
            forecast_db >= self._threshold_db, np.power(10.0, forecast_db / 10.0), 0.0
        ).astype(np.float32)
        out[~np.isfinite(forecast_db)] = np.nan
        out[..., no_data] = np.nan
        if out.ndim == 3:  # deterministic (lead, y, x): repeat for every member
            out = np.broadcast_to(out, (members, *out.shape)).copy()
        if out.shape[:2] != (members, leads):
            raise ForecastError(f"{self.name}: pysteps returned {out.shape}")
        return out

    def _kmperpixel(self) -> float:
        km = self.settings.kmperpixel or self.grid_spacing_km
        if km is None:
            raise ForecastError(
                f"{self.name} needs the pixel size in km (motion perturbations and the "
                "incremental mask use it): give the context x/y coordinates in metres or set "
                f"baseline.{self.name}.kmperpixel"
            )
        return float(km)


def _pysteps_version() -> str:
    from importlib.metadata import version

    return version("pysteps")


@register_forecaster("pysteps_extrapolation")
class PystepsExtrapolation(_PystepsForecaster):
    """Optical flow + semi-Lagrangian extrapolation of the last frame (deterministic).

    Parameters
    ----------
    motion
        pysteps optical-flow method: ``lucaskanade`` (needs OpenCV), ``darts``, ``vet``,
        ``proesmans``.
    motion_frames
        Frames given to the optical flow (default by method, see :data:`MOTION_FRAMES`).
    rain_threshold, zerovalue_db
        dBR transform: rain below ``rain_threshold`` mm/h becomes ``zerovalue_db``.
    interp_order, outval
        Extrapolation interpolation order and the value advected in from outside the grid
        (``nan`` or ``min``: no rain).
    """

    stochastic = False
    settings: _ExtrapolationSettings

    @classmethod
    def _settings_model(cls) -> type[_Settings]:
        return _ExtrapolationSettings

    def predict(
        self,
        context: np.ndarray,
        *,
        leads: int,
        members: int,
        seed: int,
        timestep_minutes: float,
        progress: bool = False,
    ) -> np.ndarray:
        """``(member, lead, y, x)`` mm/h; see :meth:`Forecaster.predict`."""
        from pysteps import extrapolation

        db, no_data = self._to_db(context)
        velocity = self._motion(db)
        with _quiet_pysteps():
            forecast_db = extrapolation.get_method(self.settings.extrap_method)(
                db[-1],
                velocity,
                leads,
                outval=np.nan if self.settings.outval == "nan" else "min",
                **self._extrap_kwargs(),
            )
        return self._from_db(np.asarray(forecast_db), no_data, members, leads)


class _CascadeForecaster(_PystepsForecaster):
    """What S-PROG and STEPS share: the cascade settings passed to pysteps' nowcasts."""

    def _needed_frames(self) -> int:
        return max(self.settings.frames_for_motion(), self.settings.ar_order + 1)

    def _cascade_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to ``nowcasts.sprog`` and ``nowcasts.steps``."""
        s = self.settings
        return {
            "precip_thr": self._threshold_db,
            "norain_thr": s.norain_threshold,
            "n_cascade_levels": s.n_cascade_levels,
            "extrap_method": s.extrap_method,
            "decomp_method": s.decomp_method,
            "bandpass_filter_method": s.bandpass_filter_method,
            "ar_order": s.ar_order,
            "conditional": s.conditional,
            "probmatching_method": s.probmatching_method,
            "num_workers": s.n_workers,
            "fft_method": s.fft_method,
            "domain": s.domain,
            "extrap_kwargs": self._extrap_kwargs(),
        }


@register_forecaster("pysteps_sprog")
class PystepsSprog(_CascadeForecaster):
    """S-PROG: scale-dependent AR(2) cascade extrapolation without noise (deterministic)."""

    stochastic = False
    settings: _CascadeSettings

    @classmethod
    def _settings_model(cls) -> type[_Settings]:
        return _CascadeSettings

    def predict(
        self,
        context: np.ndarray,
        *,
        leads: int,
        members: int,
        seed: int,
        timestep_minutes: float,
        progress: bool = False,
    ) -> np.ndarray:
        """``(member, lead, y, x)`` mm/h; see :meth:`Forecaster.predict`."""
        from pysteps import nowcasts

        s = self.settings
        db, no_data = self._to_db(context)
        velocity = self._motion(db)
        with _quiet_pysteps():
            forecast_db = nowcasts.get_method("sprog")(
                db[-(s.ar_order + 1) :],
                velocity,
                leads,
                **self._cascade_kwargs(),
            )
        return self._from_db(np.asarray(forecast_db), no_data, members, leads)


@register_forecaster("pysteps_steps")
class PystepsSteps(_CascadeForecaster):
    """STEPS ensemble nowcast (stochastic; the same ``seed`` gives the same ensemble).

    Settings (``baseline.pysteps_steps``) are those of :func:`pysteps.nowcasts.steps.forecast`
    with pysteps' recommended defaults: 6 cascade levels, AR(2), ``nonparametric`` noise,
    ``bps`` motion perturbations, ``incremental`` mask, ``cdf`` probability matching.
    ``kmperpixel`` defaults to the pixel size of the context grid.
    """

    stochastic = True
    settings: _StepsSettings

    @classmethod
    def _settings_model(cls) -> type[_Settings]:
        return _StepsSettings

    def predict(
        self,
        context: np.ndarray,
        *,
        leads: int,
        members: int,
        seed: int,
        timestep_minutes: float,
        progress: bool = False,
    ) -> np.ndarray:
        """``(member, lead, y, x)`` mm/h; see :meth:`Forecaster.predict`."""
        from pysteps import nowcasts

        s = self.settings
        needs_km = s.vel_pert_method is not None or s.mask_method == "incremental"
        km = self._kmperpixel() if needs_km else (s.kmperpixel or self.grid_spacing_km)
        db, no_data = self._to_db(context)
        velocity = self._motion(db)
        with _quiet_pysteps():
            forecast_db = nowcasts.get_method("steps")(
                db[-(s.ar_order + 1) :],
                velocity,
                leads,
                n_ens_members=members,
                kmperpixel=km,
                timestep=float(timestep_minutes),
                noise_method=s.noise_method,
                noise_stddev_adj=s.noise_stddev_adj,
                vel_pert_method=s.vel_pert_method,
                mask_method=s.mask_method,
                seed=int(seed),
                noise_kwargs=s.noise_kwargs,
                **self._cascade_kwargs(),
                vel_pert_kwargs=s.vel_pert_kwargs,
                mask_kwargs=s.mask_kwargs,
            )
        return self._from_db(np.asarray(forecast_db), no_data, members, leads)
