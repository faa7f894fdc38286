"""Model-level tests of the PaiNN kind: edges in, atom energies out (no model file, no calculator).

The end-to-end physics checks through the model file and the ASE calculator live in
tests/test_physics_painn.py (mlpot.testing.PhysicsChecks).
"""

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

from mlpot.models.painn import PaiNN
from mlpot.models.radial import BesselBasis, PolynomialEnvelope
from mlpot.testing import random_orthogonal

torch.set_num_threads(1)

CUTOFF = 4.0
SPECIES = ["H", "C", "O"]


def make_model(dtype=torch.float64, seed=0, **kwargs) -> PaiNN:
    torch.manual_seed(seed)
    model = PaiNN(SPECIES, CUTOFF, **kwargs)
    model.set_energy_shift_scale(torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([2.0, 3.0, 1.5]))
    return model.to(dtype)


def graph(atoms: Atoms, cutoff: float = CUTOFF, species=SPECIES, dtype=torch.float64):
    """(species indices, edge_index, edge_vectors) of ``atoms`` with ASE's neighbour list."""
    i, j, d = neighbor_list("ijD", atoms, cutoff)
    index = {s: k for k, s in enumerate(species)}
    z = torch.tensor([index[s] for s in atoms.get_chemical_symbols()], dtype=torch.long)
    return z, torch.from_numpy(np.stack([i, j])).long(), torch.from_numpy(d).to(dtype)


def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


def periodic_cell() -> Atoms:
    """A small triclinic cell with three species, whose atoms see their own periodic images."""
    atoms = Atoms("CHOH", scaled_positions=[[0, 0, 0], [0.3, 0.1, 0.2], [0.55, 0.5, 0.45],
                                            [0.8, 0.7, 0.65]],
                  cell=[[3.2, 0.0, 0.0], [0.7, 3.0, 0.0], [0.4, -0.5, 3.4]], pbc=True)
    atoms.rattle(0.05, seed=2)
    return atoms


@pytest.fixture(scope="module")
def model():
    return make_model().eval()


def test_scripted_equals_eager_in_float64(model):
    scripted = torch.jit.script(model)
    for atoms in (ethanol(), periodic_cell()):
        z, edges, vectors = graph(atoms)
        vectors.requires_grad_(True)
        eager = model(z, edges, vectors)
        (eager_grad,) = torch.autograd.grad(eager.sum(), vectors)
        script = scripted(z, edges, vectors)
        (script_grad,) = torch.autograd.grad(script.sum(), vectors)
        assert eager.dtype == torch.float64
        torch.testing.assert_close(script, eager, rtol=0, atol=1e-12)
        torch.testing.assert_close(script_grad, eager_grad, rtol=0, atol=1e-12)


def test_float32_matches_float64(model):
    scripted32 = torch.jit.script(make_model(torch.float32).eval())
    z, edges, vectors = graph(periodic_cell())
    energies32 = scripted32(z, edges, vectors.float())
    assert energies32.dtype == torch.float32
    assert PaiNN(SPECIES, CUTOFF)(z, edges, vectors.float()).dtype == torch.float32
    torch.testing.assert_close(energies32.double(), model(z, edges, vectors), rtol=1e-5, atol=1e-5)


def test_hyperparameters_rebuild_the_same_model(model):
    hp = json.loads(json.dumps(model.hyperparameters()))
    rebuilt = PaiNN(**hp).double()
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.interaction_range == CUTOFF * 2 == model.interaction_range
    z, edges, vectors = graph(ethanol())
    torch.testing.assert_close(rebuilt(z, edges, vectors), model(z, edges, vectors), rtol=0, atol=0)


