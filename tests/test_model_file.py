"""The model file refuses what it cannot honour, and the calculator refuses bad input, clearly."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

import mlpot
from mlpot.model_file import FORMAT_VERSION, METADATA_RECORD, ModelFileError
from mlpot.testing import corrupt_largest_tensor
from mlpot.models import PaiNN


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = PaiNN(["H", "O"], cutoff=3.0, num_features=8, num_interactions=1)
    return mlpot.export_model(model, tmp_path_factory.mktemp("model") / "model.pt",
                              metadata={"author": "tests"})


def rewrite_record(source, target, change):
    """Copy a model file, passing its metadata record through ``change``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename.endswith("/extra/" + METADATA_RECORD):
                record = json.loads(data)
                change(record)
                data = json.dumps(record).encode()
            new.writestr(item, data)
    return target


def test_metadata_round_trip(model_path):
    model = mlpot.load(model_path)
    assert model.metadata["species"] == ["H", "O"]
    assert model.metadata["cutoff"] == 3.0
    assert model.metadata["interaction_range"] == 3.0
    assert model.metadata["format_version"] == FORMAT_VERSION
    assert model.metadata["metadata"] == {"author": "tests"}
    assert model.metadata["torch_version"] == torch.__version__


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        mlpot.load(tmp_path / "nope.pt")


def test_shipped_name_as_a_path_points_to_load_potential(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFileError, match=r"mlpot.load_potential\('Si'\)"):
        mlpot.MLPotCalculator("Si")


def test_text_file_is_not_a_model(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("pair_style sw\n")
    with pytest.raises(ModelFileError, match="not a TorchScript archive"):
        mlpot.load(path)


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_file(model_path, tmp_path, fraction):
    data = model_path.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: int(fraction * len(data))])
    with pytest.raises(ModelFileError, match="corrupted|not a TorchScript archive|truncated"):
        mlpot.load(path)


def test_corrupted_weights(model_path, tmp_path):
    """Flipped bytes inside the archive are caught by the zip checksums, never run."""
    path = corrupt_largest_tensor(model_path, tmp_path / "corrupted.pt")
    with pytest.raises(ModelFileError, match="corrupted|could not be loaded"):
        mlpot.load(path)


def test_plain_torchscript_is_not_an_mlpot_model(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ModelFileError, match="not an mlpot model"):
        mlpot.load(path)


def test_newer_format_is_refused(model_path, tmp_path):
    path = rewrite_record(model_path, tmp_path / "future.pt",
                          lambda r: r.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="upgrade mlpot"):
        mlpot.load(path)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(units={"energy": "kcal/mol", "length": "Å"}), "units"),
    (lambda r: r.update(interface="graph_v9"), "interface"),
    (lambda r: r.update(artifact="aotinductor"), "artifact"),
    (lambda r: r.update(dtype="float16"), "dtype"),
    (lambda r: r.update(format="something-else"), "not an mlpot model"),
])
def test_unusable_records_are_refused(model_path, tmp_path, change, message):
    path = rewrite_record(model_path, tmp_path / "changed.pt", change)
    with pytest.raises(ModelFileError, match=message):
        mlpot.load(path)


def test_info_prints_the_metadata(model_path):
    result = subprocess.run([sys.executable, "-m", "mlpot.cli", "info", str(model_path)],
                            capture_output=True, text=True, check=True)
    assert "H O" in result.stdout and "3 Å" in result.stdout and "author" in result.stdout
    result = subprocess.run([sys.executable, "-m", "mlpot.cli", "info", "missing.pt"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_export_command_round_trip(tmp_path):
    from mlpot.checkpoint import save_checkpoint

    model = PaiNN(["Si"], cutoff=3.0, num_features=8, num_interactions=1)
    save_checkpoint(model, tmp_path / "ckpt.pt")
    subprocess.run([sys.executable, "-m", "mlpot.cli", "export", str(tmp_path / "ckpt.pt"),
                    str(tmp_path / "out.pt"), "--metadata", "data=none"], check=True,
                   capture_output=True)
    assert mlpot.read_metadata(tmp_path / "out.pt")["metadata"] == {"data": "none"}


# --- the ASE calculator's refusals ------------------------------------------------------------

def water():
    atoms = molecule("H2O")
    atoms.center(vacuum=3.0)
    return atoms


def test_unknown_element(model_path):
    atoms = Atoms("CH4", positions=molecule("CH4").positions)
    atoms.calc = mlpot.MLPotCalculator(model_path)
    with pytest.raises(ValueError, match=r"C not in this model's species \['H', 'O'\]"):
        atoms.get_potential_energy()


def test_empty_atoms(model_path):
    atoms = Atoms()
    atoms.calc = mlpot.MLPotCalculator(model_path)
    with pytest.raises(ValueError, match="empty"):
        atoms.get_potential_energy()


def test_nan_positions(model_path):
    atoms = water()
    atoms.positions[1, 0] = np.nan
    atoms.calc = mlpot.MLPotCalculator(model_path)
    with pytest.raises(ValueError, match="NaN"):
        atoms.get_forces()


def test_overlapping_atoms(model_path):
    atoms = water()
    atoms.positions[2] = atoms.positions[1] + [0.01, 0, 0]
    atoms.calc = mlpot.MLPotCalculator(model_path)
    with pytest.raises(ValueError, match="overlapping"):
        atoms.get_potential_energy()


def test_degenerate_periodic_cell(model_path):
    atoms = water()
    atoms.cell[2] = atoms.cell[0]
    atoms.pbc = True
    atoms.calc = mlpot.MLPotCalculator(model_path)
    with pytest.raises(ValueError, match="cell"):
        atoms.get_potential_energy()


def test_stress_of_a_molecule_without_cell(model_path):
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = molecule("H2O")
    atoms.calc = mlpot.MLPotCalculator(model_path)
    with pytest.raises(PropertyNotImplementedError, match="non-zero volume"):
        atoms.get_stress()


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cuda"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
    ({"device": "gpu"}, "device"),
    ({"dtype": "float16"}, "dtype"),
    ({"skin": -1.0}, "skin"),
])
def test_bad_calculator_options(model_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mlpot.MLPotCalculator(model_path, **kwargs)


def test_float32_request_runs_in_float32(model_path):
    atoms = water()
    calc64 = mlpot.MLPotCalculator(model_path)
    calc32 = mlpot.MLPotCalculator(model_path, dtype="float32")
    assert calc32.model.dtype == torch.float32
    atoms.calc = calc64
    e64 = atoms.get_potential_energy()
    atoms.calc = calc32
    assert abs(atoms.get_potential_energy() - e64) < 1e-4 * max(1.0, abs(e64))


def test_skin_reuse_equals_rebuild(model_path):
    """The neighbour-list reuse (skin > 0) is an optimisation: it must equal the rebuild path."""
    atoms = bulk("H", "sc", a=1.6, cubic=True) * (3, 3, 3)
    atoms.numbers[::2] = 8
    rng = np.random.default_rng(0)
    atoms.rattle(0.05, rng=rng)
    reference, reused = mlpot.MLPotCalculator(model_path), mlpot.MLPotCalculator(model_path, skin=0.6)
    for _ in range(6):
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        expected = reference.get_forces(atoms)
        np.testing.assert_allclose(reused.get_forces(atoms), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(reused.get_stress(atoms), reference.get_stress(atoms),
                                   rtol=0, atol=1e-12)
    assert reused._pairs is not None
