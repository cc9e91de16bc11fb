"""Losses as pure functions of tensors (no modules, no state)."""

from geogen.losses.gan import grid_cell_regulariser, hinge_discriminator_loss, hinge_generator_loss
from geogen.losses.vae import (
    gaussian_kl,
    gaussian_nll,
    kl_weight,
    masked_sum,
    zero_inflated_nll,
)

__all__ = [
    "gaussian_kl",
    "gaussian_nll",
    "grid_cell_regulariser",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "kl_weight",
    "masked_sum",
    "zero_inflated_nll",
]