def test_set_energy_shift_scale_is_applied_per_species(model):
    z, edges, vectors = graph(ethanol())
    other = make_model()
    other.set_energy_shift_scale(torch.tensor([0.5, 1.0, 2.0]), torch.tensor([1.0, 2.0, 4.0]))
    raw = (model(z, edges, vectors) - model.energy_shift[z]) / model.energy_scale[z]
    expected = other.energy_shift[z] + other.energy_scale[z] * raw
    torch.testing.assert_close(other(z, edges, vectors), expected, rtol=1e-12, atol=1e-12)
    # Set on a fresh (float32) model, then converted: the float64 values survive.
    fresh = PaiNN(SPECIES, CUTOFF)
    shift = torch.tensor([-13.6056980659, -1029.8634720901, -2041.8183425063], dtype=torch.float64)
    fresh.set_energy_shift_scale(shift, torch.ones(3, dtype=torch.float64))
    assert torch.equal(fresh.double().energy_shift, shift)
    with pytest.raises(ValueError, match="one value per species"):
        other.set_energy_shift_scale(torch.zeros(2), torch.ones(2))


@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "reflection"])
@pytest.mark.parametrize("structure", [ethanol, periodic_cell])
def test_atom_energies_are_e3_invariant(model, structure, proper):
    rng = np.random.default_rng(3)
    atoms = structure()
    z, edges, vectors = graph(atoms)
    reference = model(z, edges, vectors)
    assert reference.std() > 0.1  # the test could fail: energies differ between atoms
    for _ in range(3):
        q = random_orthogonal(rng, proper)
        moved = atoms.copy()
        moved.positions = atoms.positions @ q.T + rng.normal(size=3) * 5.0
        moved.cell = atoms.cell.array @ q.T
        z2, edges2, vectors2 = graph(moved)
        torch.testing.assert_close(model(z2, edges2, vectors2), reference, rtol=0, atol=1e-12)


def test_atom_energies_are_permutation_equivariant(model):
    atoms = periodic_cell().repeat((2, 1, 1))
    permutation = np.random.default_rng(4).permutation(len(atoms))
    z, edges, vectors = graph(atoms)
    z2, edges2, vectors2 = graph(atoms[permutation])
    torch.testing.assert_close(model(z2, edges2, vectors2), model(z, edges, vectors)[permutation],
                               rtol=0, atol=1e-12)


def test_vector_features_are_equivariant(model):
    """The l = 1 channels rotate with the structure (not only the read-out is invariant)."""
    atoms = ethanol()
    q = random_orthogonal(np.random.default_rng(5), proper=True)
    features = []
    for positions in (atoms.positions, atoms.positions @ q.T):
        z, edges, vectors = graph(Atoms(atoms.symbols, positions))
        s = model.embedding(z)
        v = torch.zeros(len(atoms), 3, model.num_features, dtype=s.dtype)
        lengths = vectors.norm(dim=-1)
        args = (edges[0], edges[1], model.radial_basis(lengths), model.envelope(lengths),
                vectors / lengths.unsqueeze(-1))
        for interaction in model.interactions:
            s, v = interaction(s, v, *args)
        features.append((s, v))
    (s, v), (s_rot, v_rot) = features
    assert v.abs().max() > 1e-2
    torch.testing.assert_close(s_rot, s, rtol=0, atol=1e-12)
    torch.testing.assert_close(v_rot, torch.einsum("ab,nbf->naf", torch.from_numpy(q), v),
                               rtol=0, atol=1e-12)


def test_isolated_atoms_and_atoms_without_edges(model):
    z = torch.tensor([0, 1, 2, 1])
    no_edges = model(z, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))
    assert no_edges.shape == (4,) and torch.isfinite(no_edges).all()
    assert no_edges[1] == no_edges[3] and no_edges[0] != no_edges[1]
    # One bonded pair (atoms 1, 2); atoms 0 and 3 have no edges and keep their isolated energies.
    vectors = torch.tensor([[1.1, 0.0, 0.0], [-1.1, 0.0, 0.0]], dtype=torch.float64,
                           requires_grad=True)
    energies = model(z, torch.tensor([[1, 2], [2, 1]]), vectors)
    torch.testing.assert_close(energies[[0, 3]], no_edges[[0, 3]], rtol=0, atol=0)
    (gradient,) = torch.autograd.grad(energies.sum(), vectors)
    assert torch.isfinite(gradient).all() and gradient.abs().max() > 0


