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

**Spread calibration** (``spread="scales"``, the shipped design). STEPS ensembles are too
narrow on every event of our archive (spread / RMSE of the ensemble mean 0.65-0.82 at +30 to
+90 min on the MeteoSwiss, FMI and RMI events), so before the residual each STEPS member
``s_m`` is moved away from the ensemble mean ``mu`` (rain rate, mm/h) by a learned gain
``a(t)`` (:class:`ScaleSpread`):

``s'_m = relu(mu + a(t) * (s_m - mu))``

and, with ``spread_match``, given back its STEPS member's rain-rate distribution (its values
re-ordered by ``s'_m``: probability matching, as STEPS matches its members to the observed
distribution), so the members move apart as a wider ensemble while their intensities, wet
area and power spectrum stay STEPS'. ``spread_sigma > 0`` splits the deviation ``s_m - mu``
by a Gaussian low-pass into large and small scales with a gain each. The gains are ``exp`` of
parameters that start at 0 (untrained: STEPS), piecewise linear in lead time between
``spread_knots`` knots, and corrected for the ensemble size ``M``
(``a^2 = (k^2 - 1/M) / (1 - 1/M)`` keeps the ensemble's variance ``k^2`` times STEPS'
whatever ``M``: the 4 members of training and the 20 of a forecast get the same
calibration). A handful of numbers learn what the CRPS asks, with nothing event-specific.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Learning-rate multiplier of the residual gain (see AdvectionGenerator's GAIN_RATE).
GAIN_RATE = 20.0

#: Learning-rate multiplier of the spread gains (stored divided by it, as GAIN_RATE).
SPREAD_RATE = 10.0

#: Height and width must be multiples of this (two 4x poolings).
SIZE_MULTIPLE = 16


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="replicate")


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` (pixels), radius ``3 sigma``."""
    radius = max(1, round(3.0 * float(sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return kernel / kernel.sum()


def gaussian_lowpass(fields: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``(..., y, x)`` fields (edges replicated)."""
    shape = fields.shape
    x = fields.reshape(-1, 1, *shape[-2:])
    radius = kernel.numel() // 2
    k = kernel.to(x.device, x.dtype)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(shape)


class ScaleSpread(nn.Module):
    """Learned, scale-wise spread of ensemble members about their mean (module docstring).

    Parameters
    ----------
    lead_frames
        Lead times of training; the gains are piecewise linear in lead time between
        ``knots`` evenly spaced knots over them (held constant beyond the last).
    sigma
        Standard deviation (pixels) of the Gaussian low-pass that splits the scales; 0: one
        gain for all scales (``s' = mu + a * d``: a member stays dry where it and the mean
        are dry, and no halo of light rain grows around its cells, which the split can give
        when the large-scale gain exceeds the small-scale one).
    knots
        Knots of the gains over lead time (two parameters each: large and small scales).
    match
        Probability matching: give each recalibrated member the rain-rate distribution of
        its STEPS member (its values, re-ordered by the recalibrated field), as STEPS itself
        matches its members to the observed distribution. The members move as a
        recalibrated ensemble, but their intensities and wet area stay STEPS' (and so,
        mostly, their power spectrum). Matching is done in evaluation (``eval()``: validation
        and forecasts) only: a re-ordering has no useful gradient (the matched field does not
        change as the gains grow past the point where the deviations alone set the order,
        and a straight-through gradient drives them there), so the gains are fitted on the
        CRPS of the unmatched members, which has a finite optimum.
    """

    def __init__(
        self, lead_frames: int, sigma: float = 8.0, knots: int = 4, match: bool = False
    ) -> None:
        super().__init__()
        if not sigma >= 0:
            raise ValueError(f"spread_sigma must be >= 0, got {sigma}")
        if int(knots) < 1:
            raise ValueError(f"spread_knots must be >= 1, got {knots}")
        self.sigma = float(sigma)
        self.match = bool(match)
        self.scales = 2 if sigma > 0 else 1
        if sigma > 0:
            self.register_buffer("kernel", gaussian_kernel(sigma), persistent=False)
        positions = torch.linspace(0.0, max(int(lead_frames) - 1, 0), int(knots))
        self.register_buffer("knots", positions, persistent=False)
        # log of the gains k (large, small; or one) at the knots, / SPREAD_RATE; 0: STEPS'
        self.log_gain = nn.Parameter(torch.zeros(self.scales, int(knots)))

    def log_gains(self, lead_index: torch.Tensor) -> torch.Tensor:
        """``(scales, lead)`` log gains at 0-based lead numbers, interpolated between knots."""
        knots = self.knots.to(self.log_gain.device)
        t = lead_index.to(knots.device, knots.dtype).clamp(knots[0], knots[-1])
        if knots.numel() == 1:
            return self.log_gain.expand(self.scales, t.numel())
        right = torch.searchsorted(knots, t, right=True).clamp(1, knots.numel() - 1)
        left = right - 1
        w = (t - knots[left]) / (knots[right] - knots[left])
        return self.log_gain[:, left] * (1 - w) + self.log_gain[:, right] * w

    def gains(self, lead_index: torch.Tensor, ensemble_size: int) -> torch.Tensor:
        """``(scales, lead)``: the factors ``a`` for an ensemble of ``ensemble_size`` members.

        ``k = exp(SPREAD_RATE * log_gain)`` is the factor of the ensemble's standard
        deviation about the true mean; the members' deviations from their own mean are
        scaled by ``a = sqrt((k^2 - 1/M) / (1 - 1/M))`` (``k`` for one member, which has no
        deviation), so that 4 members in training and 20 in a forecast are calibrated alike.
        """
        k2 = torch.exp(2.0 * SPREAD_RATE * self.log_gains(lead_index))
        m = int(ensemble_size)
        if m <= 1:
            return k2.sqrt()
        return ((k2 - 1.0 / m) / (1.0 - 1.0 / m)).clamp_min(0.0).sqrt()

    def forward(
        self,
        member: torch.Tensor,
        mean: torch.Tensor,
        lead_index: torch.Tensor,
        ensemble_size: int,
    ) -> torch.Tensor:
        """``(batch, lead, y, x)`` rain rates of the members, recalibrated about ``mean``."""
        a = self.gains(lead_index, ensemble_size).to(member.dtype)
        deviation = member - mean
        if self.scales == 1:
            raw = mean + a[0].view(1, -1, 1, 1) * deviation
        else:
            large = gaussian_lowpass(deviation, self.kernel)
            a_large = a[0].view(1, -1, 1, 1)
            a_small = a[1].view(1, -1, 1, 1)
            raw = mean + a_large * large + a_small * (deviation - large)
        out = F.relu(raw)
        if not self.match or self.training:
            return out
        # rank by the unclipped field; pixels dry in the member and the mean stay dry first
        dry = (member <= 0) & (mean <= 0)
        key = torch.where(dry, torch.full_like(raw, -torch.inf), raw).flatten(-2)
        reference = member.flatten(-2).sort(dim=-1).values
        matched = torch.empty_like(reference).scatter_(-1, key.argsort(dim=-1), reference)
        return matched.view_as(out)


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
    spread
        ``"none"`` (default) or ``"scales"``: recalibrate each STEPS member's deviation from
        the ensemble mean with two learned gains per lead (:class:`ScaleSpread`); forward
        then needs ``steps_mean`` and ``ensemble_size``.
    spread_sigma
        Low-pass of the spread calibration (pixels): scales above it get one gain, below it
        the other; 0: one gain for all scales.
    spread_knots
        Knots of the spread gains over lead time (piecewise linear between them).
    spread_match
        Give each recalibrated member its STEPS member's rain-rate distribution
        (probability matching, :class:`ScaleSpread`).
    transform
        Name of the model-space transform (the data's ``transform``, e.g. ``"log1p"``): the
        spread is calibrated in rain rate. Needed with ``spread="scales"``.
    transform_params
        Parameters of ``transform``.
    residual
        Whether the learned residual ``g * r`` is used (``False``: the spread calibration
        alone; the convolutional network is not built).
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
        spread: str = "none",
        spread_sigma: float = 8.0,
        spread_knots: int = 4,
        spread_match: bool = False,
        transform: str | None = None,
        transform_params: dict | None = None,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if spread not in ("none", "scales"):
            raise ValueError(f"spread must be 'none' or 'scales', got {spread!r}")
        if not residual and spread == "none":
            raise ValueError("StepsGenerator without residual needs spread='scales'")
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
        self.spread: ScaleSpread | None = None
        self.transform = None
        if spread == "scales":
            from geogen.data.transforms import get_transform

            if not transform:
                raise ValueError(
                    "spread='scales' calibrates rain rates: give the model-space transform "
                    "(transform=, the data's transform, e.g. 'log1p')"
                )
            self.transform = get_transform(str(transform), **dict(transform_params or {}))
            self.spread = ScaleSpread(lead_frames, spread_sigma, spread_knots, spread_match)
        self.has_residual = bool(residual)
        if not self.has_residual:
            self.register_parameter("residual_gain", None)
            return
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
        steps_mean: torch.Tensor | None = None,
        ensemble_size: int | None = None,
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
        steps_mean
            ``(batch, lead, y, x)``: the model-space transform of the STEPS ensemble's mean
            rain rate (needed with ``spread="scales"``).
        ensemble_size
            Members of that ensemble (needed with ``spread="scales"``).

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
        if lead_index is None:
            lead_index = torch.arange(leads, device=context.device)
        elif tuple(lead_index.shape) != (leads,):
            raise ValueError(f"lead_index must be ({leads},), got {tuple(lead_index.shape)}")
        if self.spread is not None:
            steps = self.calibrate(steps, steps_mean, ensemble_size, lead_index)
        if not self.has_residual:
            return steps
        last = context[:, -1:].expand(b, leads, h, w)
        trend = (context[:, -1:] - context[:, -2:-1]).expand(b, leads, h, w)
        lead = (lead_index.to(context.device, context.dtype) + 1) / self.lead_frames
        lead = lead.view(1, leads, 1, 1).expand(b, leads, h, w)
        member = steps if self.member_input else advected  # without it: the same for all
        inputs = torch.stack([member, advected, last, trend, lead], dim=2)
        residual = self.residual(inputs.flatten(0, 1)).unflatten(0, (b, leads))
        out = steps + GAIN_RATE * self.residual_gain * residual
        return F.relu(out) if self.output_activation == "relu" else out

    def calibrate(
        self,
        steps: torch.Tensor,
        steps_mean: torch.Tensor | None,
        ensemble_size: int | None,
        lead_index: torch.Tensor,
    ) -> torch.Tensor:
        """Model-space members with the learned spread about ``steps_mean`` (float32 inside)."""
        if self.spread is None or self.transform is None:
            return steps
        if steps_mean is None or ensemble_size is None:
            raise ValueError(
                "StepsGenerator(spread='scales') needs the STEPS ensemble's mean (steps_mean=, "
                "batch, lead, y, x, model space) and its size (ensemble_size=)"
            )
        if tuple(steps_mean.shape) != tuple(steps.shape):
            raise ValueError(
                f"steps_mean must be {tuple(steps.shape)}, got {tuple(steps_mean.shape)}"
            )
        dtype = steps.dtype
        member = self.transform.inverse(steps.float())
        mean = self.transform.inverse(steps_mean.to(steps.device).float())
        out = self.spread(member, mean, lead_index, int(ensemble_size))
        return self.transform.forward(out).to(dtype)
