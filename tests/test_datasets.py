"""The strained and displaced crystals that make_data.py scripts label (mlpot.datasets)."""

import numpy as np
from ase.build import bulk

from mlpot.datasets import (axial_and_shear_frames, random_strain_frames, strained,
                            tetragonal_frame)


def strain_of(frame, reference):
    """ε with frame.cell = reference.cell (1 + ε)."""
    return np.linalg.solve(reference.cell.array, frame.cell.array) - np.eye(3)


def test_axial_shear_and_tetragonal_frames_carry_the_named_strains():
    cell = bulk("Si", "diamond", a=5.43, cubic=True)
    (n1, uniaxial, r1), (n2, shear, r2), (n3, shear_relaxed, r3) = axial_and_shear_frames(cell, -0.02)
    assert (n1, n2, n3) == ("eq: uniaxial", "eq: shear", "eq: shear, relaxed")
    assert (r1, r2, r3) == (False, False, True)
    expected = np.zeros((3, 3))
    expected[0, 0] = -0.02
    np.testing.assert_allclose(strain_of(uniaxial, cell), expected, atol=1e-15)
    expected = np.zeros((3, 3))
    expected[0, 1] = expected[1, 0] = -0.01   # engineering shear strain −0.02
    np.testing.assert_allclose(strain_of(shear, cell), expected, atol=1e-15)
    np.testing.assert_array_equal(shear.positions, shear_relaxed.positions)
    # atoms move with the cell (fractional coordinates unchanged)
    np.testing.assert_allclose(uniaxial.get_scaled_positions(), cell.get_scaled_positions(),
                               atol=1e-12)
    name, tetragonal, relax = tetragonal_frame(cell, 0.03)
    assert (name, relax) == ("eq: tetragonal", False)
    np.testing.assert_allclose(np.diag(strain_of(tetragonal, cell)), [0.03, -0.015, -0.015],
                               atol=1e-15)
    # volume-conserving to first order: V/V0 − 1 = −¾ e² + ¼ e³
    e = 0.03
    assert abs(tetragonal.get_volume() / cell.get_volume() - 1 + 0.75 * e**2 - 0.25 * e**3) < 1e-12
    np.testing.assert_allclose(strain_of(strained(cell, 0.01 * np.eye(3)), cell),
                               0.01 * np.eye(3), atol=1e-15)


def test_random_strain_frames_are_seeded_symmetric_and_bounded():
    cell = bulk("SiC", "zincblende", a=4.36, cubic=True)
    frames = list(random_strain_frames(cell, np.random.default_rng(3), n_random=5,
                                       sigmas=(0.01, 0.02), n_per_sigma=3,
                                       n_strained_displaced=4))
    again = list(random_strain_frames(cell, np.random.default_rng(3), n_random=5,
                                      sigmas=(0.01, 0.02), n_per_sigma=3, n_strained_displaced=4))
    names = [name for name, _, _ in frames]
    assert names == (["eq: random strain, relaxed"] * 5 + ["eq: random strain"] * 5
                     + ["eq: displaced"] * 6 + ["eq: strained, displaced"] * 4)
    assert [relax for _, _, relax in frames] == [True] * 5 + [False] * 15
    for (_, a, _), (_, b, _) in zip(frames, again):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
    for _, atoms, _ in frames[:10]:
        eps = strain_of(atoms, cell)
        np.testing.assert_allclose(eps, eps.T, atol=1e-15)
        assert 0 < np.abs(eps).max() <= 0.015
        assert len(atoms) == 8
    supercell = cell * (2, 2, 2)
    for _, atoms, _ in frames[10:16]:
        assert len(atoms) == 64
        np.testing.assert_array_equal(atoms.cell.array, supercell.cell.array)
        displacement = atoms.positions - supercell.positions
        assert 0.003 < displacement.std() < 0.03
    for _, atoms, _ in frames[16:]:
        eps = strain_of(atoms, supercell)
        np.testing.assert_allclose(eps, eps.T, atol=1e-15)
        assert 0 < np.abs(eps).max() <= 0.01