def test_zero_length_edge_gives_finite_gradients(model):
    vectors = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    energies = model(torch.tensor([0, 1]), torch.tensor([[0, 1], [1, 0]]), vectors)
    energies.sum().backward()
    assert torch.isfinite(energies).all() and torch.isfinite(vectors.grad).all()
    for parameter in model.parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all()
    model.zero_grad(set_to_none=True)


def test_edges_beyond_the_cutoff_are_ignored(model):
    """Neighbour lists built with a skin may pass longer edges; they must not contribute."""
    atoms = ethanol()
    z, edges, vectors = graph(atoms)
    z_skin, edges_skin, vectors_skin = graph(atoms, cutoff=CUTOFF + 1.5)
    assert edges_skin.shape[1] > edges.shape[1]
    vectors_skin.requires_grad_(True)
    energies = model(z_skin, edges_skin, vectors_skin)
    torch.testing.assert_close(energies, model(z, edges, vectors), rtol=0, atol=1e-12)
    (gradient,) = torch.autograd.grad(energies.sum(), vectors_skin)
    beyond = vectors_skin.detach().norm(dim=-1) >= CUTOFF
    assert (gradient[beyond] == 0).all()


def test_interaction_range_is_cutoff_times_interactions(model):
    """In a chain with spacing 0.8 rc, atom 0 feels atom num_interactions but not one further."""
    n = model.num_interactions
    spacing = 0.8 * CUTOFF
    base = Atoms("C" * (n + 3), positions=[[k * spacing, 0.0, 0.0] for k in range(n + 3)])

    def energy_of_atom_0(moved: int) -> float:
        atoms = base.copy()
        atoms.positions[moved] += [0.0, 0.3, 0.1]
        return float(model(*graph(atoms))[0].detach())

    reference = float(model(*graph(base))[0].detach())
    assert abs(energy_of_atom_0(n) - reference) > 1e-6
    assert energy_of_atom_0(n + 1) == reference


