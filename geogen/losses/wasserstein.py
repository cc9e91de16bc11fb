"""Wasserstein GAN losses with gradient penalty (Gulrajani et al. 2017).

As used by Leinonen, Nerini and Berne (2020): the critic minimises
``mean(D(fake)) - mean(D(real)) + gp_weight * GP`` with ``gp_weight = 10``, the generator
minimises ``-mean(D(fake))``.
"""

from __future__ import annotations

import torch


def wasserstein_critic_loss(score_real: torch.Tensor, score_fake: torch.Tensor) -> torch.Tensor:
    """``mean(D(fake)) - mean(D(real))`` (minimised by the critic); any score shapes."""
    return score_fake.mean() - score_real.mean()


def wasserstein_generator_loss(score_fake: torch.Tensor) -> torch.Tensor:
    """``-mean(D(fake))`` (minimised by the generator)."""
    return -score_fake.mean()


def interpolate_samples(
    real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``eps * real + (1 - eps) * fake`` with one ``eps ~ U(0, 1)`` per example (axis 0).

    The result requires gradients (it is the input of :func:`gradient_penalty`).
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} differ")
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    device = generator.device if generator is not None else real.device
    eps = torch.rand(shape, generator=generator, device=device).to(real.device, real.dtype)
    mixed = eps * real.detach() + (1.0 - eps) * fake.detach()
    return mixed.requires_grad_(True)


def gradient_penalty(scores: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``mean_n((||d sum(scores_n) / d inputs_n||_2 - 1)^2)``, differentiable.

    Parameters
    ----------
    scores
        Critic scores of ``inputs``, ``(batch, ...)`` (e.g. one per time step); the scores of
        an example are summed before differentiating, as Leinonen et al.'s Keras code does.
    inputs
        ``(batch, ...)`` the interpolated samples the scores were computed from
        (``requires_grad``).

    Returns
    -------
    torch.Tensor
        Scalar penalty (times ``gp_weight``, 10, in the critic loss).
    """
    if not inputs.requires_grad:
        raise ValueError("gradient_penalty needs inputs that require gradients")
    (grads,) = torch.autograd.grad(
        scores.sum(), inputs, create_graph=True, retain_graph=True, only_inputs=True
    )
    norms = grads.float().flatten(1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()
