"""DGMR: the deep generative model of radar of Ravuri et al. (2021), in pure PyTorch.

Ravuri, S. et al. (2021). Skilful precipitation nowcasting using deep generative models of
radar. Nature 597, 672-677. Written from the paper (Methods, Extended Data Figs. 1-2) and
DeepMind's released pseudocode. Widths scale with ``base_channels`` (the paper: 24); every
width below is given for the paper's value.

Generator (:class:`Generator`), for 4 context frames of ``H x W`` (multiples of 32):

- context conditioning stack: per frame, space-to-depth (``H/2 x W/2 x 4``) and four residual
  down-blocks of 48, 96, 192 and 384 channels; the frames' features are concatenated over time
  (192, 384, 768, 1536 channels) and mixed by spectrally normalised 3x3 convolutions with ReLU
  into the initial states of the sampler: ``H/4 x W/4 x 48``, ``H/8 x W/8 x 96``,
  ``H/16 x W/16 x 192``, ``H/32 x W/32 x 384``;
- latent conditioning stack: ``z ~ N(0, 1)`` of shape ``(8, H/32, W/32)``, drawn
  independently for every example (every row of the batch: an ensemble member is a row),
  a spectrally normalised 3x3 convolution, L-blocks to 24, 48 and 192 channels, spatial
  attention, an L-block to 768 channels;
- sampler: four ConvGRU levels, coarse to fine (states of 384, 192, 96, 48 channels), each
  unrolled over the lead times and followed by a 1x1 spectrally normalised convolution
  (doubling the channels), a G-block and an upsampling G-block (halving them); the latent
  features are the input of the coarsest GRU at every step;
- output: batch norm, ReLU, a 1x1 convolution to 4 channels, depth-to-space to ``H x W``, and
  a final ReLU so that rain is non-negative (model space is mm/h in the shipped configs).

The generator is fully convolutional: trained on 256 x 256 crops it forecasts any domain whose
sides are multiples of 32.

Discriminators (:class:`Discriminator`), on the full sequence of context + lead frames:

- spatial (:class:`SpatialDiscriminator`): for each example, 8 of the **lead** frames drawn
  without replacement, 2x average-pooled, space-to-depth, residual down-blocks of 48, 96, 192,
  384, 768 channels and one of 768 without downsampling, ReLU and sum pooling, batch
  centring, a spectrally normalised linear head; the 8 scores are summed;
- temporal (:class:`TemporalDiscriminator`): one random ``crop x crop`` window (128 in the
  paper) of all frames per example, space-to-depth, two 3D residual down-blocks (48, 96
  channels; time is halved too), then per remaining time step 2D blocks of 192, 384, 768 and
  768 channels as above; the scores over time are summed.

Spectral normalisation everywhere except in the latent stack's L-blocks and attention, whose
convolutions are plain in the pseudocode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from geogen.nn.blocks import ConvGRU, DBlock, GBlock, LBlock, SpatialAttention
from geogen.nn.layers import (
    MeanOnlyBatchNorm,
    conv2d,
    depth_to_space,
    linear,
    sequence_norm,
    space_to_depth,
)

log = logging.getLogger(__name__)

#: The generator's spatial reduction: inputs must be multiples of this.
DOWNSCALE = 32
#: Per-lead features of a conditioned sampler: coarse to fine, or a callable of (first, steps).
ExtraFeatures = Sequence[torch.Tensor] | Callable[[int, int], Sequence[torch.Tensor]]


def _check_frames(name: str, frames: torch.Tensor, n_frames: int | None, multiple: int) -> None:
    if frames.dim() != 4:
        raise ValueError(f"{name} expects (batch, time, y, x), got shape {tuple(frames.shape)}")
    if n_frames is not None and frames.shape[1] != n_frames:
        raise ValueError(f"{name} expects {n_frames} frames, got {frames.shape[1]}")
    h, w = frames.shape[-2:]
    if h % multiple or w % multiple or h < multiple or w < multiple:
        raise ValueError(
            f"{name}: frames of {h} x {w} pixels; both sides must be positive multiples of "
            f"{multiple} (pad the domain)"
        )


class ConditioningStack(nn.Module):
    """Context frames -> the four initial states of the sampler (fine to coarse).

    Parameters
    ----------
    context_frames
        Number of context frames ``T`` (4).
    base_channels
        ``c``: per-frame blocks and states have ``2c, 4c, 8c, 16c`` channels (48 .. 384 for the
        paper's ``c = 24``, as in DeepMind's pseudocode: ``DBlock(output_channels=48)`` per
        frame, then ``SNConv2D(output_channels=48)`` over the 4 frames' concatenation).
    in_channels
        Channels per frame (1 for rain rate).
    """

    def __init__(self, context_frames: int = 4, base_channels: int = 24, in_channels: int = 1):
        super().__init__()
        self.context_frames, self.in_channels = context_frames, in_channels
        c = base_channels
        widths = [4 * in_channels, 2 * c, 4 * c, 8 * c, 16 * c]
        self.blocks = nn.ModuleList(
            DBlock(widths[i], widths[i + 1], downsample=True) for i in range(4)
        )
        self.mixing = nn.ModuleList(
            conv2d(context_frames * widths[i + 1], widths[i + 1], 3) for i in range(4)
        )

    def forward(self, context: torch.Tensor) -> list[torch.Tensor]:
        """``(B, T, H, W)`` -> states ``(B, 2c, H/4, W/4)``, ..., ``(B, 16c, H/32, W/32)``."""
        _check_frames("ConditioningStack", context, self.context_frames, DOWNSCALE)
        b, t, h, w = context.shape
        x = space_to_depth(context.reshape(b * t, self.in_channels, h, w))
        states = []
        for block, mix in zip(self.blocks, self.mixing, strict=True):
            x = block(x)
            stacked = x.reshape(b, t * x.shape[1], *x.shape[-2:])  # time-major channels
            states.append(F.relu(mix(stacked)))
        return states


class LatentConditioningStack(nn.Module):
    """``z (B, 8, H/32, W/32)`` -> latent features ``(B, 32c, H/32, W/32)``."""

    def __init__(self, base_channels: int = 24, latent_channels: int = 8) -> None:
        super().__init__()
        c = base_channels
        self.latent_channels = latent_channels
        self.conv = conv2d(latent_channels, latent_channels, 3)
        self.lblock1 = LBlock(latent_channels, c)
        self.lblock2 = LBlock(c, 2 * c)
        self.lblock3 = LBlock(2 * c, 8 * c)
        self.attention = SpatialAttention(8 * c)
        self.lblock4 = LBlock(8 * c, 32 * c)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latent features of ``z`` ``(B, latent_channels, h, w)``."""
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"z must be (batch, {self.latent_channels}, y, x), got {tuple(z.shape)}"
            )
        x = self.lblock3(self.lblock2(self.lblock1(self.conv(z))))
        return self.lblock4(self.attention(x))


