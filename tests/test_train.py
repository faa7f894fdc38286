"""``mlpot train``: data, units, losses, determinism, exact resume, data parallel, reports, export,
fine-tuning and the errors bad data gets.

Data: small periodic fcc Cu/Au cells labelled by ase's EMT (energy, forces, stress), made here.
Models are tiny PaiNNs, so every training run takes a second or two.
"""

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import mlpot
from mlpot import cli, edge_sums
from mlpot.checkpoint import load_checkpoint
from mlpot.models import PaiNN
from mlpot.train.batch import build_graphs, collate, edge_forces, edge_virials, predict
from mlpot.train.config import ConfigError, load_config
from mlpot.train.data import (Labelled, fit_reference_energies, read_dataset, split_indices)
from mlpot.train.model_setup import grow_species, load_source
from mlpot.train.units import UnitError, conversion_factors

torch.set_num_threads(1)

HYPERPARAMETERS = {"cutoff": 4.0, "num_features": 8, "num_interactions": 2, "num_radial": 6}


def make_structures(n=24, seed=0, au_fraction=0.25, energy_key="energy"):
    """Rattled, strained fcc Cu/Au cells (4 or 8 atoms) with EMT labels."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.65, cubic=True)
        if k % 3 == 0:
            atoms = atoms * (2, 1, 1)
        symbols = ["Au" if rng.random() < au_fraction else "Cu" for _ in atoms]
        atoms.set_chemical_symbols(symbols)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(scale=0.01, size=(3, 3))),
                       scale_atoms=True)
        atoms.rattle(0.08, seed=seed * 1000 + k)
        atoms.calc = EMT()
        energy, forces, stress = (atoms.get_potential_energy(), atoms.get_forces(),
                                  atoms.get_stress())
        atoms.calc = None
        if energy_key == "energy":
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        else:
            atoms.info[energy_key] = energy
            atoms.arrays["ref_forces"] = forces
        images.append(atoms)
    return images


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "cuau.extxyz"
    ase.io.write(path, make_structures())
    return path


def write_config(directory, data_file, **sections):

    config = {
        "model": {"kind": "painn", "hyperparameters": dict(HYPERPARAMETERS)},
        "data": {"train": str(data_file), "split": {"validation": 0.25, "test": 0.25, "seed": 1},
                 "reference_method": "EMT (ase.calculators.emt)"},
        "training": {"epochs": 4, "batch_size": 4, "optimizer": {"lr": 5e-3},
                     "loss": {"energy": 1.0, "forces": 10.0, "stress": 1.0}},
        "output": {"directory": str(directory / "run"), "plots": False, "progress": False},
    }
    for section, values in sections.items():
        for key, value in values.items():
            if value and isinstance(value, dict) and isinstance(config[section].get(key), dict):
                config[section][key].update(value)
            else:
                config[section][key] = value
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(config, *extra):
    status = cli.main(["train", str(config), *map(str, extra)])
    assert status == 0
    return status


def fail(config, *extra, capsys):
    """Run ``mlpot train`` expecting a clean error; returns the message."""
    capsys.readouterr()
    assert cli.main(["train", str(config), *map(str, extra)]) == 2
    return capsys.readouterr().err


def final_state(directory):
    state = torch.load(directory / "run" / "checkpoints" / "last.pt", weights_only=False)
    return state


def assert_states_equal(a, b, exact=True, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


# ----------------------------------------------------------------------------------- pieces


def test_torch_edge_sums_match_numpy():
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 7, 40), rng.integers(0, 7, 40)
    vectors, gradient = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    forces = edge_forces(torch.tensor(np.stack([i, j])), torch.tensor(gradient), 7)
    np.testing.assert_allclose(forces.numpy(), edge_sums.forces(i, j, gradient, 7), atol=1e-12)
    virial = edge_virials(torch.tensor(vectors), torch.tensor(gradient),
                          torch.zeros(40, dtype=torch.long), 1)
    np.testing.assert_allclose(virial[0].numpy(), edge_sums.virial(vectors, gradient), atol=1e-12)


def test_loss_shares_add_up_to_the_global_loss():
    """Each rank normalises by the global counts, so the shares' losses sum to the whole's."""
    from mlpot.train.distributed import Context
    from mlpot.train.loss import Loss

    for kind in ("mse", "huber"):
        loss = Loss({"energy": 1.0, "forces": 10.0, "stress": 2.0, "type": kind,
                     "huber_delta": 0.05})
        rng = np.random.default_rng(0)
        errors = [{"energy": torch.tensor(rng.normal(size=1) * 0.1),
                   "forces": torch.tensor(rng.normal(size=3 * (k + 1)) * 0.2),
                   "stress": torch.tensor(rng.normal(size=9) * 0.01)} for k in range(5)]
        counts = {"energy": 5.0, "forces": 3.0 * 15, "stress": 45.0}
        whole = loss({t: torch.cat([e[t] for e in errors]) for t in errors[0]}, counts)
        parts = []
        for rank in range(2):
            share = Context(rank, 2).share(errors)
            parts.append(loss({t: torch.cat([e[t] for e in share]) for t in errors[0]}, counts))
        assert [len(Context(r, 2).share(errors)) for r in range(2)] == [2, 3]
        torch.testing.assert_close(parts[0] + parts[1], whole)
    assert float(loss.rho(torch.tensor(1.0))) == pytest.approx(0.05 * (1.0 - 0.025))  # Huber


def test_batched_predictions_equal_the_ase_calculator(tmp_path):
    """Training computes energies, forces and stresses exactly as the deployed front end."""
    ase.io.write(tmp_path / "d.extxyz", make_structures(5, seed=3))
    images = ase.io.read(tmp_path / "d.extxyz", ":")  # the same rounded positions
    torch.manual_seed(0)
    model = PaiNN(["Cu", "Au"], **HYPERPARAMETERS).double()
    model.set_energy_shift_scale(torch.tensor([-0.2, 0.5]), torch.tensor([0.7, 1.3]))
    config = load_config(None, [f"data.train={tmp_path / 'd.extxyz'}", "model.kind=painn"])
    structures = read_dataset([str(tmp_path / "d.extxyz")], config["data"], True).structures
    batch = collate(build_graphs(structures, model.species, model.cutoff, torch.float64),
                    torch.float64)
    prediction = predict(model, batch, stress=True, create_graph=False)
    mlpot.export_model(model, tmp_path / "m.pt")
    calculator = mlpot.MLPotCalculator(str(tmp_path / "m.pt"))
    forces = []
    for k, atoms in enumerate(images):
        atoms.calc = calculator
        assert atoms.get_potential_energy() == pytest.approx(prediction["energy"][k].item(),
                                                             abs=1e-10)
        np.testing.assert_allclose(atoms.get_stress(voigt=False),
                                   prediction["stress"][k].detach().numpy(), atol=1e-10)
        forces.append(atoms.get_forces())
    np.testing.assert_allclose(np.concatenate(forces), prediction["forces"].detach().numpy(),
                               atol=1e-10)


def test_frames_with_and_without_stress_mix_in_a_batch_and_the_loss(tmp_path):
    """Frames without a stress (e.g. DFT data without one) and with one (e.g. frames labelled by
    a classical potential), in one file and one batch: the frames without a stress add nothing to
    the stress error, its normaliser or its gradient, and still count for energies and forces."""
    from mlpot.train.loss import Loss, global_counts

    images = make_structures(6, seed=5)
    for atoms in images[1::2]:   # every other frame loses its stress
        results = atoms.calc.results
        atoms.calc = SinglePointCalculator(atoms, energy=results["energy"],
                                           forces=results["forces"])
    ase.io.write(tmp_path / "mixed.extxyz", images)
    config = load_config(None, [f"data.train={tmp_path / 'mixed.extxyz'}", "model.kind=painn"])
    structures = read_dataset([str(tmp_path / "mixed.extxyz")], config["data"], True).structures
    assert [s.stress is not None for s in structures] == [True, False] * 3
    torch.manual_seed(0)
    model = PaiNN(["Cu", "Au"], **HYPERPARAMETERS).double()
    graphs = build_graphs(structures, model.species, model.cutoff, torch.float64)
    stressed = graphs[0::2]
    loss = Loss({"energy": 1.0, "forces": 10.0, "stress": 100.0, "type": "mse",
                 "huber_delta": 0.01})
    stress_only = Loss({"energy": 0.0, "forces": 0.0, "stress": 100.0, "type": "mse",
                        "huber_delta": 0.01})

    def run(chosen, term_loss):
        model.zero_grad()
        batch = collate(chosen, torch.float64)
        errors = term_loss.errors(predict(model, batch, stress=True, create_graph=True), batch)
        value = term_loss(errors, global_counts(chosen, True))
        value.backward()
        return batch, errors, value, [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                      for p in model.parameters()]

    batch, errors, value, _ = run(graphs, loss)
    assert batch.stress_mask.tolist() == [True, False] * 3
    assert errors["stress"].numel() == 9 * 3 and errors["energy"].numel() == 6
    assert errors["forces"].numel() == 3 * sum(g.num_atoms for g in graphs)
    assert global_counts(graphs, True)["stress"] == 27.0
    _, alone, _, _ = run(stressed, loss)
    torch.testing.assert_close(errors["stress"], alone["stress"])
    # the stress term and its gradient are those of the stressed frames alone
    _, _, mixed_value, mixed_grad = run(graphs, stress_only)
    _, _, alone_value, alone_grad = run(stressed, stress_only)
    torch.testing.assert_close(mixed_value, alone_value)
    for a, b in zip(mixed_grad, alone_grad):
        torch.testing.assert_close(a, b)
    # a batch with no stressed frame has no stress term at all
    assert stress_only(run(graphs[1::2], loss)[1], global_counts(graphs[1::2], True)) is None


def test_reference_energies_are_recovered_by_least_squares():
    rng = np.random.default_rng(1)
    truth = {29: -3.5, 79: -4.25, 13: -2.0}
    structures = []
    for _ in range(12):
        numbers = rng.choice(list(truth), size=rng.integers(2, 9))
        structures.append(Labelled(numbers, np.zeros((len(numbers), 3)), np.eye(3) * 5,
                                   np.array([True] * 3), sum(truth[z] for z in numbers), None,
                                   None, "synthetic"))
    fitted = fit_reference_energies(structures, ["Al", "Cu", "Au"])
    np.testing.assert_allclose(fitted, [-2.0, -3.5, -4.25], atol=1e-10)
    kept = fit_reference_energies(structures, ["Al", "Cu", "Au"], fixed={"Cu": -3.5})
    np.testing.assert_allclose(kept, [-2.0, -3.5, -4.25], atol=1e-10)


def test_split_is_reproducible_and_disjoint():
    a = split_indices(50, 0.2, 5, seed=3)
    b = split_indices(50, 0.2, 5, seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert [len(x) for x in a] == [35, 10, 5]
    assert len(set(np.concatenate(a))) == 50
    assert not np.array_equal(split_indices(50, 0.2, 5, seed=4)[1], a[1])


def test_config_overrides_and_typos(tmp_path, data_file):
    path = write_config(tmp_path, data_file)
    config = load_config(path, ["training.optimizer.lr=1e-3", "model.hyperparameters.cutoff=3.5",
                                "training.scheduler.name=cosine"])
    assert config["training"]["optimizer"]["lr"] == 1e-3
    assert config["model"]["hyperparameters"] == {**HYPERPARAMETERS, "cutoff": 3.5}
    assert config["training"]["scheduler"]["name"] == "cosine"
    with pytest.raises(ConfigError, match="did you mean 'training.epochs'"):
        load_config(path, ["training.epoch=3"])
    with pytest.raises(ConfigError, match="training.batch_size must be"):
        load_config(path, ["training.batch_size=0"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["training.epochs"])


def test_units_are_converted_and_checked(tmp_path):
    images = make_structures(3, seed=5)
    reference = [(a.get_potential_energy(), a.get_forces(), a.get_stress(voigt=False))
                 for a in images]
    kcal, bohr = units.kcal / units.mol, units.Bohr
    converted = []
    for atoms, (energy, forces, stress) in zip(images, reference):
        atoms = atoms.copy()
        atoms.set_cell(atoms.cell / bohr, scale_atoms=True)
        atoms.info["E"] = energy / kcal
        atoms.arrays["F"] = forces / (kcal / bohr)
        atoms.info["virial"] = (-stress * atoms.get_volume() * bohr**3 / kcal).reshape(-1)
        converted.append(atoms)
    ase.io.write(tmp_path / "kcal.extxyz", converted)
    overrides = [f"data.train={tmp_path / 'kcal.extxyz'}", "model.kind=painn",
                 "data.units.energy=kcal/mol", "data.units.length=Bohr",
                 "data.units.forces=kcal/mol/Bohr", "data.keys.energy=E", "data.keys.forces=F",
                 "data.keys.stress=null"]
    config = load_config(None, overrides)
    structures = read_dataset(config["data"]["train"], config["data"], True).structures
    for s, atoms, (energy, forces, stress) in zip(structures, images, reference):
        assert s.energy == pytest.approx(energy, rel=1e-12)
        np.testing.assert_allclose(s.positions, atoms.positions, atol=1e-6)  # extxyz rounding
        np.testing.assert_allclose(s.forces, forces, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(s.stress, stress, rtol=1e-6, atol=1e-8)

    assert conversion_factors({"energy": "Hartree", "length": "Bohr"})["forces"] == \
        pytest.approx(units.Hartree / units.Bohr)
    assert conversion_factors({"energy": "eV", "length": "Å", "stress": "GPa"})["stress"] == \
        pytest.approx(units.GPa)
    with pytest.raises(UnitError, match="inconsistent units"):
        conversion_factors({"energy": "Hartree", "length": "Bohr", "forces": "eV/Å"})
    with pytest.raises(UnitError, match="inconsistent units"):
        conversion_factors({"energy": "eV", "length": "Å", "stress": "Hartree/Bohr^3"})
    with pytest.raises(UnitError, match="unknown energy unit"):
        conversion_factors({"energy": "erg", "length": "Å"})


def test_ase_database_with_custom_keys(tmp_path):
    import ase.db

    images = make_structures(4, seed=7, energy_key="dft_energy")
    with ase.db.connect(tmp_path / "d.db") as db:
        for atoms in images:
            db.write(atoms, dft_energy=atoms.info["dft_energy"],
                     data={"dft_forces": atoms.arrays["ref_forces"]})
    config = load_config(None, [f"data.train={tmp_path / 'd.db'}", "model.kind=painn",
                                "data.keys.energy=dft_energy", "data.keys.forces=dft_forces"])
    structures = read_dataset(config["data"]["train"], config["data"], True).structures
    assert len(structures) == 4
    for s, atoms in zip(structures, images):
        assert s.energy == atoms.info["dft_energy"]
        np.testing.assert_array_equal(s.forces, atoms.arrays["ref_forces"])
        assert s.stress is None


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_file):
    """One complete run with plots, progress bar and export (shared by several tests)."""
    directory = tmp_path_factory.mktemp("trained")
    config = write_config(directory, data_file,
                          training={"epochs": 12, "scheduler": {"name": "cosine", "min_lr": 1e-4}},
                          output={"plots": True, "progress": True})
    train(config, "--export", directory / "exported.pt")
    return directory


def test_training_reduces_the_loss(trained):
    import csv

    rows = list(csv.DictReader(open(trained / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    first, last = rows[0], rows[-1]
    assert float(last["train_loss"]) < 0.5 * float(first["train_loss"])
    assert min(float(r["val_loss"]) for r in rows) < 0.5 * float(first["val_loss"])
    assert float(last["lr"]) < float(first["lr"])  # cosine schedule
    for column in ("val_energy_mae", "val_forces_rmse", "val_stress_rmse", "train_forces_mae"):
        assert column in first


def test_reports_and_plots_are_written(trained):
    run = trained / "run"
    for name in ("learning_curves.png", "parity_energy.png", "parity_forces.png",
                 "parity_stress.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"train", "validation", "test"}
    assert metrics["sets"]["test"]["structures"] == 6
    assert metrics["sets"]["test"]["forces_rmse"] > 0
    assert "| test | 6 |" in (run / "metrics.md").read_text()
    log = (run / "train.log").read_text()
    assert "epoch 12/12" in log and "reference energies (eV): Cu" in log
    splits = json.loads((run / "splits.json").read_text())
    assert sorted(splits["train"] + splits["validation"] + splits["test"]) == list(range(24))
    assert (run / "config.yaml").is_file()


def test_export_round_trip_and_provenance(trained, data_file):
    """The exported file gives the energies of the trained EMA weights; it says what it was
    trained on."""
    model, state = load_checkpoint(trained / "run" / "checkpoints" / "best.pt")
    last = torch.load(trained / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert_states_equal(last["training_state"]["best"]["state"], model.state_dict())
    config = load_config(trained / "config.yaml")
    structures = read_dataset([str(data_file)], config["data"], True).structures[:6]
    deployed = mlpot.load_model(trained / "exported.pt")
    assert deployed.metadata["dtype"] == "float64"

    def energies(model_or_file, dtype):
        batch = collate(build_graphs(structures, model.species, model.cutoff, dtype), dtype)
        if isinstance(model_or_file, torch.nn.Module):
            return predict(model_or_file, batch, False, False)["energy"].detach().double()
        out = []
        for k in range(batch.num_structures):
            one = collate(build_graphs(structures[k:k + 1], model.species, model.cutoff, dtype),
                          dtype)
            out.append(model_or_file(one.species, one.edge_index, one.edge_vectors,
                                     one.species.shape[0])["energy"].detach())
        return torch.stack(out).double()

    exported = energies(deployed, torch.float64)
    torch.testing.assert_close(exported, energies(model.double(), torch.float64), atol=1e-10,
                               rtol=0)
    torch.testing.assert_close(exported, energies(model.float(), torch.float32), atol=1e-4, rtol=0)

    metadata = mlpot.read_metadata(trained / "exported.pt")["metadata"]
    assert metadata["reference_method"] == "EMT (ase.calculators.emt)"
    record = metadata["training"]["data"]["train"][0]
    assert record["name"] == "cuau.extxyz" and record["structures"] == 24
    import hashlib

    assert record["sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert metadata["training"]["split"]["sizes"] == {"train": 12, "validation": 6, "test": 6}
    assert metadata["training"]["metrics"]["test"]["structures"] == 6
    assert set(metadata["training"]["reference_energies"]) == {"Cu", "Au"}
    assert "test_rmse" in metadata
    # `mlpot export` of the best checkpoint gives the same model
    assert cli.main(["export", str(trained / "run" / "checkpoints" / "best.pt"),
                     str(trained / "again.pt")]) == 0
    torch.testing.assert_close(energies(mlpot.load_model(trained / "again.pt"), torch.float64),
                               exported, atol=1e-12, rtol=0)


def test_progress_bar_goes_to_stderr(tmp_path, data_file, capsys):
    config = write_config(tmp_path, data_file, training={"epochs": 1},
                          output={"progress": True, "export": None})
    train(config)
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.out
    assert "batch" in captured.err  # tqdm's bar
    train(config, "--no-progress", "--output", tmp_path / "quiet")
    assert "batch" not in capsys.readouterr().err


@pytest.mark.parametrize("scheduler", [{"name": "plateau", "patience": 0, "factor": 0.5,
                                        "threshold": 0.3},
                                       {"name": "cosine", "warmup_epochs": 1}])
def test_same_seed_is_identical_and_resume_is_exact(tmp_path, data_file, scheduler):
    common = dict(training={"epochs": 4, "scheduler": scheduler, "ema_decay": 0.9},
                  output={"export": None})
    runs = {}
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        runs[name] = write_config(tmp_path / name, data_file, **common)
    train(runs["a"])
    train(runs["b"])
    train(runs["c"], "--stop-after", "2")
    assert final_state(tmp_path / "c")["training_state"]["epoch"] == 2
    train(runs["c"], "--resume")
    a, b, c = (final_state(tmp_path / n) for n in "abc")
    for other in (b, c):
        assert_states_equal(a["model_state"], other["model_state"])  # EMA weights
        assert_states_equal(a["training_state"]["model"], other["training_state"]["model"])
        assert a["training_state"]["optimizer"]["param_groups"][0]["lr"] == \
            other["training_state"]["optimizer"]["param_groups"][0]["lr"]
        strip = [{k: v for k, v in row.items() if k != "time"}
                 for row in other["training_state"]["history"]]
        assert strip == [{k: v for k, v in row.items() if k != "time"}
                         for row in a["training_state"]["history"]]
    lrs = [row["lr"] for row in a["training_state"]["history"]]
    assert len(set(lrs)) > 1  # the scheduler acted, also across the resume point


def test_early_stopping(tmp_path, data_file):
    config = write_config(tmp_path, data_file, training={
        "epochs": 10, "early_stopping": {"patience": 2, "min_delta": 1e9}}, output={"export": None})
    train(config)
    state = final_state(tmp_path)["training_state"]
    assert state["epoch"] == 3 and state["stopped_early"] and state["best"]["epoch"] == 1
    assert "early stopping" in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "metrics.md").is_file()


def test_resume_refuses_a_changed_config(tmp_path, data_file, capsys):
    config = write_config(tmp_path, data_file, training={"epochs": 2}, output={"export": None})
    train(config, "--stop-after", "1")
    message = fail(config, "--resume", "--set", "training.optimizer.lr=0.1", capsys=capsys)
    assert "cannot resume exactly" in message and "training.optimizer.lr" in message
    train(config, "--resume", "--set", "training.epochs=3")  # more epochs are fine
    assert final_state(tmp_path)["training_state"]["epoch"] == 3


def test_two_processes_equal_one(tmp_path, data_file):
    """Data parallel over 2 gloo processes reproduces single-process training."""
    common = dict(training={"epochs": 2, "batch_size": 5, "dtype": "float64"},
                  output={"export": None})
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        write_config(tmp_path / name, data_file, **common)
    train(tmp_path / "one" / "config.yaml")
    train(tmp_path / "two" / "config.yaml", "--nproc", "2")
    one, two = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert_states_equal(one["model_state"], two["model_state"], exact=False, atol=1e-9)
    assert_states_equal(one["training_state"]["model"], two["training_state"]["model"],
                        exact=False, atol=1e-9)
    for row_one, row_two in zip(one["training_state"]["history"], two["training_state"]["history"]):
        assert row_one["val_loss"] == pytest.approx(row_two["val_loss"], rel=1e-9)
        assert row_one["train_loss"] == pytest.approx(row_two["train_loss"], rel=1e-9)


# ----------------------------------------------------------------------------- fine-tuning


def test_the_run_folder_config_copy_has_relative_paths(tmp_path):
    """run/config.yaml records data paths inside the config's folder relative to run/ (no
    trainer directories), and it loads and resumes as is, naming the same files; others stay as
    given."""

    (tmp_path / "pot" / "data").mkdir(parents=True)
    ase.io.write(tmp_path / "pot" / "data" / "train.extxyz", make_structures(12, seed=13))
    ase.io.write(tmp_path / "outside.extxyz", make_structures(4, seed=14))
    config = write_config(tmp_path / "pot", "data/train.extxyz", training={"epochs": 1},
                          output={"directory": "run"},
                          data={"test": str(tmp_path / "outside.extxyz"),
                                "split": {"validation": 3, "test": 0}})
    train(config)
    copy = yaml.safe_load((tmp_path / "pot" / "run" / "config.yaml").read_text())
    assert copy["data"]["train"] == ["../data/train.extxyz"]
    assert copy["output"]["directory"] == "../run"
    assert copy["data"]["test"] == [str(tmp_path / "outside.extxyz")]
    again = load_config(tmp_path / "pot" / "run" / "config.yaml")
    original = load_config(config)
    for key in ("train", "test"):
        assert [Path(p).resolve() for p in again["data"][key]] == \
            [Path(p).resolve() for p in original["data"][key]]
    assert Path(again["output"]["directory"]).resolve() == (tmp_path / "pot" / "run").resolve()
    # the copy resumes the run it describes (its paths equal the original's once normalised)
    train(tmp_path / "pot" / "run" / "config.yaml", "--resume", "--set", "training.epochs=2")
    train(config, "--output", tmp_path / "elsewhere")   # outside the config's folder: absolute
    copy = yaml.safe_load((tmp_path / "elsewhere" / "config.yaml").read_text())
    assert Path(copy["data"]["train"][0]) == (tmp_path / "pot" / "data" / "train.extxyz").resolve()


def test_finetune_from_model_file_adds_a_species(tmp_path, capsys):
    cu_only = make_structures(12, seed=11, au_fraction=0.0)
    ase.io.write(tmp_path / "cu.extxyz", cu_only)
    ase.io.write(tmp_path / "cuau.extxyz", make_structures(12, seed=12))
    (tmp_path / "base").mkdir()
    base = write_config(tmp_path / "base", tmp_path / "cu.extxyz",
                        training={"epochs": 2}, data={"split": {"validation": 3, "test": 0}})
    train(base)
    model_file = tmp_path / "base" / "run" / "model.pt"
    source, _ = load_source(str(model_file))
    assert source.species == ["Cu"]

    grown = grow_species(source, ["Cu", "Au"])
    assert grown.species == ["Cu", "Au"]
    cu = read_dataset([str(tmp_path / "cu.extxyz")], load_config(base)["data"], True).structures[:3]
    before, after = (predict(m, collate(build_graphs(cu, m.species, m.cutoff, torch.float64),
                                        torch.float64), False, False)["energy"]
                     for m in (source, grown))
    torch.testing.assert_close(before, after)  # Cu is unchanged by adding Au

    (tmp_path / "tune").mkdir()
    tune = write_config(tmp_path / "tune", tmp_path / "cuau.extxyz",
                        model={"kind": None, "hyperparameters": {}, "init_from": str(model_file)},
                        training={"epochs": 2}, data={"split": {"validation": 3, "test": 0}})
    train(tune)
    out = capsys.readouterr().out
    assert "species Cu Au" in out
    tuned = mlpot.read_metadata(tmp_path / "tune" / "run" / "model.pt")
    assert tuned["species"] == ["Cu", "Au"]
    provenance = tuned["metadata"]["training"]
    assert provenance["finetuned_from"]["path"] == str(model_file)
    assert provenance["finetuned_from"]["species"] == ["Cu"]
    # Cu's reference energy is kept from the base model, Au's is fitted
    base_refs = mlpot.read_metadata(model_file)["metadata"]["training"]["reference_energies"]
    assert provenance["reference_energies"]["Cu"] == pytest.approx(base_refs["Cu"], rel=1e-6)

    # from a checkpoint too; a different architecture is refused
    checkpoint = tmp_path / "base" / "run" / "checkpoints" / "best.pt"
    assert load_source(str(checkpoint))[0].species == ["Cu"]
    message = fail(tune, "--set", "model.hyperparameters.num_features=4", capsys=capsys)
    assert "fine-tuning keeps the architecture" in message


def test_finetune_behler_parrinello_from_model_file(tmp_path, capsys):
    """A Behler-Parrinello model file is a valid starting point: its weights load (the eager
    model predicts what the deployed file does) and training goes on; adding a species is
    refused with the reason."""
    cu_only = make_structures(10, seed=13, au_fraction=0.0)
    ase.io.write(tmp_path / "cu.extxyz", cu_only)
    (tmp_path / "base").mkdir()
    base = write_config(tmp_path / "base", tmp_path / "cu.extxyz",
                        training={"epochs": 2}, data={"split": {"validation": 3, "test": 0}})
    config = yaml.safe_load(base.read_text())
    config["model"] = {"kind": "behler_parrinello", "hyperparameters": {
        "symmetry_functions": {"cutoff": 4.0, "radial": [[0.5, 0.0], [1.0, 2.5]],
                               "angular": [["G4", 0.1, 1.0, 1.0], ["G4", 0.1, 2.0, -1.0]]},
        "hidden_layers": [8]}}
    base.write_text(yaml.safe_dump(config))
    train(base)
    model_file = tmp_path / "base" / "run" / "model.pt"
    source, provenance = load_source(str(model_file))
    assert source.kind == "behler_parrinello" and provenance["type"] == "model file"
    first = read_dataset([str(tmp_path / "cu.extxyz")], load_config(base)["data"],
                         True).structures[:1]
    graph = collate(build_graphs(first, source.species, source.cutoff, torch.float64),
                    torch.float64)
    energy = predict(source, graph, False, False)["energy"].item()
    atoms = cu_only[0].copy()
    atoms.calc = mlpot.MLPotCalculator(str(model_file))
    assert energy == pytest.approx(atoms.get_potential_energy(), rel=1e-9)

    (tmp_path / "tune").mkdir()
    tune = write_config(tmp_path / "tune", tmp_path / "cu.extxyz",
                        model={"kind": None, "hyperparameters": {}, "init_from": str(model_file)},
                        training={"epochs": 1}, data={"split": {"validation": 3, "test": 0}})
    train(tune)
    tuned = mlpot.read_metadata(tmp_path / "tune" / "run" / "model.pt")
    assert tuned["model_kind"] == "behler_parrinello"
    assert tuned["metadata"]["training"]["finetuned_from"]["path"] == str(model_file)

    with pytest.raises(ValueError, match="cannot add species"):
        grow_species(source, ["Cu", "Au"])


def test_kinds_that_cannot_grow_species_are_refused(monkeypatch):
    from mlpot import checkpoint
    from mlpot.models.base import AtomicEnergyModel

    class PairTable(AtomicEnergyModel):
        """A (made-up) kind with one weight per species pair: not growable row by row."""

        kind = "pair_table"

        def __init__(self, species, cutoff):
            super().__init__(species, cutoff, 1)
            self.table = torch.nn.Parameter(torch.zeros(len(species), len(species)))

        def hyperparameters(self):
            return {"species": self.species, "cutoff": self.cutoff}

    monkeypatch.setitem(checkpoint.MODEL_KINDS, "pair_table", PairTable)
    with pytest.raises(ValueError, match="cannot add species"):
        grow_species(PairTable(["Cu"], 3.0), ["Cu", "Au"])


# ------------------------------------------------------------------------------- bad data


def _write(path, images):
    ase.io.write(path, images)
    return path


def test_bad_data_gets_clear_errors(tmp_path, capsys):
    good = make_structures(6, seed=21)
    config = write_config(tmp_path, tmp_path / "x.extxyz", training={"epochs": 1},
                          data={"split": {"validation": 1, "test": 1}})

    def error(images=None, *extra):
        if images is not None:
            _write(tmp_path / "x.extxyz", images)
        return fail(config, *extra, capsys=capsys)

    no_forces = [a.copy() for a in good]
    for atoms, original in zip(no_forces, good):
        atoms.calc = SinglePointCalculator(atoms, energy=original.get_potential_energy())
    assert "no force array" in error(no_forces) and "x.extxyz[0]" in error(no_forces)

    nan_energy = [a.copy() for a in good]
    for atoms, original in zip(nan_energy, good):
        atoms.calc = SinglePointCalculator(atoms, energy=original.get_potential_energy(),
                                           forces=original.get_forces())
    nan_energy[3].calc.results["energy"] = float("nan")
    assert "x.extxyz[3]: energy is NaN" in error(nan_energy)

    nan_forces = [a.copy() for a in good]
    for atoms, original in zip(nan_forces, good):
        f = original.get_forces().copy()
        atoms.calc = SinglePointCalculator(atoms, energy=original.get_potential_energy(), forces=f)
    nan_forces[2].calc.results["forces"][1, 0] = np.nan
    assert "x.extxyz[2]: forces contain NaN" in error(nan_forces)

    _write(tmp_path / "x.extxyz", good)
    message = error(None, "--set", "model.species=[Cu]")
    assert "element(s) Au not in the model's species ['Cu']" in message

    (tmp_path / "x.extxyz").write_text("")
    assert "holds no structures" in error()

    _write(tmp_path / "x.extxyz", good)
    message = error(None, "--set", "data.units.energy=Hartree", "--set", "data.units.length=Bohr",
                    "--set", "data.units.forces=eV/Å")
    assert "inconsistent units" in message

    no_stress = [a.copy() for a in good]
    for atoms, original in zip(no_stress, good):
        atoms.calc = SinglePointCalculator(atoms, energy=original.get_potential_energy(),
                                           forces=original.get_forces())
    assert "no training structure has a stress" in error(no_stress)

    assert "does not exist" in error(None, "--set", f"data.train={tmp_path / 'missing.xyz'}")
    assert "unknown config key 'training.optimiser'" in error(
        None, "--set", "training.optimiser.lr=0.1")
