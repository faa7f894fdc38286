"""Committee (ensemble) uncertainty: the one-file and several-files committees, the deviations in
the ASE calculator, committee training, conformal calibration and the file contract.

Models are tiny; the trained committee (3 PaiNN members, a few dozen optimizer steps each) learns
EMT copper made here.
"""

import argparse
import copy
import json
import math
import zipfile

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import mlpot
from mlpot import calibration, cli, testing
from mlpot.calculator import DeviationHarvester, MLPotCalculator
from mlpot.model_file import METADATA_RECORD, ModelFileError, read_metadata, update_metadata
from mlpot.models import BehlerParrinello, Committee, PaiNN
from mlpot.models.committee import committee_from_files, load_committee
from mlpot.testing import PhysicsChecks, make_structure

torch.set_num_threads(1)

SPECIES = ["H", "O"]
SYMMETRY_FUNCTIONS = {
    "cutoff": 3.5, "cutoff_function": "polynomial",
    "radial": [[0.5, 0.0], [1.0, 1.0], [2.0, 2.8]],
    "angular": [["G4", 0.1, 1.0, 1.0], ["G5", 0.3, 4.0, -1.0]],
}


def painn(seed, species=SPECIES, cutoff=3.5, **kwargs):
    torch.manual_seed(seed)
    options = {"num_features": 8, "num_interactions": 2, "num_radial": 6, **kwargs}
    model = PaiNN(list(species), cutoff=cutoff, **options)
    model.set_energy_shift_scale(torch.tensor([-1.5, -4.0][:len(species)]),
                                 torch.tensor([4.0, 6.0][:len(species)]))
    return model.double()


def behler_parrinello(seed, symmetry_functions=SYMMETRY_FUNCTIONS):
    torch.manual_seed(seed)
    model = BehlerParrinello(SPECIES, symmetry_functions, hidden_layers=[8]).double()
    model.set_energy_shift_scale(torch.tensor([-1.5, -4.0]), torch.tensor([4.0, 6.0]))
    return model


def evaluate(calculator, atoms):
    """mlpot.testing.evaluate plus the calculator's uncertainty results."""
    result = testing.evaluate(calculator, atoms)
    result.update(calculator.results)
    return result


def deviation(member_forces):
    """DeePMD-style per-atom force deviation, straight from its definition."""
    member_forces = np.asarray(member_forces)
    mean = member_forces.mean(axis=0)
    return np.sqrt(np.mean(np.sum((member_forces - mean) ** 2, axis=2), axis=0))


# ------------------------------------------------------------------ committee of untrained models


@pytest.fixture(scope="module")
def member_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("members")
    members = [painn(seed) for seed in range(3)]
    paths = [mlpot.export_model(m, folder / f"member{k}.pt") for k, m in enumerate(members)]
    committee = mlpot.export_model(Committee(members), folder / "committee.pt",
                                   metadata={"purpose": "tests"})
    return members, paths, committee


