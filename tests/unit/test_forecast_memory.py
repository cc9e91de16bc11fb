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
    z = model.module.member_inputs(members, 7, 7, 64, 96)["z"]
    with torch.inference_mode():
        expected = model.module.generator(inputs.expand(3, -1, -1, -1), 7, z=z)
        model.module.sampler_memory = memory * 56 * 2 * 32 * 48 * 3  # leads per chunk
        chunked = model.module(inputs, 7, members, seed=7)
    assert chunked.shape == expected.shape == (3, 7, 64, 96)
    assert expected.abs().max() > 0.01 and expected[0].std() > 0
    torch.testing.assert_close(chunked, expected, rtol=1e-5, atol=1e-6)


def test_bounded_ensemble_equals_unbounded_for_the_same_seed(checkpoint, context):
    bounded = get_forecaster("dgmr", ckpt=checkpoint, device="cpu", batch_members=2)
    bounded.module.sampler_memory = 1  # one lead at a time
    unbounded = get_forecaster("dgmr", ckpt=checkpoint, device="cpu", batch_members=5)
    unbounded.module.sampler_memory = 2**40
    kwargs = {"leads": 6, "members": 5, "seed": 11, "timestep_minutes": 5.0}
    a, b = bounded.predict(context, **kwargs), unbounded.predict(context, **kwargs)
    assert a.shape == (5, 6, 70, 100)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.isnan(a[:, :, :5, :7]).all() and np.isfinite(a[:, :, 5:, 7:]).all()
    assert not np.allclose(a[0], a[1])  # members differ
    other = unbounded.predict(context, **{**kwargs, "seed": 12})
    assert not np.allclose(other[:, :, 5:, 7:], a[:, :, 5:, 7:])


@pytest.fixture(scope="module")
def batch_norm_checkpoint(tmp_path_factory):
    """A generator with batch norms whose per-lead running statistics differ lead by lead.

    Set by hand (as training would leave them): every :class:`SequenceBatchNorm2d` gets its
    own mean and variance for each lead, so normalising a lead with another lead's statistics
    changes the forecast.
    """
    from geogen.nn.layers import SequenceBatchNorm2d

    torch.manual_seed(1)
    generator = Generator(**WIDTHS, output_activation="none", norm="batch")
    norms = [m for m in generator.modules() if isinstance(m, SequenceBatchNorm2d)]
    assert norms
    for bn in norms:
        bn.step_mean.copy_(0.5 * torch.randn_like(bn.step_mean))
        bn.step_var.copy_(0.2 + 2.0 * torch.rand_like(bn.step_var))
        bn.step_tracked.fill_(10)
    path = tmp_path_factory.mktemp("ckpt_bn") / "dgmr.ckpt"
    config = {
        "_target_": "geogen.models.dgmr.Generator",
        **WIDTHS,
        "output_activation": "none",
        "norm": "batch",
    }
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


LEADS = 7


@pytest.mark.parametrize("chunk", range(1, LEADS + 1))
def test_chunked_leads_use_each_leads_batch_norm_statistics(batch_norm_checkpoint, chunk):
    """Every chunk size gives the plain forward, with per-lead statistics that differ."""
    model = get_forecaster("dgmr", ckpt=batch_norm_checkpoint, device="cpu")
    inputs = torch.rand(1, 4, 64, 96)
    members = range(2, 5)
    z = model.module.member_inputs(members, 3, LEADS, 64, 96)["z"]
    with torch.inference_mode():
        expected = model.module.generator(inputs.expand(3, -1, -1, -1), LEADS, z=z)
        model.module.sampler_memory = chunk * 56 * 2 * 32 * 48 * 3  # `chunk` leads per chunk
        chunked = model.module(inputs, LEADS, members, seed=3)
    assert chunked.shape == expected.shape == (3, LEADS, 64, 96)
    torch.testing.assert_close(chunked, expected, rtol=1e-5, atol=1e-5)


def test_per_lead_statistics_matter(batch_norm_checkpoint):
    """The statistics of the fixture change the forecast (so the test above can fail)."""
    model = get_forecaster("dgmr", ckpt=batch_norm_checkpoint, device="cpu")
    inputs = torch.rand(1, 4, 64, 96)
    z = model.module.member_inputs(range(1), 3, LEADS, 64, 96)["z"]
    with torch.inference_mode():
        reference = model.module.generator(inputs, LEADS, z=z)
        for module in model.module.generator.modules():
            if hasattr(module, "step_mean"):
                module.step_mean.copy_(module.step_mean[:1].expand_as(module.step_mean))
                module.step_var.copy_(module.step_var[:1].expand_as(module.step_var))
        lead_zero_statistics = model.module.generator(inputs, LEADS, z=z)
    torch.testing.assert_close(reference[:, 0], lead_zero_statistics[:, 0])
    assert (reference[:, 1:] - lead_zero_statistics[:, 1:]).abs().max() > 0.1


def test_bounded_ensemble_with_batch_norm_equals_unbounded(batch_norm_checkpoint, context):
    bounded = get_forecaster("dgmr", ckpt=batch_norm_checkpoint, device="cpu", batch_members=2)
    bounded.module.sampler_memory = 1  # one lead at a time
    unbounded = get_forecaster("dgmr", ckpt=batch_norm_checkpoint, device="cpu", batch_members=5)
    unbounded.module.sampler_memory = 2**40
    kwargs = {"leads": 6, "members": 5, "seed": 11, "timestep_minutes": 5.0}
    a, b = bounded.predict(context, **kwargs), unbounded.predict(context, **kwargs)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.nanstd(a) > 0.01
