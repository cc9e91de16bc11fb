"""dgmr_advect: the ensemble CRPS loss, advection conditioning, multi-store training, checkpoints.

Synthetic stores of 64 x 64 crops (4 + 6 frames) and generators of base width 2 keep every
run to seconds on a CPU.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepare_config, synthetic_source

import geogen
from geogen.data import CropDataset
from geogen.data.advection import AdvectionCache, advect
from geogen.data.dataset import dihedral
from geogen.forecasting import ForecastError, get_forecaster
from geogen.io import open_source
from geogen.losses import ensemble_crps, ensemble_spread_skill, grid_cell_regulariser, pooled_crps
from geogen.models.dgmr import DGMR, Discriminator, Generator, parameter_counts
from geogen.models.dgmr_advect import GAIN_RATE, AdvectionGenerator
from geogen.training import compose_train_config, run_train


# -- the ensemble CRPS ------------------------------------------------------------------------
def crps_reference(samples: np.ndarray, obs: np.ndarray, fair: bool) -> np.ndarray:
    """Per pixel, by the definition: mean |x - y| - sum_ij |x_i - x_j| / (2 S^2 or 2 S (S-1))."""
    s = samples.shape[0]
    skill = np.abs(samples - obs).mean(axis=0)
    pairs = sum(np.abs(samples[i] - samples[j]) for i in range(s) for j in range(s))
    return skill - pairs / (2 * s * (s - 1) if fair else 2 * s * s)


@pytest.mark.parametrize("fair", [True, False])
def test_ensemble_crps_matches_the_definition(fair):
    rng = np.random.default_rng(0)
    samples = rng.gamma(1.0, 2.0, (5, 2, 3, 8, 8)).astype(np.float32)
    obs = rng.gamma(1.0, 2.0, (2, 3, 8, 8)).astype(np.float32)
    value = ensemble_crps(torch.from_numpy(samples), torch.from_numpy(obs), fair=fair)
    assert float(value) == pytest.approx(crps_reference(samples, obs, fair).mean(), rel=1e-5)


def test_ensemble_crps_closed_forms_and_mask():
    # one member at distance d: the CRPS is d (empirical); two members a, b around y: known value
    target = torch.zeros(1, 1, 1, 1)
    one = torch.full((1, 1, 1, 1, 1), 3.0)
    assert float(ensemble_crps(one, target, fair=False)) == pytest.approx(3.0)
    two = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1)
    # fair: mean|x - y| = 1, spread term |1 - (-1)| * 2 / (2 * 2 * 1) = 1 -> 0
    assert float(ensemble_crps(two, target, fair=True)) == pytest.approx(0.0)
    assert float(ensemble_crps(two, target, fair=False)) == pytest.approx(0.5)
    samples = torch.rand(3, 1, 2, 4, 4)
    obs = torch.rand(1, 2, 4, 4)
    mask = torch.zeros_like(obs, dtype=torch.bool)
    mask[0, 1] = True
    masked = ensemble_crps(samples, obs, mask=mask)
    assert float(masked) == pytest.approx(float(ensemble_crps(samples[:, :, 1:], obs[:, 1:])))
    with pytest.raises(ValueError, match="at least 2 samples"):
        ensemble_crps(samples[:1], obs)


def test_pooled_crps_scores_the_pooled_fields():
    samples, obs = torch.rand(4, 2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert float(pooled_crps(samples, obs, [1])) == pytest.approx(
        float(ensemble_crps(samples, obs))
    )
    pooled_samples = torch.nn.functional.avg_pool2d(samples.flatten(0, 1), 4).view(4, 2, 3, 4, 4)
    expected = ensemble_crps(pooled_samples, torch.nn.functional.avg_pool2d(obs, 4))
    assert float(pooled_crps(samples, obs, [4])) == pytest.approx(float(expected))
    both = pooled_crps(samples, obs, [1, 4])
    assert float(both) == pytest.approx((float(ensemble_crps(samples, obs)) + float(expected)) / 2)


def test_crps_pushes_a_collapsed_ensemble_apart_the_grid_regulariser_does_not():
    """Why DGMR collapses at small budgets: the grid-cell term sees only the samples' mean."""
    target = torch.tensor([[[[0.0, 4.0]]]])  # (batch, lead, y, x)
    collapsed = torch.full((4, 1, 1, 1, 2), 2.0, requires_grad=True)
    jitter = torch.tensor([0.01, -0.01, 0.02, -0.02]).view(4, 1, 1, 1, 1)
    samples = collapsed + jitter
    grid = grid_cell_regulariser(samples, target, clip=24.0)
    (grad_grid,) = torch.autograd.grad(grid, collapsed)
    assert torch.allclose(grad_grid, grad_grid[:1].expand_as(grad_grid))  # same pull on all
    crps = ensemble_crps(samples, target)
    (grad_crps,) = torch.autograd.grad(crps, collapsed)
    # the spread term drives members that sit above the others further up and vice versa
    assert grad_crps[2].sum() < grad_crps[3].sum()
    stats = ensemble_spread_skill(samples.detach(), target)
    assert float(stats["spread_skill"]) < 0.05


