"""The residual downscaler (RainFARM + learned residual), its losses and the pair lists.

Synthetic data only: a factor-4 pair store of 32 x 32 crops keeps each training to seconds.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import downscale_overrides

from geogen.data import CropDataset
from geogen.data.augment import dihedral
from geogen.downscaling import get_downscaler
from geogen.io.store import StoreError
from geogen.losses import almost_fair_crps, ensemble_crps, log_spectral_loss, radial_power
from geogen.models.downscale_residual import (
    ResidualGenerator,
    conserve_block_means,
    power_law_noise,
    rainfarm_slope,
)
from geogen.training import compose_train_config, run_train

with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints where its config file is
    from pysteps.downscaling import rainfarm as pysteps_rainfarm


def rain(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Log-normal rain with dry cells, mm/h."""
    g = torch.Generator().manual_seed(seed)
    values = torch.exp(torch.randn(shape, generator=g))
    return torch.where(torch.rand(shape, generator=g) < 0.2, torch.zeros_like(values), values)


# -- the generator --------------------------------------------------------------------------
def test_shapes_and_exact_block_means():
    generator = ResidualGenerator(factor=4, width=8, blocks=1)
    lowres = rain(0, (2, 3, 5, 6))
    out = generator(lowres, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 3, 20, 24)
    assert (out >= 0).all()
    means = torch.nn.functional.avg_pool2d(out.flatten(0, 1).unsqueeze(1), 4).reshape(2, 3, 5, 6)
    torch.testing.assert_close(means, lowres, rtol=1e-4, atol=1e-6)
    dry = lowres == 0
    blocks = out.reshape(2, 3, 5, 4, 6, 4).permute(0, 1, 2, 4, 3, 5)  # (..., h, w, 4, 4)
    assert blocks[dry].abs().max() == 0
    assert (blocks[~dry].amax(dim=(-2, -1)) > blocks[~dry].amin(dim=(-2, -1))).all()


def test_trained_residual_keeps_block_means():
    generator = ResidualGenerator(factor=4, width=8, blocks=1)
    with torch.no_grad():  # a non-trivial residual: mass is still conserved
        for parameter in generator.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    lowres = rain(2, (1, 2, 4, 4))
    out = generator(lowres)
    means = torch.nn.functional.avg_pool2d(out.flatten(0, 1).unsqueeze(1), 4).reshape(lowres.shape)
    torch.testing.assert_close(means, lowres, rtol=1e-4, atol=1e-6)


