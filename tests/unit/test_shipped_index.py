"""The shipped checkpoints: index and card, forecasts of a synthetic context (no data needed)."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import geogen
from geogen.forecasting import get_forecaster
from geogen.forecasting.shipped import INDEX, shipped_dir, shipped_index

sys.path.insert(0, str(Path(__file__).parent))
from test_pysteps_methods import as_context, moving_blobs


@pytest.mark.parametrize("name", ["dgmr_advect", "dgmr_steps", "downscale_gan"])
def test_index_lists_a_card_and_the_file_hash(name):
    index = shipped_index()
    assert name in index, f"no {name} entry in {shipped_dir() / INDEX}"
    entry = index[name]
    path = shipped_dir() / entry["file"]
    assert path.is_file() and path.stat().st_size < 2 * 2**20  # under 2 MiB
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    card = (shipped_dir() / "README.md").read_text()
    assert entry["sha256"] in card and entry["file"] in card


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dgmr_advect", "dgmr_steps"])
def test_the_shipped_checkpoint_forecasts_a_synthetic_context(name):
    # The real shipped file on moving rain cells: seeded, finite, members that differ, and
    # better than persistence (it advects the cells).
    model = get_forecaster(name, batch_members=4)
    model.set_grid_spacing(1.0)
    frames = moving_blobs(n_frames=model.n_context, shape=(64, 64))
    context = as_context(frames[: model.n_context])
    fc = geogen.forecast(model, context, members=4, leads=3, seed=1)
    again = geogen.forecast(model, context, members=4, leads=3, seed=1)
    assert fc.shape == (4, 3, 64, 64)
    settings = json.loads(fc.attrs["settings"])
    assert settings["checkpoint_sha256"] == shipped_index()[name]["sha256"]
    np.testing.assert_array_equal(fc.values, again.values)
    assert np.isfinite(fc.values).all() and (fc.values >= 0).all()
    assert np.mean(np.std(fc.values, axis=0)) > 0.01  # the members differ
    truth = frames[model.n_context : model.n_context + 3]
    model_error = np.mean(np.abs(fc.values.mean(axis=0) - truth))
    persistence_error = np.mean(np.abs(frames[model.n_context - 1] - truth))
    assert model_error < persistence_error, (model_error, persistence_error)
