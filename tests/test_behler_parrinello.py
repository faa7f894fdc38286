"""Model-level tests of the Behler–Parrinello kind: exact autograd through the kernel, force
training, normalisation, export, the descriptor interface with ghost atoms, and a minimal fit.

The end-to-end physics checks through the model file and the ASE calculator live in
tests/test_physics_behler_parrinello.py (mlpot.testing.PhysicsChecks).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

from mlpot import edge_sums, export_model, load_model, read_metadata
from mlpot.checkpoint import build_model
from mlpot.models import MODEL_KINDS
from mlpot.models import behler_parrinello as bp
from mlpot.models.behler_parrinello import BehlerParrinello
from mlpot.symmetry_functions import SymmetryFunctionSet

torch.set_num_threads(1)

SPECIES = ["Cu", "Au"]
CUTOFF = 4.5
SYMMETRY_FUNCTIONS = {
    "cutoff": CUTOFF,
    "radial": [[0.3, 0.0], [1.0, 2.5], [1.0, 3.2], [2.0, 4.0]],
    "angular": [["G4", 0.05, 1.0, 1.0], ["G4", 0.05, 1.0, -1.0], ["G5", 0.1, 2.0, 1.0]],
}


def make_model(seed=0, dtype=torch.float64, **kwargs) -> BehlerParrinello:
    torch.manual_seed(seed)
    model = BehlerParrinello(SPECIES, SYMMETRY_FUNCTIONS, hidden_layers=[12, 12], **kwargs)
    model.set_energy_shift_scale(torch.tensor([-3.0, -4.0]), torch.tensor([2.0, 3.0]))
    return model.to(dtype)


def alloy(seed=0, rattle=0.1) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    atoms.symbols[[1, 6]] = "Au"
    atoms.rattle(rattle, seed=seed)
    return atoms


def graph(atoms, cutoff=CUTOFF):
    i, j, d = neighbor_list("ijD", atoms, cutoff)
    z = torch.tensor([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
    return z, torch.from_numpy(np.stack([i, j])), torch.from_numpy(d)


def test_hyperparameters_rebuild_the_model():
    model = make_model()
    hyperparameters = model.hyperparameters()
    assert json.loads(json.dumps(hyperparameters)) == hyperparameters
    assert MODEL_KINDS["behler_parrinello"] is BehlerParrinello
    rebuilt = build_model("behler_parrinello", hyperparameters)
    rebuilt.load_state_dict(model.state_dict())
    z, edge_index, vectors = graph(alloy())
    torch.testing.assert_close(rebuilt.double()(z, edge_index, vectors),
                               model(z, edge_index, vectors), rtol=0, atol=0)
    assert model.cutoff == CUTOFF and model.interaction_range == CUTOFF
    assert model.interface == "descriptor" and model.num_interactions == 1


def test_edge_gradient_is_exact():
    """Autograd through the kernel (analytic ∂G/∂r) against finite differences."""
    model = make_model()
    z, edge_index, vectors = graph(alloy())
    vectors = vectors[:60].clone().requires_grad_(True)
    edge_index = edge_index[:, :60]
    assert torch.autograd.gradcheck(lambda v: model(z, edge_index, v), (vectors,), eps=1e-6,
                                    atol=1e-7)


def test_force_loss_is_differentiable_in_the_weights():
    """Force training: the edge gradient's derivative w.r.t. a weight matrix (double backward
    through the kernel's chain rule) against finite differences."""
    model = make_model()
    z, edge_index, vectors = graph(alloy())
    name = "network.networks.1.0.weight"
    weight = dict(model.named_parameters())[name].detach().clone()

    def edge_gradient(w):
        v = vectors.clone().requires_grad_(True)
        energy = torch.func.functional_call(model, {name: w}, (z, edge_index, v)).sum()
        return torch.autograd.grad(energy, v, create_graph=True)[0][:40]

    assert torch.autograd.gradcheck(edge_gradient, (weight.requires_grad_(True),), eps=1e-6,
                                    atol=1e-6)


def test_fit_normalisation():
    model = make_model()
    z, edge_index, vectors = graph(alloy())
    G = model.descriptors(z, edge_index, vectors)
    model.fit_normalisation(G, z)
    for s in range(2):
        x = (G[z == s] - model.network.feature_mean[s]) / model.network.feature_std[s]
        varying = G[z == s].std(0, unbiased=False) > bp.MIN_FEATURE_STD
        torch.testing.assert_close(x.mean(0), torch.zeros_like(x[0]), rtol=0, atol=1e-10)
        torch.testing.assert_close(x.std(0, unbiased=False)[varying],
                                   torch.ones_like(x[0])[varying], rtol=0, atol=1e-10)
    model.fit_normalisation(G)  # one statistics for all species
    torch.testing.assert_close(model.network.feature_mean[0], model.network.feature_mean[1])
    with pytest.raises(ValueError, match="descriptors must have shape"):
        model.fit_normalisation(G[:, :3])


def test_bad_arguments():
    with pytest.raises(ValueError, match="same species in the same order"):
        BehlerParrinello(["Cu", "Au"], {**SYMMETRY_FUNCTIONS, "species": ["Au", "Cu"]})
    with pytest.raises(ValueError, match="unknown activation"):
        BehlerParrinello(SPECIES, SYMMETRY_FUNCTIONS, activation="relu6")
    with pytest.raises(ValueError, match="eta must be ≥ 0"):
        BehlerParrinello(SPECIES, {**SYMMETRY_FUNCTIONS, "radial": [[-1.0, 0.0]]})
    with pytest.raises(ValueError, match="one value per species"):
        make_model().set_energy_shift_scale(torch.zeros(3), torch.ones(3))


