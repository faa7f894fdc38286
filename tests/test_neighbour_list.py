"""mlpot's neighbour list against ase and matscipy, hand-made golden cases and bad input."""

from concurrent.futures import ThreadPoolExecutor

import matscipy.neighbours
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import given, settings
from hypothesis import strategies as st

from mlpot.neighbours import neighbour_list, primitive_neighbour_list, set_buffer_cache_limit

ALL = "ijSdD"
PBC_CASES = [(True, True, True), (True, True, False), (False, True, False), (True, False, True),
             (False, False, False)]


def canonical(i, j, S, d, D):
    """The pairs sorted lexicographically by (i, j, S), as int64/float64 arrays."""
    S = np.asarray(S, dtype=np.int64).reshape(-1, 3)
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    return (np.asarray(i, np.int64)[order], np.asarray(j, np.int64)[order], S[order],
            np.asarray(d)[order], np.asarray(D).reshape(-1, 3)[order])


def assert_same_pairs(ours, reference):
    ours, reference = canonical(*ours), canonical(*reference)
    assert len(ours[0]) == len(reference[0])
    for name, a, b in zip("ijS", ours[:3], reference[:3]):
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_allclose(ours[3], reference[3], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours[4], reference[4], rtol=0, atol=1e-9)


def assert_consistent(result, atoms, cutoff):
    """What every result must satisfy whatever the reference says."""
    i, j, S, d, D = result
    n = len(i)
    assert i.dtype == j.dtype == S.dtype == np.int64
    assert d.dtype == D.dtype == np.float64
    assert i.shape == j.shape == d.shape == (n,) and S.shape == D.shape == (n, 3)
    assert np.all(np.diff(i) >= 0), "pairs must be sorted by i"
    assert np.all(S[:, ~atoms.pbc] == 0), "no shifts along non-periodic axes"
    assert not np.any((i == j) & np.all(S == 0, axis=1)), "no self pair without shift"
    np.testing.assert_allclose(D, atoms.positions[j] - atoms.positions[i] + S @ atoms.cell.array,
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(d, np.linalg.norm(D, axis=1), rtol=1e-14, atol=0)
    assert np.all(d < cutoff)


def random_atoms(rng, n_atoms, pbc, spread=(0.0, 1.0), skew=1.5, size=(4.0, 8.0)):
    """Atoms in a random triclinic cell; `spread` is the range of fractional coordinates."""
    cell = np.diag(rng.uniform(*size, 3)) + rng.uniform(-skew, skew, (3, 3))
    positions = rng.uniform(*spread, (n_atoms, 3)) @ cell
    return Atoms(numbers=rng.choice([1, 6, 8], n_atoms), positions=positions, cell=cell, pbc=pbc)


def matscipy_reference(atoms, cutoff, quantities=ALL):
    """matscipy needs an invertible cell. Along non-periodic axes the cell vector does not change
    the pairs (matscipy also lists atoms outside the box there), so give those axes a modest
    vector that makes the cell invertible: a large one would only make matscipy slow."""
    if not atoms.pbc.all():
        atoms = atoms.copy()
        cell = atoms.cell.array.copy()
        for axis in np.flatnonzero(~atoms.pbc):
            normal = np.cross(cell[(axis + 1) % 3], cell[(axis + 2) % 3])
            length = np.linalg.norm(normal)
            cell[axis] = 5.0 * (normal / length if length > 1e-6 else np.eye(3)[axis])
        if abs(np.linalg.det(cell)) < 1e-6:
            cell = np.diag(np.where(atoms.pbc, np.linalg.norm(cell, axis=1), 5.0))
        atoms.cell = cell
    return matscipy.neighbours.neighbour_list(quantities, atoms, cutoff)


# --- agreement with ase and matscipy ------------------------------------------------------------


@pytest.mark.parametrize("pbc", PBC_CASES)
@pytest.mark.parametrize("seed", range(4))
def test_random_triclinic_matches_ase_and_matscipy(pbc, seed):
    rng = np.random.default_rng(seed)
    atoms = random_atoms(rng, int(rng.integers(1, 60)), pbc)
    cutoff = rng.uniform(1.0, 4.0)
    ours = neighbour_list(ALL, atoms, cutoff)
    assert_consistent(ours, atoms, cutoff)
    assert_same_pairs(ours, ase_neighbor_list(ALL, atoms, cutoff))
    assert_same_pairs(ours, matscipy_reference(atoms, cutoff))


@pytest.mark.parametrize("pbc", PBC_CASES[:4])
def test_cutoff_longer_than_cell(pbc):
    rng = np.random.default_rng(7)
    atoms = random_atoms(rng, 5, pbc, size=(1.5, 2.5), skew=0.5)
    cutoff = 6.0
    ours = neighbour_list(ALL, atoms, cutoff)
    assert_consistent(ours, atoms, cutoff)
    assert np.any(ours[0] == ours[1]), "periodic self-images expected"
    assert_same_pairs(ours, ase_neighbor_list(ALL, atoms, cutoff))
    assert_same_pairs(ours, matscipy_reference(atoms, cutoff))


@pytest.mark.parametrize("pbc", PBC_CASES)
def test_unwrapped_positions(pbc):
    """Atoms many cells away: S refers to the positions as given, as in ase and matscipy."""
    rng = np.random.default_rng(3)
    atoms = random_atoms(rng, 40, pbc, spread=(-7.5, 9.0))
    cutoff = 3.5
    ours = neighbour_list(ALL, atoms, cutoff)
    assert_consistent(ours, atoms, cutoff)
    assert_same_pairs(ours, ase_neighbor_list(ALL, atoms, cutoff))
    assert_same_pairs(ours, matscipy_reference(atoms, cutoff))


@pytest.mark.parametrize("name", ["C6H6", "CH3CH2OH", "C60"])
def test_molecule_without_cell(name):
    atoms = molecule(name)
    assert not atoms.cell.any() and not atoms.pbc.any()
    cutoff = 2.6
    ours = neighbour_list(ALL, atoms, cutoff)
    assert_consistent(ours, atoms, cutoff)
    assert_same_pairs(ours, ase_neighbor_list(ALL, atoms, cutoff))
    assert_same_pairs(ours, matscipy_reference(atoms, cutoff))


def test_slab_with_zero_cell_vector_along_vacuum():
    """A periodic surface whose non-periodic cell vector is zero."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 2))
    atoms.rattle(0.05, seed=1)
    atoms.cell[2] = 0.0
    atoms.pbc = (True, True, False)
    cutoff = 4.0
    ours = neighbour_list(ALL, atoms, cutoff)
    assert_consistent(ours, atoms, cutoff)
    assert_same_pairs(ours, ase_neighbor_list(ALL, atoms, cutoff))
    assert_same_pairs(ours, matscipy_reference(atoms, cutoff))


@pytest.mark.parametrize("n_atoms", [1, 2, 10, 100, 1000, 5000])
def test_random_systems_of_many_sizes(n_atoms):
    rng = np.random.default_rng(n_atoms)
    length = (n_atoms / 0.08) ** (1 / 3)  # about the density of a metal
    atoms = random_atoms(rng, n_atoms, (True, True, True), size=(length, length * 1.2), skew=1.0)
    cutoff = 4.0
    ours = neighbour_list(ALL, atoms, cutoff)
    assert_consistent(ours, atoms, cutoff)
    assert_same_pairs(ours, matscipy_reference(atoms, cutoff))
    if n_atoms <= 1000:
        assert_same_pairs(ours, ase_neighbor_list(ALL, atoms, cutoff))


def test_self_interaction_matches_ase():
    rng = np.random.default_rng(11)
    atoms = random_atoms(rng, 12, (True, False, True))
    ours = neighbour_list(ALL, atoms, 3.0, self_interaction=True)
    assert_same_pairs(ours, ase_neighbor_list(ALL, atoms, 3.0, self_interaction=True))
    i, j, S, d, _ = ours
    own = (i == j) & np.all(S == 0, axis=1)
    assert own.sum() == len(atoms) and np.all(d[own] == 0)


def test_species_pair_cutoffs_match_ase():
    rng = np.random.default_rng(5)
    atoms = random_atoms(rng, 50, (True, True, False))
    cutoff = {(1, 1): 1.5, ("H", "O"): 2.0, (8, 8): 3.2, ("C", 8): 2.5}
    assert_same_pairs(neighbour_list(ALL, atoms, cutoff), ase_neighbor_list(ALL, atoms, cutoff))


def test_per_atom_radii_match_ase():
    rng = np.random.default_rng(6)
    atoms = random_atoms(rng, 30, True)
    radii = rng.uniform(0.5, 1.8, len(atoms))
    assert_same_pairs(neighbour_list(ALL, atoms, radii), ase_neighbor_list(ALL, atoms, radii))


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_atoms=st.integers(1, 25),
    pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    cutoff=st.floats(0.3, 7.0),
    skew=st.floats(0.0, 2.0),
)
def test_fuzz_against_matscipy(seed, n_atoms, pbc, cutoff, skew):
    rng = np.random.default_rng(seed)
    atoms = random_atoms(rng, n_atoms, pbc, spread=(-1.5, 2.5), skew=skew, size=(2.0, 6.0))
    ours = neighbour_list(ALL, atoms, cutoff)
    assert_consistent(ours, atoms, cutoff)
    assert_same_pairs(ours, matscipy_reference(atoms, cutoff))


# --- golden cases built by hand -----------------------------------------------------------------


def test_single_atom_self_images():
    """One atom in a cubic cell a = 1, cutoff 1.5: images at distance 1 (6) and sqrt(2) (12);
    sqrt(3) > 1.5."""
    i, j, S, d = primitive_neighbour_list("ijSd", True, np.eye(3), [[0.3, 0.2, 0.1]], 1.5)
    assert len(i) == 18 and np.all(i == 0) and np.all(j == 0)
    assert sorted(np.round(d**2).astype(int)) == [1] * 6 + [2] * 12
    assert {tuple(s) for s in S} == {
        s for s in np.ndindex(3, 3, 3) for s in [tuple(np.array(s) - 1)] if 0 < np.dot(s, s) < 3
    }
    with_self = primitive_neighbour_list("i", True, np.eye(3), [[0, 0, 0]], 1.5,
                                         self_interaction=True)
    assert len(with_self) == 19


def test_dimer():
    positions = [[0.0, 0.0, 0.0], [0.6, 0.0, 0.8]]  # distance exactly 1
    i, j, d, D = primitive_neighbour_list("ijdD", False, np.zeros((3, 3)), positions, 1.5)
    np.testing.assert_array_equal(i, [0, 1])
    np.testing.assert_array_equal(j, [1, 0])
    np.testing.assert_allclose(d, [1.0, 1.0])
    np.testing.assert_allclose(D, [[0.6, 0.0, 0.8], [-0.6, 0.0, -0.8]])
    # The cutoff is strict.
    assert len(primitive_neighbour_list("i", False, np.zeros((3, 3)), positions, 1.0)) == 0


@pytest.mark.parametrize("cutoff, coordination", [(1.2, 6), (1.5, 18), (1.8, 26)])
@pytest.mark.parametrize("repeat", [1, 4])
def test_simple_cubic_coordination(cutoff, coordination, repeat):
    """Neighbour shells of a simple cubic lattice: 6 at 1, 12 at sqrt(2), 8 at sqrt(3)."""
    atoms = Atoms("X", cell=np.eye(3), pbc=True).repeat(repeat)
    i = neighbour_list("i", atoms, cutoff)
    np.testing.assert_array_equal(np.bincount(i, minlength=len(atoms)), coordination)


@pytest.mark.parametrize("cutoff, coordination", [(3.0, 12), (4.0, 18), (4.8, 42)])
def test_fcc_primitive_triclinic_coordination(cutoff, coordination):
    """fcc in its 60-degree primitive cell: shells of 12, 6 and 24 atoms."""
    atoms = bulk("Cu", "fcc", a=3.6)
    assert len(atoms) == 1
    assert len(neighbour_list("i", atoms, cutoff)) == coordination
    assert len(neighbour_list("i", atoms.repeat((2, 3, 1)), cutoff)) == 6 * coordination


# --- interface ----------------------------------------------------------------------------------


def test_quantities_order_single_letter_and_empty():
    atoms = bulk("Si", "diamond", a=5.43)
    i, j, S, d, D = neighbour_list(ALL, atoms, 3.0)
    d2, i2, D2 = neighbour_list("diD", atoms, 3.0)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(D, D2)
    single = neighbour_list("j", atoms, 3.0)
    assert isinstance(single, np.ndarray)
    np.testing.assert_array_equal(single, j)
    first, again = neighbour_list("ii", atoms, 3.0)
    np.testing.assert_array_equal(first, again)
    assert neighbour_list("", atoms, 3.0) == ()


def test_no_atoms():
    result = neighbour_list(ALL, Atoms(cell=np.eye(3) * 3, pbc=True), 2.0)
    for array, reference in zip(result, ase_neighbor_list(ALL, Atoms(), 2.0)):
        assert array.shape == reference.shape and array.dtype == reference.dtype


def test_converts_dtype_and_layout():
    rng = np.random.default_rng(2)
    atoms = random_atoms(rng, 20, True)
    expected = neighbour_list(ALL, atoms, 3.0)
    got = primitive_neighbour_list(ALL, [1, 1, 1], np.asfortranarray(atoms.cell.array),
                                   atoms.positions.tolist(), 3.0)
    assert_same_pairs(got, expected)
    got = primitive_neighbour_list("ij", True, atoms.cell.array,
                                   atoms.positions.astype(np.float32), 3.0)
    assert len(got[0]) > 0


def test_recycled_buffers_do_not_corrupt_live_results():
    atoms = bulk("Cu", "fcc", a=3.6).repeat(12)  # outputs above the recycling threshold
    first = neighbour_list(ALL, atoms, 4.0)
    copies = [array.copy() for array in first]
    del first  # its buffers go to the cache ...
    second = neighbour_list(ALL, atoms, 4.0)  # ... and are reused here
    third = neighbour_list(ALL, atoms, 4.5)
    for array, copy in zip(second, copies):
        np.testing.assert_array_equal(array, copy)
    assert len(third[0]) > len(second[0])
    previous = set_buffer_cache_limit(0)
    try:
        for array, copy in zip(neighbour_list(ALL, atoms, 4.0), copies):
            np.testing.assert_array_equal(array, copy)
    finally:
        set_buffer_cache_limit(previous)


def test_threads_give_identical_results():
    """The kernel runs without the GIL; concurrent calls must not interfere."""
    rng = np.random.default_rng(4)
    systems = [random_atoms(rng, 800, True, size=(20.0, 22.0)) for _ in range(4)]
    expected = [neighbour_list(ALL, atoms, 3.5) for atoms in systems]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda atoms: neighbour_list(ALL, atoms, 3.5), systems * 2))
    for got, want in zip(results, expected * 2):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


# --- bad input ----------------------------------------------------------------------------------

GOOD = dict(quantities="ijd", pbc=True, cell=np.eye(3) * 3, positions=[[0.0, 0.0, 0.0]],
            cutoff=2.0)


@pytest.mark.parametrize("change, message", [
    (dict(positions=[[np.nan, 0.0, 0.0]]), "NaN or infinite"),
    (dict(positions=[[0.0, 0.0, 0.0], [np.inf, 0.0, 0.0]]), "atom 1"),
    (dict(cell=np.diag([3.0, np.inf, 3.0])), "cell contains NaN or infinite"),
    (dict(cutoff=0.0), "positive finite"),
    (dict(cutoff=-1.0), "positive finite"),
    (dict(cutoff=np.nan), "positive finite"),
    (dict(cutoff=np.inf), "positive finite"),
    (dict(cell=np.zeros((3, 3))), "linearly dependent"),
    (dict(cell=[[3.0, 0, 0], [6.0, 0, 0], [0, 0, 3.0]]), "linearly dependent"),
    (dict(cell=np.diag([3.0, 3.0, 0.0]), pbc=[False, True, True]), r"axes \(1, 2\)"),
    (dict(positions=np.zeros((4, 2))), "positions must have shape"),
    (dict(positions=np.zeros(3)), "positions must have shape"),
    (dict(cell=np.eye(2)), r"cell must have shape \(3, 3\)"),
    (dict(cell=[3.0, 3.0, 3.0]), r"cell must have shape \(3, 3\)"),
    (dict(pbc=[True, False]), "pbc must be"),
    (dict(quantities="ijx"), "unknown quantities 'x'"),
    (dict(quantities=["i"]), "quantities must be a string"),
    (dict(positions=[[1e12, 0.0, 0.0]]), "wrap the positions"),
    (dict(cutoff={(1, 1): 2.0}), "needs the atomic numbers"),
    (dict(cutoff=[1.0, 2.0]), "per-atom cutoff radii"),
])
def test_bad_input_raises_value_error(change, message):
    with pytest.raises(ValueError, match=message):
        primitive_neighbour_list(**{**GOOD, **change})


def test_singular_cell_is_fine_along_non_periodic_axes():
    """A chain along x: with cutoff 3.5, each atom sees its own images at +-3 (2 x 2 pairs) and
    the other atom at distance 1 (2) and sqrt(10) (2 x 2)."""
    i = primitive_neighbour_list("i", [True, False, False], np.diag([3.0, 0.0, 0.0]),
                                 [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 3.5)
    assert len(i) == 10


def test_refuses_output_larger_than_memory():
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 3, (1000, 3))
    with pytest.raises(MemoryError, match="max_memory_bytes.*smaller cutoff"):
        primitive_neighbour_list("ij", True, np.eye(3) * 3, positions, 2.0,
                                 max_memory_bytes=1_000_000)
    # Without an override the limit is the memory available: ~4e12 pairs do not fit.
    with pytest.raises(MemoryError, match="memory available"):
        primitive_neighbour_list("ij", True, np.eye(3) * 3, positions, 300.0)
    with pytest.raises(MemoryError, match="periodic images"):
        primitive_neighbour_list("ij", True, np.diag([1e-7, 3.0, 3.0]), [[0.0, 0.0, 0.0]], 2.0)
    assert len(primitive_neighbour_list("i", True, np.eye(3) * 3, positions, 2.0,
                                        max_memory_bytes=10**9)) > 0
