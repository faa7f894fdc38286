"""Shipped potentials: they load, obey the physics checks, and keep their accuracy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlpot
from mlpot.calculator import MLPotCalculator
from mlpot.potentials import available, example_structure, potential_path
from mlpot.potentials.finalize import slice_errors
from mlpot.testing import finite_difference_forces

POTENTIALS = sorted(available())


def test_the_default_potential_is_shipped():
    assert "Si" in POTENTIALS, "the README's main job needs potentials/si/model.pt"


@pytest.mark.parametrize("name", POTENTIALS)
def test_loads_with_its_metadata(name):
    model = mlpot.load_potential(name)
    record = model.metadata
    assert record["metadata"].get("training"), "shipped models carry their training provenance"
    assert set(example_structure(name).get_chemical_symbols()) <= set(record["species"])


@pytest.mark.parametrize("name", POTENTIALS)
def test_forces_are_energy_gradients(name):
    atoms = example_structure(name, repeat=1)
    atoms.rattle(0.05, seed=1)
    calculator = MLPotCalculator(str(potential_path(name)))
    atoms.calc = calculator
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-2
    np.testing.assert_allclose(forces, finite_difference_forces(calculator, atoms, step=2.5e-4),
                               atol=1e-6)


@pytest.mark.parametrize("name", POTENTIALS)
def test_rigid_motions_rotate_the_forces_and_keep_the_energy(name):
    """A rotated and shifted copy (its cell too) has the same energy and rotated forces; the
    forces sum to zero (no net force on a crystal or an isolated molecule)."""
    from scipy.spatial.transform import Rotation

    atoms = example_structure(name, repeat=1)
    atoms.rattle(0.05, seed=2)
    rotation = Rotation.from_rotvec([0.3, -0.7, 1.1]).as_matrix()
    turned = atoms.copy()
    turned.positions = atoms.positions @ rotation.T + [0.4, -1.3, 2.2]
    turned.set_cell(atoms.cell.array @ rotation.T)
    calculator = MLPotCalculator(str(potential_path(name)))
    atoms.calc = calculator
    forces, energy = atoms.get_forces(), atoms.get_potential_energy()
    turned.calc = calculator
    assert turned.get_potential_energy() == pytest.approx(energy, abs=1e-8)
    np.testing.assert_allclose(turned.get_forces(), forces @ rotation.T, atol=1e-8)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-8)


@pytest.mark.skipif("water" not in POTENTIALS, reason="potentials/water/model.pt is missing")
def test_water_monomers_resist_bending_beyond_the_data():
    """Closing one monomer's H–O–H angle from 100° to 60° (as far as the data reach) costs
    energy at every step. Trained on MD frames alone (93–123°), the model had no wall there and
    collapsed a monomer to 20° within picoseconds of NVE."""
    atoms = example_structure("water")  # monomers as O, H, H
    calculator = MLPotCalculator(str(potential_path("water")))
    energies = []
    for angle in range(100, 55, -10):
        bent = atoms.copy()
        bent.set_angle(1, 0, 2, angle, indices=[2])
        bent.calc = calculator
        energies.append(bent.get_potential_energy())
    assert np.all(np.diff(energies) > 0.0), np.round(energies, 3)


@pytest.mark.parametrize("name", POTENTIALS)
def test_accuracy_on_the_regression_slice(name):
    """The same code that wrote the recorded figure (potentials/finalize.py) recomputes it."""
    folder = potential_path(name).parent
    recorded = json.loads((folder / "regression.json").read_text())
    errors = slice_errors(folder / "model.pt", folder / "data" / "test.extxyz",
                          recorded["structures"])
    assert errors["energy_mae"] <= recorded["energy_mae"] * (1 + 1e-6) + 1e-9
    assert errors["forces_mae"] <= recorded["forces_mae"] * (1 + 1e-6) + 1e-9


def test_main_job_runs(tmp_path):
    """README's first command (`mlpot md`), shortened: it runs and reports what it promises."""
    result = subprocess.run(
        [sys.executable, "-m", "mlpot.cli", "md", "--repeat", "2", "--nvt-steps", "5",
         "--nve-steps", "10", "--no-progress", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "NVE energy drift" in result.stdout and "RDF first peak" in result.stdout
    assert (tmp_path / "rdf.png").stat().st_size > 1000


@pytest.mark.parametrize("deck", ["in.nvt", "in.npt"])
def test_lammps_examples_run_as_shipped(deck):
    """examples/lammps decks run as is (default model: the shipped Si potential), shortened."""
    folder = Path(__file__).parent.parent / "examples" / "lammps"
    lmp = str(Path(sys.executable).parent / "lmp")
    result = subprocess.run([lmp, "-in", deck, "-var", "steps", "20", "-var", "cells", "2",
                             "-log", "none"], cwd=folder, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Loop time" in result.stdout and "ERROR" not in result.stdout
