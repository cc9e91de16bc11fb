"""A generator conditioned on pysteps STEPS members: it learns what STEPS misses.

With about ten hours of radar, a generative nowcaster cannot learn motion, the decay of
predictability with scale, and realistic small-scale variability from data; pysteps' STEPS
(Bowler et al. 2006, Seed et al. 2013) has all three from physics and statistics: optical
flow, a cascade of scales each evolved by its own AR(2) process, and noise with the observed
spectrum. :class:`StepsGenerator` therefore reads, for each output member, **one STEPS member**
``s`` (besides the context frames and the deterministic advection forecast ``a``), and
forecasts

``y_t = relu(s_t + g * r_t(s_t, a_t, context, t))``

in model space (``log1p`` mm/h in the shipped configs, so ``r`` is multiplicative in rain
rate). The gain ``g`` starts at 0: **an untrained network is STEPS**, member for member, and
training (DGMR's recipe with a scoring rule, :class:`~geogen.methods.dgmr.DGMRStepsMethod`)
can only learn what STEPS gets wrong: growth and decay, intensities, where the members spread
too much or too little (``s_t - a_t`` is mostly STEPS' stochastic perturbation, which ``r``
can scale). Every member keeps the stochastic structure of its STEPS member, whose noise
already has the observed spatial spectrum (nonparametric noise estimated from the context):
the network adds no noise, no depth-to-space and no upsampled noise fields, so no 2 km
checkerboard.

This is not post-processing of an ensemble (quantile mapping, EMOS, member dressing), which
corrects each pixel's distribution with statistics of the whole ensemble: the network sees
whole fields and their multi-scale structure, member by member, with the context radar and
the advection beside it, and is trained on the ensemble's CRPS (pixels and pooled windows),
so it can change the shape, the intensity and the spread of the members where the context
says STEPS errs.

Architecture (shared over lead times; ``c = base_channels``): per lead ``t`` the input is
``[s_t, a_t, x_T, x_T - x_{T-1}, t / L]`` (``x`` the context frames); a full-resolution
branch (two 3x3 convolutions, ``c`` channels), a 1/4-resolution branch (average pooling, two
3x3 convolutions, ``2c``), and a 1/16 branch (two more), merged coarse to fine by bilinear
upsampling of *features* (smooth, no checkerboard) and a 1x1 head to ``r_t``. About 40 k
parameters at ``c = 16``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Learning-rate multiplier of the residual gain (see AdvectionGenerator's GAIN_RATE).
GAIN_RATE = 20.0

#: Height and width must be multiples of this (two 4x poolings).
SIZE_MULTIPLE = 16


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="replicate")


class StepsGenerator(nn.Module):
    """Residual generator over one STEPS member per output member (see the module docstring).

    Parameters
    ----------
    context_frames
        Context frames (the last two are read).
    lead_frames
        Lead frames of training (the lead-time input is ``t / lead_frames``).
    base_channels
        ``c``: channels of the full-resolution branch (``2c`` at 1/4 and 1/16).
    output_activation
        ``"relu"`` (non-negative output in model space) or ``"none"``.
    member_input
        Whether the residual reads the STEPS member (default). ``False``: ``r_t`` depends on
        the context and the advection only, so every member gets the same correction (in
        ``log1p`` space: the same multiplicative change of rain rate, growth and decay),
        and the members' spread and structure stay exactly STEPS'.
    fine_kernel
        Kernel of the full-resolution branch: 3 (3 x 3 convolutions) or 1 (a per-pixel
        network: the residual then has no structure of its own finer than the 1/4 branch,
        so the members keep the small scales of their STEPS member; about 5x cheaper).
    """

    #: Extra inputs of :meth:`forward` that the data module must provide.
    conditions: tuple[str, ...] = ("steps", "advected")
    #: Height and width multiple the forecaster pads to.
    size_multiple: int = SIZE_MULTIPLE

    def __init__(
        self,
        context_frames: int = 4,
        lead_frames: int = 18,
        base_channels: int = 16,
        output_activation: str = "relu",
        fine_kernel: int = 3,
        member_input: bool = True,
    ) -> None:
        super().__init__()
        if fine_kernel not in (1, 3):
            raise ValueError(f"fine_kernel must be 1 or 3, got {fine_kernel}")
        if context_frames < 2:
            raise ValueError(f"StepsGenerator needs >= 2 context frames, got {context_frames}")
        if output_activation not in ("relu", "none"):
            raise ValueError(
                f"output_activation must be 'relu' or 'none', not {output_activation!r}"
            )
        self.context_frames = int(context_frames)
        self.lead_frames = int(lead_frames)
        self.output_activation = output_activation
        self.member_input = bool(member_input)
        c = int(base_channels)
        n_in = 5
        if fine_kernel == 3:
            self.fine = nn.Sequential(_conv(n_in, c), nn.GELU(), _conv(c, c), nn.GELU())
        else:
            self.fine = nn.Sequential(
                nn.Conv2d(n_in, c, 1), nn.GELU(), nn.Conv2d(c, c, 1), nn.GELU()
            )
        self.mid = nn.Sequential(_conv(n_in, 2 * c), nn.GELU(), _conv(2 * c, 2 * c), nn.GELU())
        self.coarse = nn.Sequential(_conv(2 * c, 2 * c), nn.GELU(), _conv(2 * c, 2 * c), nn.GELU())
        self.merge = nn.Sequential(_conv(2 * c, 2 * c), nn.GELU())
        self.head = nn.Sequential(nn.Conv2d(3 * c, c, 1), nn.GELU(), nn.Conv2d(c, 1, 1))
        # stored divided by GAIN_RATE: a 20x learning rate for this one number (Adam moves a
        # parameter by about lr per step, so a plain gain would need thousands of steps)
        self.residual_gain = nn.Parameter(torch.zeros(()))

    def residual(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(N, 5, H, W)`` per-lead inputs -> ``(N, H, W)`` residual ``r``."""
        fine = self.fine(inputs)
        mid = self.mid(F.avg_pool2d(inputs, 4))
        coarse = self.coarse(F.avg_pool2d(mid, 4))
        mid = mid + F.interpolate(coarse, size=mid.shape[-2:], mode="bilinear", align_corners=False)
        mid = self.merge(mid)
        up = F.interpolate(mid, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([fine, up], dim=1))[:, 0]

    def forward(
        self,
        context: torch.Tensor,
        lead_frames: int | None = None,
        *,
        steps: torch.Tensor | None = None,
        advected: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        lead_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Forecast one member per example from its STEPS member.

        Parameters
        ----------
        context
            ``(batch, context_frames, y, x)`` in model space; ``y`` and ``x`` multiples of 16.
        lead_frames
            Number of lead frames (default: ``steps.shape[1]``).
        steps
            ``(batch, lead, y, x)``: one STEPS member per example, in model space
            (:func:`geogen.data.steps.steps_members`).
        advected
            ``(batch, lead, y, x)``: the advection forecast, in model space
            (:func:`geogen.data.advection.advect`).
        generator
            Unused (the member's randomness is its STEPS member); accepted for the common
            generator interface.
        lead_index
            ``(lead,)`` 0-based lead numbers of the frames given (default ``0 .. lead - 1``).
            Leads are forecast independently (the network is shared over leads and has no
            recurrence), so training can draw a few leads per step.

        Returns
        -------
        torch.Tensor
            ``(batch, lead, y, x)`` in model space.
        """
        if context.dim() != 4 or context.shape[1] != self.context_frames:
            raise ValueError(
                f"StepsGenerator: context must be (batch, {self.context_frames}, y, x), got "
                f"{tuple(context.shape)}"
            )
        b, _, h, w = context.shape
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(f"StepsGenerator: y and x must be multiples of 16, got {(h, w)}")
        if steps is None or advected is None:
            raise ValueError(
                "StepsGenerator needs one STEPS member (steps=, batch, lead, y, x) and the "
                "advected frames (advected=, batch, lead, y, x)"
            )
        leads = steps.shape[1] if lead_frames is None else int(lead_frames)
        for name, value in (("steps", steps), ("advected", advected)):
            if value.dim() != 4 or tuple(value.shape) != (b, leads, h, w):
                raise ValueError(
                    f"{name} must be (batch, lead, y, x) = {(b, leads, h, w)}, got "
                    f"{tuple(value.shape)}"
                )
        steps = steps.to(context.dtype)
        advected = advected.to(context.dtype)
        last = context[:, -1:].expand(b, leads, h, w)
        trend = (context[:, -1:] - context[:, -2:-1]).expand(b, leads, h, w)
        if lead_index is None:
            lead_index = torch.arange(leads, device=context.device)
        elif tuple(lead_index.shape) != (leads,):
            raise ValueError(f"lead_index must be ({leads},), got {tuple(lead_index.shape)}")
        lead = (lead_index.to(context.device, context.dtype) + 1) / self.lead_frames
        lead = lead.view(1, leads, 1, 1).expand(b, leads, h, w)
        member = steps if self.member_input else advected  # without it: the same for all
        inputs = torch.stack([member, advected, last, trend, lead], dim=2)
        residual = self.residual(inputs.flatten(0, 1)).unflatten(0, (b, leads))
        out = steps + GAIN_RATE * self.residual_gain * residual
        return F.relu(out) if self.output_activation == "relu" else out
