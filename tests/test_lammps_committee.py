"""Committee deviation in pair_style mlpot (docs/committee.md, "What pair_style mlpot does"):
the LAMMPS deviations (deviation file, `compute pair` vector, per-atom sigma through `fix pair`)
equal MLPotCalculator's to 1e-10, for one-file committees of both interfaces (random PaiNNs,
random Behler-Parrinello networks) with a calibration scale; 1 rank = 2 ranks; identical members
give zero deviation; bad input is refused with a clear message. Threads are pinned to 1.
"""

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from mlpot import lammps as mlammps
from mlpot.calculator import MLPotCalculator
from mlpot.model_file import export_model, read_metadata, update_metadata
from mlpot.models import Committee

from test_lammps_plugin import (ACCURATE_SF, SINGLE_CELL, SPECIES, md_atoms, quiet_lammps,
                                random_atoms, random_behler_parrinello, random_painn,
                                relative_error, run_lammps)

SCALE = 2.5  # calibration scale written into the committee files
RTOL = 1e-10


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lammps_committee")


def members(kind, seeds):
    if kind == "painn":
        return [random_painn(3.0, 8, num_radial=4, seed=seed).double() for seed in seeds]
    structures = [random_atoms(SINGLE_CELL, 12, 1.8, seed) for seed in (3, 5)]
    return [random_behler_parrinello(3.0, ACCURATE_SF, structures, hidden_layers=(8,), seed=seed)
            for seed in seeds]


def committee_file(kind, workdir, seeds=(0, 1, 2), scale=SCALE, name=None):
    path = workdir / (name or f"committee_{kind}.pt")
    if not path.exists():
        export_model(Committee(members(kind, seeds)), path, dtype="float64")
        if scale:
            record = read_metadata(path)
            update_metadata(path, path, {"committee": {**record["committee"],
                                                       "calibration": {"scale": scale}}})
    return str(path)


def read_deviation(path):
    lines = Path(path).read_text().splitlines()
    assert lines[0].startswith("# mlpot committee of ")
    assert lines[1].split()[1:] == ["step", "max_devi_f", "min_devi_f", "avg_devi_f", "devi_e"]
    return lines[0], np.array([[float(v) for v in line.split()] for line in lines[2:]])


