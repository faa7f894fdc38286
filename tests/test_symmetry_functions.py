"""The symmetry-function kernel and parameter sets: values against dscribe and a direct numpy
implementation, analytic derivatives against finite differences, the chain rule, the edge-list
conventions (centre subsets, edge order, skins) and the errors for bad parameters."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list

from mlpot.symmetry_functions import SymmetryFunctionSet

G2 = [[0.5, 0.0], [1.0, 2.0], [0.3, 3.5], [4.0, 1.2]]
G4 = [[0.01, 1.0, 1.0], [0.02, 2.0, -1.0], [0.005, 4.0, 1.0], [0.05, 16.0, -1.0]]
G5 = [[0.03, 1.0, -1.0], [0.01, 3.0, 1.0], [0.1, 2.0, 1.0]]
# (Integer ζ only in G4/G5: dscribe returns NaN for a non-integer ζ when rounding puts cos θ of
# exactly antiparallel edges, an atom's own periodic images, below −1. The kernel clamps.)


def silicon_carbide(rattle=0.1, seed=1) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43).repeat((2, 1, 1))
    atoms.symbols[[1, 2]] = "C"
    atoms.rattle(rattle, seed=seed)
    return atoms


def small_cell() -> Atoms:
    """A triclinic cell smaller than the cutoff: atoms see their own periodic images."""
    atoms = Atoms("SiC", scaled_positions=[[0, 0, 0], [0.3, 0.45, 0.2]],
                  cell=[[2.9, 0.0, 0.0], [0.6, 2.7, 0.0], [0.3, -0.4, 3.1]], pbc=True)
    atoms.rattle(0.05, seed=3)
    return atoms


def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    return atoms


def edges(atoms, cutoff, species):
    i, j, d = neighbor_list("ijD", atoms, cutoff)
    z = np.array([species.index(s) for s in atoms.get_chemical_symbols()], dtype=np.int64)
    return z, np.stack([i, j]).astype(np.int64), d


def reference_descriptors(sf: SymmetryFunctionSet, z, edge_index, vectors) -> np.ndarray:
    """Direct implementation of the definitions in mlpot.symmetry_functions (slow, clear)."""
    rc = sf.cutoff
    rca = sf.angular_cutoff or sf.cutoff

    def fc(r, cutoff):
        x = r / cutoff
        if x >= 1.0:
            return 0.0
        if sf.cutoff_function == "cosine":
            return 0.5 * (np.cos(np.pi * x) + 1.0)
        return 1.0 - 10 * x**3 + 15 * x**4 - 6 * x**5

    S, n_rad, n_ang = len(sf.species), len(sf.radial), len(sf.angular)
    out = np.zeros((len(z), sf.num_features))
    for i in range(len(z)):
        mine = np.flatnonzero(edge_index[0] == i)
        for e in mine:
            r = np.linalg.norm(vectors[e])
            s = z[edge_index[1, e]]
            for k, (eta, r_s) in enumerate(sf.radial):
                out[i, s * n_rad + k] += np.exp(-eta * (r - r_s) ** 2) * fc(r, rc)
        for x, e in enumerate(mine):
            for f in mine[x + 1:]:
                a, b = vectors[e], vectors[f]
                ra, rb, rjk = np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(b - a)
                cos = a @ b / (ra * rb)
                s, t = z[edge_index[1, e]], z[edge_index[1, f]]
                s, t = max(s, t), min(s, t)
                base = S * n_rad + (s * (s + 1) // 2 + t) * n_ang
                for k, (kind, eta, zeta, lam) in enumerate(sf.angular):
                    value = 2 ** (1 - zeta) * max(1 + lam * cos, 0.0) ** zeta * fc(ra, rca) * fc(
                        rb, rca)
                    if kind == "G4":
                        value *= np.exp(-eta * (ra**2 + rb**2 + rjk**2)) * fc(rjk, rca)
                    else:
                        value *= np.exp(-eta * (ra**2 + rb**2))
                    out[i, base + k] += value
    return out


# -- values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("structure", ["periodic", "small cell", "molecule"])
def test_equals_dscribe(structure):
    dscribe = pytest.importorskip("dscribe.descriptors")
    if structure == "molecule":
        atoms, symbols, cutoff = ethanol(), ["H", "C", "O"], 4.0
    else:
        atoms = silicon_carbide() if structure == "periodic" else small_cell()
        symbols, cutoff = ["C", "Si"], 5.0
    periodic = structure != "molecule"
    acsf = dscribe.ACSF(r_cut=cutoff, g2_params=G2, g4_params=G4, g5_params=G5,
                        species=symbols, periodic=periodic)
    expected = acsf.create(atoms)
    sf = SymmetryFunctionSet.from_dscribe(cutoff, symbols, g2_params=G2, g4_params=G4,
                                          g5_params=G5)
    assert sf.to_dscribe()["g4_params"] == G4
    z, edge_index, vectors = edges(atoms, cutoff, list(sf.species))
    G, _ = sf.compute(z, edge_index, vectors, derivatives=False)
    assert G.shape == expected.shape
    np.testing.assert_allclose(G, expected, rtol=0, atol=1e-10 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("cutoff_function", ["cosine", "polynomial"])
def test_equals_direct_implementation(cutoff_function):
    """G5, the polynomial cutoff, a shorter angular cutoff and non-integer ζ."""
    atoms = silicon_carbide(seed=4)
    angular = ([("G4", *p) for p in G4[:2]] + [("G5", *p) for p in G5]
               + [("G4", 0.02, 1.7, 1.0), ("G5", 0.04, 2.5, -1.0)])
    sf = SymmetryFunctionSet(("C", "Si"), 5.0, tuple(map(tuple, G2)), tuple(angular),
                             angular_cutoff=4.2, cutoff_function=cutoff_function)
    z, edge_index, vectors = edges(atoms, 5.0, ["C", "Si"])
    G, _ = sf.compute(z, edge_index, vectors)
    np.testing.assert_allclose(G, reference_descriptors(sf, z, edge_index, vectors), rtol=0,
                               atol=1e-12)


def test_radial_terms_equal_torchani():
    """ANI's radial AEV terms are ¼ of our G2 with η = EtaR, r_s = ShfR."""
    import torch

    os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")  # its CUDA extensions: not needed
    terms = pytest.importorskip("torchani.aev._terms")  # installed by setup.sh (--no-deps)
    ani = SymmetryFunctionSet.ani_like(["H", "C", "O"], cutoff=5.2, angular_cutoff=3.5)
    # TorchANI keeps its parameters in float32: use shifts that float32 represents exactly.
    shifts = [float(np.float32(r_s)) for _, r_s in ani.radial]
    sf = SymmetryFunctionSet(ani.species, 5.2, tuple((16.0, r_s) for r_s in shifts), ani.angular,
                             angular_cutoff=3.5)
    atoms = ethanol()
    z, edge_index, vectors = edges(atoms, 5.2, ["H", "C", "O"])
    G, _ = sf.compute(z, edge_index, vectors)
    radial = terms.ANIRadial(16.0, shifts, 5.2).double()
    values = radial(torch.from_numpy(np.linalg.norm(vectors, axis=1))).numpy()
    expected = np.zeros((len(atoms), 3, 16))
    np.add.at(expected, (edge_index[0], z[edge_index[1]]), values)
    np.testing.assert_allclose(G[:, :48], 4 * expected.reshape(len(atoms), 48), rtol=0,
                               atol=1e-12)


