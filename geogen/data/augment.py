"""The 8 symmetries of a square crop (rotations by 90 degrees and reflections).

Rain fields have no preferred orientation at the scale of a 256 x 256 crop, so the dihedral
group D4 is a cheap augmentation for small archives. A transform must be applied the same way
to every array of one sample (context, target, advection or STEPS conditioning, low-res
input), which :func:`dihedral` does for any number of arrays whose last two axes are ``(y, x)``.
Fields only: motion vectors would also need their components rotated.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

#: Number of distinct transforms: ``k = 0..7`` (``k % 4`` quarter turns, then a flip if ``k >= 4``).
N_DIHEDRAL = 8


def dihedral(array: ArrayT, k: int) -> ArrayT:
    """Apply the ``k``-th of the 8 square symmetries to the last two axes ``(y, x)``.

    ``k = 0`` is the identity; ``k >= 4`` flips ``x`` first, then ``k % 4`` counter-clockwise
    quarter turns are applied (:func:`torch.rot90` / :func:`numpy.rot90` over ``(y, x)``).
    Non-square arrays accept only ``k`` in ``{0, 2, 4, 6}``. The result is contiguous.
    """
    if not 0 <= int(k) < N_DIHEDRAL:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    k = int(k)
    if k % 2 == 1 and array.shape[-1] != array.shape[-2]:
        raise ValueError(
            f"a quarter turn needs a square field, got (y, x) = {tuple(array.shape[-2:])}"
        )
    if isinstance(array, torch.Tensor):
        flipped = torch.flip(array, dims=(-1,)) if k >= 4 else array
        return torch.rot90(flipped, k % 4, dims=(-2, -1)).contiguous()
    flipped = array[..., ::-1] if k >= 4 else array
    return np.ascontiguousarray(np.rot90(flipped, k % 4, axes=(-2, -1)))


def inverse_dihedral(array: ArrayT, k: int) -> ArrayT:
    """Undo :func:`dihedral` with the same ``k``."""
    k = int(k)
    if k >= 4:  # a flip then rotations is a reflection: its own inverse
        return dihedral(array, k)
    return dihedral(array, (4 - k) % 4)
