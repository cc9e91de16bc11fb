"""The shipped ``dgmr_advect`` checkpoint forecasts a fixed synthetic context as it always did.

The numbers below were recorded with geogen at ec5d147 (before the inference path was made one
module: ``CheckpointForecaster`` with ``DGMRAdvectForecaster.forecast_batch`` calling the
generator's forward). The refactored path must give the same forecasts to float tolerance,
whatever the member batching. No data needed: the context is seeded synthetic rain.
"""

import numpy as np
import pytest

from geogen.data.synthetic import synthetic_rain
from geogen.forecasting import get_forecaster

pytest.importorskip("pysteps")

MEAN = np.array(
    [
        [0.9561427, 0.8962004, 0.8079498, 0.6660675, 0.6731766],
        [0.9604063, 0.7892427, 0.9787832, 0.797491, 0.7744767],
        [0.9243262, 0.8551004, 0.7643167, 0.6594778, 0.6568848],
    ]
)
RMS = np.array(
    [
        [3.15627, 2.715908, 2.452952, 1.926078, 2.41732],
        [2.866543, 2.329001, 4.062069, 2.621711, 2.073572],
        [3.234123, 2.873469, 2.403242, 1.820472, 1.765535],
    ]
)
PIXELS = np.array(
    [
        [
            0.2854976,
            0,
            0.2775875,
            0.1826791,
            0.01131094,
            0.1357042,
            0.7271402,
            0,
            0.1840666,
            0.6536958,
            0,
            0.1049447,
            0,
            0,
            0.01459287,
        ],
        [
            0.5395986,
            0,
            0.3037942,
            0.2697411,
            0,
            0.1391369,
            1.106385,
            0,
            0.1596591,
            1.383402,
            0,
            0.07813022,
            0.615904,
            0.0514738,
            0.102528,
        ],
        [
            0.2722222,
            0.05592858,
            0.01286527,
            0.2161316,
            0.06519491,
            0,
            0.8096108,
            0.05380427,
            0,
            0.8956511,
            0,
            0,
            0.345235,
            0,
            0,
        ],
    ]
)


@pytest.fixture(scope="module")
def context():
    frames = synthetic_rain(4, (80, 100), seed=3, velocity=(1.0, 2.0)).astype(np.float32)
    frames[:, :6, :9] = np.nan  # no data in a corner
    return frames


@pytest.mark.parametrize("batch_members", [1, 2, 3])
def test_shipped_dgmr_advect_gives_the_recorded_forecast(context, batch_members):
    model = get_forecaster("dgmr_advect", device="cpu", batch_members=batch_members)
    out = model.predict(context, leads=5, members=3, seed=7, timestep_minutes=5.0)
    assert out.shape == (3, 5, 80, 100)
    assert np.isnan(out[:, :, :6, :9]).all() and np.isfinite(out[:, :, 6:, 9:]).all()
    np.testing.assert_allclose(np.nanmean(out, axis=(2, 3)), MEAN, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.sqrt(np.nanmean(out**2, axis=(2, 3))), RMS, rtol=2e-5, atol=2e-6)
    pixels = out[:, :, [10, 40, 70], [20, 50, 90]].reshape(3, -1)
    np.testing.assert_allclose(pixels, PIXELS, rtol=1e-4, atol=2e-6)


def test_shipped_dgmr_advect_bounded_sampler_gives_the_recorded_forecast(context):
    """One lead per chunk (the memory-bounded path) gives the same numbers."""
    model = get_forecaster("dgmr_advect", device="cpu", batch_members=3)
    model.module.sampler_memory = 1
    out = model.predict(context, leads=5, members=3, seed=7, timestep_minutes=5.0)
    np.testing.assert_allclose(np.nanmean(out, axis=(2, 3)), MEAN, rtol=2e-5, atol=2e-6)
    pixels = out[:, :, [10, 40, 70], [20, 50, 90]].reshape(3, -1)
    np.testing.assert_allclose(pixels, PIXELS, rtol=1e-4, atol=2e-6)