def test_envelope_value_and_derivatives():
    envelope = PolynomialEnvelope(CUTOFF, 6)
    r = torch.tensor([0.0, 0.5 * CUTOFF, CUTOFF, 1.2 * CUTOFF], dtype=torch.float64,
                     requires_grad=True)
    u = envelope(r)
    (du,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), r)
    assert u[0] == 1 and 0 < u[1] < 1 and u[2] == 0 and u[3] == 0
    assert du[0] == 0 and du[1] < 0
    torch.testing.assert_close(du[2:], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(d2u[2:], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-10)


def test_bessel_basis_is_orthonormal():
    """∫₀^rc f_m f_n r² dr = δ_mn: the basis spans the radial interval without redundancy."""
    basis = BesselBasis(CUTOFF, 6).double()
    r = torch.linspace(1e-6, CUTOFF, 20001, dtype=torch.float64)
    f = basis(r) * r.unsqueeze(-1)
    gram = torch.trapezoid(f.unsqueeze(-1) * f.unsqueeze(-2), r, dim=0)
    torch.testing.assert_close(gram, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("neighbours", [1, 2], ids=["dimer", "trimer"])
def test_energy_and_gradient_vanish_smoothly_at_the_cutoff(model, neighbours):
    """The contribution of one edge of length r → rc vanishes as (rc − r)³, its slope as (rc − r)².

    The contribution is the energy minus that of the same geometry without the edge pair. Trimer:
    atoms 1 and 2 stay bonded while atom 2 leaves atom 0's cutoff sphere, so the vanishing
    contribution also flows through a second message-passing step.
    """
    z = torch.tensor([1, 2, 0][: neighbours + 1])
    last = neighbours
    pairs = [(a, b) for a in range(last + 1) for b in range(last + 1) if a != b]
    edges = torch.tensor(pairs).T
    pair = ((edges[0] == 0) & (edges[1] == last)) | ((edges[0] == last) & (edges[1] == 0))
    without = edges[:, ~pair]

    def contribution(r: float):
        position = torch.tensor([[0.0, 0.0, 0.0], [1.3, 0.9, 0.0]][:neighbours] + [[r, 0.0, 0.0]],
                                dtype=torch.float64, requires_grad=True)
        gap = (model(z, edges, position[edges[1]] - position[edges[0]]).sum()
               - model(z, without, position[without[1]] - position[without[0]]).sum())
        (gradient,) = torch.autograd.grad(gap, position)
        return float(gap.detach()), float(gradient[last, 0])

    assert contribution(CUTOFF) == pytest.approx((0.0, 0.0), abs=1e-14)
    assert contribution(CUTOFF + 0.3) == pytest.approx((0.0, 0.0), abs=1e-14)
    deltas = [3e-2, 3e-3, 3e-4]  # asymptotic, yet 3 orders of magnitude above round-off
    gaps, slopes = zip(*(map(abs, contribution(CUTOFF - d)) for d in deltas))
    assert gaps[0] > 1e-7 and slopes[0] > 1e-5  # the pair really interacts near rc
    for k in range(len(deltas) - 1):
        assert gaps[k + 1] < 2e-3 * gaps[k]  # cubic: ×1e-3 per decade
        assert slopes[k + 1] < 2e-2 * slopes[k]  # quadratic: ×1e-2 per decade


def random_clusters(count: int, rng) -> list:
    """Rattled, randomly strained Cu/Au fcc fragments labelled with ASE's EMT energies."""
    clusters = []
    template = bulk("Cu", "fcc", a=3.7, cubic=True)
    for _ in range(count):
        atoms = template.copy()
        atoms.pbc = False
        atoms.positions *= rng.uniform(0.93, 1.1)
        atoms.symbols[rng.random(len(atoms)) < 0.5] = "Au"
        atoms.rattle(0.15, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        clusters.append(atoms)
    return clusters


def test_minimal_fit_reduces_the_energy_loss():
    """A few hundred Adam steps on EMT energies of 24 small clusters cut the loss at least 100×."""
    rng = np.random.default_rng(6)
    clusters = random_clusters(24, rng)
    species = ["Cu", "Au"]
    torch.manual_seed(0)
    model = PaiNN(species, cutoff=4.5, num_features=16, num_interactions=2, num_radial=6).double()

    graphs = [graph(atoms, 4.5, species) for atoms in clusters]
    offsets = np.cumsum([0] + [len(atoms) for atoms in clusters])[:-1]
    z = torch.cat([g[0] for g in graphs])
    edges = torch.cat([g[1] + int(offset) for g, offset in zip(graphs, offsets)], dim=1)
    vectors = torch.cat([g[2] for g in graphs])
    structure = torch.repeat_interleave(torch.arange(len(clusters)),
                                        torch.tensor([len(a) for a in clusters]))
    target = torch.tensor([a.info["energy"] for a in clusters], dtype=torch.float64)
    n_atoms = torch.tensor([len(a) for a in clusters], dtype=torch.float64)

    # Per-species shift by least squares on composition; per-atom residual spread as the scale.
    composition = torch.stack([torch.bincount(g[0], minlength=2) for g in graphs]).double()
    shift = torch.linalg.lstsq(composition, target.unsqueeze(-1)).solution.squeeze(-1)
    spread = ((target - composition @ shift) / n_atoms).std()
    model.set_energy_shift_scale(shift, torch.full((2,), float(spread)))

    def loss() -> torch.Tensor:
        energies = torch.zeros(len(clusters), dtype=torch.float64)
        energies = energies.index_add(0, structure, model(z, edges, vectors))
        return (((energies - target) / n_atoms) ** 2).mean()

    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    initial = float(loss().detach())
    for _ in range(300):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
    final = float(loss().detach())
    assert final < initial / 100, (initial, final)