class Sampler(nn.Module):
    """Four ConvGRU levels, coarse to fine, unrolled over the lead times, and the output head.

    Parameters
    ----------
    base_channels
        Width ``c`` (states of ``16c, 8c, 4c, 2c`` channels, coarse to fine).
    in_channels
        Channels per output frame (1 for rain rate).
    extra_channels
        Channels of per-lead conditioning features concatenated to each level's GRU input at
        every step, coarse to fine (``(0, 0, 0, 0)``: DGMR as published; see
        :mod:`geogen.models.dgmr_advect`).
    norm
        ``"batch"`` (DGMR's batch norms) or ``"none"`` (no normalisation: each member's
        output depends on its own inputs only, whatever else is in the batch).
    """

    def __init__(
        self,
        base_channels: int = 24,
        in_channels: int = 1,
        extra_channels: tuple[int, int, int, int] | list[int] = (0, 0, 0, 0),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        c = base_channels
        self.in_channels = in_channels
        if len(extra_channels) != 4 or min(extra_channels) < 0:
            raise ValueError(f"extra_channels needs 4 widths >= 0, got {list(extra_channels)}")
        self.extra_channels = [int(e) for e in extra_channels]
        states = [16 * c, 8 * c, 4 * c, 2 * c]  # coarse to fine
        inputs = [
            i + e for i, e in zip([32 * c, 16 * c, 8 * c, 4 * c], self.extra_channels, strict=True)
        ]
        self.grus = nn.ModuleList(ConvGRU(i, s) for i, s in zip(inputs, states, strict=True))
        self.convs = nn.ModuleList(conv2d(s, 2 * s, 1) for s in states)
        self.gblocks = nn.ModuleList(GBlock(2 * s, 2 * s, norm=norm) for s in states)
        self.up_gblocks = nn.ModuleList(GBlock(2 * s, s, upsample=True, norm=norm) for s in states)
        self.output_bn = sequence_norm(2 * c, norm)
        self.output_conv = conv2d(2 * c, 4 * in_channels, 1)

    def forward(
        self,
        states: list[torch.Tensor],
        latent: torch.Tensor,
        lead_frames: int,
        extras: ExtraFeatures | None = None,
        *,
        lead_chunk: int | None = None,
    ) -> torch.Tensor:
        """Initial states (fine to coarse) + latent features -> ``(B, L, H, W)`` (pre-ReLU).

        Parameters
        ----------
        states
            The conditioning stack's states, fine to coarse, ``(B, C, h, w)`` each.
        latent
            Latent features ``(B, 32c, H/32, W/32)``, the coarsest GRU's input at every step.
        lead_frames
            Number of lead frames ``L``.
        extras
            With ``extra_channels``: per-lead features, coarse to fine, each
            ``(B, L, extra_channels[level], h, w)`` at that level's resolution; or a callable
            ``(first, steps) -> features`` of leads ``first .. first + steps - 1`` only (computed
            chunk by chunk, so that features of all leads are never alive at once).
        lead_chunk
            Unroll the leads in chunks of at most this many (memory-bounded sampling): all four
            levels for one chunk before the next, each level's ConvGRU state carried over and
            each chunk normalised with its own leads' statistics. Any chunk gives the same
            output as ``None`` (all leads at once) to float rounding.

        Returns
        -------
        torch.Tensor
            ``(B, L, H, W)``, or ``(B, L, in_channels, H, W)`` with ``in_channels > 1``.
        """
        b = latent.shape[0]
        if any(self.extra_channels) and extras is None:
            raise ValueError("this sampler takes 4 levels of per-lead features (extras)")
        chunk = lead_frames if lead_chunk is None else max(1, min(int(lead_chunk), lead_frames))
        states = list(reversed(states))  # coarse to fine, as the levels
        out: torch.Tensor | None = None
        for first in range(0, lead_frames, chunk):
            steps = min(chunk, lead_frames - first)
            features = None
            if any(self.extra_channels):
                if callable(extras):
                    features = extras(first, steps)
                else:
                    features = [e[:, first : first + steps] for e in extras]
                if len(features) != 4:
                    raise ValueError("this sampler takes 4 levels of per-lead features (extras)")
            frames = self._unroll(states, latent, first, steps, features)
            if out is None:
                out = frames.new_empty((b, lead_frames, *frames.shape[2:]))
            out[:, first : first + steps] = frames
        if self.in_channels == 1:
            return out[:, :, 0]
        return out

    def _unroll(
        self,
        states: list[torch.Tensor],
        latent: torch.Tensor,
        first: int,
        steps: int,
        features: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """Leads ``first .. first + steps - 1``: ``(B, steps, in_channels, H, W)``.

        ``states`` (coarse to fine) are updated in place to the GRU states after the last of
        these leads.
        """
        b = latent.shape[0]
        inputs: torch.Tensor | None = None  # (B, steps, C, h, w) from the coarser level
        for level, gru in enumerate(self.grus):
            outputs = []
            for step in range(steps):
                x = latent if inputs is None else inputs[:, step]
                if self.extra_channels[level]:
                    x = torch.cat([x, features[level][:, step].to(x.dtype)], dim=1)
                states[level] = gru(x, states[level])
                outputs.append(states[level])
            h = torch.stack(outputs, dim=1).flatten(0, 1)  # (B * steps, C, h, w), batch-major
            h = self.convs[level](h)
            h = self.gblocks[level](h, steps=steps, first_step=first)
            h = self.up_gblocks[level](h, steps=steps, first_step=first)
            inputs = h.unflatten(0, (b, steps))
        h = inputs.flatten(0, 1)
        h = self.output_conv(F.relu(self.output_bn(h, steps=steps, first_step=first)))
        h = depth_to_space(h)  # (B * steps, in_channels, H, W)
        return h.reshape(b, steps, self.in_channels, *h.shape[-2:])


class Generator(nn.Module):
    """DGMR's generator: context frames + latent noise -> lead frames.

    Parameters
    ----------
    context_frames
        Number of context frames (4).
    lead_frames
        Default number of lead frames of :meth:`forward` (18); any number can be asked for.
    base_channels
        Width ``c`` (24 in the paper; see the module docstring).
    latent_channels
        Channels of ``z`` (8).
    output_activation
        ``"relu"`` (non-negative output) or ``"none"``.
    norm
        The sampler's normalisation: ``"batch"`` (the paper's batch norms, per-lead running
        statistics) or ``"none"`` (no normalisation: a member depends on its own inputs only
        and the network is the same in training and forecasting; README, "Why DGMR's members
        collapsed").
    """

    def __init__(
        self,
        context_frames: int = 4,
        lead_frames: int = 18,
        base_channels: int = 24,
        latent_channels: int = 8,
        output_activation: str = "relu",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if output_activation not in ("relu", "none"):
            raise ValueError(
                f"output_activation must be 'relu' or 'none', not {output_activation!r}"
            )
        self.context_frames = context_frames
        self.lead_frames = lead_frames
        self.base_channels = base_channels
        self.latent_channels = latent_channels
        self.output_activation = output_activation
        self.conditioning_stack = ConditioningStack(context_frames, base_channels)
        self.latent_stack = LatentConditioningStack(base_channels, latent_channels)
        self.sampler = Sampler(base_channels, norm=norm)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Shape ``(channels, y, x)`` of one example's ``z`` for frames of ``height x width``."""
        return (self.latent_channels, height // DOWNSCALE, width // DOWNSCALE)

    def sample_latent(
        self,
        batch: int,
        height: int,
        width: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Independent ``N(0, 1)`` draws, one per example: ``(batch, 8, H/32, W/32)``.

        Drawn on the device of ``generator`` (if given), then moved to ``device``.
        """
        where = generator.device if generator is not None else device
        z = torch.randn(
            (batch, *self.latent_shape(height, width)), generator=generator, device=where
        )
        return z.to(device=device, dtype=dtype)

    def lead_chunk(self, memory: float, batch: int, height: int, width: int) -> int:
        """Leads per chunk that keep about ``memory`` bytes of sampler activations alive.

        About ``56 * base_channels`` bytes per pixel of the half-resolution grid per member and
        lead (float32; measured: 160 MB at the paper's width on the 640 x 736 padded
        MeteoSwiss domain). At least 1.
        """
        per_lead = 56 * self.base_channels * (height // 2) * (width // 2) * max(1, batch)
        return int(max(1, memory // per_lead))

    def check_latent(self, z: torch.Tensor, batch: int, height: int, width: int) -> None:
        """Raise a ``ValueError`` unless ``z`` is ``(batch, latent_channels, y / 32, x / 32)``."""
        expected = (batch, *self.latent_shape(height, width))
        if tuple(z.shape) != expected:
            raise ValueError(f"z must have shape {expected}, got {tuple(z.shape)}")

    def initial_states(self, context: torch.Tensor, batch: int) -> list[torch.Tensor]:
        """The conditioning stack's states of ``context``, expanded to ``batch`` members.

        A context of batch 1 is conditioned once and shared by the ``batch`` members (the
        ensemble of one forecast: the same context, different latents).
        """
        states = self.conditioning_stack(context)
        if context.shape[0] == batch:
            return states
        return [s.expand(batch, -1, -1, -1) for s in states]

    def forward(
        self,
        context: torch.Tensor,
        lead_frames: int | None = None,
        *,
        z: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        lead_chunk: int | None = None,
    ) -> torch.Tensor:
        """Forecast lead frames.

        Parameters
        ----------
        context
            ``(batch, context_frames, y, x)`` in model space; ``y`` and ``x`` multiples of 32.
            A context of batch 1 with ``z`` of batch ``n`` forecasts ``n`` members of that one
            context (its conditioning stack runs once).
        lead_frames
            Number of lead frames (default: ``self.lead_frames``).
        z
            Latent noise ``(batch, latent_channels, y / 32, x / 32)``; by default drawn
            independently for every example with ``generator``.
        generator
            Random generator for ``z``.
        lead_chunk
            Unroll the sampler over chunks of at most this many leads (memory-bounded
            sampling, see :meth:`Sampler.forward` and :meth:`lead_chunk`); the same forecast.

        Returns
        -------
        torch.Tensor
            ``(batch, lead_frames, y, x)``.
        """
        _check_frames("Generator", context, self.context_frames, DOWNSCALE)
        lead_frames = self.lead_frames if lead_frames is None else int(lead_frames)
        if lead_frames < 1:
            raise ValueError(f"lead_frames must be >= 1, got {lead_frames}")
        b, _, h, w = context.shape
        if z is None:
            z = self.sample_latent(
                b, h, w, generator=generator, device=context.device, dtype=context.dtype
            )
        self.check_latent(z, b if b > 1 else z.shape[0], h, w)
        # Spectrally normalised weights are computed once per forward, not at every lead step.
        with parametrize.cached():
            states = self.initial_states(context, z.shape[0])
            latent = self.latent_stack(z.to(context.dtype))
            out = self.sampler(states, latent, lead_frames, lead_chunk=lead_chunk)
        return F.relu(out) if self.output_activation == "relu" else out


def _score_head(features: torch.Tensor, bn: nn.Module, head: nn.Module) -> torch.Tensor:
    """ReLU, sum over pixels, batch centring, linear: ``(N, C, h, w) -> (N,)``."""
    pooled = F.relu(features).sum(dim=(-2, -1))
    return head(bn(pooled)).squeeze(-1)


class SpatialDiscriminator(nn.Module):
    """Scores single frames: ``(B, N, H, W)`` -> ``(B,)``, the sum over the ``N`` frames.

    The frames are already pooled to the discriminator's resolution (128 x 128 in the paper).
    """

    def __init__(self, base_channels: int = 24, in_channels: int = 1) -> None:
        super().__init__()
        c = base_channels
        self.in_channels = in_channels
        widths = [4 * in_channels, 2 * c, 4 * c, 8 * c, 16 * c, 32 * c]
        blocks = [
            DBlock(widths[i], widths[i + 1], pre_activation=i > 0) for i in range(len(widths) - 1)
        ]
        blocks.append(DBlock(32 * c, 32 * c, downsample=False))
        self.blocks = nn.Sequential(*blocks)
        self.bn = MeanOnlyBatchNorm(32 * c)
        self.head = linear(32 * c, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Sum of the per-frame scores of ``frames`` ``(B, N, H, W)``: ``(B,)``."""
        _check_frames("SpatialDiscriminator", frames, None, 64)
        b, n, h, w = frames.shape
        x = space_to_depth(frames.reshape(b * n, self.in_channels, h, w))
        scores = _score_head(self.blocks(x), self.bn, self.head)
        return scores.view(b, n).sum(dim=1)


class TemporalDiscriminator(nn.Module):
    """Scores sequences: ``(B, T, h, w)`` -> ``(B,)``, summed over the remaining time steps."""

    def __init__(self, base_channels: int = 24, in_channels: int = 1) -> None:
        super().__init__()
        c = base_channels
        self.in_channels = in_channels
        self.blocks3d = nn.Sequential(
            DBlock(4 * in_channels, 2 * c, pre_activation=False, dims=3),
            DBlock(2 * c, 4 * c, dims=3),
        )
        self.blocks2d = nn.Sequential(
            DBlock(4 * c, 8 * c),
            DBlock(8 * c, 16 * c),
            DBlock(16 * c, 32 * c),
            DBlock(32 * c, 32 * c, downsample=False),
        )
        self.bn = MeanOnlyBatchNorm(32 * c)
        self.head = linear(32 * c, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Sum over time of the scores of ``frames`` ``(B, T, h, w)`` (``T >= 4``): ``(B,)``."""
        _check_frames("TemporalDiscriminator", frames, None, 32)
        b, t, h, w = frames.shape
        if t < 4:
            raise ValueError(f"TemporalDiscriminator needs at least 4 frames, got {t}")
        x = space_to_depth(frames.reshape(b * t, self.in_channels, h, w))
        x = x.unflatten(0, (b, t)).transpose(1, 2)  # (B, C, T, h/2, w/2)
        x = self.blocks3d(x)  # (B, 4c, T/4, h/8, w/8)
        steps = x.shape[2]
        x = x.transpose(1, 2).flatten(0, 1)  # (B * T', 4c, h/8, w/8)
        scores = _score_head(self.blocks2d(x), self.bn, self.head)
        return scores.view(b, steps).sum(dim=1)


class Discriminator(nn.Module):
    """Both discriminators on a full sequence (context + lead frames).

    Parameters
    ----------
    context_frames
        Leading frames of every sequence that are context (never shown to the spatial
        discriminator).
    base_channels
        Width ``c`` (24 in the paper).
    spatial_frames
        Lead frames drawn per example for the spatial discriminator (8).
    temporal_crop
        Side of the random crop seen by the temporal discriminator (128).
    spatial_pool
        Average pooling of the spatial discriminator's frames (2: 256 -> 128).
    """

    def __init__(
        self,
        context_frames: int = 4,
        base_channels: int = 24,
        spatial_frames: int = 8,
        temporal_crop: int = 128,
        spatial_pool: int = 2,
    ) -> None:
        super().__init__()
        self.context_frames = context_frames
        self.spatial_frames = spatial_frames
        self.temporal_crop = temporal_crop
        self.spatial_pool = spatial_pool
        self.spatial = SpatialDiscriminator(base_channels)
        self.temporal = TemporalDiscriminator(base_channels)

    def select_spatial_frames(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``spatial_frames`` distinct lead frames per example and pool them.

        Returns
        -------
        tuple
            The pooled frames ``(B, spatial_frames, H / pool, W / pool)`` and the indices
            ``(B, spatial_frames)`` of the chosen frames in ``frames`` (all ``>= context``).
        """
        b, t = frames.shape[:2]
        leads = t - self.context_frames
        if leads < self.spatial_frames:
            raise ValueError(
                f"the spatial discriminator draws {self.spatial_frames} of the lead frames; "
                f"the sequence has {leads}"
            )
        where = generator.device if generator is not None else frames.device
        keys = torch.rand((b, leads), generator=generator, device=where)
        picks = keys.argsort(dim=1)[:, : self.spatial_frames].to(frames.device)
        indices = picks + self.context_frames
        chosen = torch.gather(
            frames, 1, indices[:, :, None, None].expand(-1, -1, *frames.shape[-2:])
        )
        if self.spatial_pool > 1:
            chosen = F.avg_pool2d(chosen, self.spatial_pool)
        return chosen, indices

    def crop_temporal(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One random ``temporal_crop`` square of all frames per example.

        Returns
        -------
        tuple
            The crops ``(B, T, crop, crop)`` and their offsets ``(B, 2)`` (y0, x0).
        """
        b, _, h, w = frames.shape
        size = self.temporal_crop
        if h < size or w < size:
            raise ValueError(f"frames of {h} x {w} are smaller than the temporal crop {size}")
        where = generator.device if generator is not None else frames.device
        y0 = torch.randint(0, h - size + 1, (b,), generator=generator, device=where)
        x0 = torch.randint(0, w - size + 1, (b,), generator=generator, device=where)
        offsets = torch.stack([y0, x0], dim=1).cpu()
        crops = torch.stack(
            [frames[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets.tolist())]
        )
        return crops, offsets

    def forward(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scores ``(B, 2)`` (spatial, temporal) of sequences ``(B, context + lead, H, W)``."""
        _check_frames("Discriminator", frames, None, 1)
        spatial_in, _ = self.select_spatial_frames(frames, generator)
        temporal_in, _ = self.crop_temporal(frames, generator)
        return torch.stack([self.spatial(spatial_in), self.temporal(temporal_in)], dim=1)


class DGMR(nn.Module):
    """The generator and the discriminator pair trained together (see :mod:`geogen.methods.dgmr`).

    Parameters
    ----------
    generator, discriminator
        Built separately (configs nest their ``_target_``) and handed in.
    """

    def __init__(self, generator: Generator, discriminator: Discriminator) -> None:
        super().__init__()
        if generator.context_frames != discriminator.context_frames:
            raise ValueError(
                f"generator ({generator.context_frames}) and discriminator "
                f"({discriminator.context_frames}) disagree on the number of context frames"
            )
        self.generator = generator
        self.discriminator = discriminator

    def forward(self, context: torch.Tensor, lead_frames: int | None = None, **kw) -> torch.Tensor:
        """The generator's forecast (see :meth:`Generator.forward`)."""
        return self.generator(context, lead_frames, **kw)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (spectral-norm power-iteration vectors are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: DGMR) -> dict[str, int]:
    """Parameters per component of a :class:`DGMR`."""
    g, d = model.generator, model.discriminator
    return {
        "generator": count_parameters(g),
        "generator.conditioning_stack": count_parameters(g.conditioning_stack),
        "generator.latent_stack": count_parameters(g.latent_stack),
        "generator.sampler": count_parameters(g.sampler),
        "discriminator": count_parameters(d),
        "discriminator.spatial": count_parameters(d.spatial),
        "discriminator.temporal": count_parameters(d.temporal),
        "total": count_parameters(model),
    }
