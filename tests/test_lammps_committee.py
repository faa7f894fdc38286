"""Committee deviation in pair_style mlpot (docs/committee.md, "Deviations in LAMMPS"): the
LAMMPS deviations (deviation file, `compute pair` vector, per-atom sigma and atom-energy std
through `fix pair`) and harvested frames equal MLPotCalculator's and DeviationHarvester's to
1e-10, for one-file committees of both interfaces (random PaiNNs, random Behler-Parrinello
networks) with a calibration scale and for several files with `calibration S|FILE`; 1 rank = 2
ranks; identical members give zero deviation; bad input is refused with a clear message. Threads
are pinned to 1.
"""

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms

from mlpot import lammps as mlammps
from mlpot.calculator import DeviationHarvester, MLPotCalculator
from mlpot.model_file import export_model, read_metadata, update_metadata
from mlpot.models import Committee

from test_lammps_plugin import (ACCURATE_SF, METAL2REAL, SINGLE_CELL, SPECIES, md_atoms,
                                quiet_lammps, random_atoms, random_behler_parrinello, random_painn,
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


def read_frames(path):
    return ase.io.read(path, index=":", format="extxyz")  # an empty file: no frames


def assert_same_frames(frames, expected, rtol=RTOL):
    """Harvested frames: the same steps, cells, atoms and positions (1e-10 Å), and committee
    values equal to ``rtol`` relative."""
    assert len(frames) == len(expected) > 0
    for frame, other in zip(frames, expected):
        assert frame.info["step"] == other.info["step"]
        assert frame.get_chemical_symbols() == other.get_chemical_symbols()
        assert list(frame.pbc) == list(other.pbc)
        assert np.abs(frame.cell.array - other.cell.array).max() < 1e-10
        assert np.abs(frame.positions - other.positions).max() < 1e-10
        for key in ("committee_energy", "energy_std", "max_force_deviation", "uncertainty_scale"):
            assert relative_error(frame.info[key], other.info[key]) < rtol, key
        for key in ("committee_forces", "forces_std", "energies_std"):
            assert relative_error(frame.arrays[key], other.arrays[key]) < rtol, key


def ase_frames(model, frames, workdir, **options):
    """What DeviationHarvester writes for the positions of ``frames`` (at their steps)."""
    path = workdir / "ase_harvest.extxyz"
    atoms = frames[0].copy()
    atoms.calc = MLPotCalculator(model, **options)
    harvester = DeviationHarvester(atoms, path, threshold=1e-12)
    for frame in frames:
        atoms.positions = frame.positions
        harvester.calls = frame.info["step"]
        assert harvester()
    return read_frames(path)


def single_point(model, workdir, settings="", units="metal"):
    """One evaluation in LAMMPS: the deviation file, compute pair, fix pair, the harvested frame
    (all frames above 1e-12); and the structure."""
    from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY, LMP_TYPE_VECTOR

    atoms = random_atoms(SINGLE_CELL, 12, min_distance=1.8, seed=3)
    data = mlammps.write_data(workdir / "single.data", atoms, SPECIES)
    deviation_file = workdir / "single_devi.out"
    harvest_file = workdir / "single_harvest.extxyz"
    lmp = quiet_lammps()
    lmp.commands_string(f"""
        units {units}
        atom_style atomic
        atom_modify map array
        newton on
        read_data {data}
        pair_style mlpot deviation_file {deviation_file} deviation_warn 1e-12 &
                   deviation_harvest {harvest_file} {settings}
        pair_coeff * * {model} Si C
        compute devi all pair mlpot
        fix sigma all pair 1 mlpot forces_std 0 energies_std 0
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
    }
    columns = np.array(lmp.numpy.extract_fix("sigma", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)[:n][order])
    result["forces_std"], result["energies_std"] = columns[:, 0], columns[:, 1]
    lmp.close()
    result["header"], result["file"] = read_deviation(deviation_file)
    result["frames"] = read_frames(harvest_file)
    return result


def member_files(workdir):
    files = []
    for seed, member in enumerate(members("painn", (0, 1, 2))):
        path = workdir / f"member_{seed}.pt"
        if not path.exists():
            export_model(member, path, dtype="float64")
        files.append(str(path))
    return files


def calibrated_merge(files, workdir, scale=SCALE, names=None):
    """What `mlpot calibrate a.pt b.pt c.pt --output FILE` writes: the merged committee with the
    member file names and a calibration scale."""
    path = workdir / "calibrated_merge.pt"
    export_model(Committee(members("painn", (0, 1, 2))), path, dtype="float64",
                 metadata={"committee_of_files": names or [Path(f).name for f in files]})
    record = read_metadata(path)
    update_metadata(path, path, {"committee": {**record["committee"],
                                               "calibration": {"scale": scale}}})
    return str(path)


def test_several_files_equal_ase(workdir):
    """`pair_coeff * * a.pt b.pt c.pt Si C`: the files run as one (uncalibrated) committee."""
    files = member_files(workdir)
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
    assert relative_error(lammps["energies_std"], ase["energies_std"]) < RTOL
    assert relative_error(lammps["forces"], ase["forces"]) < RTOL
    assert_same_frames(lammps["frames"], ase_frames(files, lammps["frames"], workdir))
    # the same members as one committee file: the same (raw) deviations
    one_file = single_point(committee_file("painn", workdir), workdir, "calibrated no")
    assert relative_error(one_file["compute"], expected) < RTOL


@pytest.mark.parametrize("how", ["number", "file"])
def test_several_files_with_calibration_equal_ase(how, workdir):
    """`calibration S|FILE`: several files scaled as ASE's MLPotCalculator(files, calibration)."""
    files = member_files(workdir)
    calibration = SCALE if how == "number" else calibrated_merge(files, workdir)
    lammps = single_point(" ".join(files), workdir, f"calibration {calibration}")
    atoms = lammps["atoms"]
    atoms.calc = MLPotCalculator(files, calibration=calibration)
    atoms.get_forces()
    ase = atoms.calc.results
    assert ase["uncertainty_scale"] == SCALE and f"calibrated (x {SCALE:g})" in lammps["header"]
    expected = [ase["max_force_deviation"], ase["min_force_deviation"],
                ase["avg_force_deviation"], ase["energy_std"]]
    assert relative_error(lammps["compute"], expected) < RTOL
    assert relative_error(lammps["forces_std"], ase["forces_std"]) < RTOL
    assert relative_error(lammps["energies_std"], ase["energies_std"]) < RTOL
    assert_same_frames(lammps["frames"],
                       ase_frames(files, lammps["frames"], workdir, calibration=calibration))
    # the scale multiplies the raw force deviations only
    raw = single_point(" ".join(files), workdir)
    assert relative_error(lammps["forces_std"], SCALE * raw["forces_std"]) < RTOL
    assert relative_error(lammps["energies_std"], raw["energies_std"]) < RTOL
    # `calibrated no` wins, as MLPotCalculator(files, calibration=..., calibrated=False)
    off = single_point(" ".join(files), workdir, f"calibration {calibration} calibrated no")
    assert relative_error(off["forces_std"], raw["forces_std"]) < RTOL


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
    assert relative_error(lammps["energies_std"], ase["energies_std"]) < RTOL
    assert min(ase["energies_std"]) > 1e-6
    # the mean still drives the dynamics
    assert relative_error(lammps["energy"], ase["energy"]) < RTOL
    assert relative_error(lammps["forces"], ase["forces"]) < RTOL
    # the harvested frame: the structure and the committee's values, as DeviationHarvester's
    frame = lammps["frames"][0]
    assert len(lammps["frames"]) == 1 and frame.info["step"] == 0
    assert frame.calc is None  # the committee's guess is no label
    assert relative_error(frame.arrays["committee_forces"], ase["forces"]) < RTOL
    assert relative_error(frame.info["max_force_deviation"], expected[0]) < RTOL
    assert_same_frames(lammps["frames"], ase_frames(model, lammps["frames"], workdir))


def test_raw_deviation(workdir):
    """`calibrated no`: the raw deviation, 1/SCALE of the calibrated one; energy std unscaled."""
    model = committee_file("painn", workdir)
    calibrated = single_point(model, workdir)["file"][0, 1:]
    raw = single_point(model, workdir, "calibrated no")
    assert "raw" in raw["header"]
    assert relative_error(raw["file"][0, 1:4], calibrated[:3] / SCALE) < RTOL
    assert relative_error(raw["file"][0, 4], calibrated[3]) < RTOL


def test_real_units_scale_the_deviations_but_not_the_harvest(workdir):
    """`units real`: deviations in kcal/mol/Å and kcal/mol, the harvested frame still in eV, Å."""
    model = committee_file("painn", workdir)
    metal = single_point(model, workdir)
    real = single_point(model, workdir, units="real")
    assert relative_error(real["compute"], METAL2REAL * metal["compute"]) < RTOL
    assert relative_error(real["forces_std"], METAL2REAL * metal["forces_std"]) < RTOL
    assert relative_error(real["energies_std"], METAL2REAL * metal["energies_std"]) < RTOL
    assert_same_frames(real["frames"], metal["frames"])


def test_identical_members_give_zero_deviation(workdir):
    model = committee_file("painn", workdir, seeds=(4, 4, 4), name="identical.pt")
    result = single_point(model, workdir)
    assert np.all(np.abs(result["file"][0, 1:]) < 1e-12)
    assert np.all(np.abs(result["forces_std"]) < 1e-12)
    assert np.all(np.abs(result["energies_std"]) < 1e-12)
    assert result["frames"] == []  # nothing above the threshold: nothing harvested


MD_INPUT = """
plugin load {plugin}
units metal
atom_style atomic
atom_modify map array
boundary p p p
newton on
read_data {data}
pair_style mlpot deviation_file ${{devi}} deviation_every 5 deviation_warn 1e-9 &
           deviation_harvest ${{harvest}}
pair_coeff * * {model} Si C
velocity all create 1500 4928459 loop geom
timestep 0.001
fix integrate all nve
thermo 100
run 20
"""


@pytest.mark.parametrize("kind", ["painn", "behler_parrinello"])
def test_one_rank_equals_two_ranks(kind, workdir):
    """20 MD steps on 1 and 2 ranks: the same deviations and harvested frames (gathered to rank 0
    in atom-ID order), and the frames equal DeviationHarvester's for the same positions."""
    model = committee_file(kind, workdir)
    data = mlammps.write_data(workdir / "md.data", md_atoms(), SPECIES)
    script = workdir / f"md_committee_{kind}.in"
    script.write_text(MD_INPUT.format(plugin=mlammps.plugin_path(), data=data, model=model))
    outputs, files, frames = [], [], []
    for nprocs in (1, 2):
        devi = workdir / f"devi_{kind}_{nprocs}.out"
        harvest = workdir / f"harvest_{kind}_{nprocs}.extxyz"
        outputs.append(run_lammps(script, {"devi": devi, "harvest": harvest}, workdir,
                                  nprocs=nprocs).stdout)
        files.append(read_deviation(devi)[1])
        frames.append(read_frames(harvest))
    assert "on 1 procs" in outputs[0] and "on 2 procs" in outputs[1]
    assert files[0][:, 0].tolist() == [0, 5, 10, 15, 20]
    assert np.all(files[0][:, 1:] > 0)
    assert relative_error(files[1], files[0]) < RTOL
    # deviation_warn: one warning at the end of the run, with the count and the harvest
    for output in outputs:
        assert output.count("above deviation_warn") == 1
        assert "on 21 evaluated step(s)" in output
        assert "5 frame(s) harvested" in output
    # harvested every deviation_every steps: the same frames on 1 and 2 ranks, and in ASE
    assert [f.info["step"] for f in frames[0]] == [0, 5, 10, 15, 20]
    assert len(frames[0][0]) == len(md_atoms())
    assert_same_frames(frames[1], frames[0])
    assert_same_frames(frames[0], ase_frames(model, frames[0], workdir))


BAD_SETTINGS = [
    ("deviation_every 0", "deviation_every must be at least 1"),
    ("deviation_every x", "Expected integer"),
    ("calibrated maybe", "Expected boolean"),
    ("deviation_warn -1", "deviation_warn must be a positive force deviation"),
    ("deviation_file", "keyword deviation_file needs a value"),
    ("deviation_harvest h.extxyz", "deviation_harvest needs deviation_warn X"),
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

    for settings in ("deviation_file x.out", "deviation_warn 1 deviation_harvest h.extxyz",
                     "calibration 2"):
        lmp = quiet_lammps()
        lmp.commands_string(base + f"pair_style mlpot {settings}\npair_coeff * * {single} Si C")
        with pytest.raises(Exception, match="need a committee model file"):
            lmp.command("run 0")
        lmp.close()

    files = member_files(workdir)
    wrong_names = calibrated_merge(files, workdir, names=["a.pt", "b.pt", "c.pt"])
    refusals = [
        (committee, "calibration 2", "carries its own calibration"),
        (" ".join(files), "calibration 0", "positive scale or a calibrated committee file"),
        (" ".join(files), f"calibration {committee}", "records no member files"),
        (" ".join(files), f"calibration {wrong_names}", "was calibrated for the files"),
        (" ".join(files), f"calibration {single}", "has no calibration scale"),
        (committee, f"deviation_warn 1 deviation_harvest {workdir}/missing/h.extxyz",
         "cannot open deviation_harvest"),
    ]
    for model, settings, message in refusals:
        lmp = quiet_lammps()
        lmp.commands_string(base + f"pair_style mlpot {settings}\npair_coeff * * {model} Si C")
        with pytest.raises(Exception, match=message):
            lmp.command("run 0")
        lmp.close()

    lmp = quiet_lammps()
    lmp.commands_string(base + f"pair_style mlpot deviation_stop 1e-9\n"
                        f"pair_coeff * * {committee} Si C")
    with pytest.raises(Exception, match="above deviation_stop"):
        lmp.command("run 0")
    lmp.close()
