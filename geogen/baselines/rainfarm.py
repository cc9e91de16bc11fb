"""RainFARM stochastic downscaling of rain (pysteps.downscaling.rainfarm), as a reference."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from geogen.baselines.interp import upsample_nearest
from geogen.downscaling.interface import DownscaleError, Downscaler, register_downscaler


@register_downscaler("rainfarm")
class RainFARM(Downscaler):
    """pysteps' RainFARM (Rebora et al. 2006; spectral fusion of D'Onofrio et al. 2014).

    Each frame is downscaled on its own (pysteps implements the spatial algorithm only), with
    the spectral slope estimated from the frame unless ``alpha`` is given; block means of the
    coarse field are preserved exactly without smoothing kernel. Members differ by the seed of
    the noise; pysteps draws from NumPy's global random state, which is set per member and
    restored afterwards.

    Parameters
    ----------
    alpha
        Spectral slope; ``None`` estimates it per frame.
    kernel_type
        ``None`` (no smoothing), ``"gaussian"``, ``"uniform"`` or ``"tophat"``.
    spectral_fusion
        Merge the coarse spectrum with the noise's (D'Onofrio et al. 2014).
    threshold
        Rain rates below it (mm/h) are set to zero in the output.
    """

    stochastic = True
    precipitation_only = True

    def __init__(
        self,
        alpha: float | None = None,
        kernel_type: str | None = None,
        spectral_fusion: bool = False,
        threshold: float | None = None,
    ) -> None:
        self.alpha = alpha
        self.kernel_type = kernel_type
        self.spectral_fusion = spectral_fusion
        self.threshold = threshold

    def predict(
        self, lowres: np.ndarray, *, factor: int, members: int, seed: int, progress: bool = False
    ) -> np.ndarray:
        """``(member, time, y*f, x*f)`` rain rates (mm/h)."""
        from geogen.io.radar import import_pysteps

        rainfarm = import_pysteps().downscaling.rainfarm
        if lowres.ndim != 3:
            raise DownscaleError(f"lowres must be (time, y, x), got shape {lowres.shape}")
        if np.nanmin(lowres) < 0:
            raise DownscaleError(
                "RainFARM downscales rain rates, but the input has negative values "
                "(a temperature field? use model=interp or a learned model)"
            )
        invalid = ~np.isfinite(lowres)
        filled = np.where(invalid, 0.0, lowres).astype(np.float64)
        t, ny, nx = lowres.shape
        out = np.empty((members, t, ny * factor, nx * factor), dtype=np.float32)
        # pysteps' RainFARM draws from NumPy's legacy global state: seed it, then restore it.
        state = np.random.get_state()  # noqa: NPY002
        seeds = np.random.SeedSequence(seed).generate_state(members)
        try:
            steps = tqdm(total=members * t, desc="rainfarm", disable=not progress)
            for m in range(members):
                np.random.seed(int(seeds[m]))  # noqa: NPY002
                for k in range(t):
                    if not filled[k].any():  # dry frame: RainFARM's slope fit needs rain
                        out[m, k] = 0.0
                    else:
                        out[m, k] = rainfarm.downscale(
                            filled[k],
                            int(factor),
                            alpha=self.alpha,
                            threshold=self.threshold,
                            kernel_type=self.kernel_type,
                            spectral_fusion=self.spectral_fusion,
                        )
                    steps.update(1)
            steps.close()
        finally:
            np.random.set_state(state)  # noqa: NPY002
        out[:, upsample_nearest(invalid, factor)] = np.nan
        return out

    def describe(self) -> dict[str, Any]:
        """Name and settings."""
        return {
            "model": self.name,
            "alpha": self.alpha,
            "kernel_type": self.kernel_type,
            "spectral_fusion": self.spectral_fusion,
            "threshold": self.threshold,
        }
