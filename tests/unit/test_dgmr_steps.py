"""dgmr_steps: the STEPS cache, the STEPS-conditioned generator, its losses, training, forecasts.

Synthetic stores of 64 x 64 crops (4 + 6 frames), 2 STEPS members per sample and a generator
of base width 2 keep every run to seconds on a CPU.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import zarr
from conftest import prepare_config, synthetic_source

import geogen
from geogen.data import CropDataset
from geogen.data.augment import dihedral
from geogen.data.steps import StepsCache, steps_members, steps_settings, store_pixel_km
from geogen.forecasting import ForecastError, get_forecaster
from geogen.io import open_source
from geogen.losses import ensemble_crps, log_spectral_distance, radial_power
from geogen.models.dgmr_steps import GAIN_RATE, StepsGenerator
from geogen.training import compose_train_config, run_train

LEAD = 6
MEMBERS = 2


# -- losses -----------------------------------------------------------------------------------
def test_almost_fair_crps_mixes_the_fair_and_empirical_estimates():
    # members [0, 0, 0, 1], observation 0: empirical CRPS 1/16, fair 0 (ties with members)
    samples = torch.tensor([0.0, 0.0, 0.0, 1.0]).view(4, 1)
    obs = torch.zeros(1)
    assert float(ensemble_crps(samples, obs, fair=False)) == pytest.approx(0.0625)
    assert float(ensemble_crps(samples, obs, fair=True)) == pytest.approx(0.0)
    assert float(ensemble_crps(samples, obs, alpha=0.95)) == pytest.approx(0.05 * 0.0625, rel=1e-5)
    rng = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 3, 8, generator=rng), torch.rand(3, 8, generator=rng)
    mixed = 0.3 * ensemble_crps(x, y, fair=True) + 0.7 * ensemble_crps(x, y, fair=False)
    assert float(ensemble_crps(x, y, alpha=0.3)) == pytest.approx(float(mixed), rel=1e-6)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        ensemble_crps(x, y, alpha=1.5)


def test_radial_power_equals_pysteps_rapsd():
    from pysteps.utils.spectral import rapsd

    field = np.random.default_rng(1).gamma(0.5, 2.0, (64, 64))
    ours = radial_power(torch.from_numpy(field)).numpy()
    reference = rapsd(field, fft_method=np.fft)
    np.testing.assert_allclose(ours, reference[1 : ours.size + 1], rtol=1e-10)


def test_log_spectral_distance_of_a_scaled_copy_is_known():
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) + 0.1
    samples = torch.stack([3.0 * target, 3.0 * target])
    # every ring has 9x the power: (log10 9)^2 whatever the weights (they sum to 1)
    assert float(log_spectral_distance(samples, target)) == pytest.approx(
        np.log10(9.0) ** 2, rel=1e-5
    )
    assert float(log_spectral_distance(target[None].expand(2, -1, -1, -1, -1), target)) < 1e-10


# -- the generator ----------------------------------------------------------------------------
def test_an_untrained_generator_is_its_steps_member():
    net = StepsGenerator(context_frames=4, lead_frames=LEAD, base_channels=2)
    context, steps, advected = (
        torch.rand(2, 4, 32, 32),
        torch.rand(2, LEAD, 32, 32),
        torch.rand(2, LEAD, 32, 32),
    )
    out = net(context, steps=steps, advected=advected)
    torch.testing.assert_close(out, steps)
    with torch.no_grad():
        net.residual_gain.fill_(0.5 / GAIN_RATE)
    changed = net(context, steps=steps, advected=advected)
    assert changed.shape == (2, LEAD, 32, 32)
    assert (changed - steps).abs().max() > 1e-4
    assert (changed >= 0).all()
    # the residual depends on the member: two members of one context stay different
    other = net(context, steps=steps.flip(0), advected=advected)
    assert not torch.allclose(changed, other)


def test_without_member_input_every_member_gets_the_same_correction():
    torch.manual_seed(1)
    net = StepsGenerator(context_frames=4, lead_frames=LEAD, base_channels=2, member_input=False)
    with torch.no_grad():
        net.residual_gain.fill_(1.0 / GAIN_RATE)
    context = torch.rand(1, 4, 32, 32).expand(3, -1, -1, -1)
    advected = torch.rand(1, LEAD, 32, 32).expand(3, -1, -1, -1)
    steps = torch.rand(3, LEAD, 32, 32) + 5.0  # positive: the ReLU clips nothing
    correction = net(context, steps=steps, advected=advected) - steps
    assert correction.abs().max() > 1e-4
    torch.testing.assert_close(correction[1], correction[0])
    torch.testing.assert_close(correction[2], correction[0])
    reading = StepsGenerator(context_frames=4, lead_frames=LEAD, base_channels=2)
    reading.load_state_dict(net.state_dict())
    own = reading(context, steps=steps, advected=advected) - steps
    assert (own[1] - own[0]).abs().max() > 1e-6  # with the member as input, corrections differ


def test_leads_are_forecast_independently_so_training_can_draw_a_few():
    torch.manual_seed(0)
    net = StepsGenerator(context_frames=4, lead_frames=LEAD, base_channels=2)
    with torch.no_grad():
        net.residual_gain.fill_(1.0 / GAIN_RATE)
    context, steps, advected = (
        torch.rand(1, 4, 32, 32),
        torch.rand(1, LEAD, 32, 32),
        torch.rand(1, LEAD, 32, 32),
    )
    full = net(context, steps=steps, advected=advected)
    index = torch.tensor([1, 4])
    part = net(context, steps=steps[:, index], advected=advected[:, index], lead_index=index)
    torch.testing.assert_close(part, full[:, index])
    # the lead number matters: the same frames read as other leads give another residual
    other = net(context, steps=steps[:, index], advected=advected[:, index])
    assert not torch.allclose(other, part)


def test_generator_input_errors():
    net = StepsGenerator(context_frames=4, lead_frames=LEAD, base_channels=2)
    context = torch.rand(1, 4, 32, 32)
    with pytest.raises(ValueError, match="needs one STEPS member"):
        net(context, advected=torch.rand(1, LEAD, 32, 32))
    with pytest.raises(ValueError, match="multiples of 16"):
        net(
            torch.rand(1, 4, 24, 24),
            steps=torch.rand(1, 3, 24, 24),
            advected=torch.rand(1, 3, 24, 24),
        )
    with pytest.raises(ValueError, match="steps must be"):
        net(context, steps=torch.rand(1, 3, 32, 16), advected=torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="context must be"):
        net(
            torch.rand(1, 3, 32, 32),
            steps=torch.rand(1, 3, 32, 32),
            advected=torch.rand(1, 3, 32, 32),
        )


# -- the STEPS cache --------------------------------------------------------------------------
SOURCES = {
    "alpha": synthetic_source(name="alpha", shape=[64, 64], n_times=40, seed=3),
    "beta": synthetic_source(name="beta", shape=[64, 64], n_times=40, seed=4, nan_border=2),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from data_pipelines.config import validate_prepare_config
    from data_pipelines.prepare import prepare

    root = tmp_path_factory.mktemp("steps_stores")
    out = []
    for name, source in SOURCES.items():
        cfg = prepare_config(
            root / f"{name}.zarr",
            source=source,
            crop={"size": 64, "stride": 64},
            sequence={"context": 4, "lead": LEAD, "length": None, "stride": 3},
            reject={"max_nan_fraction": 0.5},
            split={
                "guard": "0h",
                "ranges": {
                    "val": [["2020-01-01T01:15", "2020-01-01T02:15"]],
                    "test": [["2020-01-01T02:20", "2020-01-01T03:15"]],
                },
            },
        )
        out.append(prepare(validate_prepare_config(cfg)).path)
    return out


def test_steps_cache_holds_seeded_steps_members_and_is_resumable(stores, tmp_path):
    cache = StepsCache(stores[0], path=tmp_path / "c.zarr", members=MEMBERS, seed=7)
    assert cache.fill([0, 2], progress=False) == 2
    assert cache.fill([0, 1, 2], progress=False) == 1  # only what is missing
    assert cache.missing(np.arange(3)).size == 0
    raw = np.asarray(zarr.open_group(str(stores[0]), mode="r")["precip"][2], dtype=np.float32)
    expected = steps_members(
        raw[:4],
        LEAD,
        MEMBERS,
        seed=7 * 1_000_003 + 2,
        kmperpixel=store_pixel_km(cache.info.attrs),
    )
    np.testing.assert_array_equal(cache.read(2), expected)
    assert cache.read(2).shape == (MEMBERS, LEAD, 64, 64)
    assert np.abs(expected[0] - expected[1]).max() > 0  # members differ
    # a new cache object over the same path finds the members (no recomputation)
    again = StepsCache(stores[0], path=tmp_path / "c.zarr", members=MEMBERS, seed=7)
    assert again.missing([0, 1, 2]).size == 0


def test_steps_cache_key_follows_settings_members_seed_and_refuses_bad_settings(
    stores, build_store
):
    base = StepsCache(stores[0], members=2)
    assert base.key == StepsCache(stores[0], {"n_workers": 2}, members=2).key  # speed only
    assert base.key != StepsCache(stores[0], {"n_cascade_levels": 4}, members=2).key
    assert base.key != StepsCache(stores[0], members=3).key
    assert base.key != StepsCache(stores[0], members=2, seed=1).key
    with pytest.raises(ForecastError, match="invalid settings for pysteps_steps"):
        StepsCache(stores[0], {"cascade_levels": 4})
    with pytest.raises(ValueError, match="members >= 2"):
        StepsCache(stores[0], members=1)
    downscale = build_store(
        "ds",
        task={"name": "downscale", "factor": 4},
        crop={"size": 32, "stride": 32},
        sequence={"context": None, "lead": None, "length": 4, "stride": 1},
        reject={"max_nan_fraction": 0.0},
    )
    with pytest.raises(ValueError, match="needs a nowcast store"):
        StepsCache(downscale)
    assert steps_settings()["n_cascade_levels"] == 6
    assert "n_workers" not in steps_settings({"n_workers": 2})


def test_steps_of_a_dry_context_are_zero():
    dry = np.zeros((4, 32, 32), dtype=np.float32)
    assert not steps_members(dry, 3, 2, seed=0).any()


def test_dataset_gives_steps_members_moved_with_the_augmentation(stores):
    spec = {"members": MEMBERS, "progress": False}
    plain = CropDataset(stores[0], split="train", advection={"progress": False}, steps=spec)
    item = plain[1]
    assert item["steps"].shape == (MEMBERS, LEAD, 64, 64)
    cache = plain.steps[0]
    torch.testing.assert_close(
        item["steps"], torch.log1p(torch.from_numpy(cache.read(int(item["index"]))))
    )
    augmented = CropDataset(
        stores[0], split="train", augment=True, advection={"progress": False}, steps=spec
    )
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        moved = augmented[1]
        torch.manual_seed(seed)
        op = int(torch.randint(0, 8, ()).item())
        seen.add(op)
        for key in ("context", "target", "advected", "steps"):
            torch.testing.assert_close(moved[key], dihedral(item[key], op))
    assert len(seen) > 2


# -- training and forecasting -----------------------------------------------------------------
TINY = (
    "experiment=dgmr_steps_tiny",
    "network.generator.base_channels=2",
    f"network.generator.lead_frames={LEAD}",
    "network.discriminator.base_channels=2",
    "network.discriminator.spatial_frames=4",
    "network.discriminator.temporal_crop=64",
    "method.num_samples=2",
    "method.val_samples=2",
    "method.train_crop=32",
    "method.train_leads=3",
    "method.val_leads=[3,6]",
    "method.crps_pools=[1,4]",
    "data.batch_size=2",
    "data.advection={progress:false}",
    f"data.steps.members={MEMBERS}",
    "+data.steps.progress=false",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "callbacks.panels.every_n_batches=0",
)


def tiny_config(stores, out, *overrides):
    paths = "[" + ",".join(str(p) for p in stores) + "]"
    return compose_train_config([*TINY, f"data.path={paths}", *overrides], output_dir=out)


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("steps_train")
    return run_train(tiny_config(stores, out, "trainer.max_epochs=2"))


def test_training_learns_a_residual_and_records_the_steps_settings(trained, stores):
    metrics = trained.metrics
    for name in ("train/g_loss", "train/crps", "train/spectral", "val/crps", "train/spread"):
        assert np.isfinite(metrics[name]), name
    assert metrics["train/spread"] > 0  # the samples read different STEPS members
    checkpoint = torch.load(trained.last_checkpoint, weights_only=True)
    meta = checkpoint["geogen"]
    assert meta["model"] == "dgmr_steps"
    steps = meta["data"]["steps"]
    assert steps["members"] == MEMBERS and steps["settings"]["n_cascade_levels"] == 6
    assert steps["settings"]["kmperpixel"] > 0
    assert float(checkpoint["state_dict"]["network.generator.residual_gain"]) != 0.0
    assert trained.best_checkpoint is not None  # chosen on val/crps


def test_training_needs_steps_members_in_the_data(stores, tmp_path):
    config = tiny_config(stores, tmp_path, "data.steps=null", "trainer.max_epochs=1")
    with pytest.raises(ValueError, match="set data.steps"):
        run_train(config)
    too_many = tiny_config(stores, tmp_path / "b", "method.num_samples=3", "trainer.max_epochs=1")
    with pytest.raises(ValueError, match="must not exceed"):
        run_train(too_many)


CONTEXT_SOURCE = synthetic_source(shape=[70, 100], n_times=12, nan_border=3)


@pytest.fixture(scope="module")
def context():
    return open_source(CONTEXT_SOURCE, "2020-01-01T00:00", "2020-01-01T00:15")["precip"].load()


def test_forecaster_members_are_seeded_corrections_of_steps_members(trained, context):
    model = get_forecaster("dgmr_steps", ckpt=trained.last_checkpoint, batch_members=1)
    fc = geogen.forecast(model, context, members=3, leads=LEAD, seed=3)
    assert fc.shape == (3, LEAD, 70, 100)
    values = fc.values
    no_data = np.isnan(context.values[-1])
    assert np.isnan(values[:, :, no_data]).all()
    valid = values[:, :, ~no_data]
    assert np.isfinite(valid).all() and (valid >= 0).all()
    for a, b in itertools.combinations(range(3), 2):
        assert np.abs(values[a] - values[b])[:, ~no_data].max() > 0, "members must differ"
    again = geogen.forecast(
        get_forecaster("dgmr_steps", ckpt=trained.last_checkpoint, batch_members=3, n_workers=2),
        context,
        members=3,
        leads=LEAD,
        seed=3,
    )
    np.testing.assert_allclose(again.values, values, rtol=1e-4, atol=1e-5)
    assert json.loads(fc.attrs["settings"])["steps"]["members"] == MEMBERS
    with pytest.raises(ForecastError, match="checkpoint of model 'dgmr_steps', not 'dgmr'"):
        get_forecaster("dgmr", ckpt=trained.last_checkpoint)


def test_a_new_network_forecasts_steps(trained, context, tmp_path):
    state = torch.load(trained.last_checkpoint, weights_only=True)
    state["state_dict"]["network.generator.residual_gain"] = torch.zeros(())
    torch.save(state, tmp_path / "zero_gain.ckpt")
    model = get_forecaster("dgmr_steps", ckpt=tmp_path / "zero_gain.ckpt")
    fc = geogen.forecast(model, context, members=2, leads=3, seed=11).values
    reference = get_forecaster("pysteps_steps", **state["geogen"]["data"]["steps"]["settings"])
    steps = geogen.forecast(reference, context, members=2, leads=3, seed=11).values
    valid = np.isfinite(steps) & np.isfinite(fc)
    assert valid.mean() > 0.5
    np.testing.assert_allclose(fc[valid], steps[valid], rtol=1e-4, atol=1e-4)
