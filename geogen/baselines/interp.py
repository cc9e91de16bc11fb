"""Deterministic downscaling by bilinear or bicubic interpolation (a reference)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from geogen.downscaling.interface import DownscaleError, Downscaler, register_downscaler


def upsample_nearest(values: np.ndarray, factor: int) -> np.ndarray:
    """Repeat each pixel of the last two axes ``factor`` times."""
    return np.repeat(np.repeat(values, factor, axis=-2), factor, axis=-1)


@register_downscaler("interp")
class Interpolation(Downscaler):
    """Bilinear or bicubic interpolation of the coarse cell values to the fine cells.

    Coarse values sit at block centres (``align_corners=False``); bicubic results are clipped
    to the input's value range (no negative rain, no overshooting temperatures). NaN input
    cells give NaN output blocks; their neighbours are interpolated as if the NaN were the
    mean of the valid cells.

    Parameters
    ----------
    method
        ``"bilinear"`` or ``"bicubic"``.
    """

    stochastic = False

    def __init__(self, method: Literal["bilinear", "bicubic"] = "bilinear") -> None:
        if method not in ("bilinear", "bicubic"):
            raise DownscaleError(f"interp method must be bilinear or bicubic, not {method!r}")
        self.method = method

    def predict(
        self, lowres: np.ndarray, *, factor: int, members: int, seed: int, progress: bool = False
    ) -> np.ndarray:
        """``(member, time, y*f, x*f)``: the interpolated field repeated for every member."""
        import torch
        import torch.nn.functional as F

        if lowres.ndim != 3:
            raise DownscaleError(f"lowres must be (time, y, x), got shape {lowres.shape}")
        invalid = ~np.isfinite(lowres)
        fill = float(np.nanmean(lowres)) if (~invalid).any() else 0.0
        filled = np.where(invalid, fill, lowres).astype(np.float32)
        x = torch.from_numpy(filled)[:, None]
        y = F.interpolate(x, scale_factor=factor, mode=self.method, align_corners=False)[
            :, 0
        ].numpy()
        if self.method == "bicubic" and (~invalid).any():
            y = np.clip(y, np.nanmin(lowres), np.nanmax(lowres))
        y[upsample_nearest(invalid, factor)] = np.nan
        return np.broadcast_to(y, (members, *y.shape)).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """Name and method."""
        return {"model": self.name, "method": self.method}