@pytest.mark.parametrize("structure", ["bulk", "molecule"])
def test_mean_and_deviation_equal_the_members_one_by_one(member_files, structure):
    members, paths, committee_file = member_files
    atoms = make_structure(structure, SPECIES, 3.5)
    singles = [evaluate(MLPotCalculator(str(p)), atoms) for p in paths]
    member_forces = np.stack([s["forces"] for s in singles])
    one_file = MLPotCalculator(str(committee_file))
    several = MLPotCalculator([str(p) for p in paths])
    for calculator in (one_file, several):
        result = evaluate(calculator, atoms)
        np.testing.assert_allclose(result["energy"], np.mean([s["energy"] for s in singles]),
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(result["energies"],
                                   np.mean([s["energies"] for s in singles], axis=0),
                                   rtol=0, atol=1e-12)
        np.testing.assert_allclose(result["forces"], member_forces.mean(axis=0), rtol=0,
                                   atol=1e-12)
        if "stress" in result:
            np.testing.assert_allclose(result["stress"],
                                       np.mean([s["stress"] for s in singles], axis=0),
                                       rtol=0, atol=1e-12)
        np.testing.assert_allclose(result["member_forces"], member_forces, rtol=0, atol=1e-12)
        np.testing.assert_allclose(result["forces_std"], deviation(member_forces), rtol=0,
                                   atol=1e-12)
        assert result["max_force_deviation"] == pytest.approx(deviation(member_forces).max(),
                                                              abs=1e-12)
        assert result["min_force_deviation"] == pytest.approx(deviation(member_forces).min(),
                                                              abs=1e-12)
        assert result["avg_force_deviation"] == pytest.approx(deviation(member_forces).mean(),
                                                              abs=1e-12)
        energies = np.array([s["energy"] for s in singles])
        assert result["energy_std"] == pytest.approx(energies.std(), abs=1e-12)
        np.testing.assert_allclose(result["energies_std"],
                                   np.std([s["energies"] for s in singles], axis=0), atol=1e-12)
        assert result["max_force_deviation"] > 1e-3 and result["energy_std"] > 1e-3
        assert result["uncertainty_calibrated"] is False and result["uncertainty_scale"] == 1.0


def test_identical_members_have_zero_deviation(tmp_path):
    member = painn(0)
    path = mlpot.export_model(Committee([member, copy.deepcopy(member)]), tmp_path / "same.pt")
    result = evaluate(MLPotCalculator(str(path)), make_structure("bulk", SPECIES, 3.5))
    assert result["max_force_deviation"] == 0.0
    assert result["energy_std"] == 0.0
    assert np.all(result["energies_std"] == 0.0)
    single = evaluate(MLPotCalculator(str(mlpot.export_model(member, tmp_path / "one.pt"))),
                      make_structure("bulk", SPECIES, 3.5))
    np.testing.assert_allclose(result["forces"], single["forces"], rtol=0, atol=1e-13)


def test_descriptor_committee_shares_descriptors_and_equals_members(tmp_path):
    members = [behler_parrinello(seed) for seed in range(3)]
    path = mlpot.export_model(Committee(members), tmp_path / "bp.pt")
    record = read_metadata(path)
    assert record["interface"] == "descriptor" and record["committee"]["members"] == 3
    assert record["symmetry_functions"] == members[0].deployment_metadata()["symmetry_functions"]
    scripted = torch.jit.load(str(path))
    assert hasattr(scripted, "member_atom_energies")
    atoms = make_structure("bulk", SPECIES, 3.5)
    singles = [evaluate(MLPotCalculator(str(mlpot.export_model(m, tmp_path / f"m{k}.pt"))), atoms)
               for k, m in enumerate(members)]
    member_forces = np.stack([s["forces"] for s in singles])
    for calculator in (MLPotCalculator(str(path)),
                       MLPotCalculator([str(tmp_path / f"m{k}.pt") for k in range(3)])):
        result = evaluate(calculator, atoms)
        assert result["energy"] == pytest.approx(np.mean([s["energy"] for s in singles]),
                                                 abs=1e-12)
        np.testing.assert_allclose(result["forces"], member_forces.mean(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(result["forces_std"], deviation(member_forces), atol=1e-12)


def test_merging_member_files_gives_the_same_committee(member_files, tmp_path):
    members, paths, committee_file = member_files
    merged = mlpot.export_model(committee_from_files(paths), tmp_path / "merged.pt")
    atoms = make_structure("slab", SPECIES, 3.5)
    a, b = (evaluate(MLPotCalculator(str(p)), atoms) for p in (merged, committee_file))
    np.testing.assert_allclose(a["forces"], b["forces"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a["forces_std"], b["forces_std"], rtol=0, atol=1e-12)


def test_unsuitable_members_are_refused(member_files, tmp_path):
    _, paths, committee_file = member_files
    with pytest.raises(ValueError, match="at least 2 members"):
        Committee([painn(0)])
    with pytest.raises(ValueError, match="same species"):
        Committee([painn(0), painn(1, species=["O", "H"])])
    with pytest.raises(ValueError, match="same cutoff"):
        Committee([painn(0), painn(1, cutoff=3.0)])
    with pytest.raises(ValueError, match="one model kind"):
        Committee([painn(0), behler_parrinello(1)])
    other = {**SYMMETRY_FUNCTIONS, "radial": [[0.5, 0.0]]}
    with pytest.raises(ValueError, match="symmetry functions"):
        Committee([behler_parrinello(0), behler_parrinello(1, other)])
    with pytest.raises(ValueError, match="nested"):
        Committee([Committee([painn(0), painn(1)]), painn(2)])
    with pytest.raises(ModelFileError, match="not a committee"):
        load_committee(paths[0])
    with pytest.raises(ValueError, match="nested"):
        load_committee([committee_file, paths[0]])
    stranger = mlpot.export_model(painn(5, species=["O", "H"]), tmp_path / "stranger.pt")
    with pytest.raises(ValueError, match="same species"):
        MLPotCalculator([str(paths[0]), str(stranger)])
    # members of other kinds or hyperparameters are fine when species and cutoff agree
    deeper = mlpot.export_model(painn(6, num_interactions=3), tmp_path / "deeper.pt")
    assert load_committee([paths[0], deeper]).metadata["interaction_range"] == 3 * 3.5


def test_file_round_trip_keeps_the_committee_record(member_files, tmp_path):
    members, _, path = member_files
    record = read_metadata(path)
    assert record["model_kind"] == "committee"
    assert "uncertainty" in record["outputs"]
    assert record["committee"] == {"members": 3, "member_kind": "painn",
                                   "member_outputs": ["member_energies", "member_atom_energies",
                                                      "member_edge_gradients"]}
    assert record["interaction_range"] == members[0].interaction_range
    rebuilt = Committee(**record["hyperparameters"])
    rebuilt.load_state_dict(Committee(members).state_dict())
    # the scripted module's outputs, as the LAMMPS plugin will read them
    atoms = make_structure("bulk", SPECIES, 3.5)
    i, j, vectors = mlpot.neighbour_list("ijD", atoms, 3.5)
    out = torch.jit.load(str(path))(torch.zeros(len(atoms), 3, dtype=torch.float64),
                                    torch.tensor([SPECIES.index(s) for s in
                                                  atoms.get_chemical_symbols()]),
                                    torch.from_numpy(np.stack([i, j])), torch.from_numpy(vectors),
                                    len(atoms))
    E = len(i)
    assert out["member_energies"].shape == (3,)
    assert out["member_atom_energies"].shape == (3, len(atoms))
    assert out["member_edge_gradients"].shape == (3, E, 3)
    torch.testing.assert_close(out["edge_gradient"], out["member_edge_gradients"].mean(0))

    # a calibration written into the record keeps the archive valid and every other entry
    calibrated = update_metadata(path, tmp_path / "calibrated.pt", {"committee": {
        **record["committee"], "calibration": {"scale": 2.5, "coverage": 0.9, "n": 10,
                                               "quantity": calibration.QUANTITY}}})
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(calibrated) as new:
        assert old.namelist() == new.namelist()
        assert new.testzip() is None
        for name in old.namelist():
            if not name.endswith(METADATA_RECORD):
                assert old.read(name) == new.read(name)
    new_record = read_metadata(calibrated)
    assert new_record["committee"]["calibration"]["scale"] == 2.5
    assert {k: v for k, v in new_record.items() if k != "committee"} == \
        {k: v for k, v in record.items() if k != "committee"}
    raw = evaluate(MLPotCalculator(str(path)), atoms)
    scaled = evaluate(MLPotCalculator(str(calibrated)), atoms)
    assert scaled["uncertainty_calibrated"] is True and scaled["uncertainty_scale"] == 2.5
    np.testing.assert_allclose(scaled["forces_std"], 2.5 * raw["forces_std"], rtol=1e-14)
    assert scaled["energy_std"] == raw["energy_std"]  # the scale is for force deviations only
    unscaled = evaluate(MLPotCalculator(str(calibrated), calibrated=False), atoms)
    np.testing.assert_array_equal(unscaled["forces_std"], raw["forces_std"])
    with pytest.raises(ModelFileError, match="calibration"):
        update_metadata(path, tmp_path / "bad.pt", {"committee": {
            **record["committee"], "calibration": {"scale": -1.0}}})


# ------------------------------------------------------------- physics checks for the kind


class TestCommitteePhysics(PhysicsChecks):
    @classmethod
    def build_model(cls):
        return Committee([painn(0), painn(1, num_interactions=1)])


class TestDescriptorCommitteePhysics(PhysicsChecks):
    @classmethod
    def build_model(cls):
        from test_physics_behler_parrinello import TestBehlerParrinelloPhysics

        members = [TestBehlerParrinelloPhysics.build_model() for _ in range(2)]
        torch.manual_seed(3)
        with torch.no_grad():
            for parameter in members[1].parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
        return Committee(members)


# ------------------------------------------------------------- training and calibration


def copper(n, seed, scale=1.0, rattle=0.06):
    """Rattled, slightly strained fcc Cu cells (4 or 8 atoms) with EMT labels."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61 * scale, cubic=True)
        if k % 3 == 0:
            atoms = atoms * (2, 1, 1)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3))),
                       scale_atoms=True)
        atoms.rattle(rattle, seed=seed * 1000 + k)
        atoms.calc = EMT()
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), \
            atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        images.append(atoms)
    return images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import yaml

    folder = tmp_path_factory.mktemp("committee")
    ase.io.write(folder / "train.extxyz", copper(24, seed=0))
    config = {
        "model": {"kind": "painn", "hyperparameters": {"cutoff": 4.0, "num_features": 8,
                                                       "num_interactions": 1, "num_radial": 6}},
        "data": {"train": "train.extxyz", "split": {"validation": 4, "test": 0, "seed": 1}},
        "training": {"epochs": 8, "batch_size": 5, "optimizer": {"lr": 1e-2},
                     "loss": {"energy": 1.0, "forces": 10.0},
                     "committee": {"members": 3, "bootstrap": True}},
        "output": {"directory": "run", "plots": False, "progress": False},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    assert cli.main(["train", str(folder / "config.yaml")]) == 0
    return folder


def test_training_exports_one_committee_file(trained):
    run = trained / "run"
    record = read_metadata(run / "model.pt")
    assert record["model_kind"] == "committee" and record["committee"]["members"] == 3
    provenance = record["metadata"]["training"]["committee"]
    assert provenance["seeds"] == [0, 1, 2] and provenance["bootstrap"] is True
    assert len(provenance["member_metrics"]) == 3
    assert "validation" in record["metadata"]["training"]["metrics"]
    for k in range(3):
        member = run / f"member_{k}"
        assert (member / "checkpoints" / "best.pt").is_file()
        assert not (member / "model.pt").exists()
        train = json.loads((member / "splits.json").read_text())["train"]
        assert len(train) == 20 and len(set(train)) < 20  # a bootstrap resample
    committee, _ = mlpot.checkpoint.load_checkpoint(run / "checkpoints" / "best.pt")
    assert isinstance(committee, Committee) and committee.num_members == 3
    assert (run / "metrics.json").is_file()


def test_committee_option_is_checked(tmp_path):
    from mlpot.train.config import ConfigError, load_config

    (tmp_path / "c.yaml").write_text("model: {kind: painn}\ndata: {train: x.extxyz}\n")
    with pytest.raises(ConfigError, match="bootstrap"):
        load_config(tmp_path / "c.yaml", ["training.committee.bootstrap=sometimes"])
    with pytest.raises(ConfigError, match="members"):
        load_config(tmp_path / "c.yaml", ["training.committee.members=0"])


def test_far_from_the_training_data_the_deviation_is_larger(trained):
    """The same rattled cells, as trained (a = 3.61 Å) and compressed to 61 % of the volume
    (nearest neighbours at 2.17 Å instead of 2.55 Å: none in the training data)."""
    calculator = MLPotCalculator(str(trained / "run" / "model.pt"))
    typical = [evaluate(calculator, atoms) for atoms in copper(6, seed=7)]
    compressed = [evaluate(calculator, atoms) for atoms in copper(6, seed=7, scale=0.85)]
    typical_max = max(r["max_force_deviation"] for r in typical)
    compressed_min = min(r["max_force_deviation"] for r in compressed)
    assert compressed_min > 2 * typical_max
    def per_atom(results):
        return np.mean([r["energy_std"] / len(r["forces"]) for r in results])

    assert per_atom(compressed) > 2 * per_atom(typical)


def test_calibrated_coverage_holds_on_a_test_set(trained, capsys):
    folder = trained
    ase.io.write(folder / "calibration.extxyz", copper(90, seed=11))
    ase.io.write(folder / "test.extxyz", copper(90, seed=12))
    coverage = 0.9
    parser = argparse.ArgumentParser()
    calibration.add_arguments(parser)
    args = parser.parse_args([str(folder / "run" / "model.pt"), "--data",
                              str(folder / "calibration.extxyz"), "--coverage", str(coverage),
                              "--output", str(folder / "calibrated.pt"), "--test",
                              str(folder / "test.extxyz")])
    result = calibration.run(args)
    assert "test coverage" in capsys.readouterr().out

    record = read_metadata(folder / "calibrated.pt")["committee"]["calibration"]
    assert record["scale"] == result["scale"] > 0
    assert record["coverage"] == coverage and record["quantity"] == "force_norm_per_atom"
    n, m = record["n"], record["test"]["n"]
    assert n == m == 30 * 8 + 60 * 4
    assert record["rank"] == math.ceil((n + 1) * coverage)
    # split conformal: at least the nominal coverage on the calibration set itself
    assert coverage <= record["calibration_set_coverage"] <= coverage + 1 / n + 1e-12
    # on the test set: the nominal level within 3σ of the calibration and test binomial noise
    sigma = math.sqrt(coverage * (1 - coverage) * (1 / n + 1 / m))
    assert abs(record["test"]["coverage"] - coverage) < 3 * sigma

    # the front end applies the stored scale, and the stored numbers can be reproduced
    calculator = MLPotCalculator(str(folder / "calibrated.pt"))
    structures, forces, _ = calibration.read_structures([folder / "test.extxyz"])
    atoms = structures[0].copy()
    atoms.calc = calculator
    atoms.get_forces()
    assert calculator.results["uncertainty_calibrated"] is True
    raw = MLPotCalculator(str(folder / "calibrated.pt"), calibrated=False)
    errors, deviations = calibration.errors_and_deviations(raw, structures, forces)
    assert calibration.coverage_of(errors, deviations, record["scale"]) == \
        record["test"]["coverage"]
    np.testing.assert_allclose(calculator.results["forces_std"],
                               record["scale"] * deviations[:len(atoms)], rtol=1e-12)


def test_conformal_scale_is_the_finite_sample_quantile():
    errors = np.arange(1.0, 11.0)          # scores 1 … 10 with unit deviations
    deviations = np.ones(10)
    assert calibration.conformal_scale(errors, deviations, 0.8) == (9.0, 9)  # ⌈11·0.8⌉ = 9
    with pytest.raises(ValueError, match="too few"):
        calibration.conformal_scale(errors, deviations, 0.95)  # needs ⌈11·0.95⌉ = 11 > 10
    with pytest.raises(ValueError, match="identical"):
        calibration.conformal_scale(errors, np.zeros(10), 0.5)


def test_interrupted_committee_training_resumes_exactly(trained, tmp_path):
    """--stop-after stops inside a member; --resume keeps finished members and continues."""
    import yaml

    config = yaml.safe_load((trained / "config.yaml").read_text())
    config["data"]["train"] = str(trained / "train.extxyz")
    config["training"].update(epochs=3, committee={"members": 2, "bootstrap": False})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", str(path), "--output", str(tmp_path / "whole")]) == 0
    parts = ["train", str(path), "--output", str(tmp_path / "parts"), "--stop-after", "2"]
    assert cli.main(parts) == 0
    assert not (tmp_path / "parts" / "model.pt").exists()
    assert not (tmp_path / "parts" / "member_1").exists()
    for _ in range(2):
        assert cli.main(parts + ["--resume"]) == 0
    atoms = copper(1, seed=3)[0]
    whole, parts = (evaluate(MLPotCalculator(str(tmp_path / name / "model.pt")), atoms)
                    for name in ("whole", "parts"))
    np.testing.assert_array_equal(whole["member_forces"], parts["member_forces"])
    assert cli.main(["train", str(path), "--output", str(tmp_path / "x"),
                     "--resume", str(tmp_path / "whole" / "checkpoints" / "best.pt")]) == 2


def test_calibrating_several_member_files_writes_one_committee_file(member_files, tmp_path):
    _, paths, _ = member_files
    reference = MLPotCalculator(str(mlpot.export_model(painn(9), tmp_path / "reference.pt")))
    images = []
    for seed in range(12):
        atoms = make_structure("bulk", SPECIES, 3.5)
        atoms.rattle(0.1, seed=seed)
        atoms.calc = reference
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        images.append(atoms)
    ase.io.write(tmp_path / "calibration.extxyz", images)
    result = calibration.calibrate([str(p) for p in paths], [str(tmp_path / "calibration.extxyz")],
                                   tmp_path / "merged.pt", coverage=0.8)
    record = read_metadata(tmp_path / "merged.pt")
    assert record["model_kind"] == "committee" and record["committee"]["members"] == 3
    assert record["committee"]["calibration"] == result and result["n"] == 48
    assert record["metadata"]["committee_of_files"] == [p.name for p in paths]
    with pytest.raises(ValueError, match="not a committee"):
        calibration.calibrate(str(paths[0]), [str(tmp_path / "calibration.extxyz")],
                              tmp_path / "single.pt")

    # the several files themselves take the stored scale (as `pair_style mlpot calibration FILE`)
    atoms = images[0].copy()
    raw = evaluate(MLPotCalculator([str(p) for p in paths]), atoms)
    for given in (tmp_path / "merged.pt", result["scale"]):
        scaled = evaluate(MLPotCalculator([str(p) for p in reversed(paths)], calibration=given),
                          atoms)
        assert scaled["uncertainty_calibrated"] and scaled["uncertainty_scale"] == result["scale"]
        np.testing.assert_allclose(scaled["forces_std"], result["scale"] * raw["forces_std"],
                                   rtol=1e-12)
        np.testing.assert_allclose(scaled["energies_std"], raw["energies_std"], rtol=1e-12)
    renamed = tmp_path / "renamed.pt"
    renamed.write_bytes(paths[0].read_bytes())
    with pytest.raises(ValueError, match="was calibrated for the files"):
        MLPotCalculator([str(renamed)] + [str(p) for p in paths[1:]],
                        calibration=tmp_path / "merged.pt")
    _, _, committee_file = member_files
    calibrated = update_metadata(committee_file, tmp_path / "own.pt", {"committee": {
        **read_metadata(committee_file)["committee"], "calibration": {"scale": 2.0}}})
    with pytest.raises(ValueError, match="records no member files"):
        MLPotCalculator([str(p) for p in paths], calibration=calibrated)
    with pytest.raises(ValueError, match="no calibration scale"):
        MLPotCalculator([str(p) for p in paths], calibration=committee_file)
    with pytest.raises(ValueError, match="carries its own"):
        MLPotCalculator(str(calibrated), calibration=2.0)


# ------------------------------------------------------------------ harvesting frames in ASE


def test_deviation_harvester_writes_the_frames_above_the_threshold(member_files, tmp_path):
    """An ASE MD observer: frames (every `interval` steps) whose max force deviation exceeds the
    threshold, in extended XYZ, with the calculator's values to the last bit."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    _, _, committee_file = member_files

    def md(path, threshold):
        """16 NVE steps from the same start (deterministic); harvests every 2 steps."""
        atoms = make_structure("bulk", SPECIES, 3.5)
        atoms.calc = MLPotCalculator(str(committee_file))
        dyn = VelocityVerlet(atoms, timestep=0.2 * units.fs)
        seen = {}
        dyn.attach(lambda: seen.update({dyn.nsteps: (atoms.positions.copy(),
                                                     dict(atoms.calc.results))}), interval=2)
        harvester = DeviationHarvester(atoms, path, threshold, dynamics=dyn)
        dyn.attach(harvester, interval=2)
        dyn.run(16)
        return atoms, harvester, seen

    atoms, everything, seen = md(tmp_path / "all.extxyz", 1e-12)
    deviations = {step: results["max_force_deviation"] for step, (_, results) in seen.items()}
    threshold = float(np.median(list(deviations.values())))
    _, above, _ = md(tmp_path / "above.extxyz", threshold)
    assert everything.steps == sorted(seen) == list(range(0, 18, 2))
    assert above.steps == [step for step in seen if deviations[step] > threshold]
    assert 0 < len(above.steps) < len(seen)
    for harvester in (everything, above):
        frames = ase.io.read(harvester.path, index=":")
        assert [f.info["step"] for f in frames] == harvester.steps
        for frame in frames:
            positions, results = seen[frame.info["step"]]
            assert frame.calc is None  # the committee's guess is not taken for a label
            assert frame.get_chemical_symbols() == atoms.get_chemical_symbols()
            np.testing.assert_array_equal(frame.cell.array, atoms.cell.array)
            np.testing.assert_array_equal(frame.positions, positions)
            np.testing.assert_array_equal(frame.arrays["committee_forces"], results["forces"])
            np.testing.assert_array_equal(frame.arrays["forces_std"], results["forces_std"])
            np.testing.assert_array_equal(frame.arrays["energies_std"], results["energies_std"])
            for key, name in (("committee_energy", "energy"), ("energy_std", "energy_std"),
                              ("max_force_deviation", "max_force_deviation"),
                              ("uncertainty_scale", "uncertainty_scale")):
                assert frame.info[key] == results[name]


def test_deviation_harvester_refuses_bad_input(member_files, tmp_path):
    _, paths, committee_file = member_files
    atoms = make_structure("bulk", SPECIES, 3.5)
    atoms.calc = MLPotCalculator(str(paths[0]))
    with pytest.raises(ValueError, match="needs atoms.calc to be a committee"):
        DeviationHarvester(atoms, tmp_path / "h.extxyz", 0.1)
    atoms.calc = MLPotCalculator(str(committee_file))
    with pytest.raises(ValueError, match="positive force deviation"):
        DeviationHarvester(atoms, tmp_path / "h.extxyz", 0.0)
    with pytest.raises(OSError, match="cannot write the harvest file"):
        DeviationHarvester(atoms, tmp_path / "missing" / "h.extxyz", 0.1)