# -- the network ------------------------------------------------------------------------------
def small_generator(**kw) -> AdvectionGenerator:
    return AdvectionGenerator(base_channels=2, latent_channels=2, lead_frames=6, **kw)


def test_dgmr_parameter_counts_unchanged_by_the_extension():
    torch.manual_seed(0)
    counts = parameter_counts(DGMR(Generator(base_channels=4, latent_channels=4), Discriminator(4)))
    assert counts["generator"] == 1_478_013


def test_advection_generator_starts_at_the_extrapolation_and_learns_a_residual():
    torch.manual_seed(0)
    gen = small_generator()
    context, advected = torch.rand(2, 4, 64, 64), torch.rand(2, 6, 64, 64)
    out = gen(context, advected=advected)
    assert out.shape == (2, 6, 64, 64)
    torch.testing.assert_close(out, advected)  # gain 0: exactly the advection forecast
    with torch.no_grad():
        gen.residual_gain.fill_(0.5 / GAIN_RATE)
    gen.eval()  # fixed spectral-norm vectors and batch-norm statistics
    z = gen.sample_latent(2, 64, 64, generator=torch.Generator().manual_seed(1))
    a = gen(context, advected=advected, z=z)
    b = gen(context, advected=advected, z=z)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, advected)
    other = gen(context, advected=advected, z=torch.randn_like(z))
    assert (a - other).abs().max() > 1e-4  # the latent reaches the output
    shifted = gen(context, advected=advected.roll(8, dims=-1), z=z)
    assert (a - shifted).abs().max() > 1e-4  # and so do the advected frames
    assert set(gen.conditions) == {"advected"}


def test_multiscale_noise_is_ar1_in_time_with_unit_variance():
    gen = small_generator(noise_scales=[1])
    with torch.no_grad():
        gen.noise_memory.fill_(float(torch.logit(torch.tensor(0.8))) / GAIN_RATE)
    draws = gen.sample_noise(64, 6, 32, 32, generator=torch.Generator().manual_seed(0))
    field = gen.noise_field(draws, 32, 32).detach()
    assert field.shape == (64, 6, 32, 32)
    assert float(field.std()) == pytest.approx(1.0, abs=0.02)
    lag1 = float((field[:, 1:] * field[:, :-1]).mean())
    assert lag1 == pytest.approx(0.8, abs=0.02)
    lag3 = float((field[:, 3:] * field[:, :-3]).mean())
    assert lag3 == pytest.approx(0.8**3, abs=0.03)
    coarse = small_generator(noise_scales=[2, 8, 32])
    draws = coarse.sample_noise(1, 6, 64, 96)
    assert [tuple(d.shape) for d in draws] == [(1, 6, 32, 48), (1, 6, 8, 12), (1, 6, 2, 3)]
    assert coarse.noise_field(draws, 64, 96).shape == (1, 6, 64, 96)


def test_noise_gives_members_spread_from_the_first_step():
    torch.manual_seed(0)
    gen = small_generator(noise_scales=[2, 8]).eval()
    context, advected = torch.rand(1, 4, 64, 64), torch.rand(1, 6, 64, 64) + 1.0
    a = gen(context, advected=advected, generator=torch.Generator().manual_seed(1))
    b = gen(context, advected=advected, generator=torch.Generator().manual_seed(2))
    same = gen(context, advected=advected, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, same)
    spread = (a - b).abs().mean()
    assert 1e-3 < float(spread) < 0.5  # tau = 0.05 at initialisation: small but not zero
    with pytest.raises(ValueError, match="noise must be innovations"):
        gen(context, advected=advected, noise=[torch.zeros(1, 6, 8, 8)])