# -- derivatives -------------------------------------------------------------------------------

@pytest.mark.parametrize("cutoff_function", ["cosine", "polynomial"])
@pytest.mark.parametrize("structure", ["small cell", "molecule"])
def test_derivatives_equal_finite_differences(cutoff_function, structure):
    if structure == "molecule":
        atoms, species, cutoff = ethanol(), ["H", "C", "O"], 4.0
    else:
        atoms, species, cutoff = small_cell(), ["C", "Si"], 4.5
    angular = [("G4", *p) for p in G4] + [("G5", *p) for p in G5] + [("G4", 0.02, 2.5, 1.0)]
    sf = SymmetryFunctionSet(tuple(species), cutoff, tuple(map(tuple, G2)), tuple(angular),
                             angular_cutoff=cutoff - 0.5, cutoff_function=cutoff_function)
    z, edge_index, vectors = edges(atoms, cutoff, species)
    _, dG = sf.compute(z, edge_index, vectors)
    assert dG.shape == (len(vectors), sf.num_features, 3)
    assert_derivatives_equal_finite_differences(sf, z, edge_index, vectors, dG, edges=25)


def assert_derivatives_equal_finite_differences(sf, z, edge_index, vectors, dG, edges):
    """Central differences (step 1e-5 Å) of the descriptors for `edges` random edge vectors."""
    step = 1e-5
    rng = np.random.default_rng(0)
    for e in rng.choice(len(vectors), size=min(edges, len(vectors)), replace=False):
        for k in range(3):
            plus, minus = vectors.copy(), vectors.copy()
            plus[e, k] += step
            minus[e, k] -= step
            difference = (sf.compute(z, edge_index, plus, derivatives=False)[0]
                          - sf.compute(z, edge_index, minus, derivatives=False)[0]) / (2 * step)
            centre = edge_index[0, e]
            np.testing.assert_allclose(dG[e, :, k], difference[centre], rtol=0, atol=2e-8)
            others = np.delete(difference, centre, axis=0)
            assert np.abs(others).max() == 0.0  # G_i depends on i's own edges only