def test_seeded_noise_gives_the_same_members_and_new_noise_new_ones():
    generator = ResidualGenerator(factor=4, width=8, blocks=1)
    lowres = rain(3, (1, 2, 4, 4))
    a = generator(lowres, generator=torch.Generator().manual_seed(5))
    b = generator(lowres, generator=torch.Generator().manual_seed(5))
    c = generator(lowres, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3
    noise = generator.sample_noise(1, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    assert noise.shape == (1, 3, 16, 4, 4)
    torch.testing.assert_close(generator(lowres, noise=noise), a)


def test_untrained_generator_is_rainfarm_on_a_bilinear_base():
    """Zero-initialised outputs: ``B * exp(sigma0 z)`` rescaled to the block means."""
    generator = ResidualGenerator(factor=4, width=8, blocks=1, sigma=0.7)
    lowres = rain(4, (1, 1, 6, 6))
    noise = generator.sample_noise(1, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    out = generator(lowres, noise=noise)[0, 0]
    white = torch.nn.functional.pixel_shuffle(noise[:, 1], 4)[0]
    alpha = rainfarm_slope(lowres[0]).clamp(0.0, 8.0)  # slopes kept in [0, 8]
    z = power_law_noise(white, alpha)[0]
    base = torch.nn.functional.interpolate(lowres, scale_factor=4, mode="bilinear")[0, 0]
    expected = conserve_block_means((base * torch.exp(0.7 * z))[None], lowres[0], 4)[0]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)


def test_rainfarm_slope_equals_pysteps():
    field = rain(5, (16, 16)).numpy().astype(np.float64)
    k = pysteps_rainfarm._compute_freq_array(field)
    expected = pysteps_rainfarm._estimate_alpha(field, k)
    got = rainfarm_slope(torch.from_numpy(field)).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert torch.isnan(rainfarm_slope(torch.zeros(2, 8, 8))).all()


def test_power_law_noise_has_unit_variance_and_the_asked_slope():
    white = torch.randn(64, 64, 64, generator=torch.Generator().manual_seed(0))
    for beta in (1.0, 3.0):
        z = power_law_noise(white, torch.full((64,), beta))
        torch.testing.assert_close(z.std(dim=(-2, -1)), torch.ones(64), rtol=1e-4, atol=1e-4)
        power = radial_power(z).mean(dim=0)  # rings 1..31
        k = torch.arange(1, power.numel() + 1, dtype=torch.float64)
        keep = (k >= 2) & (k <= 24)
        slope = np.polyfit(np.log(k[keep]), np.log(power[keep].double()), 1)[0]
        assert slope == pytest.approx(-beta, abs=0.15)


def test_bad_inputs_give_clear_errors():
    generator = ResidualGenerator(factor=4, width=8, blocks=1)
    with pytest.raises(ValueError, match="batch, time, h, w"):
        generator(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="noise must be"):
        generator(torch.zeros(1, 2, 4, 4), noise=torch.zeros(1, 2, 16, 4, 4))
    with pytest.raises(ValueError, match="power of two"):
        ResidualGenerator(factor=6)


# -- losses ----------------------------------------------------------------------------------
def test_almost_fair_crps_by_hand():
    samples = torch.tensor([[0.0], [1.0], [3.0]])
    target = torch.tensor([1.0])
    skill = (1 + 0 + 2) / 3
    pairs = 1 + 3 + 2  # i < j
    fair = skill - pairs / 6
    plain = skill - pairs / 9
    assert almost_fair_crps(samples, target, alpha=1.0).item() == pytest.approx(fair)
    assert almost_fair_crps(samples, target, alpha=0.0).item() == pytest.approx(plain)
    assert almost_fair_crps(samples, target, alpha=0.95).item() == pytest.approx(
        0.95 * fair + 0.05 * plain
    )
    torch.testing.assert_close(
        almost_fair_crps(samples, target, alpha=1.0), ensemble_crps(samples, target)
    )


def test_spectral_loss_zero_for_the_same_power_and_grows_with_smoothing():
    target = rain(6, (3, 32, 32))
    assert log_spectral_loss(target[None].repeat(2, 1, 1, 1), target).item() == pytest.approx(0)
    smooth = torch.nn.functional.avg_pool2d(target[:, None], 4)
    smooth = torch.nn.functional.interpolate(smooth, scale_factor=4, mode="bilinear")[:, 0]
    assert log_spectral_loss(smooth[None], target).item() > 0.5
    assert log_spectral_loss(torch.zeros(1, 2, 8, 8), torch.zeros(2, 8, 8)).item() == 0.0


# -- the pair list: mixed steps, augmentation -------------------------------------------------
@pytest.fixture(scope="module")
def pair_stores(tmp_path_factory):
    """Two factor-4 pair stores of different time steps (5 and 10 min), and a nowcast one."""
    from conftest import prepare_config, synthetic_source

    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    root = tmp_path_factory.mktemp("pairs")

    def build(name, timestep, **overrides):
        cfg = prepare_config(
            root / f"{name}.zarr",
            source=synthetic_source(timestep=timestep, name=name, seed=timestep),
            **overrides,
        )
        return prepare(validate_prepare_config(cfg)).path

    spans = {"val": [["2020-01-01T00:00", "2020-01-01T00:00"]], "test": []}
    ten_min = {"split": {"ranges": spans}}
    return {
        "five": build("five", 5.0, **downscale_overrides()),
        "ten": build("ten", 10.0, **downscale_overrides(), **ten_min),
        "nowcast_five": build("nowcast_five", 5.0),
        "nowcast_ten": build("nowcast_ten", 10.0),
    }


def test_pair_stores_of_different_steps_combine_and_record_their_step(pair_stores):
    five = CropDataset(pair_stores["five"], split="train", transform="identity")
    ten = CropDataset(pair_stores["ten"], split="train", transform="identity")
    both = CropDataset(
        [pair_stores["five"], pair_stores["ten"]], split="train", transform="identity"
    )
    assert len(both) == len(five) + len(ten)
    steps = both.step_minutes
    assert (steps[: len(five)] == 5.0).all() and (steps[len(five) :] == 10.0).all()
    assert set(both.sources) == {"five", "ten"}
    last = both[len(both) - 1]
    assert last["step_minutes"].item() == 10.0 and last["source"] == "ten"
    torch.testing.assert_close(last["target"], ten[len(ten) - 1]["target"])
    with pytest.raises(StoreError, match="mix time steps"):
        _ = both.time_offsets_minutes
    np.testing.assert_array_equal(ten.time_offsets_minutes, [0, 10, 20, 30])


def test_nowcast_stores_of_different_steps_are_refused(pair_stores):
    with pytest.raises(StoreError, match="timestep_minutes"):
        CropDataset([pair_stores["nowcast_five"], pair_stores["nowcast_ten"]], split="train")


def test_augmentation_applies_one_dihedral_map_to_lowres_and_target(pair_stores):
    plain = CropDataset(pair_stores["five"], split="train", transform="identity")
    augmented = CropDataset(pair_stores["five"], split="train", transform="identity", augment=True)
    seen = set()
    for position in range(min(len(plain), 16)):
        torch.manual_seed(position)
        op = int(torch.randint(0, 8, ()).item())
        torch.manual_seed(position)
        item, reference = augmented[position], plain[position]
        for key in ("target", "lowres", "mask"):
            torch.testing.assert_close(item[key], dihedral(reference[key], op))
        means = torch.nn.functional.avg_pool2d(item["target"][:, None], 4)[:, 0]
        torch.testing.assert_close(means, item["lowres"], rtol=1e-5, atol=1e-5)
        seen.add(op)
    assert len(seen) >= 4


# -- training ---------------------------------------------------------------------------------
def test_crps_training_runs_and_the_checkpoint_downscales_with_exact_block_means(
    pair_stores, tmp_path
):
    overrides = [
        "experiment=downscale_residual_tiny",
        f"data.path={pair_stores['five']}",
        "network.generator.factor=4",
        "network.generator.width=8",
        "network.generator.blocks=1",
        "data.batch_size=2",
        "trainer.max_epochs=3",
        "trainer.limit_val_batches=2",
        "trainer.num_sanity_val_steps=0",
        "callbacks.panels.every_n_batches=0",
        f"hydra.run.dir={tmp_path}",
    ]
    result = run_train(compose_train_config(overrides))
    # the checkpoint loads as model=downscale_gan (the generator is rebuilt from its config)
    model = get_downscaler("downscale_gan", ckpt=result.last_checkpoint, device="cpu")
    assert isinstance(model.generator, ResidualGenerator)
    assert model.generator.structure.weight.abs().max() > 0  # the residual left zero
    lowres = rain(7, (2, 4, 4)).numpy()
    out = model.predict(lowres, factor=4, members=3, seed=0)
    assert out.shape == (3, 2, 16, 16)
    means = out.reshape(3, 2, 4, 4, 4, 4).mean(axis=(-3, -1))
    np.testing.assert_allclose(means, np.broadcast_to(lowres, means.shape), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out, model.predict(lowres, factor=4, members=3, seed=0))


def test_crps_method_refuses_a_log_transform(pair_stores, tmp_path):
    cfg = compose_train_config(
        [
            "experiment=downscale_residual_tiny",
            f"data.path={pair_stores['five']}",
            "network.generator.factor=4",
            "data.transform=log1p",
            "trainer.max_epochs=1",
            f"hydra.run.dir={tmp_path}",
        ]
    )
    with pytest.raises(ValueError, match="transform=identity"):
        run_train(cfg)


def test_radar_downscale_all_lists_every_source_with_rmi_validation_and_mch_test():
    cfg = compose_train_config(["experiment=downscale_residual", "paths.stores=/stores"])
    names = [Path(path).name for path in cfg.data.path]
    assert names == [
        "mch.zarr",
        "fmi.zarr",
        "bom.zarr",
        "bom_c10.zarr",
        "opera.zarr",
        "opera_cirrus.zarr",
        "mrms.zarr",
    ]
    assert all(str(path).startswith("/stores/downscale/") for path in cfg.data.path)
    assert cfg.data.val_path == "/stores/downscale/rmi.zarr"
    assert cfg.data.test_path == "/stores/downscale/mch.zarr"
    assert cfg.data.transform == "identity" and cfg.data.augment
    assert cfg.callbacks.model_checkpoint.monitor == "val/crps"
