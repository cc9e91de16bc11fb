"""Adversarial losses and DGMR's grid-cell regulariser (Ravuri et al. 2021, Methods).

Scores of several discriminators may be stacked along the last axis (DGMR: ``(batch, 2)``,
spatial and temporal); the hinge losses average over every entry, as DeepMind's pseudocode
does with its concatenated scores (the paper's equations sum the two discriminators' terms,
which differs by a factor of 2 in the weight of the adversarial terms against the
regulariser's lambda; we follow the pseudocode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_discriminator_loss(score_real: torch.Tensor, score_fake: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``.

    Parameters
    ----------
    score_real, score_fake
        Discriminator scores of real and generated samples, any shape (e.g. ``(batch, 2)``).

    Returns
    -------
    torch.Tensor
        Scalar loss, minimised by the discriminator.
    """
    return F.relu(1.0 - score_real).mean() + F.relu(1.0 + score_fake).mean()


def hinge_generator_loss(score_fake: torch.Tensor) -> torch.Tensor:
    """``-mean(D(fake))``: the generator's adversarial loss on discriminator scores."""
    return -score_fake.mean()


def grid_cell_regulariser(
    samples: torch.Tensor,
    target: torch.Tensor,
    *,
    weight_target: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    clip: float = 24.0,
) -> torch.Tensor:
    """DGMR's grid-cell regulariser: ``mean(|mean_s(samples) - target| * clip(w, 0, clip))``.

    The mean over samples of the generator is compared with the observation pixel by pixel,
    weighted by the observed rain rate clipped to ``[0, 24]`` mm/h (DeepMind's pseudocode
    ``tf.clip_by_value(targets, 0, 24)``; the paper's text writes ``max(y + 1, 24)``, which
    would weight every pixel at least 24 and is not what the code does).

    Parameters
    ----------
    samples
        ``(samples, batch, lead, y, x)`` generator samples for the same inputs.
    target
        ``(batch, lead, y, x)`` observations, in the same space as ``samples``.
    weight_target
        ``(batch, lead, y, x)`` observations in mm/h for the weights, when the model space is
        not mm/h (default: ``target``).
    mask
        ``(batch, lead, y, x)`` bool, False where the observation is missing; those pixels get
        weight 0 (the mean still divides by every pixel, as the pseudocode's mean does).
    clip
        Upper bound of the weights, mm/h.

    Returns
    -------
    torch.Tensor
        Scalar (to be multiplied by lambda = 20 in DGMR's generator loss).
    """
    if samples.dim() != target.dim() + 1 or samples.shape[1:] != target.shape:
        raise ValueError(
            f"samples must be (samples, *target.shape); got {tuple(samples.shape)} for a "
            f"target of {tuple(target.shape)}"
        )
    weights = (target if weight_target is None else weight_target).clamp(0.0, clip)
    if mask is not None:
        weights = weights * mask.to(weights.dtype)
    return ((samples.mean(dim=0) - target).abs() * weights).mean()
