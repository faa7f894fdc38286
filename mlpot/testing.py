"""Reusable physics checks for every model kind, run end to end: model file → ASE calculator.

A model kind's test module subclasses ``PhysicsChecks`` and says how to build a model::

    class TestMyKindPhysics(PhysicsChecks):
        @classmethod
        def build_model(cls):
            torch.manual_seed(0)
            return MyKind(["H", "O"], cutoff=4.0)

and pytest runs every ``test_*`` method below on a molecule (no PBC), a triclinic bulk cell with
two species, and a slab with mixed PBC, all scaled to the model's cutoff. The model is exported in
float64 and evaluated through ``MLPotCalculator``, so the checks cover the kind, the export, the
neighbour list and the calculator's force/stress sums together. Untrained (random) weights are
fine, but give the model a non-trivial energy scale: ``test_outputs_are_not_trivial`` refuses
energies and forces too small for the other checks to be able to fail.

Tolerances are absolute, for float64: they are set by round-off and finite-difference error and
must not be loosened to make a model pass.
"""

import zipfile
from typing import Callable, Dict, Optional

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from .calculator import MLPotCalculator
from .model_file import export_model, load_model, read_metadata
from .models.base import AtomicEnergyModel

#: Step (Å) and strain step of the 5-point central differences: their truncation error
#: (∝ h⁴) and round-off error (∝ 1/h) are both ≲ 1e-10 for energies of O(10 eV).
FD_STEP = 1e-3
FD_STRAIN = 1e-4
#: Free-form provenance exported with the model; it must come back unchanged.
TEST_METADATA = {"purpose": "mlpot physics checks", "nested": {"list": [1, 2.5, "x"], "flag": True},
                 "unicode": "Å eV"}

STRUCTURES = ("molecule", "bulk", "slab")
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def evaluate(calculator: MLPotCalculator, atoms: Atoms, per_atom: bool = False) -> Dict:
    """Energy, forces, per-atom energies and (for cells with a volume) stress of ``atoms``."""
    atoms = atoms.copy()
    atoms.calc = calculator
    result = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
              "energies": atoms.get_potential_energies()}
    if atoms.cell.rank == 3:
        result["stress"] = atoms.get_stress()
        if per_atom:
            result["stresses"] = atoms.get_stresses()
    return result


def five_point_derivative(energy: Callable[[float], float], step: float) -> float:
    """dE/dt at t = 0, error O(step⁴)."""
    first, second = energy(step) - energy(-step), energy(2 * step) - energy(-2 * step)
    return (8 * first - second) / (12 * step)


def finite_difference_forces(calculator: MLPotCalculator, atoms: Atoms,
                             step: float = FD_STEP) -> np.ndarray:
    """−∂E/∂r_a for every atom and direction."""

    def energy(a: int, k: int, t: float) -> float:
        displaced = atoms.copy()
        displaced.positions[a, k] += t
        return evaluate(calculator, displaced)["energy"]

    return np.array([[-five_point_derivative(lambda t: energy(a, k, t), step) for k in range(3)]
                     for a in range(len(atoms))])


def finite_difference_stress(calculator: MLPotCalculator, atoms: Atoms,
                             step: float = FD_STRAIN) -> np.ndarray:
    """(1/V) ∂E/∂ε in Voigt order, for a homogeneous symmetric strain of cell and atoms alike."""
    volume = atoms.get_volume()

    def energy(a: int, b: int, t: float) -> float:
        strain = np.eye(3)
        strain[a, b] += t
        strain[b, a] = strain[a, b]
        strained = atoms.copy()
        strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        return evaluate(calculator, strained)["energy"]

    # A shear t moves both ε_ab and ε_ba, so dE/dt = 2 V σ_ab off the diagonal.
    return np.array([five_point_derivative(lambda t: energy(a, b, t), step) / volume
                     / (1 if a == b else 2) for a, b in VOIGT_PAIRS])


