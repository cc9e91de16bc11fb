"""Downscaling GAN (Leinonen et al. 2020): model, WGAN-GP losses, training and downscaling.

A synthetic downscale store (factor 4, 32 x 32 crops, 4 frames) and a generator of width 8
keep every training run to a few seconds on a CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import downscale_overrides, prepare_config, synthetic_source

import geogen
from geogen.downscaling import DownscaleError, coarsen, get_downscaler, open_downscaled
from geogen.downscaling.learned import block_mean, preserve_block_means
from geogen.losses import (
    gradient_penalty,
    interpolate_samples,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)
from geogen.models.downscale_gan import Discriminator, DownscaleGAN, Generator, ResidualBlock
from geogen.nn import ConvGRU
from geogen.training import compose_train_config, run_train

TINY_G = {"width": 8, "noise_channels": 2, "preproc_blocks": 1, "upsample_channels": [8, 8, 4]}
TINY_D = {"width": 8, "branch_channels": [4, 8, 8], "path_blocks": 1}

#: The tiny experiment shrunk further, on the factor-4 synthetic store.
COMMON = (
    "network.generator.factor=4",
    "network.generator.width=8",
    "network.generator.noise_channels=2",
    "network.generator.upsample_channels=[8,8,4]",
    "method.train_crop=null",
    "data.batch_size=2",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "callbacks.panels.every_n_batches=0",
)
SMALL = (
    "experiment=downscale_gan_tiny",
    *COMMON,
    "network.discriminator.width=8",
    "network.discriminator.branch_channels=[4,8,8]",
    "method.critic_steps=2",
)


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- model --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("factor", "steps", "h", "w"), [(2, 1, 3, 5), (4, 3, 4, 4), (16, 2, 2, 3)])
def test_generator_and_critic_shapes(factor, steps, h, w):
    torch.manual_seed(0)
    gen = Generator(factor=factor, **TINY_G | {"upsample_channels": [8, 8, 4, 4, 4]})
    disc = Discriminator(factor=factor, **TINY_D | {"branch_channels": [4, 8, 8, 8]})
    lowres = torch.randn(2, steps, h, w)
    out = gen(lowres)
    assert out.shape == (2, steps, h * factor, w * factor)
    scores = disc(out, lowres)
    assert scores.shape == (2, steps) and torch.isfinite(scores).all()


def test_paper_layout_and_parameter_counts():
    gen, disc = Generator(), Discriminator()
    # Stems: conv to 248 channels + 8 noise channels = 256; ConvGRU of 256 channels.
    assert gen.initial["conv"].out_channels == 248 and gen.update["conv"].out_channels == 248
    assert len(gen.initial["blocks"]) == len(gen.update["blocks"]) == 3
    assert gen.gru.hidden_channels == 256
    assert [b.out_channels for b in gen.blocks] == [256, 256, 128, 64, 32]
    assert gen.upsample == [False, True, True, True, True]
    assert [b.out_channels for b in disc.highres_branch] == [32, 64, 128, 256]
    assert [b.stride for b in disc.highres_branch] == [2, 2, 2, 2]
    assert [b.stride for b in disc.lowres_branch] == [1, 1, 1, 1]
    assert parameters(gen) == 13_610_529 and parameters(disc) == 15_083_201
    # 8 frames of 8 x 8 -> 8 frames of 128 x 128 (checked at the tiny width to stay fast).
    tiny = Generator(**TINY_G | {"upsample_channels": [8, 8, 4, 4, 4]})
    assert tiny(torch.zeros(1, 8, 8, 8)).shape == (1, 8, 128, 128)


def test_noise_drives_the_samples_and_zero_noise_is_deterministic():
    torch.manual_seed(0)
    gen = Generator(factor=4, **TINY_G)
    lowres = torch.randn(1, 3, 4, 4)
    zero = gen.sample_noise(1, 3, 4, 4) * 0
    torch.testing.assert_close(gen(lowres, noise=zero), gen(lowres, noise=zero))
    a = gen(lowres, generator=torch.Generator().manual_seed(1))
    b = gen(lowres, generator=torch.Generator().manual_seed(1))
    c = gen(lowres, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4


def test_input_skip_starts_as_bilinear_interpolation():
    import torch.nn.functional as F

    gen = Generator(factor=4, input_skip=True, **TINY_G)
    lowres = torch.randn(2, 3, 4, 5)
    expected = F.interpolate(lowres, scale_factor=4, mode="bilinear", align_corners=False)
    torch.testing.assert_close(gen(lowres), expected)


def test_generator_is_recurrent_in_time():
    """Frame t depends on earlier frames (ConvGRU), never on later ones."""
    torch.manual_seed(0)
    gen = Generator(factor=2, **TINY_G | {"upsample_channels": [8, 4]})
    lowres = torch.randn(1, 4, 4, 4)
    noise = gen.sample_noise(1, 4, 4, 4)
    base = gen(lowres, noise=noise)
    changed = lowres.clone()
    changed[:, 2] += 1.0
    out = gen(changed, noise=noise)
    torch.testing.assert_close(out[:, :2], base[:, :2])
    assert (out[:, 3] - base[:, 3]).abs().max() > 1e-5


def test_bad_inputs_give_clear_errors():
    gen = Generator(factor=4, **TINY_G)
    disc = Discriminator(factor=4, **TINY_D)
    with pytest.raises(ValueError, match="power of two"):
        Generator(factor=3)
    with pytest.raises(ValueError, match="needs 4 upsampling blocks"):
        Generator(factor=16, upsample_channels=[8, 8, 8])
    with pytest.raises(ValueError, match=r"\(batch, time, h, w\)"):
        gen(torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="noise must be"):
        gen(torch.zeros(1, 2, 4, 4), noise=torch.zeros(1, 2, 2, 4, 4))
    with pytest.raises(ValueError, match="do not match for factor 4"):
        disc(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="factor 4 != discriminator factor 2"):
        DownscaleGAN(gen, Discriminator(factor=2, **TINY_D))


def test_residual_block_and_gru_options():
    block = ResidualBlock(2, 4, stride=2, sn=True)
    assert block(torch.randn(1, 2, 6, 6)).shape == (1, 4, 3, 3)
    with pytest.raises(ValueError, match="even sides"):
        block(torch.randn(1, 2, 5, 6))
    plain = ConvGRU(2, 3, sn=False, padding_mode="reflect")
    assert not hasattr(plain.output, "parametrizations")
    assert hasattr(ConvGRU(2, 3).output, "parametrizations")
    state = plain(torch.randn(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
    assert state.shape == (1, 3, 4, 4)


# -- losses -------------------------------------------------------------------------------------
def test_wasserstein_losses_by_hand():
    real = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    fake = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert wasserstein_critic_loss(real, fake).item() == pytest.approx(0.0 - 2.0)
    assert wasserstein_generator_loss(fake).item() == pytest.approx(0.0)


def test_gradient_penalty_by_hand():
    # Quadratic critic D(x) = 0.5 * sum(x^2): grad = x, so GP = mean((|x| - 1)^2).
    x = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 0.5]], requires_grad=True)
    penalty = gradient_penalty(0.5 * (x**2).sum(dim=1), x)
    assert penalty.item() == pytest.approx(((5 - 1) ** 2 + 0 + 0.25) / 3)
    # Per-time-step scores are summed: D_t(x) = w_t . x -> grad = sum_t w_t = (2, 0, 0).
    y = torch.zeros(2, 3, requires_grad=True)
    w = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    scores = torch.stack([y @ w[0], y @ w[1]], dim=1)  # (batch, time)
    assert gradient_penalty(scores, y).item() == pytest.approx(1.0)
    # Differentiable (the critic trains on it).
    v = torch.tensor([[2.0, 0.0]], requires_grad=True)
    weight = torch.tensor(1.5, requires_grad=True)
    gradient_penalty(weight * (v**2).sum(dim=1), v).backward()
    # GP = (2 * weight * |v| - 1)^2 = (6 - 1)^2; dGP/dweight = 2 * 5 * 2 * |v| = 40.
    assert weight.grad.item() == pytest.approx(40.0)
    with pytest.raises(ValueError, match="require gradients"):
        gradient_penalty(torch.zeros(1), torch.zeros(1, 2))


def test_interpolates_lie_between_real_and_fake():
    real, fake = torch.ones(5, 2, 3), torch.zeros(5, 2, 3)
    mixed = interpolate_samples(real, fake, generator=torch.Generator().manual_seed(0))
    assert mixed.requires_grad
    eps = mixed.detach().flatten(1)
    assert torch.all(eps == eps[:, :1]) and torch.all((eps >= 0) & (eps <= 1))
    assert eps[:, 0].unique().numel() == 5  # one eps per example


def test_critic_gradient_penalty_runs_through_the_recurrent_critic():
    torch.manual_seed(0)
    disc = Discriminator(factor=4, **TINY_D)
    lowres = torch.randn(2, 3, 2, 2)
    mixed = torch.randn(2, 3, 8, 8, requires_grad=True)
    penalty = gradient_penalty(disc(mixed, lowres), mixed)
    penalty.backward()
    assert torch.isfinite(penalty)
    assert all(torch.isfinite(p.grad).all() for p in disc.parameters() if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


# -- mean preservation --------------------------------------------------------------------------
def test_preserve_block_means_by_hand():
    coarse = np.array([[2.0, 0.0]])
    fine = np.array([[1.0, 3.0, 5.0, 0.0], [0.0, 0.0, 1.0, 2.0]])
    out = preserve_block_means(fine, coarse, 2, multiplicative=True)
    np.testing.assert_allclose(block_mean(out, 2), coarse)
    np.testing.assert_allclose(out[:, :2], fine[:, :2] * 2.0)  # scaled by 2 / 1
    dry = preserve_block_means(np.zeros((2, 2)), np.array([[3.0]]), 2, multiplicative=True)
    np.testing.assert_allclose(dry, 3.0)  # a dry block where the input rains gets its value
    add = preserve_block_means(fine, coarse, 2, multiplicative=False)
    np.testing.assert_allclose(add[:, :2], fine[:, :2] + 1.0)


def test_training_windows_keep_pairs_aligned():
    from functools import partial

    import torch.nn.functional as F

    from geogen.methods.downscale_gan import DownscaleGANMethod

    torch.manual_seed(0)
    network = DownscaleGAN(Generator(factor=4, **TINY_G), Discriminator(factor=4, **TINY_D))
    adam = partial(torch.optim.Adam, lr=1e-4)
    method = DownscaleGANMethod(
        network, {"generator": adam, "discriminator": adam}, train_crop=8, train_frames=2
    )
    target = torch.rand(2, 5, 24, 32)
    batch = {"target": target, "lowres": F.avg_pool2d(target, 4)}
    for _ in range(5):
        lowres, crop, mask = method._inputs(batch, crop=True)
        assert lowres.shape == (2, 2, 2, 2) and crop.shape == mask.shape == (2, 2, 8, 8)
        torch.testing.assert_close(F.avg_pool2d(crop, 4), lowres)
    lowres, whole, _ = method._inputs(batch)
    assert whole.shape == target.shape


# -- training and downscaling -------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    cfg = prepare_config(
        tmp_path_factory.mktemp("gan_store") / "pairs.zarr",
        source=synthetic_source(shape=[64, 64], n_times=30),
        **downscale_overrides(factor=4, size=32, length=4),
    )
    return prepare(validate_prepare_config(cfg)).path


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan_train")
    cfg = compose_train_config(
        [*SMALL, f"data.path={store}", "trainer.max_epochs=2"], output_dir=out
    )
    return run_train(cfg)


def test_training_step_has_finite_losses_and_updates_both_networks(store, tmp_path):
    from geogen.training import build_training

    cfg = compose_train_config(
        [*SMALL, f"data.path={store}", "trainer.max_epochs=1"], output_dir=tmp_path
    )
    datamodule, method, trainer = build_training(cfg)
    before = {k: v.detach().clone() for k, v in method.network.state_dict().items()}
    trainer.fit(method, datamodule=datamodule)
    metrics = trainer.callback_metrics
    for key in ("train/d_loss", "train/g_loss", "train/gradient_penalty"):
        assert torch.isfinite(metrics[key]), key
    after = method.network.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"generator", "discriminator"}
    # critic_steps + 1 optimizer steps per batch.
    assert trainer.global_step == 3


def test_deterministic_twin_trains_on_mse(store, tmp_path):
    cfg = compose_train_config(
        ["experiment=downscale_det_tiny", *COMMON, f"data.path={store}", "trainer.max_epochs=1"],
        output_dir=tmp_path,
    )
    result = run_train(cfg)
    assert np.isfinite(result.metrics["train/mse"])
    model = get_downscaler("downscale_det", ckpt=result.last_checkpoint, device="cpu")
    out = model.predict(np.ones((2, 3, 3), np.float32), factor=4, members=3, seed=0)
    np.testing.assert_array_equal(out[0], out[2])  # zero noise: every member the same


def test_checkpoint_records_the_data_and_panels(trained):
    state = torch.load(trained.last_checkpoint, weights_only=True)
    meta = state["geogen"]
    assert meta["model"] == "downscale_gan"
    assert meta["data"]["task"] == "downscale" and meta["data"]["factor"] == 4
    assert meta["data"]["transform"]["name"] == "log10"
    assert meta["network_config"]["generator"]["factor"] == 4
    assert (Path(trained.output_dir) / "panels" / "final.png").is_file()


@pytest.fixture(scope="module")
def lowres() -> xr.DataArray:
    rng = np.random.default_rng(0)
    values = rng.gamma(0.6, 2.0, size=(3, 6, 5)).astype(np.float32)
    values[values < 0.3] = 0.0
    return xr.DataArray(
        values,
        dims=("time", "y", "x"),
        coords={"y": np.arange(6) * 4000.0, "x": np.arange(5) * 4000.0},
        name="precip",
        attrs={"units": "mm/h"},
    )


def test_ensemble_is_seeded_and_independent_of_batching(trained, lowres):
    one = get_downscaler(
        "downscale_gan", ckpt=trained.last_checkpoint, device="cpu", batch_members=1
    )
    three = get_downscaler(
        "downscale_gan", ckpt=trained.last_checkpoint, device="cpu", batch_members=3
    )
    a = geogen.downscale(one, lowres, members=4, seed=7)
    b = geogen.downscale(three, lowres, members=4, seed=7)
    c = geogen.downscale(one, lowres, members=4, seed=8)
    assert a.dims == ("member", "time", "y", "x") and a.shape == (4, 3, 24, 20)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)
    assert np.abs(a.values - c.values).max() > 0
    assert np.abs(a.values[0] - a.values[1]).max() > 0  # members differ
    assert (a.values >= 0).all() and np.isfinite(a.values).all()
    assert a.attrs["settings"]["checkpoint_sha256"]


def test_downscaled_ensemble_coarsens_back_to_its_input(trained, lowres):
    model = get_downscaler(
        "downscale_gan", ckpt=trained.last_checkpoint, device="cpu", preserve_mean=True
    )
    out = geogen.downscale(model, lowres, members=3, seed=0)
    for member in range(3):
        back = coarsen(out.isel(member=member).drop_vars("member"), 4)
        np.testing.assert_allclose(back.values, lowres.values, rtol=1e-4, atol=1e-5)
    # Without the correction the (barely trained) model's block means are only reported.
    raw = geogen.downscale(
        get_downscaler("downscale_gan", ckpt=trained.last_checkpoint, device="cpu"),
        lowres,
        members=3,
    )
    raw_means = block_mean(raw.values, 4)
    bias = float(raw_means.mean() / lowres.values.mean())
    assert 0 < bias < 10, bias
    # ... and they differ from the input: preserve_mean is what made the check above pass.
    assert np.abs(raw_means - lowres.values[None]).max() > 1e-3


def test_missing_cells_stay_missing(trained, lowres):
    holes = lowres.copy()
    holes[0, 1, 2] = np.nan
    out = geogen.downscale("downscale_gan", holes, ckpt=trained.last_checkpoint, device="cpu")
    assert np.isnan(out.values[0, 0, 4:8, 8:12]).all()
    assert np.isfinite(out.values[0, 1]).all()


def test_downscale_errors(trained, lowres, tmp_path, store):
    ckpt = trained.last_checkpoint
    with pytest.raises(DownscaleError, match="trained for factor 4, not 8"):
        geogen.downscale("downscale_gan", lowres, factor=8, ckpt=ckpt, device="cpu")
    with pytest.raises(DownscaleError, match=r"dims \(time, y, x\)"):
        geogen.downscale("downscale_gan", lowres.isel(time=0), ckpt=ckpt, device="cpu")
    with pytest.raises(DownscaleError, match="trained on 'precip'"):
        geogen.downscale("downscale_gan", lowres.rename("t2m"), ckpt=ckpt, device="cpu")
    with pytest.raises(DownscaleError, match="at least one frame of 2 x 2"):
        geogen.downscale("downscale_gan", lowres.isel(y=[0]), ckpt=ckpt, device="cpu")
    with pytest.raises(DownscaleError, match="not divisible by the factor 4"):
        coarsen(lowres.isel(y=slice(0, 5)), 4)
    with pytest.raises(DownscaleError, match="needs a checkpoint.*ships .* for: downscale_gan"):
        get_downscaler("downscale_det")  # downscale_gan has a shipped checkpoint, this does not
    with pytest.raises(DownscaleError, match="no checkpoint file"):
        get_downscaler("downscale_gan", ckpt=tmp_path / "missing.ckpt")
    with pytest.raises(DownscaleError, match="not 'downscale_det'"):
        get_downscaler("downscale_det", ckpt=ckpt)


def test_training_refuses_a_store_of_another_factor(store, tmp_path):
    cfg = compose_train_config(
        [*SMALL, f"data.path={store}", "network.generator.factor=2"], output_dir=tmp_path
    )
    with pytest.raises(ValueError, match="factor 4; the generator's is 2"):
        run_train(cfg)


def test_geogen_downscale_command_writes_cf_netcdf(trained, lowres, tmp_path):
    path = tmp_path / "lowres.nc"
    lowres.to_dataset().to_netcdf(path)
    out = tmp_path / "hr.nc"
    cmd = [
        str(Path(sys.executable).with_name("geogen-downscale")),
        "model=downscale_gan",
        f"ckpt={trained.last_checkpoint}",
        f"input={path}",
        "members=3",
        "device=cpu",
        "baseline.downscale_gan.preserve_mean=true",
        "progress=false",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    hr = open_downscaled(out)
    assert hr.dims == ("member", "time", "y", "x") and hr.shape == (3, 3, 24, 20)
    np.testing.assert_allclose(hr["x"].values[:4], [-1500.0, -500.0, 500.0, 1500.0])
    assert hr.attrs["model"] == "downscale_gan"
    assert hr.attrs["settings"]["preserve_mean"] is True
    np.testing.assert_allclose(
        block_mean(hr.values, 4), np.broadcast_to(lowres.values, (3, 3, 6, 5)), rtol=1e-4, atol=1e-5
    )
