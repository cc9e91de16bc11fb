"""Learned forecasters are known by the registry, not by a list of names."""

import numpy as np

from geogen.downscaling.interface import is_learned as is_learned_downscaler
from geogen.forecasting import Forecaster, register_forecaster
from geogen.forecasting.interface import is_learned
from geogen.verification.app import validate_config


@register_forecaster("test_registry_learned")
class LearnedDummy(Forecaster):
    """A stand-in for a new learned nowcaster (takes device and batch settings)."""

    learned = True

    def __init__(self, device="cpu", batch_members=1, ckpt=None):
        self.device, self.batch_members = device, batch_members

    def predict(self, context, *, leads, members, seed, timestep_minutes, progress=False):
        return np.repeat(np.repeat(context[-1:][None], leads, 1), members, 0)


def test_learned_forecasters_are_told_by_the_registry():
    assert is_learned("dgmr") and is_learned("dgmr_advect") and is_learned("vae")
    assert is_learned("flow") and is_learned("test_registry_learned")
    assert not is_learned("persistence") and not is_learned("pysteps_steps")
    assert not is_learned("no_such_model")
    assert is_learned_downscaler("downscale_gan") and not is_learned_downscaler("rainfarm")


def test_scoring_gives_learned_models_the_device_settings():
    cfg = validate_config(
        {
            "out": "x",
            "store": "s.zarr",
            "device": "cpu",
            "batch_members": 3,
            "models": ["test_registry_learned", "dgmr_advect", "persistence"],
        }
    )
    new, shipped, reference = cfg.model_specs()
    assert new.kwargs == {"device": "cpu", "batch_members": 3}
    assert shipped.kwargs == {"device": "cpu", "batch_members": 3}  # the shipped checkpoint
    assert reference.kwargs == {}
