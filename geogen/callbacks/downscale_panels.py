"""PNG panels of downscaling during training: low-res input, high-res truth and samples."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch

from geogen.callbacks.panels import NowcastPanels

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
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=units, extend="both")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path


class DownscalePanels(NowcastPanels):
    """:class:`~geogen.callbacks.NowcastPanels` for downscaling methods.

    Same parameters (``leads`` is the number of time steps shown); the example's ``lowres``
    is downscaled with the method's ``sample(lowres, members, generator)``.
    """

    def _pick_example(self, trainer: lightning.Trainer, batch: dict[str, Any]) -> None:
        example = None
        datamodule = getattr(trainer, "datamodule", None)
        dataset = getattr(datamodule, "val_dataset", None)
        if dataset is not None and len(dataset) > 0:
            example = {k: v.unsqueeze(0) for k, v in dataset[0].items()}
        elif isinstance(batch, dict) and "lowres" in batch:
            example = {k: v[:1].detach() for k, v in batch.items() if torch.is_tensor(v)}
        self._example = example

    @torch.no_grad()
    def draw(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        name: str,
        title: str,
    ) -> Path | None:
        """Sample and save one panel (rank 0 only); returns its path."""
        if not trainer.is_global_zero or self._example is None or not hasattr(pl_module, "sample"):
            return None
        was_training = pl_module.training
        pl_module.eval()
        try:
            lowres = self._example["lowres"].to(pl_module.device)
            target = self._example["target"]
            generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            with torch.autocast(pl_module.device.type, enabled=False):
                samples = pl_module.sample(lowres, members=self.samples, generator=generator)
        finally:
            pl_module.train(was_training)
        transform = pl_module.transform
        steps = target.shape[1]
        frames = sorted({round(float(i)) for i in np.linspace(0, steps - 1, self.leads)})
        data = getattr(pl_module, "data_info", {}) or {}

        def physical(values: torch.Tensor) -> np.ndarray:
            return np.asarray(transform.inverse(values.float().cpu()).numpy())

        path = plot_downscale_panel(
            physical(lowres[0]),
            physical(target[0]),
            physical(samples[0]),
            self.dirpath / name,
            frames=frames,
            title=f"{type(pl_module).__name__}: {title}",
            units=data.get("units") or "",
        )
        self.written.append(path)
        log.info("panel written to %s", path)
        return path