@pytest.mark.parametrize("species", [["Si"], ["C", "Si"]])
def test_g4_only_sets_skip_far_pairs_exactly(species):
    """With only G4 functions the kernel drops neighbour pairs with r_jk ≥ rc (their f_c(r_jk)
    is zero): values must still equal the direct implementation, and derivatives finite
    differences, also for pairs right at the edge of the cutoff."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    if len(species) == 2:
        atoms.symbols[::3] = "C"
    atoms.rattle(0.05, seed=5)
    angular = tuple(("G4", eta, zeta, lam) for eta in (0.001, 0.03) for zeta in (1.0, 4.0, 2.5)
                    for lam in (1.0, -1.0))
    sf = SymmetryFunctionSet(tuple(species), 4.6, ((0.5, 0.0),), angular)
    z, edge_index, vectors = edges(atoms, 4.6, species)
    G, dG = sf.compute(z, edge_index, vectors)
    np.testing.assert_allclose(G, reference_descriptors(sf, z, edge_index, vectors), rtol=0,
                               atol=1e-12)
    assert_derivatives_equal_finite_differences(sf, z, edge_index, vectors, dG, edges=12)
    weights = np.random.default_rng(3).normal(size=G.shape)
    expected = np.einsum("efk,ef->ek", dG, weights[edge_index[0]])
    np.testing.assert_allclose(sf.gradient(z, edge_index, vectors, weights), expected, atol=1e-12)


def test_lane_chunks_powers_and_batches():
    """The kernel evaluates angular functions eight per vector lane, grouped by (η, kind), and
    neighbour pairs in batches of 128: user order interleaving the groups (chunks that are not
    consecutive functions), a group of 11 (a full chunk and a padded one), ζ from 1 to 64 by
    binary powering and above 64 or non-integer by std::pow, G4 with G5 (no pair is skipped),
    two species and 44–46 neighbours per atom (≥ 946 pairs per centre, rows split across batches)
    must give the direct implementation's values, finite-difference derivatives and the same
    chain rule."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.symbols[::3] = "C"
    atoms.rattle(0.05, seed=7)
    zetas = (1.0, 3.0, 33.0, 64.0, 65.0, 2.5)
    angular = [("G4", eta, zeta, lam) for zeta in zetas for eta in (0.004, 0.02)
               for lam in (1.0, -1.0) if not (eta == 0.02 and lam == 1.0)]
    angular += [("G5", 0.01, zeta, -1.0) for zeta in zetas[:4]]
    species = ["C", "Si"]
    sf = SymmetryFunctionSet(tuple(species), 6.0, ((0.5, 0.0), (0.2, 3.0)), tuple(angular))
    z, edge_index, vectors = edges(atoms, 6.0, species)
    assert np.bincount(edge_index[0]).min() >= 44  # ≥ 946 pairs per centre
    G, dG = sf.compute(z, edge_index, vectors)
    np.testing.assert_allclose(G, reference_descriptors(sf, z, edge_index, vectors), rtol=1e-12,
                               atol=1e-12)
    assert_derivatives_equal_finite_differences(sf, z, edge_index, vectors, dG, edges=6)
    weights = np.random.default_rng(4).normal(size=G.shape)
    expected = np.einsum("efk,ef->ek", dG, weights[edge_index[0]])
    np.testing.assert_allclose(sf.gradient(z, edge_index, vectors, weights), expected,
                               rtol=1e-12, atol=1e-12)


