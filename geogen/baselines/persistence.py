"""Eulerian persistence: the last observed frame, repeated at every lead time."""

from __future__ import annotations

import numpy as np

from geogen.forecasting.interface import Forecaster, register_forecaster


@register_forecaster("persistence")
class Persistence(Forecaster):
    """Repeat the issue-time frame at every lead (deterministic; members are identical)."""

    n_context = 1
    stochastic = False

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
        """``(member, lead, y, x)``: the last context frame at every lead (mm/h)."""
        last = np.asarray(context[-1], dtype=np.float32)
        return np.broadcast_to(last, (members, leads, *last.shape)).copy()
