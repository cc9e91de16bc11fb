"""Memory-bounded DGMR forecasts (conditioning once per batch, leads in chunks) equal the
generator's forward, member by member, for any chunking and batching."""

import numpy as np
import pytest
import torch

from geogen.forecasting import get_forecaster
from geogen.models.dgmr import Generator

WIDTHS = {"context_frames": 4, "base_channels": 2, "latent_channels": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A geogen checkpoint of an untrained (seeded) generator, without ReLU on the output."""
    torch.manual_seed(0)
    generator = Generator(**WIDTHS, output_activation="none")
    path = tmp_path_factory.mktemp("ckpt") / "dgmr.ckpt"
    config = {"_target_": "geogen.models.dgmr.Generator", **WIDTHS, "output_activation": "none"}
    torch.save(
        {
            "state_dict": {f"network.generator.{k}": v for k, v in generator.state_dict().items()},
            "geogen": {
                "model": "dgmr",
                "network_config": {"_target_": "geogen.models.dgmr.DGMR", "generator": config},
                "data": {"timestep_minutes": 5.0, "context": 4, "transform": {"name": "identity"}},
            },
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def context():
    rng = np.random.default_rng(1)
    frames = rng.gamma(0.6, 2.0, (4, 70, 100)).astype(np.float32)
    frames[:, :5, :7] = np.nan  # no data in a corner
    return frames


@pytest.mark.parametrize("memory", [1, 3])  # bytes: one lead per chunk; budget of 3 leads
def test_chunked_leads_equal_the_generator_forward(checkpoint, memory):
    model = get_forecaster("dgmr", ckpt=checkpoint, device="cpu")
    inputs = torch.rand(1, 4, 64, 96)
    members = range(3, 6)
    z = torch.stack([model._latent(7, m, 64, 96) for m in members])
    with torch.inference_mode():
        expected = model.generator(inputs.expand(3, -1, -1, -1), 7, z=z)
        model.sampler_memory = memory * 56 * 2 * 32 * 48 * 3  # leads per chunk
        chunked = model.forecast_batch(inputs, 7, members, seed=7)
    assert chunked.shape == expected.shape == (3, 7, 64, 96)
    assert expected.abs().max() > 0.01 and expected[0].std() > 0
    torch.testing.assert_close(chunked, expected, rtol=1e-5, atol=1e-6)


def test_bounded_ensemble_equals_unbounded_for_the_same_seed(checkpoint, context):
    bounded = get_forecaster("dgmr", ckpt=checkpoint, device="cpu", batch_members=2)
    bounded.sampler_memory = 1  # one lead at a time
    unbounded = get_forecaster("dgmr", ckpt=checkpoint, device="cpu", batch_members=5)
    unbounded.sampler_memory = 2**40
    kwargs = {"leads": 6, "members": 5, "seed": 11, "timestep_minutes": 5.0}
    a, b = bounded.predict(context, **kwargs), unbounded.predict(context, **kwargs)
    assert a.shape == (5, 6, 70, 100)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.isnan(a[:, :, :5, :7]).all() and np.isfinite(a[:, :, 5:, 7:]).all()
    assert not np.allclose(a[0], a[1])  # members differ
    other = unbounded.predict(context, **{**kwargs, "seed": 12})
    assert not np.allclose(other[:, :, 5:, 7:], a[:, :, 5:, 7:])