def test_shared_exponentials_equal_direct_ones():
    """Groups whose η is an integer multiple k ≤ 16 of another group's of the same kind take
    exp(−k η x) as the k-th power of that group's exponential. Here 0.006 (k = 2) and 0.048
    (k = 16, the largest) from 0.003, the G5 0.03 from 0.01 (k = 3); 0.051 (17 × 0.003) and
    0.0301 have their own. Values, derivatives and the chain rule equal the direct
    implementation and finite differences."""
    atoms = silicon_carbide(seed=5)
    angular = [("G4", eta, zeta, lam) for eta in (0.048, 0.003, 0.051, 0.006)
               for zeta, lam in ((1.0, 1.0), (4.0, -1.0))]
    angular += [("G5", eta, 2.0, 1.0) for eta in (0.03, 0.01, 0.0301)]
    species = ["C", "Si"]
    sf = SymmetryFunctionSet(tuple(species), 5.0, ((0.5, 0.0),), tuple(angular))
    z, edge_index, vectors = edges(atoms, 5.0, species)
    G, dG = sf.compute(z, edge_index, vectors)
    expected = reference_descriptors(sf, z, edge_index, vectors)
    np.testing.assert_allclose(G, expected, rtol=1e-13, atol=1e-14)
    assert_derivatives_equal_finite_differences(sf, z, edge_index, vectors, dG, edges=6)
    weights = np.random.default_rng(5).normal(size=G.shape)
    np.testing.assert_allclose(sf.gradient(z, edge_index, vectors, weights),
                               np.einsum("efk,ef->ek", dG, weights[edge_index[0]]),
                               rtol=1e-12, atol=1e-12)


def test_power_of_two_zetas_by_squares():
    """On AVX2, four lanes whose ζ are powers of two ≤ 16, equal in each lane pair, with the same
    λ in both pairs, take x^ζ from one chain of squares shared by two neighbour pairs; other lanes
    use binary powering. A set with both kinds (λ ± pairs, a padded part, pairs of unequal ζ,
    crossed λ) equals the direct implementation and finite differences."""
    atoms = silicon_carbide(seed=6)
    angular = [("G4", 0.01, zeta, lam) for zeta, lam in
               ((1, 1), (1, -1), (16, 1), (16, -1),  # squares: 2^0, 2^4
                (2, 1), (2, -1), (4, -1), (4, 1))]  # λ crossed: binary powering
    angular += [("G4", 0.02, zeta, -1) for zeta in (8, 2, 4)]  # unequal ζ in a lane pair
    angular += [("G5", 0.03, zeta, lam) for zeta, lam in ((2, 1), (2, -1), (4, 1))]  # padded
    species = ["C", "Si"]
    sf = SymmetryFunctionSet(tuple(species), 5.0, ((0.5, 0.0),), tuple(angular))
    z, edge_index, vectors = edges(atoms, 5.0, species)
    G, dG = sf.compute(z, edge_index, vectors)
    np.testing.assert_allclose(G, reference_descriptors(sf, z, edge_index, vectors), rtol=1e-13,
                               atol=1e-14)
    assert_derivatives_equal_finite_differences(sf, z, edge_index, vectors, dG, edges=6)


