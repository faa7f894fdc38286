"""`mlpot md` and `mlpot validate` on bad input: a clear message and exit code 2 (1 for a
validation with failed parts), never a traceback; and `mlpot md` with a model file.

Every case runs `mlpot.cli.main` in process. MD runs are 8 atoms, a few steps. Threads are pinned
to 1 (conftest.py).
"""

import shutil

import numpy as np
import pytest

from mlpot import cli, md, validate
from mlpot.potentials import SHIPPED, potential_path


@pytest.fixture()
def bad_xyz(tmp_path):
    path = tmp_path / "bad.xyz"
    path.write_text("garbage\nxx\n")
    return path


def run(capsys, *argv):
    """Exit status, stdout and stderr of `mlpot ARGV`."""
    status = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


# ----------------------------------------------------------------------------- model files


def test_md_runs_a_model_file_on_the_example_of_the_shipped_potential_with_its_species(
        tmp_path, capsys):
    model = tmp_path / "painn_si.pt"
    shutil.copy(potential_path("Si"), model)
    status, out, err = run(capsys, "md", model, "--nvt-steps", 2, "--nve-steps", 2,
                           "--repeat", 1, "--no-progress", "--out", tmp_path / "md")
    assert status == 0, err
    assert f"Si8 (8 atoms) with {model}" in out
    assert "NVE energy drift" in out and "RDF first peak          2.3" in out  # Si–Si 2.37 Å
    assert (tmp_path / "md" / "rdf.png").stat().st_size > 1000


def test_md_of_a_model_without_a_shipped_example_asks_for_a_structure(tmp_path, capsys):
    import torch

    from mlpot.model_file import export_model
    from mlpot.models import PaiNN

    torch.manual_seed(0)
    model = export_model(PaiNN(["Ge"], cutoff=3.0, num_features=4, num_interactions=1,
                               num_radial=2), tmp_path / "ge.pt")
    status, _, err = run(capsys, "md", model, "--out", tmp_path / "md")
    assert status == 2
    assert "no example structure for the species Ge" in err and "--structure FILE" in err
    assert not (tmp_path / "md").exists()  # refused before any output


@pytest.mark.parametrize("command", ["md", "validate"])
def test_a_missing_model_file_is_named_as_missing(tmp_path, capsys, command):
    for missing in ("nonexistent.pt", tmp_path / "models" / "si"):
        status, _, err = run(capsys, command, missing, "--out", tmp_path / "out")
        assert status == 2
        assert f"model file {str(missing)!r} does not exist" in err


@pytest.mark.parametrize("command", ["md", "validate"])
def test_an_unknown_name_lists_the_shipped_potentials(capsys, command):
    status, _, err = run(capsys, command, "nosuch")
    assert status == 2
    assert "'nosuch' is neither a model file nor a shipped potential" in err
    assert ", ".join(SHIPPED) in err


def test_a_corrupt_model_file_is_named_as_corrupt(tmp_path, capsys):
    model = tmp_path / "model.pt"
    model.write_bytes(b"not a zip archive")
    status, _, err = run(capsys, "md", model, "--out", tmp_path / "md")
    assert status == 2 and "is not a TorchScript archive" in err


def test_md_help_lists_every_shipped_potential(capsys):
    status, out, _ = run(capsys, "md", "--help")
    assert status == 0
    assert f"a shipped potential ({', '.join(SHIPPED)}) or a model file" in " ".join(out.split())


# --------------------------------------------------------------------------- input files


def test_unreadable_structure_and_test_files_are_named(tmp_path, capsys, bad_xyz):
    status, _, err = run(capsys, "md", "Si", "--structure", bad_xyz, "--out", tmp_path / "md")
    assert status == 2
    assert f"cannot read start structure (--structure) {str(bad_xyz)!r}" in err
    status, _, err = run(capsys, "validate", "Si", "--test", bad_xyz, "--out", tmp_path / "v")
    assert status == 2 and f"cannot read test set {str(bad_xyz)!r}" in err
    status, _, err = run(capsys, "md", "Si", "--structure", tmp_path / "none.xyz")
    assert status == 2 and "does not exist" in err
    si = potential_path("Si")
    status, _, err = run(capsys, "calibrate", si, si, "--data", bad_xyz,
                         "--output", tmp_path / "c.pt")
    assert status == 2 and f"cannot read data file {str(bad_xyz)!r}" in err


