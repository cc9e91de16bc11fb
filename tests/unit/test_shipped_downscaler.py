"""The shipped downscaling checkpoint: its index entry, size, and what it downscales."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geogen.downscaling import get_downscaler
from geogen.models.downscale_residual import ResidualGenerator

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads((CHECKPOINTS / "index.json").read_text())["downscale_gan"]


def test_index_entry_matches_the_file(entry):
    path = CHECKPOINTS / entry["file"]
    data = path.read_bytes()
    assert entry["model"] == "downscale_gan"
    assert entry["bytes"] == len(data) < 2 * 1024**2
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert entry["parameters"] == sum(v.numel() for v in state.values())


def test_shipped_file_downscales_seeded_with_exact_block_means(entry):
    model = get_downscaler("downscale_gan", ckpt=str(CHECKPOINTS / entry["file"]), device="cpu")
    assert isinstance(model.generator, ResidualGenerator) and model.factor == 16
    g = np.random.default_rng(0)
    lowres = np.exp(g.normal(size=(2, 3, 4))).astype(np.float32)
    lowres[0, 0, 0] = 0.0
    lowres[1, 2, 3] = np.nan  # a missing cell stays missing
    out = model.predict(lowres, factor=16, members=3, seed=1)
    assert out.shape == (3, 2, 48, 64)
    means = out.reshape(3, 2, 3, 16, 4, 16).mean(axis=(-3, -1))
    expected = np.broadcast_to(lowres, means.shape)
    np.testing.assert_allclose(means, expected, rtol=1e-4, atol=1e-6)  # NaN where NaN
    assert np.all(out[:, 0, :16, :16] == 0)
    np.testing.assert_array_equal(out, model.predict(lowres, factor=16, members=3, seed=1))
    assert not np.array_equal(out, model.predict(lowres, factor=16, members=3, seed=2))