def test_export_records_the_symmetry_functions(tmp_path):
    model = make_model()
    path = export_model(model, tmp_path / "bp.pt")
    record = read_metadata(path)
    assert record["interface"] == "descriptor"
    assert record["model_kind"] == "behler_parrinello"
    assert SymmetryFunctionSet.from_dict(record["symmetry_functions"]) == model.symmetry_functions
    deployed = load_model(path)
    assert isinstance(deployed, bp.DescriptorDeployedModel)
    # The scripted module: networks only, (descriptors[N, F], species[N]) -> atom energies[N].
    z, edge_index, vectors = graph(alloy())
    G = model.descriptors(z, edge_index, vectors)
    torch.testing.assert_close(deployed.module(G, z), model(z, edge_index, vectors), rtol=0,
                               atol=1e-12)


def test_model_file_loads_in_a_fresh_process(tmp_path):
    path = export_model(make_model(), tmp_path / "bp.pt")
    code = f"import mlpot; print(type(mlpot.load_model({str(path)!r})).__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]
    assert result.stdout.strip() == "DescriptorDeployedModel"


def test_local_atoms_with_ghosts_match_periodic(tmp_path):
    """LAMMPS-style input: local atoms plus explicit ghost images, edges also from ghosts (they
    must be ignored); energies and folded forces equal the periodic ASE result."""
    model = make_model()
    deployed = load_model(export_model(model, tmp_path / "bp.pt"))
    atoms = alloy(seed=3)
    n = len(atoms)
    z, edge_index, vectors = graph(atoms)
    periodic = deployed(z, edge_index, vectors, n)

    i, j, shifts = neighbor_list("ijS", atoms, CUTOFF)
    owners, positions, index = list(range(n)), list(atoms.positions), {}
    for a, s in zip(j, map(tuple, shifts)):
        if s != (0, 0, 0) and (a, s) not in index:
            index[(a, s)] = len(owners)
            owners.append(a)
            positions.append(atoms.positions[a] + np.array(s) @ atoms.cell.array)
    positions = np.array(positions)
    targets = [a if s == (0, 0, 0) else index[(a, s)] for a, s in zip(j, map(tuple, shifts))]
    reverse = [k for k, t in enumerate(targets) if t >= n][:50]  # some ghost-centred edges
    centres = list(i) + [targets[k] for k in reverse]
    neighbours = targets + [i[k] for k in reverse]
    edge_index_ghosts = torch.tensor([centres, neighbours])
    vectors_ghosts = torch.from_numpy(positions[neighbours] - positions[centres])
    z_ghosts = z[torch.tensor(owners)]
    local = deployed(z_ghosts, edge_index_ghosts, vectors_ghosts, n)

    torch.testing.assert_close(local["energy"], periodic["energy"], rtol=0, atol=1e-10)
    torch.testing.assert_close(local["atom_energies"], periodic["atom_energies"], rtol=0,
                               atol=1e-10)
    g = local["edge_gradient"].numpy()
    assert np.abs(g[len(i):]).max() == 0.0  # ghost-centred edges carry no gradient
    forces = edge_sums.forces(np.array(centres), np.array(neighbours), g, len(owners))
    folded = np.zeros((n, 3))
    np.add.at(folded, owners, forces)
    expected = edge_sums.forces(i, j, periodic["edge_gradient"].numpy(), n)
    np.testing.assert_allclose(folded, expected, rtol=0, atol=1e-10)


def test_minimal_fit_reduces_the_loss():
    """A few Adam steps on EMT energies and forces of rattled Cu–Au cells."""
    torch.manual_seed(1)
    data = []
    for seed in range(6):
        atoms = alloy(seed=seed, rattle=0.15)
        atoms.calc = EMT()
        z, edge_index, vectors = graph(atoms)
        data.append((z, edge_index, vectors, torch.tensor(atoms.get_potential_energy()),
                     torch.from_numpy(atoms.get_forces()), len(atoms)))
    model = BehlerParrinello(SPECIES, SYMMETRY_FUNCTIONS, hidden_layers=[16]).double()
    model.fit_normalisation(torch.cat([model.descriptors(z, e, v) for z, e, v, *_ in data]),
                            torch.cat([d[0] for d in data]))
    mean_energy = float(np.mean([d[3] / d[5] for d in data]))
    model.set_energy_shift_scale(torch.full((2,), mean_energy), torch.full((2,), 0.1))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)

    def loss_and_step(step: bool) -> float:
        optimizer.zero_grad()
        total = 0.0
        for z, edge_index, vectors, energy, forces, n in data:
            v = vectors.clone().requires_grad_(True)
            e = model(z, edge_index, v).sum()
            g = torch.autograd.grad(e, v, create_graph=True)[0]
            predicted = torch.zeros(n, 3, dtype=g.dtype).index_add(0, edge_index[0], g)
            predicted = predicted.index_add(0, edge_index[1], -g)
            loss = ((e - energy) / n) ** 2 + ((predicted - forces) ** 2).mean()
            total = total + loss
        if step:
            total.backward()
            optimizer.step()
        return float(total.detach())

    initial = loss_and_step(False)
    for _ in range(40):
        loss_and_step(True)
    assert loss_and_step(False) < 0.5 * initial
