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
    np.testing.assert_allclose(forces, finite_difference_forces(calculator, atoms), atol=1e-6)


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
