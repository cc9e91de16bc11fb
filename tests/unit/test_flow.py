"""Conditional normalizing flows: exact inverse, log-determinants, closed-form likelihoods.

Model-level known-answer tests on tiny inputs, then training on a synthetic store (nowcast and
downscale), checkpoints and the ``flow`` forecaster and downscaler.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from geogen.losses.flow import (
    LOG_2PI,
    bits_per_dim,
    dequantize_dry,
    gaussian_log_prob,
    standard_normal_nll,
)
from geogen.models.flow import (
    ActNorm,
    ConditionalGlow,
    FlowDownscaler,
    FlowNowcaster,
    InvConv1x1,
    squeeze,
    unsqueeze,
)


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Give every parameter (zero-initialised ones included) small random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("lower") or name.endswith("upper"):
                continue  # keep the 1x1 convolutions well conditioned
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(scale * noise)


def features_for(glow: ConditionalGlow, batch: int, channels: int, h: int, w: int, **kw):
    generator = torch.Generator().manual_seed(7)
    sizes = [(h // 2 ** (i + 1), w // 2 ** (i + 1)) for i in range(glow.levels)]
    return [torch.randn(batch, channels, *size, generator=generator, **kw) for size in sizes]


def test_squeeze_is_a_permutation_and_unsqueeze_inverts_it():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    y = squeeze(x)
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)
    # channel 0's 2x2 block at the top left goes to channels 0..3 in row-major order
    assert y[0, :4, 0, 0].tolist() == [x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]
    assert torch.equal(unsqueeze(y), x)
    with pytest.raises(ValueError, match="even height and width"):
        squeeze(torch.zeros(1, 1, 3, 4))


def test_actnorm_data_init_standardises_and_inverts():
    torch.manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(8, 3, 5, 5)
    layer = ActNorm(3).train()
    y, log_det = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    expected = layer.log_scale.sum() * 25
    torch.testing.assert_close(log_det, expected.expand(8))
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-5, rtol=0)
    assert bool(layer.initialized)


def test_invconv_logdet_equals_slogdet_of_its_weight():
    layer = InvConv1x1(6, generator=torch.Generator().manual_seed(3)).double()
    randomize(layer, scale=0.3)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    y, log_det = layer(x)
    _, expected = torch.linalg.slogdet(layer.weight())
    torch.testing.assert_close(log_det, (expected * 12).expand(2))
    torch.testing.assert_close(layer.inverse(y), x)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_inverse_of_forward_is_identity(levels):
    torch.manual_seed(1)
    glow = ConditionalGlow(in_channels=2, condition_channels=5, levels=levels, steps=3, hidden=16)
    randomize(glow, scale=0.05)
    x = torch.randn(3, 2, 16, 24)
    features = features_for(glow, 3, 5, 16, 24)
    glow.train()
    glow(x, features)  # actnorm data initialisation
    glow.eval()
    latents, _, _ = glow(x, features)
    assert [tuple(z.shape[1:]) for z in latents] == glow.latent_shapes(16, 24)
    back = glow.inverse(features, latents=latents)
    assert (back - x).abs().max().item() < 1e-4


def test_log_det_equals_brute_force_jacobian():
    """The summed log-determinant equals log|det J| of the whole map x -> latents."""
    torch.manual_seed(2)
    glow = ConditionalGlow(in_channels=1, condition_channels=3, levels=2, steps=2, hidden=8)
    glow = glow.double()
    randomize(glow, seed=4, scale=0.2)
    features = features_for(glow, 1, 3, 4, 4, dtype=torch.float64)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    glow.train()
    glow(x + 0.3 * torch.randn_like(x), features)  # a non-trivial actnorm
    glow.eval()

    def latents(flat: torch.Tensor) -> torch.Tensor:
        zs, _, _ = glow(flat.reshape(1, 1, 4, 4), features)
        return torch.cat([z.flatten() for z in zs])

    jacobian = torch.autograd.functional.jacobian(latents, x.flatten())
    assert jacobian.shape == (16, 16)
    sign, brute_force = torch.linalg.slogdet(jacobian)
    assert sign != 0
    _, log_det, _ = glow(x, features)
    assert abs(brute_force.item()) > 0.1  # the test would not see a missing term otherwise
    torch.testing.assert_close(log_det[0], brute_force, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("conv_init", ["identity", "orthogonal"])
def test_identity_initialised_flow_gives_the_standard_normal_nll(conv_init):
    """A new flow (couplings and priors zero, actnorm not yet initialised) is a rotation.

    Squeezes permute, orthogonal 1x1 convolutions rotate: the norm is kept and the log-det is
    0, so ``-log p(x) = 0.5 |x|^2 + D/2 log(2 pi)`` exactly.
    """
    torch.manual_seed(3)
    glow = ConditionalGlow(1, 4, levels=3, steps=2, hidden=8, conv_init=conv_init).double()
    glow.eval()
    x = torch.randn(5, 1, 32, 32, dtype=torch.float64)
    features = features_for(glow, 5, 4, 32, 32, dtype=torch.float64)
    nll = -glow.log_prob(x, features)
    expected = 0.5 * x.flatten(1).square().sum(1) + 0.5 * 1024 * math.log(2 * math.pi)
    # float32 initialisation of the rotation, evaluated in float64
    torch.testing.assert_close(nll, expected, rtol=1e-7, atol=0)
    torch.testing.assert_close(nll, standard_normal_nll(x), rtol=1e-7, atol=0)
    # bits/dim of standard normal data: about 0.5 (1 + log 2 pi) / log 2 = 2.047
    bpd = bits_per_dim(nll, 1024)
    assert abs(bpd.mean().item() - 0.5 * (1 + LOG_2PI) / math.log(2)) < 0.03


def test_loss_functions_by_hand():
    x = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    expected = -0.5 * np.log(2 * np.pi) - np.array([[0.0, 0.5], [2.0, 0.5]])
    torch.testing.assert_close(gaussian_log_prob(x), torch.tensor(expected, dtype=torch.float32))
    # N(1, 2^2) at 3: -0.5 (1 + log 2 pi) - log 2
    value = gaussian_log_prob(torch.tensor(3.0), torch.tensor(1.0), torch.tensor(math.log(2.0)))
    assert abs(value.item() - (-0.5 * (1 + LOG_2PI) - math.log(2))) < 1e-6
    assert bits_per_dim(torch.tensor(8 * math.log(2.0)), 4).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        bits_per_dim(torch.tensor(1.0), 0)


def test_dequantize_dry_spreads_dry_pixels_below_the_threshold_only():
    rain = torch.tensor([0.0, 0.0, 0.05, 0.1, 3.0] * 400)
    out, dry = dequantize_dry(rain, 0.1, torch.Generator().manual_seed(0))
    assert dry.tolist()[:5] == [True, True, True, False, False]
    assert torch.equal(out[~dry], rain[~dry])
    assert (out[dry] >= 0).all() and (out[dry] < 0.1).all()
    assert abs(out[dry].mean().item() - 0.05) < 0.003  # uniform on [0, 0.1)
    again, _ = dequantize_dry(rain, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_nowcaster_sampling_is_seeded_and_temperature_zero_is_the_mode():
    torch.manual_seed(4)
    model = FlowNowcaster(context_frames=3, lead_frames=4, levels=2, steps=2, hidden=8)
    randomize(model, scale=0.05)
    model.eval()
    context = torch.rand(2, 3, 16, 16)

    def sample(seed, temperature=1.0):
        generator = torch.Generator().manual_seed(seed)
        return model.sample(context, 4, temperature=temperature, generator=generator)

    first = sample(0)
    assert first.shape == (2, 4, 16, 16)
    assert torch.equal(first, sample(0))
    assert not torch.allclose(first, sample(1))
    assert not torch.allclose(first[0], first[1])
    torch.testing.assert_close(sample(0, 0.0), sample(1, 0.0))  # no noise left
    cooler = (sample(0, 0.5) - sample(0, 0.0)).std()
    warmer = (sample(0, 1.0) - sample(0, 0.0)).std()
    assert cooler < warmer


def test_nowcaster_sampling_conditions_later_leads_on_its_own_frames():
    torch.manual_seed(5)
    model = FlowNowcaster(context_frames=2, lead_frames=3, levels=1, steps=1, hidden=8)
    randomize(model, scale=0.1)
    model.eval()
    context = torch.rand(1, 2, 8, 8)
    noise = [model.flow.sample_noise(1, 8, 8, torch.Generator().manual_seed(i)) for i in range(3)]
    frames = model.sample(context, 3, noise=noise)
    # lead 2 is the flow's inverse given (context[-1], lead 1)
    previous = torch.cat([context[:, -1:], frames[:, :1]], dim=1)
    expected = model.flow.inverse(model.encoder(previous), noise=noise[1])
    torch.testing.assert_close(frames[:, 1:2], expected)
    # log_prob with teacher forcing scores each lead given the frames before it
    log_prob = model.log_prob(context, frames)
    assert log_prob.shape == (1, 3)
    torch.testing.assert_close(
        log_prob[:, 1], model.frame_log_prob(previous, frames[:, 1:2]), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("shape", [(16, 16), (32, 48), (64, 32)])
def test_shapes_for_several_sizes(shape):
    h, w = shape
    nowcaster = FlowNowcaster(context_frames=4, lead_frames=2, levels=3, steps=1, hidden=8)
    context, target = torch.rand(2, 4, h, w), torch.rand(2, 5, h, w)
    assert nowcaster.log_prob(context, target).shape == (2, 5)
    assert nowcaster.log_prob(context, target, leads=[0, 3]).shape == (2, 2)
    assert nowcaster.sample(context, 3).shape == (2, 3, h, w)
    downscaler = FlowDownscaler(frames=3, factor=8, levels=3, steps=1, hidden=8)
    lowres = torch.rand(2, 3, h // 8, w // 8)
    assert downscaler.log_prob(lowres, torch.rand(2, 3, h, w)).shape == (2,)
    generator = torch.Generator().manual_seed(0)
    sample = downscaler.sample(lowres, generator=generator)
    assert sample.shape == (2, 3, h, w)
    again = downscaler.sample(lowres, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample, again)


def test_bad_inputs_are_refused():
    model = FlowNowcaster(context_frames=4, levels=2, steps=1, hidden=8)
    with pytest.raises(ValueError, match="multiples of 4"):
        model.log_prob(torch.rand(1, 4, 10, 12), torch.rand(1, 2, 10, 12))
    with pytest.raises(ValueError, match="context must be"):
        model.sample(torch.rand(1, 2, 8, 8), 1)
    downscaler = FlowDownscaler(frames=2, factor=4, levels=2, steps=1, hidden=8)
    with pytest.raises(ValueError, match="lowres must be"):
        downscaler.sample(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="target must be"):
        downscaler.log_prob(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 8, 8))


# -- training on synthetic stores, checkpoints, forecaster and downscaler ------------------------

#: Flows small enough for unit tests.
NOWCAST = (
    "experiment=flow_nowcast_tiny",
    "network.levels=2",
    "network.steps=2",
    "network.hidden=8",
    "network.condition_hidden=4",
    "network.lead_frames=3",
    "method.train_crop=16",
    "data.batch_size=2",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "callbacks.panels.every_n_batches=0",
    "test=true",
)
DOWNSCALE = (
    "experiment=flow_downscale_tiny",
    "network.frames=4",
    "network.factor=4",
    "network.levels=2",
    "network.steps=2",
    "network.hidden=8",
    "network.condition_hidden=4",
    "data.batch_size=2",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "test=true",
)


@pytest.fixture(scope="module")
def nowcast_run(tmp_path_factory):
    from conftest import prepare_config, synthetic_source

    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare
    from geogen.training import compose_train_config, run_train

    root = tmp_path_factory.mktemp("flow_nowcast")
    cfg = prepare_config(
        root / "crops.zarr",
        source=synthetic_source(shape=[32, 32], n_times=40),
        crop={"size": 32, "stride": 32},
        sequence={"context": 4, "lead": 3, "length": None, "stride": 1},
    )
    store = prepare(validate_prepare_config(cfg)).path
    train_cfg = compose_train_config([*NOWCAST, f"data.path={store}"], output_dir=root / "run")
    return run_train(train_cfg)


@pytest.fixture(scope="module")
def downscale_run(tmp_path_factory):
    from conftest import downscale_overrides, prepare_config, synthetic_source

    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare
    from geogen.training import compose_train_config, run_train

    root = tmp_path_factory.mktemp("flow_downscale")
    cfg = prepare_config(
        root / "pairs.zarr",
        source=synthetic_source(shape=[32, 32], n_times=40),
        **downscale_overrides(factor=4, size=16, length=4),
    )
    store = prepare(validate_prepare_config(cfg)).path
    train_cfg = compose_train_config([*DOWNSCALE, f"data.path={store}"], output_dir=root / "run")
    return run_train(train_cfg)


def test_nowcast_training_logs_bits_per_dim_and_checkpoints(nowcast_run):
    assert np.isfinite(nowcast_run.metrics["train/bpd"])
    (test,) = nowcast_run.test_metrics
    assert np.isfinite(test["test/bpd"]) and np.isfinite(test["test/bpd_rain"])
    # nll (nats, summed over 3 leads of 32 x 32) and bpd describe the same number
    assert test["test/nll"] / (3 * 32 * 32 * math.log(2)) == pytest.approx(test["test/bpd"], 1e-4)
    checkpoint = torch.load(nowcast_run.last_checkpoint, weights_only=True)
    meta = checkpoint["geogen"]
    assert meta["model"] == "flow" and meta["data"]["task"] == "nowcast"
    assert meta["network_config"]["_target_"] == "geogen.models.flow.FlowNowcaster"
    assert meta["data"]["transform"]["name"] == "log1p"
    assert all(bool(v) for k, v in checkpoint["state_dict"].items() if k.endswith("initialized"))


def test_flow_forecaster_is_seeded_per_member_whatever_the_batching(nowcast_run):
    from conftest import synthetic_source

    import geogen
    from geogen.forecasting import ForecastError, get_forecaster
    from geogen.io import open_source

    source = synthetic_source(shape=[30, 37], n_times=12, nan_border=3)
    context = open_source(source, "2020-01-01T00:00", "2020-01-01T00:15")["precip"].load()
    model = get_forecaster("flow", ckpt=nowcast_run.last_checkpoint, batch_members=2)
    fc = geogen.forecast(model, context, members=3, leads=4, seed=5)
    assert fc.shape == (3, 4, 30, 37)
    values = fc.values
    no_data = np.isnan(context.values[-1])
    assert no_data.any() and np.isnan(values[:, :, no_data]).all()
    valid = values[:, :, ~no_data]
    assert np.isfinite(valid).all() and (valid >= 0).all()
    assert ((valid == 0) | (valid >= 0.1)).all()  # dry below the threshold
    assert not np.allclose(values[0][:, ~no_data], values[1][:, ~no_data])
    again = geogen.forecast(
        get_forecaster("flow", ckpt=nowcast_run.last_checkpoint, batch_members=3),
        context,
        members=3,
        leads=4,
        seed=5,
    )
    np.testing.assert_allclose(again.values, values, rtol=1e-4, atol=1e-5)
    other = geogen.forecast(model, context, members=3, leads=4, seed=6)
    assert not np.allclose(other.values[:, :, ~no_data], valid)
    assert json.loads(fc.attrs["settings"])["model"] == "flow"
    with pytest.raises(ForecastError, match="needs a checkpoint"):
        get_forecaster("flow")
    from geogen.downscaling import DownscaleError, get_downscaler

    with pytest.raises(DownscaleError, match="trained for 'nowcast', not 'downscale'"):
        get_downscaler("flow", ckpt=nowcast_run.last_checkpoint)


def test_downscale_training_and_downscaler(downscale_run):
    import geogen
    from geogen.downscaling import DownscaleError, get_downscaler

    (test,) = downscale_run.test_metrics
    assert np.isfinite(test["test/bpd"])
    meta = torch.load(downscale_run.last_checkpoint, weights_only=True)["geogen"]
    assert meta["model"] == "flow" and meta["data"]["task"] == "downscale"
    model = get_downscaler("flow", ckpt=downscale_run.last_checkpoint, batch_members=1)
    rng = np.random.default_rng(0)
    lowres = rng.gamma(0.5, 2.0, size=(6, 3, 5)).astype(np.float32)
    lowres[0, 0, 0] = np.nan
    import xarray as xr

    da = xr.DataArray(lowres, dims=("time", "y", "x"), name="precip", attrs={"units": "mm/h"})
    hr = geogen.downscale(model, da, members=2, seed=1)
    assert hr.shape == (2, 6, 12, 20)
    assert np.isnan(hr.values[:, 0, :4, :4]).all()
    assert np.isfinite(hr.values[:, 1:]).all() and (hr.values[:, 1:] >= 0).all()
    again = geogen.downscale(
        get_downscaler("flow", ckpt=downscale_run.last_checkpoint, batch_members=2),
        da,
        members=2,
        seed=1,
    )
    np.testing.assert_allclose(again.values, hr.values, rtol=1e-4, atol=1e-5)
    with pytest.raises(DownscaleError, match="sequences of 4 frames"):
        geogen.downscale(model, da.isel(time=slice(0, 3)), members=1)
