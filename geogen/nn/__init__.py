"""Reusable network blocks (pure torch).

Spectrally normalised layers, residual blocks (also plain ones, :class:`ResBlock`), ConvGRU,
attention. Whole models live in :mod:`geogen.models`.
"""

from geogen.nn.blocks import ConvGRU, DBlock, GBlock, LBlock, SpatialAttention
from geogen.nn.layers import (
    MeanOnlyBatchNorm,
    SequenceBatchNorm2d,
    conv2d,
    conv3d,
    depth_to_space,
    linear,
    space_to_depth,
)
from geogen.nn.residual import ResBlock

__all__ = [
    "ConvGRU",
    "DBlock",
    "GBlock",
    "LBlock",
    "MeanOnlyBatchNorm",
    "ResBlock",
    "SequenceBatchNorm2d",
    "SpatialAttention",
    "conv2d",
    "conv3d",
    "depth_to_space",
    "linear",
    "space_to_depth",
]
