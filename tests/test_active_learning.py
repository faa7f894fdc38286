"""examples/active_learning/ end to end in its --quick mode (under a minute on one core): a
committee trained on 300 K SiC frames runs LAMMPS MD at 1200 K, harvests the frames above the
threshold, they are labelled with Tersoff and the retrained committee is better there."""

import importlib.util
from pathlib import Path

import ase.io

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "active_learning" / "active_learning.py"


def load_example():
    spec = importlib.util.spec_from_file_location("active_learning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_active_learning_loop_lowers_the_error_where_it_harvested(tmp_path):
    results = load_example().main(["--quick", "--out", str(tmp_path)])
    for name in ("results.md", "results.json", "active_learning.png", "round0/model.pt",
                 "round1/model.pt", "md/round0_A_harvest.extxyz"):
        assert (tmp_path / name).is_file(), name
    # the harvest: frames above the threshold, labelled by the reference, added to the training
    harvested = ase.io.read(tmp_path / "md" / "round0_A_harvest.extxyz", index=":")
    labelled = ase.io.read(tmp_path / "data" / "harvested.extxyz", index=":")
    assert len(harvested) == len(labelled) > 0
    assert all(f.info["max_force_deviation"] > results["threshold"] for f in harvested)
    assert all(a.get_forces().shape == (len(a), 3) for a in labelled)
    # on held-out frames of the harvested region, the retrained committee has smaller errors
    before, after = results["round 0"]["heldout"], results["round 1"]["heldout"]
    assert after["energy_mae"] < before["energy_mae"]
    assert after["force_mae"] < before["force_mae"]