@pytest.mark.parametrize("path", ["portable", "avx2"])
def test_vector_paths_agree(tmp_path, path):
    """The kernel's hand-written parts have three versions (neighbour-pair list by AVX-512
    compress, AVX2 permutes or one candidate at a time; pair terms summed eight lanes at a time,
    or four on AVX2); MLPOT_SIMD forces a lower one than the CPU's best in a fresh process: same
    G, dG and chain rule up to rounding. On an AVX2 CPU "portable" runs the eight-lane sums that
    AVX-512 CPUs use by default."""
    from mlpot import _kernel

    paths = ["portable", "avx2", "avx512"]
    if paths.index(path) >= paths.index(_kernel.simd_path()):
        pytest.skip(f"{path} is not below this build's default path, {_kernel.simd_path()}: "
                    "nothing else to compare with")
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.symbols[::3] = "C"
    atoms.rattle(0.05, seed=3)
    species = ["C", "Si"]
    sf = SymmetryFunctionSet.ani_like(species, cutoff=5.0, angular_cutoff=4.0)
    z, edge_index, vectors = edges(atoms, 5.0, species)
    weights = np.random.default_rng(5).normal(size=(len(atoms), sf.num_features))
    np.savez(tmp_path / "inputs.npz", z=z, edge_index=edge_index, vectors=vectors,
             weights=weights)
    sf.to_file(tmp_path / "set.json")
    script = (
        "import numpy as np\n"
        "from mlpot import _kernel\n"
        "from mlpot.symmetry_functions import SymmetryFunctionSet\n"
        f"assert _kernel.simd_path() == {path!r}, _kernel.simd_path()\n"
        f"d = np.load({str(tmp_path / 'inputs.npz')!r})\n"
        f"sf = SymmetryFunctionSet.from_file({str(tmp_path / 'set.json')!r})\n"
        "G, dG = sf.compute(d['z'], d['edge_index'], d['vectors'])\n"
        "g = sf.gradient(d['z'], d['edge_index'], d['vectors'], d['weights'])\n"
        f"np.savez({str(tmp_path / 'forced.npz')!r}, G=G, dG=dG, g=g)\n")
    env = dict(os.environ, MLPOT_SIMD=path)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    forced = np.load(tmp_path / "forced.npz")
    G, dG = sf.compute(z, edge_index, vectors)
    np.testing.assert_allclose(forced["G"], G, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(forced["dG"], dG, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(forced["g"], sf.gradient(z, edge_index, vectors, weights),
                               rtol=1e-12, atol=1e-12)


def test_unknown_simd_path_is_refused():
    """A misspelt MLPOT_SIMD is an error naming the accepted values, not a silent default."""
    script = ("from mlpot.symmetry_functions import SymmetryFunctionSet\n"
              "sf = SymmetryFunctionSet(('Si',), 4.0, ((0.5, 0.0),), (('G4', 0.01, 1.0, 1.0),))\n"
              "import numpy as np\n"
              "sf.compute(np.zeros(2, dtype=np.int64), np.array([[0, 1], [1, 0]]),\n"
              "           np.array([[2.0, 0, 0], [-2.0, 0, 0]]))\n")
    env = dict(os.environ, MLPOT_SIMD="AVX2")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "MLPOT_SIMD must be portable, avx2 or avx512" in result.stderr
    assert "'AVX2'" in result.stderr


def test_derivative_buffer_reused_only_when_released():
    """compute() hands out the previous call's derivative memory again once nothing refers to
    it any more; an array the caller still holds is never overwritten."""
    atoms = silicon_carbide()
    sf = SymmetryFunctionSet.ani_like(["C", "Si"], cutoff=4.5, angular_cutoff=3.8)
    z, edge_index, vectors = edges(atoms, 4.5, ["C", "Si"])
    address = lambda array: array.__array_interface__["data"][0]  # noqa: E731
    _, held = sf.compute(z, edge_index, vectors)
    kept = held.copy()
    _, other = sf.compute(z, edge_index, vectors * 1.01)
    assert address(other) != address(held)
    np.testing.assert_array_equal(held, kept)
    first = address(other)
    del other
    _, again = sf.compute(z, edge_index, vectors)
    assert address(again) == first
    np.testing.assert_array_equal(again, kept)
    np.testing.assert_array_equal(held, kept)


def test_chain_rule_contract_and_gradient():
    atoms = silicon_carbide()
    sf = SymmetryFunctionSet.ani_like(["C", "Si"], cutoff=4.5, angular_cutoff=3.8)
    z, edge_index, vectors = edges(atoms, 4.5, ["C", "Si"])
    G, dG = sf.compute(z, edge_index, vectors)
    weights = np.random.default_rng(1).normal(size=G.shape)
    expected = np.einsum("efk,ef->ek", dG, weights[edge_index[0]])
    np.testing.assert_allclose(sf.contract(z, edge_index, dG, weights), expected, atol=1e-12)
    np.testing.assert_allclose(sf.gradient(z, edge_index, vectors, weights), expected, atol=1e-12)


# -- edge-list conventions ---------------------------------------------------------------------

def test_centre_subsets_edge_order_and_skin():
    atoms = silicon_carbide()
    sf = SymmetryFunctionSet.from_dscribe(4.0, ["C", "Si"], g2_params=G2, g4_params=G4,
                                          g5_params=G5)
    z, edge_index, vectors = edges(atoms, 4.0, list(sf.species))
    G, dG = sf.compute(z, edge_index, vectors)

    # Shuffled edges plus edges beyond the cutoff (a neighbour-list skin): same descriptors.
    zs, skin_index, skin_vectors = edges(atoms, 5.0, list(sf.species))
    order = np.random.default_rng(2).permutation(skin_index.shape[1])
    G2_, dG2 = sf.compute(zs, skin_index[:, order], skin_vectors[order])
    np.testing.assert_allclose(G2_, G, atol=1e-12)
    inside = np.linalg.norm(skin_vectors[order], axis=1) < 4.0
    assert np.abs(dG2[~inside]).max() == 0.0
    lookup = {(a, b, tuple(np.round(v, 9))): e for e, (a, b, v) in
              enumerate(zip(edge_index[0], edge_index[1], vectors))}
    for e in np.flatnonzero(inside):
        a, b, v = skin_index[0, order[e]], skin_index[1, order[e]], skin_vectors[order[e]]
        np.testing.assert_allclose(dG2[e], dG[lookup[(a, b, tuple(np.round(v, 9)))]], atol=1e-12)

    # A subset of centres, in any order: those rows, and zero derivatives for other centres.
    centres = np.array([3, 0, 2], dtype=np.int64)
    Gc, dGc = sf.compute(z, edge_index, vectors, centres)
    np.testing.assert_allclose(Gc, G[centres], atol=1e-12)
    own = np.isin(edge_index[0], centres)
    np.testing.assert_allclose(dGc[own], dG[own], atol=1e-12)
    assert np.abs(dGc[~own]).max() == 0.0


def test_isolated_atoms_and_no_edges():
    sf = SymmetryFunctionSet(("H",), 3.0, ((1.0, 0.0),), (("G4", 0.1, 1.0, 1.0),))
    G, dG = sf.compute(np.zeros(2, dtype=np.int64), np.zeros((2, 0), dtype=np.int64),
                       np.zeros((0, 3)))
    assert G.shape == (2, 2) and dG.shape == (0, 2, 3) and not G.any()


# -- parameter sets and errors -----------------------------------------------------------------

def test_dict_and_file_round_trip(tmp_path):
    sf = SymmetryFunctionSet(("H", "O"), 5.0, ((0.5, 0.0), (1.0, 1.5)),
                             (("G4", 0.1, 2.0, -1.0), ("G5", 0.2, 1.0, 1.0)),
                             angular_cutoff=4.0, cutoff_function="polynomial")
    record = sf.to_dict()
    assert json.loads(json.dumps(record)) == record
    assert SymmetryFunctionSet.from_dict(record) == sf
    assert SymmetryFunctionSet.from_file(sf.to_file(tmp_path / "sf.json")) == sf
    compact = {"species": ["H", "O"], "cutoff": 5.0, "angular_cutoff": 4.0,
               "cutoff_function": "polynomial", "radial": [[0.5, 0.0], [1.0, 1.5]],
               "angular": [["G4", 0.1, 2, -1], ["G5", 0.2, 1, 1]]}
    assert SymmetryFunctionSet.from_dict(compact) == sf
    names = sf.feature_names()
    assert len(names) == sf.num_features == 2 * 2 + 3 * 2
    assert names[2] == "G2(eta=0.5, r_s=0; O)" and names[-1].endswith("O-O)")
    assert sf.species_pairs == [("H", "H"), ("O", "H"), ("O", "O")]
    with pytest.raises(ValueError, match="cutoff"):
        sf.to_dscribe()


BAD = [
    ({"radial": [[-0.5, 0.0]]}, "eta must be ≥ 0"),
    ({"angular": [["G4", -0.1, 1.0, 1.0]]}, "eta must be ≥ 0"),
    ({"angular": [["G4", 0.1, 0.5, 1.0]]}, "zeta must be ≥ 1"),
    ({"angular": [["G5", 0.1, 1.0, 0.5]]}, "lambda must be -1 or \\+1"),
    ({"angular": [["G3", 0.1, 1.0, 1.0]]}, "kind 'G4' or 'G5'"),
    ({"cutoff": 0.0}, "cutoff must be a positive distance"),
    ({"cutoff": -2.0}, "cutoff must be a positive distance"),
    ({"angular_cutoff": 6.0}, "angular_cutoff must be positive and at most the cutoff"),
    ({"cutoff_function": "gaussian"}, "unknown cutoff function 'gaussian'"),
    ({"species": ["H", "Qq"]}, "unknown chemical symbol"),
    ({"species": ["H", "H"]}, "duplicates"),
    ({"radial": [], "angular": []}, "no functions"),
    ({"colour": "red"}, "unknown key"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m for _, m in BAD])
def test_bad_parameters_raise(change, message):
    record = {"species": ["H", "O"], "cutoff": 5.0, "radial": [[0.5, 0.0]],
              "angular": [["G4", 0.1, 1.0, 1.0]], **change}
    with pytest.raises(ValueError, match=message):
        SymmetryFunctionSet.from_dict(record)


def test_bad_inputs_raise():
    sf = SymmetryFunctionSet(("H", "O"), 3.0, ((1.0, 0.0),))
    z = np.array([0, 1], dtype=np.int64)
    edge_index = np.array([[0, 1], [1, 0]], dtype=np.int64)
    vectors = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="species index 2"):
        sf.compute(np.array([0, 2]), edge_index, vectors)
    with pytest.raises(ValueError, match="outside 0"):
        sf.compute(z, np.array([[0, 1], [1, 2]]), vectors)
    with pytest.raises(ValueError, match="zero length"):
        sf.compute(z, edge_index, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="edge_vectors must be"):
        sf.compute(z, edge_index, vectors[:1])
    with pytest.raises(ValueError, match="not an atom index"):
        sf.compute(z, edge_index, vectors, np.array([3]))
    with pytest.raises(ValueError, match="appears twice"):
        sf.gradient(z, edge_index, vectors, np.zeros((2, 2)), np.array([0, 0]))
