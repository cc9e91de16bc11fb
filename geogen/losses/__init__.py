"""Losses as pure functions of tensors (no modules, no state)."""

from geogen.losses.gan import grid_cell_regulariser, hinge_discriminator_loss, hinge_generator_loss
from geogen.losses.wasserstein import (
    gradient_penalty,
    interpolate_samples,
    wasserstein_critic_loss,
    wasserstein_generator_loss,
)

__all__ = [
    "gradient_penalty",
    "grid_cell_regulariser",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "interpolate_samples",
    "wasserstein_critic_loss",
    "wasserstein_generator_loss",
]