@pytest.mark.parametrize("command", ["md", "validate"])
def test_out_naming_an_existing_file_is_refused(tmp_path, capsys, command):
    existing = tmp_path / "si8.xyz"
    existing.write_text("8\n")
    status, _, err = run(capsys, command, "Si", "--out", existing)
    assert status == 2 and "is an existing file, not a folder" in err
    assert existing.read_text() == "8\n"


@pytest.mark.parametrize("option, value, message", [
    ("--timestep", "-1", "argument --timestep: must be a number > 0, got '-1'"),
    ("--timestep", "0", "argument --timestep: must be a number > 0"),
    ("--temperature", "-300", "argument --temperature: must be a number ≥ 0"),
    ("--nvt-steps", "-5", "argument --nvt-steps: must be an integer ≥ 0, got '-5'"),
    ("--nve-steps", "-1", "argument --nve-steps: must be an integer ≥ 0"),
    ("--repeat", "-2", "argument --repeat: must be an integer ≥ 1, got '-2'"),
    ("--repeat", "0", "argument --repeat: must be an integer ≥ 1"),
])
def test_md_refuses_bad_numbers_by_option_name(capsys, option, value, message):
    status, _, err = run(capsys, "md", "Si", option, value)
    assert status == 2 and message in err


# -------------------------------------------------------------------------------- validate


def test_validate_refuses_a_crystal_of_other_elements_or_an_unknown_structure(tmp_path, capsys):
    status, _, err = run(capsys, "validate", "Si", "--crystal", "Ge:diamond:5.6", "--quick",
                         "--out", tmp_path / "v")
    assert status == 2
    assert "--crystal Ge:diamond: element(s) Ge not in the model's species Si" in err
    status, _, err = run(capsys, "validate", "Si", "--crystal", "Si:nosuch:5.43",
                         "--out", tmp_path / "v")
    assert status == 2 and "unknown structure 'nosuch'; use one of" in err
    assert ", ".join(validate.CUBIC_STRUCTURES) in err
    assert not (tmp_path / "v").exists()  # refused before any work


def test_validate_fails_when_a_part_failed(tmp_path, capsys, monkeypatch):
    """The report is written and the failed parts are listed, with exit code 1."""
    failed = ["E–V fit (model) failed: ValueError: no E–V minimum",
              "MD RDF (model) failed: RuntimeError: lost atoms"]
    monkeypatch.setattr(validate, "validate", lambda *args, **kwargs: {"failures": failed})
    status, _, err = run(capsys, "validate", "Si", "--quick", "--out", tmp_path / "v")
    assert status == 1
    assert f"2 part(s) failed (details in {tmp_path / 'v' / 'report.md'})" in err
    assert all(failure in err for failure in failed)


# --------------------------------------------------------------------------------- md output


def test_nve_drift_spans_the_samples_not_the_steps():
    """Per-atom energies rising 1 meV per 1 fs step: 1000 meV/atom/ps from n + 1 samples."""
    energy = 1e-3 * np.arange(5)
    assert md.energy_drift(energy, timestep=1.0) == pytest.approx(1000.0)
    assert md.energy_drift(energy, timestep=0.5) == pytest.approx(2000.0)


def test_rdf_of_a_molecule_is_labelled_unnormalised(tmp_path, capsys):
    status, out, err = run(capsys, "md", "water", "--nvt-steps", 1, "--nve-steps", 1,
                           "--timestep", 0.5, "--no-progress", "--out", tmp_path / "md")
    assert status == 0, err
    assert "(not periodic: pair density, g(r) unnormalised)" in out
    assert "RDF first peak          0.9" in out  # O–H 0.97 Å


def test_calibrate_refuses_a_coverage_outside_0_1_before_merging_files(tmp_path, capsys):
    output = tmp_path / "committee.pt"
    status, _, err = run(capsys, "calibrate", "a.pt", "b.pt", "--data", "cal.xyz",
                         "--output", output, "--coverage", "1.5")
    assert status == 2 and "argument --coverage: must be a number > 0 and < 1, got '1.5'" in err
    assert not output.exists()
