"""Losses as pure functions of tensors (no modules, no state)."""

from geogen.losses.crps import (
    almost_fair_crps,
    ensemble_crps,
    ensemble_spread_skill,
    pooled_crps,
)
from geogen.losses.gan import grid_cell_regulariser, hinge_discriminator_loss, hinge_generator_loss
from geogen.losses.spectral import log_spectral_distance, log_spectral_loss, radial_power
from geogen.losses.vae import (
    gaussian_kl,
    gaussian_nll,
    kl_weight,
    masked_sum,
    zero_inflated_nll,
)
from geogen.losses.wasserstein import (
    gradient_penalty,
    interpolate_samples,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)

__all__ = [
    "almost_fair_crps",
    "ensemble_crps",
    "ensemble_spread_skill",
    "gaussian_kl",
    "gaussian_nll",
    "gradient_penalty",
    "grid_cell_regulariser",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "interpolate_samples",
    "kl_weight",
    "log_spectral_distance",
    "log_spectral_loss",
    "masked_sum",
    "pooled_crps",
    "radial_power",
    "wasserstein_critic_loss",
    "wasserstein_generator_loss",
    "zero_inflated_nll",
]
