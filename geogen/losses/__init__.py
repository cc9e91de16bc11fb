"""Losses as pure functions of tensors (no modules, no state)."""

from geogen.losses.gan import grid_cell_regulariser, hinge_discriminator_loss, hinge_generator_loss

__all__ = ["grid_cell_regulariser", "hinge_discriminator_loss", "hinge_generator_loss"]