def single_point(model, workdir, settings=""):
    """One evaluation in LAMMPS: the deviation file, compute pair, fix pair; and the structure."""
    from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

    atoms = random_atoms(SINGLE_CELL, 12, min_distance=1.8, seed=3)
    data = mlammps.write_data(workdir / "single.data", atoms, SPECIES)
    deviation_file = workdir / "single_devi.out"
    lmp = quiet_lammps()
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        atom_modify map array
        newton on
        read_data {data}
        pair_style mlpot deviation_file {deviation_file} {settings}
        pair_coeff * * {model} Si C
        compute devi all pair mlpot
        fix sigma all pair 1 mlpot forces_std 0
        thermo_style custom step pe c_devi[1] c_devi[2] c_devi[3] c_devi[4]
        run 0
    """)
    n = lmp.extract_global("nlocal")
    order = np.argsort(lmp.numpy.extract_atom("id")[:n])
    boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    cell = np.array([[boxhi[0] - boxlo[0], 0, 0], [xy, boxhi[1] - boxlo[1], 0],
                     [xz, yz, boxhi[2] - boxlo[2]]])
    symbols = [SPECIES[t - 1] for t in lmp.numpy.extract_atom("type")[:n][order]]
    same = Atoms(symbols, positions=np.array(lmp.numpy.extract_atom("x")[:n][order]), cell=cell,
                 pbc=True)
    result = {
        "atoms": same,
        "energy": lmp.get_thermo("pe"),
        "forces": np.array(lmp.numpy.extract_atom("f")[:n][order]),
        "compute": np.array(lmp.numpy.extract_compute("devi", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)),
        "forces_std": np.array(
            lmp.numpy.extract_fix("sigma", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:n][order]),
    }
    lmp.close()
    result["header"], result["file"] = read_deviation(deviation_file)
    return result


def test_several_files_equal_ase(workdir):
    """`pair_coeff * * a.pt b.pt c.pt Si C`: the files run as one (uncalibrated) committee."""
    files = []
    for seed, member in enumerate(members("painn", (0, 1, 2))):
        files.append(str(export_model(member, workdir / f"member_{seed}.pt", dtype="float64")))
    lammps = single_point(" ".join(files), workdir)
    atoms = lammps["atoms"]
    atoms.calc = MLPotCalculator(files)
    atoms.get_forces()
    ase = atoms.calc.results
    expected = [ase["max_force_deviation"], ase["min_force_deviation"],
                ase["avg_force_deviation"], ase["energy_std"]]
    assert "raw" in lammps["header"] and min(expected) > 1e-6
    assert relative_error(lammps["compute"], expected) < RTOL
    assert relative_error(lammps["forces_std"], ase["forces_std"]) < RTOL
    assert relative_error(lammps["forces"], ase["forces"]) < RTOL
    # the same members as one committee file: the same (raw) deviations
    one_file = single_point(committee_file("painn", workdir), workdir, "calibrated no")
    assert relative_error(one_file["compute"], expected) < RTOL


@pytest.mark.parametrize("kind", ["painn", "behler_parrinello"])
def test_deviation_equals_ase(kind, workdir):
    model = committee_file(kind, workdir)
    lammps = single_point(model, workdir)
    atoms = lammps["atoms"]
    atoms.calc = MLPotCalculator(model)
    atoms.get_forces()
    ase = atoms.calc.results
    assert ase["uncertainty_scale"] == SCALE and f"calibrated (x {SCALE:g})" in lammps["header"]
    expected = [ase["max_force_deviation"], ase["min_force_deviation"],
                ase["avg_force_deviation"], ase["energy_std"]]
    assert min(expected) > 1e-6  # random members really disagree
    assert lammps["file"].shape == (1, 5) and lammps["file"][0, 0] == 0
    # the file's devi_e is per atom (DeePMD), the compute pair vector's the total energy's std
    assert relative_error(lammps["file"][0, 1:], expected[:3] + [expected[3] / len(atoms)]) < RTOL
    assert relative_error(lammps["compute"], expected) < RTOL
    assert relative_error(lammps["forces_std"], ase["forces_std"]) < RTOL
    # the mean still drives the dynamics
    assert relative_error(lammps["energy"], ase["energy"]) < RTOL
    assert relative_error(lammps["forces"], ase["forces"]) < RTOL


def test_raw_deviation(workdir):
    """`calibrated no`: the raw deviation, 1/SCALE of the calibrated one; energy std unscaled."""
    model = committee_file("painn", workdir)
    calibrated = single_point(model, workdir)["file"][0, 1:]
    raw = single_point(model, workdir, "calibrated no")
    assert "raw" in raw["header"]
    assert relative_error(raw["file"][0, 1:4], calibrated[:3] / SCALE) < RTOL
    assert relative_error(raw["file"][0, 4], calibrated[3]) < RTOL


def test_identical_members_give_zero_deviation(workdir):
    model = committee_file("painn", workdir, seeds=(4, 4, 4), name="identical.pt")
    result = single_point(model, workdir)
    assert np.all(np.abs(result["file"][0, 1:]) < 1e-12)
    assert np.all(np.abs(result["forces_std"]) < 1e-12)


MD_INPUT = """
plugin load {plugin}
units metal
atom_style atomic
atom_modify map array
boundary p p p
newton on
read_data {data}
pair_style mlpot deviation_file ${{devi}} deviation_every 5 deviation_warn 1e-9
pair_coeff * * {model} Si C
velocity all create 1500 4928459 loop geom
timestep 0.001
fix integrate all nve
thermo 100
run 20
"""


def test_one_rank_equals_two_ranks(workdir):
    model = committee_file("painn", workdir)
    data = mlammps.write_data(workdir / "md.data", md_atoms(), SPECIES)
    script = workdir / "md_committee.in"
    script.write_text(MD_INPUT.format(plugin=mlammps.plugin_path(), data=data, model=model))
    outputs, files = [], []
    for nprocs in (1, 2):
        devi = workdir / f"devi_{nprocs}.out"
        outputs.append(run_lammps(script, {"devi": devi}, workdir, nprocs=nprocs).stdout)
        files.append(read_deviation(devi)[1])
    assert "on 1 procs" in outputs[0] and "on 2 procs" in outputs[1]
    assert files[0][:, 0].tolist() == [0, 5, 10, 15, 20]
    assert np.all(files[0][:, 1:] > 0)
    assert relative_error(files[1], files[0]) < RTOL
    # deviation_warn: one warning at the end of the run, with the count
    for output in outputs:
        assert output.count("above deviation_warn") == 1
        assert "on 21 evaluated step(s)" in output


BAD_SETTINGS = [
    ("deviation_every 0", "deviation_every must be at least 1"),
    ("deviation_every x", "Expected integer"),
    ("calibrated maybe", "Expected boolean"),
    ("deviation_warn -1", "deviation_warn must be a positive force deviation"),
    ("deviation_file", "keyword deviation_file needs a value"),
]


@pytest.mark.parametrize("settings, message", BAD_SETTINGS)
def test_bad_settings(settings, message, workdir):
    model = committee_file("painn", workdir)
    lmp = quiet_lammps()
    lmp.commands_string("units metal\natom_style atomic\nregion box block 0 6 0 6 0 6\n"
                        "create_box 2 box")
    with pytest.raises(Exception, match=message):
        lmp.command(f"pair_style mlpot {settings}")
        lmp.command(f"pair_coeff * * {model} Si C")
    lmp.close()


def test_refusals(workdir):
    from test_lammps_plugin import export_accurate

    committee = committee_file("painn", workdir)
    single = export_accurate("painn", workdir)
    data = mlammps.write_data(workdir / "single.data",
                              random_atoms(SINGLE_CELL, 12, 1.8, seed=3), SPECIES)
    base = f"units metal\natom_style atomic\nnewton on\nread_data {data}\n"

    lmp = quiet_lammps()
    lmp.commands_string(base + "pair_style mlpot")
    with pytest.raises(Exception, match="is itself a committee file"):
        lmp.command(f"pair_coeff * * {single} {committee} Si C")
    with pytest.raises(Exception, match="type count mismatch"):
        lmp.command(f"pair_coeff * * {single} Si C C")
    lmp.close()

    lmp = quiet_lammps()
    lmp.commands_string(base + f"pair_style mlpot deviation_file x.out\n"
                        f"pair_coeff * * {single} Si C")
    with pytest.raises(Exception, match="need a committee model file"):
        lmp.command("run 0")
    lmp.close()

    lmp = quiet_lammps()
    lmp.commands_string(base + f"pair_style mlpot deviation_stop 1e-9\n"
                        f"pair_coeff * * {committee} Si C")
    with pytest.raises(Exception, match="above deviation_stop"):
        lmp.command("run 0")
    lmp.close()