def test_advection_generator_input_errors():
    gen = small_generator()
    context = torch.rand(1, 4, 64, 64)
    with pytest.raises(ValueError, match="needs the advected frames"):
        gen(context)
    with pytest.raises(ValueError, match="advected must be"):
        gen(context, advected=torch.rand(1, 6, 32, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        gen(torch.rand(1, 4, 48, 64), advected=torch.rand(1, 6, 48, 64))


# -- advection --------------------------------------------------------------------------------
def moving_blobs(frames: int, shift: int, size: int = 96) -> np.ndarray:
    """Gaussian rain cells moving ``shift`` pixels per frame along x (mm/h)."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    out = []
    for t in range(frames):
        field = np.zeros((size, size), np.float32)
        for cy, cx, r in ((30, 20, 6), (60, 35, 9), (45, 10, 5)):
            field += 12 * np.exp(-((y - cy) ** 2 + (x - cx - shift * t) ** 2) / (2 * r**2))
        out.append(field)
    return np.stack(out)


def test_advect_recovers_a_known_motion():
    frames = moving_blobs(4 + 5, shift=3)
    advected = advect(frames[:4], 5)
    assert advected.shape == (5, 96, 96) and np.isfinite(advected).all()
    assert advected.min() >= 0
    for lead in range(5):
        truth, persistence = frames[4 + lead], frames[3]
        error = np.abs(advected[lead] - truth).mean()
        assert error < 0.5 * np.abs(persistence - truth).mean(), lead
        assert np.corrcoef(advected[lead].ravel(), truth.ravel())[0, 1] > 0.9


def test_advect_of_a_frame_with_no_data_is_zero():
    frames = np.full((4, 32, 32), np.nan, np.float32)
    assert (advect(frames, 3) == 0).all()


# -- multi-store data with advection ----------------------------------------------------------
LEAD = 6
SOURCES = {
    "alpha": synthetic_source(name="alpha", shape=[64, 64], n_times=40, seed=3),
    "beta": synthetic_source(name="beta", shape=[64, 64], n_times=40, seed=4, nan_border=2),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> list[Path]:
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    root = tmp_path_factory.mktemp("advect_stores")
    out = []
    for name, source in SOURCES.items():
        cfg = prepare_config(
            root / f"{name}.zarr",
            source=source,
            crop={"size": 64, "stride": 64},
            sequence={"context": 4, "lead": LEAD, "length": None, "stride": 2},
            reject={"max_nan_fraction": 0.5},
            split={
                "ranges": {
                    "val": [],
                    "test": [["2020-01-01T02:00", "2020-01-01T03:15"]],
                }
            },
        )
        out.append(prepare(validate_prepare_config(cfg)).path)
    return out


def test_dataset_over_several_stores_records_source_and_advection(stores):
    ds = CropDataset(stores, split="train", transform="log1p", advection={"progress": False})
    assert set(ds.sources) == {"alpha", "beta"}
    assert len(ds) == sum(len(CropDataset(p, split="train")) for p in stores)
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert item["source"] == ds.sources[i]
        store = ds.paths[int(item["store"])]
        raw = np.asarray(
            __import__("zarr").open_group(store, mode="r")["precip"][int(item["index"])]
        )
        expected = advect(raw[:4], LEAD)
        torch.testing.assert_close(item["advected"], torch.log1p(torch.from_numpy(expected)))
    # the cache is filled once: a second dataset computes nothing
    caches = [AdvectionCache(p) for p in stores]
    assert all(cache.path.is_dir() for cache in caches)
    assert all(cache.missing(np.arange(cache.n_samples)).size < cache.n_samples for cache in caches)
    assert (
        sum(c.fill(ds._indices[ds._store_ids == n], progress=False) for n, c in enumerate(caches))
        == 0
    )


def test_augmentation_moves_the_advected_frames_with_the_sample(stores):
    plain = CropDataset(stores[0], split="train", advection={"progress": False})
    augmented = CropDataset(stores[0], split="train", augment=True, advection={"progress": False})
    for seed in range(6):
        torch.manual_seed(seed)
        item = augmented[1]
        torch.manual_seed(seed)
        op = int(torch.randint(0, 8, ()).item())
        reference = plain[1]
        torch.testing.assert_close(item["advected"], dihedral(reference["advected"], op))
        torch.testing.assert_close(item["context"], dihedral(reference["context"], op))


def test_advection_cache_key_follows_settings_and_errors(stores, build_store):
    default, other = AdvectionCache(stores[0]), AdvectionCache(stores[0], {"interp_order": 0})
    assert default.key != other.key
    downscale = build_store(
        "ds",
        task={"name": "downscale", "factor": 4},
        crop={"size": 32, "stride": 32},
        sequence={"context": None, "lead": None, "length": 4, "stride": 1},
        reject={"max_nan_fraction": 0.0},
    )
    with pytest.raises(ValueError, match="needs a nowcast store"):
        AdvectionCache(downscale)


# -- training and forecasting -----------------------------------------------------------------
TINY = (
    "experiment=dgmr_advect_tiny",
    "network.generator.base_channels=2",
    "network.generator.latent_channels=2",
    f"network.generator.lead_frames={LEAD}",
    "network.discriminator.base_channels=2",
    "network.discriminator.spatial_frames=4",
    "network.discriminator.temporal_crop=64",
    "method.num_samples=2",
    "method.val_samples=2",
    "method.train_crop=null",
    "method.crps_pools=[1,4]",
    "data.batch_size=2",
    "data.advection={progress:false}",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "callbacks.panels.every_n_batches=0",
)


def tiny_config(stores, out, *overrides):
    paths = "[" + ",".join(str(p) for p in stores) + "]"
    return compose_train_config([*TINY, f"data.path={paths}", *overrides], output_dir=out)


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("advect_train")
    return run_train(tiny_config(stores, out, "trainer.max_epochs=2"))


def test_training_on_two_stores_logs_spread_and_records_the_data(trained, stores):
    metrics = trained.metrics
    for name in ("train/g_loss", "train/crps", "train/spread", "train/rmse", "train/spread_skill"):
        assert np.isfinite(metrics[name]), name
    assert metrics["train/spread"] > 0  # two different samples per input
    meta = torch.load(trained.last_checkpoint, weights_only=True)["geogen"]
    assert meta["model"] == "dgmr_advect"
    assert meta["data"]["stores"] == [str(p) for p in stores]
    assert meta["data"]["advection"]["motion"] == "lucaskanade"
    state = torch.load(trained.last_checkpoint, weights_only=True)["state_dict"]
    assert float(state["network.generator.residual_gain"]) != 0.0  # it learned a residual
    csv = (trained.output_dir / "csv" / "metrics.csv").read_text()
    assert "train/spread_skill" in csv and "train/grid_reg" in csv


def test_scoring_rule_training_leaves_the_discriminators_alone(stores, tmp_path):
    from geogen.training import build_training

    datamodule, method, trainer = build_training(
        tiny_config(stores, tmp_path, "trainer.max_epochs=1", "trainer.limit_val_batches=0")
    )
    before = {k: v.clone() for k, v in method.network.discriminator.state_dict().items()}
    calls = []
    method.network.discriminator.register_forward_pre_hook(lambda m, a: calls.append(1))
    trainer.fit(method, datamodule=datamodule)
    assert not calls
    after = method.network.discriminator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.global_step == 2  # one generator step per batch


def test_training_needs_advection_in_the_data(stores, tmp_path):
    from geogen.training import build_training

    cfg = tiny_config(stores, tmp_path, "data.advection=null", "trainer.max_epochs=1")
    datamodule, method, trainer = build_training(cfg)
    with pytest.raises(ValueError, match="set data.advection=true"):
        trainer.fit(method, datamodule=datamodule)


CONTEXT_SOURCE = synthetic_source(shape=[70, 100], n_times=12, nan_border=3)


@pytest.fixture(scope="module")
def context():
    return open_source(CONTEXT_SOURCE, "2020-01-01T00:00", "2020-01-01T00:15")["precip"].load()


def test_forecaster_ensemble_seeding_and_no_data(trained, context):
    model = get_forecaster("dgmr_advect", ckpt=trained.last_checkpoint, batch_members=2)
    fc = geogen.forecast(model, context, members=4, leads=LEAD, seed=3)
    assert fc.shape == (4, LEAD, 70, 100)
    values = fc.values
    no_data = np.isnan(context.values[-1])
    assert np.isnan(values[:, :, no_data]).all()
    valid = values[:, :, ~no_data]
    assert np.isfinite(valid).all() and (valid >= 0).all()
    for a, b in itertools.combinations(range(4), 2):
        assert np.abs(values[a] - values[b])[:, ~no_data].max() > 0, "members must differ"
    again = geogen.forecast(
        get_forecaster("dgmr_advect", ckpt=trained.last_checkpoint, batch_members=4),
        context,
        members=4,
        leads=LEAD,
        seed=3,
    )
    np.testing.assert_allclose(again.values, values, rtol=1e-4, atol=1e-5)
    assert json.loads(fc.attrs["settings"])["advection"]["outval"] == "min"
    with pytest.raises(ForecastError, match="checkpoint of model 'dgmr_advect', not 'dgmr'"):
        get_forecaster("dgmr", ckpt=trained.last_checkpoint)


def test_int8_export_is_smaller_and_forecasts_like_the_training_checkpoint(
    trained, context, tmp_path
):
    from geogen.forecasting.shipped import INT8_SCALES, export_checkpoint, quantize_int8

    weight = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).reshape(6, 1, 1, 1)
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and scale.shape == (6,)
    assert (q.abs().reshape(6, -1).amax(1) == 127).all()  # each channel uses the full range
    restored = q.float() * scale.reshape(6, 1, 1, 1)
    assert (restored - weight).abs().max() <= scale.max() / 2 + 1e-6

    half = export_checkpoint(trained.last_checkpoint, tmp_path / "half.ckpt")
    small = export_checkpoint(trained.last_checkpoint, tmp_path / "int8.ckpt", int8=True)
    assert small["parameters"] == half["parameters"]
    assert small["bytes"] < 0.7 * half["bytes"]
    raw = torch.load(tmp_path / "int8.ckpt", weights_only=True)
    assert raw[INT8_SCALES] and all(
        raw["state_dict"][k].dtype == torch.int8 for k in raw[INT8_SCALES]
    )

    def run(ckpt):
        model = get_forecaster("dgmr_advect", ckpt=ckpt)
        return geogen.forecast(model, context, members=2, leads=3, seed=5).values

    reference, quantized = run(trained.last_checkpoint), run(tmp_path / "int8.ckpt")
    valid = np.isfinite(reference)
    assert np.array_equal(valid, np.isfinite(quantized))
    error = np.abs(quantized[valid] - reference[valid]).mean()
    assert error < 0.02 * np.abs(reference[valid]).mean() + 1e-4


def test_a_new_network_forecasts_the_extrapolation(trained, context, tmp_path):
    state = torch.load(trained.last_checkpoint, weights_only=True)
    state["state_dict"]["network.generator.residual_gain"] = torch.zeros(())
    state["state_dict"]["network.generator.noise_gain"] = torch.zeros(())
    torch.save(state, tmp_path / "zero_gain.ckpt")
    model = get_forecaster("dgmr_advect", ckpt=tmp_path / "zero_gain.ckpt")
    fc = geogen.forecast(model, context, members=2, leads=3).values
    frames = context.values[-4:]
    expected = advect(frames, 3)
    valid = np.isfinite(frames[-1])
    np.testing.assert_allclose(fc[0][:, valid], expected[:, valid], rtol=1e-4, atol=1e-4)


# -- shipped checkpoints ----------------------------------------------------------------------
def test_checkpoint_hash_is_checked(trained, tmp_path, monkeypatch, context):
    from geogen.checkpoint import CHECKPOINTS_ENV, sha256_file

    good = sha256_file(trained.last_checkpoint)
    model = get_forecaster("dgmr_advect", ckpt=trained.last_checkpoint, ckpt_sha256=good)
    assert model.checkpoint_sha256 == good
    with pytest.raises(ForecastError, match="SHA-256 mismatch"):
        get_forecaster("dgmr_advect", ckpt=trained.last_checkpoint, ckpt_sha256="0" * 64)
    # a shipped index whose file was replaced is refused
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy(trained.last_checkpoint, folder / "model.ckpt")
    entry = {"file": "model.ckpt", "sha256": good}
    (folder / "index.json").write_text(json.dumps({"dgmr_advect": entry}))
    monkeypatch.setenv(CHECKPOINTS_ENV, str(folder))
    model = get_forecaster("dgmr_advect")  # no ckpt: the shipped one
    assert model.checkpoint_sha256 == good
    with open(folder / "model.ckpt", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ForecastError, match="SHA-256 mismatch"):
        get_forecaster("dgmr_advect")
    with pytest.raises(
        ForecastError, match="needs a checkpoint.*ships geogen-forecast checkpoints for: dgmr_adv"
    ):
        get_forecaster("dgmr")
