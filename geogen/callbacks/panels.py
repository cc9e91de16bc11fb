"""PNG panels of nowcasts during training: context, truth and a few samples, side by side."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch

from geogen.atomic import atomic_path

log = logging.getLogger(__name__)


def plot_nowcast_panel(
    context: np.ndarray,
    truth: np.ndarray,
    samples: np.ndarray,
    path: str | os.PathLike,
    *,
    lead_indices: list[int],
    timestep_minutes: float | None = None,
    title: str = "",
    units: str = "mm/h",
) -> Path:
    """Save one panel: a row of context frames, a row of truth, one row per sample.

    Parameters
    ----------
    context
        ``(context, y, x)`` in physical units.
    truth
        ``(lead, y, x)`` in physical units.
    samples
        ``(members, lead, y, x)`` in physical units.
    path
        PNG file to write (temp-then-rename).
    lead_indices
        Lead frames shown (0-based).
    timestep_minutes
        Labels the columns with minutes when given.
    title
        Figure title.
    units
        Colour bar label.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if truth.ndim != 3 or samples.ndim != 4 or context.ndim != 3:
        raise ValueError(
            f"expected context (T, y, x), truth (L, y, x), samples (M, L, y, x); got "
            f"{context.shape}, {truth.shape}, {samples.shape}"
        )
    columns = max(len(lead_indices), context.shape[0])
    rows = 2 + samples.shape[0]
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns + 0.8, 1.6 * rows), squeeze=False
    )
    norm = LogNorm(vmin=0.1, vmax=100.0)
    cmap = matplotlib.colormaps["viridis"].copy()
    cmap.set_under("white")
    cmap.set_bad("lightgrey")
    image = None

    def show(ax: Any, field: np.ndarray, label: str) -> None:
        nonlocal image
        image = ax.imshow(np.where(field < 0.1, 0.01, field), norm=norm, cmap=cmap)
        ax.set_title(label, fontsize=7)

    step = timestep_minutes
    for col in range(columns):
        for row in range(rows):
            axes[row, col].set_axis_off()
    n_ctx = context.shape[0]
    for i in range(n_ctx):
        minutes = f"{(i - n_ctx + 1) * step:+g} min" if step else f"t{i - n_ctx + 1}"
        show(axes[0, i], context[i], f"context {minutes}")
    for col, lead in enumerate(lead_indices):
        minutes = f"+{(lead + 1) * step:g} min" if step else f"lead {lead + 1}"
        show(axes[1, col], truth[lead], f"truth {minutes}")
        for member in range(samples.shape[0]):
            show(axes[2 + member, col], samples[member, lead], f"sample {member + 1}")
    return finish_panel(fig, axes, image, path, title=title, units=units)


def finish_panel(
    fig: Any, axes: Any, image: Any, path: str | os.PathLike, *, title: str, units: str
) -> Path:
    """Colour bar of ``image``, title, and ``fig`` saved to ``path`` (temp-then-rename)."""
    import matplotlib.pyplot as plt

    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=units, extend="both")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
    return path


def to_physical(transform: Any, values: torch.Tensor) -> np.ndarray:
    """Model-space ``values`` -> physical-unit numpy array (on the CPU, float32)."""
    return np.asarray(transform.inverse(values.float().cpu()).numpy())


class NowcastPanels(lightning.Callback):
    """Every ``every_n_batches`` training batches, save a PNG of context, truth and samples.

    The example is the first of the first validation batch (the first training batch when
    there is no validation split), fixed for the whole run so panels can be compared. Samples
    come from the method's ``sample`` (model space) and are mapped back to physical units with
    its ``transform``. Only rank 0 writes.

    Parameters
    ----------
    dirpath
        Folder of the PNG files (``step_000100.png``, ..., ``final.png``).
    every_n_batches
        Training batches between panels; ``0`` only draws the final panel.
    samples
        Samples (rows) per panel.
    leads
        Lead times (columns) shown, evenly spaced over the forecast.
    seed
        Seed of the samples, so successive panels differ only through training.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike,
        every_n_batches: int = 100,
        samples: int = 3,
        leads: int = 6,
        seed: int = 0,
    ) -> None:
        if every_n_batches < 0 or samples < 1 or leads < 1:
            raise ValueError(
                f"need every_n_batches >= 0, samples >= 1, leads >= 1; got {every_n_batches}, "
                f"{samples}, {leads}"
            )
        self.dirpath = Path(dirpath)
        self.every_n_batches = int(every_n_batches)
        self.samples = int(samples)
        self.leads = int(leads)
        self.seed = int(seed)
        self._example: dict[str, torch.Tensor] | None = None
        self.written: list[Path] = []

    #: Key of the example's model input (``context`` here, ``lowres`` for downscaling).
    input_key = "context"

    def _pick_example(self, trainer: lightning.Trainer, batch: dict[str, Any]) -> None:
        example = None
        datamodule = getattr(trainer, "datamodule", None)
        dataset = getattr(datamodule, "val_dataset", None)
        if dataset is not None and len(dataset) > 0:
            example = {k: v.unsqueeze(0) for k, v in dataset[0].items() if torch.is_tensor(v)}
        elif isinstance(batch, dict) and self.input_key in batch:
            example = {k: v[:1].detach() for k, v in batch.items() if torch.is_tensor(v)}
        self._example = example

    def on_train_batch_end(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Draw a panel every ``every_n_batches`` training batches."""
        if self._example is None:
            self._pick_example(trainer, batch)
        done = trainer.fit_loop.epoch_loop.batch_progress.total.completed + 1
        if self.every_n_batches and done % self.every_n_batches == 0:
            self.draw(trainer, pl_module, f"step_{done:06d}.png", f"after {done} batches")

    def on_train_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        """Draw the final panel."""
        done = trainer.fit_loop.epoch_loop.batch_progress.total.completed
        self.draw(trainer, pl_module, "final.png", f"end of training ({done} batches)")

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
            inputs = self._example[self.input_key].to(pl_module.device)
            target = self._example["target"]
            generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            with torch.autocast(pl_module.device.type, enabled=False):
                samples = self.sample(pl_module, inputs, target, generator)
        finally:
            pl_module.train(was_training)
        steps = target.shape[1]
        shown = sorted({round(float(i)) for i in np.linspace(0, steps - 1, self.leads)})
        data = getattr(pl_module, "data_info", {}) or {}
        path = self.plot(
            [to_physical(pl_module.transform, x[0]) for x in (inputs, target, samples)],
            self.dirpath / name,
            shown,
            data,
            title=f"{type(pl_module).__name__}: {title}",
        )
        self.written.append(path)
        log.info("panel written to %s", path)
        return path

    def sample(
        self,
        pl_module: lightning.LightningModule,
        inputs: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The method's samples ``(1, members, lead, y, x)`` of the example (model space)."""
        return pl_module.sample(
            inputs, members=self.samples, leads=target.shape[1], generator=generator
        )

    def plot(
        self,
        fields: list[np.ndarray],
        path: Path,
        shown: list[int],
        data: dict[str, Any],
        *,
        title: str,
    ) -> Path:
        """Save the panel of ``fields`` (input, truth, samples in physical units) to ``path``."""
        return plot_nowcast_panel(
            *fields,
            path,
            lead_indices=shown,
            timestep_minutes=data.get("timestep_minutes"),
            title=title,
            units=data.get("units") or "",
        )
