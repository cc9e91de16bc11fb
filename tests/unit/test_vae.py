"""Conditional VAEs: ELBO terms against closed forms, training, seeded ensembles, shapes.

Synthetic stores of 32 x 32 crops and networks of width 4 keep every run to seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import downscale_overrides, prepare_config, synthetic_source

import geogen
from geogen.downscaling import get_downscaler
from geogen.forecasting import ForecastError, get_forecaster
from geogen.losses.vae import gaussian_kl, gaussian_nll, kl_weight, masked_sum, zero_inflated_nll
from geogen.methods.vae import reconstruction_nll
from geogen.models.vae import DownscaleVAE, NowcastVAE
from geogen.training import build_training, compose_train_config, run_train

NOWCAST_SMALL = (
    "experiment=vae_nowcast_tiny",
    "network.base_channels=4",
    "network.latent_channels=2",
    "network.levels=2",
    "network.lead_frames=3",
    "network.context_frames=2",
    "method.train_crop=null",
    "data.batch_size=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "callbacks.panels.every_n_batches=0",
)
DOWNSCALE_SMALL = (
    "experiment=vae_downscale_tiny",
    "network.base_channels=4",
    "network.latent_channels=2",
    "network.factor=4",
    "data.batch_size=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
)


# -- losses against closed forms ---------------------------------------------------------------
def test_kl_matches_the_closed_form_of_two_gaussians():
    mean_q, var_q, mean_p, var_p = 0.3, 0.5, -1.2, 2.0
    expected = (
        math.log(math.sqrt(var_p) / math.sqrt(var_q))
        + (var_q + (mean_q - mean_p) ** 2) / (2 * var_p)
        - 0.5
    )
    kl = gaussian_kl(
        torch.tensor(mean_q),
        torch.tensor(math.log(var_q)),
        torch.tensor(mean_p),
        torch.tensor(math.log(var_p)),
    )
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    # against torch.distributions, elementwise, and the standard-normal prior by default
    gen = torch.Generator().manual_seed(0)
    mq, lq, mp, lp = (torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(4))
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mq, (0.5 * lq).exp()),
        torch.distributions.Normal(mp, (0.5 * lp).exp()),
    )
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), reference)
    standard = torch.distributions.kl_divergence(
        torch.distributions.Normal(mq, (0.5 * lq).exp()),
        torch.distributions.Normal(torch.zeros_like(mq), torch.ones_like(mq)),
    )
    torch.testing.assert_close(gaussian_kl(mq, lq), standard)
    assert gaussian_kl(mq, lq, mq, lq).abs().max() < 1e-12


def test_likelihoods_match_hand_computed_values():
    y, mean, log_scale = torch.tensor(1.5), torch.tensor(0.5), torch.tensor(math.log(2.0))
    expected = 0.5 * (1.0 / 2.0) ** 2 + math.log(2.0) + 0.5 * math.log(2 * math.pi)
    assert gaussian_nll(y, mean, log_scale).item() == pytest.approx(expected, rel=1e-6)
    # zero-inflated: p = sigmoid(logit)
    logit = torch.tensor([0.7, 0.7])
    p = 1.0 / (1.0 + math.exp(-0.7))
    values = zero_inflated_nll(
        torch.tensor([0.0, 1.5]),
        logit,
        torch.full((2,), 0.5),
        torch.full((2,), math.log(2.0)),
        torch.tensor([True, False]),
    )
    assert values[0].item() == pytest.approx(-math.log(1 - p), rel=1e-6)
    assert values[1].item() == pytest.approx(-math.log(p) + expected, rel=1e-6)
    # masked sums per example; the dry level decides the point mass
    nll = torch.arange(8.0).reshape(2, 4)
    mask = torch.tensor([[True, False, True, False], [True, True, True, True]])
    assert masked_sum(nll, mask).tolist() == [2.0, 22.0]
    params = torch.zeros(1, 1, 3, 1, 2)
    target = torch.tensor([[[[0.0, 0.5]]]])
    per_pixel = reconstruction_nll(params, target, "zero_inflated", dry_level=1e-6)
    assert per_pixel[0, 0, 0, 0].item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert per_pixel[0, 0, 0, 1].item() == pytest.approx(
        math.log(2.0) + 0.125 + 0.5 * math.log(2 * math.pi), rel=1e-6
    )


def test_kl_warmup_ramps_linearly_to_beta():
    assert [kl_weight(s, 0.5, 4) for s in (0, 2, 4, 10)] == [0.0, 0.25, 0.5, 0.5]
    assert kl_weight(0, 2.0, 0) == 2.0


# -- networks ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("height", "width", "leads"), [(32, 32, 3), (64, 48, 5), (16, 80, 1)])
def test_nowcast_vae_shapes_for_several_sizes(height, width, leads):
    net = NowcastVAE(context_frames=2, lead_frames=leads, base_channels=4, latent_channels=2)
    context, target = torch.rand(2, 2, height, width), torch.rand(2, leads, height, width)
    out = net(context, target)
    assert out["params"].shape == (2, leads, 3, height, width)
    assert out["z"].shape == (2, 2, height // 8, width // 8)
    assert out["prior_mean"].shape == out["posterior_mean"].shape
    assert net.sample(context, leads + 4).shape == (2, leads + 4, 3, height, width)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 2, 36, 32), torch.rand(1, leads, 36, 32))
    with pytest.raises(ValueError, match="frames"):
        net(torch.rand(1, 3, 32, 32), torch.rand(1, leads, 32, 32))


@pytest.mark.parametrize(
    ("factor", "frames", "ny", "nx"), [(4, 3, 2, 3), (16, 2, 1, 2), (2, 1, 5, 4)]
)
def test_downscale_vae_shapes_for_several_sizes(factor, frames, ny, nx):
    net = DownscaleVAE(factor=factor, base_channels=4, latent_channels=2, likelihood="gaussian")
    lowres = torch.rand(2, frames, ny, nx)
    out = net(lowres, torch.rand(2, frames, ny * factor, nx * factor))
    assert out["params"].shape == (2, frames, 2, ny * factor, nx * factor)
    assert out["z"].shape == (2, 2, ny, nx)
    assert net.point(net.sample(lowres)).shape == (2, frames, ny * factor, nx * factor)
    with pytest.raises(ValueError, match="target must be"):
        net(lowres, torch.rand(2, frames, ny * factor + 1, nx * factor))


def test_standard_prior_is_zero_and_residual_mean_starts_at_persistence():
    net = NowcastVAE(
        context_frames=2, lead_frames=3, base_channels=4, latent_channels=2, prior="standard"
    )
    context = torch.rand(1, 2, 32, 32)
    out = net(context, torch.rand(1, 3, 32, 32))
    assert out["prior_mean"].abs().max() == 0 and out["prior_logvar"].abs().max() == 0
    # the output head starts at zero: mean = the last context frame, log-scale 0, p(wet) = 1/2
    params = out["params"]
    torch.testing.assert_close(params[:, :, 1], context[:, -1:].expand(-1, 3, -1, -1))
    torch.testing.assert_close(
        params[:, :, 2], torch.zeros_like(params[:, :, 2]), atol=1e-5, rtol=0
    )


def test_seeded_sampling_is_reproducible_and_differs_between_seeds():
    torch.manual_seed(0)
    net = NowcastVAE(context_frames=2, lead_frames=3, base_channels=4, latent_channels=2).eval()
    for p in net.up.head.parameters():  # a non-trivial decoder output
        torch.nn.init.normal_(p, std=0.1)
    context = torch.rand(2, 2, 32, 32)

    def draw(seed):
        return net.sample(context, 3, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        torch.testing.assert_close(draw(1), draw(1), rtol=0, atol=0)
        assert (draw(1) - draw(2)).abs().max() > 1e-4


# -- training ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nowcast_store(tmp_path_factory):
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    cfg = prepare_config(tmp_path_factory.mktemp("vae_store") / "crops.zarr")
    return prepare(validate_prepare_config(cfg)).path


@pytest.fixture(scope="module")
def downscale_store(tmp_path_factory):
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    cfg = prepare_config(
        tmp_path_factory.mktemp("vae_pairs") / "pairs.zarr",
        source=synthetic_source(n_times=30),
        **downscale_overrides(factor=4, size=32, length=3),
    )
    return prepare(validate_prepare_config(cfg)).path


def test_elbo_is_finite_and_decreases_over_a_few_cpu_steps(nowcast_store, tmp_path):
    torch.manual_seed(0)
    cfg = compose_train_config(
        [*NOWCAST_SMALL, f"data.path={nowcast_store}", "data.augment=false"], output_dir=tmp_path
    )
    datamodule, method, _ = build_training(cfg)
    datamodule.setup("fit")
    method.data_info = method.describe_data(datamodule)
    method.check_data(method.data_info)
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = method.configure_optimizers()
    context, target, mask = method._inputs(batch)
    eval_gen = torch.Generator().manual_seed(0)

    def negative_elbo():
        with torch.no_grad():
            out = method._forward(context, target, eval_gen.manual_seed(0))
            return method.elbo_terms(out, target, mask)["nll"].item()

    start = negative_elbo()
    for _ in range(15):
        terms = method.elbo_terms(method._forward(context, target), target, mask)
        assert torch.isfinite(terms["loss"])
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    end = negative_elbo()
    assert math.isfinite(start) and math.isfinite(end)
    assert end < 0.95 * start, (start, end)


@pytest.fixture(scope="module")
def trained_nowcast(nowcast_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_nowcast_run")
    cfg = compose_train_config(
        [*NOWCAST_SMALL, f"data.path={nowcast_store}", "trainer.max_epochs=1", "test=true"],
        output_dir=out,
    )
    return run_train(cfg)


def test_training_logs_elbo_terms_and_forecasts_seeded_ensembles(trained_nowcast, nowcast_store):
    metrics = trained_nowcast.metrics
    for name in ("train/nll", "train/recon", "train/kl", "train/beta", "val/nll"):
        assert math.isfinite(metrics[name]), name
    assert metrics["train/nll"] == pytest.approx(metrics["train/recon"] + metrics["train/kl"])
    test = trained_nowcast.test_metrics[0]
    assert math.isfinite(test["test/nll"]) and test["test/kl"] >= 0
    ckpt = trained_nowcast.last_checkpoint
    context = np.random.default_rng(0).gamma(0.5, 2.0, size=(2, 40, 36)).astype(np.float32)
    context[:, :3, :5] = np.nan
    one = get_forecaster("vae", ckpt=ckpt, device="cpu", batch_members=1)
    three = get_forecaster("vae", ckpt=ckpt, device="cpu", batch_members=3)
    a = one.predict(context, leads=4, members=3, seed=7, timestep_minutes=5.0)
    b = three.predict(context, leads=4, members=3, seed=7, timestep_minutes=5.0)
    assert a.shape == (3, 4, 40, 36)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # independent of batching
    assert np.isnan(a[:, :, :3, :5]).all() and (a[np.isfinite(a)] >= 0).all()
    c = one.predict(context, leads=4, members=3, seed=8, timestep_minutes=5.0)
    assert not np.allclose(np.nan_to_num(a), np.nan_to_num(c))
    assert one.describe()["checkpoint_sha256"]
    with pytest.raises(ForecastError, match="5-minute steps"):
        one.predict(context, leads=4, members=1, seed=0, timestep_minutes=10.0)
    with pytest.raises(ForecastError, match="model 'vae', not 'dgmr'"):
        get_forecaster("dgmr", ckpt=ckpt)
    fc = geogen.forecast(one, _as_xarray(context), members=2, leads=3)
    assert fc.dims == ("member", "lead_time", "y", "x")


def _as_xarray(context):
    import pandas as pd
    import xarray as xr

    times = pd.date_range("2020-01-01T00:00", periods=context.shape[0], freq="5min")
    return xr.DataArray(context, dims=("time", "y", "x"), coords={"time": times}, name="precip")


def test_downscale_training_and_seeded_downscaler(downscale_store, tmp_path):
    cfg = compose_train_config(
        [*DOWNSCALE_SMALL, f"data.path={downscale_store}", "trainer.max_epochs=1"],
        output_dir=tmp_path,
    )
    result = run_train(cfg)
    for name in ("train/nll", "train/recon", "train/kl", "val/nll"):
        assert math.isfinite(result.metrics[name]), name
    model = get_downscaler("vae", ckpt=result.last_checkpoint, device="cpu", batch_members=2)
    lowres = np.random.default_rng(1).gamma(0.5, 2.0, size=(3, 2, 3)).astype(np.float32)
    lowres[0, 1, 2] = np.nan
    a = model.predict(lowres, factor=4, members=3, seed=5)
    b = get_downscaler("vae", ckpt=result.last_checkpoint, device="cpu", batch_members=1).predict(
        lowres, factor=4, members=3, seed=5
    )
    assert a.shape == (3, 3, 8, 12)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.isnan(a[:, 0, 4:8, 8:12]).all() and np.isfinite(a[:, 1]).all()
    with pytest.raises(ForecastError, match="geogen-downscale model=vae"):
        get_forecaster("vae", ckpt=result.last_checkpoint)


def test_checkpoint_metadata_and_exact_resume(nowcast_store, tmp_path, trained_nowcast):
    meta = torch.load(trained_nowcast.last_checkpoint, weights_only=True)["geogen"]
    assert meta["model"] == "vae" and meta["data"]["task"] == "nowcast"
    assert meta["network_config"]["_target_"] == "geogen.models.vae.NowcastVAE"
    assert meta["data"]["transform"] == {"name": "log1p", "scale": 1.0}

    def config(name, *extra):
        return compose_train_config(
            [
                *NOWCAST_SMALL,
                f"data.path={nowcast_store}",
                "trainer.limit_train_batches=2",
                "~callbacks.panels",
                *extra,
            ],
            output_dir=tmp_path / name,
        )

    straight = run_train(config("straight", "trainer.max_epochs=2"))
    first = run_train(config("first", "trainer.max_epochs=1"))
    resumed = run_train(
        config("resumed", "trainer.max_epochs=2", f"ckpt_path={first.last_checkpoint}")
    )
    a = torch.load(straight.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for name in ("train/nll", "train/kl", "val/nll"):
        assert straight.metrics[name] == resumed.metrics[name], name
    assert a["global_step"] == b["global_step"] == 4
