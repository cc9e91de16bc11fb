"""Lightning callbacks of geogen (PNG panels of samples during training)."""

from geogen.callbacks.panels import NowcastPanels, plot_nowcast_panel

__all__ = ["NowcastPanels", "plot_nowcast_panel"]
