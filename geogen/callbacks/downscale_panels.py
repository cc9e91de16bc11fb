"""PNG panels of downscaling during training: low-res input, high-res truth and samples."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch

from geogen.callbacks.panels import NowcastPanels, finish_panel

log = logging.getLogger(__name__)


def plot_downscale_panel(
    lowres: np.ndarray,
    truth: np.ndarray,
    samples: np.ndarray,
    path: str | os.PathLike,
    *,
    frames: list[int],
    title: str = "",
    units: str = "mm/h",
) -> Path:
    """Save one panel: rows low-res input, truth, one row per sample; columns ``frames``.

    Parameters
    ----------
    lowres
        ``(time, h, w)`` in physical units.
    truth
        ``(time, H, W)`` in physical units.
    samples
        ``(members, time, H, W)`` in physical units.
    path
        PNG file to write (temp-then-rename).
    frames
        Time indices shown (0-based).
    title, units
        Figure title and colour bar label. Rain units (``mm/h``) use a log colour scale from
        0.1 to 100, anything else a linear one over the range of the truth.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, Normalize

    if lowres.ndim != 3 or truth.ndim != 3 or samples.ndim != 4:
        raise ValueError(
            f"expected lowres (T, h, w), truth (T, H, W), samples (M, T, H, W); got "
            f"{lowres.shape}, {truth.shape}, {samples.shape}"
        )
    rain = units.strip() in ("mm/h", "mm h-1")
    if rain:
        norm = LogNorm(vmin=0.1, vmax=100.0)
    else:
        finite = truth[np.isfinite(truth)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = Normalize(vmin=low, vmax=max(high, low + 1e-6))
    cmap = matplotlib.colormaps["viridis"].with_extremes(under="white", bad="lightgrey")
    rows, columns = 2 + samples.shape[0], len(frames)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns + 0.8, 1.6 * rows), squeeze=False
    )
    image = None
    for ax in axes.ravel():
        ax.set_axis_off()

    def show(ax: Any, field: np.ndarray, label: str) -> None:
        nonlocal image
        shown = np.where(field < 0.1, 0.01, field) if rain else field
        image = ax.imshow(shown, norm=norm, cmap=cmap)
        ax.set_title(label, fontsize=7)

    for col, t in enumerate(frames):
        show(axes[0, col], lowres[t], f"low-res t{t}")
        show(axes[1, col], truth[t], f"truth t{t}")
        for member in range(samples.shape[0]):
            show(axes[2 + member, col], samples[member, t], f"sample {member + 1}")
    return finish_panel(fig, axes, image, path, title=title, units=units)


class DownscalePanels(NowcastPanels):
    """:class:`~geogen.callbacks.NowcastPanels` for downscaling methods.

    Same parameters (``leads`` is the number of time steps shown); the example's ``lowres``
    is downscaled with the method's ``sample(lowres, members, generator)``.
    """

    input_key = "lowres"

    def sample(
        self,
        pl_module: lightning.LightningModule,
        inputs: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The method's samples ``(1, members, time, Y, X)`` of the example (model space)."""
        return pl_module.sample(inputs, members=self.samples, generator=generator)

    def plot(
        self,
        fields: list[np.ndarray],
        path: Path,
        shown: list[int],
        data: dict[str, Any],
        *,
        title: str,
    ) -> Path:
        """Save the panel of ``fields`` (low-res, truth, samples in physical units) to ``path``."""
        return plot_downscale_panel(
            *fields, path, frames=shown, title=title, units=data.get("units") or ""
        )