def random_orthogonal(rng: np.random.Generator, proper: bool) -> np.ndarray:
    """A uniformly random rotation (``proper``) or rotation-reflection matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


def make_structure(name: str, species, cutoff: float) -> Atoms:
    """Small test structures with about 10–40 neighbours per atom within ``cutoff``.

    Lengths scale with the cutoff (nearest neighbours at ~0.4 rc), so every kind sees a similar
    number of neighbours; two species whenever the model has at least two.
    """
    a, b = species[0], species[1 % len(species)]
    unit = 0.4 * cutoff
    if name == "molecule":
        positions = [[0.0, 0.0, 0.0], [1.0, 0.1, 0.0], [-0.2, 1.05, 0.1], [0.1, -0.15, 1.1],
                     [1.1, 0.9, 0.7], [-0.9, -0.5, 0.6]]
        atoms = Atoms([a, b, a, b, a, a], positions=np.array(positions) * unit)
    elif name == "bulk":
        cell = np.array([[1.9, 0.0, 0.0], [0.45, 1.8, 0.0], [0.3, -0.35, 2.0]]) * unit
        atoms = Atoms([a, b, b, a], cell=cell, pbc=True,
                      scaled_positions=[[0.0, 0.0, 0.0], [0.52, 0.48, 0.05],
                                        [0.03, 0.55, 0.47], [0.49, 0.02, 0.51]])
    elif name == "slab":
        cell = np.array([[2.3, 0.0, 0.0], [0.9, 2.1, 0.0], [0.3, 0.2, 8.0]]) * unit
        atoms = Atoms([a, b, a, b, a, b], cell=cell, pbc=(True, True, False),
                      scaled_positions=[[0.0, 0.0, 0.1], [0.5, 0.1, 0.1], [0.2, 0.5, 0.2],
                                        [0.7, 0.6, 0.2], [0.1, 0.3, 0.3], [0.6, 0.9, 0.3]])
    else:
        raise ValueError(f"unknown test structure {name!r}; known: {STRUCTURES}")
    atoms.rattle(0.03 * unit, seed=7)
    return atoms


def assert_close(actual, expected, atol: float, what: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=what)


class PhysicsChecks:
    """Mixin of end-to-end physics tests; subclasses implement ``build_model``."""

    #: |F − F_fd| (eV/Å) and |σ − σ_fd| (eV/Å³) allowed against 5-point finite differences.
    force_tolerance = 1e-6
    stress_tolerance = 1e-6
    #: Energies (eV), forces (eV/Å) and stresses (eV/Å³) of symmetry-related structures must agree
    #: up to float64 round-off of sums over O(1000) edges.
    exact_tolerance = 1e-10
    #: Largest jump of energy (eV, less the work of the force) and forces (eV/Å) when a neighbour
    #: moves from 1e-7 Å inside the cutoff to 1e-7 Å outside: O(1e-14) and O(1e-7) if continuous.
    cutoff_energy_jump = 1e-9
    cutoff_force_jump = 1e-6
    #: |ΔE + work| (eV) over each 1e-3 Å step of a scan across the cutoff: O(1e-9) for forces with
    #: a continuous derivative, O(1e-7) for merely continuous forces (a C¹ cosine cutoff).
    scan_work_tolerance = 1e-6

    @classmethod
    def build_model(cls) -> AtomicEnergyModel:
        """An eager model of the kind under test (random weights, non-trivial energy scale)."""
        raise NotImplementedError("subclasses of PhysicsChecks must implement build_model()")

    @pytest.fixture(scope="class")
    @classmethod
    def eager_model(cls) -> AtomicEnergyModel:
        return cls.build_model().double().eval()

    @pytest.fixture(scope="class")
    @classmethod
    def model_file(cls, eager_model, tmp_path_factory):
        """The deployed float64 model file that every check runs through."""
        path = tmp_path_factory.mktemp(f"{eager_model.kind}-model") / "model.pt"
        return export_model(eager_model, path, metadata=TEST_METADATA, dtype="float64")

    @pytest.fixture(scope="class")
    @classmethod
    def calculator(cls, model_file) -> MLPotCalculator:
        return MLPotCalculator(str(model_file))

    @pytest.fixture(params=STRUCTURES)
    def atoms(self, request, eager_model) -> Atoms:
        return make_structure(request.param, eager_model.species, eager_model.cutoff)

    # -- the checks ------------------------------------------------------------------------------

    def test_outputs_are_not_trivial(self, calculator, atoms):
        """Guards the other checks: a model with ~0 forces would pass them vacuously."""
        result = evaluate(calculator, atoms)
        assert np.abs(result["forces"]).max() > 1e-2, "forces too small to test; raise the scale"
        assert np.ptp(result["energies"]) > 1e-2, "atom energies barely depend on the structure"
        if "stress" in result:
            assert np.abs(result["stress"]).max() > 1e-4, "stress too small to test"

    def test_forces_are_minus_energy_gradient(self, calculator, atoms):
        forces = evaluate(calculator, atoms)["forces"]
        assert_close(forces, finite_difference_forces(calculator, atoms), self.force_tolerance,
                     "forces differ from −∂E/∂r by finite differences")

    def test_stress_is_strain_derivative(self, calculator, atoms):
        if atoms.cell.rank < 3:
            pytest.skip("no cell volume, no stress")
        stress = evaluate(calculator, atoms)["stress"]
        assert_close(stress, finite_difference_stress(calculator, atoms), self.stress_tolerance,
                     "stress differs from (1/V) ∂E/∂ε by finite differences")

    def test_free_energy_equals_energy(self, calculator, atoms):
        atoms = atoms.copy()
        atoms.calc = calculator
        assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()

    def test_per_atom_energies_and_stresses_sum_to_totals(self, calculator, atoms):
        result = evaluate(calculator, atoms, per_atom=True)
        assert result["energies"].shape == (len(atoms),)
        assert_close(result["energies"].sum(), result["energy"], self.exact_tolerance,
                     "per-atom energies do not sum to the energy")
        if "stress" in result:
            assert result["stresses"].shape == (len(atoms), 6)
            assert_close(result["stresses"].sum(axis=0), result["stress"], self.exact_tolerance,
                         "per-atom stresses do not sum to the stress")

    @pytest.mark.parametrize("proper", [True, False], ids=["rotation", "reflection"])
    def test_rotations_and_reflections(self, calculator, atoms, proper):
        """E and atom energies invariant; forces rotate as vectors, stress as a rank-2 tensor."""
        reference = evaluate(calculator, atoms)
        rng = np.random.default_rng(11)
        for _ in range(2):
            q = random_orthogonal(rng, proper)
            moved = atoms.copy()
            moved.positions = atoms.positions @ q.T
            moved.cell = atoms.cell.array @ q.T
            result = evaluate(calculator, moved)
            self._assert_same(result, reference, forces=reference["forces"] @ q.T)
            if "stress" in reference:
                expected = q @ voigt_6_to_full_3x3_stress(reference["stress"]) @ q.T
                assert_close(result["stress"], full_3x3_to_voigt_6_stress(expected),
                             self.exact_tolerance, "stress does not rotate as a tensor")

    def test_translations(self, calculator, atoms):
        reference = evaluate(calculator, atoms)
        moved = atoms.copy()
        moved.positions += np.random.default_rng(12).normal(size=3) * 3.0
        self._assert_same(evaluate(calculator, moved), reference, stress=True)

    def test_permutations(self, calculator, atoms):
        """Relabelling atoms (same-species atoms swap places) permutes forces and atom energies."""
        reference = evaluate(calculator, atoms)
        order = np.random.default_rng(13).permutation(len(atoms))
        result = evaluate(calculator, atoms[order])
        self._assert_same(result, reference, forces=reference["forces"][order],
                          energies=reference["energies"][order], stress=True)

    def test_periodic_rewrapping(self, calculator, atoms):
        """Moving atoms by lattice vectors along periodic axes, or wrapping, changes nothing."""
        if not atoms.pbc.any():
            pytest.skip("no periodic direction")
        reference = evaluate(calculator, atoms)
        shifts = np.random.default_rng(14).integers(-2, 3, size=(len(atoms), 3)) * atoms.pbc
        moved = atoms.copy()
        moved.positions += shifts @ atoms.cell.array
        self._assert_same(evaluate(calculator, moved), reference, stress=True)
        moved.wrap()
        self._assert_same(evaluate(calculator, moved), reference, stress=True)

    def test_extensivity(self, calculator, atoms):
        """Periodic: a 2×2(×2) supercell has 2ᵏ× the energy, the same atom energies, forces and
        stress. Molecule: two copies farther apart than the interaction range have twice the energy.
        """
        reference = evaluate(calculator, atoms)
        if atoms.pbc.any():
            repeat = tuple(2 if periodic else 1 for periodic in atoms.pbc)
            copies = int(np.prod(repeat))
            bigger = atoms.repeat(repeat)
        else:
            copies = 2
            far = atoms.copy()
            far.positions += [calculator.model.metadata["interaction_range"]
                              + np.ptp(atoms.positions[:, 0]) + 1.0, 0.0, 0.0]
            bigger = atoms + far
        result = evaluate(calculator, bigger)
        assert_close(result["energy"], copies * reference["energy"], copies * self.exact_tolerance,
                     "energy is not extensive")
        assert_close(result["energies"], np.tile(reference["energies"], copies),
                     self.exact_tolerance, "atom energies change in a supercell")
        assert_close(result["forces"], np.tile(reference["forces"], (copies, 1)),
                     self.exact_tolerance, "forces change in a supercell")
        if "stress" in reference:
            assert_close(result["stress"], reference["stress"], self.exact_tolerance,
                         "stress is not intensive")

    @pytest.mark.parametrize("neighbours", [1, 2], ids=["dimer", "trimer"])
    def test_smooth_at_the_cutoff(self, calculator, eager_model, neighbours):
        """Energy and forces are continuous as atom 0's last neighbour crosses the cutoff.

        Trimer: the crossing atom stays bonded to atom 1, so the crossing also reaches atom 0
        through a second message-passing step.
        """
        cutoff = eager_model.cutoff
        species = eager_model.species
        symbols = [species[0], species[-1], species[0]][: neighbours + 1]
        fixed = [[0.0, 0.0, 0.0], [0.45 * cutoff, 0.3 * cutoff, 0.1 * cutoff]][:neighbours]

        def at(r: float) -> Dict:
            return evaluate(calculator, Atoms(symbols, positions=fixed + [[r, 0.0, 0.0]]))

        # A fine scan across rc: the pair interacts, the work of the force over every step equals
        # the energy change (trapezoid rule, exact up to O(step³)), so there is no energy step at
        # the cutoff; a dimer's energy and forces are constant once beyond the cutoff.
        step = 1e-3
        scan = [at(cutoff + k * step) for k in range(-20, 21)]
        assert abs(at(0.7 * cutoff)["energy"] - scan[-1]["energy"]) > 1e-3, "pair does not interact"
        for a, b in zip(scan, scan[1:]):
            work = 0.5 * (a["forces"][-1, 0] + b["forces"][-1, 0]) * step
            assert_close(b["energy"] - a["energy"], -work, self.scan_work_tolerance,
                         "energy change ≠ −work of the force in a scan across the cutoff")
        if neighbours == 1:
            for s in scan[20:]:
                assert_close(s["energy"], scan[-1]["energy"], self.exact_tolerance,
                             "dimer energy depends on r beyond the cutoff")
                assert_close(s["forces"], 0.0, self.exact_tolerance, "forces beyond the cutoff")

        delta = 1e-7
        below, above = at(cutoff - delta), at(cutoff + delta)
        work = 0.5 * (below["forces"][-1, 0] + above["forces"][-1, 0]) * 2 * delta
        assert_close(above["energy"] - below["energy"], -work, self.cutoff_energy_jump,
                     "energy jumps when a neighbour crosses the cutoff")
        assert_close(below["forces"], above["forces"], self.cutoff_force_jump,
                     "forces jump when a neighbour crosses the cutoff")

    def test_energy_is_analytic_at_symmetric_sites(self, calculator, eager_model):
        """Force constants exist at a site whose environment is symmetric (every atom of an ideal
        zincblende/diamond crystal): the restoring force is linear in a small displacement u.
        A cusp (E ∝ |u|, e.g. from the norm of features that vanish by symmetry) fails this."""
        species = list(eager_model.species)[:2]
        symbols = species * 4 if len(species) == 2 else species * 8
        a = 1.25 * eager_model.cutoff  # nearest neighbours at 0.54 rc, 2nd shell inside rc
        crystal = Atoms(symbols, scaled_positions=[
            p for pair in zip([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]],
                              [[.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])
            for p in pair], cell=np.eye(3) * a, pbc=True)

        def stiffness(u: float) -> float:
            displaced = crystal.copy()
            displaced.positions[0, 0] += u
            return -evaluate(calculator, displaced)["forces"][0, 0] / u

        small, large = stiffness(1e-3 * a), stiffness(4e-3 * a)
        assert abs(small) > 1e-3, "the test crystal exerts no restoring force: rescale it"
        assert abs(small - large) <= 0.05 * abs(small), (
            f"force constant {small:.4g} eV/Å² at u = {1e-3 * a:.3g} Å but {large:.4g} at "
            f"{4e-3 * a:.3g} Å: the energy is not analytic at a symmetric site")

    def test_isolated_atoms(self, calculator, eager_model):
        """No edges at all: finite energies, zero forces; far-apart atoms just add up."""
        cutoff = eager_model.cutoff
        isolated = []
        for symbol in eager_model.species:
            result = evaluate(calculator, Atoms(symbol, positions=[[0.1, 0.2, 0.3]]))
            assert np.isfinite(result["energy"])
            assert_close(result["forces"], 0.0, 0.0, "an isolated atom feels a force")
            isolated.append(result["energy"])
        far = Atoms(list(eager_model.species),
                    positions=[[1.5 * cutoff * k, 0.0, 0.0] for k in range(len(isolated))])
        assert_close(evaluate(calculator, far)["energy"], sum(isolated), self.exact_tolerance,
                     "atoms beyond each other's cutoff interact")

    def test_neighbour_skin_changes_nothing(self, model_file, eager_model, atoms):
        """A reused neighbour list (skin > 0, as in MD) gives the results of a fresh one, also
        after the atoms moved (a little: list reused; more than skin / 2: list rebuilt)."""
        fresh = MLPotCalculator(str(model_file))
        reused = MLPotCalculator(str(model_file), skin=0.3 * eager_model.cutoff)
        rng = np.random.default_rng(15)
        moved = atoms.copy()
        for amplitude in (0.0, 0.02, 0.02, 0.2, 0.02):
            moved.positions += rng.normal(size=moved.positions.shape) * amplitude
            self._assert_same(evaluate(reused, moved), evaluate(fresh, moved), stress=True)

    def test_export_round_trip_keeps_metadata(self, eager_model, model_file):
        record = read_metadata(model_file)
        assert record == load_model(model_file).metadata
        assert record["metadata"] == TEST_METADATA
        assert record["model_kind"] == eager_model.kind
        assert record["species"] == list(eager_model.species)
        assert record["cutoff"] == eager_model.cutoff
        assert record["num_interactions"] == eager_model.num_interactions
        assert record["interaction_range"] == eager_model.interaction_range
        assert record["dtype"] == "float64"
        assert isinstance(record["format_version"], int)
        assert record["hyperparameters"] == eager_model.hyperparameters()
        rebuilt = type(eager_model)(**record["hyperparameters"])
        rebuilt.load_state_dict(eager_model.state_dict())

    def test_loaded_file_equals_eager_model(self, calculator, eager_model, atoms):
        """The scripted file (through the calculator) matches the eager model with positions and
        strain differentiated by autograd on ASE's own neighbour list: an independent check of the
        export, the neighbour list and the force/stress sums."""
        result = evaluate(calculator, atoms, per_atom=True)
        expected = eager_reference(eager_model, atoms)
        assert_close(result["energies"], expected["energies"], 1e-12,
                     "the loaded file's atom energies differ from the eager model's")
        assert_close(result["forces"], expected["forces"], self.exact_tolerance,
                     "forces differ from the eager model's autograd forces")
        if "stress" in result:
            assert_close(result["stress"], expected["stress"], self.exact_tolerance,
                         "stress differs from the eager model's autograd stress")

    def test_float32_export_runs(self, eager_model, atoms, tmp_path):
        path = export_model(eager_model, tmp_path / "model32.pt", dtype="float32")
        single = evaluate(MLPotCalculator(str(path)), atoms)
        double = eager_reference(eager_model, atoms)
        scale = max(1.0, np.abs(double["energies"]).max())
        assert_close(single["energies"], double["energies"], 1e-5 * scale,
                     "float32 atom energies far from float64")
        assert_close(single["forces"], double["forces"], 1e-4 * scale,
                     "float32 forces far from float64")

    # -- helpers ---------------------------------------------------------------------------------

    def _assert_same(self, result: Dict, reference: Dict, forces: Optional[np.ndarray] = None,
                     energies: Optional[np.ndarray] = None, stress: bool = False) -> None:
        tolerance = self.exact_tolerance
        assert_close(result["energy"], reference["energy"], tolerance, "energy changed")
        assert_close(result["energies"],
                     reference["energies"] if energies is None else energies, tolerance,
                     "atom energies changed")
        assert_close(result["forces"], reference["forces"] if forces is None else forces,
                     tolerance, "forces changed")
        if stress and "stress" in reference:
            assert_close(result["stress"], reference["stress"], tolerance, "stress changed")


def eager_reference(model: AtomicEnergyModel, atoms: Atoms) -> Dict:
    """Atom energies, forces and stress of the eager model by autograd through positions and a
    homogeneous strain, on ASE's neighbour list (independent of mlpot's)."""
    i, j, shifts = neighbor_list("ijS", atoms, model.cutoff)
    index = {symbol: k for k, symbol in enumerate(model.species)}
    species = torch.tensor([index[s] for s in atoms.get_chemical_symbols()], dtype=torch.long)
    positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    deformation = torch.eye(3, dtype=torch.float64) + strain
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    i, j = torch.from_numpy(i), torch.from_numpy(j)
    shift_vectors = torch.from_numpy(shifts).to(torch.float64) @ cell
    vectors = (positions[j] - positions[i] + shift_vectors) @ deformation.T
    energies = model(species, torch.stack([i, j]), vectors)
    gradient_positions, gradient_strain = torch.autograd.grad(energies.sum(), [positions, strain])
    result = {"energies": energies.detach().numpy(), "forces": -gradient_positions.numpy()}
    if atoms.cell.rank == 3:
        symmetric = 0.5 * (gradient_strain + gradient_strain.T).numpy()
        result["stress"] = full_3x3_to_voigt_6_stress(symmetric / atoms.get_volume())
    return result


def corrupt_largest_tensor(source, target):
    """Flip bytes in the middle of the largest stored tensor (what a bad disk or copy does)."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename),
                     key=lambda i: i.file_size)
    header = member.header_offset
    name_length = int.from_bytes(data[header + 26:header + 28], "little")
    extra_length = int.from_bytes(data[header + 28:header + 30], "little")
    middle = header + 30 + name_length + extra_length + member.file_size // 2
    for k in range(middle, middle + 8):
        data[k] ^= 0xFF
    target.write_bytes(bytes(data))
    return target
