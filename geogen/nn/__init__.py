"""Reusable network blocks (pure torch).

Spectrally normalised layers, residual blocks, ConvGRU, attention. Whole models live in
:mod:`geogen.models`.
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

__all__ = [
    "ConvGRU",
    "DBlock",
    "GBlock",
    "LBlock",
    "MeanOnlyBatchNorm",
    "SequenceBatchNorm2d",
    "SpatialAttention",
    "conv2d",
    "conv3d",
    "depth_to_space",
    "linear",
    "space_to_depth",
]
