"""The temp-then-rename helper and the dihedral augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geogen.atomic import atomic_path, write_atomic
from geogen.data.augment import N_DIHEDRAL, dihedral, inverse_dihedral


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    write_atomic(target, lambda p: p.write_text("a"))
    write_atomic(target, lambda p: p.write_text("b"))
    assert target.read_text() == "b"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "plot.png"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".png") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_atomic_path_refuses_a_writer_that_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="produced no file"), atomic_path(tmp_path / "x"):
        pass


def test_dihedral_group_is_eight_distinct_invertible_maps():
    rng = np.random.default_rng(0)
    field = rng.random((3, 6, 6))
    images = {dihedral(field, k).tobytes() for k in range(N_DIHEDRAL)}
    assert len(images) == N_DIHEDRAL
    for k in range(N_DIHEDRAL):
        np.testing.assert_array_equal(inverse_dihedral(dihedral(field, k), k), field)
        np.testing.assert_array_equal(
            dihedral(torch.from_numpy(field), k).numpy(), dihedral(field, k)
        )


def test_dihedral_quarter_turn_moves_a_pixel_as_rot90():
    field = np.zeros((4, 4))
    field[0, 3] = 1.0  # top right
    assert dihedral(field, 1)[0, 0] == 1.0  # counter-clockwise: top right -> top left
    assert dihedral(field, 4)[0, 0] == 1.0  # flip x: top right -> top left
    assert dihedral(field, 5)[3, 0] == 1.0  # flip x, then a quarter turn: -> bottom left


def test_dihedral_rejects_bad_index_and_non_square_turns():
    with pytest.raises(ValueError, match="0..7"):
        dihedral(np.zeros((2, 2)), 8)
    with pytest.raises(ValueError, match="square"):
        dihedral(np.zeros((2, 3)), 1)
    assert dihedral(np.zeros((2, 3)), 2).shape == (2, 3)
